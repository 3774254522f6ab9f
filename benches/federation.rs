//! The cold-path cost of a pool's CEL: mapping a verified token's claims to Google attributes
//! and evaluating the attribute condition, once per verified token (a cached token is not
//! mapped again). Kubernetes-shaped (subject and one attribute) and GitHub-shaped (subject,
//! three attributes and a condition) claims.

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

use verifyiam::authn::federation::Federation;
use verifyiam::config::Config;

fn pool(mapping: &str, condition: &str) -> std::sync::Arc<Federation> {
    let text = format!(
        "[iam]\nproject = \"p\"\n[[token.jwt]]\nissuer = \"https://i.test\"\n\
         jwks_uri = \"https://i.test/jwks\"\naudiences = [\"a\"]\n[token.jwt.federation]\n\
         pool = \"projects/1/locations/global/workloadIdentityPools/p\"\n\
         attribute_mapping = {{ {mapping} }}\n{condition}"
    );
    let config = Config::parse(&text).unwrap();
    let federation = config.token.jwt[0].federation.as_ref().unwrap();
    federation.compiled("token.jwt[0].federation").unwrap()
}

fn bench(c: &mut Criterion) {
    let k8s = pool(
        r#""google.subject" = "assertion.sub", "attribute.namespace" = "assertion['kubernetes.io']['namespace']""#,
        "",
    );
    let k8s_claims = json!({
        "aud": ["https://verifyiam.test"], "exp": 1, "iat": 1, "nbf": 1,
        "iss": "https://i.test",
        "kubernetes.io": {"namespace": "default",
            "pod": {"name": "orders-7d9f8", "uid": "0c4b8c0e-5a55-4c1e-9a0e-3f0f0d1c2b3a"},
            "serviceaccount": {"name": "orders", "uid": "6f1d2c3b-8a9e-4f5d-b6c7-d8e9f0a1b2c3"}},
        "sub": "system:serviceaccount:default:orders",
    });
    c.bench_function("federation/map_kubernetes", |b| {
        b.iter(|| k8s.map(std::hint::black_box(&k8s_claims)).unwrap())
    });

    let github = pool(
        r#""google.subject" = "assertion.sub", "attribute.repository" = "assertion.repository", "attribute.repository_owner" = "assertion.repository_owner", "attribute.ref" = "assertion.ref""#,
        "attribute_condition = \"assertion.repository_owner == 'acme' && attribute.ref.startsWith('refs/heads/')\"",
    );
    let github_claims = json!({
        "jti": "3f5e2d1c-0b9a-4876-a5b4-c3d2e1f0a9b8",
        "sub": "repo:acme/orders:ref:refs/heads/main", "aud": "https://github.com/acme",
        "ref": "refs/heads/main", "ref_type": "branch",
        "sha": "e0f1a2b3c4d5e6f708192a3b4c5d6e7f80911a2b",
        "repository": "acme/orders", "repository_owner": "acme",
        "repository_owner_id": "1234567", "repository_id": "7654321",
        "repository_visibility": "private", "run_id": "9876543210", "run_number": "42",
        "run_attempt": "1", "actor": "octocat", "actor_id": "583231", "event_name": "push",
        "workflow": "deploy",
        "workflow_ref": "acme/orders/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/orders/.github/workflows/deploy.yml@refs/heads/main",
        "runner_environment": "github-hosted", "iss": "https://i.test",
        "nbf": 1, "iat": 1, "exp": 2,
    });
    c.bench_function("federation/map_github_with_condition", |b| {
        b.iter(|| github.map(std::hint::black_box(&github_claims)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
