//! Workload and workforce identity federation end to end: issuers that belong to pools, tokens
//! shaped as Kubernetes projected service-account tokens and GitHub Actions OIDC tokens (signed
//! by the local issuer's keys), pool members granted through the admin API, and real gRPC
//! Checks.

mod common;

use common::*;
use serde_json::{Value, json};
use verifyiam::config::Config;

const K8S_ISSUER: &str = "https://cluster.test";
const K8S_AUDIENCE: &str = "https://verifyiam.test";
const K8S_POOL: &str = "projects/123456/locations/global/workloadIdentityPools/k8s";
const GITHUB_ISSUER: &str = "https://ci.test";
const GITHUB_AUDIENCE: &str = "https://github.com/acme";
const GITHUB_POOL: &str = "projects/123456/locations/global/workloadIdentityPools/github";
const PARTNER_ISSUER: &str = "https://partner.test";
const PARTNER_POOL: &str = "locations/global/workforcePools/partners";
const ORDERS: &str = "system:serviceaccount:default:orders";
const BILLING: &str = "system:serviceaccount:default:billing";

fn principal(pool: &str, subject: &str) -> String {
    format!("principal://iam.googleapis.com/{pool}/subject/{subject}")
}

fn principal_set(pool: &str, rest: &str) -> String {
    format!("principalSet://iam.googleapis.com/{pool}/{rest}")
}

/// A server trusting the three pools' issuers (their keys at the upstream's `/jwks`).
async fn server() -> Server {
    let up = Upstream::start().await;
    up.publish(&[rsa(), ec()]);
    let jwks = up.url("/jwks");
    let extra = format!(
        r#"
[[token.jwt]]
issuer = "{K8S_ISSUER}"
jwks_uri = "{jwks}"
audiences = ["{K8S_AUDIENCE}"]
[token.jwt.federation]
pool = "{K8S_POOL}"
attribute_mapping = {{ "google.subject" = "assertion.sub", "attribute.namespace" = "assertion['kubernetes.io']['namespace']" }}

[[token.jwt]]
issuer = "{GITHUB_ISSUER}"
jwks_uri = "{jwks}"
audiences = ["{GITHUB_AUDIENCE}"]
[token.jwt.federation]
pool = "{GITHUB_POOL}"
attribute_mapping = {{ "google.subject" = "assertion.sub", "attribute.repository" = "assertion.repository", "attribute.repository_owner" = "assertion.repository_owner" }}
attribute_condition = "assertion.repository_owner == 'acme'"

[[token.jwt]]
issuer = "{PARTNER_ISSUER}"
jwks_uri = "{jwks}"
audiences = ["verifyiam"]
[token.jwt.federation]
pool = "{PARTNER_POOL}"
attribute_mapping = {{ "google.subject" = "assertion.sub", "google.groups" = "assertion.groups", "attribute.team" = "assertion.team" }}
"#
    );
    Server::start_with(Options {
        extra,
        upstream: Some(up),
        ..Default::default()
    })
    .await
}

/// A Kubernetes projected service-account token (no email, no scope).
fn k8s_token(namespace: &str, name: &str) -> String {
    let n = now();
    rsa().sign(&json!({
        "aud": [K8S_AUDIENCE],
        "exp": n + 3600, "iat": n, "nbf": n,
        "iss": K8S_ISSUER,
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": format!("{name}-7d9f8"), "uid": "0c4b8c0e-5a55-4c1e-9a0e-3f0f0d1c2b3a"},
            "serviceaccount": {"name": name, "uid": "6f1d2c3b-8a9e-4f5d-b6c7-d8e9f0a1b2c3"}
        },
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    }))
}

/// A GitHub Actions OIDC token of `owner/repo`'s main branch.
fn github_token(owner: &str, repo: &str) -> String {
    let n = now();
    ec().sign(&json!({
        "jti": "3f5e2d1c-0b9a-4876-a5b4-c3d2e1f0a9b8",
        "sub": format!("repo:{owner}/{repo}:ref:refs/heads/main"),
        "aud": GITHUB_AUDIENCE,
        "ref": "refs/heads/main", "ref_type": "branch",
        "sha": "e0f1a2b3c4d5e6f708192a3b4c5d6e7f80911a2b",
        "repository": format!("{owner}/{repo}"), "repository_owner": owner,
        "repository_owner_id": "1234567", "repository_id": "7654321",
        "repository_visibility": "private",
        "run_id": "9876543210", "run_number": "42", "run_attempt": "1",
        "actor": "octocat", "actor_id": "583231", "event_name": "push",
        "workflow": "deploy",
        "workflow_ref": format!("{owner}/{repo}/.github/workflows/deploy.yml@refs/heads/main"),
        "job_workflow_ref": format!("{owner}/{repo}/.github/workflows/deploy.yml@refs/heads/main"),
        "runner_environment": "github-hosted",
        "iss": GITHUB_ISSUER, "nbf": n - 5, "iat": n, "exp": n + 300,
    }))
}

/// A partner IdP's token: `sub`, `team`, `groups`, and whatever else `extra` adds.
fn partner_token(sub: &str, team: &str, extra: Value) -> String {
    let n = now();
    let mut claims = json!({
        "iss": PARTNER_ISSUER, "aud": "verifyiam", "sub": sub, "team": team,
        "groups": ["engineering"], "iat": n, "exp": n + 600,
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    rsa().sign(&claims)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A Check by the bearer of `t` on deployment `api` of `prod`.
async fn check_as(s: &Server, t: &str, api: &str) -> Outcome {
    s.check(Some(&bearer(t)), "prod", api).await
}

#[tokio::test]
async fn kubernetes_service_account_is_allowed_through_its_subject_and_no_other() {
    let s = server().await;
    s.grant_deployment("prod", "orders", &principal(K8S_POOL, ORDERS), INVOKER)
        .await;

    let o = check_as(&s, &k8s_token("default", "orders"), "orders").await;
    assert!(o.allowed(), "{o:#?}");
    let name = principal(K8S_POOL, ORDERS);
    assert_eq!(o.header("x-verifyiam-principal"), Some(name.as_str()));
    assert_eq!(o.metadata["principal"], name);
    assert_eq!(o.metadata["decision"], "allow");

    // Another service account of the same namespace: a valid token, no grant.
    let o = check_as(&s, &k8s_token("default", "billing"), "orders").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    assert_eq!(o.metadata["principal"], principal(K8S_POOL, BILLING));
    // The grant is on one deployment only.
    let o = check_as(&s, &k8s_token("default", "orders"), "payments").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn a_namespace_attribute_grant_admits_every_service_account_of_the_namespace() {
    let s = server().await;
    s.grant_deployment(
        "prod",
        "orders",
        &principal_set(K8S_POOL, "attribute.namespace/default"),
        INVOKER,
    )
    .await;
    for name in ["orders", "billing"] {
        let o = check_as(&s, &k8s_token("default", name), "orders").await;
        assert!(o.allowed(), "{name}: {o:#?}");
        assert_eq!(
            o.header("x-verifyiam-principal"),
            Some(principal(K8S_POOL, &format!("system:serviceaccount:default:{name}")).as_str())
        );
    }
    let o = check_as(&s, &k8s_token("kube-system", "orders"), "orders").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn the_whole_pool_is_granted_by_its_star_member_and_only_that_pool() {
    let s = server().await;
    s.grant_project(&principal_set(K8S_POOL, "*"), INVOKER)
        .await;
    let o = check_as(&s, &k8s_token("team-a", "any"), "orders").await;
    assert!(o.allowed(), "{o:#?}");
    let o = check_as(&s, &github_token("acme", "orders"), "orders").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn github_repository_grant_and_the_owner_condition() {
    let s = server().await;
    s.grant_deployment(
        "prod",
        "orders",
        &principal_set(GITHUB_POOL, "attribute.repository/acme/orders"),
        INVOKER,
    )
    .await;
    let o = check_as(&s, &github_token("acme", "orders"), "orders").await;
    assert!(o.allowed(), "{o:#?}");
    assert_eq!(
        o.header("x-verifyiam-principal"),
        Some(principal(GITHUB_POOL, "repo:acme/orders:ref:refs/heads/main").as_str())
    );
    // Another repository of the owner passes the condition and has no grant.
    let o = check_as(&s, &github_token("acme", "billing"), "orders").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    // Another owner is refused by the pool itself, whatever the grants.
    let o = check_as(&s, &github_token("evil", "orders"), "orders").await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    assert!(
        o.message().contains("attribute condition"),
        "{}",
        o.message()
    );
}

#[tokio::test]
async fn a_mapping_that_fails_is_a_clear_401() {
    let s = server().await;
    s.grant_project(&principal_set(K8S_POOL, "*"), INVOKER)
        .await;
    // A cluster token without the kubernetes.io claim: attribute.namespace cannot be mapped.
    let n = now();
    let t = rsa().sign(&json!({
        "iss": K8S_ISSUER, "aud": K8S_AUDIENCE, "sub": ORDERS, "iat": n, "exp": n + 600,
    }));
    let o = check_as(&s, &t, "orders").await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    assert!(
        o.message().contains("attribute.namespace"),
        "{}",
        o.message()
    );
    // A subject over Google's 127 bytes.
    let long = "s".repeat(128);
    let t = rsa().sign(&json!({
        "iss": K8S_ISSUER, "aud": K8S_AUDIENCE, "sub": long, "iat": n, "exp": n + 600,
        "kubernetes.io": {"namespace": "default"},
    }));
    let o = check_as(&s, &t, "orders").await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    assert!(o.message().contains("at most 127"), "{}", o.message());
    // A pool token for another audience is refused before any mapping.
    let t = rsa().sign(&json!({
        "iss": K8S_ISSUER, "aud": "https://kubernetes.default.svc", "sub": ORDERS,
        "iat": n, "exp": n + 600, "kubernetes.io": {"namespace": "default"},
    }));
    let o = check_as(&s, &t, "orders").await;
    o.assert_denied(UNAUTHENTICATED, 401, Some("invalid_token"));
    assert!(o.message().contains("audience"), "{}", o.message());
}

#[tokio::test]
async fn same_subject_with_other_attributes_never_shares_a_cached_decision() {
    let s = server().await;
    s.grant_deployment(
        "prod",
        "orders",
        &principal_set(PARTNER_POOL, "attribute.team/orders"),
        INVOKER,
    )
    .await;
    let member = partner_token("u-1001", "orders", json!({}));
    let outsider = partner_token("u-1001", "payments", json!({}));
    // The allowed decision is made (and cached) first; then the same subject with another team.
    for _ in 0..2 {
        let o = check_as(&s, &member, "orders").await;
        assert!(o.allowed(), "{o:#?}");
        let o = check_as(&s, &outsider, "orders").await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
        assert_eq!(o.metadata["principal"], principal(PARTNER_POOL, "u-1001"));
    }
    // Groups likewise: a group grant admits the token whose groups hold it, not its twin.
    s.grant_deployment(
        "prod",
        "payments",
        &principal_set(PARTNER_POOL, "group/sre"),
        INVOKER,
    )
    .await;
    let sre = partner_token("u-1001", "payments", json!({"groups": ["sre"]}));
    let o = check_as(&s, &outsider, "payments").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    let o = check_as(&s, &sre, "payments").await;
    assert!(o.allowed(), "{o:#?}");
    let o = check_as(&s, &outsider, "payments").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn a_pool_token_is_never_matched_by_email_members_and_an_email_never_by_pool_members() {
    let s = server().await;
    // The partner's token claims a verified email; grants to that email must not admit it.
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    s.grant_project("domain:example.com", INVOKER).await;
    let t = partner_token(
        "alice",
        "x",
        json!({"email": "alice@example.com", "email_verified": true}),
    );
    let o = check_as(&s, &t, "orders").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    assert_eq!(o.metadata["principal"], principal(PARTNER_POOL, "alice"));
    // And alice's own Google-style token is not admitted by the pool's members.
    s.grant_deployment(
        "prod",
        "payments",
        &principal(PARTNER_POOL, "alice"),
        INVOKER,
    )
    .await;
    let path = format!("/v1/projects/{PROJECT}:setIamPolicy");
    let (status, v) = s.post(&path, Some(&token(ADMIN)), r#"{"policy":{}}"#).await;
    assert_eq!(status, 200, "{v}");
    let o = check_as(&s, &token("alice@example.com"), "payments").await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    let o = check_as(&s, &t, "payments").await;
    assert!(o.allowed(), "{o:#?}");
}

#[tokio::test]
async fn test_iam_permissions_answers_for_a_pool_caller() {
    let s = server().await;
    s.grant_deployment(
        "prod",
        "orders",
        &principal_set(K8S_POOL, "attribute.namespace/default"),
        INVOKER,
    )
    .await;
    let path = format!(
        "/v1/organizations/{PROJECT}/environments/prod/deployments/orders:testIamPermissions"
    );
    let body = r#"{"permissions":["apigee.deployments.invoke","apigee.deployments.get"]}"#;
    let (status, v) = s
        .post(&path, Some(&k8s_token("default", "orders")), body)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"permissions": ["apigee.deployments.invoke"]}));
    let (status, v) = s
        .post(&path, Some(&k8s_token("other", "orders")), body)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({}));
}

#[tokio::test]
async fn malformed_pool_members_are_400_naming_the_expected_form() {
    let s = server().await;
    let path =
        format!("/v1/organizations/{PROJECT}/environments/prod/deployments/orders:setIamPolicy");
    for (member, expected) in [
        ("principal://pool/subject/x", "/subject/SUBJECT"),
        (
            "principal://iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/k8s/group/admins",
            "/subject/SUBJECT",
        ),
        (
            "principalSet://iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/k8s/attribute.Namespace/default",
            "attribute.NAME/VALUE",
        ),
        (
            "principalSet://iam.googleapis.com/locations/global/workforcePools/partners/namespace/x",
            "attribute.NAME/VALUE",
        ),
        (
            "deleted:user:alice@example.com",
            "deleted:user:EMAIL?uid=NUMBER",
        ),
    ] {
        let body = json!({"policy": {"bindings": [{"role": INVOKER, "members": [member]}]}});
        let (status, v) = s.post(&path, Some(&token(ADMIN)), &body.to_string()).await;
        assert_eq!(status, 400, "{member}: {v}");
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(member), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn deleted_members_are_accepted_kept_and_inert() {
    let s = server().await;
    let path =
        format!("/v1/organizations/{PROJECT}/environments/prod/deployments/orders:setIamPolicy");
    let members = [
        "deleted:user:alice@example.com?uid=123456789012345678901",
        "deleted:serviceAccount:builder@demo-project.iam.gserviceaccount.com?uid=98765",
        "deleted:group:ops@example.com?uid=555",
    ];
    let body = json!({"policy": {"bindings": [{"role": INVOKER, "members": members}]}});
    let (status, v) = s.post(&path, Some(&token(ADMIN)), &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .post(
            &path.replace(":setIamPolicy", ":getIamPolicy"),
            Some(&token(ADMIN)),
            "{}",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["bindings"][0]["members"], json!(members));
    for email in [
        "alice@example.com",
        "builder@demo-project.iam.gserviceaccount.com",
    ] {
        let o = check_as(&s, &token(email), "orders").await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
    }
}

#[test]
fn configuration_errors_name_the_field_and_the_cel_error() {
    let base = |federation: &str, audiences: &str| {
        format!(
            "[iam]\nproject = \"p\"\n\
             [[token.jwt]]\nissuer = \"https://a.test\"\njwks_uri = \"https://a.test/jwks\"\n\
             [[token.jwt]]\nissuer = \"https://b.test\"\njwks_uri = \"https://b.test/jwks\"\n\
             audiences = {audiences}\n[token.jwt.federation]\n{federation}"
        )
    };
    let pool = format!("pool = \"{K8S_POOL}\"\n");
    let cases = [
        (
            format!(
                "{pool}attribute_mapping = {{ \"google.subject\" = \"assertion.sub\", \"attribute.ns\" = \"assertion['kubernetes.io'\" }}"
            ),
            "token.jwt[1].federation.attribute_mapping.\"attribute.ns\"",
        ),
        (
            format!("{pool}attribute_mapping = {{ \"attribute.ns\" = \"assertion.ns\" }}"),
            "token.jwt[1].federation.attribute_mapping",
        ),
        (
            format!(
                "{pool}attribute_mapping = {{ \"google.subject\" = \"assertion.sub\" }}\nattribute_condition = \"assertion.sub ==\""
            ),
            "token.jwt[1].federation.attribute_condition",
        ),
        (
            "pool = \"projects/demo/locations/global/workloadIdentityPools/k8s\"\nattribute_mapping = { \"google.subject\" = \"assertion.sub\" }".to_string(),
            "token.jwt[1].federation.pool",
        ),
    ];
    for (federation, field) in cases {
        let text = base(&federation, "[\"x\"]");
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    let e = Config::parse(&base(
        &format!("{pool}attribute_mapping = {{ \"google.subject\" = \"assertion.sub[\" }}"),
        "[\"x\"]",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not compile"), "{e}");
    let e = Config::parse(&base(
        &format!("{pool}attribute_mapping = {{ \"google.subject\" = \"assertion.sub\" }}"),
        "[]",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("token.jwt[1].audiences"), "{e}");
}

#[tokio::test]
async fn the_troubleshooter_explains_pool_members_and_agrees_with_the_check() {
    let s = server().await;
    let whole_pool = principal_set(K8S_POOL, "*");
    s.grant_deployment("prod", "orders", &whole_pool, INVOKER)
        .await;
    let orders = format!("organizations/{PROJECT}/environments/prod/deployments/orders");
    let ask = |p: String| {
        json!({"accessTuple": {"principal": p, "fullResourceName": orders,
                               "permission": "apigee.deployments.invoke"}})
        .to_string()
    };
    let (status, answer) = s
        .post(
            "/v3/iam:troubleshoot",
            Some(&token(ADMIN)),
            &ask(principal(K8S_POOL, ORDERS)),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["overallAccessState"], "CAN_ACCESS", "{answer:#}");
    let explained = answer["allowPolicyExplanation"]["explainedPolicies"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["fullResourceName"] == format!("//apigee.googleapis.com/{orders}"))
        })
        .unwrap_or_else(|| panic!("{answer:#}"))
        .clone();
    assert_eq!(
        explained["bindingExplanations"][0]["memberships"][whole_pool.as_str()]["membership"],
        "MEMBERSHIP_MATCHED",
        "{explained:#}"
    );
    let o = check_as(&s, &k8s_token("default", "orders"), "orders").await;
    assert!(o.allowed(), "{o:#?}");
    // Another pool's identity is not included.
    let (status, answer) = s
        .post(
            "/v3/iam:troubleshoot",
            Some(&token(ADMIN)),
            &ask(principal(
                GITHUB_POOL,
                "repo:acme/orders:ref:refs/heads/main",
            )),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["overallAccessState"], "CANNOT_ACCESS", "{answer:#}");
    // A malformed pool principal is refused naming the form.
    let (status, answer) = s
        .post(
            "/v3/iam:troubleshoot",
            Some(&token(ADMIN)),
            &ask("principal://pool/subject/x".into()),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("principal://iam.googleapis.com/POOL/subject/SUBJECT")),
        "{answer}"
    );
}

/// The `caller` of every audit event logged on this thread (the test's runtime runs the
/// server's tasks too).
#[derive(Clone, Default)]
struct AuditCallers(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditCallers {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Caller(Option<String>);
        impl tracing::field::Visit for Caller {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "caller" {
                    self.0 = Some(format!("{v:?}"));
                }
            }
        }
        if event.metadata().target() != verifyiam::admin::audit::AUDIT_TARGET {
            return;
        }
        let mut c = Caller(None);
        event.record(&mut c);
        self.0.lock().unwrap().extend(c.0);
    }
}

#[tokio::test]
async fn a_pool_caller_is_audited_by_its_principal_name() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let callers = AuditCallers::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(callers.clone()));
    let s = server().await;
    let body = json!({"accessTuple": {"principal": principal(K8S_POOL, ORDERS),
        "fullResourceName": format!("organizations/{PROJECT}/environments/prod/deployments/orders"),
        "permission": "apigee.deployments.invoke"}});
    let (status, answer) = s
        .post(
            "/v3/iam:troubleshoot",
            Some(&k8s_token("default", "orders")),
            &body.to_string(),
        )
        .await;
    // It may read no policy: answered, nothing shown, and audited under its pool name.
    assert_eq!(status, 200, "{answer}");
    let callers = callers.0.lock().unwrap().clone();
    assert!(
        callers.contains(&principal(K8S_POOL, ORDERS)),
        "audit callers: {callers:?}"
    );
}
