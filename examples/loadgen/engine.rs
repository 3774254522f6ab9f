//! The load generator's engine: Envoy-shaped Check requests, token mixes minted before the clock
//! starts, and two ways of driving a server over real gRPC (envoy-types' `AuthorizationClient`):
//!
//! - **closed loop**: N connections × M streams each, every stream sending its next Check as soon
//!   as the previous one is answered, for a duration (maximum throughput);
//! - **open loop**: Checks scheduled at fixed intended times whatever the server does; latency is
//!   measured from the *intended* send time, so a server that stalls is charged for the whole
//!   queue it causes (no coordinated omission).
//!
//! Results are HDR histograms (nanoseconds, 3 significant digits) and counts that keep transport
//! errors apart from non-OK answers. Nothing here asserts on timings: the smoke test includes this
//! file and checks counts only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use verifyiam::authn::dev::{DEV_ISSUER, DevIssuer, KEY_FILE};

/// The scope every valid token carries.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Email domain of the hot and cold principals; the benchmark grants `domain:` this on the project.
pub const DOMAIN: &str = "loadgen.example";
/// The principal of the deployment mix; it is granted invoke on each `api-{i}` deployment only.
pub const MIX_PRINCIPAL: &str = "mixer@deployments-mix.example";
/// Environment every request targets.
pub const ENVIRONMENT: &str = "prod";
/// Deployment of every mix but the deployment mix.
pub const DEPLOYMENT: &str = "orders";
/// Issuer of the RS256 tokens (the benchmark's local JWK-set server).
pub const RS256_ISSUER: &str = "https://rs256.loadgen.example";
/// `kid` of the RS256 key.
pub const RS256_KID: &str = "loadgen-rs256";
/// Token lifetime: long enough for any run, within the server's one-hour cache bound.
pub const LIFETIME_SECS: u64 = 3600;

pub type Client = AuthorizationClient<Channel>;

/// Which tokens a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// One valid ES256 token (the warm path).
    Hot,
    /// K distinct valid ES256 tokens from the development issuer.
    Cold(usize),
    /// K distinct valid RS256 tokens from the local JWK-set issuer.
    Rs256(usize),
    /// K distinct tokens signed by a key the server does not trust (same issuer and `kid`).
    Invalid(usize),
    /// One valid token over N deployments (`api-0` … `api-{N-1}`), each with its own policy.
    Deployments(usize),
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        let (name, n) = match s.split_once(':') {
            Some((name, n)) => {
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("{s}: the count after ':' is not a number"))?;
                if n == 0 {
                    return Err(format!("{s}: the count must be at least 1"));
                }
                (name, Some(n))
            }
            None => (s, None),
        };
        match (name, n) {
            ("hot", None) => Ok(Mix::Hot),
            ("cold", Some(k)) => Ok(Mix::Cold(k)),
            ("rs256", Some(k)) => Ok(Mix::Rs256(k)),
            ("invalid", k) => Ok(Mix::Invalid(k.unwrap_or(1))),
            ("deployments", Some(n)) => Ok(Mix::Deployments(n)),
            _ => Err(format!(
                "{s}: expected hot, cold:K, rs256:K, invalid[:K] or deployments:N"
            )),
        }
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mix::Hot => write!(f, "hot"),
            Mix::Cold(k) => write!(f, "cold:{k}"),
            Mix::Rs256(k) => write!(f, "rs256:{k}"),
            Mix::Invalid(k) => write!(f, "invalid:{k}"),
            Mix::Deployments(n) => write!(f, "deployments:{n}"),
        }
    }
}

impl Mix {
    /// How many distinct requests the mix has.
    pub fn len(&self) -> usize {
        match *self {
            Mix::Hot => 1,
            Mix::Cold(k) | Mix::Rs256(k) | Mix::Invalid(k) | Mix::Deployments(k) => k,
        }
    }
}

/// PEM armour for DER bytes.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An RSA-2048 signing key and its public JWK set.
pub struct RsaIssuer {
    pub encoding: EncodingKey,
    pub jwk_set: Value,
}

impl RsaIssuer {
    /// Loads the PKCS#8 PEM key at `path`, or makes one (aws-lc-rs) and keeps it there.
    pub fn load_or_create(path: &Path) -> Result<RsaIssuer, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use aws_lc_rs::encoding::AsDer as _;
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|_| "RSA key generation failed".to_owned())?;
                let der = pair
                    .as_der()
                    .map_err(|_| "RSA key encoding failed".to_owned())?;
                let text = pem("PRIVATE KEY", der.as_ref());
                std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
                text
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let encoding = EncodingKey::from_rsa_pem(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256)
                .map_err(|e| format!("JWK: {e}"))?,
        )
        .map_err(|e| format!("JWK: {e}"))?;
        jwk["kid"] = json!(RS256_KID);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!("RS256");
        Ok(RsaIssuer {
            encoding,
            jwk_set: json!({ "keys": [jwk] }),
        })
    }
}

/// Everything that signs tokens for a run.
pub struct Minter {
    dev: DevIssuer,
    dev_kid: String,
    rogue: EncodingKey,
    rsa: Option<RsaIssuer>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Minter {
    /// The development issuer whose key is in `data_dir` (made there if missing), and optionally
    /// the RS256 issuer whose key is at `rsa_key`.
    pub fn new(data_dir: &Path, rsa_key: Option<&Path>) -> Result<Minter, String> {
        let dev = DevIssuer::load_or_create(DEV_ISSUER, &data_dir.join(KEY_FILE))
            .map_err(|e| e.to_string())?;
        let dev_kid = dev.jwk_set()["keys"][0]["kid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| "EC key generation failed".to_owned())?;
        let rogue = EncodingKey::from_ec_der(doc.as_ref());
        let rsa = rsa_key.map(RsaIssuer::load_or_create).transpose()?;
        Ok(Minter {
            dev,
            dev_kid,
            rogue,
            rsa,
        })
    }

    /// A valid ES256 token for `email` from the development issuer.
    pub fn dev_token(&self, email: &str) -> Result<String, String> {
        self.dev
            .mint(email, SCOPE, LIFETIME_SECS)
            .map_err(|e| e.to_string())
    }

    fn rs256_token(&self, email: &str) -> Result<String, String> {
        let rsa = self
            .rsa
            .as_ref()
            .ok_or("rs256 tokens need an RSA key (--rsa-key)")?;
        let now = unix_now();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(RS256_KID.to_owned());
        let claims = json!({"iss": RS256_ISSUER, "sub": email, "email": email,
            "email_verified": true, "scope": SCOPE, "iat": now, "exp": now + LIFETIME_SECS});
        jsonwebtoken::encode(&header, &claims, &rsa.encoding).map_err(|e| e.to_string())
    }

    /// Signed by a key the server never saw, but naming the trusted issuer and its `kid`, so the
    /// server has to check the signature to refuse it.
    fn invalid_token(&self, email: &str) -> Result<String, String> {
        let now = unix_now();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.dev_kid.clone());
        let claims = json!({"iss": DEV_ISSUER, "sub": email, "email": email,
            "email_verified": true, "scope": SCOPE, "iat": now, "exp": now + LIFETIME_SECS});
        jsonwebtoken::encode(&header, &claims, &self.rogue).map_err(|e| e.to_string())
    }

    /// Token `i` of `mix` (distinct `i`, distinct token).
    pub fn token(&self, mix: Mix, i: usize) -> Result<String, String> {
        match mix {
            Mix::Hot => self.dev_token(&format!("hot@{DOMAIN}")),
            Mix::Cold(_) => self.dev_token(&format!("cold-{i}@{DOMAIN}")),
            Mix::Rs256(_) => self.rs256_token(&format!("rs256-{i}@{DOMAIN}")),
            Mix::Invalid(_) => self.invalid_token(&format!("invalid-{i}@{DOMAIN}")),
            Mix::Deployments(_) => self.dev_token(MIX_PRINCIPAL),
        }
    }

    /// Requests `range` of `mix`, minted on every core (RS256 signing takes about a millisecond).
    pub fn requests(
        &self,
        mix: Mix,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<CheckRequest>, String> {
        let shared_token = match mix {
            Mix::Hot | Mix::Deployments(_) => Some(self.token(mix, 0)?),
            _ => None,
        };
        let build = |i: usize| -> Result<CheckRequest, String> {
            let (token, deployment) = match (&shared_token, mix) {
                (Some(t), Mix::Deployments(_)) => (t.clone(), format!("api-{i}")),
                (Some(t), _) => (t.clone(), DEPLOYMENT.to_owned()),
                (None, _) => (self.token(mix, i)?, DEPLOYMENT.to_owned()),
            };
            Ok(envoy_request(
                &format!("Bearer {token}"),
                ENVIRONMENT,
                &deployment,
            ))
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let indices: Vec<usize> = range.collect();
        if shared_token.is_some() || indices.len() < 64 || threads == 1 {
            return indices.into_iter().map(build).collect();
        }
        let per = indices.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = indices
                .chunks(per)
                .map(|chunk| scope.spawn(|| chunk.iter().map(|&i| build(i)).collect::<Vec<_>>()))
                .collect();
            let mut out = Vec::with_capacity(indices.len());
            for h in handles {
                for r in h
                    .join()
                    .map_err(|_| "a minting thread panicked".to_owned())?
                {
                    out.push(r?);
                }
            }
            Ok(out)
        })
    }
}

/// A CheckRequest shaped like Envoy's: lowercased headers with the pseudo-headers, a request id,
/// the bearer token, and the route's `context_extensions`.
pub fn envoy_request(authorization: &str, environment: &str, deployment: &str) -> CheckRequest {
    let host = "api.example.com";
    let path = format!("/{deployment}/v1/items?page=1");
    let headers = HashMap::from([
        (":authority".to_owned(), host.to_owned()),
        (":path".to_owned(), path.clone()),
        (":method".to_owned(), "GET".to_owned()),
        (":scheme".to_owned(), "https".to_owned()),
        ("user-agent".to_owned(), "loadgen/1".to_owned()),
        ("accept".to_owned(), "*/*".to_owned()),
        ("x-forwarded-proto".to_owned(), "https".to_owned()),
        (
            "x-request-id".to_owned(),
            "00000000-0000-4000-8000-000000000000".to_owned(),
        ),
        ("authorization".to_owned(), authorization.to_owned()),
    ]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: "0".into(),
                    method: "GET".into(),
                    host: host.into(),
                    path,
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([
                ("environment".to_owned(), environment.to_owned()),
                ("deployment".to_owned(), deployment.to_owned()),
            ]),
            ..Default::default()
        }),
    }
}

/// A copy of `req` with its own request id, as every Envoy request has.
fn stamped(req: &CheckRequest, n: u64) -> CheckRequest {
    let mut req = req.clone();
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        let id = format!("00000000-0000-4000-8000-{n:012x}");
        http.headers.insert("x-request-id".to_owned(), id.clone());
        http.id = id;
    }
    req
}

/// The gRPC wire frame of `req` (flag byte, big-endian length, protobuf): a request body h2load
/// can POST.
pub fn grpc_frame(req: &CheckRequest) -> Vec<u8> {
    use prost::Message as _;
    let body = req.encode_to_vec();
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// `n` clients, each on its own HTTP/2 connection to `addr` (`host:port`).
pub async fn connect(addr: &str, n: usize) -> Result<Vec<Client>, tonic::transport::Error> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(AuthorizationClient::new(channel));
    }
    Ok(clients)
}

/// Waits until `addr` answers `grpc.health.v1` SERVING, for at most `limit`.
pub async fn wait_ready(addr: &str, limit: Duration) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(endpoint) = Endpoint::from_shared(format!("http://{addr}")) {
            if let Ok(channel) = endpoint.connect().await {
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if matches!(answer, Ok(r) if r.get_ref().status == 1) {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Counts and latencies of one run (or one part of it).
pub struct Tally {
    /// Latency in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Checks started inside the measured window.
    pub sent: u64,
    /// Answered with status OK.
    pub allowed: u64,
    /// Answered with a non-OK status (a denial is a successful Check call).
    pub denied: u64,
    /// The Check call failed (transport error, gRPC error status, timeout, never answered).
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            histogram: Histogram::new_with_bounds(1, 120_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            sent: 0,
            allowed: 0,
            denied: 0,
            errors: 0,
            first_error: None,
        }
    }
}

impl Tally {
    fn record(&mut self, latency: Duration, outcome: Result<i32, String>) {
        self.histogram
            .saturating_record(latency.as_nanos().min(u64::MAX as u128) as u64);
        match outcome {
            Ok(0) => self.allowed += 1,
            Ok(_) => self.denied += 1,
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    /// Adds `other` into this one.
    pub fn merge(&mut self, other: Tally) {
        let _ = self.histogram.add(&other.histogram);
        self.sent += other.sent;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Checks that got an answer.
    pub fn answered(&self) -> u64 {
        self.allowed + self.denied
    }

    /// Latency at quantile `q` in microseconds.
    pub fn micros(&self, q: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_micros(&self) -> f64 {
        self.histogram.max() as f64 / 1000.0
    }
}

/// What a run measured.
pub struct RunResult {
    pub tally: Tally,
    /// The measured window, from its start to the last answer.
    pub elapsed: Duration,
    /// Open loop: how late the generator itself dispatched Checks (already inside the latencies).
    pub dispatch_lag_max: Duration,
    pub dispatch_lag_mean: Duration,
}

impl RunResult {
    /// Answers per second over the measured window.
    pub fn achieved_rps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.tally.answered() as f64 / s
        } else {
            0.0
        }
    }
}

/// The requests of a run, sent in order, cycling unless `once`.
#[derive(Clone)]
pub struct Workload {
    pub requests: Arc<Vec<CheckRequest>>,
    /// Send each request at most once (cold paths); the run ends early when they run out.
    pub once: bool,
}

/// Closed-loop settings.
#[derive(Clone, Debug)]
pub struct ClosedLoop {
    /// Concurrent streams on each connection.
    pub streams: usize,
    pub duration: Duration,
    /// Sent but not measured, before the window.
    pub warmup: Duration,
    /// A Check unanswered this long is an error.
    pub timeout: Duration,
}

async fn send(client: &mut Client, req: CheckRequest, timeout: Duration) -> Result<i32, String> {
    match tokio::time::timeout(timeout, client.check(req)).await {
        Ok(Ok(response)) => Ok(response
            .get_ref()
            .status
            .as_ref()
            .map(|s| s.code)
            .unwrap_or(0)),
        Ok(Err(status)) => Err(format!("grpc {:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Maximum throughput: every stream sends its next Check as soon as the last one is answered.
/// Latency is measured from each Check's own send.
pub async fn closed_loop(clients: &[Client], workload: &Workload, cfg: &ClosedLoop) -> RunResult {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let window_start = started + cfg.warmup;
    let end = window_start + cfg.duration;
    let last_answer = Arc::new(Mutex::new(window_start));
    let mut workers = Vec::new();
    for client in clients {
        for _ in 0..cfg.streams.max(1) {
            let mut client = client.clone();
            let next = next.clone();
            let workload = workload.clone();
            let timeout = cfg.timeout;
            let last_answer = last_answer.clone();
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if workload.once && i >= workload.requests.len() {
                        break;
                    }
                    let req = stamped(&workload.requests[i % workload.requests.len()], i as u64);
                    let sent_at = Instant::now();
                    if sent_at >= end {
                        break;
                    }
                    let outcome = send(&mut client, req, timeout).await;
                    if sent_at >= window_start {
                        let now = Instant::now();
                        tally.sent += 1;
                        tally.record(now - sent_at, outcome);
                        let mut last = last_answer.lock().expect("not poisoned");
                        if now > *last {
                            *last = now;
                        }
                    }
                }
                tally
            }));
        }
    }
    let mut tally = Tally::default();
    for w in workers {
        match w.await {
            Ok(t) => tally.merge(t),
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(format!("worker: {e}"));
            }
        }
    }
    let last = *last_answer.lock().expect("not poisoned");
    RunResult {
        tally,
        elapsed: last.saturating_duration_since(window_start),
        dispatch_lag_max: Duration::ZERO,
        dispatch_lag_mean: Duration::ZERO,
    }
}

/// Open-loop settings.
#[derive(Clone, Debug)]
pub struct OpenLoop {
    /// Checks per second.
    pub rate: f64,
    pub duration: Duration,
    /// Sent at the same rate but not measured, before the window.
    pub warmup: Duration,
    pub timeout: Duration,
    /// Checks in flight at most; a Check due while this many are unanswered is not sent and
    /// counts as an error (the server is not keeping up; unbounded queues would only measure
    /// the generator's memory).
    pub max_in_flight: usize,
}

/// Fixed rate: Check `i` is due at `start + i / rate` and is sent then whatever is still in
/// flight; its latency runs from that intended time, so generator lateness and server queueing
/// are both charged to the result (no coordinated omission). A dedicated thread keeps the
/// schedule (sub-millisecond sleeps, unlike the runtime's 1 ms timer).
pub async fn open_loop(clients: &[Client], workload: &Workload, cfg: &OpenLoop) -> RunResult {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let last_answer = Arc::new(Mutex::new(None::<Instant>));
    let rate = cfg.rate.max(0.001);
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now() + Duration::from_millis(5);
    let window_start = started + cfg.warmup;
    let end = window_start + cfg.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let lag_total_ns = Arc::new(AtomicU64::new(0));
    let lag_max_ns = Arc::new(AtomicU64::new(0));

    let dispatcher = {
        let clients = clients.to_vec();
        let workload = workload.clone();
        let tally = tally.clone();
        let in_flight = in_flight.clone();
        let last_answer = last_answer.clone();
        let timeout = cfg.timeout;
        let max_in_flight = cfg.max_in_flight.max(1);
        let stop = stop.clone();
        let (lag_total_ns, lag_max_ns) = (lag_total_ns.clone(), lag_max_ns.clone());
        tokio::task::spawn_blocking(move || {
            let mut dispatched_in_window = 0u64;
            let mut i: usize = 0;
            while !stop.load(Ordering::Relaxed) {
                if workload.once && i >= workload.requests.len() {
                    break;
                }
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                if due >= end {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    let wait = due - now;
                    if wait > Duration::from_micros(20) {
                        std::thread::sleep(wait);
                    }
                    continue;
                }
                let lag = now.saturating_duration_since(due).as_nanos() as u64;
                let measured = due >= window_start;
                if measured {
                    dispatched_in_window += 1;
                    lag_total_ns.fetch_add(lag, Ordering::Relaxed);
                    lag_max_ns.fetch_max(lag, Ordering::Relaxed);
                }
                if in_flight.load(Ordering::SeqCst) >= max_in_flight {
                    if measured {
                        let mut t = tally.lock().expect("not poisoned");
                        t.sent += 1;
                        t.errors += 1;
                        t.first_error.get_or_insert_with(|| {
                            format!("not sent: {max_in_flight} Checks already in flight")
                        });
                    }
                    i += 1;
                    continue;
                }
                let mut client = clients[i % clients.len()].clone();
                let req = stamped(&workload.requests[i % workload.requests.len()], i as u64);
                let tally = tally.clone();
                let in_flight = in_flight.clone();
                let last_answer = last_answer.clone();
                in_flight.fetch_add(1, Ordering::SeqCst);
                handle.spawn(async move {
                    let outcome = send(&mut client, req, timeout).await;
                    let now = Instant::now();
                    if measured {
                        let mut t = tally.lock().expect("not poisoned");
                        t.sent += 1;
                        t.record(now.saturating_duration_since(due), outcome);
                        drop(t);
                        let mut last = last_answer.lock().expect("not poisoned");
                        if last.is_none_or(|l| now > l) {
                            *last = Some(now);
                        }
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
                i += 1;
            }
            dispatched_in_window
        })
    };
    let dispatched = dispatcher.await.unwrap_or(0);
    // Everything dispatched has its own timeout; wait for it, bounded.
    let drain_until = Instant::now() + cfg.timeout + Duration::from_secs(1);
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut t = std::mem::take(&mut *tally.lock().expect("not poisoned"));
    if dispatched > t.sent {
        let missing = dispatched - t.sent;
        t.sent = dispatched;
        t.errors += missing;
        t.first_error
            .get_or_insert(format!("{missing} Checks never finished"));
    }
    let last = last_answer.lock().expect("not poisoned").unwrap_or(end);
    let elapsed = last.max(end).saturating_duration_since(window_start);
    RunResult {
        elapsed,
        dispatch_lag_max: Duration::from_nanos(lag_max_ns.load(Ordering::Relaxed)),
        dispatch_lag_mean: Duration::from_nanos(
            lag_total_ns.load(Ordering::Relaxed) / dispatched.max(1),
        ),
        tally: t,
    }
}

/// CPU time (user + system) of process `pid` in seconds, from `/proc/PID/stat` (`self` for this
/// process). Linux reports it in USER_HZ = 100 ticks per second.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU time all cores of the machine spent busy, in seconds, from `/proc/stat` (USER_HZ = 100).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    Some((total - idle) / 100.0)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
