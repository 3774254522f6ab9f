//! The Check path end to end: a real server on 127.0.0.1:0, Envoy's own message types over real
//! gRPC, a local JWK-set server, and tokens minted here. Every bad input earns a clear denial.

mod common;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as EnvoyHeaderMap, HeaderValue};
use serde_json::json;

const DEPLOYMENT_NAME: &str = "organizations/demo-project/environments/prod/deployments/orders";

#[tokio::test]
async fn no_authorization_header_is_invalid_request() {
    let s = Server::start().await;
    let o = s.check(None, "prod", "orders").await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_request"));
    assert_eq!(o.body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(o.header("content-type"), Some("application/json"));
    assert_eq!(o.metadata["reason"], "invalid_request");
}

#[tokio::test]
async fn malformed_authorization_headers_are_invalid_request() {
    let s = Server::start().await;
    let long = format!("Bearer {}", "a".repeat(64 * 1024));
    for (value, why) in [
        ("Bearer", "empty"),
        ("Bearer   ", "empty"),
        ("Basic dXNlcjpwYXNz", "not Bearer"),
        ("Bearer a.b.c, Bearer d.e.f", "two values joined by Envoy"),
        ("Bearer a b", "two tokens"),
        (
            "Bearer abc.def.%%%",
            "characters outside RFC 6750's b64token",
        ),
        (long.as_str(), "64 KiB"),
    ] {
        let o = s.check(Some(value), "prod", "orders").await;
        assert_eq!(o.http, 401, "{why}: {o:#?}");
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_request"));
    }
}

#[tokio::test]
async fn two_authorization_entries_in_header_map_are_invalid_request() {
    let s = Server::start().await;
    let t = token("alice@example.com");
    let mut req = check_request(None, "api.example.com", "/");
    let attrs = req.attributes.as_mut().unwrap();
    attrs
        .context_extensions
        .insert("environment".into(), "prod".into());
    attrs
        .context_extensions
        .insert("deployment".into(), "orders".into());
    let http = attrs.request.as_mut().unwrap().http.as_mut().unwrap();
    http.headers.clear();
    http.header_map = Some(EnvoyHeaderMap {
        headers: vec![
            HeaderValue {
                key: "authorization".into(),
                raw_value: format!("Bearer {t}").into_bytes(),
                ..Default::default()
            },
            HeaderValue {
                key: "Authorization".into(),
                raw_value: format!("Bearer {t}").into_bytes(),
                ..Default::default()
            },
        ],
    });
    let o = s.send(req).await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_request"));
    assert!(o.message().contains("more than one"), "{o:#?}");
}

#[tokio::test]
async fn raw_header_map_and_mixed_case_names_are_read() {
    let s = Server::start().await;
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let t = token("alice@example.com");
    // encode_raw_headers: headers empty, header_map carries bytes.
    let mut req = check_request(None, "api.example.com", "/");
    let attrs = req.attributes.as_mut().unwrap();
    attrs
        .context_extensions
        .insert("environment".into(), "prod".into());
    attrs
        .context_extensions
        .insert("deployment".into(), "orders".into());
    let http = attrs.request.as_mut().unwrap().http.as_mut().unwrap();
    http.headers.clear();
    http.header_map = Some(EnvoyHeaderMap {
        headers: vec![HeaderValue {
            key: "authorization".into(),
            raw_value: format!("Bearer {t}").into_bytes(),
            ..Default::default()
        }],
    });
    assert!(s.send(req).await.allowed());
    // A client that does not lowercase header names.
    let mut req = check_request(None, "api.example.com", "/");
    let attrs = req.attributes.as_mut().unwrap();
    attrs
        .context_extensions
        .insert("environment".into(), "prod".into());
    attrs
        .context_extensions
        .insert("deployment".into(), "orders".into());
    let http = attrs.request.as_mut().unwrap().http.as_mut().unwrap();
    http.headers
        .insert("Authorization".into(), format!("bearer {t}"));
    assert!(s.send(req).await.allowed());
}

#[tokio::test]
async fn forged_and_broken_tokens_are_invalid_token() {
    let s = Server::start().await;
    let c = claims("alice@example.com");
    let header_rs = json!({"alg": "RS256", "kid": rsa().kid, "typ": "JWT"});
    let signed = rsa().sign(&c);
    let sig = signed.rsplit('.').next().unwrap();
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(rsa().kid.clone());
        jsonwebtoken::encode(
            &h,
            &c,
            &jsonwebtoken::EncodingKey::from_secret(rsa().public_pem.as_bytes()),
        )
        .unwrap()
    };
    let cases: Vec<(String, &str)> = vec![
        ("notajwt".into(), "not a JWT"),
        (
            "ya29.opaque-token".into(),
            "opaque with no tokeninfo configured",
        ),
        (
            format!("{}.a+b/c.{sig}", b64(&header_rs)),
            "bad base64 in claims",
        ),
        (
            format!("{}.{}x.{sig}", b64(&header_rs), b64(&c)),
            "claims of impossible base64 length",
        ),
        (format!("x+y/z.{}.{sig}", b64(&c)), "bad base64 in header"),
        (
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&c)
            ),
            "alg none",
        ),
        (
            format!(
                "{}.{}.{sig}",
                b64(&json!({"alg": "none", "kid": rsa().kid})),
                b64(&c)
            ),
            "alg none with a signature",
        ),
        (hs256, "HS256 signed with the public key's bytes"),
        (
            rogue().sign_as(&rsa().kid, &c),
            "RS256 signed by another key under the right kid",
        ),
        (rsa().sign_as("no-such-kid", &c), "unknown kid"),
        (
            format!(
                "{}.{}.{sig}",
                b64(&header_rs),
                b64(&claims("mallory@example.com"))
            ),
            "claims swapped under a valid signature",
        ),
    ];
    for (t, why) in cases {
        let o = s
            .check(Some(&format!("Bearer {t}")), "prod", "orders")
            .await;
        assert_eq!(o.grpc, UNAUTHENTICATED, "{why}: {o:#?}");
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
        assert!(!o.message().is_empty(), "{why}");
    }
}

#[tokio::test]
async fn time_claims_are_enforced_with_leeway() {
    let s = Server::start().await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    let n = now();
    let with = |patch: serde_json::Value| {
        let mut c = claims("alice@example.com");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        rsa().sign(&c)
    };
    for (t, why, text) in [
        (
            with(json!({"exp": n - 120, "iat": n - 3720})),
            "expired",
            "expired",
        ),
        (
            with(json!({"nbf": n + 600})),
            "nbf in the future",
            "not valid yet",
        ),
        (with(json!({"iat": n + 600})), "iat in the future", "future"),
    ] {
        let o = s
            .check(Some(&format!("Bearer {t}")), "prod", "orders")
            .await;
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
        assert!(o.message().contains(text), "{why}: {}", o.message());
    }
    // Within the 30 s default leeway: still accepted.
    let t = with(json!({"exp": n - 5}));
    assert!(
        s.check(Some(&format!("Bearer {t}")), "prod", "orders")
            .await
            .allowed()
    );
}

#[tokio::test]
async fn wrong_issuer_and_wrong_audience_are_invalid_token() {
    let s = Server::start_with_issuer("https://aud.test", &["verifyiam"]).await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    let mut c = claims("alice@example.com");
    c["iss"] = json!("https://evil.test");
    let o = s
        .check(
            Some(&format!("Bearer {}", rsa().sign(&c))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    assert!(o.message().contains("issuer"), "{}", o.message());

    let mut c = claims("alice@example.com");
    c["iss"] = json!("https://aud.test");
    c["aud"] = json!("someone-else");
    let o = s
        .check(
            Some(&format!("Bearer {}", rsa().sign(&c))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    assert!(o.message().contains("audience"), "{}", o.message());

    c["aud"] = json!(["other", "verifyiam"]);
    assert!(
        s.check(
            Some(&format!("Bearer {}", rsa().sign(&c))),
            "prod",
            "orders"
        )
        .await
        .allowed()
    );
}

#[tokio::test]
async fn token_without_scope_is_insufficient_scope() {
    let s = Server::start().await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    let mut c = claims("alice@example.com");
    c["scope"] = json!("openid email");
    let o = s
        .check(
            Some(&format!("Bearer {}", rsa().sign(&c))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, Some("insufficient_scope"));
    assert!(
        o.header("www-authenticate")
            .unwrap()
            .contains(&format!("scope=\"{SCOPE}\""))
    );
    // `scp` as a list carries the scope too.
    let mut c = claims("alice@example.com");
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["openid", SCOPE]);
    assert!(
        s.check(
            Some(&format!("Bearer {}", rsa().sign(&c))),
            "prod",
            "orders"
        )
        .await
        .allowed()
    );
}

#[tokio::test]
async fn valid_token_without_binding_is_denied_naming_the_permission() {
    let s = Server::start().await;
    let o = s
        .check(
            Some(&format!("Bearer {}", token("alice@example.com"))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    assert_eq!(
        o.message(),
        format!(
            "Permission 'apigee.deployments.invoke' denied on resource '{DEPLOYMENT_NAME}' (or it may not exist)."
        )
    );
    assert_eq!(o.body["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(o.metadata["principal"], "alice@example.com");
    assert_eq!(o.metadata["deployment"], DEPLOYMENT_NAME);
}

#[tokio::test]
async fn deployment_grant_allows_exactly_that_deployment() {
    let s = Server::start().await;
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let bearer = format!("Bearer {}", token("alice@example.com"));
    let o = s.check(Some(&bearer), "prod", "orders").await;
    assert!(o.allowed(), "{o:#?}");
    assert_eq!(o.metadata["deployment"], DEPLOYMENT_NAME);
    // The access log can say through which grant: the deployment's own policy.
    assert_eq!(o.metadata["level"], "deployment");
    // A cached decision names it too.
    let again = s.check(Some(&bearer), "prod", "orders").await;
    assert_eq!(again.metadata["level"], "deployment");
    for (env, api) in [("prod", "payments"), ("test", "orders")] {
        s.check(Some(&bearer), env, api)
            .await
            .assert_denied(PERMISSION_DENIED, 403, None);
    }
    // Another principal is not covered.
    let other = format!("Bearer {}", token("bob@example.com"));
    s.check(Some(&other), "prod", "orders")
        .await
        .assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn environment_grant_does_not_pass_down() {
    let s = Server::start().await;
    s.grant_environment("prod", "user:alice@example.com", INVOKER)
        .await;
    let o = s
        .check(
            Some(&format!("Bearer {}", token("alice@example.com"))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    // A denial names no granting level.
    assert!(!o.metadata.contains_key("level"), "{o:#?}");
}

#[tokio::test]
async fn project_grant_allows_every_deployment() {
    let s = Server::start().await;
    s.grant_project("domain:example.com", INVOKER).await;
    let bearer = format!("Bearer {}", ec().sign(&claims("alice@example.com")));
    for (env, api) in [("prod", "orders"), ("test", "payments"), ("dev", "x")] {
        let o = s.check(Some(&bearer), env, api).await;
        assert!(o.allowed());
        assert_eq!(o.metadata["level"], "project");
    }
    // Granted at both levels, the project's grant is the one named.
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let o = s.check(Some(&bearer), "prod", "orders").await;
    assert_eq!(o.metadata["level"], "project");
    // Another organization is not the project's.
    let mut req = check_request(Some(&bearer), "h", "/");
    let ext = &mut req.attributes.as_mut().unwrap().context_extensions;
    ext.insert("organization".into(), "other-org".into());
    ext.insert("environment".into(), "prod".into());
    ext.insert("deployment".into(), "orders".into());
    s.send(req)
        .await
        .assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn revoke_with_empty_policy_denies_the_next_check() {
    let s = Server::start().await;
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let bearer = format!("Bearer {}", token("alice@example.com"));
    assert!(s.check(Some(&bearer), "prod", "orders").await.allowed());
    let path =
        format!("/v1/organizations/{PROJECT}/environments/prod/deployments/orders:setIamPolicy");
    let (status, v) = s.post(&path, Some(&token(ADMIN)), "{}").await;
    assert_eq!(status, 200, "{v}");
    assert!(v.get("bindings").is_none(), "{v}");
    s.check(Some(&bearer), "prod", "orders")
        .await
        .assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn allow_overwrites_a_spoofed_principal_header() {
    let s = Server::start().await;
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let mut req = check_request(
        Some(&format!("Bearer {}", token("alice@example.com"))),
        "h",
        "/",
    );
    let attrs = req.attributes.as_mut().unwrap();
    attrs
        .context_extensions
        .insert("environment".into(), "prod".into());
    attrs
        .context_extensions
        .insert("deployment".into(), "orders".into());
    let http = attrs.request.as_mut().unwrap().http.as_mut().unwrap();
    http.headers
        .insert("x-verifyiam-principal".into(), "admin@example.com".into());
    let o = s.send(req).await;
    assert!(o.allowed());
    let (_, value, action) = o
        .headers
        .iter()
        .find(|(k, _, _)| k == "x-verifyiam-principal")
        .unwrap();
    assert_eq!(value, "alice@example.com");
    // OVERWRITE_IF_EXISTS_OR_ADD: the client's copy is replaced, never appended to.
    assert_eq!(*action, 2);
    assert_eq!(
        o.headers
            .iter()
            .filter(|(k, _, _)| k == "x-verifyiam-principal")
            .count(),
        1
    );
    assert_eq!(o.metadata["decision"], "allow");
}

#[tokio::test]
async fn route_table_maps_requests_and_unmapped_ones_are_denied() {
    let extra = r#"
[[routes]]
host = "api.example.com"
path_prefix = "/orders"
environment = "prod"
deployment = "orders"
[[routes]]
host = "*.example.com"
path_prefix = "/"
environment = "prod"
deployment = "catchall"
"#
    .to_owned();
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let bearer = format!("Bearer {}", token("alice@example.com"));
    let o = s
        .send(check_request(
            Some(&bearer),
            "api.example.com",
            "/orders/42?x=1",
        ))
        .await;
    assert!(o.allowed(), "{o:#?}");
    // Same host, other API: mapped to the catch-all, where alice has no grant.
    let o = s
        .send(check_request(Some(&bearer), "api.example.com", "/ordersx"))
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    assert!(
        o.message().contains("deployments/catchall"),
        "{}",
        o.message()
    );
    // Unmapped host: denied, never allowed.
    let o = s
        .send(check_request(Some(&bearer), "api.other.org", "/orders"))
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    assert_eq!(o.metadata["reason"], "no_route");
}

#[tokio::test]
async fn no_route_and_no_extensions_is_denied() {
    let s = Server::start().await;
    let bearer = format!("Bearer {}", token(ADMIN));
    let o = s
        .send(check_request(Some(&bearer), "api.example.com", "/"))
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    assert!(o.message().contains("no deployment"), "{}", o.message());
}

#[tokio::test]
async fn an_empty_check_request_is_denied() {
    let s = Server::start().await;
    let o = s
        .send(envoy_types::pb::envoy::service::auth::v3::CheckRequest::default())
        .await;
    assert!(!o.allowed());
    assert_eq!(o.http, 403);
}

#[tokio::test]
async fn service_account_self_signed_jwt_is_verified_against_its_own_key_set() {
    let up = Upstream::start().await;
    up.publish(&[rsa(), ec()]);
    let sa = "runner@demo-project.iam.gserviceaccount.com";
    let sa_key = TestKey::rsa("sa-key-1");
    up.set(
        "/sa/runner%40demo-project.iam.gserviceaccount.com",
        Reply::json(json!({"keys": [sa_key.jwk.clone()]})),
    );
    let extra = format!(
        "[token.google_service_accounts]\njwks_uri_template = \"{}\"\n",
        up.url("/sa/{email}")
    );
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "orders", &format!("serviceAccount:{sa}"), INVOKER)
        .await;
    let n = now();
    let c = json!({"iss": sa, "sub": sa, "scope": SCOPE, "iat": n, "exp": n + 3600});
    let o = s
        .check(
            Some(&format!("Bearer {}", sa_key.sign(&c))),
            "prod",
            "orders",
        )
        .await;
    assert!(o.allowed(), "{o:#?}");
    assert_eq!(o.header("x-verifyiam-principal"), Some(sa));
    // Signed by a key the account never published.
    let o = s
        .check(
            Some(&format!("Bearer {}", rsa().sign_as("sa-key-1", &c))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    // sub must equal iss for a self-signed token.
    let mut bad = c.clone();
    bad["sub"] = json!("someone@example.com");
    let o = s
        .check(
            Some(&format!("Bearer {}", sa_key.sign(&bad))),
            "prod",
            "orders",
        )
        .await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    // An account whose key set does not exist (404) is refused, not allowed.
    let other = "ghost@demo-project.iam.gserviceaccount.com";
    let c = json!({"iss": other, "sub": other, "scope": SCOPE, "iat": n, "exp": n + 3600});
    let o = s
        .check(
            Some(&format!("Bearer {}", sa_key.sign(&c))),
            "prod",
            "orders",
        )
        .await;
    assert!(!o.allowed());
}

#[tokio::test]
async fn verified_tokens_are_cached_and_key_sets_fetched_once() {
    let s = Server::start().await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    let fetches = s.upstream.hits("/jwks");
    let bearer = format!("Bearer {}", token("carol@example.com"));
    for _ in 0..20 {
        assert!(s.check(Some(&bearer), "prod", "orders").await.allowed());
    }
    let t2 = format!("Bearer {}", ec().sign(&claims("dave@example.com")));
    assert!(s.check(Some(&t2), "prod", "orders").await.allowed());
    assert!(
        s.upstream.hits("/jwks") - fetches <= 1,
        "key set refetched per Check"
    );
}

#[tokio::test]
async fn key_set_outage_or_garbage_without_cache_is_unavailable_not_allowed() {
    for (reply, why) in [
        (Reply::status(500, "boom"), "HTTP 500"),
        (Reply::status(200, "<html>not json"), "not a key set"),
    ] {
        let up = Upstream::start().await;
        up.set("/jwks", reply);
        let s = Server::start_with(Options {
            upstream: Some(up),
            ..Default::default()
        })
        .await;
        let bearer = format!("Bearer {}", token("alice@example.com"));
        let o = s.check(Some(&bearer), "prod", "orders").await;
        assert!(!o.allowed(), "{why}");
        o.assert_denied(UNAVAILABLE, 503, None);
        assert!(o.header("retry-after").is_some(), "{why}");
    }
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let s = Server::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.extauthz))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
