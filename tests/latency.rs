//! Latency-bounded decisions: deadlines under hanging upstreams, single flight, bounded key-set
//! fetches, negative caching, lying and failing tokeninfo, introspection, and Google IAM as the
//! policy source (a second verifyiam plays Google; an in-process source drives the TTL tests on
//! paused time).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::json;
use verifyiam::authn::Principal;
use verifyiam::authz::{Authorizer, Decision, Reason, RemoteSource, SourceError};
use verifyiam::config::AuthzConfig;
use verifyiam::route::Target;

fn hanging(body: serde_json::Value) -> Reply {
    Reply {
        delay: Duration::from_secs(30),
        ..Reply::json(body)
    }
}

#[tokio::test]
async fn hanging_key_set_never_holds_a_check_past_the_deadline() {
    let up = Upstream::start().await;
    up.publish(&[rsa(), ec()]);
    let extra = "[token]\nmin_refresh_interval = \"0s\"\n".to_owned();
    let deadline = "300ms".to_owned();
    let s = Server::start_with(Options {
        extra,
        deadline,
        upstream: Some(up.clone()),
        ..Default::default()
    })
    .await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    let warm = format!("Bearer {}", token("warm@example.com"));
    assert!(s.check(Some(&warm), "prod", "orders").await.allowed());

    // The issuer now hangs far past the deadline.
    up.set("/jwks", hanging(json!({"keys": []})));
    let unknown_kid = format!(
        "Bearer {}",
        rsa().sign_as("rotated", &claims("new@example.com"))
    );
    let started = Instant::now();
    let o = s.check(Some(&unknown_kid), "prod", "orders").await;
    let took = started.elapsed();
    o.assert_denied(UNAVAILABLE, 503, None);
    assert_eq!(o.header("retry-after"), Some("1"));
    // The deadline is 300 ms; the margin absorbs a loaded test machine, not the upstream's 30 s.
    assert!(
        took < Duration::from_millis(1800),
        "answered after {took:?}"
    );
    // Principals already verified are still allowed while the issuer hangs.
    assert!(s.check(Some(&warm), "prod", "orders").await.allowed());
    // So are new tokens signed with keys already held.
    let fresh = format!("Bearer {}", ec().sign(&claims("other@example.com")));
    assert!(s.check(Some(&fresh), "prod", "orders").await.allowed());
}

#[tokio::test]
async fn dependency_failure_can_be_a_grpc_error_for_envoys_failure_policy() {
    let up = Upstream::start().await;
    up.set("/jwks", Reply::status(503, "down"));
    let server_extra = "on_dependency_failure = \"error\"".to_owned();
    let s = Server::start_with(Options {
        server_extra,
        upstream: Some(up),
        ..Default::default()
    })
    .await;
    let req = routed_request(
        Some(&format!("Bearer {}", token("a@example.com"))),
        "prod",
        "orders",
    );
    let err = s
        .client()
        .await
        .check(req)
        .await
        .expect_err("a gRPC error, not a reply");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn concurrent_first_checks_of_one_token_make_one_upstream_call() {
    let up = Upstream::start().await;
    up.publish(&[rsa()]);
    let n = now();
    up.set(
        "/tokeninfo",
        Reply {
            delay: Duration::from_millis(200),
            ..Reply::json(
                json!({"sub": "1234", "email": "opaque@example.com", "email_verified": "true",
                "scope": format!("{SCOPE} https://www.googleapis.com/auth/userinfo.email"),
                "exp": (n + 3600).to_string(), "expires_in": "3599"}),
            )
        },
    );
    let extra = format!("[token.tokeninfo]\nurl = \"{}\"\n", up.url("/tokeninfo"));
    let s = Arc::new(
        Server::start_with(Options {
            extra,
            upstream: Some(up.clone()),
            ..Default::default()
        })
        .await,
    );
    s.grant_deployment("prod", "orders", "user:opaque@example.com", INVOKER)
        .await;
    let client = s.client().await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = routed_request(Some("Bearer ya29.a0-opaque-token"), "prod", "orders");
            Outcome::from(client.check(req).await.unwrap().into_inner())
        }));
    }
    for t in tasks {
        let o = t.await.unwrap();
        assert!(o.allowed(), "{o:#?}");
        assert_eq!(
            o.header("x-verifyiam-principal"),
            Some("opaque@example.com")
        );
    }
    assert_eq!(up.hits("/tokeninfo"), 1);
}

#[tokio::test]
async fn unknown_kids_make_a_bounded_number_of_key_set_fetches() {
    let s = Server::start().await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    assert!(
        s.check(
            Some(&format!("Bearer {}", token("a@example.com"))),
            "prod",
            "orders"
        )
        .await
        .allowed()
    );
    let before = s.upstream.hits("/jwks");
    let client = s.client().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut client = client.clone();
        let t = rsa().sign_as(&format!("kid-{i}"), &claims(&format!("u{i}@example.com")));
        tasks.push(tokio::spawn(async move {
            let req = routed_request(Some(&format!("Bearer {t}")), "prod", "orders");
            Outcome::from(client.check(req).await.unwrap().into_inner())
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    }
    let fetches = s.upstream.hits("/jwks") - before;
    assert!(
        fetches <= 1,
        "{fetches} key-set fetches for 200 unknown kids"
    );
}

#[tokio::test]
async fn a_repeated_bad_opaque_token_reaches_tokeninfo_once() {
    let up = Upstream::start().await;
    up.publish(&[rsa()]);
    up.set(
        "/tokeninfo",
        Reply::status(
            400,
            r#"{"error":"invalid_token","error_description":"Invalid Value"}"#,
        ),
    );
    let extra = format!("[token.tokeninfo]\nurl = \"{}\"\n", up.url("/tokeninfo"));
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        ..Default::default()
    })
    .await;
    for _ in 0..10 {
        let o = s
            .check(Some("Bearer ya29.bad-token"), "prod", "orders")
            .await;
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    }
    assert_eq!(up.hits("/tokeninfo"), 1);
}

#[tokio::test]
async fn tokeninfo_that_fails_or_lies_never_allows() {
    let up = Upstream::start().await;
    up.publish(&[rsa()]);
    let extra = format!("[token.tokeninfo]\nurl = \"{}\"\n", up.url("/tokeninfo"));
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        ..Default::default()
    })
    .await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    let n = now();
    let cases = [
        (Reply::status(500, "oops"), 503, "HTTP 500"),
        (
            Reply::status(429, "slow down"),
            503,
            "rate limited: says nothing about the token",
        ),
        (
            Reply::status(200, &"x".repeat(200 * 1024)),
            503,
            "an answer far larger than any real one",
        ),
        (Reply::status(200, "{not json"), 503, "garbage JSON"),
        (
            Reply::json(json!({"sub": "1", "scope": SCOPE})),
            503,
            "no expiry",
        ),
        (
            Reply::json(
                json!({"sub": "1", "scope": SCOPE, "exp": (n - 3600).to_string(), "expires_in": "0"}),
            ),
            401,
            "expired an hour ago",
        ),
        (
            Reply::json(json!({"sub": "1", "scope": "email", "exp": (n + 600).to_string()})),
            403,
            "no cloud-platform scope",
        ),
    ];
    for (i, (reply, http, why)) in cases.into_iter().enumerate() {
        up.set("/tokeninfo", reply);
        let o = s
            .check(Some(&format!("Bearer ya29.case-{i}")), "prod", "orders")
            .await;
        assert!(!o.allowed(), "{why}: {o:#?}");
        assert_eq!(o.http, http, "{why}: {o:#?}");
    }
    // Without `email` (no userinfo.email scope) the subject, qualified by its issuer, is the
    // principal.
    up.set(
        "/tokeninfo",
        Reply::json(json!({"sub": "10987", "scope": SCOPE, "exp": (n + 600).to_string()})),
    );
    let o = s
        .check(Some("Bearer ya29.no-email"), "prod", "orders")
        .await;
    assert!(o.allowed(), "{o:#?}");
    assert_eq!(
        o.header("x-verifyiam-principal"),
        Some("https://accounts.google.com#10987")
    );
}

#[tokio::test]
async fn connection_reset_by_tokeninfo_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            // Unread request bytes + close = RST.
            let _ = stream.readable().await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    let extra = format!("[token.tokeninfo]\nurl = \"http://{addr}/tokeninfo\"\n");
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    let o = s.check(Some("Bearer ya29.reset"), "prod", "orders").await;
    o.assert_denied(UNAVAILABLE, 503, None);
}

#[tokio::test]
async fn introspection_decides_opaque_tokens() {
    let up = Upstream::start().await;
    up.publish(&[rsa()]);
    let n = now();
    let extra = format!(
        "[token.introspection]\nurl = \"{}\"\nclient_id = \"verifyiam\"\nclient_secret = \"s3cret\"\nemail_field = \"username\"\n",
        up.url("/introspect")
    );
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "orders", "user:intro@example.com", INVOKER)
        .await;
    up.set("/introspect", Reply::json(json!({"active": false})));
    s.check(Some("Bearer opaque-1"), "prod", "orders")
        .await
        .assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    up.set(
        "/introspect",
        Reply::json(
            json!({"active": true, "scope": SCOPE, "sub": "u-1", "username": "intro@example.com",
            "client_id": "app", "exp": n + 600}),
        ),
    );
    let o = s.check(Some("Bearer opaque-2"), "prod", "orders").await;
    assert!(o.allowed(), "{o:#?}");
    assert_eq!(o.header("x-verifyiam-principal"), Some("intro@example.com"));
    assert_eq!(up.hits("/introspect"), 2);
}

#[tokio::test]
async fn google_mode_against_a_second_verifyiam_grants_and_revokes() {
    // Instance A holds the policies; instance B asks A as if A were Google.
    let a = Server::start().await;
    let extra = format!(
        "[authz]\nmode = \"google\"\napigee_url = \"http://{}\"\ncache_ttl = \"0s\"\nrefresh_ahead = \"0s\"\nmax_stale = \"0s\"\n",
        a.admin
    );
    let b = Server::start_with(Options {
        extra,
        upstream: Some(a.upstream.clone()),
        ..Default::default()
    })
    .await;
    let alice = format!("Bearer {}", token("alice@example.com"));
    b.check(Some(&alice), "prod", "orders")
        .await
        .assert_denied(PERMISSION_DENIED, 403, None);
    a.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    assert!(b.check(Some(&alice), "prod", "orders").await.allowed());
    let (status, _) = a
        .post(
            &format!(
                "/v1/organizations/{PROJECT}/environments/prod/deployments/orders:setIamPolicy"
            ),
            Some(&token(ADMIN)),
            "{}",
        )
        .await;
    assert_eq!(status, 200);
    b.check(Some(&alice), "prod", "orders")
        .await
        .assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn google_mode_with_its_source_down_is_unavailable() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = format!("[authz]\nmode = \"google\"\napigee_url = \"http://{dead}\"\n");
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    let o = s
        .check(
            Some(&format!("Bearer {}", token("a@example.com"))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(UNAVAILABLE, 503, None);
}

/// A remote source whose answer and health the test controls.
struct Fake {
    allow: AtomicBool,
    fail: AtomicBool,
    calls: AtomicUsize,
    delay: Duration,
}

impl RemoteSource for Fake {
    fn may_invoke<'a>(
        &'a self,
        _token: &'a str,
        _target: &'a Target,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if self.fail.load(Ordering::SeqCst) {
                Err(SourceError::Unavailable("down".into()))
            } else {
                Ok(self.allow.load(Ordering::SeqCst))
            }
        }
        .boxed()
    }
}

fn principal() -> Arc<Principal> {
    Arc::new(Principal {
        id: "alice@example.com".into(),
        key: verifyiam::authn::principal_key("issuer", "alice@example.com", &[]),
        members: vec![
            "user:alice@example.com".into(),
            "allAuthenticatedUsers".into(),
        ],
        expires_at: u64::MAX,
        has_scope: true,
    })
}

/// An empty store: deployment facts only (the policy source is remote).
fn store() -> (tempfile::TempDir, Arc<verifyiam::store::PolicyStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(verifyiam::store::PolicyStore::open(dir.path(), "demo-project", &[]).unwrap());
    (dir, store)
}

fn fake(delay: Duration) -> Arc<Fake> {
    Arc::new(Fake {
        allow: AtomicBool::new(true),
        fail: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
        delay,
    })
}

fn authz_config() -> AuthzConfig {
    AuthzConfig {
        cache_ttl: Duration::from_secs(300),
        refresh_ahead: Duration::from_secs(60),
        max_stale: Duration::from_secs(3600),
        ..AuthzConfig::default()
    }
}

fn verdict(d: &Decision) -> Result<bool, Reason> {
    match d {
        Decision::Allow { .. } => Ok(true),
        Decision::Deny(d) if d.reason == Reason::PermissionDenied => Ok(false),
        Decision::Deny(d) => Err(d.reason),
    }
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_then_expires() {
    let source = fake(Duration::ZERO);
    let (_dir, store) = store();
    let authz = Authorizer::remote(
        store,
        source.clone(),
        &authz_config(),
        Duration::from_millis(150),
    );
    let target = Target::new("demo-project", "prod", "orders");
    assert_eq!(
        verdict(&authz.decide(principal(), "t", target.clone()).await),
        Ok(true)
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);

    // Within the TTL: from the cache, no call.
    tokio::time::advance(Duration::from_secs(100)).await;
    assert_eq!(
        verdict(&authz.decide(principal(), "t", target.clone()).await),
        Ok(true)
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);

    // Past the TTL with the source failing: the last verdict, served stale.
    source.fail.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(
        verdict(&authz.decide(principal(), "t", target.clone()).await),
        Ok(true)
    );

    // Past TTL + max_stale: no usable answer, unavailable (never an allow).
    tokio::time::advance(Duration::from_secs(3700)).await;
    assert_eq!(
        verdict(&authz.decide(principal(), "t", target.clone()).await),
        Err(Reason::Unavailable)
    );

    // The source recovers with a revocation: denied.
    source.fail.store(false, Ordering::SeqCst);
    source.allow.store(false, Ordering::SeqCst);
    assert_eq!(
        verdict(&authz.decide(principal(), "t", target).await),
        Ok(false)
    );
}

#[tokio::test(start_paused = true)]
async fn hot_decisions_are_refreshed_ahead_of_expiry() {
    let source = fake(Duration::ZERO);
    let (_dir, store) = store();
    let authz = Authorizer::remote(
        store,
        source.clone(),
        &authz_config(),
        Duration::from_millis(150),
    );
    let target = Target::new("demo-project", "prod", "orders");
    authz.decide(principal(), "t", target.clone()).await;
    // Inside the refresh-ahead window: answered from cache, refreshed in the background.
    tokio::time::advance(Duration::from_secs(250)).await;
    source.allow.store(false, Ordering::SeqCst);
    assert_eq!(
        verdict(&authz.decide(principal(), "t", target.clone()).await),
        Ok(true)
    );
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    // The refreshed verdict is what the next Check sees, with no wait.
    assert_eq!(
        verdict(&authz.decide(principal(), "t", target).await),
        Ok(false)
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_remote_questions_are_asked_once() {
    let source = fake(Duration::from_millis(50));
    let (_dir, store) = store();
    let authz = Arc::new(Authorizer::remote(
        store,
        source.clone(),
        &authz_config(),
        Duration::from_millis(150),
    ));
    let target = Target::new("demo-project", "prod", "orders");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (authz, target) = (authz.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            verdict(&authz.decide(principal(), "t", target).await)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(true));
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
}
