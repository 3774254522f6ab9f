//! ID tokens for a service account whose JSON key verifyiam holds: a JWT assertion signed with
//! the key (`iss` = `sub` = the account, `aud` = the token endpoint, `target_audience` = the
//! backend, one hour at most), exchanged at Google's token endpoint for an ID token.

use std::path::{Path, PathBuf};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::json;

use super::{FetchError, IdTokenSource};

/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// The assertion's lifetime: Google accepts at most an hour.
const ASSERTION_SECS: u64 = 3600;
/// The OAuth 2.0 JWT bearer grant (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a service-account JSON key.
    #[error("{path} is not a service-account JSON key: {reason}")]
    NotAKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
}

/// A service account's private key. Its `Debug` shows the account only.
pub struct ServiceAccountKey {
    /// The account's email (`iss` and `sub` of the assertion).
    pub client_email: String,
    private_key_id: Option<String>,
    encoding: EncodingKey,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Reads a JSON key as downloaded from IAM (`"type": "service_account"`).
    pub fn load(path: &Path) -> Result<ServiceAccountKey, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| KeyFileError::NotAKey {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the JSON text of a key.
    pub fn parse(text: &str) -> Result<ServiceAccountKey, String> {
        // The parser's message could quote the file, which holds the private key: not shown.
        let file: KeyFile =
            serde_json::from_str(text).map_err(|_| "it is not a JSON object".to_owned())?;
        match file.kind.as_deref() {
            Some("service_account") => {}
            Some(other) => return Err(format!("its type is {other:?}, not \"service_account\"")),
            None => return Err("it has no \"type\": \"service_account\"".to_owned()),
        }
        let client_email = file
            .client_email
            .filter(|e| e.contains('@'))
            .ok_or("it has no client_email")?;
        let pem = file.private_key.ok_or("it has no private_key")?;
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| "its private_key is not an RSA private key in PEM".to_owned())?;
        Ok(ServiceAccountKey {
            client_email,
            private_key_id: file.private_key_id.filter(|k| !k.is_empty()),
            encoding,
        })
    }

    /// The signed assertion asking `token_url` for an ID token for `audience`, issued at `now`.
    pub fn assertion(&self, token_url: &str, audience: &str, now: u64) -> Result<String, String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.private_key_id.clone();
        let claims = json!({
            "iss": self.client_email, "sub": self.client_email, "aud": token_url,
            "target_audience": audience, "iat": now, "exp": now + ASSERTION_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())
    }
}

/// Exchanges signed assertions for ID tokens at the token endpoint.
pub struct KeySource {
    http: reqwest::Client,
    key: ServiceAccountKey,
    token_url: String,
}

impl KeySource {
    /// A source signing with `key` and asking `token_url`.
    pub fn new(http: reqwest::Client, key: ServiceAccountKey, token_url: &str) -> KeySource {
        KeySource {
            http,
            key,
            token_url: token_url.to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
}

impl IdTokenSource for KeySource {
    fn label(&self) -> &'static str {
        "service_account_key"
    }

    fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, FetchError>> {
        async move {
            let assertion = self
                .key
                .assertion(&self.token_url, audience, crate::authn::unix_now())
                .map_err(FetchError::Sign)?;
            let request = self.http.post(&self.token_url).form(&[
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", assertion.as_str()),
            ]);
            let answer = crate::upstream::send("token_endpoint", request, MAX_ANSWER)
                .await
                .map_err(FetchError::transport)?;
            if !answer.status.is_success() {
                answer.fail("status");
                return Err(FetchError::status(answer.status, &answer.body));
            }
            let parsed: TokenAnswer = serde_json::from_slice(&answer.body).map_err(|_| {
                answer.fail("body");
                FetchError::Malformed("the answer is not JSON".into())
            })?;
            parsed.id_token.ok_or_else(|| {
                answer.fail("body");
                FetchError::Malformed("the answer has no id_token".into())
            })
        }
        .boxed()
    }
}
