//! `[server]`: the two listeners, their limits and TLS, and the Check deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

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

impl ServerConfig {
    /// The deadline, the addresses, the listener limits, and the TLS files.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let d = self.check_deadline;
        if d.is_zero() || d > Duration::from_secs(10) {
            return Err(invalid(
                "server.check_deadline",
                "must be between 1ms and 10s (Envoy's default ext_authz timeout is 200ms)",
            ));
        }
        if self.extauthz_addr == self.admin_addr && self.extauthz_addr.port() != 0 {
            return Err(invalid(
                "server.admin_addr",
                "must differ from server.extauthz_addr",
            ));
        }
        self.validate_limits()?;
        if let Some(tls) = &self.tls {
            crate::tls::check(tls, "server.tls")?;
        }
        if let Some(tls) = &self.admin_tls {
            crate::tls::check(tls, "server.admin_tls")?;
        }
        Ok(())
    }

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
