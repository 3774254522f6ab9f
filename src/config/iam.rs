//! `[iam]`: the project, the policy store, the bootstrap administrators and the groups set from
//! configuration.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_segment, invalid};
use crate::iam::member::Member;

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
    /// PostgreSQL store: deletions (kept as tombstone rows so replicas catching up see them)
    /// older than this are pruned; a replica away for longer reloads everything on its return.
    #[serde(default = "default_tombstone_horizon", with = "humantime_serde")]
    pub tombstone_horizon: Duration,
    /// Members that always hold `roles/owner` on the project.
    #[serde(default)]
    pub bootstrap_admins: Vec<String>,
    /// Only deployed APIs accept policies and may be allowed (default: a deployment also comes
    /// into being when a policy is set on it or a route names it).
    #[serde(default)]
    pub strict_deployments: bool,
    /// Group memberships applied at start (`[[iam.groups]]`): the configuration is the single
    /// source of the groups it names (the admin API refuses to change them), and a start that
    /// changes one is audited.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// `[[iam.groups]]`: a group whose membership is set from configuration at start, and only
/// there: keep it the same on every replica.
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

    /// The names, the store location, the staleness bound and every member.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_segment("iam.project", &self.project)?;
        if let Some(org) = &self.organization {
            check_segment("iam.organization", org)?;
        }
        if self.store.as_os_str().is_empty() {
            return Err(invalid("iam.store", "must be a directory path"));
        }
        let store = self.store.to_string_lossy();
        if crate::store::PgUrl::is_postgres(&store) {
            crate::store::PgUrl::parse(&store).map_err(|e| invalid("iam.store", e))?;
        }
        if self.tombstone_horizon < Duration::from_secs(60) {
            return Err(invalid("iam.tombstone_horizon", "must be at least 1m"));
        }
        if self.max_staleness < Duration::from_secs(1) {
            return Err(invalid("iam.max_staleness", "must be at least 1s"));
        }
        for (i, m) in self.bootstrap_admins.iter().enumerate() {
            Member::parse(m)
                .map_err(|e| invalid(format!("iam.bootstrap_admins[{i}]"), e.to_string()))?;
        }
        let mut seen_groups = HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
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
        Ok(())
    }
}

fn default_store() -> PathBuf {
    PathBuf::from("./verifyiam-data")
}

fn default_tombstone_horizon() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_max_staleness() -> Duration {
    Duration::from_secs(300)
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
            .field("tombstone_horizon", &self.tombstone_horizon)
            .field("bootstrap_admins", &self.bootstrap_admins)
            .field("strict_deployments", &self.strict_deployments)
            .field("groups", &self.groups)
            .finish()
    }
}
