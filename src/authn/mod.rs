//! Authentication: a bearer token becomes a verified [`Principal`] (or a clear reason why not).
//! JWTs are checked offline ([`jwt`]); opaque Google access tokens go to tokeninfo
//! ([`tokeninfo`]). Verified principals are cached by a SHA-256 of the token, never the token.

pub mod bearer;
pub mod dev;
pub mod jwt;
pub mod keys;
pub mod tokeninfo;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::config::TokenConfig;
use crate::iam::member::principal_members;

/// Verified principals kept at most this long, whatever the token's own expiry.
const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Verified principals kept at once.
const CACHE_CAPACITY: u64 = 200_000;

/// Why a token does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// Bad, expired, forged or untrusted (`invalid_token`, HTTP 401).
    #[error("{0}")]
    InvalidToken(std::borrow::Cow<'static, str>),
    /// Valid, but without the required scope (`insufficient_scope`, HTTP 403).
    #[error("the token lacks the required scope")]
    InsufficientScope,
    /// An upstream (key set, tokeninfo) could not answer (HTTP 503).
    #[error("token verification is unavailable: {0}")]
    Unavailable(String),
}

/// What a verifier learned from one token.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The verified email, when the token carries one.
    pub email: Option<String>,
    /// `sub`, or the email when there is no `sub`.
    pub subject: Option<String>,
    /// `iss`.
    pub issuer: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// Whether the required scope is among the token's scopes.
    pub has_scope: bool,
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Principal {
    /// What `x-verifyiam-principal` carries: the email, else the subject.
    pub id: Box<str>,
    /// The token's issuer.
    pub issuer: Box<str>,
    /// The IAM members the caller matches (`user:…`, `domain:…`, `allAuthenticatedUsers`, …).
    pub members: Vec<Box<str>>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// Whether the token carries the required scope.
    pub has_scope: bool,
}

impl Principal {
    fn from_verified(v: Verified) -> Principal {
        let members = principal_members(v.email.as_deref(), &[], None);
        let id = v
            .email
            .as_deref()
            .map(str::to_ascii_lowercase)
            .or(v.subject)
            .unwrap_or_default();
        Principal {
            id: id.into(),
            issuer: v.issuer.into(),
            members,
            expires_at: v.expires_at,
            has_scope: v.has_scope,
        }
    }
}

/// The SHA-256 of a token: the only form in which a token is kept or used as a key.
pub type TokenHash = [u8; 32];

/// Hashes a token for cache keys and logs.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct UntilExpiry;

impl moka::Expiry<TokenHash, Arc<Principal>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Arc<Principal>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.expires_at.saturating_sub(unix_now());
        Some(Duration::from_secs(left).min(MAX_CACHE_TTL))
    }
}

/// Turns bearer tokens into principals.
pub struct Authenticator {
    jwt: jwt::JwtVerifier,
    tokeninfo: Option<tokeninfo::Tokeninfo>,
    required_scope: String,
    leeway: u64,
    cache: moka::future::Cache<TokenHash, Arc<Principal>>,
}

impl Authenticator {
    /// Builds the verifiers for `[token]`; `fixed` are in-process issuers (the dev issuer).
    pub fn new(
        token: &TokenConfig,
        http: reqwest::Client,
        fixed: Vec<(String, Arc<keys::KeySet>)>,
    ) -> Authenticator {
        Authenticator {
            jwt: jwt::JwtVerifier::new(token, keys::KeySets::new(http.clone(), token), fixed),
            tokeninfo: token
                .tokeninfo
                .as_ref()
                .map(|t| tokeninfo::Tokeninfo::new(http, t.url.clone())),
            required_scope: token.required_scope.clone(),
            leeway: token.leeway.as_secs(),
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    /// The principal a token names, if it is valid and carries the required scope.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthnError> {
        let key = token_hash(token);
        let principal = match self.cache.get(&key).await {
            Some(p) => {
                metrics::counter!("verifyiam_token_cache_hits_total").increment(1);
                p
            }
            None => {
                metrics::counter!("verifyiam_token_cache_misses_total").increment(1);
                // Concurrent first sights of one token share one verification.
                self.cache
                    .try_get_with(key, async {
                        self.verify(token)
                            .await
                            .map(|v| Arc::new(Principal::from_verified(v)))
                    })
                    .await
                    .map_err(|e| (*e).clone())?
            }
        };
        if principal.expires_at + self.leeway < unix_now() {
            self.cache.invalidate(&key).await;
            return Err(AuthnError::InvalidToken("the token has expired".into()));
        }
        if !principal.has_scope {
            return Err(AuthnError::InsufficientScope);
        }
        Ok(principal)
    }

    async fn verify(&self, token: &str) -> Result<Verified, AuthnError> {
        if token.bytes().filter(|&b| b == b'.').count() == 2 {
            return self.jwt.verify(token, &self.required_scope).await;
        }
        match &self.tokeninfo {
            Some(t) => t.verify(token, &self.required_scope, self.leeway).await,
            None => Err(AuthnError::InvalidToken("the token is not a JWT".into())),
        }
    }
}
