//! A fake Google for backend identity on `127.0.0.1:0`: the metadata server's identity endpoint
//! and the OAuth 2.0 token endpoint. Both mint RS256 ID tokens for the audience asked (signed
//! with [`super::rsa`]); the token endpoint verifies the service-account assertion first, as
//! Google does. Fetches are counted per audience and announced on a watch channel, so a test
//! waits for an event, never for time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::encoding::AsDer as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{TestKey, now, pem, rsa};

/// The gateway's service account, as the fake metadata server reports it.
pub const GATEWAY: &str = "gateway@demo-project.iam.gserviceaccount.com";
/// The service account of the JSON key.
pub const KEY_ACCOUNT: &str = "key-gateway@demo-project.iam.gserviceaccount.com";
/// The JSON key's `private_key_id`.
pub const KEY_ID: &str = "0123456789abcdef";
/// Google's ID-token issuer.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The metadata server's identity endpoint.
pub const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

/// The service account's key: its PEM (for the key file) and the same key for verifying.
pub fn service_account_key() -> &'static (String, TestKey) {
    static KEY: OnceLock<(String, TestKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pem = pem("PRIVATE KEY", pair.as_der().unwrap().as_ref());
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        (pem, TestKey::finish(KEY_ID, Algorithm::RS256, encoding))
    })
}

/// A service-account JSON key file's text, as IAM hands it out.
pub fn key_file_json(token_uri: &str) -> String {
    json!({
        "type": "service_account", "project_id": "demo-project", "private_key_id": KEY_ID,
        "private_key": service_account_key().0, "client_email": KEY_ACCOUNT,
        "client_id": "1234567890", "token_uri": token_uri,
    })
    .to_string()
}

#[derive(Default)]
struct Shared {
    fetches: Mutex<HashMap<String, usize>>,
    assertions: Mutex<Vec<(Value, Value)>>,
    hang: AtomicBool,
    lifetime: AtomicU64,
    minted: AtomicU64,
}

/// The fake, running.
#[derive(Clone)]
pub struct FakeGoogle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    total: Arc<watch::Sender<usize>>,
}

impl FakeGoogle {
    pub async fn start() -> FakeGoogle {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (total, _) = watch::channel(0);
        let fake = FakeGoogle {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                lifetime: AtomicU64::new(3600),
                ..Default::default()
            }),
            total: Arc::new(total),
        };
        let app = axum::Router::new()
            .route(IDENTITY_PATH, axum::routing::get(identity))
            .route("/token", axum::routing::post(token))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// The base URL (`metadata_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint (`token_url`).
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Fetches so far for `audience`.
    pub fn fetches(&self, audience: &str) -> usize {
        self.shared
            .fetches
            .lock()
            .unwrap()
            .get(audience)
            .copied()
            .unwrap_or(0)
    }

    /// Fetches so far, all audiences.
    pub fn total(&self) -> usize {
        *self.total.borrow()
    }

    /// Waits until `n` fetches in all have been answered (or panics after 30 s: a hang guard).
    pub async fn wait_for_total(&self, n: usize) {
        let mut rx = self.total.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.wait_for(|t| *t >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} fetches never came ({} so far)", self.total()))
            .unwrap();
    }

    /// From now on, requests are never answered.
    pub fn hang(&self, hang: bool) {
        self.shared.hang.store(hang, Ordering::SeqCst);
    }

    /// Lifetime of the tokens minted from now on.
    pub fn set_lifetime(&self, secs: u64) {
        self.shared.lifetime.store(secs, Ordering::SeqCst);
    }

    /// The (header, claims) of every assertion the token endpoint accepted.
    pub fn assertions(&self) -> Vec<(Value, Value)> {
        self.shared.assertions.lock().unwrap().clone()
    }

    async fn mint(&self, audience: &str, email: &str) -> String {
        if self.shared.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        *self
            .shared
            .fetches
            .lock()
            .unwrap()
            .entry(audience.to_owned())
            .or_default() += 1;
        let n = self.shared.minted.fetch_add(1, Ordering::SeqCst);
        let iat = now();
        let token = rsa().sign(&json!({
            "iss": GOOGLE_ISSUER, "aud": audience, "azp": "1234567890", "sub": "1234567890",
            "email": email, "email_verified": true, "iat": iat,
            "exp": iat + self.shared.lifetime.load(Ordering::SeqCst), "n": n,
        }));
        self.total.send_modify(|t| *t += 1);
        token
    }
}

async fn identity(
    State(fake): State<FakeGoogle>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor header".into(),
        );
    }
    if query.get("format").map(String::as_str) != Some("full") {
        return (StatusCode::BAD_REQUEST, "format=full expected".into());
    }
    let Some(audience) = query.get("audience").filter(|a| !a.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required".into(),
        );
    };
    (StatusCode::OK, fake.mint(audience, GATEWAY).await)
}

fn invalid_grant(why: &str) -> (StatusCode, axum::Json<Value>) {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "invalid_grant", "error_description": why})),
    )
}

async fn token(
    State(fake): State<FakeGoogle>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, axum::Json<Value>) {
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return invalid_grant("a form is expected");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return invalid_grant("unsupported grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return invalid_grant("no assertion");
    };
    // The signature, with the service account's public key.
    let key = &service_account_key().1;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let decoded = match jsonwebtoken::decode::<Value>(
        assertion,
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    ) {
        Ok(d) => d,
        Err(e) => return invalid_grant(&format!("Invalid JWT Signature: {e}")),
    };
    let claims = decoded.claims;
    let header = serde_json::to_value(&decoded.header).unwrap();
    let text = |k: &str| claims[k].as_str().unwrap_or("").to_owned();
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    let problem = if text("iss") != KEY_ACCOUNT || text("sub") != KEY_ACCOUNT {
        Some("iss and sub must be the key's client_email")
    } else if text("aud") != fake.token_url() {
        Some("aud must be the token endpoint")
    } else if text("target_audience").is_empty() {
        Some("no target_audience")
    } else if !matches!((iat, exp), (Some(i), Some(e)) if e > i && e - i <= 3600) {
        Some("the assertion must live at most an hour")
    } else if header["kid"] != json!(KEY_ID) {
        Some("kid must be the key's private_key_id")
    } else {
        None
    };
    if let Some(p) = problem {
        return invalid_grant(p);
    }
    fake.shared
        .assertions
        .lock()
        .unwrap()
        .push((header, claims.clone()));
    let id_token = fake.mint(&text("target_audience"), KEY_ACCOUNT).await;
    (StatusCode::OK, axum::Json(json!({ "id_token": id_token })))
}

/// The claims of an ID token, after checking its signature with the fake's key.
pub fn verified_claims(token: &str) -> Value {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(rsa().jwk.clone()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
        .unwrap()
        .claims
}
