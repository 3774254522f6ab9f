//! Apigee's deployments as verifyiam keeps them: list, describe, deploy, undeploy (which deletes
//! the deployment's policy in the same write) and update (`continueOnError`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::audit::{Change, etag_text};
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::eval::Resource;
use crate::iam::policy::{Policy, binding_changes};
use crate::iam::roles::PermissionSet;
use crate::store::{Deployment, Draft, Snapshot};

/// A deployment as the admin API shows it (Apigee's `Deployment` fields verifyiam keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// `organizations/{o}/environments/{e}/deployments/{api}`.
    pub name: String,
    /// The environment.
    pub environment: String,
    /// The API proxy (the deployment's name).
    pub api_proxy: String,
    /// The deployed revision; absent for a deployment that came into being implicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Milliseconds since the epoch, as a string (as Apigee prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_start_time: Option<String>,
    /// Always `READY`.
    pub state: String,
    /// Denied Checks go on to the backend, marked.
    pub continue_on_error: bool,
}

impl AdminState {
    /// Whether a deployment exists: deployed, or (unless strict) holding a policy or named by a
    /// route without having been undeployed.
    fn exists(&self, snapshot: &Snapshot, name: &str) -> bool {
        match snapshot.deployment(name) {
            Some(d) => d.deployed,
            None => {
                !self.strict_deployments
                    && (snapshot.entry(name).is_some()
                        || self.route_deployments.iter().any(|r| r == name))
            }
        }
    }

    fn view(snapshot: &Snapshot, resource: &Resource) -> DeploymentView {
        let name = resource.name();
        let (environment, api) = match resource {
            Resource::Deployment {
                environment,
                deployment,
                ..
            } => (environment.clone(), deployment.clone()),
            _ => (String::new(), String::new()),
        };
        let record = snapshot.deployment(&name);
        DeploymentView {
            name,
            environment,
            api_proxy: api,
            revision: record.and_then(|d| d.revision.clone()),
            deploy_start_time: record
                .filter(|d| d.deploy_start_time > 0)
                .map(|d| d.deploy_start_time.to_string()),
            state: "READY".to_owned(),
            continue_on_error: record.is_some_and(|d| d.continue_on_error),
        }
    }

    /// Lists an environment's deployments (`apigee.deployments.list`), by API name.
    pub async fn list_deployments(
        &self,
        caller: &Principal,
        organization: &str,
        environment: &str,
    ) -> Result<Vec<DeploymentView>, ApiError> {
        let env = Resource::Environment {
            organization: organization.to_owned(),
            environment: environment.to_owned(),
        };
        let op = self
            .require(caller, &env, PermissionSet::DEPLOYMENTS_LIST)
            .await?;
        let snapshot = op.snapshot();
        let prefix = format!("{}/deployments/", env.name());
        let mut names: Vec<&str> = snapshot
            .deployments()
            .map(|(n, _)| n)
            .chain(snapshot.entries().map(|(n, _)| n))
            .chain(self.route_deployments.iter().map(String::as_str))
            .filter(|n| n.starts_with(&prefix))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names
            .into_iter()
            .filter(|n| self.exists(snapshot, n))
            .filter_map(Resource::parse)
            .map(|r| Self::view(snapshot, &r))
            .collect())
    }

    /// Describes one deployment (`apigee.deployments.get`).
    pub async fn describe_deployment(
        &self,
        caller: &Principal,
        resource: &Resource,
    ) -> Result<DeploymentView, ApiError> {
        let op = self
            .require(caller, resource, PermissionSet::DEPLOYMENTS_GET)
            .await?;
        if !self.exists(op.snapshot(), &resource.name()) {
            return Err(not_deployed(resource));
        }
        Ok(Self::view(op.snapshot(), resource))
    }

    /// Deploys a revision (`apigee.deployments.create`). A deployment that was undeployed starts
    /// again with no policy; `continue_on_error` `None` keeps the current setting.
    pub async fn deploy(
        &self,
        caller: &Principal,
        resource: &Resource,
        revision: &str,
        continue_on_error: Option<bool>,
    ) -> Result<DeploymentView, ApiError> {
        let op = self
            .require(caller, resource, PermissionSet::DEPLOYMENTS_CREATE)
            .await?;
        let revision = check_revision(revision)?;
        let name = resource.name();
        let change = move |draft: &mut Draft<'_>| {
            let old = draft.current.deployment(&name).cloned();
            let keep = old
                .as_ref()
                .filter(|d| d.deployed)
                .is_some_and(|d| d.continue_on_error);
            let new = deployed_now(Some(revision), continue_on_error.unwrap_or(keep));
            draft.put_deployment(&name, new.clone());
            Ok((old, new))
        };
        op.write("deploy", change, |(old, new)| {
            Some(Change {
                resource: resource.name(),
                old_etag: old
                    .as_ref()
                    .filter(|d| d.deployed)
                    .map(|d| format!("revision {}", d.revision.as_deref().unwrap_or_default()))
                    .unwrap_or_default(),
                new_etag: format!("revision {}", new.revision.as_deref().unwrap_or_default()),
                ..Change::default()
            })
        })
        .await?;
        Ok(Self::view(&self.store.snapshot(), resource))
    }

    /// Undeploys a revision (`apigee.deployments.delete`): the deployment's policy is deleted in
    /// the same write, and Checks on it are denied until it is deployed again.
    pub async fn undeploy(
        &self,
        caller: &Principal,
        resource: &Resource,
        revision: &str,
    ) -> Result<DeploymentView, ApiError> {
        let op = self
            .require(caller, resource, PermissionSet::DEPLOYMENTS_DELETE)
            .await?;
        let revision = check_revision(revision)?;
        let view = Self::view(op.snapshot(), resource);
        let name = resource.name();
        let strict = self.strict_deployments;
        let routes = self.route_deployments.clone();
        let res = resource.clone();
        let change = move |draft: &mut Draft<'_>| {
            let current = draft.current;
            match current.deployment(&name) {
                Some(d) if d.deployed => {
                    if let Some(deployed) = d.revision.as_deref().filter(|r| *r != revision) {
                        return Err(ApiError::NotFound(format!(
                            "revision {revision} of {name} is not deployed (revision {deployed} is)"
                        )));
                    }
                }
                Some(_) => return Err(not_deployed(&res)),
                None => {
                    let implicit =
                        !strict && (current.entry(&name).is_some() || routes.contains(&name));
                    if !implicit {
                        return Err(not_deployed(&res));
                    }
                }
            }
            let old = current.entry(&name).map(|e| e.policy.clone());
            if old.is_some() {
                draft.delete_policy(&name);
            }
            draft.put_deployment(
                &name,
                Deployment {
                    deployed: false,
                    revision: None,
                    continue_on_error: false,
                    deploy_start_time: 0,
                },
            );
            Ok(old)
        };
        op.write("undeploy", change, |removed_policy| {
            Some(Change {
                resource: resource.name(),
                old_etag: etag_text(removed_policy.as_ref().and_then(|p| p.etag.as_ref())),
                removed: removed_policy
                    .as_ref()
                    .map(|p| binding_changes(p, &Policy::default()).1)
                    .unwrap_or_default(),
                ..Change::default()
            })
        })
        .await?;
        Ok(view)
    }

    /// Changes a deployment's settings (`apigee.deployments.update`): `continueOnError`.
    pub async fn update_deployment(
        &self,
        caller: &Principal,
        resource: &Resource,
        continue_on_error: bool,
    ) -> Result<DeploymentView, ApiError> {
        let op = self
            .require(caller, resource, PermissionSet::DEPLOYMENTS_UPDATE)
            .await?;
        if !self.exists(op.snapshot(), &resource.name()) {
            return Err(not_deployed(resource));
        }
        let name = resource.name();
        let res = resource.clone();
        let change = move |draft: &mut Draft<'_>| {
            let old = draft.current.deployment(&name).cloned();
            let mut new = match &old {
                Some(d) if d.deployed => d.clone(),
                Some(_) => return Err(not_deployed(&res)),
                None => deployed_now(None, false),
            };
            new.continue_on_error = continue_on_error;
            draft.put_deployment(&name, new);
            Ok(old)
        };
        op.write("updateDeployment", change, |old| {
            Some(Change {
                resource: resource.name(),
                old_etag: format!(
                    "continueOnError={}",
                    old.as_ref().is_some_and(|d| d.continue_on_error)
                ),
                new_etag: format!("continueOnError={continue_on_error}"),
                ..Change::default()
            })
        })
        .await?;
        Ok(Self::view(&self.store.snapshot(), resource))
    }
}

/// A deployment deployed now: with `revision`, or none when it comes into being implicitly.
pub(super) fn deployed_now(revision: Option<String>, continue_on_error: bool) -> Deployment {
    Deployment {
        deployed: true,
        revision,
        continue_on_error,
        deploy_start_time: now_millis(),
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn not_deployed(resource: &Resource) -> ApiError {
    ApiError::NotFound(format!("Deployment '{}' is not deployed.", resource.name()))
}

/// A revision is a positive decimal number, as Apigee numbers them.
fn check_revision(revision: &str) -> Result<String, ApiError> {
    let ok = !revision.is_empty()
        && revision.len() <= 10
        && revision.bytes().all(|b| b.is_ascii_digit())
        && revision.parse::<u64>().is_ok_and(|n| n > 0);
    if ok {
        Ok(revision.to_owned())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid revision {revision:?}: a revision is a positive number such as 1"
        )))
    }
}

/// Parses a boolean flag (`true` or `false`), naming the field when it is neither.
pub fn check_bool(field: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ApiError::InvalidArgument(format!(
            "invalid value {other:?} for {field}: use true or false"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_and_flags_refuse_bad_values_clearly() {
        assert_eq!(check_revision("12").ok().as_deref(), Some("12"));
        for bad in ["0", "", "-1", "1.0", "latest", "99999999999"] {
            let e = check_revision(bad).unwrap_err();
            assert!(e.to_string().contains("invalid revision"), "{bad}: {e}");
        }
        assert_eq!(check_bool("f", "true").ok(), Some(true));
        assert!(
            check_bool("f", "yes")
                .unwrap_err()
                .to_string()
                .contains("f")
        );
    }
}
