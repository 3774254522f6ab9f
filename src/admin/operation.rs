//! The steps every management operation shares, written once: load the state (the current
//! snapshot), require the caller's permission on a resource in it, and — for a write — run the
//! change in the store's writer's turn and record it in the audit log. An operation then reads
//! as "require this permission, then act":
//!
//! ```text
//! let op = self.require(caller, resource, PermissionSet::DEPLOYMENTS_UPDATE)?;
//! op.write("updateDeployment", move |draft| …, |result| Some(Change { … })).await
//! ```

use std::sync::Arc;

use arc_swap::Guard;

use super::audit::{AuditEvent, Change};
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::eval::{Resource, held};
use crate::iam::roles::PermissionSet;
use crate::store::{Draft, Snapshot};

/// What an operation needs: `permission` on `resource`, for the caller's members. It owns what
/// it needs, so a write's closure can take it along and hold it against the state it writes.
struct Requirement {
    /// This instance's project, whose policy reaches every resource.
    project: String,
    /// Whether `resource` is one this instance manages; nothing is granted on any other.
    ours: bool,
    resource: Resource,
    permission: PermissionSet,
    members: Vec<Box<str>>,
}

impl Requirement {
    /// What the members hold on the resource in `state`.
    fn held(&self, state: &Snapshot) -> PermissionSet {
        held(state, &self.project, &self.resource, &self.members)
    }

    /// Refuses unless the members hold the permission on the resource in `state`.
    fn check(&self, state: &Snapshot) -> Result<(), ApiError> {
        if self.ours && self.held(state).contains(self.permission) {
            Ok(())
        } else {
            // One permission at a time: its name is the set's only member.
            let name = self.permission.iter().next().unwrap_or("(none)");
            Err(denied(name, &self.resource.name()))
        }
    }
}

/// An operation whose caller holds the permission it needs in [`Operation::snapshot`].
pub(super) struct Operation<'a> {
    admin: &'a AdminState,
    caller: &'a Principal,
    snapshot: Guard<Arc<Snapshot>>,
    requirement: Requirement,
}

impl AdminState {
    /// Loads the current state and refuses unless `caller` holds `permission` on `resource` in
    /// it: the first step of every operation that needs a permission.
    pub(super) fn require<'a>(
        &'a self,
        caller: &'a Principal,
        resource: &Resource,
        permission: PermissionSet,
    ) -> Result<Operation<'a>, ApiError> {
        let requirement = Requirement {
            project: self.project.clone(),
            ours: self.is_ours(resource),
            resource: resource.clone(),
            permission,
            members: caller.members.clone(),
        };
        let snapshot = self.store.snapshot();
        requirement.check(&snapshot)?;
        Ok(Operation {
            admin: self,
            caller,
            snapshot,
            requirement,
        })
    }

    /// Whether a resource is one this instance manages (its project, its organization, valid names).
    pub(super) fn is_ours(&self, resource: &Resource) -> bool {
        Resource::parse(&resource.name()).is_some()
            && match resource {
                Resource::Project { project } => *project == self.project,
                Resource::Environment { organization, .. }
                | Resource::Deployment { organization, .. } => *organization == self.organization,
            }
    }

    /// This instance's project.
    pub(super) fn project_resource(&self) -> Resource {
        Resource::Project {
            project: self.project.clone(),
        }
    }
}

impl Operation<'_> {
    /// The state the permission was checked in.
    pub(super) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Everything the caller holds on the resource, in [`Operation::snapshot`].
    pub(super) fn held(&self) -> PermissionSet {
        self.requirement.held(&self.snapshot)
    }

    /// Runs `change` in the store's writer's turn, on `draft.current` (the newest state), and
    /// returns its result once it is durable; then logs what `audit` says it changed as
    /// `action` (nothing, when it says `None`). An error from `change` writes nothing.
    pub(super) async fn write<T, F, A>(
        self,
        action: &'static str,
        change: F,
        audit: A,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Draft<'_>) -> Result<T, ApiError> + Send + 'static,
        A: FnOnce(&T) -> Option<Change>,
    {
        // Not held across the write: the writer works on its own, newer state.
        drop(self.snapshot);
        let written = self
            .admin
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                // The writer's turn: `draft.current` is the state this write commits on.
                change(draft)
            })
            .await?;
        if let Some(change) = audit(&written) {
            AuditEvent::new(self.caller, action, change).log();
        }
        Ok(written)
    }
}

/// The refusal of a permission, in Google's words (existence is not leaked).
fn denied(permission: &str, resource: &str) -> ApiError {
    ApiError::PermissionDenied(format!(
        "Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
    ))
}

/// A request value the model refuses, as `INVALID_ARGUMENT` with the model's message.
pub(super) fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}
