//! Memory per cached entry: fills the token cache with N distinct verified principals (the
//! in-process Check path, so decisions are cached too) and reports the resident-set growth.
//! `cargo bench --bench cache_memory [-- N]` (default 100,000).

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use verifyiam::authn::dev::DEV_ISSUER;
use verifyiam::config::{CLOUD_PLATFORM_SCOPE, Config, OnDependencyFailure};
use verifyiam::extauthz::CheckService;
use verifyiam::iam::eval::Resource;
use verifyiam::iam::policy::{Binding, Policy};
use verifyiam::server::App;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn request(token: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    headers: HashMap::from([(
                        "authorization".to_owned(),
                        format!("Bearer {token}"),
                    )]),
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

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "[iam]\nproject = \"p\"\nstore = \"{}\"\n[token]\ncache_capacity = {}\n[token.dev]\nissuer = \"{DEV_ISSUER}\"\nkey_file = \"{}\"\n",
        dir.path().join("store").display(),
        n + 1,
        dir.path().join("k.pem").display()
    ))
    .unwrap();
    rt.block_on(async {
        let app = App::build(config).unwrap();
        let grant = Policy {
            version: 1,
            bindings: vec![Binding {
                role: "roles/apigee.deploymentInvoker".into(),
                members: vec!["domain:example.com".into()],
                condition: None,
            }],
            ..Policy::default()
        };
        app.store
            .set_policy(
                &Resource::Project {
                    project: "p".into(),
                },
                grant,
                None,
            )
            .await
            .unwrap();
        let service = CheckService::new(app.checker.clone(), OnDependencyFailure::Deny);
        let dev = app.dev.clone().unwrap();
        // Mint first, so the tokens' own memory is not counted as cache.
        let tokens: Vec<String> = (0..n)
            .map(|i| {
                dev.mint(
                    &format!("user{i:07}@example.com"),
                    CLOUD_PLATFORM_SCOPE,
                    3600,
                )
                .unwrap()
            })
            .collect();
        let warm = request(&tokens[0]);
        service.check_one(&warm).await;
        let target = verifyiam::route::Target::new("p", "prod", "orders");
        // Phase 1: the token cache alone.
        let mut principals = Vec::with_capacity(n);
        let before = rss_kib();
        for t in &tokens {
            principals.push(app.authenticator.authenticate(t).await.unwrap());
        }
        app.authenticator.run_pending_tasks().await;
        let after_tokens = rss_kib();
        // Phase 2: one decision per principal.
        for (p, t) in principals.iter().zip(&tokens) {
            let d = app.authorizer.decide(p.clone(), t, target.clone()).await;
            assert!(matches!(d, verifyiam::authz::Decision::Allow { .. }));
        }
        let decisions = app.authorizer.cache_size();
        let after = rss_kib();
        let (tokens_cached, _) = app.authenticator.cache_sizes();
        let per = |from: u64, to: u64| (to.saturating_sub(from) * 1024) as f64 / n as f64;
        println!(
            "{n} distinct tokens: {tokens_cached} principals and {decisions} decisions cached\n\
             RSS {before} KiB -> {after_tokens} KiB (tokens) -> {after} KiB (decisions)\n\
             token-cache entry: {:.0} bytes; decision-cache entry: {:.0} bytes (RSS growth per entry)",
            per(before, after_tokens),
            per(after_tokens, after),
        );
        let _ = service;
    });
}
