//! The fuzz engine shared by `examples/fuzz.rs` (long runs with a time budget) and
//! `tests/fuzz_smoke.rs` (a short fixed run in CI).
//!
//! It builds two in-process services from real configuration: one answers Checks (a development
//! issuer, a remote issuer with audiences, self-signed service accounts, a `[[routes]]` table and
//! policies granting a few principals), the other serves the admin REST and gRPC router. Each
//! input is derived from `(seed, index)` alone, so any finding replays with `--seed S --start I
//! --inputs 1`.
//!
//! The oracle for Checks: an allow is legitimate only for a token this engine signed with a
//! trusted key and valid claims, presented as the request's only bearer credential, for a
//! principal granted on the deployment allowed, reached through the route its path's normal form
//! names. Anything else allowed is a finding, as is a panic or a malformed answer. For the admin
//! router: no panic and no 5xx other than 503.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as RawHeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use futures_util::FutureExt as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use verifyiam::admin::AdminState;
use verifyiam::authn::bearer;
use verifyiam::config::{CLOUD_PLATFORM_SCOPE, Config, OnDependencyFailure};
use verifyiam::extauthz::CheckService;
use verifyiam::iam::eval::Resource;
use verifyiam::iam::policy::{Binding, Policy, normalize};
use verifyiam::iam::roles::PredefinedRoles;
use verifyiam::server::App;

pub const PROJECT: &str = "demo-project";
const DEV_ISSUER: &str = "verifyiam-dev";
const REMOTE_ISSUER: &str = "https://issuer.fuzz";
const REMOTE_AUDIENCE: &str = "https://api.example.com";
const ACCOUNT: &str = "fuzz-sa@demo-project.iam.gserviceaccount.com";
const ADMIN: &str = "ops@example.com";
const INVOKER: &str = "roles/apigee.deploymentInvoker";

/// Panics seen anywhere in the process (the driver's panic hook counts them).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Installs a panic hook that counts every panic, then reports it as usual.
pub fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---- randomness -------------------------------------------------------------------------------

/// SplitMix64: small, fast, and every input reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn for_input(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next();
        r
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Arbitrary bytes, of [`Rng::len`].
    fn some_bytes(&mut self) -> Vec<u8> {
        let n = self.len();
        self.bytes(n)
    }

    /// A short length, now and then a long one.
    fn len(&mut self) -> usize {
        match self.below(10) {
            0 => self.below(20_000),
            1 | 2 => self.below(600),
            _ => self.below(40),
        }
    }
}

// ---- keys and tokens --------------------------------------------------------------------------

fn p256() -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .expect("P-256 key generation")
    .as_ref()
    .to_vec()
}

fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// A key that signs tokens, with the `kid` its issuer publishes it under.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
}

impl Signer {
    fn jwk(&self) -> Value {
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, self.alg).expect("jwk"),
        )
        .expect("jwk json");
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk
    }

    /// Signs `claims` under a header naming this key.
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"});
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// Signs exactly these header and claims texts (whatever they say).
    fn sign_raw(&self, header: &str, claims: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.alg).expect("sign");
        format!("{message}.{signature}")
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "ES256",
    }
}

/// Which deployments an allow of a token may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Project level: every deployment of the project's organization.
    Project,
    /// One deployment of `prod`.
    Deployment(&'static str),
}

impl Grant {
    fn covers(&self, deployment_name: &str) -> bool {
        match self {
            Grant::Project => deployment_name.starts_with(&format!("organizations/{PROJECT}/")),
            Grant::Deployment(d) => {
                deployment_name
                    == format!("organizations/{PROJECT}/environments/prod/deployments/{d}")
            }
        }
    }
}

/// A token the engine minted, and what an allow of it may look like.
#[derive(Debug, Clone)]
pub struct Minted {
    pub label: &'static str,
    pub token: String,
    /// `Some` only for a validly signed, unexpired token with scope for a granted principal.
    pub allow: Option<(String, Grant)>,
}

/// The principals of the fixture and what they hold.
const ALICE: &str = "alice@example.com"; // project-level invoker
const BOB: &str = "bob@example.com"; // invoker on prod/orders
const CAROL: &str = "carol@example.com"; // invoker on the environment prod: never passes down
const DAVE: &str = "dave@example.com"; // nothing
const ERIN: &str = "erin@partner.test"; // remote issuer; invoker on prod/pets

fn grant_of(email: &str) -> Option<Grant> {
    match email.to_ascii_lowercase().as_str() {
        ALICE => Some(Grant::Project),
        BOB => Some(Grant::Deployment("orders")),
        ERIN => Some(Grant::Deployment("pets")),
        ACCOUNT => Some(Grant::Deployment("orders-admin")),
        _ => None,
    }
}

// ---- the fixture ------------------------------------------------------------------------------

/// The services under test and everything the oracle knows.
pub struct Fuzzer {
    check: CheckService,
    admin: axum::Router,
    admin_token: String,
    dev: Signer,
    rogue: Signer,
    pool: Vec<Minted>,
    by_token: HashMap<String, (String, Grant)>,
    _dir: tempfile::TempDir,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: u64,
    pub admin: u64,
    pub allowed: u64,
    /// Admin requests the `http` crate itself refused to build (not counted as inputs).
    pub unbuildable: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub findings: Vec<String>,
}

impl Report {
    pub fn inputs(&self) -> u64 {
        self.checks + self.admin
    }

    pub fn merge(&mut self, other: Report) {
        self.checks += other.checks;
        self.admin += other.admin;
        self.allowed += other.allowed;
        self.unbuildable += other.unbuildable;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.findings.extend(other.findings);
    }

    fn finding(&mut self, text: String) {
        // The first few in full; the count is what matters after that.
        if self.findings.len() < 50 {
            eprintln!("FINDING: {text}");
        }
        self.findings.push(text);
    }
}

/// The mock upstream: the remote issuer's key set and the service account's.
async fn upstream(remote_jwks: Value, account_jwks: Value) -> std::net::SocketAddr {
    use axum::extract::Path as UrlPath;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/jwks", get(move || async move { axum::Json(remote_jwks) }))
        .route(
            "/sa/{email}",
            get(move |UrlPath(email): UrlPath<String>| async move {
                if email == ACCOUNT {
                    Ok(axum::Json(account_jwks))
                } else {
                    Err(axum::http::StatusCode::NOT_FOUND)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn config_text(dir: &Path, store: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
check_deadline = "10s"

[iam]
project = "{PROJECT}"
store = "{store}"
bootstrap_admins = ["user:{ADMIN}"]

[token.dev]
issuer = "{DEV_ISSUER}"
key_file = "{key}"

[[token.jwt]]
issuer = "{REMOTE_ISSUER}"
jwks_uri = "http://{upstream}/jwks"
audiences = ["{REMOTE_AUDIENCE}"]

[token.google_service_accounts]
jwks_uri_template = "http://{upstream}/sa/{{email}}"

[[routes]]
path_prefix = "/orders"
environment = "prod"
deployment = "orders"

[[routes]]
path_prefix = "/orders/admin"
environment = "prod"
deployment = "orders-admin"

[[routes]]
path_prefix = "/orders/x:y"
environment = "prod"
deployment = "orders-sub"

[[routes]]
path_prefix = "/orders/%40me"
environment = "prod"
deployment = "orders-sub"

[[routes]]
host = "api.example.com"
path_prefix = "/pets"
environment = "prod"
deployment = "pets"
"#,
        store = dir.join(store).display(),
        key = dir.join("dev.pem").display(),
    )
}

async fn grant(app: &App, resource: Resource, member: &str) {
    let policy = Policy {
        bindings: vec![Binding {
            role: INVOKER.into(),
            members: vec![member.into()],
            condition: None,
        }],
        ..Policy::default()
    };
    let policy = normalize(policy, &PredefinedRoles).expect("fixture policy");
    app.store
        .set_policy(&resource, policy, None)
        .await
        .expect("fixture grant");
}

fn deployment(name: &str) -> Resource {
    Resource::Deployment {
        organization: PROJECT.into(),
        environment: "prod".into(),
        deployment: name.into(),
    }
}

impl Fuzzer {
    /// Builds the fixture in a fresh directory (under `/dev/shm` when there is one, so policy
    /// writes of the admin fuzzing cost no disk flushes).
    pub async fn new() -> Fuzzer {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");

        let dev_pkcs8 = p256();
        std::fs::write(dir.path().join("dev.pem"), pem(&dev_pkcs8)).expect("dev key");
        let rsa =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa key");
        let remote = Signer {
            key: EncodingKey::from_rsa_pem(pem(rsa.as_der().expect("rsa der").as_ref()).as_bytes())
                .expect("rsa pem"),
            alg: Algorithm::RS256,
            kid: "remote-1".into(),
        };
        let account = Signer {
            key: EncodingKey::from_ec_der(&p256()),
            alg: Algorithm::ES256,
            kid: "sa-1".into(),
        };
        let addr = upstream(
            json!({"keys": [remote.jwk()]}),
            json!({"keys": [account.jwk()]}),
        )
        .await;

        let check_app = App::build(
            Config::parse(&config_text(dir.path(), "check-store", addr)).expect("config"),
        )
        .expect("check app");
        let admin_app = App::build(
            Config::parse(&config_text(dir.path(), "admin-store", addr)).expect("config"),
        )
        .expect("admin app");
        let dev_kid = check_app
            .dev
            .as_ref()
            .expect("dev issuer")
            .jwk_set()
            .pointer("/keys/0/kid")
            .and_then(Value::as_str)
            .expect("dev kid")
            .to_owned();
        let dev = Signer {
            key: EncodingKey::from_ec_der(&dev_pkcs8),
            alg: Algorithm::ES256,
            kid: dev_kid.clone(),
        };
        // Another P-256 key claiming the development key's kid: a forgery.
        let rogue = Signer {
            key: EncodingKey::from_ec_der(&p256()),
            alg: Algorithm::ES256,
            kid: dev_kid,
        };

        let project = Resource::Project {
            project: PROJECT.into(),
        };
        grant(&check_app, project, &format!("user:{ALICE}")).await;
        grant(&check_app, deployment("orders"), &format!("user:{BOB}")).await;
        grant(&check_app, deployment("pets"), &format!("user:{ERIN}")).await;
        grant(
            &check_app,
            deployment("orders-admin"),
            &format!("serviceAccount:{ACCOUNT}"),
        )
        .await;
        let environment = Resource::Environment {
            organization: PROJECT.into(),
            environment: "prod".into(),
        };
        grant(&check_app, environment, &format!("user:{CAROL}")).await;

        let pool = mint_pool(&dev, &rogue, &remote, &account);
        let by_token = pool
            .iter()
            .filter_map(|m| m.allow.clone().map(|a| (m.token.clone(), a)))
            .collect();
        let admin_token = dev.sign(&dev_claims(ADMIN));

        let route_deployments = ["orders", "orders-admin", "orders-sub", "pets"]
            .iter()
            .map(|d| deployment(d).name())
            .collect();
        let state = Arc::new(AdminState {
            store: admin_app.store.clone(),
            authenticator: admin_app.authenticator.clone(),
            project: PROJECT.into(),
            organization: PROJECT.into(),
            dev_jwks: admin_app.dev.as_ref().map(|d| d.jwk_set()),
            metrics: verifyiam::telemetry::metrics_handle(),
            strict_deployments: false,
            route_deployments,
        });
        let fuzzer = Fuzzer {
            check: CheckService::new(check_app.checker.clone(), OnDependencyFailure::Deny),
            admin: verifyiam::admin::service(state),
            admin_token,
            dev,
            rogue,
            pool,
            by_token,
            _dir: dir,
        };
        fuzzer.self_test().await;
        fuzzer
    }

    /// The fixture works: every good token is allowed where it is granted (this also fetches
    /// the remote key sets once), and every other minted token is denied there.
    async fn self_test(&self) {
        for m in &self.pool {
            let (path, host) = match &m.allow {
                Some((_, Grant::Deployment("orders-admin"))) => ("/orders/admin/1", "h"),
                Some((_, Grant::Deployment("pets"))) => ("/pets/1", "api.example.com"),
                _ => ("/orders/1", "h"),
            };
            let mut req = Shape::plain(&m.token, host, path);
            req.method = "GET".into();
            let response = self.check.check_one(&req.build()).await;
            let code = response.status.as_ref().map_or(-1, |s| s.code);
            assert_eq!(
                code == 0,
                m.allow.is_some(),
                "fixture token {} answered {code}: {response:?}",
                m.label
            );
        }
    }

    /// Runs input `index` of `seed`, adding what it saw to `report`.
    pub async fn run_one(&self, seed: u64, index: u64, report: &mut Report) {
        let mut rng = Rng::for_input(seed, index);
        if rng.chance(12) {
            self.admin_input(&mut rng, seed, index, report).await;
        } else {
            self.check_input(&mut rng, seed, index, report).await;
        }
    }

    // ---- Check inputs -------------------------------------------------------------------------

    async fn check_input(&self, rng: &mut Rng, seed: u64, index: u64, report: &mut Report) {
        let (token, fresh) = self.token(rng);
        let shape = Shape::random(rng, &token);
        let request = shape.build();
        report.checks += 1;
        let outcome = AssertUnwindSafe(self.check.check_one(&request))
            .catch_unwind()
            .await;
        let response = match outcome {
            Ok(r) => r,
            Err(_) => {
                report.finding(format!(
                    "panic in Check (seed {seed}, input {index}): {request:?}"
                ));
                return;
            }
        };
        match self.judge(&request, &response, fresh.as_ref()) {
            Ok(label) => *report.outcomes.entry(label).or_default() += 1,
            Err(why) => report.finding(format!(
                "{why} (seed {seed}, input {index}): request {request:?} response {response:?}"
            )),
        }
        if response.status.as_ref().is_some_and(|s| s.code == 0) {
            report.allowed += 1;
        }
    }

    /// A token for this input, and what an allow of it may be if the engine signed it fresh.
    fn token(&self, rng: &mut Rng) -> (String, Option<(String, Grant)>) {
        match rng.below(100) {
            0..=39 => {
                let m = rng.pick(&self.pool);
                (m.token.clone(), None)
            }
            40..=74 => {
                let base = rng.pick(&self.pool).token.clone();
                let other = rng.pick(&self.pool).token.clone();
                let mut t = base;
                for _ in 0..1 + rng.below(3) {
                    t = mutate_token(rng, &t, &other);
                }
                (t, None)
            }
            75..=89 => self.structured(rng),
            90..=95 => (random_b64token(rng), None),
            _ => (
                String::from_utf8_lossy(&rng.some_bytes()).into_owned(),
                None,
            ),
        }
    }

    /// A token built from parts, each valid or not; signed by the trusted key unless the
    /// signature part says otherwise. Allowed only if every part is valid.
    fn structured(&self, rng: &mut Rng) -> (String, Option<(String, Grant)>) {
        let n = now() as i64;
        let mut valid = true;
        let mut claims = serde_json::Map::new();
        // Mostly valid parts, so that many tokens get past the cheap refusals.
        let mut put = |rng: &mut Rng, key: &str, options: &[(Option<Value>, bool)]| -> bool {
            let valid: Vec<_> = options.iter().filter(|(_, ok)| *ok).collect();
            let (v, ok) = if rng.chance(75) && !valid.is_empty() {
                (*rng.pick(&valid)).clone()
            } else {
                rng.pick(options).clone()
            };
            if let Some(v) = v {
                claims.insert(key.to_owned(), v);
            }
            ok
        };
        let who = *rng.pick(&[
            ALICE,
            BOB,
            CAROL,
            DAVE,
            ERIN,
            "Alice@Example.com",
            "x@evil.test",
        ]);
        valid &= put(
            rng,
            "iss",
            &[
                (Some(json!(DEV_ISSUER)), true),
                (Some(json!(REMOTE_ISSUER)), false),
                (Some(json!(ACCOUNT)), false),
                (Some(json!("verifyiam-dev ")), false),
                (Some(json!(7)), false),
                (None, false),
            ],
        );
        valid &= put(
            rng,
            "email",
            &[
                (Some(json!(who)), true),
                (Some(json!(format!("{who}\r\nx-evil: 1"))), false),
                (Some(json!([who])), false),
                (None, false),
            ],
        );
        valid &= put(
            rng,
            "email_verified",
            &[
                (Some(json!(true)), true),
                (Some(json!("true")), true),
                (Some(json!(false)), false),
                (Some(json!("yes")), false),
                (Some(json!(1)), false),
                (None, false),
            ],
        );
        valid &= put(
            rng,
            "sub",
            &[
                (Some(json!(who)), true),
                (Some(json!("1234567890")), true),
                (Some(json!("a\u{0}b")), false),
                (Some(json!(17)), false),
                (None, true),
            ],
        );
        valid &= put(
            rng,
            "scope",
            &[
                (Some(json!(CLOUD_PLATFORM_SCOPE)), true),
                (
                    Some(json!(format!("openid  {CLOUD_PLATFORM_SCOPE} email"))),
                    true,
                ),
                (Some(json!(format!("{CLOUD_PLATFORM_SCOPE}x"))), false),
                (Some(json!(CLOUD_PLATFORM_SCOPE.to_uppercase())), false),
                (Some(json!([CLOUD_PLATFORM_SCOPE])), false),
                (None, false),
            ],
        ) | put(
            rng,
            "scp",
            &[
                (Some(json!([CLOUD_PLATFORM_SCOPE])), true),
                (Some(json!(["openid", CLOUD_PLATFORM_SCOPE])), true),
                (Some(json!(CLOUD_PLATFORM_SCOPE)), true),
                (Some(json!([1, 2])), false),
                (None, false),
            ],
        );
        valid &= put(
            rng,
            "exp",
            &[
                (Some(json!(n + 600)), true),
                (Some(json!(n as f64 + 600.5)), true),
                (Some(json!(1e300)), true),
                (Some(json!(i64::MAX)), true),
                (Some(json!(u64::MAX)), true),
                (Some(json!(n - 3600)), false),
                (Some(json!(-1)), false),
                (Some(json!(f64::MIN)), false),
                (Some(json!((n + 600).to_string())), false),
                (Some(json!(null)), false),
                (None, false),
            ],
        );
        valid &= put(
            rng,
            "nbf",
            &[
                (Some(json!(n - 10)), true),
                (Some(json!(-1e300)), true),
                (Some(json!(n + 3600)), false),
                (Some(json!(1e300)), false),
                (None, true),
            ],
        );
        valid &= put(
            rng,
            "iat",
            &[
                (Some(json!(n)), true),
                (Some(json!(0)), true),
                (Some(json!(n + 3600)), false),
                (None, true),
            ],
        );
        valid &= put(
            rng,
            "aud",
            &[
                (None, true),
                (Some(json!("anything")), true),
                (Some(json!(["a", "b"])), true),
                (Some(json!(5)), true),
            ],
        );
        let claims = Value::Object(claims).to_string();
        let kid = &self.dev.kid;
        let (header, header_ok) = if rng.chance(70) {
            (json!({"alg": "ES256", "kid": kid}), true)
        } else {
            rng.pick(&[
                (json!({"alg": "ES256", "kid": kid}), true),
                (json!({"alg": "ES256"}), true),
                (
                    json!({"alg": "ES256", "kid": kid, "typ": "JWT", "x": [1]}),
                    true,
                ),
                (json!({"alg": "ES256", "kid": "other"}), false),
                (json!({"alg": "ES256", "kid": 5}), false),
                (json!({"alg": "none", "kid": kid}), false),
                (json!({"alg": "HS256", "kid": kid}), false),
                (json!({"alg": "RS256", "kid": kid}), false),
                (json!({"alg": "ES384", "kid": kid}), false),
                (json!({"alg": "es256", "kid": kid}), false),
                (json!({"kid": kid}), false),
                (json!([]), false),
            ])
            .clone()
        };
        valid &= header_ok;
        let header = header.to_string();
        let token = match rng.below(20) {
            0..=16 => self.dev.sign_raw(&header, &claims),
            17 => {
                valid = false;
                self.rogue.sign_raw(&header, &claims)
            }
            18 => {
                // HMAC over the message with the published key as the secret.
                valid = false;
                let message = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(&header),
                    URL_SAFE_NO_PAD.encode(&claims)
                );
                let secret = EncodingKey::from_secret(self.dev.jwk().to_string().as_bytes());
                let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &secret, Algorithm::HS256)
                    .unwrap_or_default();
                format!("{message}.{sig}")
            }
            _ => {
                valid = false;
                let message = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(&header),
                    URL_SAFE_NO_PAD.encode(&claims)
                );
                let sig = match rng.below(3) {
                    0 => String::new(),
                    1 => URL_SAFE_NO_PAD.encode(rng.bytes(64)),
                    _ => {
                        let other = &rng.pick(&self.pool).token;
                        other.rsplit('.').next().unwrap_or_default().to_owned()
                    }
                };
                format!("{message}.{sig}")
            }
        };
        let allow = grant_of(who)
            .filter(|_| valid)
            .map(|g| (who.to_ascii_lowercase(), g));
        (token, allow)
    }

    /// Checks one answer against the oracle; `Ok` carries the outcome's label.
    fn judge(
        &self,
        request: &CheckRequest,
        response: &CheckResponse,
        fresh: Option<&(String, Grant)>,
    ) -> Result<String, String> {
        let status = response.status.as_ref().ok_or("no status")?;
        if status.code != 0 {
            let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
                return Err(format!("denial {} without a denied_response", status.code));
            };
            let http = denied.status.as_ref().map_or(0, |s| s.code);
            if !matches!(http, 400 | 401 | 403 | 503) {
                return Err(format!("denial with HTTP status {http}"));
            }
            let body: Value = serde_json::from_str(&denied.body)
                .map_err(|_| "denied body is not JSON".to_owned())?;
            if body.pointer("/error/code") != Some(&json!(http)) {
                return Err("denied body's code differs from the HTTP status".into());
            }
            let reason = response
                .dynamic_metadata
                .as_ref()
                .and_then(|m| m.fields.get("reason"))
                .and_then(|v| match &v.kind {
                    Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                        Some(s.clone())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            return Ok(format!("deny {http} {reason}"));
        }
        let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
            return Err("OK without an ok_response".into());
        };
        let header = |name: &str| {
            ok.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == name)
                .map(|h| h.value.clone())
        };
        if header("x-verifyiam-result").is_some() {
            return Err("a continued denial, but no deployment continues on error".into());
        }
        let principal = header("x-verifyiam-principal").ok_or("allow without a principal")?;
        let deployment = response
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.fields.get("deployment"))
            .and_then(|v| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
            .ok_or("allow without a deployment in the metadata")?;

        // The one bearer token the request presents.
        let (http, extensions) = parts(request);
        let values = header_values(http, "authorization");
        let [value] = values.as_slice() else {
            return Err(format!(
                "allowed with {} Authorization values",
                values.len()
            ));
        };
        let token = bearer::parse(value).map_err(|e| format!("allowed with a bad header: {e}"))?;
        let (who, grant) = self
            .by_token
            .get(token)
            .or(fresh)
            .ok_or("allowed a token that was not validly minted")?;
        if !principal.eq_ignore_ascii_case(who) {
            return Err(format!("allowed as {principal:?}, minted for {who:?}"));
        }
        if !grant.covers(&deployment) {
            return Err(format!(
                "{who} allowed on {deployment} without a grant there"
            ));
        }
        // Without context_extensions the route comes from the table, on the path's normal form.
        let by_extensions = extensions
            .is_some_and(|e| e.contains_key("environment") || e.contains_key("deployment"));
        if !by_extensions {
            let hosts = if http.is_some_and(|h| !h.host.is_empty()) {
                vec![http.map(|h| h.host.clone()).unwrap_or_default()]
            } else {
                let mut v = header_values(http, ":authority");
                v.extend(header_values(http, "host"));
                v
            };
            let paths = if http.is_some_and(|h| !h.path.is_empty()) {
                vec![http.map(|h| h.path.clone()).unwrap_or_default()]
            } else {
                header_values(http, ":path")
            };
            let expected = paths.iter().any(|p| {
                hosts.iter().any(|h| {
                    expected_route(h, p).is_some_and(|d| {
                        deployment
                            == format!("organizations/{PROJECT}/environments/prod/deployments/{d}")
                    })
                })
            });
            if !expected {
                return Err(format!(
                    "routed to {deployment}, but the path's normal form names another route"
                ));
            }
        }
        Ok("allow".into())
    }

    // ---- admin inputs -------------------------------------------------------------------------

    async fn admin_input(&self, rng: &mut Rng, seed: u64, index: u64, report: &mut Report) {
        let (method, path, body) = admin_request(rng);
        let mut builder = axum::http::Request::builder().method(method).uri(&path);
        match rng.below(20) {
            0 => {}
            1 => {
                let t = mutate_token(rng, &self.admin_token, &self.admin_token);
                builder = builder.header("authorization", format!("Bearer {t}"));
            }
            2 => {
                builder = builder
                    .header("authorization", format!("Bearer {}", self.admin_token))
                    .header("Authorization", "Bearer x");
            }
            _ => builder = builder.header("authorization", format!("Bearer {}", self.admin_token)),
        }
        builder = builder.header(
            "content-type",
            *rng.pick(&[
                "application/json",
                "application/json",
                "text/plain",
                "application/grpc",
                "application/grpc+proto",
            ]),
        );
        let body_text = String::from_utf8_lossy(&body).into_owned();
        let Ok(request) = builder.body(axum::body::Body::from(body)) else {
            report.unbuildable += 1;
            return;
        };
        report.admin += 1;
        let call = tower::ServiceExt::oneshot(self.admin.clone(), request);
        let response = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(Ok(r)) => r,
            Ok(Err(never)) => match never {},
            Err(_) => {
                report.finding(format!(
                    "panic in the admin router (seed {seed}, input {index}): {path} {body_text:?}"
                ));
                return;
            }
        };
        let status = response.status().as_u16();
        if status >= 500 && status != 503 {
            report.finding(format!(
                "admin answered {status} (seed {seed}, input {index}): {path} {body_text:?}"
            ));
        }
        // Drain the body: a panic while streaming it counts too.
        let drained = AssertUnwindSafe(axum::body::to_bytes(response.into_body(), 1 << 24))
            .catch_unwind()
            .await;
        if drained.is_err() {
            report.finding(format!(
                "panic in an admin response body (seed {seed}, input {index}): {path}"
            ));
        }
        *report
            .outcomes
            .entry(format!("admin {status}"))
            .or_default() += 1;
    }
}

// ---- the token pool ---------------------------------------------------------------------------

fn dev_claims(email: &str) -> Value {
    let n = now();
    json!({"iss": DEV_ISSUER, "sub": email, "email": email, "email_verified": true,
           "scope": CLOUD_PLATFORM_SCOPE, "iat": n, "exp": n + 7200})
}

fn mint_pool(dev: &Signer, rogue: &Signer, remote: &Signer, account: &Signer) -> Vec<Minted> {
    let n = now();
    let mut pool = Vec::new();
    let mut add = |label: &'static str, token: String, who: Option<&str>| {
        let allow = who.and_then(|w| grant_of(w).map(|g| (w.to_owned(), g)));
        pool.push(Minted {
            label,
            token,
            allow,
        });
    };
    let with = |mut c: Value, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        if let Some(m) = c.as_object_mut() {
            f(m);
        }
        c
    };
    // The development issuer.
    for who in [ALICE, BOB] {
        add("dev good", dev.sign(&dev_claims(who)), Some(who));
    }
    add(
        "dev carol (environment grant)",
        dev.sign(&dev_claims(CAROL)),
        None,
    );
    add("dev dave (no grant)", dev.sign(&dev_claims(DAVE)), None);
    add(
        "dev scp list",
        dev.sign(&with(dev_claims(ALICE), &|m| {
            m.remove("scope");
            m.insert("scp".into(), json!(["openid", CLOUD_PLATFORM_SCOPE]));
        })),
        Some(ALICE),
    );
    add(
        "dev no scope",
        dev.sign(&with(dev_claims(ALICE), &|m| {
            m.remove("scope");
        })),
        None,
    );
    add(
        "dev expired",
        dev.sign(&with(dev_claims(ALICE), &|m| {
            m.insert("exp".into(), json!(n - 3600));
            m.insert("iat".into(), json!(n - 7200));
        })),
        None,
    );
    add(
        "dev not yet valid",
        dev.sign(&with(dev_claims(ALICE), &|m| {
            m.insert("nbf".into(), json!(n + 3600));
        })),
        None,
    );
    add(
        "dev unverified email",
        dev.sign(&with(dev_claims(ALICE), &|m| {
            m.insert("email_verified".into(), json!(false));
        })),
        None,
    );
    add(
        "dev forged (rogue key, trusted kid)",
        rogue.sign(&dev_claims(ALICE)),
        None,
    );
    // The remote issuer, with audiences configured.
    let remote_claims = |aud: Value| {
        json!({"iss": REMOTE_ISSUER, "sub": "erin-1", "email": ERIN, "email_verified": true,
               "scope": CLOUD_PLATFORM_SCOPE, "aud": aud, "iat": n, "exp": n + 7200})
    };
    add(
        "remote good",
        remote.sign(&remote_claims(json!(REMOTE_AUDIENCE))),
        Some(ERIN),
    );
    add(
        "remote good (aud list)",
        remote.sign(&remote_claims(json!(["x", REMOTE_AUDIENCE]))),
        Some(ERIN),
    );
    add(
        "remote aud missing",
        remote.sign(&with(remote_claims(json!(null)), &|m| {
            m.remove("aud");
        })),
        None,
    );
    add(
        "remote aud number",
        remote.sign(&remote_claims(json!(5))),
        None,
    );
    add(
        "remote aud object",
        remote.sign(&remote_claims(json!({"aud": REMOTE_AUDIENCE}))),
        None,
    );
    add(
        "remote aud list with a number",
        remote.sign(&remote_claims(json!([1, REMOTE_AUDIENCE]))),
        None,
    );
    add(
        "remote aud other",
        remote.sign(&remote_claims(json!("https://other"))),
        None,
    );
    add(
        "remote signed by the dev key",
        dev.sign(&remote_claims(json!(REMOTE_AUDIENCE))),
        None,
    );
    // A self-signed service account.
    let sa_claims = |lifetime: u64| {
        json!({"iss": ACCOUNT, "sub": ACCOUNT, "scope": CLOUD_PLATFORM_SCOPE,
               "iat": n, "exp": n + lifetime})
    };
    add(
        "account good",
        account.sign(&sa_claims(3600)),
        Some(ACCOUNT),
    );
    add(
        "account good (apigee aud)",
        account.sign(&with(sa_claims(3600), &|m| {
            m.insert("aud".into(), json!("https://apigee.googleapis.com/"));
        })),
        Some(ACCOUNT),
    );
    add("account two hours", account.sign(&sa_claims(7200)), None);
    add(
        "account no iat",
        account.sign(&with(sa_claims(3600), &|m| {
            m.remove("iat");
        })),
        None,
    );
    add(
        "account other aud",
        account.sign(&with(sa_claims(3600), &|m| {
            m.insert("aud".into(), json!("https://evil.example"));
        })),
        None,
    );
    add(
        "account other sub",
        account.sign(&with(sa_claims(3600), &|m| {
            m.insert("sub".into(), json!(ALICE));
        })),
        None,
    );
    add(
        "account signed by the dev key",
        dev.sign(&sa_claims(3600)),
        None,
    );
    add(
        "unknown account",
        account.sign(&with(sa_claims(3600), &|m| {
            m.insert(
                "iss".into(),
                json!("nobody@demo-project.iam.gserviceaccount.com"),
            );
            m.insert(
                "sub".into(),
                json!("nobody@demo-project.iam.gserviceaccount.com"),
            );
        })),
        None,
    );
    pool
}

// ---- mutations --------------------------------------------------------------------------------

const B64TOKEN: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=";

fn random_b64token(rng: &mut Rng) -> String {
    let n = rng.len();
    let mut s: String = (0..n).map(|_| *rng.pick(B64TOKEN) as char).collect();
    if rng.chance(50) && s.len() > 4 {
        // Exactly two dots: it will be read as a JWT.
        s = s.replace('.', "_");
        let a = rng.below(s.len());
        let b = rng.below(s.len());
        s.replace_range(a..a, ".");
        s.replace_range(b..b, ".");
    }
    s
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// One mutation of a token; `other` is material for splicing.
/// The most a repetition may grow an input to (bodies beyond the server's limits are refused
/// by size anyway).
const MAX_REPEATED: usize = 256 * 1024;

fn mutate_token(rng: &mut Rng, token: &str, other: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let len = b.len().max(1);
    match rng.below(16) {
        0 => {
            // A bit flip.
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            // A base64url character replaced by another.
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] = *rng.pick(&B64TOKEN[..64]);
            }
        }
        2 => b.truncate(rng.below(len)),
        3 => {
            let i = rng.below(len.min(b.len() + 1));
            let n = rng.below(8).min(b.len() - i.min(b.len()));
            b.drain(i..i + n);
        }
        4 => {
            let i = rng.below(b.len() + 1);
            let n = 1 + rng.below(4);
            let extra = rng.bytes(n);
            b.splice(i..i, extra);
        }
        5 => {
            // Splice: the head of one token, the tail of the other.
            let o = other.as_bytes();
            let (i, j) = (rng.below(b.len() + 1), rng.below(o.len() + 1));
            b.truncate(i);
            b.extend_from_slice(&o[j..]);
        }
        6 => {
            // Swap one segment for the other token's same segment.
            let mut mine: Vec<&str> = token.split('.').collect();
            let theirs: Vec<&str> = other.split('.').collect();
            let k = rng.below(mine.len().min(theirs.len()));
            mine[k] = theirs[k];
            return mine.join(".");
        }
        7 => {
            // Segments reordered, doubled or dropped.
            let mut parts: Vec<&str> = token.split('.').collect();
            match rng.below(3) {
                0 => parts.reverse(),
                1 => {
                    let k = rng.below(parts.len());
                    parts.insert(k, parts[k]);
                }
                _ => {
                    let k = rng.below(parts.len());
                    parts.remove(k);
                }
            }
            return parts.join(".");
        }
        8 => {
            // Padding, or standard-alphabet characters where base64url has others.
            return match rng.below(3) {
                0 => format!("{token}="),
                1 => token.replace('-', "+").replace('_', "/"),
                _ => token.replacen('.', "=.", 1),
            };
        }
        9 => {
            // A decoded segment edited as JSON and re-encoded (the signature no longer fits).
            let parts: Vec<&str> = token.split('.').collect();
            let k = rng.below(parts.len().min(2));
            let decoded = URL_SAFE_NO_PAD
                .decode(parts[k])
                .ok()
                .and_then(|d| serde_json::from_slice::<Value>(&d).ok());
            if let Some(Value::Object(mut m)) = decoded {
                let key = [
                    "alg", "kid", "iss", "exp", "scope", "email", "aud", "sub", "crit",
                ];
                let key = *rng.pick(&key);
                m.insert(key.into(), random_json(rng, 2));
                let mut parts: Vec<String> = parts.iter().map(|s| (*s).to_owned()).collect();
                parts[k] = b64_json(&Value::Object(m));
                return parts.join(".");
            }
        }
        10 => {
            // Huge, within a bound: mutations compound (a body is mutated up to four times),
            // and unbounded repetition made the driver itself run out of memory.
            let n = (1 + rng.below(40))
                .min(MAX_REPEATED / token.len().max(1))
                .max(1);
            return token.repeat(n);
        }
        11 => {
            // A case flip of one letter.
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] = if b[i].is_ascii_lowercase() {
                    b[i].to_ascii_uppercase()
                } else {
                    b[i].to_ascii_lowercase()
                };
            }
        }
        12 => {
            // Whitespace, commas and quotes where a parser might split.
            let i = rng.below(b.len() + 1);
            let s = *rng.pick(&[" ", "\t", ",", ", Bearer ", "\"", "\r\n", "\0", "%2E"]);
            b.splice(i..i, s.bytes());
        }
        13 => {
            // Non-ASCII.
            let i = rng.below(b.len() + 1);
            let s = *rng.pick(&["é", "\u{feff}", "\u{2024}", "\u{ff0e}", "\u{0130}"]);
            b.splice(i..i, s.bytes());
        }
        14 => {
            // The signature of another token.
            let (m, _) = token.rsplit_once('.').unwrap_or((token, ""));
            let (_, s) = other.rsplit_once('.').unwrap_or(("", other));
            return format!("{m}.{s}");
        }
        _ => {
            // alg rewritten in the header without re-signing.
            let parts: Vec<&str> = token.split('.').collect();
            let alg = *rng.pick(&["none", "HS256", "RS256", "ES512", "EdDSA", "PS256"]);
            let header = b64_json(&json!({"alg": alg, "typ": "JWT"}));
            let rest = parts.get(1..).map(|p| p.join(".")).unwrap_or_default();
            return format!("{header}.{rest}");
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next() as i64),
        3 => json!(f64::from_bits(rng.next()).clamp(-1e300, 1e300)),
        4 => json!(*rng.pick(&[0, -1, 1, i64::MAX, i64::MIN, 2_147_483_648])),
        5 => json!(random_text(rng)),
        6 => json!(*rng.pick(&[
            "roles/apigee.deploymentInvoker",
            "roles/owner",
            "user:a@example.com",
            "allUsers",
            "group:g@example.com",
            "domain:example.com",
            "principal://x",
            "apigee.deployments.invoke",
            "BwYT8i40Vwo=",
            "AAAAAAAAAAE=",
            "GA",
        ])),
        7 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| {
                    let k = rng
                        .pick(&[
                            "policy",
                            "bindings",
                            "role",
                            "members",
                            "condition",
                            "etag",
                            "version",
                            "auditConfigs",
                            "updateMask",
                            "permissions",
                            "options",
                            "requestedPolicyVersion",
                            "roleId",
                            "title",
                            "includedPermissions",
                            "stage",
                            "member",
                            "continueOnError",
                            "expression",
                            "x",
                        ])
                        .to_string();
                    (k, random_json(rng, depth - 1))
                })
                .collect(),
        ),
    }
}

fn random_text(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => String::from_utf8_lossy(&rng.some_bytes()).into_owned(),
        1 => "a".repeat(rng.len()),
        2 => (0..rng.below(30))
            .map(|_| *rng.pick(&['a', '@', '.', ':', '/', ' ', '\u{0}', 'é', '%', '*']))
            .collect(),
        _ => String::new(),
    }
}

// ---- requests ---------------------------------------------------------------------------------

/// A CheckRequest described by parts, so the oracle can read it the way the service should.
struct Shape {
    headers: HashMap<String, String>,
    raw: Vec<HeaderValue>,
    host: String,
    path: String,
    method: String,
    id: String,
    extensions: Option<HashMap<String, String>>,
    no_http: bool,
    no_attributes: bool,
}

impl Shape {
    fn plain(token: &str, host: &str, path: &str) -> Shape {
        Shape {
            headers: HashMap::from([
                (":authority".into(), host.into()),
                (":path".into(), path.into()),
                ("authorization".into(), format!("Bearer {token}")),
            ]),
            raw: Vec::new(),
            host: host.into(),
            path: path.into(),
            method: "GET".into(),
            id: "r".into(),
            extensions: None,
            no_http: false,
            no_attributes: false,
        }
    }

    fn random(rng: &mut Rng, token: &str) -> Shape {
        // Mostly requests that reach token verification; the rest probe routing.
        let host = if rng.chance(70) {
            "api.example.com".to_owned()
        } else {
            random_host(rng)
        };
        let path = if rng.chance(75) {
            let mut p = rng
                .pick(&[
                    "/orders/1",
                    "/orders",
                    "/orders/admin/keys",
                    "/orders/admin",
                    "/pets/7",
                ])
                .to_string();
            if rng.chance(20) {
                p.push_str("?q=1");
            }
            p
        } else {
            random_path(rng)
        };
        let mut s = Shape::plain(token, &host, &path);
        s.headers.remove("authorization");
        // The Authorization header(s).
        let scheme = if rng.chance(70) {
            "Bearer "
        } else {
            *rng.pick(&[
                "Bearer ", "Bearer ", "Bearer ", "bearer ", "BEARER ", "BeArEr ", "Bearer\t",
                "Bearer  ", " Bearer ", "Basic ", "Token ", "", "Bearer", "Bearer:",
            ])
        };
        let mut value = format!("{scheme}{token}");
        if rng.chance(5) {
            let tail = *rng.pick(&[" ", "\t", ",", ", Bearer x", " x", "\r\n"]);
            value.push_str(tail);
        }
        let name = *rng.pick(&[
            "authorization",
            "authorization",
            "authorization",
            "Authorization",
            "AUTHORIZATION",
            "authorization ",
            "x-authorization",
            "proxy-authorization",
        ]);
        match if rng.chance(70) { 19 } else { rng.below(20) } {
            0 => {} // no header at all
            1..=2 => s.raw.push(HeaderValue {
                key: name.into(),
                value: value.clone(),
                ..Default::default()
            }),
            3 => s.raw.push(HeaderValue {
                key: name.into(),
                raw_value: if rng.chance(50) {
                    value.clone().into_bytes()
                } else {
                    let mut b = value.clone().into_bytes();
                    b.push(0xff);
                    b
                },
                ..Default::default()
            }),
            4..=5 => {
                // Repeated: two spellings of the name, or a raw copy beside the map.
                s.headers.insert(name.into(), value.clone());
                let other = format!("Bearer {}", random_b64token(rng));
                if rng.chance(50) {
                    s.headers.insert("Authorization".into(), other);
                } else {
                    s.raw.push(HeaderValue {
                        key: "authorization".into(),
                        value: other,
                        ..Default::default()
                    });
                }
            }
            6 => {
                s.headers
                    .insert(name.into(), format!("{value}, Bearer {token}"));
            }
            _ => {
                s.headers.insert(name.into(), value.clone());
            }
        }
        // Host and path: in the fields, in the headers, both, disagreeing.
        match rng.below(10) {
            0 => s.host.clear(),
            1 => s.host = random_host(rng),
            _ => {}
        }
        match rng.below(10) {
            0 => s.path.clear(),
            1 => s.path = random_path(rng),
            _ => {}
        }
        if rng.chance(10) {
            s.headers.remove(":path");
            s.headers.remove(":authority");
            s.raw.push(HeaderValue {
                key: rng.pick(&[":path", ":PATH"]).to_string(),
                value: random_path(rng),
                ..Default::default()
            });
            s.raw.push(HeaderValue {
                key: "host".into(),
                value: random_host(rng),
                ..Default::default()
            });
        }
        if rng.chance(5) {
            s.headers
                .insert("x-verifyiam-principal".into(), "alice@example.com".into());
        }
        if rng.chance(3) {
            s.headers.insert(random_text(rng), random_text(rng));
        }
        s.method = rng.pick(&["GET", "POST", "OPTIONS", "", "get"]).to_string();
        s.id = rng.pick(&["", "r-1", "\u{0}"]).to_string();
        s.extensions = random_extensions(rng);
        s.no_http = rng.chance(1);
        s.no_attributes = rng.chance(1);
        s
    }

    fn build(&self) -> CheckRequest {
        if self.no_attributes {
            return CheckRequest { attributes: None };
        }
        let http = HttpRequest {
            id: self.id.clone(),
            method: self.method.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            header_map: (!self.raw.is_empty()).then(|| RawHeaderMap {
                headers: self.raw.clone(),
            }),
            ..Default::default()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: (!self.no_http).then_some(http),
                    ..Default::default()
                }),
                context_extensions: self.extensions.clone().unwrap_or_default(),
                ..Default::default()
            }),
        }
    }
}

fn random_host(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => random_text(rng),
        1 => String::new(),
        _ => rng
            .pick(&[
                "api.example.com",
                "API.Example.COM",
                "api.example.com.",
                "api.example.com:443",
                "api.example.com.:8443",
                "x.api.example.com",
                "evil.test",
                "api.example.com@evil.test",
                "api.example.com/x",
                "[::1]:443",
                "api.example.com\u{0}",
                "api.example.com,evil.test",
                "api.example.com ",
                "api.example.com..",
                "api.example.com:abc",
                "api.example.com:443:443",
                "api.example.com:+443",
                "api.example.com:",
                "api.example.com:0443",
                "api.example.com:65536",
                "api..example.com",
                "[::1",
                "[::1]443",
                "[::1]:",
                "[0:0::1]:8443",
                "::1",
                "127.0.0.01",
                "127.0.0.1:9001",
                "api.example.com*",
            ])
            .to_string(),
    }
}

fn random_path(rng: &mut Rng) -> String {
    if rng.chance(5) {
        return random_text(rng);
    }
    const SEGMENTS: &[&str] = &[
        "orders",
        "orders",
        "admin",
        "admin",
        "pets",
        "1",
        "x",
        "ADMIN",
        "Orders",
        "PETS",
        "..",
        ".",
        "",
        "orders-internal",
        "%61dmin",
        "%41DMIN",
        "admin.",
        "admin%20",
        "admin;x=1",
        "%2e%2e",
        "%2E",
        ".%2e",
        "%2F",
        "admin%2fusers",
        "%5C",
        "\\",
        "%00",
        "%zz",
        "%",
        "%c3%a9",
        "é",
        "admin%09",
        "%2561dmin",
        "admin~",
        "a%2Fb",
        "%u0061",
        "admin?",
        "admin#",
        "*",
        "x:y",
        "x%3Ay",
        "X%3ay",
        "x%3A%79",
        "@me",
        "%40me",
        "%40ME",
        "x%2Cy",
        "%2E.",
        "%2e",
    ];
    let mut path = String::new();
    if !rng.chance(3) {
        path.push('/');
    }
    for i in 0..rng.below(6) {
        if i > 0 {
            path.push_str(if rng.chance(10) { "//" } else { "/" });
        }
        let segment = *rng.pick(SEGMENTS);
        path.push_str(segment);
    }
    if rng.chance(10) {
        path.push('/');
    }
    if rng.chance(15) {
        let tail = *rng.pick(&["?a=b", "?", "#f", "?x=/../admin", "?%2F", ";jsessionid=1"]);
        path.push_str(tail);
    }
    if rng.chance(3) {
        let i = rng.below(path.len() + 1);
        if path.is_char_boundary(i) {
            let c = *rng.pick(&["%", "\u{7f}", "\n", " ", "%2f", "/../", "/./"]);
            path.insert_str(i, c);
        }
    }
    path
}

fn random_extensions(rng: &mut Rng) -> Option<HashMap<String, String>> {
    if rng.chance(45) {
        return None;
    }
    let mut m = HashMap::new();
    if rng.chance(60) {
        m.insert("environment".into(), "prod".into());
        let d = *rng.pick(&["orders", "orders-admin", "pets", "other"]);
        m.insert("deployment".into(), d.into());
        if rng.chance(20) {
            m.insert(
                "organization".into(),
                rng.pick(&[PROJECT, "other-org"]).to_string(),
            );
        }
        return Some(m);
    }
    let values = [
        PROJECT,
        "other-org",
        "prod",
        "test",
        "orders",
        "orders-admin",
        "pets",
        "ORDERS",
        "../orders",
        "a/b",
        "",
        "orders\u{0}",
        "x.y",
    ];
    for key in [
        "organization",
        "environment",
        "deployment",
        "backend_audience",
    ] {
        if rng.chance(70) {
            let v = if rng.chance(10) {
                random_text(rng)
            } else {
                rng.pick(&values).to_string()
            };
            m.insert(key.to_owned(), v);
        }
    }
    if rng.chance(10) {
        m.insert(random_text(rng), random_text(rng));
    }
    if rng.chance(5) {
        m.insert("Deployment".into(), "orders-admin".into());
    }
    Some(m)
}

fn parts(request: &CheckRequest) -> (Option<&HttpRequest>, Option<&HashMap<String, String>>) {
    let attributes = request.attributes.as_ref();
    (
        attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref()),
        attributes.map(|a| &a.context_extensions),
    )
}

/// Every value of a header in a request, whatever the case of its name, in both maps.
fn header_values(http: Option<&HttpRequest>, name: &str) -> Vec<String> {
    let Some(http) = http else {
        return Vec::new();
    };
    let mut out: Vec<String> = http
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect();
    if let Some(m) = &http.header_map {
        for h in m
            .headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
        {
            out.push(if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            });
        }
    }
    out
}

/// The route a path names, read independently of `verifyiam::route`: percent-decoded, dot
/// segments resolved, empty segments dropped, compared without case. `None` for a path with
/// no single reading (an encoded `/` or `\`, a backslash, `;`, control characters or spaces,
/// a segment ending in `.`, a bad escape) and for one no route covers.
fn expected_route(host: &str, path: &str) -> Option<&'static str> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return None;
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for raw in path.split('/') {
        if raw.contains(['\\', ';']) {
            return None;
        }
        let mut seg = Vec::new();
        let b = raw.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = raw.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(hex, 16).ok()?;
                seg.push(v);
                i += 3;
            } else {
                seg.push(b[i]);
                i += 1;
            }
        }
        if seg
            .iter()
            .any(|&c| c == b'/' || c == b'\\' || c == b';' || c < 0x21 || c == 0x7f)
        {
            return None;
        }
        seg.make_ascii_lowercase();
        match seg.as_slice() {
            b"" => {}
            // A dot segment has no single reading: refused, never resolved.
            b"." | b".." => return None,
            s if s.ends_with(b".") => return None,
            _ => segments.push(seg),
        }
    }
    let host = expected_host(host)?;
    match segments.as_slice() {
        [o, a, ..] if o == b"orders" && a == b"admin" => Some("orders-admin"),
        [o, a, ..] if o == b"orders" && (a == b"x:y" || a == b"@me") => Some("orders-sub"),
        [o, ..] if o == b"orders" => Some("orders"),
        [p, ..] if p == b"pets" && host == "api.example.com" => Some("pets"),
        _ => None,
    }
}

/// The host a route compares, read independently of `verifyiam::route`: lower case, without
/// its port and one trailing `.`; `None` for anything but a host name, a canonical IPv4 address
/// or a bracketed IPv6 literal with an optional port from 1 to 65535 (an empty host is none).
fn expected_host(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some(String::new());
    }
    let port_ok = |port: &str| {
        port.parse::<u16>()
            .is_ok_and(|p| p != 0 && p.to_string() == port)
    };
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let address: std::net::Ipv6Addr = inside.parse().ok()?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(port_ok)) {
            return None;
        }
        return Some(format!("[{address}]"));
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port_ok(port) => name,
        Some(_) => return None,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.len() > 253 || !labels.iter().all(label_ok) {
        return None;
    }
    let numeric = labels.last()?.chars().all(|c| c.is_ascii_digit());
    if numeric {
        let address: std::net::Ipv4Addr = name.parse().ok()?;
        return (address.to_string() == name).then_some(name);
    }
    Some(name)
}

// ---- admin requests ---------------------------------------------------------------------------

fn admin_request(rng: &mut Rng) -> (axum::http::Method, String, Vec<u8>) {
    use axum::http::Method;
    let dep = format!("/v1/organizations/{PROJECT}/environments/prod/deployments/orders");
    let env = format!("/v1/organizations/{PROJECT}/environments/prod");
    let proj = format!("/v1/projects/{PROJECT}");
    let policy = json!({"policy": {"bindings": [
        {"role": INVOKER, "members": ["user:a@example.com", "group:g@example.com"]}],
        "etag": "BwYT8i40Vwo="}, "updateMask": "bindings,etag"});
    let role = json!({"roleId": "r1", "role": {"title": "t", "description": "d",
        "includedPermissions": ["apigee.deployments.invoke"], "stage": "GA"}});
    let seeds: Vec<(Method, String, Value)> = vec![
        (Method::POST, format!("{proj}:setIamPolicy"), policy.clone()),
        (
            Method::POST,
            format!("{proj}:getIamPolicy"),
            json!({"options": {"requestedPolicyVersion": 3}}),
        ),
        (Method::GET, format!("{proj}:getIamPolicy"), Value::Null),
        (
            Method::POST,
            format!("{proj}:testIamPermissions"),
            json!({"permissions": ["apigee.deployments.invoke", "x.y.z"]}),
        ),
        (Method::POST, format!("{env}:setIamPolicy"), policy.clone()),
        (
            Method::POST,
            format!("{env}:testIamPermissions"),
            json!({"permissions": []}),
        ),
        (Method::POST, format!("{dep}:setIamPolicy"), policy),
        (Method::POST, format!("{dep}:getIamPolicy"), json!({})),
        (
            Method::POST,
            format!("{dep}:testIamPermissions"),
            json!({"permissions": ["apigee.deployments.invoke"]}),
        ),
        (Method::GET, dep.clone(), Value::Null),
        (Method::PATCH, dep.clone(), json!({"continueOnError": true})),
        (
            Method::GET,
            format!("/v1/organizations/{PROJECT}/environments/prod/deployments"),
            Value::Null,
        ),
        (
            Method::POST,
            format!(
                "/v1/organizations/{PROJECT}/environments/prod/apis/orders/revisions/1/deployments?continueOnError=true&override=false"
            ),
            Value::Null,
        ),
        (
            Method::DELETE,
            format!(
                "/v1/organizations/{PROJECT}/environments/prod/apis/orders/revisions/1/deployments"
            ),
            Value::Null,
        ),
        (Method::GET, format!("{proj}/roles"), Value::Null),
        (Method::POST, format!("{proj}/roles"), role),
        (Method::GET, format!("{proj}/roles/r1"), Value::Null),
        (
            Method::PATCH,
            format!("{proj}/roles/r1?updateMask=title,includedPermissions"),
            json!({"title": "u", "includedPermissions": ["apigee.deployments.invoke"]}),
        ),
        (
            Method::DELETE,
            format!("{proj}/roles/r1?etag=BwYT8i40Vwo%3D"),
            Value::Null,
        ),
        (Method::GET, "/v1/groups".into(), Value::Null),
        (Method::GET, "/v1/groups/g@example.com".into(), Value::Null),
        (
            Method::POST,
            "/v1/groups/g@example.com:addMember".into(),
            json!({"member": "user:a@example.com"}),
        ),
        (
            Method::POST,
            "/v1/groups/g@example.com:removeMember".into(),
            json!({"member": "user:a@example.com"}),
        ),
        (Method::GET, "/healthz".into(), Value::Null),
        (Method::GET, "/readyz".into(), Value::Null),
        (Method::GET, "/dev/jwks.json".into(), Value::Null),
    ];
    let (mut method, mut path, mut body) = rng.pick(&seeds).clone();
    if rng.chance(10) {
        method = rng
            .pick(&[
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::PUT,
            ])
            .clone();
    }
    if rng.chance(40) {
        path = mutate_path(rng, &path);
    }
    // The body: as seeded, edited as JSON, or mangled as bytes.
    for _ in 0..rng.below(4) {
        body = mutate_json(rng, body, 0);
    }
    let mut bytes = if body.is_null() && rng.chance(70) {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    if rng.chance(20) {
        for _ in 0..1 + rng.below(4) {
            let s = String::from_utf8_lossy(&bytes).into_owned();
            bytes = mutate_token(rng, &s, "{\"policy\":{\"bindings\":[]}}").into_bytes();
        }
    }
    if rng.chance(2) {
        bytes = rng.some_bytes();
    }
    (method, path, bytes)
}

fn mutate_path(rng: &mut Rng, path: &str) -> String {
    let mut segments: Vec<String> = path.split('/').map(str::to_owned).collect();
    let k = 1 + rng.below(segments.len().saturating_sub(1).max(1));
    let k = k.min(segments.len() - 1);
    let replacement = rng
        .pick(&[
            "",
            ".",
            "..",
            "%2F",
            "%2e%2e",
            "a:b",
            ":setIamPolicy",
            "x:getIamPolicy:setIamPolicy",
            "orders:testIamPermissions",
            "%3AsetIamPolicy",
            "demo-project:setIamPolicy",
            "other-org",
            "ORDERS",
            "a%00b",
            "%C3%A9",
            "é",
            "*",
            "r1:undelete",
            "-",
            "a b",
            "g@example.com:addMember",
            "x:",
            ":",
        ])
        .to_string();
    match rng.below(4) {
        0 => segments[k] = replacement,
        1 => segments[k].push_str(&replacement),
        2 => segments.insert(k, replacement),
        _ => segments[k] = "a".repeat(rng.len()),
    }
    segments.join("/")
}

fn mutate_json(rng: &mut Rng, v: Value, depth: usize) -> Value {
    if depth > 6 || rng.chance(20) {
        return random_json(rng, 2);
    }
    match v {
        Value::Object(mut m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            match rng.below(4) {
                0 if !keys.is_empty() => {
                    let k = rng.pick(&keys).clone();
                    m.remove(&k);
                }
                1 => {
                    if let Value::Object(extra) = random_json(rng, 2) {
                        m.extend(extra);
                    }
                }
                _ if !keys.is_empty() => {
                    let k = rng.pick(&keys).clone();
                    let inner = m.remove(&k).unwrap_or_default();
                    m.insert(k, mutate_json(rng, inner, depth + 1));
                }
                _ => {}
            }
            Value::Object(m)
        }
        Value::Array(mut a) => {
            match rng.below(4) {
                0 if !a.is_empty() => {
                    let i = rng.below(a.len());
                    a.remove(i);
                }
                1 => {
                    // Many copies: the principal and group limits.
                    let item = a.first().cloned().unwrap_or_else(|| random_json(rng, 1));
                    let n = rng.below(2000);
                    a.extend(std::iter::repeat_n(item, n));
                }
                2 => a.push(random_json(rng, 2)),
                _ if !a.is_empty() => {
                    let i = rng.below(a.len());
                    let inner = std::mem::take(&mut a[i]);
                    a[i] = mutate_json(rng, inner, depth + 1);
                }
                _ => {}
            }
            Value::Array(a)
        }
        _ => random_json(rng, 2),
    }
}
