//! `[backend_auth]`: where the gateway's ID tokens for its backends come from.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, TokenConfig, check_url, invalid};

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

    pub(super) fn validate(&self, token: &TokenConfig) -> Result<(), ConfigError> {
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
