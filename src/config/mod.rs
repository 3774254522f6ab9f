//! The one typed configuration: loaded from TOML, defaults filled in, validated at start.
//!
//! Unknown keys are errors (serde's `deny_unknown_fields`), and every error names the field it
//! is about in one form — a dotted path with 0-based indices, `routes[1].environment` — and, for
//! a value, shows a valid one from the complete example ([`EXAMPLE`]), so a bad file fails fast
//! with a message an operator can act on.

mod authz;
mod backend;
mod example;
mod iam;
mod routes;
mod server;
mod token;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use authz::{AuthzConfig, AuthzMode};
pub use backend::{
    BackendAuthConfig, BackendTokenSource, GOOGLE_TOKEN_URL, METADATA_URL, metadata_base,
};
pub use example::EXAMPLE;
pub use iam::{GroupConfig, IamConfig};
pub use routes::RouteConfig;
pub use server::{OnDependencyFailure, ServerConfig, TlsConfig};
pub use token::{
    DevIssuerConfig, FederationConfig, IntrospectionConfig, JwtIssuerConfig, ServiceAccountsConfig,
    TokenConfig, TokeninfoConfig,
};

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
    /// The TOML did not parse, or a key is missing, unknown or has the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A TLS file named by the configuration is missing or unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A value parsed but is not acceptable.
    #[error("{field}: {reason}{hint}", hint = example::hint(field))]
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
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| parse_error(text, "", &e))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            parse_error(text, &path, e.inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that parsed but may still be wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.iam.validate()?;
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

/// A TOML or type error as `path: problem (line N)`, with a valid example for a value: a missing
/// key is named by its own path (`routes[1].environment: missing`), not by its table's.
fn parse_error(text: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim();
    let line = e
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default();
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let (path, problem, hint) = if let Some(key) = quoted("missing field `") {
        let path = join(&key);
        let hint = example::hint(&path);
        (path, "missing (required)".to_owned(), hint)
    } else if let Some(key) = quoted("unknown field `") {
        // serde names the known keys after the unknown one.
        let known = message
            .split_once(", expected ")
            .map(|(_, k)| format!(": expected {k}"))
            .unwrap_or_default();
        let path = if path.ends_with(&key) {
            path.to_owned()
        } else {
            join(&key)
        };
        (path, format!("unknown key{known}"), String::new())
    } else if path.is_empty() {
        return ConfigError::Parse(format!("{message}{line}"));
    } else {
        (path.to_owned(), message.to_owned(), example::hint(path))
    };
    ConfigError::Parse(format!("{path}: {problem}{line}{hint}"))
}

/// A resource-name segment: what Apigee accepts for organization, environment and API names.
pub(crate) fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn check_segment(field: &str, value: &str) -> Result<(), ConfigError> {
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
    use std::time::Duration;

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
    fn the_tombstone_horizon_defaults_to_seven_days_and_is_at_least_a_minute() {
        let c = Config::parse("[iam]\nproject = \"demo\"\n").unwrap();
        assert_eq!(c.iam.tombstone_horizon, Duration::from_secs(7 * 24 * 3600));
        let c = Config::parse("[iam]\nproject = \"demo\"\ntombstone_horizon = \"2h\"\n").unwrap();
        assert_eq!(c.iam.tombstone_horizon, Duration::from_secs(7200));
        let err = Config::parse("[iam]\nproject = \"demo\"\ntombstone_horizon = \"30s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("iam.tombstone_horizon"), "{err}");
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

    /// Every kind of configuration error names its path in one form (dotted, 0-based indices)
    /// and, for a value, shows a valid one.
    #[test]
    fn every_kind_of_error_names_its_path_and_shows_a_valid_value() {
        let route =
            "[[routes]]\npath_prefix = \"/a\"\nenvironment = \"prod\"\ndeployment = \"a\"\n";
        let cases: &[(&str, &str, &str)] = &[
            // A missing key: its own path, not its table's.
            (
                &format!("{MINIMAL}{route}[[routes]]\npath_prefix = \"/b\"\ndeployment = \"b\"\n"),
                "routes[1].environment: missing (required) (line 7)",
                "e.g. environment = \"prod\"",
            ),
            ("[server]\n", "iam: missing (required)", "[iam] table"),
            // A value of the wrong form: the duration format is shown.
            (
                &format!("[server]\ncheck_deadline = \"fast\"\n{MINIMAL}"),
                "server.check_deadline: invalid value: string \"fast\", expected a duration (line 2)",
                "e.g. check_deadline = \"150ms\" (a duration: a number and a unit, \"150ms\", \"30s\", \"5m\"",
            ),
            (
                &format!("{MINIMAL}max_staleness = 5\n"),
                "iam.max_staleness: invalid type: integer `5`, expected a duration (line 3)",
                "e.g. max_staleness = \"5m\"",
            ),
            (
                &format!("[server]\nadmin_addr = \"nope\"\n{MINIMAL}"),
                "server.admin_addr: invalid socket address syntax (line 2)",
                "e.g. admin_addr = \"127.0.0.1:9002\"",
            ),
            (
                &format!(
                    "{MINIMAL}[[token.jwt]]\nissuer = \"x\"\njwks_uri = \"https://a.example/k\"\naudiences = \"x\"\n"
                ),
                "token.jwt[0].audiences: invalid type: string \"x\", expected a sequence (line 6)",
                "e.g. audiences = [\"https://orders.example.com\"]",
            ),
            // A value that parsed but is not acceptable.
            (
                &format!("[server]\ncheck_deadline = \"0s\"\n{MINIMAL}"),
                "server.check_deadline: must be between 1ms and 10s",
                "e.g. check_deadline = \"150ms\"",
            ),
            (
                &format!("{MINIMAL}[[token.jwt]]\nissuer = \"x\"\njwks_uri = \"nope\"\n"),
                "token.jwt[0].jwks_uri: \"nope\" is not an http(s) URL",
                "e.g. jwks_uri = \"https://www.googleapis.com/oauth2/v3/certs\"",
            ),
            (
                "[iam]\nproject = \"demo\"\nbootstrap_admins = [\"ops\"]\n",
                "iam.bootstrap_admins[0]: invalid member \"ops\"",
                "e.g. \"user:ops@example.com\"",
            ),
            (
                &format!("{MINIMAL}{route}{}", route.replace("\"/a\"", "\"b\"")),
                "routes[1].path_prefix: must start with '/'",
                "e.g. path_prefix = \"/orders\"",
            ),
            // An unknown key: its path and the keys that would be known there.
            (
                "[iam]\nproject = \"demo\"\nprojekt = 1\n",
                "iam.projekt: unknown key: expected one of `project`",
                "(line 3)",
            ),
            // Not TOML at all: where.
            ("[iam\nproject = \"demo\"\n", "unclosed table", "(line 1)"),
        ];
        for (text, starts, contains) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(starts), "{text}\n=> {err}");
            assert!(err.contains(contains), "{text}\n=> {err}");
        }
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
