//! Issuer key sets: fetched over HTTP (JWK set or Google's x509 map), kept for the response's
//! `Cache-Control: max-age` within bounds, looked up by `kid`. One fetch per key set at a time;
//! an unknown `kid` refetches at most once per `min_refresh_interval`; a failed refresh keeps
//! serving the previous set for a bounded time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::ParsedPublicKey;
use base64::Engine as _;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::StatusCode;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

use crate::config::TokenConfig;

/// Largest key-set response read; a real one is a few KiB.
const MAX_BODY: usize = 1024 * 1024;
/// Bounds on how long a fetched set is trusted without a refetch.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How many remote key sets are remembered (one per service account with self-signed JWTs).
const MAX_SETS: u64 = 10_000;

/// One verification key.
pub struct Key {
    /// The key, as read from the key set.
    pub decoding: DecodingKey,
    /// The JWK's `alg`, when it names one: the token's `alg` must then be the same.
    pub alg: Option<Algorithm>,
    /// The public key parsed once per algorithm it is used with (an RSA key serves RS* and
    /// PS*): a verification then neither rebuilds the key nor its Montgomery context, which
    /// cost more than the verification itself.
    parsed: [OnceLock<Option<ParsedPublicKey>>; PARSED_SLOTS],
}

/// Why a signature could not be checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key cannot verify this algorithm (another family, or a malformed key).
    #[error("the token's algorithm does not match its key")]
    KeyMismatch,
    /// The signature part is not base64url.
    #[error("the token's signature is not base64url")]
    NotBase64,
}

/// The asymmetric algorithms, each with its slot in [`Key::parsed`].
const PARSED_SLOTS: usize = 9;

/// aws-lc's algorithm for a JWT `alg` (the same choices jsonwebtoken makes), its slot, and the
/// key family it needs.
fn verification(alg: Algorithm) -> Option<(usize, Verification, AlgorithmFamily)> {
    use aws_lc_rs::signature as s;
    let rsa = AlgorithmFamily::Rsa;
    Some(match alg {
        Algorithm::RS256 => (0, Verification::Rsa(&s::RSA_PKCS1_2048_8192_SHA256), rsa),
        Algorithm::RS384 => (1, Verification::Rsa(&s::RSA_PKCS1_2048_8192_SHA384), rsa),
        Algorithm::RS512 => (2, Verification::Rsa(&s::RSA_PKCS1_2048_8192_SHA512), rsa),
        Algorithm::PS256 => (3, Verification::Rsa(&s::RSA_PSS_2048_8192_SHA256), rsa),
        Algorithm::PS384 => (4, Verification::Rsa(&s::RSA_PSS_2048_8192_SHA384), rsa),
        Algorithm::PS512 => (5, Verification::Rsa(&s::RSA_PSS_2048_8192_SHA512), rsa),
        Algorithm::ES256 => (
            6,
            Verification::Other(&s::ECDSA_P256_SHA256_FIXED),
            AlgorithmFamily::Ec,
        ),
        Algorithm::ES384 => (
            7,
            Verification::Other(&s::ECDSA_P384_SHA384_FIXED),
            AlgorithmFamily::Ec,
        ),
        Algorithm::EdDSA => (8, Verification::Other(&s::ED25519), AlgorithmFamily::Ed),
        _ => return None,
    })
}

enum Verification {
    Rsa(&'static aws_lc_rs::signature::RsaParameters),
    Other(&'static dyn aws_lc_rs::signature::VerificationAlgorithm),
}

impl Key {
    /// A key; `alg` is the algorithm its JWK names, if any.
    pub fn new(decoding: DecodingKey, alg: Option<Algorithm>) -> Key {
        Key {
            decoding,
            alg,
            parsed: Default::default(),
        }
    }

    /// Checks a JWT's `signature` (its third part, base64url) over `message` (its first two
    /// parts) with `alg`. `Ok(false)` is a signature that does not verify.
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &str,
    ) -> Result<bool, SignatureError> {
        let (slot, verification, family) = verification(alg).ok_or(SignatureError::KeyMismatch)?;
        if self.decoding.family() != family {
            return Err(SignatureError::KeyMismatch);
        }
        let parsed = self.parsed[slot]
            .get_or_init(|| parse(&self.decoding, verification))
            .as_ref()
            .ok_or(SignatureError::KeyMismatch)?;
        // A 2048-bit RSA signature is 256 bytes; P-384's fixed form 96.
        let mut buffer = [0u8; 1024];
        let decoded = match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(signature.as_bytes(), &mut buffer)
        {
            Ok(n) => n,
            // Longer than any accepted key's signature: it cannot verify.
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => return Ok(false),
            Err(base64::DecodeSliceError::DecodeError(_)) => {
                return Err(SignatureError::NotBase64);
            }
        };
        Ok(parsed.verify_sig(message, &buffer[..decoded]).is_ok())
    }
}

/// Parses a key for one algorithm; `None` when it is not a usable key for it.
fn parse(decoding: &DecodingKey, verification: Verification) -> Option<ParsedPublicKey> {
    match (decoding.kind(), verification) {
        (DecodingKeyKind::RsaModulusExponent { n, e }, Verification::Rsa(params)) => {
            aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .ok()
        }
        (DecodingKeyKind::SecretOrDer(der), Verification::Rsa(params)) => {
            ParsedPublicKey::new(params, der).ok()
        }
        (DecodingKeyKind::SecretOrDer(bytes), Verification::Other(algorithm)) => {
            ParsedPublicKey::new(algorithm, bytes).ok()
        }
        (DecodingKeyKind::RsaModulusExponent { .. }, Verification::Other(_)) => None,
    }
}

/// A key set as fetched (or configured).
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys published without a `kid`.
    anonymous: Vec<Arc<Key>>,
    fresh_until: Instant,
    refresh_ahead: Duration,
}

impl KeySet {
    /// A set that never expires (the development issuer's own key).
    pub fn fixed(keys: Vec<(String, Key)>) -> KeySet {
        let now = Instant::now();
        KeySet {
            by_kid: keys.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            anonymous: Vec::new(),
            fresh_until: now + Duration::from_secs(100 * 365 * 24 * 3600),
            refresh_ahead: Duration::ZERO,
        }
    }

    /// The key for a `kid`; without a `kid`, the only key there is.
    pub fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => match (self.by_kid.len(), self.anonymous.len()) {
                (1, 0) => self.by_kid.values().next().cloned(),
                (0, 1) => self.anonymous.first().cloned(),
                _ => None,
            },
        }
    }

    /// Number of keys in the set.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why no key could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// The set was fetched and has no such key.
    #[error("the token's signing key is not in the issuer's key set")]
    UnknownKey,
    /// A service account's key endpoint answered 4xx (not 429): the account has no keys.
    #[error("the service account publishes no keys")]
    NoKeys,
    /// A never-seen service account, over the rate at which new accounts are looked up.
    #[error("too many never-seen service accounts are being looked up")]
    Limited,
    /// The set could not be fetched and none is cached.
    #[error("the issuer's key set is unavailable: {0}")]
    Unavailable(String),
}

/// Why one fetch brought no key set.
#[derive(Debug, Clone)]
enum FetchError {
    /// The endpoint answered 4xx other than 429: there is no such key set.
    Absent(StatusCode),
    /// Anything else: the endpoint could not answer.
    Failed(String),
}

impl FetchError {
    fn describe(self) -> String {
        match self {
            FetchError::Absent(status) => format!("HTTP {status}"),
            FetchError::Failed(m) => m,
        }
    }
}

/// The outcome of one fetch, shared by every Check that waits for it.
type Flight = Shared<BoxFuture<'static, Result<Arc<KeySet>, FetchError>>>;

struct Slot {
    current: ArcSwapOption<KeySet>,
    /// The fetch in progress, if any: one per key set at a time (single flight). It runs in its
    /// own task, so a Check that gives up at its deadline does not cancel it for the others.
    flight: Mutex<Option<Flight>>,
    /// When the last fetch started: an unknown `kid` refetches at most once per
    /// `min_refresh_interval`.
    last_start: Mutex<Option<Instant>>,
    /// When the last fetch failed; an expired set is retried at most once per
    /// [`RETRY_AFTER_FAILURE`], so a failing issuer is not hammered by every Check.
    last_failure: Mutex<Option<Instant>>,
    /// A service account whose key endpoint said it has no keys: answered from here, without
    /// asking again, until then.
    absent_until: Mutex<Option<Instant>>,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            current: ArcSwapOption::empty(),
            flight: Mutex::new(None),
            last_start: Mutex::new(None),
            last_failure: Mutex::new(None),
            absent_until: Mutex::new(None),
        })
    }

    fn absent(&self, now: Instant) -> bool {
        self.absent_until
            .lock()
            .map(|a| a.is_some_and(|t| now < t))
            .unwrap_or(false)
    }
}

/// A token bucket: at most `rate` per second on average, bursts of `rate`.
struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    fn new(rate: u32) -> RateLimit {
        let rate = f64::from(rate);
        RateLimit {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes one unit if there is one.
    fn take(&self, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let (tokens, last) = *state;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

/// How often a failing key-set URL is retried.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Remote key sets by URL.
pub struct KeySets {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    slots: moka::sync::Cache<String, Arc<Slot>>,
    min_refresh: Duration,
    default_max_age: Duration,
    max_stale: Duration,
    /// How long a keyless service account is remembered.
    absent_ttl: Duration,
    /// Lookups of service accounts never seen before.
    new_accounts: RateLimit,
    limited: metrics::Counter,
}

impl KeySets {
    /// Key sets fetched with `http`, timed by the `[token]` settings.
    pub fn new(http: reqwest::Client, token: &TokenConfig) -> KeySets {
        // Registered at zero: a counter that first appears at 1 hides that increase from rate().
        metrics::counter!("verifyiam_keyset_stale_served_total").increment(0);
        KeySets {
            inner: Arc::new(Inner {
                http,
                slots: moka::sync::Cache::builder().max_capacity(MAX_SETS).build(),
                min_refresh: token.min_refresh_interval,
                default_max_age: token.default_keys_max_age,
                max_stale: token.keys_max_stale,
                absent_ttl: token.negative_cache_ttl.max(Duration::from_secs(1)),
                new_accounts: RateLimit::new(
                    token
                        .google_service_accounts
                        .as_ref()
                        .map_or(0, |s| s.new_accounts_per_second),
                ),
                limited: metrics::counter!("verifyiam_service_account_lookups_limited_total"),
            }),
        }
    }

    /// The key `kid` of a service account's own key set at `url`. Unlike an issuer's set, a
    /// 4xx answer (but 429) there means the account has no keys ([`KeyError::NoKeys`],
    /// remembered for the negative-cache TTL), and accounts never seen before are looked up at
    /// most `new_accounts_per_second` ([`KeyError::Limited`] beyond), so tokens naming random
    /// accounts cannot make verifyiam a source of traffic against the key endpoint.
    pub async fn account_key(&self, url: &str, kid: Option<&str>) -> Result<Arc<Key>, KeyError> {
        let now = Instant::now();
        let slot = match self.inner.slots.get(url) {
            Some(slot) => slot,
            None => {
                if !self.inner.new_accounts.take(now) {
                    self.inner.limited.increment(1);
                    return Err(KeyError::Limited);
                }
                self.inner.slots.get_with_by_ref(url, Slot::new)
            }
        };
        if slot.absent(now) {
            return Err(KeyError::NoKeys);
        }
        self.key_in(url, slot, kid, true).await
    }

    /// The key `kid` of the set at `url`, fetching or refreshing the set when needed.
    ///
    /// Fresh set with the key: returned at once (and refreshed in the background when it is
    /// close to expiry). Unknown `kid`: one refetch, at most once per `min_refresh_interval`.
    /// Expired set: refetched; while the refetch fails, the old set keeps serving up to
    /// `keys_max_stale` past its expiry.
    pub async fn key(&self, url: &str, kid: Option<&str>) -> Result<Arc<Key>, KeyError> {
        let slot = self.inner.slots.get_with_by_ref(url, Slot::new);
        self.key_in(url, slot, kid, false).await
    }

    async fn key_in(
        &self,
        url: &str,
        slot: Arc<Slot>,
        kid: Option<&str>,
        account: bool,
    ) -> Result<Arc<Key>, KeyError> {
        let inner = &self.inner;
        let now = Instant::now();
        let seen = slot.current.load_full();
        if let Some(set) = &seen {
            if now < set.fresh_until {
                if let Some(key) = set.find(kid) {
                    if set.fresh_until - now < set.refresh_ahead {
                        // Hot and about to expire: refresh before anyone has to wait for it.
                        let _ = self.flight(url, &slot, now, account);
                    }
                    return Ok(key);
                }
                // Unknown kid in a fresh set: the issuer may have rotated; refetch, rate-limited.
                if !self.may_start(&slot, now) {
                    return Err(KeyError::UnknownKey);
                }
            }
        }
        let flight = self.flight(url, &slot, now, account);
        match flight {
            Some(flight) => match flight.await {
                Ok(set) => set.find(kid).ok_or(KeyError::UnknownKey),
                Err(FetchError::Absent(_)) if account => Err(KeyError::NoKeys),
                Err(e) => stale_or(seen.as_deref(), kid, inner.max_stale, e.describe()),
            },
            None => stale_or(
                slot.current.load_full().as_deref(),
                kid,
                inner.max_stale,
                "the key set could not be fetched recently".to_owned(),
            ),
        }
    }

    fn may_start(&self, slot: &Slot, now: Instant) -> bool {
        let last = slot.last_start.lock().map(|l| *l).unwrap_or(None);
        last.is_none_or(|t| now.duration_since(t) >= self.inner.min_refresh)
    }

    /// Joins the fetch in progress, or starts one. `None` when a fetch ran too recently to
    /// start another (the caller then uses what is cached).
    fn flight(&self, url: &str, slot: &Arc<Slot>, now: Instant, account: bool) -> Option<Flight> {
        let Ok(mut guard) = slot.flight.lock() else {
            return None;
        };
        if let Some(f) = guard.as_ref() {
            return Some(f.clone());
        }
        let expired = slot
            .current
            .load()
            .as_ref()
            .is_none_or(|s| now >= s.fresh_until);
        let failed_recently = slot
            .last_failure
            .lock()
            .map(|f| f.is_some_and(|t| now.duration_since(t) < RETRY_AFTER_FAILURE))
            .unwrap_or(false);
        if failed_recently || (!expired && !self.may_start(slot, now)) {
            return None;
        }
        if let Ok(mut last) = slot.last_start.lock() {
            *last = Some(now);
        }
        let (inner, url_owned, slot_owned) = (self.inner.clone(), url.to_owned(), slot.clone());
        let task = tokio::spawn(async move {
            let result = inner.fetch(&url_owned).await.map(Arc::new);
            if let Ok(mut f) = slot_owned.last_failure.lock() {
                *f = result.is_err().then(Instant::now);
            }
            match &result {
                Ok(set) => slot_owned.current.store(Some(set.clone())),
                Err(FetchError::Absent(status)) if account => {
                    // No such key set (for a service account: no such account, or its keys
                    // were all deleted): nothing cached may keep verifying its tokens.
                    slot_owned.current.store(None);
                    if let Ok(mut a) = slot_owned.absent_until.lock() {
                        *a = Some(Instant::now() + inner.absent_ttl);
                    }
                    tracing::debug!(url = %url_owned, %status, "no key set at this URL");
                }
                Err(e) => {
                    tracing::warn!(url = %url_owned, error = %e.clone().describe(), "key set fetch failed")
                }
            }
            if let Ok(mut f) = slot_owned.flight.lock() {
                *f = None;
            }
            result
        });
        let flight: Flight =
            async move { task.await.map_err(|e| FetchError::Failed(e.to_string()))? }
                .boxed()
                .shared();
        *guard = Some(flight.clone());
        Some(flight)
    }
}

/// After a failed fetch: the previous set while it is within `max_stale` of its expiry.
fn stale_or(
    previous: Option<&KeySet>,
    kid: Option<&str>,
    max_stale: Duration,
    error: String,
) -> Result<Arc<Key>, KeyError> {
    match previous {
        Some(set) if Instant::now() < set.fresh_until + max_stale => {
            metrics::counter!("verifyiam_keyset_stale_served_total").increment(1);
            set.find(kid).ok_or(KeyError::UnknownKey)
        }
        _ => Err(KeyError::Unavailable(error)),
    }
}

impl Inner {
    async fn fetch(&self, url: &str) -> Result<KeySet, FetchError> {
        let request = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json");
        let reply = crate::upstream::send("jwks", request, MAX_BODY)
            .await
            .map_err(FetchError::Failed)?;
        if reply.status.is_client_error() && reply.status != StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError::Absent(reply.status));
        }
        if !reply.status.is_success() {
            reply.fail("status");
            return Err(FetchError::Failed(format!("HTTP {}", reply.status)));
        }
        let max_age = reply
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(self.default_max_age)
            .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        let body = &reply.body;
        let mut set = parse_key_set(body)
            .inspect_err(|_| reply.fail("body"))
            .map_err(FetchError::Failed)?;
        let now = Instant::now();
        set.fresh_until = now + max_age;
        // Refresh in the background during the last tenth of the set's life.
        set.refresh_ahead = max_age / 10;
        Ok(set)
    }
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as zero (then clamped up).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        let (k, v) = d.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| {
                v.trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            })
            .flatten()
    })
}

/// Parses a JWK set (`{"keys":[…]}`) or Google's x509 map (`{"kid":"-----BEGIN CERTIFICATE…"}`).
/// Keys that do not parse are skipped, so one odd key does not hide the others.
pub fn parse_key_set(body: &[u8]) -> Result<KeySet, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the key set is not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("the key set is not a JSON object".to_owned());
    };
    let now = Instant::now();
    let mut set = KeySet {
        by_kid: HashMap::new(),
        anonymous: Vec::new(),
        fresh_until: now,
        refresh_ahead: Duration::ZERO,
    };
    if let Some(keys) = object.get("keys") {
        let Some(keys) = keys.as_array() else {
            return Err("`keys` is not an array".to_owned());
        };
        for raw in keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if decoding.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                // A symmetric key in a public key set could only serve an HMAC forgery.
                continue;
            }
            let alg = raw
                .get("alg")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse::<Algorithm>().ok());
            let key = Arc::new(Key::new(decoding, alg));
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, key);
                }
                None => set.anonymous.push(key),
            }
        }
    } else {
        for (kid, pem) in object {
            let Some(pem) = pem.as_str() else { continue };
            let decoding = DecodingKey::from_rsa_pem(pem.as_bytes())
                .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()));
            if let Ok(decoding) = decoding {
                set.by_kid
                    .insert(kid.clone(), Arc::new(Key::new(decoding, None)));
            }
        }
    }
    if set.is_empty() {
        return Err("the key set holds no usable key".to_owned());
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=19845, must-revalidate"),
            Some(Duration::from_secs(19845))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }

    #[test]
    fn symmetric_and_garbage_keys_are_skipped() {
        let body = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},{"kty":"RSA","kid":"x"}]}"#;
        assert!(parse_key_set(body).is_err());
    }

    fn rsa_jwk_key() -> (jsonwebtoken::EncodingKey, Key) {
        use aws_lc_rs::encoding::AsDer as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pair.as_der().unwrap().as_ref())
        );
        let enc = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
        (enc, Key::new(DecodingKey::from_jwk(&jwk).unwrap(), None))
    }

    fn sign(enc: &jsonwebtoken::EncodingKey, alg: Algorithm, message: &str) -> String {
        jsonwebtoken::crypto::sign(message.as_bytes(), enc, alg).unwrap()
    }

    #[test]
    fn one_parsed_rsa_key_verifies_every_rsa_algorithm_and_nothing_else() {
        let (enc, key) = rsa_jwk_key();
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let sig = sign(&enc, alg, "a.b");
            // Twice: the second use goes through the key parsed by the first.
            assert_eq!(key.verify(alg, b"a.b", &sig), Ok(true), "{alg:?}");
            assert_eq!(key.verify(alg, b"a.b", &sig), Ok(true), "{alg:?}");
            assert_eq!(key.verify(alg, b"a.c", &sig), Ok(false), "{alg:?}");
        }
        let rs = sign(&enc, Algorithm::RS256, "a.b");
        // A signature of one algorithm never verifies as another.
        assert_eq!(key.verify(Algorithm::RS384, b"a.b", &rs), Ok(false));
        assert_eq!(key.verify(Algorithm::PS256, b"a.b", &rs), Ok(false));
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::HS256] {
            assert_eq!(
                key.verify(alg, b"a.b", &rs),
                Err(SignatureError::KeyMismatch),
                "{alg:?}"
            );
        }
        assert_eq!(
            key.verify(Algorithm::RS256, b"a.b", "not*base64"),
            Err(SignatureError::NotBase64)
        );
        assert_eq!(
            key.verify(Algorithm::RS256, b"a.b", &"A".repeat(4000)),
            Ok(false)
        );
    }

    #[test]
    fn ec_keys_verify_their_curve_only() {
        let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let enc = jsonwebtoken::EncodingKey::from_ec_der(doc.as_ref());
        let jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
        let key = Key::new(DecodingKey::from_jwk(&jwk).unwrap(), Some(Algorithm::ES256));
        let sig = sign(&enc, Algorithm::ES256, "x.y");
        assert_eq!(key.verify(Algorithm::ES256, b"x.y", &sig), Ok(true));
        assert_eq!(key.verify(Algorithm::ES256, b"x.z", &sig), Ok(false));
        // A P-256 key is no P-384 key.
        assert_eq!(
            key.verify(Algorithm::ES384, b"x.y", &sig),
            Err(SignatureError::KeyMismatch)
        );
        assert_eq!(
            key.verify(Algorithm::RS256, b"x.y", &sig),
            Err(SignatureError::KeyMismatch)
        );
    }

    #[test]
    fn non_json_is_an_error() {
        assert!(parse_key_set(b"<html>").is_err());
        assert!(parse_key_set(b"[1,2]").is_err());
    }
}
