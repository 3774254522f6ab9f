//! Authentication: a bearer token becomes a verified [`Principal`] (or a clear reason why not).
//! JWTs are checked offline ([`jwt`]); opaque Google access tokens go to tokeninfo
//! ([`tokeninfo`]). Verified principals are cached by a SHA-256 of the token, never the token.

pub mod bearer;
pub mod dev;
pub mod federation;
pub mod introspection;
pub mod jwt;
pub mod keys;
pub mod tokeninfo;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};

use sha2::{Digest, Sha256};

use crate::config::TokenConfig;
use crate::iam::member::{pool_members, pool_principal, principal_members};
use crate::telemetry::CacheCounters;

/// Verified principals kept at most this long, whatever the token's own expiry.
const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Invalid tokens remembered at once.
const NEGATIVE_CAPACITY: u64 = 100_000;
/// Google's opaque access tokens start so; with both opaque verifiers configured they go to
/// tokeninfo and every other opaque token to introspection.
const GOOGLE_OPAQUE_PREFIX: &str = "ya29.";

/// Why a token does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// Bad, expired, forged or untrusted (`invalid_token`, HTTP 401).
    #[error("{0}")]
    InvalidToken(std::borrow::Cow<'static, str>),
    /// Refused without an answer about the token itself: a lookup it needs is over its rate
    /// limit (`invalid_token`, HTTP 401, never remembered and never an outage, so a flood of
    /// forged tokens cannot reach Envoy's failure policy).
    #[error("{0}")]
    Throttled(&'static str),
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
    /// What the issuer's pool mapped the token to, when the issuer belongs to one.
    pub federated: Option<federation::Mapped>,
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Principal {
    /// What `x-verifyiam-principal` carries: the email, else the subject; for a pool's
    /// identity its `principal://iam.googleapis.com/POOL/subject/SUBJECT` name.
    pub id: Box<str>,
    /// Identifies the principal in decision-cache keys: a SHA-256 of issuer, id and members
    /// together, so two issuers' principals that share an id never share a decision. Inline, so
    /// a cached principal carries no second copy of its members.
    pub key: PrincipalKey,
    /// The IAM members the caller matches (`user:…`, `domain:…`, `allAuthenticatedUsers`, …).
    pub members: Vec<Box<str>>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// Whether the token carries the required scope.
    pub has_scope: bool,
}

impl Principal {
    /// The principal a verified token names. Its id is the email when the issuer vouches for
    /// one, else the subject qualified by its issuer (`{iss}#{sub}`), so two issuers' subjects
    /// never look alike; a pool's identity is its `principal://` name, and it matches the
    /// pool's members only (its key covers every one of them: subject, groups, attributes).
    /// A claim that would reach a header and holds a control character makes the token invalid.
    fn from_verified(v: Verified) -> Result<Principal, AuthnError> {
        if let Some(m) = v.federated {
            // The mapping refused control characters in every value already.
            let id = pool_principal(&m.pool, &m.subject);
            let members = pool_members(&m.pool, &m.subject, &m.groups, &m.attributes);
            let key = principal_key(&v.issuer, &id, &members);
            return Ok(Principal {
                id: id.into(),
                key,
                members,
                expires_at: v.expires_at,
                has_scope: v.has_scope,
            });
        }
        if [&v.email, &v.subject]
            .into_iter()
            .flatten()
            .any(|c| c.chars().any(char::is_control))
        {
            return Err(AuthnError::InvalidToken(
                "the token's identity claims (sub, email) hold control characters".into(),
            ));
        }
        let members = principal_members(v.email.as_deref(), &[], None);
        let id = match (v.email.as_deref(), v.subject.as_deref()) {
            (Some(email), _) => email.to_ascii_lowercase(),
            (None, Some(sub)) => format!("{}#{sub}", v.issuer),
            (None, None) => String::new(),
        };
        let key = principal_key(&v.issuer, &id, &members);
        Ok(Principal {
            id: id.into(),
            key,
            members,
            expires_at: v.expires_at,
            has_scope: v.has_scope,
        })
    }
}

/// A principal's identity for decision caching.
pub type PrincipalKey = [u8; 32];

/// The [`PrincipalKey`] of an issuer's principal `id` with `members`.
pub fn principal_key(issuer: &str, id: &str, members: &[Box<str>]) -> PrincipalKey {
    let mut h = Sha256::new();
    for part in [issuer, id].into_iter().chain(members.iter().map(|m| &**m)) {
        // Length-prefixed, so no two different lists hash the same bytes.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// The SHA-256 of a token: the only form in which a token is kept or used as a key.
pub type TokenHash = [u8; 32];

/// Hashes a token for cache keys and logs.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A JWT has exactly two dots; anything else is an opaque token.
fn is_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
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
    opaque: Arc<Opaque>,
    required_scope: String,
    leeway: u64,
    /// Verified principals, until their token expires (capped).
    cache: moka::future::Cache<TokenHash, Arc<Principal>>,
    /// Tokens found invalid, for `negative_cache_ttl`: a flood of one bad token stays here.
    rejected: moka::future::Cache<TokenHash, AuthnError>,
    counters: CacheCounters,
    rejected_counters: CacheCounters,
}

/// The outcome of one opaque-token lookup, shared by every Check that waits for it.
type Lookup = Shared<BoxFuture<'static, Result<Arc<Principal>, AuthnError>>>;

/// Opaque tokens: their verifiers, and the lookups in flight. A lookup runs in a task of its
/// own, so a Check that gives up at its deadline does not cancel it: its answer is cached for
/// the next Check instead of being asked for again on every retry.
struct Opaque {
    tokeninfo: Option<tokeninfo::Tokeninfo>,
    introspection: Option<introspection::Introspection>,
    required_scope: String,
    leeway: u64,
    /// Lookups in flight at once (`token.max_concurrent_lookups`).
    permits: tokio::sync::Semaphore,
    /// In flight, by token hash: concurrent Checks of one token share one lookup.
    flights: Mutex<HashMap<TokenHash, Lookup>>,
}

impl Opaque {
    async fn verify(&self, token: &str) -> Result<Verified, AuthnError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthnError::Unavailable("opaque-token lookups are closed".into()))?;
        match (&self.tokeninfo, &self.introspection) {
            (Some(t), None) => t.verify(token, &self.required_scope, self.leeway).await,
            (Some(t), Some(_)) if token.starts_with(GOOGLE_OPAQUE_PREFIX) => {
                t.verify(token, &self.required_scope, self.leeway).await
            }
            (_, Some(i)) => i.verify(token, &self.required_scope, self.leeway).await,
            (None, None) => Err(AuthnError::InvalidToken("the token is not a JWT".into())),
        }
    }
}

fn count_eviction(
    cache: &'static str,
) -> impl Fn(moka::notification::RemovalCause) + Send + Sync + 'static {
    move |cause| {
        let cause = match cause {
            moka::notification::RemovalCause::Expired => "expired",
            moka::notification::RemovalCause::Size => "size",
            moka::notification::RemovalCause::Explicit => return,
            moka::notification::RemovalCause::Replaced => return,
        };
        metrics::counter!("verifyiam_cache_evictions_total", "cache" => cache, "cause" => cause)
            .increment(1);
    }
}

impl Authenticator {
    /// Builds the verifiers for `[token]`; `fixed` are in-process issuers (the dev issuer).
    pub fn new(
        token: &TokenConfig,
        http: reqwest::Client,
        fixed: Vec<(String, Arc<keys::KeySet>)>,
    ) -> Authenticator {
        let evicted = count_eviction("token");
        let rejected = count_eviction("token_rejected");
        Authenticator {
            jwt: jwt::JwtVerifier::new(token, keys::KeySets::new(http.clone(), token), fixed),
            opaque: Arc::new(Opaque {
                tokeninfo: token
                    .tokeninfo
                    .as_ref()
                    .map(|t| tokeninfo::Tokeninfo::new(http.clone(), t.url.clone())),
                introspection: token
                    .introspection
                    .as_ref()
                    .map(|i| introspection::Introspection::new(http, i.clone())),
                required_scope: token.required_scope.clone(),
                leeway: token.leeway.as_secs(),
                permits: tokio::sync::Semaphore::new(token.max_concurrent_lookups.max(1)),
                flights: Mutex::new(HashMap::new()),
            }),
            required_scope: token.required_scope.clone(),
            leeway: token.leeway.as_secs(),
            cache: moka::future::Cache::builder()
                .max_capacity(token.cache_capacity)
                .expire_after(UntilExpiry)
                .eviction_listener(move |_, _, cause| evicted(cause))
                .build(),
            rejected: moka::future::Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(token.negative_cache_ttl.max(Duration::from_millis(1)))
                .eviction_listener(move |_, _, cause| rejected(cause))
                .build(),
            counters: CacheCounters::new("token"),
            rejected_counters: CacheCounters::new("token_rejected"),
        }
    }

    /// The principal a token names, if it is valid and carries the required scope.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthnError> {
        let key = token_hash(token);
        let principal = match self.cache.get(&key).await {
            Some(p) => {
                self.counters.hit.increment(1);
                p
            }
            None => {
                if let Some(e) = self.rejected.get(&key).await {
                    self.rejected_counters.hit.increment(1);
                    return Err(e);
                }
                self.counters.miss.increment(1);
                if is_jwt(token) {
                    // Concurrent first sights of one token share one verification; a key-set
                    // fetch it needs runs detached already (see [`keys`]).
                    let verified = self
                        .cache
                        .try_get_with(key, async {
                            Principal::from_verified(
                                self.jwt.verify(token, &self.required_scope).await?,
                            )
                            .map(Arc::new)
                        })
                        .await
                        .map_err(|e| (*e).clone());
                    match verified {
                        Ok(p) => p,
                        Err(e) => {
                            self.remember(key, &e).await;
                            return Err(e);
                        }
                    }
                } else {
                    self.lookup(key, token).await?
                }
            }
        };
        if principal.expires_at.saturating_add(self.leeway) < unix_now() {
            self.cache.invalidate(&key).await;
            return Err(AuthnError::InvalidToken("the token has expired".into()));
        }
        if !principal.has_scope {
            return Err(AuthnError::InsufficientScope);
        }
        Ok(principal)
    }

    /// Only a verdict on the token is remembered; an outage or a rate limit is not.
    async fn remember(&self, key: TokenHash, e: &AuthnError) {
        if matches!(e, AuthnError::InvalidToken(_)) {
            self.rejected.insert(key, e.clone()).await;
        }
    }

    /// Joins the lookup of an opaque token in flight, or starts one in its own task.
    async fn lookup(&self, key: TokenHash, token: &str) -> Result<Arc<Principal>, AuthnError> {
        let flight = {
            let Ok(mut flights) = self.opaque.flights.lock() else {
                return Err(AuthnError::Unavailable(
                    "opaque-token lookups failed".into(),
                ));
            };
            match flights.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let (opaque, cache, rejected) = (
                        self.opaque.clone(),
                        self.cache.clone(),
                        self.rejected.clone(),
                    );
                    let token = token.to_owned();
                    let task = tokio::spawn(async move {
                        let result = match opaque.verify(&token).await {
                            Ok(v) => Principal::from_verified(v).map(Arc::new),
                            Err(e) => Err(e),
                        };
                        match &result {
                            Ok(p) => cache.insert(key, p.clone()).await,
                            Err(e @ AuthnError::InvalidToken(_)) => {
                                rejected.insert(key, e.clone()).await
                            }
                            Err(_) => {}
                        }
                        if let Ok(mut flights) = opaque.flights.lock() {
                            flights.remove(&key);
                        }
                        result
                    });
                    let flight: Lookup = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(AuthnError::Unavailable(format!("opaque-token lookup: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// Applies the caches' pending bookkeeping (so sizes are exact), e.g. before measuring.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
        self.rejected.run_pending_tasks().await;
    }

    /// Entries in the token caches (verified, rejected), for the size gauges.
    pub fn cache_sizes(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.rejected.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_verified(attributes: &[(&str, &str)], groups: &[&str]) -> Verified {
        Verified {
            email: None,
            subject: Some("u-1".into()),
            issuer: "https://partner.test".into(),
            expires_at: unix_now() + 600,
            has_scope: true,
            federated: Some(federation::Mapped {
                pool: "locations/global/workforcePools/partners".into(),
                subject: "u-1".into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                attributes: attributes
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            }),
        }
    }

    #[test]
    fn pool_principal_is_named_by_its_pool_and_keyed_by_every_member() {
        let p = Principal::from_verified(pool_verified(&[("team", "orders")], &[])).unwrap();
        assert_eq!(
            &*p.id,
            "principal://iam.googleapis.com/locations/global/workforcePools/partners/subject/u-1"
        );
        assert!(p.members.iter().any(|m| &**m
            == "principalSet://iam.googleapis.com/locations/global/workforcePools/partners/attribute.team/orders"));
        // Same subject, other attributes or groups: another decision-cache key.
        let keys = [
            p.key,
            Principal::from_verified(pool_verified(&[("team", "payments")], &[]))
                .unwrap()
                .key,
            Principal::from_verified(pool_verified(&[("team", "orders")], &["sre"]))
                .unwrap()
                .key,
            Principal::from_verified(pool_verified(&[], &[]))
                .unwrap()
                .key,
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
