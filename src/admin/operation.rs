//! The steps every management operation shares, written once: load the state (the current
//! snapshot, refused with 503 while the store is not fresh), require the caller's permission on
//! a resource in it, and — for a write — run the change in the store's writer's turn, where the
//! permission is checked again against the state the write commits on, and record it in the
//! audit log. An operation then reads as "require this permission, then act":
//!
//! ```text
//! let op = self.require(caller, resource, PermissionSet::DEPLOYMENTS_UPDATE).await?;
//! op.write("updateDeployment", move |draft| …, |result| Some(Change { … })).await
//! ```
//!
//! The first check answers early from the snapshot; the second, inside the write, is the one
//! that counts: a revoke committed while the write waited for its turn refuses it.

use std::sync::Arc;

use arc_swap::Guard;

use super::audit::{AuditEvent, Change};
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::eval::{Resource, held};
use crate::iam::roles::PermissionSet;
use crate::store::{Draft, READ_BARRIER_DEADLINE, Snapshot};

/// What an operation needs: `permission` on `resource`, for the caller's members. It owns what
/// it needs, so a write's closure can take it along and hold it against the state it writes.
#[derive(Clone)]
pub(super) struct Requirement {
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
    pub(super) fn held(&self, state: &Snapshot) -> PermissionSet {
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
    pub(super) async fn require<'a>(
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
        let snapshot = self.load().await?;
        requirement.check(&snapshot)?;
        Ok(Operation {
            admin: self,
            caller,
            snapshot,
            requirement,
        })
    }

    /// The current state, for an operation to read: refused with 503 `UNAVAILABLE` while the
    /// store is not fresh (not loaded yet, or — PostgreSQL — not heard from the database within
    /// `iam.max_staleness`), as Checks are, so no admin answer comes from a stale snapshot.
    /// First the read barrier: the snapshot is brought up to every write the database had
    /// committed when the read began, whichever replica acknowledged it (read-your-writes on
    /// every replica); past [`READ_BARRIER_DEADLINE`] the read answers 503, never stale.
    pub(super) async fn load(&self) -> Result<Guard<Arc<Snapshot>>, ApiError> {
        if self.store.is_loaded()
            && let Err(e) = self.store.read_barrier(READ_BARRIER_DEADLINE).await
        {
            tracing::warn!(error = %e, "admin read barrier failed");
            return Err(ApiError::Unavailable(format!(
                "the policy store could not be confirmed current: {e}; retry later"
            )));
        }
        if self.store.is_fresh() {
            return Ok(self.store.snapshot());
        }
        Err(ApiError::Unavailable(if self.store.is_loaded() {
            "the policy store is stale: this replica has not heard from the database within \
             iam.max_staleness; retry later"
                .to_owned()
        } else {
            "the policy store has not loaded yet; retry later".to_owned()
        }))
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

    /// What the operation requires, for a write's `change` to judge more against
    /// `draft.current` (a role write's "no wider than its author").
    pub(super) fn requirement(&self) -> Requirement {
        self.requirement.clone()
    }

    /// Runs `change` in the store's writer's turn, on `draft.current` (the newest state), and
    /// returns its result once it is durable; then logs what `audit` says it changed as
    /// `action` (nothing, when it says `None`). The caller's permission is checked again first,
    /// against `draft.current`: refused there, nothing is written. An error from `change`
    /// writes nothing either.
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
        let requirement = self.requirement;
        let written = self
            .admin
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                // The writer's turn: `draft.current` is the state this write commits on, and
                // the caller must hold the permission in it, whatever committed meanwhile.
                requirement.check(draft.current)?;
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::authn::Authenticator;
    use crate::config::TokenConfig;
    use crate::iam::policy::{Binding, Policy};
    use crate::store::PolicyStore;

    const OWNER: &str = "ops@example.com";
    const MALLORY: &str = "mallory@example.com";

    /// The admin operations over an embedded store in `dir`, `owner` its bootstrap owner.
    pub(in crate::admin) fn admin(dir: &std::path::Path, owner: &str) -> AdminState {
        let store = PolicyStore::open(dir, "p", &[format!("user:{owner}")]).unwrap();
        AdminState {
            store: Arc::new(store),
            authenticator: Arc::new(Authenticator::new(
                &TokenConfig::default(),
                reqwest::Client::new(),
                Vec::new(),
            )),
            project: "p".into(),
            organization: "p".into(),
            dev_jwks: None,
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            strict_deployments: false,
            route_deployments: Vec::new(),
        }
    }

    fn caller(email: &str) -> Principal {
        Principal {
            id: email.into(),
            key: [0; 32],
            members: vec![
                format!("user:{email}").into(),
                "allAuthenticatedUsers".into(),
                "allUsers".into(),
            ],
            expires_at: u64::MAX,
            has_scope: true,
        }
    }

    fn binding(role: &str, member: &str) -> Policy {
        Policy {
            bindings: vec![Binding {
                role: role.into(),
                members: vec![member.into()],
                condition: None,
            }],
            ..Policy::default()
        }
    }

    /// Mallory's write passes the check on the state she sees; the owner's revoke of her role
    /// commits before her write's turn. The write must be judged on the state it commits on.
    #[tokio::test]
    async fn a_permission_revoked_before_the_writers_turn_refuses_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path(), OWNER);
        let (owner, mallory) = (caller(OWNER), caller(MALLORY));
        let project = admin.project_resource();
        let member = format!("user:{MALLORY}");
        let grant = binding("roles/apigee.admin", &member);
        admin
            .set_iam_policy(&owner, &project, Some(grant), &[])
            .await
            .unwrap();
        let orders = Resource::parse("organizations/p/environments/prod/deployments/orders")
            .expect("a deployment name");
        let op = admin
            .require(&mallory, &orders, PermissionSet::DEPLOYMENTS_SET_IAM_POLICY)
            .await
            .expect("mallory holds roles/apigee.admin");
        admin
            .set_iam_policy(&owner, &project, None, &[])
            .await
            .unwrap();
        let (name, self_grant) = (
            orders.name(),
            binding("roles/apigee.deploymentInvoker", &member),
        );
        let written = op
            .write(
                "setIamPolicy",
                move |draft: &mut Draft<'_>| {
                    draft.put_policy(&name, self_grant);
                    Ok(())
                },
                |_| None,
            )
            .await;
        assert!(
            matches!(written, Err(ApiError::PermissionDenied(_))),
            "{written:?}"
        );
        assert!(admin.store.snapshot().entry(&orders.name()).is_none());
    }

    /// Lets every task that can run go as far as it can (the runtime is single-threaded).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The same race through the operations themselves, queued in order on the writer's turn:
    /// the owner's revoke of carol's `roles/apigee.admin`, then carol's creation of a role with
    /// an Apigee permission. She still holds `roles/iam.roleAdmin`, so the role is refused by
    /// the "no wider than its author" rule, judged on the state the write commits on.
    #[tokio::test]
    async fn a_role_no_wider_than_its_author_is_judged_on_the_state_it_commits_on() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Arc::new(admin(dir.path(), OWNER));
        let owner = caller(OWNER);
        let project = admin.project_resource();
        let carol = "user:carol@example.com";
        let both = Policy {
            bindings: vec![
                binding("roles/apigee.admin", carol).bindings.remove(0),
                binding("roles/iam.roleAdmin", carol).bindings.remove(0),
            ],
            ..Policy::default()
        };
        admin
            .set_iam_policy(&owner, &project, Some(both), &[])
            .await
            .unwrap();
        let turn = admin.store.writer_turn().await.expect("an embedded store");
        let revoke = tokio::spawn({
            let (admin, project) = (admin.clone(), project.clone());
            let only_roles = binding("roles/iam.roleAdmin", carol);
            async move {
                admin
                    .set_iam_policy(&caller(OWNER), &project, Some(only_roles), &[])
                    .await
            }
        });
        settle().await;
        let create = tokio::spawn({
            let admin = admin.clone();
            async move {
                let fields = super::super::roles::RoleFields {
                    included_permissions: Some(vec!["apigee.deployments.get".into()]),
                    ..Default::default()
                };
                admin
                    .create_role(&caller("carol@example.com"), "p", "reader", fields)
                    .await
            }
        });
        settle().await;
        drop(turn);
        revoke.await.unwrap().expect("the owner's revoke");
        let created = create.await.unwrap();
        assert!(
            matches!(&created, Err(ApiError::PermissionDenied(m)) if m.contains("its author holds")),
            "{created:?}"
        );
        assert!(
            admin
                .store
                .snapshot()
                .role("projects/p/roles/reader")
                .is_none()
        );
    }
}
