//! `[authz]`: where invoke decisions come from (the local store or Google IAM) and how long they
//! are cached.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_url, invalid};

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

impl AuthzConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
