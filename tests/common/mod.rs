//! Test harness: a real verifyiam on `127.0.0.1:0`, a local JWK-set server, keys and tokens
//! minted here, and small clients for Check (envoy-types' gRPC client) and the admin REST API.
#![allow(dead_code)]

pub mod certs;
pub mod google;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::transport::Channel;

use verifyiam::config::Config;
use verifyiam::server::{self, Listeners};

pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const ISSUER: &str = "https://issuer.test";
pub const PROJECT: &str = "demo-project";
pub const ADMIN: &str = "ops@example.com";
pub const INVOKER: &str = "roles/apigee.deploymentInvoker";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key's bytes as published (the "secret" of an HMAC confusion attack).
    pub public_pem: String,
}

impl TestKey {
    pub fn rsa(kid: &str) -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let encoding =
            EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes()).unwrap();
        Self::finish(kid, Algorithm::RS256, encoding)
    }

    pub fn ec(kid: &str) -> TestKey {
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        Self::finish(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(doc.as_ref()),
        )
    }

    fn finish(kid: &str, alg: Algorithm, encoding: EncodingKey) -> TestKey {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        let public_pem = jwk.to_string();
        TestKey {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
            public_pem,
        }
    }

    /// Signs `claims` under this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// Signs `claims` with this key but names another `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// Shared keys (RSA generation is slow in debug builds).
pub fn keys() -> &'static (TestKey, TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            TestKey::rsa("rsa-1"),
            TestKey::ec("ec-1"),
            TestKey::rsa("rogue"),
        )
    })
}

pub fn rsa() -> &'static TestKey {
    &keys().0
}
pub fn ec() -> &'static TestKey {
    &keys().1
}
/// A key the issuer never published.
pub fn rogue() -> &'static TestKey {
    &keys().2
}

/// Standard claims for `email`, valid for an hour, with the cloud-platform scope.
pub fn claims(email: &str) -> Value {
    let n = now();
    json!({"iss": ISSUER, "sub": format!("sub-{email}"), "email": email, "email_verified": true,
           "scope": format!("openid {SCOPE}"), "iat": n, "exp": n + 3600})
}

pub fn token(email: &str) -> String {
    rsa().sign(&claims(email))
}

/// Base64url of a JSON value (for hand-built tokens).
pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A local HTTP server answering with what the test says, counting requests per path.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    total: Arc<AtomicUsize>,
    /// The last request seen on each path: its headers and body.
    last: Arc<Mutex<HashMap<String, (HeaderMap, String)>>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
}

/// What an upstream answers on one path.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    /// A plain answer with `status` and `body`.
    pub fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    pub fn json(body: Value) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream {
            addr,
            hits: Default::default(),
            routes: Default::default(),
            total: Default::default(),
            last: Default::default(),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
        };
        let state = up.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, h: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let path = uri.path().to_owned();
                    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                    state.last.lock().unwrap().insert(
                        path.clone(),
                        (h, String::from_utf8_lossy(&body).into_owned()),
                    );
                    state.total.fetch_add(1, Ordering::SeqCst);
                    let reply = state.routes.lock().unwrap().get(&path).cloned();
                    let Some(reply) = reply else {
                        return axum::http::Response::builder()
                            .status(404)
                            .body(axum::body::Body::empty())
                            .unwrap();
                    };
                    if !reply.delay.is_zero() {
                        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(reply.delay).await;
                        state.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    let mut b = axum::http::Response::builder().status(reply.status);
                    for (k, v) in &reply.headers {
                        b = b.header(k, v);
                    }
                    b.body(axum::body::Body::from(reply.body)).unwrap()
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        up
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.to_owned(), reply);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests on every path so far.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// The headers and body of the last request on `path`.
    pub fn last_request(&self, path: &str) -> Option<(HeaderMap, String)> {
        self.last.lock().unwrap().get(path).cloned()
    }

    /// Publishes a JWK set at `/jwks`.
    pub fn publish(&self, keys: &[&TestKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        self.set("/jwks", Reply::json(json!({ "keys": keys })));
    }
}

/// A running verifyiam.
pub struct Server {
    pub extauthz: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: Upstream,
    pub config: Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), server::ServerError>>>,
    _dir: Option<Arc<TestStore>>,
}

/// Whether this suite runs against PostgreSQL: each suite file is compiled a second time as
/// `<suite>_postgres` (see the `*_postgres.rs` files), and that copy picks the PostgreSQL store.
pub fn postgres_suite() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_postgres")
}

/// The PostgreSQL server tests use: `VERIFYIAM_TEST_DATABASE_URL`, by default the local one.
pub fn database_server_url() -> String {
    std::env::var("VERIFYIAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Whether a missing PostgreSQL server fails the tests (CI) rather than skipping them.
pub fn postgres_required() -> bool {
    std::env::var("VERIFYIAM_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A fresh database on the test server, dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    pub name: String,
    /// The URL of this database.
    pub url: String,
}

impl TestDatabase {
    /// Creates a database with a unique name; `None` (after saying so loudly) when the server
    /// cannot be reached and `VERIFYIAM_REQUIRE_POSTGRES` is not `1`.
    pub async fn create() -> Option<TestDatabase> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = database_server_url();
        let name = format!(
            "verifyiam_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let created = async {
            let (client, connection) =
                tokio_postgres::connect(&server, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
        };
        match tokio::time::timeout(Duration::from_secs(30), created).await {
            Ok(Ok(())) => {}
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                if postgres_required() {
                    panic!(
                        "PostgreSQL at {server} is required (VERIFYIAM_REQUIRE_POSTGRES=1) but not usable: {why}"
                    );
                }
                // Straight to stderr: the test harness's capture would swallow `eprintln!`.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n**************************************************************\n\
                     * PostgreSQL at {server} is not usable: {why}\n\
                     * SKIPPING the PostgreSQL tests. Set VERIFYIAM_TEST_DATABASE_URL to a\n\
                     * server, or VERIFYIAM_REQUIRE_POSTGRES=1 to fail instead.\n\
                     **************************************************************\n"
                );
                return None;
            }
        }
        let mut url = url::Url::parse(&server).unwrap();
        url.set_path(&format!("/{name}"));
        Some(TestDatabase {
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (database_server_url(), self.name.clone());
        // Its own thread and runtime: drop may run inside (or outside) any runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&server, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Where a test server keeps its policies: a temporary directory, and for the PostgreSQL
/// suites a fresh database.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub database: Option<TestDatabase>,
}

impl TestStore {
    /// The store this suite runs against. In a PostgreSQL suite with no server reachable (and
    /// not required) the whole suite is skipped: the process ends successfully here.
    pub async fn for_suite() -> TestStore {
        let database = if postgres_suite() {
            match TestDatabase::create().await {
                Some(db) => Some(db),
                None => std::process::exit(0),
            }
        } else {
            None
        };
        TestStore {
            dir: tempfile::tempdir().unwrap(),
            database,
        }
    }

    /// The value of `iam.store`.
    pub fn location(&self) -> String {
        match &self.database {
            Some(db) => db.url.clone(),
            None => self.dir.path().display().to_string(),
        }
    }
}

#[derive(Default)]
pub struct Options {
    /// Appended to the config file (whole tables).
    pub extra: String,
    /// Extra keys for the `[server]` table.
    pub server_extra: String,
    /// `server.check_deadline`; "2s" when empty.
    pub deadline: String,
    /// Lines added to the `[iam]` table (e.g. `strict_deployments = true`).
    pub iam_extra: String,
    pub store: Option<Arc<TestStore>>,
    pub upstream: Option<Upstream>,
}

impl Server {
    /// A server trusting `ISSUER` (keys at the upstream's `/jwks`, RSA and EC published).
    pub async fn start() -> Server {
        Self::start_with(Options::default()).await
    }

    /// A server that also trusts `issuer`, with the same keys (the upstream's `/jwks`) and
    /// `audiences`.
    pub async fn start_with_issuer(issuer: &str, audiences: &[&str]) -> Server {
        let up = Upstream::start().await;
        up.publish(&[rsa(), ec()]);
        let extra = format!(
            "[[token.jwt]]\nissuer = \"{issuer}\"\njwks_uri = \"{}\"\naudiences = {audiences:?}\n",
            up.url("/jwks")
        );
        Self::start_with(Options {
            extra,
            upstream: Some(up),
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(options: Options) -> Server {
        let upstream = match options.upstream {
            Some(u) => u,
            None => {
                let u = Upstream::start().await;
                u.publish(&[rsa(), ec()]);
                u
            }
        };
        let dir = match options.store {
            Some(store) => store,
            None => Arc::new(TestStore::for_suite().await),
        };
        let text = format!(
            r#"
[server]
check_deadline = "{deadline}"
{server_extra}
[iam]
project = "{PROJECT}"
store = "{store}"
bootstrap_admins = ["user:{ADMIN}"]
{iam_extra}
[[token.jwt]]
issuer = "{ISSUER}"
jwks_uri = "{jwks}"
{extra}
"#,
            store = dir.location(),
            jwks = upstream.url("/jwks"),
            extra = options.extra,
            server_extra = options.server_extra,
            deadline = if options.deadline.is_empty() {
                "2s"
            } else {
                options.deadline.as_str()
            },
            iam_extra = options.iam_extra,
        );
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let extauthz = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ea, aa) = (extauthz.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = config.clone();
        let task = tokio::spawn(async move {
            server::run(Listeners { extauthz, admin }, cfg, async move {
                let _ = rx.await;
            })
            .await
        });
        let s = Server {
            extauthz: ea,
            admin: aa,
            upstream,
            config,
            stop: Some(tx),
            task: Some(task),
            _dir: Some(dir),
        };
        s.wait_ready().await;
        s
    }

    /// A handle on a server running elsewhere (another process), for its clients.
    pub fn external(
        extauthz: SocketAddr,
        admin: SocketAddr,
        upstream: Upstream,
        config: Config,
    ) -> Server {
        Server {
            extauthz,
            admin,
            upstream,
            config,
            stop: None,
            task: None,
            _dir: None,
        }
    }

    async fn wait_ready(&self) {
        if self.config.server.tls.is_some() {
            // A plaintext health probe cannot reach a TLS listener; /readyz follows the same
            // freshness as the ext_authz port's health.
            wait_readyz(self.admin).await;
        } else if self.config.server.admin_tls.is_some() {
            // Only the admin listener speaks TLS: the ext_authz port's health says enough.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !serving(self.extauthz).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "server did not become ready"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            wait_ready(self.admin, self.extauthz).await;
        }
    }

    /// Stops the server and waits for it; returns the store for a restart.
    pub async fn stop(mut self) -> Arc<TestStore> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self._dir.take().unwrap()
    }

    pub async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.extauthz))
            .await
            .unwrap()
    }

    /// Checks a request with the given `Authorization` header(s) against `env/api`.
    pub async fn check(&self, authorization: Option<&str>, env: &str, api: &str) -> Outcome {
        self.send(routed_request(authorization, env, api)).await
    }

    pub async fn send(&self, req: CheckRequest) -> Outcome {
        let response = self
            .client()
            .await
            .check(req)
            .await
            .expect("Check never fails at the gRPC level");
        Outcome::from(response.into_inner())
    }

    /// Sends `body` as a Check's message bytes, whatever they are; the answer read as a
    /// `CheckResponse`, or the gRPC status.
    pub async fn send_bytes(&self, body: Vec<u8>) -> Result<Outcome, tonic::Status> {
        let channel = Channel::from_shared(format!("http://{}", self.extauthz))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path =
            http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
        grpc.unary(tonic::Request::new(body), path, RawRequest)
            .await
            .map(|r| Outcome::from(r.into_inner()))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// POSTs JSON to the admin API as `token`.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut rb = reqwest::Client::new()
            .post(self.admin_url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut rb = reqwest::Client::new().get(self.admin_url(path));
        if let Some(t) = token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Any admin REST call as `token`; the status and the JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut rb = reqwest::Client::new().request(method, self.admin_url(path));
        if let Some(t) = token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Checks `env/api` with extra request headers (as Envoy sends them, lowercased).
    pub async fn check_with(
        &self,
        authorization: Option<&str>,
        env: &str,
        api: &str,
        extra: &[(&str, &str)],
    ) -> Outcome {
        let mut req = check_request(authorization, "api.example.com", "/");
        let attrs = req.attributes.as_mut().unwrap();
        attrs
            .context_extensions
            .insert("environment".into(), env.into());
        attrs
            .context_extensions
            .insert("deployment".into(), api.into());
        let headers = &mut attrs
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .headers;
        for (k, v) in extra {
            headers.insert((*k).to_owned(), (*v).to_owned());
        }
        self.send(req).await
    }

    /// Grants `member` `role` on a deployment (as the bootstrap admin), asserting success.
    pub async fn grant_deployment(&self, env: &str, api: &str, member: &str, role: &str) {
        let path = format!(
            "/v1/organizations/{PROJECT}/environments/{env}/deployments/{api}:setIamPolicy"
        );
        let body = json!({"policy": {"bindings": [{"role": role, "members": [member]}]}});
        let (s, v) = self
            .post(&path, Some(&token(ADMIN)), &body.to_string())
            .await;
        assert_eq!(s, 200, "{v}");
    }

    pub async fn grant_project(&self, member: &str, role: &str) {
        let path = format!("/v1/projects/{PROJECT}:setIamPolicy");
        let body = json!({"policy": {"bindings": [{"role": role, "members": [member]}]}});
        let (s, v) = self
            .post(&path, Some(&token(ADMIN)), &body.to_string())
            .await;
        assert_eq!(s, 200, "{v}");
    }

    pub async fn grant_environment(&self, env: &str, member: &str, role: &str) {
        let path = format!("/v1/organizations/{PROJECT}/environments/{env}:setIamPolicy");
        let body = json!({"policy": {"bindings": [{"role": role, "members": [member]}]}});
        let (s, v) = self
            .post(&path, Some(&token(ADMIN)), &body.to_string())
            .await;
        assert_eq!(s, 200, "{v}");
    }
}

/// Waits (generously: a PostgreSQL store connects, migrates and loads first) until `/readyz`
/// answers 200 and the ext_authz port's gRPC health says SERVING.
pub async fn wait_ready(admin: SocketAddr, extauthz: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    while tokio::time::Instant::now() < deadline {
        if !ready {
            if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await {
                ready = r.status().is_success();
            }
        }
        if ready && serving(extauthz).await {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server did not become ready");
}

/// Waits until `/readyz` answers 200.
pub async fn wait_readyz(admin: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server did not become ready");
}

/// Whether the ext_authz port's gRPC health reports SERVING.
pub async fn serving(extauthz: SocketAddr) -> bool {
    let Ok(channel) = Channel::from_shared(format!("http://{extauthz}"))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
}

/// An Envoy-shaped CheckRequest with lowercased headers, as Envoy sends them.
pub fn check_request(authorization: Option<&str>, host: &str, path: &str) -> CheckRequest {
    let mut headers = HashMap::from([
        (":authority".to_owned(), host.to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":method".to_owned(), "GET".to_owned()),
        ("x-request-id".to_owned(), "req-1".to_owned()),
    ]);
    if let Some(a) = authorization {
        headers.insert("authorization".to_owned(), a.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: "req-1".into(),
                    method: "GET".into(),
                    host: host.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A CheckRequest whose Envoy route names `env/api` in its `context_extensions`.
pub fn routed_request(authorization: Option<&str>, env: &str, api: &str) -> CheckRequest {
    let mut req = check_request(authorization, "api.example.com", "/");
    let ext = &mut req.attributes.as_mut().unwrap().context_extensions;
    ext.insert("environment".into(), env.into());
    ext.insert("deployment".into(), api.into());
    req
}

/// A CheckResponse, read the way Envoy reads it.
#[derive(Debug)]
pub struct Outcome {
    pub grpc: i32,
    pub message: String,
    /// HTTP status Envoy would send; 0 when allowed.
    pub http: u16,
    pub headers: Vec<(String, String, i32)>,
    pub body: Value,
    pub metadata: HashMap<String, String>,
    pub raw: CheckResponse,
}

impl Outcome {
    pub fn allowed(&self) -> bool {
        self.grpc == 0
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _, _)| k == name)
            .map(|(_, v, _)| v.as_str())
    }

    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// Asserts a denial with this gRPC code, HTTP status and `WWW-Authenticate` error.
    pub fn assert_denied(&self, grpc: i32, http: u16, challenge: Option<&str>) {
        assert_eq!(self.grpc, grpc, "{self:#?}");
        assert_eq!(self.http, http, "{self:#?}");
        assert_eq!(self.body["error"]["code"], json!(http), "{self:#?}");
        match challenge {
            Some(c) => {
                let h = self
                    .header("www-authenticate")
                    .unwrap_or_else(|| panic!("no challenge: {self:#?}"));
                assert!(h.starts_with("Bearer "), "{h}");
                assert!(h.contains(&format!("error=\"{c}\"")), "{h}");
            }
            None => assert!(self.header("www-authenticate").is_none(), "{self:#?}"),
        }
    }
}

impl From<CheckResponse> for Outcome {
    fn from(r: CheckResponse) -> Outcome {
        let (grpc, message) = r
            .status
            .as_ref()
            .map(|s| (s.code, s.message.clone()))
            .unwrap_or((0, String::new()));
        let mut metadata = HashMap::new();
        if let Some(m) = &r.dynamic_metadata {
            for (k, v) in &m.fields {
                if let Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) =
                    &v.kind
                {
                    metadata.insert(k.clone(), s.clone());
                }
            }
        }
        let (http, headers, body) = match &r.http_response {
            Some(HttpResponse::OkResponse(ok)) => (
                0,
                ok.headers
                    .iter()
                    .filter_map(|h| {
                        h.header
                            .as_ref()
                            .map(|x| (x.key.clone(), x.value.clone(), h.append_action))
                    })
                    .collect(),
                Value::Null,
            ),
            Some(HttpResponse::DeniedResponse(d)) => (
                d.status.map(|s| s.code as u16).unwrap_or(403),
                d.headers
                    .iter()
                    .filter_map(|h| {
                        h.header
                            .as_ref()
                            .map(|x| (x.key.clone(), x.value.clone(), h.append_action))
                    })
                    .collect(),
                serde_json::from_str(&d.body).unwrap_or(Value::String(d.body.clone())),
            ),
            _ => (0, Vec::new(), Value::Null),
        };
        Outcome {
            grpc,
            message,
            http,
            headers,
            body,
            metadata,
            raw: r,
        }
    }
}

/// gRPC codes.
pub const OK: i32 = 0;
pub const PERMISSION_DENIED: i32 = 7;
pub const UNAVAILABLE: i32 = 14;
pub const UNAUTHENTICATED: i32 = 16;
pub const INVALID_ARGUMENT: i32 = 3;

/// A client codec that sends bytes as they are and reads a `CheckResponse`.
#[derive(Default)]
pub struct RawRequest;

impl tonic::codec::Codec for RawRequest {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = RawRequest;
    type Decoder = RawRequest;

    fn encoder(&mut self) -> RawRequest {
        RawRequest
    }

    fn decoder(&mut self) -> RawRequest {
        RawRequest
    }
}

impl tonic::codec::Encoder for RawRequest {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawRequest {
    type Item = CheckResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<CheckResponse>, tonic::Status> {
        <CheckResponse as prost::Message>::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}
