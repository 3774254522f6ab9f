//! The one typed configuration: loaded from TOML, defaults filled in, validated at start.
//!
//! Unknown keys are errors (serde's `deny_unknown_fields`), and every validation error names the
//! field it is about, so a bad file fails fast with a message an operator can act on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::iam::member::Member;

/// The scope every token must carry unless configured otherwise.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Where Google publishes a service account's public keys.
pub const GOOGLE_SA_JWKS_TEMPLATE: &str =
    "https://www.googleapis.com/service_accounts/v1/metadata/jwk/{email}";

/// A configuration problem, always naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or a key is unknown or has the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A TLS file named by the configuration is missing or unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A value parsed but is not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `routes[1].path_prefix`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and the Check deadline.
    #[serde(default)]
    pub server: ServerConfig,
    /// The project, the store and the bootstrap administrators.
    pub iam: IamConfig,
    /// Which tokens are trusted and what they must carry.
    #[serde(default)]
    pub token: TokenConfig,
    /// Where invoke decisions come from, and how they are cached.
    #[serde(default)]
    pub authz: AuthzConfig,
    /// Host/path → deployment, for requests Envoy sends without `context_extensions`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The gateway's identity toward backends (ID tokens); absent means none is minted.
    #[serde(default)]
    pub backend_auth: Option<BackendAuthConfig>,
}

/// `[authz]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// `local` (the embedded store) or `google` (Apigee's testIamPermissions with the caller's token).
    #[serde(default)]
    pub mode: AuthzMode,
    /// Base URL of the Apigee API for `google` mode (another verifyiam's admin URL works too).
    #[serde(default = "default_apigee_url")]
    pub apigee_url: String,
    /// One remote decision request may take this long (it runs on even after a Check gives up).
    #[serde(default = "default_authz_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Decisions kept at once.
    #[serde(default = "default_decision_capacity")]
    pub decision_cache_capacity: u64,
    /// How long a decision is used without asking again.
    #[serde(default = "default_decision_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// A decision used within this of its expiry is refreshed in the background (`google` mode).
    #[serde(default = "default_refresh_ahead", with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// An expired decision is still used this long past expiry while the source fails.
    #[serde(default = "default_max_stale", with = "humantime_serde")]
    pub max_stale: Duration,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            mode: AuthzMode::default(),
            apigee_url: default_apigee_url(),
            timeout: default_authz_timeout(),
            decision_cache_capacity: default_decision_capacity(),
            cache_ttl: default_decision_ttl(),
            refresh_ahead: default_refresh_ahead(),
            max_stale: default_max_stale(),
        }
    }
}

/// `authz.mode`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzMode {
    /// Policies in the embedded store (the default).
    #[default]
    Local,
    /// Google IAM (Apigee's `testIamPermissions`) decides.
    Google,
}

fn default_apigee_url() -> String {
    "https://apigee.googleapis.com".to_owned()
}
fn default_authz_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_decision_capacity() -> u64 {
    50_000
}
fn default_decision_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_refresh_ahead() -> Duration {
    Duration::from_secs(60)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(3600)
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Envoy ext_authz gRPC and `grpc.health.v1`.
    #[serde(default = "default_extauthz_addr")]
    pub extauthz_addr: SocketAddr,
    /// Admin REST, `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_admin_addr")]
    pub admin_addr: SocketAddr,
    /// No Check answers later than this.
    #[serde(default = "default_check_deadline", with = "humantime_serde")]
    pub check_deadline: Duration,
    /// What a Check answers when a dependency cannot answer in time and nothing usable is cached.
    #[serde(default)]
    pub on_dependency_failure: OnDependencyFailure,
    /// Connections the ext_authz listener serves at once; more are accepted and closed at once.
    #[serde(default = "default_extauthz_max_connections")]
    pub extauthz_max_connections: usize,
    /// Connections the admin listener serves at once; more are accepted and closed at once.
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// From accept to a connection's first complete request head (TLS handshake included), and
    /// for each later HTTP/1 request head: a connection slower than this is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request body must have arrived whole this long after its head, or the request fails.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Largest request body either listener reads, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest request head, in bytes: HTTP/2's header list size and HTTP/1's header buffer.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// HTTP/2 streams a client may have open at once on one connection.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// An HTTP/2 client that sent nothing for this long is pinged (a client in the middle of a
    /// header block cannot answer, so this also bounds a half-sent request).
    #[serde(default = "default_http2_keepalive_interval", with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// A ping not answered within this closes the connection.
    #[serde(default = "default_http2_keepalive_timeout", with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// TLS on the ext_authz listener (`[server.tls]`); absent means plaintext (h2c).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS on the admin listener (`[server.admin_tls]`); absent means plaintext.
    #[serde(default)]
    pub admin_tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            extauthz_addr: default_extauthz_addr(),
            admin_addr: default_admin_addr(),
            check_deadline: default_check_deadline(),
            on_dependency_failure: OnDependencyFailure::default(),
            extauthz_max_connections: default_extauthz_max_connections(),
            admin_max_connections: default_admin_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_body_bytes: default_max_body_bytes(),
            max_header_bytes: default_max_header_bytes(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            http2_keepalive_interval: default_http2_keepalive_interval(),
            http2_keepalive_timeout: default_http2_keepalive_timeout(),
            tls: None,
            admin_tls: None,
        }
    }
}

/// `[server.tls]` and `[server.admin_tls]`: a listener's certificate, and for mutual TLS the CA
/// its clients' certificates must come from. The files are read again when they change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the listener's own certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, only clients presenting a certificate issued by one of
    /// them may connect (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a change (a rotated certificate is served from the
    /// next connection after the check that sees it).
    #[serde(default = "default_tls_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_extauthz_max_connections() -> usize {
    4096
}
fn default_admin_max_connections() -> usize {
    256
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_max_header_bytes() -> u32 {
    16 * 1024
}
fn default_http2_max_concurrent_streams() -> u32 {
    256
}
fn default_http2_keepalive_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_http2_keepalive_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `server.on_dependency_failure`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDependencyFailure {
    /// A denial: `UNAVAILABLE`, HTTP 503 with `Retry-After` (the default).
    #[default]
    Deny,
    /// A gRPC error on the Check call, so Envoy's `failure_mode_allow` / `status_on_error` decide.
    Error,
}

fn default_extauthz_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9001))
}
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9002))
}
fn default_check_deadline() -> Duration {
    Duration::from_millis(150)
}

/// `[iam]`
/// Shown by `{:?}` without the store URL's password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamConfig {
    /// The project id whose policy is the project-level policy.
    pub project: String,
    /// The Apigee organization name; the project id when absent.
    #[serde(default)]
    pub organization: Option<String>,
    /// Directory of the embedded durable store (one replica), or a PostgreSQL URL
    /// (`postgres://user@host:5432/db?sslmode=verify-full`, password from the URL or
    /// `PGPASSWORD`) shared by any number of replicas.
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// PostgreSQL store: how long a replica cut off from the database keeps answering Checks
    /// from its last snapshot; past it, Checks answer 503.
    #[serde(default = "default_max_staleness", with = "humantime_serde")]
    pub max_staleness: Duration,
    /// Members that always hold `roles/owner` on the project.
    #[serde(default)]
    pub bootstrap_admins: Vec<String>,
    /// Only deployed APIs accept policies and may be allowed (default: a deployment also comes
    /// into being when a policy is set on it or a route names it).
    #[serde(default)]
    pub strict_deployments: bool,
    /// Group memberships applied at start (`[[iam.groups]]`).
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// `[[iam.groups]]`: a group whose membership is set from configuration at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's email (`group:` prefix optional).
    pub email: String,
    /// Its members: `user:EMAIL` or `serviceAccount:EMAIL`.
    #[serde(default)]
    pub members: Vec<String>,
}

impl IamConfig {
    /// The organization name deployments live under.
    pub fn organization(&self) -> &str {
        self.organization.as_deref().unwrap_or(&self.project)
    }
}

fn default_store() -> PathBuf {
    PathBuf::from("./verifyiam-data")
}

fn default_max_staleness() -> Duration {
    Duration::from_secs(300)
}

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

impl std::fmt::Debug for IamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.store.to_string_lossy();
        let store = if crate::store::PgUrl::is_postgres(&text) {
            crate::store::PgUrl::parse(&text)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| "<a PostgreSQL URL that does not parse>".to_owned())
        } else {
            text.into_owned()
        };
        f.debug_struct("IamConfig")
            .field("project", &self.project)
            .field("organization", &self.organization)
            .field("store", &store)
            .field("max_staleness", &self.max_staleness)
            .field("bootstrap_admins", &self.bootstrap_admins)
            .field("strict_deployments", &self.strict_deployments)
            .field("groups", &self.groups)
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

/// `[[routes]]`: requests Envoy sends without `context_extensions` are mapped by host and path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact host or `*.suffix`; absent matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, matched on whole segments; longest wins.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Organization; defaults to `iam.organization`.
    #[serde(default)]
    pub organization: Option<String>,
    /// Environment of the deployment.
    pub environment: String,
    /// Deployment (API proxy) name.
    pub deployment: String,
    /// The backend's ID-token audience (e.g. a Cloud Run service URL); absent: no ID token.
    #[serde(default)]
    pub backend_audience: Option<String>,
}

fn default_prefix() -> String {
    "/".to_owned()
}

/// `[backend_auth]`: how the gateway gets Google ID tokens for its backends (its own service
/// account's identity, as API Gateway and ESPv2 hand to Cloud Run, Cloud Run functions and IAP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAuthConfig {
    /// Where ID tokens come from.
    pub source: BackendTokenSource,
    /// `metadata`: the metadata server; default `http://$GCE_METADATA_HOST` when that is set,
    /// else `http://metadata.google.internal`.
    #[serde(default)]
    pub metadata_url: Option<String>,
    /// `service_account_key`: the service account's JSON key file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `service_account_key`: Google's OAuth 2.0 token endpoint.
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// One fetch of an ID token may take this long (it runs on even after a Check gives up).
    #[serde(default = "default_backend_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// A token is refreshed in the background this long before it expires (at most half its
    /// lifetime).
    #[serde(default = "default_backend_refresh_ahead", with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// Audiences whose tokens are kept at once.
    #[serde(default = "default_max_audiences")]
    pub max_audiences: u64,
}

/// `backend_auth.source`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendTokenSource {
    /// The metadata server of the machine verifyiam runs on (GKE, GCE, Cloud Run).
    Metadata,
    /// A JWT assertion signed with a service-account key, exchanged at `token_url`.
    ServiceAccountKey,
    /// Signed with the development issuer's key (`token.dev`); `serve --dev` only.
    Dev,
}

/// Google's OAuth 2.0 token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's default address.
pub const METADATA_URL: &str = "http://metadata.google.internal";

fn default_token_url() -> String {
    GOOGLE_TOKEN_URL.to_owned()
}
fn default_backend_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_backend_refresh_ahead() -> Duration {
    Duration::from_secs(600)
}
fn default_max_audiences() -> u64 {
    1000
}

impl BackendAuthConfig {
    /// A table with every default and the given source.
    pub fn new(source: BackendTokenSource) -> BackendAuthConfig {
        BackendAuthConfig {
            source,
            metadata_url: None,
            key_file: None,
            token_url: default_token_url(),
            fetch_timeout: default_backend_fetch_timeout(),
            refresh_ahead: default_backend_refresh_ahead(),
            max_audiences: default_max_audiences(),
        }
    }

    /// The metadata server's base URL: `metadata_url`, else `GCE_METADATA_HOST` (as Google's
    /// client libraries read it), else the default.
    pub fn metadata_base(&self) -> String {
        metadata_base(
            self.metadata_url.as_deref(),
            std::env::var("GCE_METADATA_HOST").ok().as_deref(),
        )
    }

    fn validate(&self, token: &TokenConfig) -> Result<(), ConfigError> {
        if self.fetch_timeout.is_zero() {
            return Err(invalid("backend_auth.fetch_timeout", "must be positive"));
        }
        if self.max_audiences == 0 {
            return Err(invalid("backend_auth.max_audiences", "must be positive"));
        }
        let misplaced = |field: &str, source: &str| {
            invalid(
                format!("backend_auth.{field}"),
                format!("is used only with source = \"{source}\""),
            )
        };
        match self.source {
            BackendTokenSource::Metadata => {
                if self.key_file.is_some() {
                    return Err(misplaced("key_file", "service_account_key"));
                }
                check_url("backend_auth.metadata_url", &self.metadata_base())
            }
            BackendTokenSource::ServiceAccountKey => {
                if self.metadata_url.is_some() {
                    return Err(misplaced("metadata_url", "metadata"));
                }
                check_url("backend_auth.token_url", &self.token_url)?;
                let Some(path) = &self.key_file else {
                    return Err(invalid(
                        "backend_auth.key_file",
                        "is required with source = \"service_account_key\"",
                    ));
                };
                crate::backend::key::ServiceAccountKey::load(path)
                    .map(drop)
                    .map_err(|e| invalid("backend_auth.key_file", e.to_string()))
            }
            BackendTokenSource::Dev => {
                if token.dev.is_none() {
                    return Err(invalid(
                        "backend_auth.source",
                        "\"dev\" signs with the development issuer and needs [token.dev]",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// `configured`, else `http://{GCE_METADATA_HOST}`, else the default (pure, for tests).
pub fn metadata_base(configured: Option<&str>, env_host: Option<&str>) -> String {
    let base = match (
        configured,
        env_host.map(str::trim).filter(|h| !h.is_empty()),
    ) {
        (Some(url), _) => url.to_owned(),
        (None, Some(host)) if host.contains("://") => host.to_owned(),
        (None, Some(host)) => format!("http://{host}"),
        (None, None) => METADATA_URL.to_owned(),
    };
    base.trim_end_matches('/').to_owned()
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse(e.to_string().trim().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that parsed but may still be wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = self.server.check_deadline;
        if d.is_zero() || d > Duration::from_secs(10) {
            return Err(invalid(
                "server.check_deadline",
                "must be between 1ms and 10s (Envoy's default ext_authz timeout is 200ms)",
            ));
        }
        if self.server.extauthz_addr == self.server.admin_addr
            && self.server.extauthz_addr.port() != 0
        {
            return Err(invalid(
                "server.admin_addr",
                "must differ from server.extauthz_addr",
            ));
        }
        self.server.validate_limits()?;
        if let Some(tls) = &self.server.tls {
            crate::tls::check(tls, "server.tls")?;
        }
        if let Some(tls) = &self.server.admin_tls {
            crate::tls::check(tls, "server.admin_tls")?;
        }
        check_segment("iam.project", &self.iam.project)?;
        if let Some(org) = &self.iam.organization {
            check_segment("iam.organization", org)?;
        }
        if self.iam.store.as_os_str().is_empty() {
            return Err(invalid("iam.store", "must be a directory path"));
        }
        let store = self.iam.store.to_string_lossy();
        if crate::store::PgUrl::is_postgres(&store) {
            crate::store::PgUrl::parse(&store).map_err(|e| invalid("iam.store", e))?;
        }
        if self.iam.max_staleness < Duration::from_secs(1) {
            return Err(invalid("iam.max_staleness", "must be at least 1s"));
        }
        for (i, m) in self.iam.bootstrap_admins.iter().enumerate() {
            Member::parse(m)
                .map_err(|e| invalid(format!("iam.bootstrap_admins[{i}]"), e.to_string()))?;
        }
        let mut seen_groups = HashSet::new();
        for (i, g) in self.iam.groups.iter().enumerate() {
            let field = format!("iam.groups[{i}]");
            let email = g.email.strip_prefix("group:").unwrap_or(&g.email);
            match Member::parse(&format!("group:{email}")) {
                Ok(Member::Group(e)) => {
                    if !seen_groups.insert(e) {
                        return Err(invalid(
                            format!("{field}.email"),
                            format!("group {email:?} is configured twice"),
                        ));
                    }
                }
                _ => {
                    return Err(invalid(
                        format!("{field}.email"),
                        format!("{:?} is not a group email like ops@example.com", g.email),
                    ));
                }
            }
            for (j, m) in g.members.iter().enumerate() {
                match Member::parse(m) {
                    Ok(Member::User(_) | Member::ServiceAccount(_)) => {}
                    Ok(_) => {
                        return Err(invalid(
                            format!("{field}.members[{j}]"),
                            format!(
                                "{m:?}: a group holds user:EMAIL and serviceAccount:EMAIL members only"
                            ),
                        ));
                    }
                    Err(e) => return Err(invalid(format!("{field}.members[{j}]"), e.to_string())),
                }
            }
        }
        self.token.validate()?;
        self.authz.validate()?;
        for (i, r) in self.routes.iter().enumerate() {
            r.validate(&format!("routes[{i}]"))?;
            if let Some(audience) = &r.backend_audience {
                let field = format!("routes[{i}].backend_audience");
                crate::backend::check_audience(audience)
                    .map_err(|e| invalid(field.clone(), e.to_string()))?;
                if self.backend_auth.is_none() {
                    return Err(invalid(
                        field,
                        "needs a [backend_auth] table to mint the backend's ID tokens",
                    ));
                }
            }
        }
        if let Some(b) = &self.backend_auth {
            b.validate(&self.token)?;
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate_limits(&self) -> Result<(), ConfigError> {
        for (field, n) in [
            (
                "server.extauthz_max_connections",
                self.extauthz_max_connections,
            ),
            ("server.admin_max_connections", self.admin_max_connections),
        ] {
            if n == 0 || n > 1_000_000 {
                return Err(invalid(field, "must be between 1 and 1000000"));
            }
        }
        for (field, d) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.body_read_timeout", self.body_read_timeout),
            (
                "server.http2_keepalive_interval",
                self.http2_keepalive_interval,
            ),
            (
                "server.http2_keepalive_timeout",
                self.http2_keepalive_timeout,
            ),
        ] {
            if d.is_zero() || d > Duration::from_secs(600) {
                return Err(invalid(field, "must be between 1ms and 10m"));
            }
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "server.max_body_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        // HTTP/1's header buffer cannot be smaller than 8 KiB.
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if self.http2_max_concurrent_streams == 0 || self.http2_max_concurrent_streams > 10_000 {
            return Err(invalid(
                "server.http2_max_concurrent_streams",
                "must be between 1 and 10000",
            ));
        }
        for (field, tls) in [
            ("server.tls", &self.tls),
            ("server.admin_tls", &self.admin_tls),
        ] {
            if tls.as_ref().is_some_and(|t| t.reload_interval.is_zero()) {
                return Err(invalid(
                    format!("{field}.reload_interval"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }
}

impl TokenConfig {
    fn validate(&self) -> Result<(), ConfigError> {
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

impl AuthzConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == AuthzMode::Google {
            check_url("authz.apigee_url", &self.apigee_url)?;
        }
        if self.timeout.is_zero() {
            return Err(invalid("authz.timeout", "must be positive"));
        }
        if self.decision_cache_capacity == 0 {
            return Err(invalid("authz.decision_cache_capacity", "must be positive"));
        }
        if self.refresh_ahead >= self.cache_ttl && !self.cache_ttl.is_zero() {
            return Err(invalid(
                "authz.refresh_ahead",
                "must be shorter than authz.cache_ttl",
            ));
        }
        Ok(())
    }
}

impl RouteConfig {
    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if !self.path_prefix.starts_with('/') {
            return Err(invalid(
                format!("{field}.path_prefix"),
                "must start with '/'",
            ));
        }
        if self.path_prefix.contains(['?', '#']) {
            return Err(invalid(
                format!("{field}.path_prefix"),
                "must not contain '?' or '#'",
            ));
        }
        if let Err(e) = crate::route::path::normalize(&self.path_prefix) {
            return Err(invalid(format!("{field}.path_prefix"), e.to_string()));
        }
        if let Some(host) = &self.host {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains(['*', '/', ' ']) {
                return Err(invalid(
                    format!("{field}.host"),
                    "must be an exact host name or \"*.suffix\"",
                ));
            }
        }
        if let Some(org) = &self.organization {
            check_segment(&format!("{field}.organization"), org)?;
        }
        check_segment(&format!("{field}.environment"), &self.environment)?;
        check_segment(&format!("{field}.deployment"), &self.deployment)
    }
}

/// A resource-name segment: what Apigee accepts for organization, environment and API names.
pub(crate) fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_segment(field: &str, value: &str) -> Result<(), ConfigError> {
    if is_segment(value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not a valid name (letters, digits, '-', '_', '.')"),
        ))
    }
}

pub(crate) fn check_url(field: &str, value: &str) -> Result<(), ConfigError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(invalid(field, format!("{value:?} is not an http(s) URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[iam]\nproject = \"demo\"\n";

    #[test]
    fn defaults_fill_in_a_minimal_file() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.server.check_deadline, Duration::from_millis(150));
        assert_eq!(c.server.extauthz_addr.port(), 9001);
        assert_eq!(c.token.required_scope, CLOUD_PLATFORM_SCOPE);
        assert_eq!(c.token.leeway, Duration::from_secs(30));
        assert_eq!(c.iam.organization(), "demo");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::parse("[iam]\nproject = \"demo\"\nprojekt = 1\n").unwrap_err();
        assert!(err.to_string().contains("projekt"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let err = Config::parse("[server]\ncheck_deadline = \"fast\"\n[iam]\nproject = \"demo\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("check_deadline"), "{err}");
    }

    #[test]
    fn zero_deadline_is_refused() {
        let err = Config::parse("[server]\ncheck_deadline = \"0s\"\n[iam]\nproject = \"demo\"\n")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("server.check_deadline"),
            "{err}"
        );
    }

    #[test]
    fn listener_limits_have_defaults_and_name_their_field() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.server.admin_max_connections, 256);
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_header_bytes, 16384);
        assert!(c.server.tls.is_none() && c.server.admin_tls.is_none());
        // A half-sent request is gone within 30s with the defaults, whatever the protocol.
        let h2 = c.server.http2_keepalive_interval + c.server.http2_keepalive_timeout;
        assert!(c.server.header_read_timeout <= Duration::from_secs(30));
        assert!(h2 <= Duration::from_secs(30));
        for (key, value) in [
            ("admin_max_connections", "0"),
            ("extauthz_max_connections", "0"),
            ("header_read_timeout", "\"0s\""),
            ("body_read_timeout", "\"1h\""),
            ("max_body_bytes", "10"),
            ("max_header_bytes", "4096"),
            ("http2_max_concurrent_streams", "0"),
            ("http2_keepalive_timeout", "\"0s\""),
        ] {
            let err = Config::parse(&format!("[server]\n{key} = {value}\n{MINIMAL}")).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("server.{key}")),
                "{key}: {err}"
            );
        }
        let err = Config::parse(&format!("[server]\nmax_conections = 1\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
    }

    #[test]
    fn route_prefix_must_start_with_slash() {
        let text = format!(
            "{MINIMAL}[[routes]]\npath_prefix = \"orders\"\nenvironment = \"prod\"\ndeployment = \"orders\"\n"
        );
        let err = Config::parse(&text).unwrap_err();
        assert!(
            err.to_string().starts_with("routes[0].path_prefix"),
            "{err}"
        );
    }

    #[test]
    fn bad_bootstrap_admin_names_the_index() {
        let err =
            Config::parse("[iam]\nproject = \"demo\"\nbootstrap_admins = [\"ops\"]\n").unwrap_err();
        assert!(
            err.to_string().starts_with("iam.bootstrap_admins[0]"),
            "{err}"
        );
    }

    #[test]
    fn postgres_store_urls_are_checked_and_never_echoed() {
        let ok = Config::parse(
            "[iam]\nproject = \"demo\"\nstore = \"postgresql://app:pw@db:5432/iam?sslmode=verify-full\"\nmax_staleness = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(ok.iam.max_staleness, Duration::from_secs(30));
        let err = Config::parse(
            "[iam]\nproject = \"demo\"\nstore = \"postgres://app:hunter2@db/iam?sslmode=maybe\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("iam.store"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn jwks_uri_must_be_a_url() {
        let text = format!("{MINIMAL}[[token.jwt]]\nissuer = \"x\"\njwks_uri = \"nope\"\n");
        let err = Config::parse(&text).unwrap_err();
        assert!(
            err.to_string().starts_with("token.jwt[0].jwks_uri"),
            "{err}"
        );
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
[server]
extauthz_addr = "127.0.0.1:9001"
admin_addr    = "127.0.0.1:9002"
check_deadline = "150ms"
[iam]
project = "demo-project"
store = "./verifyiam-data"
bootstrap_admins = ["user:ops@example.com"]
[token]
required_scope = "https://www.googleapis.com/auth/cloud-platform"
[[token.jwt]]
issuer = "https://accounts.google.com"
jwks_uri = "https://www.googleapis.com/oauth2/v3/certs"
audiences = []
[token.google_service_accounts]
jwks_uri_template = "https://www.googleapis.com/service_accounts/v1/metadata/jwk/{email}"
[token.tokeninfo]
url = "https://oauth2.googleapis.com/tokeninfo"
[[routes]]
host = "api.example.com"
path_prefix = "/orders"
environment = "prod"
deployment = "orders"
"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.token.jwt[0].issuer, "https://accounts.google.com");
    }

    #[test]
    fn groups_and_strict_deployments_parse_with_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert!(!c.iam.strict_deployments);
        assert!(c.iam.groups.is_empty());
        let text = "[iam]\nproject = \"demo\"\nstrict_deployments = true\n\
                    [[iam.groups]]\nemail = \"ops@example.com\"\nmembers = [\"user:a@example.com\"]\n";
        let c = Config::parse(text).unwrap();
        assert!(c.iam.strict_deployments);
        assert_eq!(c.iam.groups[0].members, ["user:a@example.com"]);
    }

    #[test]
    fn bad_group_member_names_the_field() {
        let text = "[iam]\nproject = \"demo\"\n[[iam.groups]]\nemail = \"ops@example.com\"\n\
                    members = [\"user:a@example.com\", \"domain:example.com\"]\n";
        let err = Config::parse(text).unwrap_err();
        assert!(
            err.to_string().starts_with("iam.groups[0].members[1]"),
            "{err}"
        );
        let text = "[iam]\nproject = \"demo\"\n[[iam.groups]]\nemail = \"ops\"\n";
        let err = Config::parse(text).unwrap_err();
        assert!(err.to_string().starts_with("iam.groups[0].email"), "{err}");
    }

    /// `{:?}` of a configuration never shows a password or a client secret.
    #[test]
    fn debug_output_holds_no_secret() {
        let config = Config::parse(
            "[iam]\nproject = \"p\"\nstore = \"postgres://app:s3cret-pw@db.example:5432/iam\"\n\
             [token.introspection]\nurl = \"https://auth.example/introspect\"\n\
             client_id = \"verifyiam\"\nclient_secret = \"hunter2-secret\"\n",
        )
        .unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        // What is not secret is still there to debug with.
        assert!(shown.contains("app@db.example:5432/iam"), "{shown}");
        assert!(shown.contains("verifyiam"), "{shown}");
    }
}
