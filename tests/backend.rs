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
