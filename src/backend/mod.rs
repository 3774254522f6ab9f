//! The gateway's identity toward its backends: a Google ID token for each backend audience,
//! minted for the gateway's own service account, as API Gateway and ESPv2 send to Cloud Run,
//! Cloud Run functions and App Engine behind IAP.
//!
//! Tokens come from an [`IdTokenSource`] (the metadata server, a service-account key, or the
//! development issuer) and are kept per audience in [`BackendIdentity`]: one fetch per audience at
//! a time, refreshed in the background well before they expire, a bounded number of audiences.
//! A token is used only until its `exp` minus a margin, by this machine's clock: one that has
//! expired or is about to (a skewed clock, a caching proxy) is refused, never cached, and a
//! failed fetch holds the source off for a moment before the next Check asks again.
//! Tokens are never logged; the cache is keyed by the audience, never by a token.

pub mod dev;
pub mod key;
pub mod metadata;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use serde::Deserialize;
use tokio::time::Instant;

use crate::authn::dev::DevIssuer;
use crate::config::{BackendAuthConfig, BackendTokenSource};
use crate::telemetry::CacheCounters;

/// The most a token may live, whatever its claims say (Google's ID tokens live an hour).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest audience accepted.
const MAX_AUDIENCE_LEN: usize = 2048;
/// A token is not handed out in the last quarter of its life, nor in its last minute at most:
/// the refresh margin, so that it cannot expire before the backend reads it.
const MAX_MARGIN: Duration = Duration::from_secs(60);
/// The margin is never less than this (a token living a second or less is refused).
const MIN_MARGIN: Duration = Duration::from_secs(1);
/// After a failed fetch with no usable token, Checks are answered with that failure for this
/// long before the source is asked again; doubled for each failure in a row, up to
/// [`MAX_HOLD_OFF`].
const HOLD_OFF: Duration = Duration::from_secs(1);
/// The longest hold-off.
const MAX_HOLD_OFF: Duration = Duration::from_secs(30);

/// Why an audience cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudienceError {
    /// Empty or blank.
    #[error("must not be empty")]
    Empty,
    /// Too long, or holds spaces or control characters.
    #[error("must be at most 2048 characters without spaces or control characters")]
    Malformed,
    /// A Google API.
    #[error(
        "{0:?} is a Google API (*.googleapis.com): Google APIs take OAuth access tokens, not the \
         ID tokens the gateway mints for its backends, so they cannot be a backend (API Gateway \
         answers such calls 401)"
    )]
    GoogleApi(String),
}

/// Checks a backend audience: a Cloud Run URL, an IAP client id, a custom audience; never a
/// `*.googleapis.com` host, with or without a scheme.
pub fn check_audience(audience: &str) -> Result<(), AudienceError> {
    if audience.trim().is_empty() {
        return Err(AudienceError::Empty);
    }
    if audience.len() > MAX_AUDIENCE_LEN
        || audience
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AudienceError::Malformed);
    }
    let rest = audience
        .split_once("://")
        .map_or(audience, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_end_matches('.');
    let google = |suffix: &str| {
        host.eq_ignore_ascii_case(suffix)
            || (host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len() - 1)
                && host[host.len() - suffix.len() - 1..]
                    .eq_ignore_ascii_case(&format!(".{suffix}")))
    };
    if google("googleapis.com") {
        return Err(AudienceError::GoogleApi(audience.to_owned()));
    }
    Ok(())
}

/// Why an ID token could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The source did not answer in time.
    #[error("timed out")]
    Timeout,
    /// The source could not be reached or the answer not read.
    #[error("{0}")]
    Transport(String),
    /// The source answered with an error.
    #[error("HTTP {status}: {detail}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// What the source said (never a token).
        detail: String,
    },
    /// The answer is not an ID token.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The token has expired, or expires within the refresh margin, by this machine's clock.
    #[error("the token {0}")]
    Expired(String),
    /// The assertion or the development token could not be signed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// No source is configured (`[backend_auth]` is absent).
    #[error("no backend identity is configured ([backend_auth])")]
    NotConfigured,
}

impl FetchError {
    /// The metric label of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Transport(_) => "transport",
            FetchError::Status { .. } => "status",
            FetchError::Malformed(_) => "malformed",
            FetchError::Expired(_) => "expired",
            FetchError::Sign(_) => "sign",
            FetchError::NotConfigured => "not_configured",
        }
    }

    /// A failure of `upstream::send` (whose messages never carry the request).
    pub(crate) fn transport(message: String) -> FetchError {
        if message == "timed out" {
            FetchError::Timeout
        } else {
            FetchError::Transport(message)
        }
    }

    /// An error answer, keeping at most a short, printable excerpt of what it said.
    pub(crate) fn status(status: http::StatusCode, body: &[u8]) -> FetchError {
        let text = String::from_utf8_lossy(body);
        let detail = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => {
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
                let (error, description) = (field("error"), field("error_description"));
                match (error.is_empty(), description.is_empty()) {
                    (false, false) => format!("{error}: {description}"),
                    (false, true) => error,
                    _ => text.into_owned(),
                }
            }
            Err(_) => text.into_owned(),
        };
        let detail: String = detail
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        FetchError::Status {
            status: status.as_u16(),
            detail: if detail.trim().is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                detail.trim().to_owned()
            },
        }
    }
}

/// Why the backend identity could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The service-account key file.
    #[error("backend_auth.key_file: {0}")]
    KeyFile(#[from] key::KeyFileError),
    /// `source = "dev"` without the development issuer.
    #[error("backend_auth.source: \"dev\" needs the development issuer ([token.dev])")]
    NoDevIssuer,
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
}

/// Where ID tokens come from (the metadata server, a key, the development issuer, a test fake).
pub trait IdTokenSource: Send + Sync + 'static {
    /// The metric label of this source.
    fn label(&self) -> &'static str;
    /// Fetches a fresh ID token for `audience`: the compact JWT, nothing else.
    fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, FetchError>>;
}

/// The claims of an ID token worth showing (read, not verified: the token comes from the
/// gateway's own trusted source, and the backend verifies it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdTokenClaims {
    /// `iss`
    pub iss: Option<String>,
    /// `email`: the gateway's service account.
    pub email: Option<String>,
    /// `aud`: the backend.
    pub aud: Option<String>,
    /// `iat`, Unix seconds.
    pub iat: Option<u64>,
    /// `exp`, Unix seconds.
    pub exp: u64,
}

impl IdTokenClaims {
    /// `iss`, `email`, `aud` and `exp` (with its date), one `name: value` line each.
    pub fn lines(&self) -> String {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_owned());
        let date = std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(self.exp))
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        format!(
            "iss: {}\nemail: {}\naud: {}\nexp: {} ({date})\n",
            or_none(&self.iss),
            or_none(&self.email),
            or_none(&self.aud),
            self.exp
        )
    }

    /// The same on one line, for `verifyiam check`.
    pub fn summary(&self) -> String {
        self.lines().trim_end().replace('\n', ", ")
    }
}

/// An ID token with its claims. Its `Debug` never shows the token.
pub struct IdToken {
    /// `Bearer <token>`, built once.
    authorization: Box<str>,
    /// What it says.
    pub claims: IdTokenClaims,
}

impl std::fmt::Debug for IdToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdToken")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
    exp: serde_json::Value,
}

fn seconds(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

impl IdToken {
    /// Reads a compact JWT as an ID token (its claims, not its signature).
    pub fn parse(token: &str) -> Result<IdToken, FetchError> {
        let token = token.trim();
        let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3
            || parts.iter().any(|p| p.is_empty())
            || !token.chars().all(|c| b64(c) || c == '.')
        {
            return Err(FetchError::Malformed("not a JWT".into()));
        }
        let payload = URL_SAFE_NO_PAD
            .decode(parts[1])
            .map_err(|_| FetchError::Malformed("the payload is not base64url".into()))?;
        let raw: RawClaims = serde_json::from_slice(&payload)
            .map_err(|e| FetchError::Malformed(format!("the claims do not parse: {e}")))?;
        let exp = seconds(&raw.exp)
            .ok_or_else(|| FetchError::Malformed("`exp` is not a number".into()))?;
        let aud = match raw.aud {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|v| v.as_str()).map(str::to_owned)
            }
            _ => None,
        };
        Ok(IdToken {
            authorization: format!("Bearer {token}").into(),
            claims: IdTokenClaims {
                iss: raw.iss,
                email: raw.email,
                aud,
                iat: raw.iat.as_ref().and_then(seconds),
                exp,
            },
        })
    }

    /// The `Authorization` header value for the backend: `Bearer <token>`.
    pub fn authorization(&self) -> &str {
        &self.authorization
    }

    /// The compact JWT itself.
    pub fn token(&self) -> &str {
        &self.authorization["Bearer ".len()..]
    }
}

/// How long a fetched token may be used, by this machine's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lifespan {
    /// Until `exp`, at most [`MAX_LIFETIME`].
    left: Duration,
    /// Kept in hand before `exp`: the token is not handed out past `exp - margin`.
    margin: Duration,
}

impl Lifespan {
    /// The lifespan of a token with `claims` at `now`; refused when it has expired or
    /// expires within the margin. The margin scales with the life the issuer gave the token
    /// (`exp - iat`, else what is left), so a token issued an hour ago for an hour with ten
    /// seconds left is refused, whatever `exp - iat` says.
    fn of(claims: &IdTokenClaims, now: SystemTime) -> Result<Lifespan, FetchError> {
        // An `exp` too far to represent is as good as the cap.
        let exp = UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp));
        let left = exp
            .map_or(MAX_LIFETIME, |exp| {
                exp.duration_since(now).unwrap_or(Duration::ZERO)
            })
            .min(MAX_LIFETIME);
        let issued = match claims.iat {
            Some(iat) if iat < claims.exp => Duration::from_secs(claims.exp - iat),
            _ => left,
        }
        .min(MAX_LIFETIME);
        let margin = (issued / 4).clamp(MIN_MARGIN, MAX_MARGIN);
        if left > margin {
            return Ok(Lifespan { left, margin });
        }
        let since = exp.and_then(|exp| now.duration_since(exp).ok());
        Err(FetchError::Expired(match since {
            Some(ago) if !ago.is_zero() || left.is_zero() => format!(
                "expired {}s ago by this machine's clock (exp {})",
                ago.as_secs(),
                claims.exp
            ),
            _ => format!(
                "expires in {}s by this machine's clock, within the {}s refresh margin (exp {})",
                left.as_secs(),
                margin.as_secs(),
                claims.exp
            ),
        }))
    }
}

type Flight = Shared<BoxFuture<'static, Result<Arc<IdToken>, FetchError>>>;

struct Fresh {
    token: Arc<IdToken>,
    /// From here on it is refreshed in the background (still served).
    refresh_at: Instant,
    /// From here on it is not handed out: it might expire before the backend reads it.
    usable_until: Instant,
    /// The same bound on the wall clock (`exp - margin`): a clock stepped forward since the
    /// fetch still never sees the token forwarded past its `exp`.
    usable_before: SystemTime,
}

impl Fresh {
    fn usable(&self, now: Instant) -> bool {
        now < self.usable_until && SystemTime::now() < self.usable_before
    }
}

/// The last failed fetch, while no usable token is held.
struct Failure {
    /// Until then Checks get `error` without asking the source again.
    retry_at: Instant,
    error: FetchError,
}

#[derive(Default)]
struct SlotState {
    fresh: Option<Fresh>,
    flight: Option<Flight>,
    /// Asked for since the last scheduled refresh: only audiences in use are kept fresh.
    used: bool,
    /// Bumped on every new token and every retry scheduled, so an outdated scheduled refresh
    /// does nothing.
    generation: u64,
    /// The last failure, holding the source off until its `retry_at`.
    failure: Option<Failure>,
    /// Failed fetches in a row (the hold-off doubles with each).
    failures: u32,
}

impl SlotState {
    /// The failure to answer with instead of asking the source, while it holds the source off.
    fn held_off(&self, now: Instant) -> Option<&FetchError> {
        self.failure
            .as_ref()
            .filter(|f| now < f.retry_at)
            .map(|f| &f.error)
    }
}

/// One audience's token and its fetch in flight.
#[derive(Default)]
struct Slot(Mutex<SlotState>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic elsewhere cannot leave this state inconsistent: each field stands alone.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    source: Arc<dyn IdTokenSource>,
    slots: moka::sync::Cache<Arc<str>, Arc<Slot>>,
    fetch_timeout: Duration,
    refresh_ahead: Duration,
    counters: CacheCounters,
    fetches: metrics::Counter,
}

/// ID tokens per backend audience: cached, fetched once at a time, refreshed ahead of expiry.
#[derive(Clone)]
pub struct BackendIdentity {
    inner: Arc<Inner>,
}

/// How the cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// One fetch may take this long.
    pub fetch_timeout: Duration,
    /// Refresh this long before expiry (at most half a token's lifetime).
    pub refresh_ahead: Duration,
    /// Audiences kept at once.
    pub max_audiences: u64,
}

impl From<&BackendAuthConfig> for CachePolicy {
    fn from(c: &BackendAuthConfig) -> CachePolicy {
        CachePolicy {
            fetch_timeout: c.fetch_timeout,
            refresh_ahead: c.refresh_ahead,
            max_audiences: c.max_audiences,
        }
    }
}

impl BackendIdentity {
    /// The identity `[backend_auth]` describes. `dev` is the development issuer (for
    /// `source = "dev"`), `project` names the development gateway account.
    pub fn from_config(
        config: &BackendAuthConfig,
        dev: Option<Arc<DevIssuer>>,
        project: &str,
    ) -> Result<BackendIdentity, BackendError> {
        let http = || {
            reqwest::Client::builder()
                .timeout(config.fetch_timeout)
                .connect_timeout(config.fetch_timeout)
                .user_agent(concat!("verifyiam/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| BackendError::Http(e.to_string()))
        };
        let source: Arc<dyn IdTokenSource> = match config.source {
            BackendTokenSource::Metadata => Arc::new(metadata::MetadataSource::new(
                http()?,
                &config.metadata_base(),
            )),
            BackendTokenSource::ServiceAccountKey => {
                let path =
                    config
                        .key_file
                        .as_deref()
                        .ok_or_else(|| key::KeyFileError::NotAKey {
                            path: Default::default(),
                            reason: "no key_file is configured".into(),
                        })?;
                Arc::new(key::KeySource::new(
                    http()?,
                    key::ServiceAccountKey::load(path)?,
                    &config.token_url,
                ))
            }
            BackendTokenSource::Dev => Arc::new(dev::DevSource::new(
                dev.ok_or(BackendError::NoDevIssuer)?,
                &dev::gateway_email(project),
            )),
        };
        Ok(BackendIdentity::new(source, CachePolicy::from(config)))
    }

    /// Tokens from `source`, cached by `policy`.
    pub fn new(source: Arc<dyn IdTokenSource>, policy: CachePolicy) -> BackendIdentity {
        let _ = crate::telemetry::metrics_handle();
        let fetches =
            metrics::counter!("verifyiam_backend_token_fetches_total", "source" => source.label());
        BackendIdentity {
            inner: Arc::new(Inner {
                source,
                slots: moka::sync::Cache::builder()
                    .max_capacity(policy.max_audiences)
                    // An audience nobody asked for in a day is forgotten.
                    .time_to_idle(Duration::from_secs(24 * 3600))
                    .build(),
                fetch_timeout: policy.fetch_timeout,
                refresh_ahead: policy.refresh_ahead,
                counters: CacheCounters::new("backend_token"),
                fetches,
            }),
        }
    }

    /// Audiences currently kept.
    pub fn cache_size(&self) -> u64 {
        self.inner.slots.run_pending_tasks();
        self.inner.slots.entry_count()
    }

    /// The ID token for `audience` (already checked with [`check_audience`]). Served from the
    /// cache while usable; otherwise joins the one fetch in flight, or starts it in a task of its
    /// own, so a caller giving up (its deadline) cancels nothing for the others.
    pub async fn id_token(&self, audience: &str) -> Result<Arc<IdToken>, FetchError> {
        let inner = &self.inner;
        let slot = match inner.slots.get(audience) {
            Some(s) => s,
            None => inner
                .slots
                .get_with(Arc::from(audience), || Arc::new(Slot::default())),
        };
        let flight = {
            let mut state = slot.lock();
            state.used = true;
            let now = Instant::now();
            if let Some(fresh) = &state.fresh {
                if fresh.usable(now) {
                    inner.counters.hit.increment(1);
                    let token = fresh.token.clone();
                    if now >= fresh.refresh_at
                        && state.flight.is_none()
                        && state.held_off(now).is_none()
                    {
                        // Due for refresh (the scheduled one was skipped or failed): refresh
                        // in the background, answer now.
                        drop(inner.start(&slot, &mut state, audience));
                    }
                    return Ok(token);
                }
            }
            inner.counters.miss.increment(1);
            match &state.flight {
                Some(f) => f.clone(),
                None => {
                    // The source failed a moment ago: answer as it did, do not ask again yet.
                    if let Some(error) = state.held_off(now) {
                        return Err(error.clone());
                    }
                    inner.start(&slot, &mut state, audience)
                }
            }
        };
        flight.await
    }
}

impl Inner {
    /// Starts the fetch for `audience` in its own task; the caller holds the slot's lock.
    fn start(self: &Arc<Self>, slot: &Arc<Slot>, state: &mut SlotState, audience: &str) -> Flight {
        let (inner, slot_for_task, audience) =
            (self.clone(), slot.clone(), Arc::<str>::from(audience));
        let task =
            tokio::spawn(async move {
                inner.fetches.increment(1);
                let result =
                    match tokio::time::timeout(inner.fetch_timeout, inner.source.fetch(&audience))
                        .await
                    {
                        Ok(Ok(raw)) => IdToken::parse(&raw).and_then(|t| match &t.claims.aud {
                            Some(aud) if **aud != *audience => Err(FetchError::Malformed(
                                "the token was issued for another audience".into(),
                            )),
                            _ => Ok(t),
                        }),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(FetchError::Timeout),
                    }
                    .and_then(|t| {
                        let lifespan = Lifespan::of(&t.claims, SystemTime::now())?;
                        Ok((Arc::new(t), lifespan))
                    });
                inner.settle(&slot_for_task, &audience, result)
            });
        let flight: Flight = async move {
            task.await
                .unwrap_or_else(|e| Err(FetchError::Transport(format!("fetch task failed: {e}"))))
        }
        .boxed()
        .shared();
        state.flight = Some(flight.clone());
        flight
    }

    /// Records a fetch's outcome and schedules what comes next; a refused token is never kept.
    fn settle(
        self: &Arc<Self>,
        slot: &Slot,
        audience: &Arc<str>,
        result: Result<(Arc<IdToken>, Lifespan), FetchError>,
    ) -> Result<Arc<IdToken>, FetchError> {
        let now = Instant::now();
        let mut state = slot.lock();
        state.flight = None;
        match result {
            Ok((token, Lifespan { left, margin })) => {
                let usable = left - margin;
                let ahead = self.refresh_ahead.max(margin * 2).min(left / 2);
                let usable_before = UNIX_EPOCH
                    .checked_add(Duration::from_secs(token.claims.exp))
                    .and_then(|exp| exp.checked_sub(margin))
                    .unwrap_or_else(|| SystemTime::now() + usable);
                let fresh = Fresh {
                    token: token.clone(),
                    refresh_at: now + left.saturating_sub(ahead).min(usable),
                    usable_until: now + usable,
                    usable_before,
                };
                state.generation += 1;
                state.failure = None;
                state.failures = 0;
                self.schedule(audience.clone(), fresh.refresh_at, state.generation);
                state.fresh = Some(fresh);
                tracing::debug!(
                    audience = &**audience,
                    exp = token.claims.exp,
                    "backend ID token fetched"
                );
                Ok(token)
            }
            Err(e) => {
                metrics::counter!("verifyiam_backend_token_failures_total", "kind" => e.kind())
                    .increment(1);
                tracing::warn!(audience = &**audience, error = %e, "backend ID token fetch failed");
                state.failures = state.failures.saturating_add(1);
                let hold = HOLD_OFF
                    .saturating_mul(1 << (state.failures - 1).min(8))
                    .min(MAX_HOLD_OFF);
                state.failure = Some(Failure {
                    retry_at: now + hold,
                    error: e.clone(),
                });
                if let Some(fresh) = &state.fresh {
                    if fresh.usable(now) {
                        // The current token still serves: try again soon, while it lasts.
                        let left = fresh.usable_until - now;
                        let retry =
                            (left / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
                        state.used = true;
                        // One retry pending at a time: any earlier one (a refresh a Check
                        // started meanwhile) is outdated by this one.
                        state.generation += 1;
                        self.schedule(audience.clone(), now + retry, state.generation);
                    }
                }
                Err(e)
            }
        }
    }

    /// Refreshes `audience` at `at`, unless a newer token came meanwhile.
    fn schedule(self: &Arc<Self>, audience: Arc<str>, at: Instant, generation: u64) {
        // Weak: a pending refresh does not keep a stopped service alive.
        let weak: Weak<Inner> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(inner) = weak.upgrade() {
                inner.refresh_due(&audience, generation);
            }
        });
    }

    fn refresh_due(self: &Arc<Self>, audience: &Arc<str>, generation: u64) {
        let Some(slot) = self.slots.get(&**audience) else {
            return; // evicted: forgotten
        };
        let mut state = slot.lock();
        if state.generation != generation || state.flight.is_some() {
            return;
        }
        // An audience nobody asked for since the last refresh is left to expire.
        if std::mem::take(&mut state.used) {
            drop(self.start(&slot, &mut state, audience));
        }
    }
}

/// Fetches one token from `config`'s source, as `serve` would, without caching
/// (`verifyiam backend-token`).
pub async fn fetch_once(
    config: &BackendAuthConfig,
    dev: Option<Arc<DevIssuer>>,
    project: &str,
    audience: &str,
) -> Result<IdToken, String> {
    check_audience(audience).map_err(|e| format!("audience: {e}"))?;
    let identity = BackendIdentity::from_config(config, dev, project).map_err(|e| e.to_string())?;
    let token = identity
        .id_token(audience)
        .await
        .map_err(|e| format!("no ID token for {audience:?}: {e}"))?;
    Ok(IdToken {
        authorization: token.authorization.clone(),
        claims: token.claims.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn googleapis_audiences_are_refused_in_every_spelling() {
        for a in [
            "https://bigquery.googleapis.com",
            "https://BigQuery.GoogleAPIs.com/v2/projects",
            "bigquery.googleapis.com",
            "https://googleapis.com",
            "https://storage.googleapis.com.:443/x",
            "https://user@run.googleapis.com",
        ] {
            assert!(
                matches!(check_audience(a), Err(AudienceError::GoogleApi(_))),
                "{a}"
            );
        }
    }

    #[test]
    fn backends_that_take_id_tokens_are_accepted() {
        for a in [
            "https://orders-7x2kq-uc.a.run.app",
            "https://us-central1-demo.cloudfunctions.net/orders",
            "123-abc.apps.googleusercontent.com",
            "/projects/123/apps/demo",
            "https://notgoogleapis.com",
            "https://googleapis.com.example.com",
        ] {
            assert_eq!(check_audience(a), Ok(()), "{a}");
        }
        assert_eq!(check_audience(" "), Err(AudienceError::Empty));
        assert_eq!(check_audience("a b"), Err(AudienceError::Malformed));
    }

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn id_token_claims_are_read_and_the_token_never_debug_printed() {
        let raw = jwt(serde_json::json!({
            "iss": "https://accounts.google.com", "email": "gw@p.iam.gserviceaccount.com",
            "aud": "https://b", "iat": 100, "exp": 3700
        }));
        let t = IdToken::parse(&format!("{raw}\n")).unwrap();
        assert_eq!(t.token(), raw);
        assert_eq!(t.authorization(), format!("Bearer {raw}"));
        assert_eq!(t.claims.aud.as_deref(), Some("https://b"));
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(
            Lifespan::of(&t.claims, at(100)),
            Ok(Lifespan {
                left: Duration::from_secs(3600),
                margin: MAX_MARGIN
            })
        );
        assert!(!format!("{t:?}").contains(&raw));
        assert!(IdToken::parse("not a token").is_err());
        assert!(IdToken::parse(&jwt(serde_json::json!({"aud": "x"}))).is_err());
    }

    #[test]
    fn a_token_is_used_until_its_exp_by_the_local_clock_minus_the_margin() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let claims = |iat: Option<u64>, exp: u64| IdTokenClaims {
            iat,
            exp,
            ..Default::default()
        };
        let lifespan = |left: u64, margin: u64| {
            Ok(Lifespan {
                left: Duration::from_secs(left),
                margin: Duration::from_secs(margin),
            })
        };
        let expired = |r: Result<Lifespan, FetchError>| matches!(r, Err(FetchError::Expired(_)));
        // exp - iat says an hour; the local clock says it is gone, or nearly.
        assert!(expired(Lifespan::of(&claims(Some(1000), 4600), at(8200))));
        assert!(expired(Lifespan::of(&claims(Some(1000), 4600), at(4600))));
        assert!(expired(Lifespan::of(&claims(Some(1000), 4600), at(4540))));
        assert_eq!(
            Lifespan::of(&claims(Some(1000), 4600), at(4539)),
            lifespan(61, 60)
        );
        // Issued a month ago, an hour left: an hour, not the cap.
        assert_eq!(
            Lifespan::of(&claims(Some(1000), 3_000_000), at(2_996_400)),
            lifespan(3600, 60)
        );
        // Short lives keep a quarter, at least a second; no iat: what is left is the life.
        assert_eq!(Lifespan::of(&claims(Some(0), 8), at(0)), lifespan(8, 2));
        assert_eq!(Lifespan::of(&claims(None, 8), at(0)), lifespan(8, 2));
        assert!(expired(Lifespan::of(&claims(None, 1), at(0))));
        // An absurd exp is held to the cap.
        assert_eq!(
            Lifespan::of(&claims(None, u64::MAX), at(0)),
            lifespan(24 * 3600, 60)
        );
        let message = Lifespan::of(&claims(Some(1000), 4600), at(4590))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("within the 60s refresh margin"),
            "{message}"
        );
    }

    /// Counts fetches; answers with a token for the audience living `lifetime` seconds.
    struct Counting {
        fetches: AtomicUsize,
        lifetime: u64,
    }

    impl IdTokenSource for Counting {
        fn label(&self) -> &'static str {
            "test"
        }
        fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, FetchError>> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst);
            let now = crate::authn::unix_now();
            let token = jwt(serde_json::json!({
                "aud": audience, "iat": now, "exp": now + self.lifetime, "n": n
            }));
            async move {
                tokio::task::yield_now().await;
                Ok(token)
            }
            .boxed()
        }
    }

    fn identity(lifetime: u64) -> (Arc<Counting>, BackendIdentity) {
        let source = Arc::new(Counting {
            fetches: AtomicUsize::new(0),
            lifetime,
        });
        let policy = CachePolicy {
            fetch_timeout: Duration::from_secs(5),
            refresh_ahead: Duration::from_secs(600),
            max_audiences: 10,
        };
        (source.clone(), BackendIdentity::new(source, policy))
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_fetch() {
        let (source, identity) = identity(3600);
        let all = futures_util::future::join_all((0..20).map(|_| identity.id_token("https://a")));
        let tokens = all.await;
        assert!(tokens.iter().all(|t| t.is_ok()));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        identity.id_token("https://a").await.unwrap();
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_token_is_refreshed_before_expiry_and_an_idle_one_is_not() {
        let (source, identity) = identity(3600);
        let first = identity.id_token("https://a").await.unwrap();
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        // Refresh point: 10 minutes before expiry. Nothing asks; the refresh happens anyway.
        tokio::time::sleep(Duration::from_secs(50 * 60 + 1)).await;
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
        let second = identity.id_token("https://a").await.unwrap();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the refreshed token is served"
        );
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
        // Used once since: refreshed again at the next point; then idle, so never again.
        tokio::time::sleep(Duration::from_secs(50 * 60 + 1)).await;
        assert_eq!(source.fetches.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        assert_eq!(source.fetches.load(Ordering::SeqCst), 3);
        // Expired by now: the next request fetches.
        identity.id_token("https://a").await.unwrap();
        assert_eq!(source.fetches.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_handing_out_an_expired_token_keeps_the_current_one() {
        /// Good hour-long tokens until `stale` is set, then one that expired an hour ago.
        struct Skewed {
            stale: std::sync::atomic::AtomicBool,
            fetches: AtomicUsize,
        }
        impl IdTokenSource for Skewed {
            fn label(&self) -> &'static str {
                "test"
            }
            fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, FetchError>> {
                let n = self.fetches.fetch_add(1, Ordering::SeqCst);
                let now = crate::authn::unix_now();
                let exp = if self.stale.load(Ordering::SeqCst) {
                    now - 3600
                } else {
                    now + 3600
                };
                let token = jwt(
                    serde_json::json!({"aud": audience, "iat": exp - 3600, "exp": exp, "n": n}),
                );
                async move { Ok(token) }.boxed()
            }
        }
        let source = Arc::new(Skewed {
            stale: false.into(),
            fetches: AtomicUsize::new(0),
        });
        let policy = CachePolicy {
            fetch_timeout: Duration::from_secs(5),
            refresh_ahead: Duration::from_secs(600),
            max_audiences: 10,
        };
        let identity = BackendIdentity::new(source.clone(), policy);
        let first = identity.id_token("https://a").await.unwrap();
        source.stale.store(true, Ordering::SeqCst);
        // The refresh 10 minutes before expiry gets the stale token: refused, the current one
        // still served; the retries that follow are spaced, not one per request.
        tokio::time::sleep(Duration::from_secs(50 * 60 + 1)).await;
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
        for _ in 0..100 {
            let t = identity.id_token("https://a").await.unwrap();
            assert!(Arc::ptr_eq(&t, &first));
        }
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
        // Past its own margin the current token is not served either; the refused one never is.
        tokio::time::sleep(Duration::from_secs(10 * 60)).await;
        let fetched = source.fetches.load(Ordering::SeqCst);
        assert!(fetched <= 2 + 40, "{fetched} fetches in ten minutes");
        assert!(matches!(
            identity.id_token("https://a").await,
            Err(FetchError::Expired(_))
        ));
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() {
        struct Wrong;
        impl IdTokenSource for Wrong {
            fn label(&self) -> &'static str {
                "test"
            }
            fn fetch<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<String, FetchError>> {
                let now = crate::authn::unix_now();
                let token =
                    jwt(serde_json::json!({"aud": "https://other", "iat": now, "exp": now + 60}));
                async move { Ok(token) }.boxed()
            }
        }
        let policy = CachePolicy {
            fetch_timeout: Duration::from_secs(5),
            refresh_ahead: Duration::from_secs(600),
            max_audiences: 10,
        };
        let identity = BackendIdentity::new(Arc::new(Wrong), policy);
        assert!(matches!(
            identity.id_token("https://a").await,
            Err(FetchError::Malformed(_))
        ));
    }

    #[test]
    fn metadata_url_then_gce_metadata_host_then_the_default() {
        use crate::config::metadata_base;
        assert_eq!(
            metadata_base(Some("http://10.0.0.1:8080/"), Some("169.254.169.254")),
            "http://10.0.0.1:8080"
        );
        assert_eq!(
            metadata_base(None, Some("169.254.169.254")),
            "http://169.254.169.254"
        );
        assert_eq!(metadata_base(None, Some("http://m:1")), "http://m:1");
        assert_eq!(
            metadata_base(None, Some(" ")),
            "http://metadata.google.internal"
        );
        assert_eq!(metadata_base(None, None), "http://metadata.google.internal");
    }

    #[test]
    fn backend_auth_configuration_errors_name_the_field() {
        use crate::config::Config;
        let err = |table: &str| {
            Config::parse(&format!("[iam]\nproject = \"p\"\n[backend_auth]\n{table}"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("source = \"dev\"\n").starts_with("backend_auth.source"));
        assert!(
            err("source = \"metadata\"\nkey_file = \"k.json\"\n")
                .starts_with("backend_auth.key_file")
        );
        assert!(
            err("source = \"metadata\"\nmetadata_url = \"nope\"\n")
                .starts_with("backend_auth.metadata_url")
        );
        assert!(
            err("source = \"metadata\"\nmax_audiences = 0\n")
                .starts_with("backend_auth.max_audiences")
        );
        assert!(err("source = \"metadata\"\nmetdata_url = \"http://m\"\n").contains("metdata_url"));
        assert!(err("source = \"gcloud\"\n").contains("source"));
        let c = Config::parse("[iam]\nproject = \"p\"\n[backend_auth]\nsource = \"metadata\"\n")
            .unwrap();
        let b = c.backend_auth.unwrap();
        assert_eq!(b.token_url, crate::config::GOOGLE_TOKEN_URL);
        assert_eq!(b.fetch_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_service_account_key_is_read_and_other_json_refused() {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        use aws_lc_rs::encoding::AsDer as _;
        let der = pair.as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let key = serde_json::json!({
            "type": "service_account", "client_email": "gw@p.iam.gserviceaccount.com",
            "private_key": pem, "private_key_id": "k1"
        });
        let k = key::ServiceAccountKey::parse(&key.to_string()).unwrap();
        assert_eq!(k.client_email, "gw@p.iam.gserviceaccount.com");
        assert!(!format!("{k:?}").contains("PRIVATE"));
        let a = k.assertion("https://t", "https://b", 1000).unwrap();
        let claims = IdToken::parse(&a).unwrap().claims;
        assert_eq!((claims.iat, claims.exp), (Some(1000), 4600));
        let mut other = key.clone();
        other["type"] = "authorized_user".into();
        assert!(key::ServiceAccountKey::parse(&other.to_string()).is_err());
        let mut broken = key;
        broken["private_key"] =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        let e = key::ServiceAccountKey::parse(&broken.to_string()).unwrap_err();
        assert!(!e.contains("AAAA"), "{e}");
    }

    #[tokio::test]
    async fn audiences_are_bounded() {
        let (_, identity) = identity(3600);
        for i in 0..50 {
            identity.id_token(&format!("https://b{i}")).await.unwrap();
        }
        assert!(identity.cache_size() <= 10, "{}", identity.cache_size());
    }
}
