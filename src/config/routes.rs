//! `[[routes]]`: host and path → deployment, for requests Envoy sends without
//! `context_extensions`.

use serde::Deserialize;

use super::{ConfigError, check_segment, invalid};

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

impl RouteConfig {
    pub(super) fn validate(&self, field: &str) -> Result<(), ConfigError> {
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
