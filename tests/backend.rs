//! Backend identity end to end: a real server on 127.0.0.1:0, real gRPC Checks, and a fake
//! metadata server and token endpoint (real HTTP). An allowed Check toward a backend carries the
//! gateway's Google ID token for that backend; a denied one never fetches; the deadline holds.

mod common;

use common::google::{
    FakeGoogle, GATEWAY, GOOGLE_ISSUER, KEY_ACCOUNT, KEY_ID, key_file_json, verified_claims,
};
use common::*;
use envoy_types::ext_authz::v3::pb::HeaderAppendAction;
use serde_json::json;

const ORDERS: &str = "https://orders-7x2kq-uc.a.run.app";
const PAYMENTS: &str = "https://payments-7x2kq-uc.a.run.app";
const ALICE: &str = "alice@example.com";

fn metadata_config(fake: &FakeGoogle) -> String {
    format!(
        "[backend_auth]\nsource = \"metadata\"\nmetadata_url = \"{}\"\n",
        fake.url()
    )
}

async fn serve(extra: String, deadline: &str) -> Server {
    let s = Server::start_with(Options {
        extra,
        deadline: deadline.to_owned(),
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "orders", &format!("user:{ALICE}"), INVOKER)
        .await;
    s
}

/// A Check on prod/orders whose route names `audience` in its context_extensions.
async fn check(s: &Server, authorization: Option<&str>, audience: Option<&str>) -> Outcome {
    let mut req = check_request(authorization, "api.example.com", "/orders/1");
    let ext = &mut req.attributes.as_mut().unwrap().context_extensions;
    ext.insert("environment".into(), "prod".into());
    ext.insert("deployment".into(), "orders".into());
    if let Some(a) = audience {
        ext.insert("backend_audience".into(), a.into());
    }
    s.send(req).await
}

fn bearer(s: &str) -> String {
    format!("Bearer {s}")
}

/// The ID token an allowed Check hands the backend, and its verified claims.
fn backend_token(o: &Outcome) -> (String, serde_json::Value) {
    assert!(o.allowed(), "{o:#?}");
    let value = o
        .header("authorization")
        .unwrap_or_else(|| panic!("no authorization header: {o:#?}"));
    let token = value.strip_prefix("Bearer ").expect("a bearer value");
    (token.to_owned(), verified_claims(token))
}

fn overwrite(o: &Outcome, name: &str) -> bool {
    o.headers.iter().any(|(k, _, action)| {
        k == name && *action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    })
}

#[tokio::test]
async fn allowed_check_carries_the_gateways_id_token_and_forwards_the_callers_authorization() {
    let fake = FakeGoogle::start().await;
    let s = serve(metadata_config(&fake), "").await;
    let caller = bearer(&token(ALICE));
    let o = check(&s, Some(&caller), Some(ORDERS)).await;
    let (_, claims) = backend_token(&o);
    assert_eq!(claims["aud"], ORDERS);
    assert_eq!(claims["email"], GATEWAY);
    assert_eq!(claims["iss"], GOOGLE_ISSUER);
    assert_eq!(o.header("x-forwarded-authorization"), Some(caller.as_str()));
    assert!(overwrite(&o, "authorization") && overwrite(&o, "x-forwarded-authorization"));
    assert_eq!(o.header("x-verifyiam-principal"), Some(ALICE));
    assert_eq!(o.metadata["backend_audience"], ORDERS);
    assert_eq!(fake.fetches(ORDERS), 1);
}

#[tokio::test]
async fn the_route_table_names_the_backend_audience() {
    let fake = FakeGoogle::start().await;
    let routes = format!(
        "[[routes]]\npath_prefix = \"/orders\"\nenvironment = \"prod\"\ndeployment = \"orders\"\nbackend_audience = \"{ORDERS}\"\n"
    );
    let s = serve(format!("{}{routes}", metadata_config(&fake)), "").await;
    let req = check_request(Some(&bearer(&token(ALICE))), "api.example.com", "/orders/7");
    let (_, claims) = backend_token(&s.send(req).await);
    assert_eq!(claims["aud"], ORDERS);
}

#[tokio::test]
async fn fifty_checks_fetch_once_per_audience_and_each_audience_has_its_token() {
    let fake = FakeGoogle::start().await;
    let s = serve(metadata_config(&fake), "").await;
    let caller = bearer(&token(ALICE));
    let outcomes = futures_util::future::join_all((0..50).map(|i| {
        let audience = if i % 2 == 0 { ORDERS } else { PAYMENTS };
        let (s, caller) = (&s, &caller);
        async move { (audience, check(s, Some(caller), Some(audience)).await) }
    }))
    .await;
    let mut tokens = std::collections::HashMap::new();
    for (audience, o) in &outcomes {
        let (t, claims) = backend_token(o);
        assert_eq!(claims["aud"], *audience);
        tokens.entry(*audience).or_insert_with(Vec::new).push(t);
    }
    assert_eq!((fake.fetches(ORDERS), fake.fetches(PAYMENTS)), (1, 1));
    for list in tokens.values() {
        assert!(list.iter().all(|t| t == &list[0]), "one token per audience");
    }
    assert_ne!(tokens[ORDERS][0], tokens[PAYMENTS][0]);
    let (_, metrics) = s.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    for line in [
        "verifyiam_backend_token_fetches_total{source=\"metadata\"}",
        "verifyiam_cache_requests_total{cache=\"backend_token\",result=\"hit\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    assert!(!metrics.contains(&tokens[ORDERS][0]), "tokens never appear");
}

#[tokio::test]
async fn no_audience_leaves_the_headers_alone() {
    let fake = FakeGoogle::start().await;
    let s = serve(metadata_config(&fake), "").await;
    let o = check(&s, Some(&bearer(&token(ALICE))), None).await;
    assert!(o.allowed(), "{o:#?}");
    assert_eq!(o.header("authorization"), None);
    assert_eq!(o.header("x-forwarded-authorization"), None);
    assert_eq!(fake.total(), 0);
}

#[tokio::test]
async fn a_denied_check_never_fetches() {
    let fake = FakeGoogle::start().await;
    let s = serve(metadata_config(&fake), "").await;
    let o = check(
        &s,
        Some(&bearer(&token("mallory@example.com"))),
        Some(ORDERS),
    )
    .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    let o = check(&s, Some("Bearer not.a.token"), Some(ORDERS)).await;
    assert_eq!(o.http, 401, "{o:#?}");
    let o = check(&s, None, Some(ORDERS)).await;
    assert_eq!(o.http, 401, "{o:#?}");
    assert_eq!(fake.total(), 0);
    assert!(o.header("authorization").is_none());
}

#[tokio::test]
async fn a_hanging_metadata_server_denies_new_audiences_503_while_cached_ones_keep_working() {
    let fake = FakeGoogle::start().await;
    let s = serve(metadata_config(&fake), "300ms").await;
    let caller = bearer(&token(ALICE));
    let (cached, _) = backend_token(&check(&s, Some(&caller), Some(ORDERS)).await);
    fake.hang(true);
    let o = check(&s, Some(&caller), Some(PAYMENTS)).await;
    o.assert_denied(UNAVAILABLE, 503, None);
    assert_eq!(o.header("retry-after"), Some("1"));
    assert!(o.header("authorization").is_none());
    assert!(o.message().contains("ID token"), "{o:#?}");
    for _ in 0..5 {
        let (t, _) = backend_token(&check(&s, Some(&caller), Some(ORDERS)).await);
        assert_eq!(t, cached);
    }
    assert_eq!(fake.fetches(ORDERS), 1);
}

#[tokio::test]
async fn a_token_in_use_is_refreshed_before_expiry_without_a_check_waiting() {
    let fake = FakeGoogle::start().await;
    // Four-second tokens: refreshed half-way, served until three quarters of their life.
    fake.set_lifetime(4);
    let s = serve(metadata_config(&fake), "").await;
    let caller = bearer(&token(ALICE));
    let (first, first_claims) = backend_token(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert_eq!(fake.total(), 1);
    // No Check is in flight: the second fetch is the background refresh.
    fake.wait_for_total(2).await;
    // The refreshed token is served from memory once it lands; no Check fetches.
    let mut served = first.clone();
    for _ in 0..100 {
        let (t, _) = backend_token(&check(&s, Some(&caller), Some(ORDERS)).await);
        served = t;
        if served != first {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_ne!(served, first, "the refreshed token is served");
    let claims = verified_claims(&served);
    assert!(claims["n"].as_u64() > first_claims["n"].as_u64());
    assert_eq!(fake.fetches(ORDERS), 2);
}

#[tokio::test]
async fn service_account_key_flow_exchanges_a_signed_assertion() {
    let fake = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gateway-sa.json");
    std::fs::write(&key, key_file_json(&fake.token_url())).unwrap();
    let extra = format!(
        "[backend_auth]\nsource = \"service_account_key\"\nkey_file = \"{}\"\ntoken_url = \"{}\"\n",
        key.display(),
        fake.token_url()
    );
    let s = serve(extra, "").await;
    let o = check(&s, Some(&bearer(&token(ALICE))), Some(ORDERS)).await;
    let (_, claims) = backend_token(&o);
    assert_eq!(claims["aud"], ORDERS);
    assert_eq!(claims["email"], KEY_ACCOUNT);
    // The endpoint verified the signature; here the claims it saw.
    let assertions = fake.assertions();
    assert_eq!(assertions.len(), 1);
    let (header, a) = &assertions[0];
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], KEY_ID);
    assert_eq!(a["iss"], KEY_ACCOUNT);
    assert_eq!(a["sub"], KEY_ACCOUNT);
    assert_eq!(a["aud"], json!(fake.token_url()));
    assert_eq!(a["target_audience"], ORDERS);
    let lifetime = a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap();
    assert!(lifetime > 0 && lifetime <= 3600, "{lifetime}");
}

#[tokio::test]
async fn a_key_file_that_is_missing_or_not_a_service_account_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = |path: &std::path::Path| {
        format!(
            "[iam]\nproject = \"p\"\n[backend_auth]\nsource = \"service_account_key\"\nkey_file = \"{}\"\n",
            path.display()
        )
    };
    let missing = dir.path().join("nope.json");
    let err = verifyiam::config::Config::parse(&config(&missing)).unwrap_err();
    assert!(
        err.to_string().starts_with("backend_auth.key_file"),
        "{err}"
    );
    let user_creds = dir.path().join("adc.json");
    std::fs::write(&user_creds, r#"{"type":"authorized_user","client_id":"x"}"#).unwrap();
    let err = verifyiam::config::Config::parse(&config(&user_creds)).unwrap_err();
    assert!(
        err.to_string().starts_with("backend_auth.key_file"),
        "{err}"
    );
    assert!(err.to_string().contains("authorized_user"), "{err}");
    let err = verifyiam::config::Config::parse(
        "[iam]\nproject = \"p\"\n[backend_auth]\nsource = \"service_account_key\"\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("backend_auth.key_file"),
        "{err}"
    );
}

#[tokio::test]
async fn googleapis_backends_are_refused_at_configuration_and_at_check_time() {
    let text = "[iam]\nproject = \"p\"\n[backend_auth]\nsource = \"metadata\"\n\
                [[routes]]\nenvironment = \"prod\"\ndeployment = \"orders\"\n\
                [[routes]]\npath_prefix = \"/bq\"\nenvironment = \"prod\"\ndeployment = \"bq\"\n\
                backend_audience = \"https://bigquery.googleapis.com\"\n";
    let err = verifyiam::config::Config::parse(text).unwrap_err();
    assert!(
        err.to_string().starts_with("routes[1].backend_audience"),
        "{err}"
    );
    assert!(err.to_string().contains("access tokens"), "{err}");

    let fake = FakeGoogle::start().await;
    let s = serve(metadata_config(&fake), "").await;
    let o = check(
        &s,
        Some(&bearer(&token(ALICE))),
        Some("https://storage.googleapis.com"),
    )
    .await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_request"));
    assert!(o.message().contains("googleapis.com"), "{o:#?}");
    assert!(o.message().contains("access tokens"), "{o:#?}");
    assert_eq!(fake.total(), 0);
}

#[tokio::test]
async fn continue_on_error_never_carries_a_token_nor_continues_to_a_google_api() {
    let fake = FakeGoogle::start().await;
    let s = serve(metadata_config(&fake), "").await;
    let deploy = format!(
        "/v1/organizations/{PROJECT}/environments/prod/apis/orders/revisions/1/deployments?continueOnError=true"
    );
    let (status, v) = s
        .call(reqwest::Method::POST, &deploy, Some(&token(ADMIN)), None)
        .await;
    assert_eq!(status, 200, "{v}");
    // A denial that continues is still a denial: the backend gets no ID token.
    let o = check(
        &s,
        Some(&bearer(&token("mallory@example.com"))),
        Some(ORDERS),
    )
    .await;
    assert!(o.allowed(), "continues: {o:#?}");
    assert_eq!(o.header("x-verifyiam-result"), Some("denied"));
    assert_eq!(o.header("authorization"), None);
    assert_eq!(fake.total(), 0);
    // A route that cannot work is the gateway's problem: it never continues.
    let o = check(
        &s,
        Some(&bearer(&token("mallory@example.com"))),
        Some("https://storage.googleapis.com"),
    )
    .await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_request"));
}

#[tokio::test]
async fn an_audience_without_backend_auth_is_never_allowed() {
    let s = serve(String::new(), "").await;
    let o = check(&s, Some(&bearer(&token(ALICE))), Some(ORDERS)).await;
    o.assert_denied(UNAVAILABLE, 503, None);
    let text = "[iam]\nproject = \"p\"\n[[routes]]\nenvironment = \"prod\"\ndeployment = \"o\"\n\
                backend_audience = \"https://o.a.run.app\"\n";
    let err = verifyiam::config::Config::parse(text).unwrap_err();
    assert!(
        err.to_string().starts_with("routes[0].backend_audience"),
        "{err}"
    );
}

/// What the scripted metadata server puts in the tokens it hands out, given the time now
/// (Unix seconds, this machine's clock).
type Mint = dyn Fn(u64) -> serde_json::Value + Send + Sync;

/// A metadata server handing out whatever token the test scripts (a clock-skewed server, a
/// caching proxy), over real HTTP; it counts what it is asked.
#[derive(Clone)]
struct ScriptedMetadata {
    url: String,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    mint: std::sync::Arc<std::sync::Mutex<std::sync::Arc<Mint>>>,
}

impl ScriptedMetadata {
    async fn start(mint: impl Fn(u64) -> serde_json::Value + Send + Sync + 'static) -> Self {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = ScriptedMetadata {
            url: format!("http://{}", listener.local_addr().unwrap()),
            fetches: Default::default(),
            mint: Arc::new(Mutex::new(Arc::new(mint))),
        };
        let state = fake.clone();
        let app = axum::Router::new().route(
            common::google::IDENTITY_PATH,
            axum::routing::get(
                move |axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| {
                    let state = state.clone();
                    async move {
                        let n = state
                            .fetches
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let mint = state.mint.lock().unwrap().clone();
                        let mut claims = mint(now());
                        // Each answer its own token, even within one second.
                        claims["n"] = json!(n);
                        claims["aud"] = json!(q.get("audience").cloned().unwrap_or_default());
                        claims["email"] = json!(GATEWAY);
                        claims["iss"] = json!(GOOGLE_ISSUER);
                        rsa().sign(&claims)
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    fn script(&self, mint: impl Fn(u64) -> serde_json::Value + Send + Sync + 'static) {
        *self.mint.lock().unwrap() = std::sync::Arc::new(mint);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn config(&self) -> String {
        format!(
            "[backend_auth]\nsource = \"metadata\"\nmetadata_url = \"{}\"\n",
            self.url
        )
    }
}

/// The claims of a token, read without checking anything (it may be expired).
fn unverified_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The backend token an allowed Check carries, with its claims (unverified).
fn forwarded(o: &Outcome) -> (String, serde_json::Value) {
    assert!(o.allowed(), "{o:#?}");
    let value = o.header("authorization").expect("an authorization header");
    let token = value.strip_prefix("Bearer ").expect("a bearer value");
    (token.to_owned(), unverified_claims(token))
}

/// Moves the runtime's clock (every TTL here runs on it) `by` ahead, then lets it run on in
/// real time: the servers on real sockets keep working, no test sleeps.
async fn jump(by: std::time::Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// A refused backend token: the Check fails closed (503, no token, nothing forwarded).
fn assert_refused(o: &Outcome) {
    o.assert_denied(UNAVAILABLE, 503, None);
    assert_eq!(o.header("retry-after"), Some("1"), "{o:#?}");
    assert!(o.header("authorization").is_none(), "{o:#?}");
    assert!(o.header("x-forwarded-authorization").is_none(), "{o:#?}");
    assert!(o.message().contains("ID token"), "{o:#?}");
}

#[tokio::test]
async fn an_already_expired_backend_token_is_refused_not_cached_and_asked_for_again_later() {
    // exp - iat is an hour, as Google's, but exp is an hour gone by this machine's clock.
    let fake = ScriptedMetadata::start(|now| json!({"iat": now - 7200, "exp": now - 3600})).await;
    let s = serve(fake.config(), "").await;
    let caller = bearer(&token(ALICE));
    assert_refused(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert_eq!(fake.fetches(), 1);
    // Not cached, and not asked for again on every Check either.
    assert_refused(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert_eq!(
        fake.fetches(),
        1,
        "a refused token holds the source off a while"
    );
    let (_, metrics) = s.get("/metrics", None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("verifyiam_backend_token_failures_total{kind=\"expired\"}"),
        "the refusal is counted"
    );
    // Past the hold-off, the next Check asks again, and a good token is served.
    fake.script(|now| json!({"iat": now, "exp": now + 3600}));
    jump(std::time::Duration::from_secs(2)).await;
    let (_, claims) = forwarded(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert!(claims["exp"].as_u64().unwrap() > now() + 60, "{claims}");
    assert_eq!(fake.fetches(), 2);
}

#[tokio::test]
async fn a_backend_token_expiring_within_the_refresh_margin_is_refused() {
    // Issued an hour ago for an hour: ten seconds left, inside the minute kept in hand.
    let fake = ScriptedMetadata::start(|now| json!({"iat": now - 3590, "exp": now + 10})).await;
    let s = serve(fake.config(), "").await;
    let caller = bearer(&token(ALICE));
    assert_refused(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert_refused(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert_eq!(fake.fetches(), 1);
}

#[tokio::test]
async fn a_backend_token_issued_long_ago_is_served_until_its_exp_only() {
    // `iat` a month back, `exp` an hour ahead: valid, but only for the hour left, whatever
    // exp - iat says.
    let fake =
        ScriptedMetadata::start(|now| json!({"iat": now - 30 * 24 * 3600, "exp": now + 3600}))
            .await;
    let s = serve(fake.config(), "").await;
    let caller = bearer(&token(ALICE));
    let (first, claims) = forwarded(&check(&s, Some(&caller), Some(ORDERS)).await);
    let exp = claims["exp"].as_u64().unwrap();
    let (again, _) = forwarded(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert_eq!(again, first, "served from the cache");
    assert_eq!(fake.fetches(), 1);
    // One second past exp minus the minute's margin (this machine's clock, carried by the
    // runtime's): that token is never handed out again.
    let left = exp.saturating_sub(now());
    jump(std::time::Duration::from_secs(left.saturating_sub(60) + 1)).await;
    let (later, _) = forwarded(&check(&s, Some(&caller), Some(ORDERS)).await);
    assert_ne!(later, first, "a token is not forwarded past its exp");
    assert!(fake.fetches() >= 2);
}

#[tokio::test]
async fn a_backend_token_without_a_readable_exp_is_refused_and_not_asked_for_on_every_check() {
    type Claims = fn(u64) -> serde_json::Value;
    let cases: [(&str, Claims); 4] = [
        ("https://missing.example", |now| json!({"iat": now})),
        (
            "https://text.example",
            |now| json!({"iat": now, "exp": "soon"}),
        ),
        (
            "https://null.example",
            |now| json!({"iat": now, "exp": null}),
        ),
        (
            "https://negative.example",
            |now| json!({"iat": now, "exp": -1}),
        ),
    ];
    let fake = ScriptedMetadata::start(|now| json!({"iat": now})).await;
    let s = serve(fake.config(), "").await;
    let caller = bearer(&token(ALICE));
    for (i, (audience, mint)) in cases.into_iter().enumerate() {
        fake.script(mint);
        assert_refused(&check(&s, Some(&caller), Some(audience)).await);
        assert_refused(&check(&s, Some(&caller), Some(audience)).await);
        assert_eq!(
            fake.fetches(),
            i + 1,
            "{audience}: one fetch, then held off"
        );
    }
}

/// Counts the events whose message contains `needle`, on this thread (the test's runtime runs
/// the server's tasks too).
#[derive(Clone, Default)]
struct LogCount {
    needle: &'static str,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogCount {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if m.0.contains(self.needle) {
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn a_failing_metadata_server_is_logged_once_a_minute_not_once_per_check() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let count = LogCount {
        needle: "no ID token for the backend",
        ..Default::default()
    };
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(count.clone()));
    // A metadata server that answers every request 500.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down") });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = serve(
        format!("[backend_auth]\nsource = \"metadata\"\nmetadata_url = \"{url}\"\n"),
        "",
    )
    .await;
    let caller = bearer(&token(ALICE));
    for _ in 0..40 {
        assert_refused(&check(&s, Some(&caller), Some(ORDERS)).await);
    }
    assert_eq!(
        count.seen.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "40 refused Checks of one failing backend make one log line, not one each"
    );
}
