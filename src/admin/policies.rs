//! IAM policies on the project, an environment or a deployment: `getIamPolicy`,
//! `setIamPolicy` and `testIamPermissions`, with Google's semantics (etags, update masks, the
//! version a reader asks for, conditions refused).

use super::audit::{Change, etag_text};
use super::deployments::deployed_now;
use super::operation::invalid;
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::eval::{Resource, test_permissions};
use crate::iam::policy::{Policy, binding_changes, normalize};
use crate::iam::roles::PermissionSet;
use crate::store::{Draft, StoreError};

/// The permissions that read and write a resource's policy.
fn policy_permissions(resource: &Resource) -> [PermissionSet; 2] {
    match resource {
        Resource::Project { .. } => [
            PermissionSet::PROJECTS_GET_IAM_POLICY,
            PermissionSet::PROJECTS_SET_IAM_POLICY,
        ],
        Resource::Environment { .. } => [
            PermissionSet::ENVIRONMENTS_GET_IAM_POLICY,
            PermissionSet::ENVIRONMENTS_SET_IAM_POLICY,
        ],
        Resource::Deployment { .. } => [
            PermissionSet::DEPLOYMENTS_GET_IAM_POLICY,
            PermissionSet::DEPLOYMENTS_SET_IAM_POLICY,
        ],
    }
}

impl AdminState {
    /// `getIamPolicy`. `requested_version` is the caller's `requestedPolicyVersion` (0 when unset).
    pub async fn get_iam_policy(
        &self,
        caller: &Principal,
        resource: &Resource,
        requested_version: i32,
    ) -> Result<Policy, ApiError> {
        let [get, _] = policy_permissions(resource);
        let op = self.require(caller, resource, get).await?;
        if !matches!(requested_version, 0 | 1 | 3) {
            return Err(ApiError::InvalidArgument(format!(
                "invalid requested policy version {requested_version}: use 0, 1 or 3"
            )));
        }
        Ok(op.snapshot().policy_of(&resource.name()))
    }

    /// The authorization of `setIamPolicy` alone, for transports that check it before decoding.
    pub async fn set_iam_policy_precheck(
        &self,
        caller: &Principal,
        resource: &Resource,
    ) -> Result<(), ApiError> {
        let [_, set] = policy_permissions(resource);
        self.require(caller, resource, set).await.map(drop)
    }

    /// `setIamPolicy`. `policy` `None` (the request `{}`) removes every binding; `update_mask`
    /// may name only `bindings` and `etag`.
    pub async fn set_iam_policy(
        &self,
        caller: &Principal,
        resource: &Resource,
        policy: Option<Policy>,
        update_mask: &[String],
    ) -> Result<Policy, ApiError> {
        let [_, set] = policy_permissions(resource);
        let op = self.require(caller, resource, set).await?;
        if let Some(bad) = update_mask
            .iter()
            .map(|f| f.trim())
            .find(|f| !matches!(*f, "bindings" | "etag" | ""))
        {
            return Err(ApiError::InvalidArgument(format!(
                "update_mask may name only bindings and etag, not {bad:?}"
            )));
        }
        let policy = policy.unwrap_or_default();
        let expected = policy.etag.clone();
        let name = resource.name();
        let is_deployment = matches!(resource, Resource::Deployment { .. });
        let strict = self.strict_deployments;
        let change = move |draft: &mut Draft<'_>| {
            // Validated against the roles of this very snapshot, so a custom role deleted
            // concurrently cannot slip into a stored policy.
            let policy = normalize(policy, draft.current.catalog()).map_err(invalid)?;
            if is_deployment {
                match draft.current.deployment(&name) {
                    Some(d) if d.deployed => {}
                    _ if strict => {
                        return Err(ApiError::NotFound(format!(
                            "Deployment '{name}' is not deployed: deploy it before setting its \
                             policy (iam.strict_deployments is on)."
                        )));
                    }
                    // Not strict: a deployment comes into being when a policy is set on it.
                    _ => draft.put_deployment(&name, deployed_now(None, false)),
                }
            }
            let old = draft.current.policy_of(&name);
            if let Some(expected) = expected {
                if old.etag.as_ref() != Some(&expected) {
                    return Err(ApiError::from(StoreError::Aborted));
                }
            }
            let stored = draft.put_policy(&name, policy);
            Ok((old, stored))
        };
        let (_, stored) = op
            .write("setIamPolicy", change, |(old, stored)| {
                let (added, removed) = binding_changes(old, stored);
                Some(Change {
                    resource: resource.name(),
                    old_etag: etag_text(old.etag.as_ref()),
                    new_etag: etag_text(stored.etag.as_ref()),
                    added,
                    removed,
                })
            })
            .await?;
        Ok(stored)
    }

    /// `testIamPermissions`: the subset of `permissions` the caller holds; needs no permission.
    pub async fn test_iam_permissions(
        &self,
        caller: &Principal,
        resource: &Resource,
        permissions: &[String],
    ) -> Result<Vec<String>, ApiError> {
        // No permission needed, but never an answer from a stale snapshot.
        let snapshot = self.load().await?;
        if !self.is_ours(resource) {
            return Ok(Vec::new());
        }
        test_permissions(
            &**snapshot,
            &self.project,
            resource,
            &caller.members,
            permissions,
        )
        .map_err(invalid)
    }
}
