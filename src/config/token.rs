//! `[token]`: which tokens are trusted (JWT issuers, Google service accounts, tokeninfo, RFC 7662
//! introspection, the development issuer), what they must carry, and how verified tokens and key
//! sets are cached.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;

use super::{CLOUD_PLATFORM_SCOPE, ConfigError, GOOGLE_SA_JWKS_TEMPLATE, check_url, invalid};

/// `[token]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The OAuth scope every token must carry.
    #[serde(default = "default_scope")]
    pub required_scope: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// How long one fetch of a key set may take.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// An unknown `kid` refetches a key set at most this often.
    #[serde(default = "default_min_refresh", with = "humantime_serde")]
    pub min_refresh_interval: Duration,
    /// Key-set lifetime when the response has no `Cache-Control: max-age`.
    #[serde(default = "default_keys_max_age", with = "humantime_serde")]
    pub default_keys_max_age: Duration,
    /// An expired key set keeps serving this long past expiry while its refresh fails.
    #[serde(default = "default_keys_max_stale", with = "humantime_serde")]
    pub keys_max_stale: Duration,
    /// Verified tokens kept at once (see the README for the memory each takes).
    #[serde(default = "default_token_capacity")]
    pub cache_capacity: u64,
    /// A token found invalid is answered from memory this long, without asking upstream again.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Trusted JWT issuers.
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
    /// Google service-account self-signed JWTs; absent means not accepted.
    #[serde(default)]
    pub google_service_accounts: Option<ServiceAccountsConfig>,
    /// Opaque Google access tokens; absent means not accepted.
    #[serde(default)]
    pub tokeninfo: Option<TokeninfoConfig>,
    /// Opaque tokens checked by RFC 7662 introspection; absent means not accepted.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// Opaque-token lookups (tokeninfo, introspection) in flight at once; more wait for a
    /// slot (within their Check's deadline), so a flood of random tokens cannot open an
    /// unbounded number of upstream calls.
    #[serde(default = "default_max_concurrent_lookups")]
    pub max_concurrent_lookups: usize,
    /// The local development issuer (`serve --dev` sets it).
    #[serde(default)]
    pub dev: Option<DevIssuerConfig>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            required_scope: default_scope(),
            leeway: default_leeway(),
            fetch_timeout: default_fetch_timeout(),
            min_refresh_interval: default_min_refresh(),
            default_keys_max_age: default_keys_max_age(),
            keys_max_stale: default_keys_max_stale(),
            cache_capacity: default_token_capacity(),
            negative_cache_ttl: default_negative_ttl(),
            jwt: Vec::new(),
            google_service_accounts: None,
            tokeninfo: None,
            introspection: None,
            max_concurrent_lookups: default_max_concurrent_lookups(),
            dev: None,
        }
    }
}

fn default_scope() -> String {
    CLOUD_PLATFORM_SCOPE.to_owned()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_keys_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_keys_max_stale() -> Duration {
    Duration::from_secs(3600)
}
fn default_token_capacity() -> u64 {
    50_000
}
fn default_max_concurrent_lookups() -> usize {
    64
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}

/// `[[token.jwt]]`: one trusted issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Where the issuer's JWK set is published.
    pub jwks_uri: String,
    /// Accepted `aud` values; empty means `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The workload or workforce identity pool the issuer belongs to; absent: its tokens name
    /// their caller by email (or `{iss}#{sub}`) as any issuer's do.
    #[serde(default)]
    pub federation: Option<FederationConfig>,
}

/// `[token.jwt.federation]`: the pool an issuer belongs to, how its claims map to Google
/// attributes, and which of its tokens the pool accepts (both in CEL).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// `projects/NUMBER/locations/global/workloadIdentityPools/POOL_ID` or
    /// `locations/global/workforcePools/POOL_ID`.
    pub pool: String,
    /// `google.subject` (required), `google.groups`, `attribute.NAME` → a CEL expression over
    /// `assertion` (the token's claims).
    #[serde(default)]
    pub attribute_mapping: BTreeMap<String, String>,
    /// A CEL expression over `assertion`, `google` and `attribute`; a token it does not hold
    /// for is refused (401).
    #[serde(default)]
    pub attribute_condition: Option<String>,
    /// The compiled form, made once when the configuration is validated.
    #[serde(skip)]
    pub(crate) compiled: OnceLock<Arc<crate::authn::federation::Federation>>,
}

impl FederationConfig {
    /// The mapping and condition compiled (once: later calls return the same); `field` names
    /// this table in errors (`token.jwt[1].federation`).
    pub fn compiled(
        &self,
        field: &str,
    ) -> Result<Arc<crate::authn::federation::Federation>, ConfigError> {
        if let Some(c) = self.compiled.get() {
            return Ok(c.clone());
        }
        let compiled = crate::authn::federation::Federation::compile(self, field)
            .map(Arc::new)
            .map_err(|e| invalid(e.field, e.message))?;
        Ok(self.compiled.get_or_init(|| compiled).clone())
    }
}

/// `[token.google_service_accounts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountsConfig {
    /// Key-set URL with `{email}` where the account's (URL-encoded) email goes.
    #[serde(default = "default_sa_template")]
    pub jwks_uri_template: String,
    /// Accepted `aud` values of a self-signed token that carries one (a token without `aud`
    /// is accepted on its scope). Default: the Apigee API's endpoint, with and without the
    /// trailing slash.
    #[serde(default = "default_sa_audiences")]
    pub audiences: Vec<String>,
    /// Key-set lookups per second (bursts of as many) for accounts not seen before; tokens
    /// naming further new accounts are refused 401 and counted in
    /// `verifyiam_service_account_lookups_limited_total`. Known accounts are never limited.
    #[serde(default = "default_new_accounts_per_second")]
    pub new_accounts_per_second: u32,
}

impl Default for ServiceAccountsConfig {
    fn default() -> Self {
        Self {
            jwks_uri_template: default_sa_template(),
            audiences: default_sa_audiences(),
            new_accounts_per_second: default_new_accounts_per_second(),
        }
    }
}

fn default_sa_template() -> String {
    GOOGLE_SA_JWKS_TEMPLATE.to_owned()
}
fn default_sa_audiences() -> Vec<String> {
    vec![
        "https://apigee.googleapis.com/".to_owned(),
        "https://apigee.googleapis.com".to_owned(),
    ]
}
fn default_new_accounts_per_second() -> u32 {
    10
}

/// `[token.tokeninfo]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokeninfoConfig {
    /// Google's tokeninfo endpoint (or a compatible one).
    pub url: String,
}

/// `[token.introspection]`: an RFC 7662 token introspection endpoint. Shown by `{:?}` without
/// its client secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint.
    pub url: String,
    /// Client id for HTTP Basic authentication to the endpoint.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Client secret for HTTP Basic authentication.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The answer's field holding the caller's email, when the server provides one.
    #[serde(default = "default_email_field")]
    pub email_field: String,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("email_field", &self.email_field)
            .finish()
    }
}

fn default_email_field() -> String {
    "email".to_owned()
}

/// `[token.dev]`: a locally held signing key whose tokens are trusted (development only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerConfig {
    /// The `iss` of tokens it mints.
    pub issuer: String,
    /// PKCS#8 PEM file of its P-256 key.
    pub key_file: PathBuf,
}

impl TokenConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.required_scope.trim().is_empty() || self.required_scope.contains(' ') {
            return Err(invalid(
                "token.required_scope",
                "must be one scope, not empty",
            ));
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(invalid("token.leeway", "must be at most 5m"));
        }
        if self.fetch_timeout.is_zero() {
            return Err(invalid("token.fetch_timeout", "must be positive"));
        }
        if self.default_keys_max_age.is_zero() {
            return Err(invalid("token.default_keys_max_age", "must be positive"));
        }
        let mut seen = HashSet::new();
        for (i, j) in self.jwt.iter().enumerate() {
            let field = format!("token.jwt[{i}]");
            if j.issuer.trim().is_empty() {
                return Err(invalid(format!("{field}.issuer"), "must not be empty"));
            }
            if !seen.insert(j.issuer.as_str()) {
                return Err(invalid(
                    format!("{field}.issuer"),
                    format!("issuer {:?} is configured twice", j.issuer),
                ));
            }
            check_url(&format!("{field}.jwks_uri"), &j.jwks_uri)?;
            if let Some(f) = &j.federation {
                if j.audiences.is_empty() {
                    return Err(invalid(
                        format!("{field}.audiences"),
                        "must list the accepted audiences when the issuer belongs to a pool: a \
                         pool's token carries no scope, its audience is what binds it to this API",
                    ));
                }
                f.compiled(&format!("{field}.federation"))?;
            }
        }
        if let Some(dev) = &self.dev {
            if !seen.insert(dev.issuer.as_str()) {
                return Err(invalid(
                    "token.dev.issuer",
                    "is also configured in token.jwt",
                ));
            }
        }
        if let Some(sa) = &self.google_service_accounts {
            if !sa.jwks_uri_template.contains("{email}") {
                return Err(invalid(
                    "token.google_service_accounts.jwks_uri_template",
                    "must contain {email}",
                ));
            }
            check_url(
                "token.google_service_accounts.jwks_uri_template",
                &sa.jwks_uri_template
                    .replace("{email}", "a%40b.iam.gserviceaccount.com"),
            )?;
        }
        if self.max_concurrent_lookups == 0 {
            return Err(invalid(
                "token.max_concurrent_lookups",
                "must be at least 1",
            ));
        }
        if let Some(t) = &self.tokeninfo {
            check_url("token.tokeninfo.url", &t.url)?;
        }
        if let Some(i) = &self.introspection {
            check_url("token.introspection.url", &i.url)?;
            if i.client_id.is_some() != i.client_secret.is_some() {
                return Err(invalid(
                    "token.introspection.client_secret",
                    "client_id and client_secret go together",
                ));
            }
        }
        if self.cache_capacity == 0 {
            return Err(invalid("token.cache_capacity", "must be positive"));
        }
        Ok(())
    }
}
