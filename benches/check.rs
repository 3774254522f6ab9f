//! Micro-benchmarks of the Check path: bearer parsing, cold JWT verification (RS256, ES256), a
//! token-cache hit, IAM evaluation on a 1,500-principal policy and on a project with 10,000
//! deployment policies, and the whole in-process Check handler, warm and cold.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use base64::Engine as _;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;

use verifyiam::authn::dev::{DEV_ISSUER, DevIssuer};
use verifyiam::authn::jwt::JwtVerifier;
use verifyiam::authn::keys::{Key, KeySet, KeySets};
use verifyiam::config::{CLOUD_PLATFORM_SCOPE, Config, OnDependencyFailure, TokenConfig};
use verifyiam::extauthz::CheckService;
use verifyiam::iam::eval::{CompiledPolicy, may_invoke};
use verifyiam::iam::policy::{Binding, Policy};
use verifyiam::iam::roles::PredefinedRoles;
use verifyiam::server::App;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, i: usize) -> serde_json::Value {
    let n = now();
    json!({"iss": iss, "sub": format!("s{i}"), "email": format!("user{i}@example.com"),
           "scope": CLOUD_PLATFORM_SCOPE, "iat": n, "exp": n + 3600})
}

fn rsa_key() -> (EncodingKey, DecodingKey) {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    let enc = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    (enc, DecodingKey::from_jwk(&jwk).unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn bearer(c: &mut Criterion) {
    let token = format!("Bearer {}", "eyJhbGciOiJSUzI1NiJ9.".repeat(40));
    c.bench_function("bearer_parse", |b| {
        b.iter(|| verifyiam::authn::bearer::parse(std::hint::black_box(&token)))
    });
}

fn jwt_cold(c: &mut Criterion) {
    let rt = runtime();
    let (rs_enc, rs_dec) = rsa_key();
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(DEV_ISSUER, &dir.path().join("k.pem")).unwrap();
    let rs_set = Arc::new(KeySet::fixed(vec![(
        "rs".to_owned(),
        Key::new(rs_dec, Some(Algorithm::RS256)),
    )]));
    let token_config = TokenConfig::default();
    let verifier = JwtVerifier::new(
        &token_config,
        KeySets::new(reqwest::Client::new(), &token_config),
        vec![
            ("rs-issuer".to_owned(), rs_set),
            (DEV_ISSUER.to_owned(), dev.key_set()),
        ],
    );
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rs".into());
    let rs_token = jsonwebtoken::encode(&header, &claims("rs-issuer", 1), &rs_enc).unwrap();
    let es_token = dev
        .mint("user1@example.com", CLOUD_PLATFORM_SCOPE, 3600)
        .unwrap();
    // No cache here: every iteration verifies the signature.
    c.bench_function("jwt_verify_rs256_cold", |b| {
        b.to_async(&rt).iter(|| async {
            verifier
                .verify(&rs_token, CLOUD_PLATFORM_SCOPE)
                .await
                .unwrap()
        })
    });
    c.bench_function("jwt_verify_es256_cold", |b| {
        b.to_async(&rt).iter(|| async {
            verifier
                .verify(&es_token, CLOUD_PLATFORM_SCOPE)
                .await
                .unwrap()
        })
    });
}

fn policy_with(members: usize) -> Policy {
    Policy {
        version: 1,
        bindings: vec![Binding {
            role: "roles/apigee.deploymentInvoker".into(),
            members: (0..members)
                .map(|i| format!("user:u{i}@example.com"))
                .collect(),
            condition: None,
        }],
        ..Policy::default()
    }
}

fn iam_eval(c: &mut Criterion) {
    let big = CompiledPolicy::compile(&policy_with(1500), &PredefinedRoles);
    let mut lookup: HashMap<String, CompiledPolicy> = HashMap::new();
    lookup.insert("projects/p".into(), CompiledPolicy::default());
    let dep = "organizations/p/environments/prod/deployments/big";
    lookup.insert(dep.into(), big);
    let member = |m: &str| -> Vec<Box<str>> {
        vec![
            format!("user:{m}").into(),
            "domain:example.com".into(),
            "allAuthenticatedUsers".into(),
            "allUsers".into(),
        ]
    };
    let (inside, outside) = (member("u1499@example.com"), member("stranger@example.com"));
    c.bench_function("iam_eval_1500_principals_granted", |b| {
        b.iter(|| {
            assert!(may_invoke(
                &lookup,
                "projects/p",
                dep,
                std::hint::black_box(&inside)
            ))
        })
    });
    c.bench_function("iam_eval_1500_principals_denied", |b| {
        b.iter(|| {
            assert!(!may_invoke(
                &lookup,
                "projects/p",
                dep,
                std::hint::black_box(&outside)
            ))
        })
    });
    let mut project: HashMap<String, CompiledPolicy> = HashMap::new();
    project.insert("projects/p".into(), CompiledPolicy::default());
    for i in 0..10_000 {
        project.insert(
            format!("organizations/p/environments/prod/deployments/api{i}"),
            CompiledPolicy::compile(&policy_with(3), &PredefinedRoles),
        );
    }
    let target = "organizations/p/environments/prod/deployments/api9999";
    let granted = member("u2@example.com");
    c.bench_function("iam_eval_10000_deployment_policies", |b| {
        b.iter(|| {
            assert!(may_invoke(
                &project,
                "projects/p",
                std::hint::black_box(target),
                &granted
            ))
        })
    });
}

fn check_request(token: &str) -> CheckRequest {
    let headers = HashMap::from([
        (":authority".to_owned(), "api.example.com".to_owned()),
        (":path".to_owned(), "/orders/42?expand=1".to_owned()),
        (":method".to_owned(), "GET".to_owned()),
        (
            "x-request-id".to_owned(),
            "6c0f5c3e-2b7c-4d8c-9d0a-1b2c3d4e5f60".to_owned(),
        ),
        ("user-agent".to_owned(), "curl/8.5.0".to_owned()),
        ("accept".to_owned(), "*/*".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
    ]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "api.example.com".into(),
                    path: "/orders/42?expand=1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([
                ("environment".to_owned(), "prod".to_owned()),
                ("deployment".to_owned(), "orders".to_owned()),
            ]),
            ..Default::default()
        }),
    }
}

fn whole_check(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "[iam]\nproject = \"p\"\nstore = \"{}\"\n[token.dev]\nissuer = \"{DEV_ISSUER}\"\nkey_file = \"{}\"\n",
        dir.path().join("store").display(),
        dir.path().join("k.pem").display()
    ))
    .unwrap();
    let (service, authenticator, dev) = rt.block_on(async {
        let app = App::build(config).unwrap();
        let project = verifyiam::iam::eval::Resource::Project {
            project: "p".into(),
        };
        let mut grant = policy_with(0);
        grant.bindings[0].members = vec!["domain:example.com".into()];
        app.store.set_policy(&project, grant, None).await.unwrap();
        (
            CheckService::new(app.checker.clone(), OnDependencyFailure::Deny),
            app.authenticator.clone(),
            app.dev.clone().unwrap(),
        )
    });
    // A token-cache hit: hashing the token and finding its principal, no signature work.
    let cached = dev
        .mint("cached@example.com", CLOUD_PLATFORM_SCOPE, 3600)
        .unwrap();
    rt.block_on(authenticator.authenticate(&cached)).unwrap();
    c.bench_function("token_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { authenticator.authenticate(&cached).await.unwrap() })
    });
    let warm = check_request(
        &dev.mint("warm@example.com", CLOUD_PLATFORM_SCOPE, 3600)
            .unwrap(),
    );
    c.bench_function("check_in_process_warm", |b| {
        b.to_async(&rt).iter(|| async {
            let r = service.check_one(&warm).await;
            assert_eq!(r.status.unwrap().code, 0);
        })
    });
    let mut next = 0usize;
    c.bench_function("check_in_process_cold_es256", |b| {
        b.iter_batched(
            || {
                next += 1;
                check_request(
                    &dev.mint(
                        &format!("cold{next}@example.com"),
                        CLOUD_PLATFORM_SCOPE,
                        3600,
                    )
                    .unwrap(),
                )
            },
            |req| {
                rt.block_on(async {
                    let r = service.check_one(&req).await;
                    assert_eq!(r.status.unwrap().code, 0);
                })
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bearer, jwt_cold, iam_eval, whole_check
}
criterion_main!(benches);
