//! Bypasses and wrong answers found by an adversarial review, each pinned against a real server:
//! audiences, path spellings on the route table, forged service-account tokens, self-signed
//! token lifetimes, opaque-token verification past the deadline, identity hygiene, and custom
//! roles that would widen their own holder.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A server with an issuer that requires the audience `verifyiam`.
async fn audience_server() -> Server {
    let s = Server::start_with_issuer("https://aud.test", &["verifyiam"]).await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    s
}

#[tokio::test]
async fn configured_audiences_require_a_listed_string_audience() {
    let s = audience_server().await;
    let base = {
        let mut c = claims("alice@example.com");
        c["iss"] = json!("https://aud.test");
        c
    };
    for (aud, why) in [
        (None, "no aud"),
        (Some(json!(7)), "numeric aud"),
        (Some(json!({"aud": "verifyiam"})), "object aud"),
        (Some(json!([1, "other"])), "array without a listed string"),
        (Some(json!(["verifyiam", 3])), "array holding a non-string"),
        (Some(json!(null)), "null aud"),
        (Some(json!("VerifyIAM")), "case differs"),
        (Some(json!([])), "empty array"),
    ] {
        let mut c = base.clone();
        match aud {
            Some(a) => c["aud"] = a,
            None => {
                c.as_object_mut().unwrap().remove("aud");
            }
        }
        let o = s
            .check(
                Some(&format!("Bearer {}", rsa().sign(&c))),
                "prod",
                "orders",
            )
            .await;
        assert!(!o.allowed(), "{why}: allowed");
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
        assert!(o.message().contains("audience"), "{why}: {}", o.message());
    }
    let mut c = base.clone();
    c["aud"] = json!("verifyiam");
    let o = s
        .check(
            Some(&format!("Bearer {}", rsa().sign(&c))),
            "prod",
            "orders",
        )
        .await;
    assert!(o.allowed(), "{o:#?}");
}

/// `/orders` → orders, `/orders/admin` → orders-admin; alice holds only orders.
async fn route_server() -> Server {
    let extra = r#"
[[routes]]
path_prefix = "/orders"
environment = "prod"
deployment = "orders"
[[routes]]
path_prefix = "/orders/admin"
environment = "prod"
deployment = "orders-admin"
"#
    .to_owned();
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    s
}

#[tokio::test]
async fn spellings_of_a_more_specific_route_never_reach_a_less_specific_one() {
    let s = route_server().await;
    let bearer = format!("Bearer {}", token("alice@example.com"));
    assert!(
        s.send(check_request(Some(&bearer), "h", "/orders/1"))
            .await
            .allowed()
    );
    // Each of these is /orders/admin to some backend: routed there (403) or refused (400).
    for path in [
        "/orders/ADMIN",
        "/orders//admin",
        "/orders/%61dmin",
        "/orders/admin/",
        "/Orders/Admin/users",
        "//orders///admin",
    ] {
        let o = s.send(check_request(Some(&bearer), "h", path)).await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
        assert!(
            o.message().contains("deployments/orders-admin"),
            "{path}: {}",
            o.message()
        );
    }
    for (path, names) in [
        ("/orders/admin;x=1", "';'"),
        ("/orders/admin.", "'.'"),
        ("/orders/admin%20", "whitespace"),
        ("/orders/admin%2Fusers", "encoded '/'"),
        ("/orders/admin%2fusers", "encoded '/'"),
        ("/orders/admin%5Cusers", "encoded '\\'"),
        ("/orders\\admin", "'\\'"),
        ("/orders/admin%3bx", "';'"),
        ("/orders/%zzadmin", "percent"),
        ("/orders/admin%0a", "control"),
        ("/orders/admin%", "percent"),
        ("/orders/%252561dmin", "encoded '%'"),
        ("orders/admin", "'/'"),
        ("/orders/./admin", "'.' or '..' segment"),
        ("/orders/x/../admin", "'.' or '..' segment"),
        ("/orders/%2e/admin", "'.' or '..' segment"),
        ("/orders/x/%2E%2E/admin", "'.' or '..' segment"),
    ] {
        let o = s.send(check_request(Some(&bearer), "h", path)).await;
        assert!(!o.allowed(), "{path}: allowed");
        assert_eq!(o.grpc, INVALID_ARGUMENT, "{path}: {o:#?}");
        assert_eq!(o.http, 400, "{path}");
        assert_eq!(o.metadata["reason"], "invalid_request", "{path}");
        assert!(
            o.message().contains(names),
            "{path}: the message should name {names}: {}",
            o.message()
        );
    }
}

/// Routes `api.example.com` to `prod/api` and every other host to `prod/public`, on which alice
/// (whose bearer is returned) may invoke.
async fn host_routes_with_a_catch_all() -> (Server, String) {
    let extra = r#"
[[routes]]
host = "api.example.com"
path_prefix = "/"
environment = "prod"
deployment = "api"
[[routes]]
path_prefix = "/"
environment = "prod"
deployment = "public"
"#
    .to_owned();
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "public", "user:alice@example.com", INVOKER)
        .await;
    (s, format!("Bearer {}", token("alice@example.com")))
}

#[tokio::test]
async fn a_trailing_dot_on_the_host_does_not_fall_to_a_wider_route() {
    let (s, bearer) = host_routes_with_a_catch_all().await;
    for host in [
        "api.example.com.",
        "API.EXAMPLE.COM.:443",
        "api.example.com",
    ] {
        let o = s.send(check_request(Some(&bearer), host, "/x")).await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
        assert!(o.message().contains("deployments/api"), "{host}");
    }
}

/// A server trusting self-signed service-account tokens with keys under `/sa/{email}`.
async fn service_account_server(extra_sa: &str) -> (Server, Upstream, TestKey) {
    let up = Upstream::start().await;
    up.publish(&[rsa(), ec()]);
    let sa_key = TestKey::rsa("sa-key-1");
    up.set(
        "/sa/runner%40demo-project.iam.gserviceaccount.com",
        Reply::json(json!({"keys": [sa_key.jwk.clone()]})),
    );
    let extra = format!(
        "[token.google_service_accounts]\njwks_uri_template = \"{}\"\n{extra_sa}\n",
        up.url("/sa/{email}")
    );
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        server_extra: "on_dependency_failure = \"error\"".to_owned(),
        ..Default::default()
    })
    .await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    (s, up, sa_key)
}

#[tokio::test]
async fn a_service_account_without_keys_is_an_invalid_token_remembered_not_an_outage() {
    let (s, up, sa_key) = service_account_server("").await;
    let ghost = "ghost@demo-project.iam.gserviceaccount.com";
    let path = "/sa/ghost%40demo-project.iam.gserviceaccount.com";
    for status in [404, 403, 400, 410] {
        up.set(path, Reply::status(status, "{\"error\":\"not found\"}"));
        let n = now();
        // A new token each time: the token-level negative cache is not what answers.
        let c = json!({"iss": ghost, "sub": ghost, "scope": SCOPE, "iat": n - status as u64, "exp": n + 600});
        let mut client = s.client().await;
        let req = routed_request(
            Some(&format!("Bearer {}", sa_key.sign(&c))),
            "prod",
            "orders",
        );
        // on_dependency_failure = "error": an outage would be a gRPC error; this is a reply.
        let o = Outcome::from(
            client
                .check(req)
                .await
                .expect("a denial, not a failure")
                .into_inner(),
        );
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
        assert!(o.message().contains("key"), "{}", o.message());
    }
    // Remembered per account: more tokens for the same account do not refetch.
    let before = up.hits(path);
    for i in 0..5 {
        let n = now();
        let c =
            json!({"iss": ghost, "sub": ghost, "scope": SCOPE, "iat": n - 100 - i, "exp": n + 600});
        let o = s
            .check(
                Some(&format!("Bearer {}", sa_key.sign(&c))),
                "prod",
                "orders",
            )
            .await;
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    }
    assert_eq!(up.hits(path), before, "a keyless account was refetched");
    // 429 and 5xx still say nothing about the account: unavailable.
    let other = "busy@demo-project.iam.gserviceaccount.com";
    up.set(
        "/sa/busy%40demo-project.iam.gserviceaccount.com",
        Reply::status(429, "slow down"),
    );
    let n = now();
    let c = json!({"iss": other, "sub": other, "scope": SCOPE, "iat": n, "exp": n + 600});
    let req = routed_request(
        Some(&format!("Bearer {}", sa_key.sign(&c))),
        "prod",
        "orders",
    );
    let err = s.client().await.check(req).await.expect_err("unavailable");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn key_lookups_for_never_seen_accounts_are_rate_limited() {
    let (s, up, sa_key) = service_account_server("new_accounts_per_second = 2").await;
    let before = up.total();
    let started = std::time::Instant::now();
    let mut refused = 0;
    for i in 0..20 {
        let email = format!("random{i}@evil-project.iam.gserviceaccount.com");
        let n = now();
        let c = json!({"iss": email, "sub": email, "scope": SCOPE, "iat": n, "exp": n + 600});
        let o = s
            .check(
                Some(&format!("Bearer {}", sa_key.sign(&c))),
                "prod",
                "orders",
            )
            .await;
        // Never an outage (which a failure_mode_allow Envoy would let through): a denial.
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
        if o.message().contains("too many") {
            refused += 1;
        }
    }
    let fetched = up.total() - before;
    // A bucket of 2 that refills at 2/s: on a loaded machine the 20 Checks may take a while,
    // so the bound follows the time they took (at most the burst, the refill and one more).
    let allowed = 3 + (2.0 * started.elapsed().as_secs_f64()).floor() as usize;
    assert!(
        fetched <= allowed,
        "{fetched} key-set fetches for 20 unknown accounts at 2/s (at most {allowed})"
    );
    assert!(
        refused >= 20usize.saturating_sub(allowed),
        "{refused} refused (at least {})",
        20usize.saturating_sub(allowed)
    );
    let metrics = reqwest::get(s.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("verifyiam_service_account_lookups_limited_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn self_signed_service_account_tokens_are_capped_at_an_hour_and_checked_for_audience() {
    let (s, _up, sa_key) = service_account_server("").await;
    let sa = "runner@demo-project.iam.gserviceaccount.com";
    let n = now();
    let ok = json!({"iss": sa, "sub": sa, "scope": SCOPE, "iat": n, "exp": n + 3600});
    let allowed = |c: serde_json::Value| {
        let s = &s;
        let t = sa_key.sign(&c);
        async move {
            s.check(Some(&format!("Bearer {t}")), "prod", "orders")
                .await
        }
    };
    assert!(allowed(ok.clone()).await.allowed());
    for aud in [
        json!("https://apigee.googleapis.com/"),
        json!("https://apigee.googleapis.com"),
        json!(["https://apigee.googleapis.com/"]),
    ] {
        let mut c = ok.clone();
        c["aud"] = aud.clone();
        let o = allowed(c).await;
        assert!(o.allowed(), "aud {aud}: {o:#?}");
    }
    let cases = [
        ("exp", json!(n + 7200), "lifetime"),
        ("aud", json!("https://example.com/"), "audience"),
        ("aud", json!(7), "audience"),
        ("iat", serde_json::Value::Null, "iat"),
    ];
    for (claim, value, names) in cases {
        let mut c = ok.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(claim);
        } else {
            c[claim] = value;
        }
        let o = allowed(c).await;
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
        assert!(o.message().contains(names), "{claim}: {}", o.message());
    }
}

#[tokio::test]
async fn slow_tokeninfo_answers_are_cached_for_the_next_check() {
    let up = Upstream::start().await;
    up.publish(&[rsa()]);
    let n = now();
    up.set(
        "/tokeninfo",
        Reply {
            delay: Duration::from_millis(400),
            ..Reply::json(json!({"sub": "1234", "email": "opaque@example.com",
                "email_verified": "true", "scope": SCOPE,
                "exp": (n + 3600).to_string(), "expires_in": "3599"}))
        },
    );
    let extra = format!("[token.tokeninfo]\nurl = \"{}\"\n", up.url("/tokeninfo"));
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        deadline: "100ms".to_owned(),
        ..Default::default()
    })
    .await;
    s.grant_project("user:opaque@example.com", INVOKER).await;
    let bearer = "Bearer ya29.slow-opaque-token";
    // The first Check gives up at its deadline; the lookup goes on and its answer is kept.
    let o = s.check(Some(bearer), "prod", "orders").await;
    o.assert_denied(UNAVAILABLE, 503, None);
    let mut allowed = false;
    for _ in 0..100 {
        let o = s.check(Some(bearer), "prod", "orders").await;
        if o.allowed() {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(allowed, "the slow answer was never cached");
    assert_eq!(up.hits("/tokeninfo"), 1, "one lookup for every retry");
    // Google's documented form: the token as a form field, not in a URL.
    let (headers, body) = up.last_request("/tokeninfo").unwrap();
    assert_eq!(body, "access_token=ya29.slow-opaque-token");
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
}

#[tokio::test]
async fn opaque_lookups_in_flight_are_capped() {
    let up = Upstream::start().await;
    up.publish(&[rsa()]);
    up.set(
        "/tokeninfo",
        Reply {
            delay: Duration::from_millis(50),
            ..Reply::status(400, "{\"error\":\"invalid_token\"}")
        },
    );
    let extra = format!(
        "[token]\nmax_concurrent_lookups = 2\n[token.tokeninfo]\nurl = \"{}\"\n",
        up.url("/tokeninfo")
    );
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        ..Default::default()
    })
    .await;
    let client = s.client().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = routed_request(Some(&format!("Bearer ya29.random-{i}")), "prod", "orders");
            Outcome::from(client.check(req).await.unwrap().into_inner())
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    }
    assert_eq!(up.hits("/tokeninfo"), 20);
    let most = up.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} lookups in flight at once");
}

#[tokio::test]
async fn tokeninfo_and_introspection_refusals_are_invalid_tokens() {
    let up = Upstream::start().await;
    up.publish(&[rsa()]);
    let extra = format!(
        "[token.tokeninfo]\nurl = \"{}\"\n[token.introspection]\nurl = \"{}\"\n",
        up.url("/tokeninfo"),
        up.url("/introspect")
    );
    let s = Server::start_with(Options {
        extra,
        upstream: Some(up.clone()),
        ..Default::default()
    })
    .await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    for (i, status) in [400u16, 401, 413, 431].into_iter().enumerate() {
        up.set("/tokeninfo", Reply::status(status, ""));
        up.set("/introspect", Reply::status(status, ""));
        for token in [format!("ya29.refused-{i}"), format!("opaque-refused-{i}")] {
            let o = s
                .check(Some(&format!("Bearer {token}")), "prod", "orders")
                .await;
            o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
        }
    }
}

#[tokio::test]
async fn an_unverified_email_is_not_the_principal() {
    let s = Server::start().await;
    s.grant_project("user:alice@example.com", INVOKER).await;
    for verified in [
        json!(false),
        json!("false"),
        json!(null),
        json!("yes"),
        json!(1),
    ] {
        let mut c = claims("alice@example.com");
        if verified.is_null() {
            c.as_object_mut().unwrap().remove("email_verified");
        } else {
            c["email_verified"] = verified.clone();
        }
        let o = s
            .check(
                Some(&format!("Bearer {}", rsa().sign(&c))),
                "prod",
                "orders",
            )
            .await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
        assert_ne!(
            o.metadata.get("principal").map(String::as_str),
            Some("alice@example.com"),
            "email_verified {verified}"
        );
    }
    for verified in [json!(true), json!("true")] {
        let mut c = claims("alice@example.com");
        c["email_verified"] = verified;
        let o = s
            .check(
                Some(&format!("Bearer {}", rsa().sign(&c))),
                "prod",
                "orders",
            )
            .await;
        assert!(o.allowed(), "{o:#?}");
    }
}

#[tokio::test]
async fn control_characters_in_identity_claims_make_the_token_invalid() {
    let s = Server::start().await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    for (claim, value) in [
        ("email", "alice@example.com\r\nx-admin: yes"),
        ("sub", "1234\n5678"),
        ("sub", "12\u{7f}34"),
        ("email", "alice\u{0}@example.com"),
    ] {
        let mut c = claims("alice@example.com");
        c[claim] = json!(value);
        let o = s
            .check(
                Some(&format!("Bearer {}", rsa().sign(&c))),
                "prod",
                "orders",
            )
            .await;
        o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    }
}

#[tokio::test]
async fn a_principal_known_only_by_subject_is_shown_with_its_issuer() {
    let s = Server::start_with_issuer("https://other.test", &[]).await;
    s.grant_project("allAuthenticatedUsers", INVOKER).await;
    let mut seen = Vec::new();
    for iss in [ISSUER, "https://other.test"] {
        let n = now();
        let c = json!({"iss": iss, "sub": "12345", "scope": SCOPE, "iat": n, "exp": n + 600});
        let o = s
            .check(
                Some(&format!("Bearer {}", rsa().sign(&c))),
                "prod",
                "orders",
            )
            .await;
        assert!(o.allowed(), "{o:#?}");
        let p = o.header("x-verifyiam-principal").unwrap().to_owned();
        assert!(p.contains(iss) && p.contains("12345"), "{p}");
        seen.push(p);
    }
    assert_ne!(seen[0], seen[1]);
}

#[tokio::test]
async fn apigee_admin_cannot_manage_roles_or_widen_its_own() {
    let s = Server::start().await;
    let project = format!("/v1/projects/{PROJECT}");
    // The escalation as demonstrated: a custom role bound to apigee admins, widened by them.
    let owner = token(ADMIN);
    let (code, body) = s
        .post(
            &format!("{project}/roles"),
            Some(&owner),
            &json!({"roleId": "helper", "role": {"title": "helper", "includedPermissions": ["apigee.deployments.get"]}})
                .to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    s.grant_project("user:mallory@example.com", "roles/apigee.admin")
        .await;
    s.grant_project(
        "user:mallory@example.com",
        &format!("projects/{PROJECT}/roles/helper"),
    )
    .await;
    let mallory = token("mallory@example.com");
    let (code, body) = s
        .call(
            reqwest::Method::PATCH,
            &format!("{project}/roles/helper"),
            Some(&mallory),
            Some(&json!({"includedPermissions": ["apigee.deployments.get", "resourcemanager.projects.setIamPolicy"]})
                .to_string()),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = s
        .post(
            &format!("{project}/roles"),
            Some(&mallory),
            &json!({"roleId": "mine", "role": {"includedPermissions": ["apigee.deployments.get"]}})
                .to_string(),
        )
        .await;
    assert_eq!(code, 403, "{body}");

    // A role administrator manages roles, but cannot put in a role what it does not hold.
    s.grant_project("user:roles@example.com", "roles/iam.roleAdmin")
        .await;
    let role_admin = token("roles@example.com");
    let (code, body) = s
        .post(
            &format!("{project}/roles"),
            Some(&role_admin),
            &json!({"roleId": "wide", "role": {"includedPermissions": ["resourcemanager.projects.setIamPolicy"]}})
                .to_string(),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.to_string()
            .contains("resourcemanager.projects.setIamPolicy"),
        "{body}"
    );
    let (code, body) = s
        .post(
            &format!("{project}/roles"),
            Some(&role_admin),
            &json!({"roleId": "narrow", "role": {"includedPermissions": ["iam.roles.get"]}})
                .to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = s
        .call(
            reqwest::Method::PATCH,
            &format!("{project}/roles/helper"),
            Some(&role_admin),
            Some(&json!({"includedPermissions": ["apigee.deployments.get", "apigee.deployments.invoke"]})
                .to_string()),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    // Keeping what the role has, even what the caller lacks, and dropping some, is allowed.
    let (code, body) = s
        .call(
            reqwest::Method::PATCH,
            &format!("{project}/roles/helper"),
            Some(&role_admin),
            Some(&json!({"title": "renamed"}).to_string()),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // And the owner may do it all.
    let (code, body) = s
        .call(
            reqwest::Method::PATCH,
            &format!("{project}/roles/helper"),
            Some(&owner),
            Some(&json!({"includedPermissions": ["apigee.deployments.get", "apigee.deployments.invoke"]})
                .to_string()),
        )
        .await;
    assert_eq!(code, 200, "{body}");
}

/// Bytes that are not a `CheckRequest` earn a denial (400 `INVALID_ARGUMENT`), never a gRPC
/// error: Envoy turns a failed Check into its failure policy, which may allow.
#[tokio::test]
async fn undecodable_check_requests_are_denied_not_failed() {
    let server = Server::start().await;
    let cases: [(&[u8], &str); 6] = [
        (&[0x0a, 0x05, 0x00], "a length past the end"),
        (&[0x08, 0x01], "attributes as a varint"),
        (&[0x00], "field number 0"),
        (&[0x0f], "an unknown wire type"),
        (&[0x13], "a group never closed"),
        // attributes { request { http { host: "\xff" } } }: a string that is not UTF-8.
        (
            &[0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x2a, 0x01, 0xff],
            "a host that is not UTF-8",
        ),
    ];
    for (bytes, what) in cases {
        let outcome = server
            .send_bytes(bytes.to_vec())
            .await
            .unwrap_or_else(|e| panic!("{what}: a gRPC error instead of a denial: {e:?}"));
        outcome.assert_denied(INVALID_ARGUMENT, 400, None);
        assert!(
            outcome.message().contains("not a valid CheckRequest"),
            "{what}: {outcome:#?}"
        );
        assert_eq!(outcome.metadata["decision"], "deny", "{what}");
    }
    // An empty message is a valid, empty CheckRequest: nothing routes it.
    let empty = server.send_bytes(Vec::new()).await.unwrap();
    empty.assert_denied(PERMISSION_DENIED, 403, None);
    assert_eq!(empty.metadata["reason"], "no_route");
}

/// The reserved characters a route prefix may hold raw (RFC 3986 sub-delimiters but `;`, which
/// is refused, plus `:` and `@`), with their encodings.
const SUB_DELIMITERS: [(char, &str); 12] = [
    (':', "3A"),
    ('@', "40"),
    ('!', "21"),
    ('$', "24"),
    ('&', "26"),
    ('\'', "27"),
    ('(', "28"),
    (')', "29"),
    ('*', "2A"),
    ('+', "2B"),
    (',', "2C"),
    ('=', "3D"),
];

/// Asserts a 400 `INVALID_ARGUMENT` (reason `invalid_request`) whose message names `names`.
fn assert_refused(o: &Outcome, what: &str, names: &str) {
    assert!(!o.allowed(), "{what}: allowed");
    assert_eq!(o.grpc, INVALID_ARGUMENT, "{what}: {o:#?}");
    assert_eq!(o.http, 400, "{what}");
    assert_eq!(o.metadata["reason"], "invalid_request", "{what}");
    assert!(
        o.message().contains(names),
        "{what}: the message should name {names}: {}",
        o.message()
    );
}

/// A routes table with `/api` → public (granted to alice) and, for every sub-delimiter `c`,
/// `/api/x{c}y` → secret; plus `/api/v1/orders:cancel` and `/api/users/@admin` → secret, and one
/// prefix written encoded in the configuration (`/api/enc%2Aed` → secret).
async fn sub_delimiter_server() -> Server {
    let route = |prefix: &str, deployment: &str| {
        format!(
            "[[routes]]\npath_prefix = \"{prefix}\"\nenvironment = \"prod\"\ndeployment = \"{deployment}\"\n"
        )
    };
    let mut extra = route("/api", "public");
    for prefix in [
        "/api/v1/orders:cancel",
        "/api/users/@admin",
        "/api/enc%2Aed",
    ] {
        extra.push_str(&route(prefix, "secret"));
    }
    for (c, _) in SUB_DELIMITERS {
        extra.push_str(&route(&format!("/api/x{c}y"), "secret"));
    }
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "public", "user:alice@example.com", INVOKER)
        .await;
    s
}

/// Flask/Werkzeug and the JDK's HttpServer decode `%3A` to `:` before routing, and Envoy's
/// `normalize_path` leaves it encoded: every spelling of a sub-delimiter must reach the route its
/// decoded form names, on both sides (request and configured prefix).
#[tokio::test]
async fn encoded_sub_delimiters_reach_the_route_their_decoded_form_names() {
    let s = sub_delimiter_server().await;
    let bearer = format!("Bearer {}", token("alice@example.com"));
    let mut paths = vec![
        "/api/v1/orders%3Acancel".to_owned(),
        "/api/v1/orders%3acancel".to_owned(),
        "/api/v1/ORDERS%3ACANCEL/1".to_owned(),
        "/api/users/%40admin".to_owned(),
        "/api/users/%40admin/keys".to_owned(),
        "/api/enc*ed".to_owned(),
        "/api/enc%2aed/1".to_owned(),
    ];
    for (c, hex) in SUB_DELIMITERS {
        paths.push(format!("/api/x{c}y"));
        paths.push(format!("/api/x%{hex}y"));
        paths.push(format!("/api/x%{}y/1", hex.to_ascii_lowercase()));
    }
    for path in &paths {
        let o = s.send(check_request(Some(&bearer), "h", path)).await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
        assert!(
            o.message().contains("deployments/secret"),
            "{path}: {}",
            o.message()
        );
    }
    // Legitimate encoded data still passes where no more specific route exists.
    for path in [
        "/api/users/alice%40example.com",
        "/api/v1/orders%3Alist",
        "/api/search/a%2Bb%3Dc",
    ] {
        let o = s.send(check_request(Some(&bearer), "h", path)).await;
        assert!(o.allowed(), "{path}: {o:#?}");
    }
}

/// `/api/admin/..` is `/api` to this service's old resolver but `/api/admin` to Flask and the JDK
/// HttpServer: on the routes table a `.` or `..` segment, raw or encoded in any case, is refused.
#[tokio::test]
async fn dot_segments_on_the_route_table_are_refused() {
    let extra = r#"
[[routes]]
path_prefix = "/api"
environment = "prod"
deployment = "public"
[[routes]]
path_prefix = "/api/admin"
environment = "prod"
deployment = "admin"
"#
    .to_owned();
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    s.grant_deployment("prod", "public", "user:alice@example.com", INVOKER)
        .await;
    let bearer = format!("Bearer {}", token("alice@example.com"));
    for path in [
        "/api/admin/..",
        "/api/admin/../",
        "/api/admin/%2e%2e",
        "/api/admin/%2E%2E",
        "/api/admin/.%2e",
        "/api/admin/%2E.",
        "/api/admin/.",
        "/api/admin/%2e",
        "/api/./admin",
        "/api/x/../admin",
        "/api/admin/../x",
        "/./api",
        "/..",
        "/api/admin/..?x=1",
    ] {
        let o = s.send(check_request(Some(&bearer), "h", path)).await;
        assert_refused(&o, path, "'.' or '..' segment");
    }
    // Dots inside a segment are data.
    for path in [
        "/api/v1.2/x",
        "/api/.well-known",
        "/api/a..b",
        "/api/x?p=/../admin",
    ] {
        let o = s.send(check_request(Some(&bearer), "h", path)).await;
        assert!(o.allowed(), "{path}: {o:#?}");
    }
    // Named by Envoy's route (context_extensions), the path does not choose the deployment:
    // a dot segment in it changes nothing.
    let mut routed = routed_request(Some(&bearer), "prod", "public");
    routed
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap()
        .path = "/api/admin/..".into();
    assert!(s.send(routed).await.allowed());
}

/// Malformed hosts are 400 like the other malformed hosts, never a catch-all route.
#[tokio::test]
async fn malformed_hosts_never_reach_a_catch_all_route() {
    let (s, bearer) = host_routes_with_a_catch_all().await;
    for host in [
        "api.example.com..",
        "api.example.com:abc",
        "api.example.com:443:443",
        "api.example.com:+443",
        "api.example.com:-443",
        "api.example.com:",
        "api.example.com.:",
        "api.example.com:65536",
        "api.example.com:99999999999999999999",
        "api.example.com:0",
        "api.example.com:0443",
        "api.example.com: 443",
        ".api.example.com",
        "api..example.com",
        ".",
        ":443",
        "api.example.com*",
        "api.example.com!",
        "[::1",
        "[::1]443",
        "[::1]:",
        "[::1]:abc",
        "[::1]:443:443",
        "[zz]",
        "[]",
        "[v1.x]",
        "::1",
        "::1:443",
        "[[::1]]",
        "127.0.0.01",
        "127.1",
        "256.0.0.1",
        "0x7f.0.0.1",
    ] {
        let o = s.send(check_request(Some(&bearer), host, "/x")).await;
        assert_refused(&o, host, "host");
    }
    for (host, deployment) in [
        ("api.example.com", "api"),
        ("API.Example.COM:443", "api"),
        ("api.example.com.:8443", "api"),
        ("api.example.com:65535", "api"),
    ] {
        let o = s.send(check_request(Some(&bearer), host, "/x")).await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
        assert!(
            o.message().contains(&format!("deployments/{deployment}")),
            "{host}"
        );
    }
    for host in [
        "other.test",
        "other.test:8080",
        "localhost",
        "127.0.0.1:9001",
        "[::1]",
        "[::1]:443",
        "[2001:db8::1]:8443",
        "svc_internal.local",
    ] {
        let o = s.send(check_request(Some(&bearer), host, "/x")).await;
        assert!(o.allowed(), "{host}: {o:#?}");
    }
}
