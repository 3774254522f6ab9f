//! The management operations, transport-neutral: IAM policies, deployments, custom roles and
//! groups, each with its authorization, validation and audit event. The REST handlers
//! ([`super::rest`]) and the google.iam.v1 gRPC service ([`super::grpc`]) only decode a request,
//! call one of these and encode the answer, so both surfaces share semantics and errors.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::config::GroupConfig;
use crate::iam::custom::{CustomRole, RoleStage, check_permissions, check_role_id};
use crate::iam::eval::{Resource, held, test_permissions};
use crate::iam::member::Member;
use crate::iam::policy::{Etag, Policy, binding_changes, normalize};
use crate::iam::roles::PermissionSet;
use crate::store::{Deployment, Draft, Group, PolicyStore, Snapshot, StoreError};

/// The audit log target.
pub const AUDIT_TARGET: &str = "verifyiam::audit";

/// One admin write, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// The caller's principal id.
    pub caller: String,
    /// What was done (`setIamPolicy`, `deploy`, `undeploy`, `createRole`, `addMember`, …).
    pub action: &'static str,
    /// The resource written.
    pub resource: String,
    /// The etag before the write (empty when there was nothing).
    pub old_etag: String,
    /// The etag after the write (empty when the record is gone).
    pub new_etag: String,
    /// Pairs granted by the write: `(role, member)` for policies, `(role, permission)` for
    /// roles, `(group, member)` for groups.
    pub added: Vec<(String, String)>,
    /// Pairs taken away by the write, in the same form.
    pub removed: Vec<(String, String)>,
}

impl AuditEvent {
    /// Logs the event as one structured event on [`AUDIT_TARGET`].
    pub fn log(&self) {
        let pairs = |p: &[(String, String)]| serde_json::to_string(p).unwrap_or_default();
        tracing::info!(
            target: AUDIT_TARGET,
            // Escaped, so a caller id can never forge a line of a text log.
            caller = %self.caller.escape_debug(),
            action = self.action,
            resource = %self.resource,
            old_etag = %self.old_etag,
            new_etag = %self.new_etag,
            added = %pairs(&self.added),
            removed = %pairs(&self.removed),
            "admin write"
        );
    }
}

fn etag_text(e: Option<&Etag>) -> String {
    e.map(ToString::to_string).unwrap_or_default()
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn denied(permission: &str, resource: &str) -> ApiError {
    ApiError::PermissionDenied(format!(
        "Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
    ))
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

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

/// A group as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// `groups/{email}`.
    pub name: String,
    /// The group's email.
    pub email: String,
    /// `user:` and `serviceAccount:` members.
    pub members: Vec<String>,
    /// Changes with every write.
    pub etag: Etag,
}

impl GroupView {
    fn new(email: &str, group: &Group) -> GroupView {
        GroupView {
            name: format!("groups/{email}"),
            email: email.to_owned(),
            members: group.members.clone(),
            etag: group.etag.clone(),
        }
    }
}

/// The fields of a custom role a create or patch carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleFields {
    /// Ignored on input (the name comes from the path); accepted so a read role can be sent back.
    #[serde(default)]
    pub name: Option<String>,
    /// A short title.
    #[serde(default)]
    pub title: Option<String>,
    /// A description.
    #[serde(default)]
    pub description: Option<String>,
    /// The permissions.
    #[serde(default)]
    pub included_permissions: Option<Vec<String>>,
    /// The launch stage.
    #[serde(default)]
    pub stage: Option<RoleStage>,
    /// With it, the write happens only if it is the role's current etag.
    #[serde(default)]
    pub etag: Option<Etag>,
    /// Accepted and ignored (Google's output field).
    #[serde(default)]
    pub deleted: Option<bool>,
}

const ROLE_FIELDS: [&str; 4] = ["title", "description", "includedPermissions", "stage"];

/// Seeds `[[iam.groups]]` from configuration: each listed group's membership becomes exactly the
/// configured members (other groups are left alone). Runs once at start.
pub fn seed_groups(store: &PolicyStore, groups: &[GroupConfig]) -> Result<(), StoreError> {
    if groups.is_empty() {
        return Ok(());
    }
    let mut wanted = Vec::with_capacity(groups.len());
    for g in groups {
        // Config validation already checked these; canonicalise for storage.
        let email = g.email.to_ascii_lowercase();
        let mut members: Vec<String> = g
            .members
            .iter()
            .filter_map(|m| Member::parse(m).ok())
            .map(|m| m.to_string())
            .collect();
        members.sort();
        members.dedup();
        wanted.push((email, members));
    }
    store.seed_at_start(Arc::new(move |draft: &mut Draft<'_>| {
        for (email, members) in &wanted {
            let same = draft
                .current
                .group(email)
                .is_some_and(|g| g.members == *members);
            if !same {
                draft.put_group(email, members.clone());
            }
        }
        Ok(())
    }))
}

impl AdminState {
    /// Whether a resource is one this instance manages (its project, its organization, valid names).
    fn is_ours(&self, resource: &Resource) -> bool {
        Resource::parse(&resource.name()).is_some()
            && match resource {
                Resource::Project { project } => *project == self.project,
                Resource::Environment { organization, .. }
                | Resource::Deployment { organization, .. } => *organization == self.organization,
            }
    }

    fn project_resource(&self) -> Resource {
        Resource::Project {
            project: self.project.clone(),
        }
    }

    /// Refuses unless `caller` holds `permission` on `resource` in `snapshot`.
    fn require(
        &self,
        snapshot: &Snapshot,
        caller: &Principal,
        resource: &Resource,
        permission: PermissionSet,
    ) -> Result<(), ApiError> {
        let ours = self.is_ours(resource);
        if ours && held(snapshot, &self.project, resource, &caller.members).contains(permission) {
            Ok(())
        } else {
            // One permission at a time: its name is the set's only member.
            let name = permission.iter().next().unwrap_or("(none)");
            Err(denied(name, &resource.name()))
        }
    }

    // ---- IAM policies -------------------------------------------------------------------

    /// `getIamPolicy`. `requested_version` is the caller's `requestedPolicyVersion` (0 when unset).
    pub fn get_iam_policy(
        &self,
        caller: &Principal,
        resource: &Resource,
        requested_version: i32,
    ) -> Result<Policy, ApiError> {
        let snapshot = self.store.snapshot();
        let [get, _] = policy_permissions(resource);
        self.require(&snapshot, caller, resource, get)?;
        if !matches!(requested_version, 0 | 1 | 3) {
            return Err(ApiError::InvalidArgument(format!(
                "invalid requested policy version {requested_version}: use 0, 1 or 3"
            )));
        }
        Ok(snapshot.policy_of(&resource.name()))
    }

    /// The authorization of `setIamPolicy` alone, for transports that check it before decoding.
    pub fn set_iam_policy_precheck(
        &self,
        caller: &Principal,
        resource: &Resource,
    ) -> Result<(), ApiError> {
        let snapshot = self.store.snapshot();
        let [_, set] = policy_permissions(resource);
        self.require(&snapshot, caller, resource, set)
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
        {
            let snapshot = self.store.snapshot();
            let [_, set] = policy_permissions(resource);
            self.require(&snapshot, caller, resource, set)?;
        }
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
        let (old, stored) = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
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
                        _ => draft.put_deployment(
                            &name,
                            Deployment {
                                deployed: true,
                                revision: None,
                                continue_on_error: false,
                                deploy_start_time: now_millis(),
                            },
                        ),
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
            })
            .await?;
        let (added, removed) = binding_changes(&old, &stored);
        AuditEvent {
            caller: caller.id.to_string(),
            action: "setIamPolicy",
            resource: resource.name(),
            old_etag: etag_text(old.etag.as_ref()),
            new_etag: etag_text(stored.etag.as_ref()),
            added,
            removed,
        }
        .log();
        Ok(stored)
    }

    /// `testIamPermissions`: the subset of `permissions` the caller holds; needs no permission.
    pub fn test_iam_permissions(
        &self,
        caller: &Principal,
        resource: &Resource,
        permissions: &[String],
    ) -> Result<Vec<String>, ApiError> {
        if !self.is_ours(resource) {
            return Ok(Vec::new());
        }
        let snapshot = self.store.snapshot();
        test_permissions(
            &**snapshot,
            &self.project,
            resource,
            &caller.members,
            permissions,
        )
        .map_err(invalid)
    }

    // ---- deployments --------------------------------------------------------------------

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
    pub fn list_deployments(
        &self,
        caller: &Principal,
        organization: &str,
        environment: &str,
    ) -> Result<Vec<DeploymentView>, ApiError> {
        let env = Resource::Environment {
            organization: organization.to_owned(),
            environment: environment.to_owned(),
        };
        let snapshot = self.store.snapshot();
        self.require(&snapshot, caller, &env, PermissionSet::DEPLOYMENTS_LIST)?;
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
            .filter(|n| self.exists(&snapshot, n))
            .filter_map(Resource::parse)
            .map(|r| Self::view(&snapshot, &r))
            .collect())
    }

    /// Describes one deployment (`apigee.deployments.get`).
    pub fn describe_deployment(
        &self,
        caller: &Principal,
        resource: &Resource,
    ) -> Result<DeploymentView, ApiError> {
        let snapshot = self.store.snapshot();
        self.require(&snapshot, caller, resource, PermissionSet::DEPLOYMENTS_GET)?;
        if !self.exists(&snapshot, &resource.name()) {
            return Err(not_deployed(resource));
        }
        Ok(Self::view(&snapshot, resource))
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
        {
            let snapshot = self.store.snapshot();
            self.require(
                &snapshot,
                caller,
                resource,
                PermissionSet::DEPLOYMENTS_CREATE,
            )?;
        }
        let revision = check_revision(revision)?;
        let name = resource.name();
        let (old, new) = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                let old = draft.current.deployment(&name).cloned();
                let keep = old
                    .as_ref()
                    .filter(|d| d.deployed)
                    .is_some_and(|d| d.continue_on_error);
                let new = Deployment {
                    deployed: true,
                    revision: Some(revision),
                    continue_on_error: continue_on_error.unwrap_or(keep),
                    deploy_start_time: now_millis(),
                };
                draft.put_deployment(&name, new.clone());
                Ok::<_, ApiError>((old, new))
            })
            .await?;
        AuditEvent {
            caller: caller.id.to_string(),
            action: "deploy",
            resource: resource.name(),
            old_etag: old
                .and_then(|d| d.deployed.then_some(d.revision.unwrap_or_default()))
                .map(|r| format!("revision {r}"))
                .unwrap_or_default(),
            new_etag: format!("revision {}", new.revision.clone().unwrap_or_default()),
            added: Vec::new(),
            removed: Vec::new(),
        }
        .log();
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
        let snapshot = self.store.snapshot();
        self.require(
            &snapshot,
            caller,
            resource,
            PermissionSet::DEPLOYMENTS_DELETE,
        )?;
        let revision = check_revision(revision)?;
        let view = Self::view(&snapshot, resource);
        drop(snapshot);
        let name = resource.name();
        let strict = self.strict_deployments;
        let routes = self.route_deployments.clone();
        let res = resource.clone();
        let removed_policy = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
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
                        let implicit = !strict
                            && (current.entry(&name).is_some() || routes.contains(&name));
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
            })
            .await?;
        let removed = removed_policy
            .as_ref()
            .map(|p| binding_changes(p, &Policy::default()).1)
            .unwrap_or_default();
        AuditEvent {
            caller: caller.id.to_string(),
            action: "undeploy",
            resource: resource.name(),
            old_etag: etag_text(removed_policy.as_ref().and_then(|p| p.etag.as_ref())),
            new_etag: String::new(),
            added: Vec::new(),
            removed,
        }
        .log();
        Ok(view)
    }

    /// Changes a deployment's settings (`apigee.deployments.update`): `continueOnError`.
    pub async fn update_deployment(
        &self,
        caller: &Principal,
        resource: &Resource,
        continue_on_error: bool,
    ) -> Result<DeploymentView, ApiError> {
        let snapshot = self.store.snapshot();
        self.require(
            &snapshot,
            caller,
            resource,
            PermissionSet::DEPLOYMENTS_UPDATE,
        )?;
        if !self.exists(&snapshot, &resource.name()) {
            return Err(not_deployed(resource));
        }
        drop(snapshot);
        let name = resource.name();
        let res = resource.clone();
        let old = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                let old = draft.current.deployment(&name).cloned();
                let mut new = match &old {
                    Some(d) if d.deployed => d.clone(),
                    Some(_) => return Err(not_deployed(&res)),
                    None => Deployment {
                        deployed: true,
                        revision: None,
                        continue_on_error: false,
                        deploy_start_time: now_millis(),
                    },
                };
                new.continue_on_error = continue_on_error;
                draft.put_deployment(&name, new);
                Ok(old)
            })
            .await?;
        AuditEvent {
            caller: caller.id.to_string(),
            action: "updateDeployment",
            resource: resource.name(),
            old_etag: format!(
                "continueOnError={}",
                old.is_some_and(|d| d.continue_on_error)
            ),
            new_etag: format!("continueOnError={continue_on_error}"),
            added: Vec::new(),
            removed: Vec::new(),
        }
        .log();
        Ok(Self::view(&self.store.snapshot(), resource))
    }

    // ---- custom roles -------------------------------------------------------------------

    fn role_name(&self, project: &str, id: &str) -> Result<String, ApiError> {
        check_role_id(id).map_err(invalid)?;
        Ok(format!("projects/{project}/roles/{id}"))
    }

    fn require_on_project(
        &self,
        snapshot: &Snapshot,
        caller: &Principal,
        project: &str,
        permission: PermissionSet,
    ) -> Result<(), ApiError> {
        let resource = Resource::Project {
            project: project.to_owned(),
        };
        self.require(snapshot, caller, &resource, permission)
    }

    /// What the caller holds at project level: a custom role it writes may gain only these, so
    /// managing roles never widens the caller's own reach (stricter than Google's IAM).
    fn held_on_project(
        &self,
        snapshot: &Snapshot,
        caller: &Principal,
        project: &str,
    ) -> PermissionSet {
        let resource = Resource::Project {
            project: project.to_owned(),
        };
        if self.is_ours(&resource) {
            held(snapshot, &self.project, &resource, &caller.members)
        } else {
            PermissionSet::EMPTY
        }
    }

    /// The authorization of `create_role` alone, for transports that check it before decoding.
    pub fn require_roles_precheck(
        &self,
        caller: &Principal,
        project: &str,
    ) -> Result<(), ApiError> {
        let snapshot = self.store.snapshot();
        self.require_on_project(&snapshot, caller, project, PermissionSet::ROLES_CREATE)
    }

    /// Creates a custom role (`iam.roles.create`); unknown permissions are refused.
    pub async fn create_role(
        &self,
        caller: &Principal,
        project: &str,
        role_id: &str,
        fields: RoleFields,
    ) -> Result<CustomRole, ApiError> {
        let holds = {
            let snapshot = self.store.snapshot();
            self.require_on_project(&snapshot, caller, project, PermissionSet::ROLES_CREATE)?;
            self.held_on_project(&snapshot, caller, project)
        };
        let name = self.role_name(project, role_id)?;
        let permissions =
            check_permissions(&fields.included_permissions.unwrap_or_default()).map_err(invalid)?;
        not_beyond(holds, PermissionSet::of_names(&permissions), project)?;
        let role = CustomRole {
            name: name.clone(),
            title: fields.title.unwrap_or_default(),
            description: fields.description.unwrap_or_default(),
            included_permissions: permissions,
            stage: fields.stage.unwrap_or_default(),
            etag: None,
        };
        let stored = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                if draft.current.role(&name).is_some() {
                    return Err(ApiError::AlreadyExists(format!(
                        "A role named {name} already exists."
                    )));
                }
                Ok(draft.put_role(role))
            })
            .await?;
        audit_role(caller, "createRole", None, Some(&stored));
        Ok(stored)
    }

    /// One custom role (`iam.roles.get`).
    pub fn describe_role(
        &self,
        caller: &Principal,
        project: &str,
        role_id: &str,
    ) -> Result<CustomRole, ApiError> {
        let snapshot = self.store.snapshot();
        self.require_on_project(&snapshot, caller, project, PermissionSet::ROLES_GET)?;
        let name = self.role_name(project, role_id)?;
        snapshot
            .role(&name)
            .map(|r| (**r).clone())
            .ok_or_else(|| role_not_found(&name))
    }

    /// The project's custom roles (`iam.roles.list`), by name.
    pub fn list_roles(
        &self,
        caller: &Principal,
        project: &str,
    ) -> Result<Vec<CustomRole>, ApiError> {
        let snapshot = self.store.snapshot();
        self.require_on_project(&snapshot, caller, project, PermissionSet::ROLES_LIST)?;
        Ok(snapshot.roles().map(|r| (**r).clone()).collect())
    }

    /// Updates a custom role (`iam.roles.update`). `update_mask` names the fields to change
    /// (`title`, `description`, `includedPermissions`, `stage`); empty changes every field given.
    /// Every policy is evaluated with the new permissions from the next Check on.
    pub async fn update_role(
        &self,
        caller: &Principal,
        project: &str,
        role_id: &str,
        fields: RoleFields,
        update_mask: &[String],
    ) -> Result<CustomRole, ApiError> {
        let holds = {
            let snapshot = self.store.snapshot();
            self.require_on_project(&snapshot, caller, project, PermissionSet::ROLES_UPDATE)?;
            self.held_on_project(&snapshot, caller, project)
        };
        let name = self.role_name(project, role_id)?;
        let project_owned = project.to_owned();
        if let Some(bad) = update_mask
            .iter()
            .find(|f| !ROLE_FIELDS.contains(&f.as_str()))
        {
            return Err(ApiError::InvalidArgument(format!(
                "updateMask may name only {}, not {bad:?}",
                ROLE_FIELDS.join(", ")
            )));
        }
        let masked = |field: &str| update_mask.is_empty() || update_mask.iter().any(|f| f == field);
        let permissions = match (&fields.included_permissions, masked("includedPermissions")) {
            (Some(p), true) => Some(check_permissions(p).map_err(invalid)?),
            (None, true) if !update_mask.is_empty() => Some(Vec::new()),
            _ => None,
        };
        let title = fields.title.filter(|_| masked("title"));
        let description = fields.description.filter(|_| masked("description"));
        let stage = fields.stage.filter(|_| masked("stage"));
        let expected = fields.etag;
        let (old, stored) = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                let old = draft
                    .current
                    .role(&name)
                    .map(|r| (**r).clone())
                    .ok_or_else(|| role_not_found(&name))?;
                if expected.is_some() && expected != old.etag {
                    return Err(ApiError::from(StoreError::Aborted));
                }
                let mut new = old.clone();
                if let Some(t) = title {
                    new.title = t;
                }
                if let Some(d) = description {
                    new.description = d;
                }
                if let Some(p) = permissions {
                    new.included_permissions = p;
                }
                if let Some(s) = stage {
                    new.stage = s;
                }
                // Against the role as stored in this very write: what it keeps may stay, what
                // it comes to grant (new permissions, or a disabled role enabled) the caller
                // must hold.
                not_beyond(holds, new.grants().difference(old.grants()), &project_owned)?;
                Ok((old, draft.put_role(new)))
            })
            .await?;
        audit_role(caller, "updateRole", Some(&old), Some(&stored));
        Ok(stored)
    }

    /// Deletes a custom role (`iam.roles.delete`). Refused with `FAILED_PRECONDITION`, naming a
    /// resource, while any policy binds it: remove those bindings first.
    pub async fn delete_role(
        &self,
        caller: &Principal,
        project: &str,
        role_id: &str,
    ) -> Result<CustomRole, ApiError> {
        {
            let snapshot = self.store.snapshot();
            self.require_on_project(&snapshot, caller, project, PermissionSet::ROLES_DELETE)?;
        }
        let name = self.role_name(project, role_id)?;
        let old = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                let old = draft
                    .current
                    .role(&name)
                    .map(|r| (**r).clone())
                    .ok_or_else(|| role_not_found(&name))?;
                if let Some(user) = draft.current.role_used_by(&name) {
                    return Err(ApiError::FailedPrecondition(format!(
                        "role {name} is still bound in the policy of {user}: remove its bindings \
                         before deleting it"
                    )));
                }
                draft.delete_role(&name);
                Ok(old)
            })
            .await?;
        audit_role(caller, "deleteRole", Some(&old), None);
        Ok(old)
    }

    // ---- groups -------------------------------------------------------------------------

    fn require_groups(
        &self,
        snapshot: &Snapshot,
        caller: &Principal,
        write: bool,
    ) -> Result<(), ApiError> {
        let permission = if write {
            PermissionSet::PROJECTS_SET_IAM_POLICY
        } else {
            PermissionSet::PROJECTS_GET_IAM_POLICY
        };
        self.require(snapshot, caller, &self.project_resource(), permission)
    }

    /// Every group (`resourcemanager.projects.getIamPolicy`), by email.
    pub fn list_groups(&self, caller: &Principal) -> Result<Vec<GroupView>, ApiError> {
        let snapshot = self.store.snapshot();
        self.require_groups(&snapshot, caller, false)?;
        Ok(snapshot
            .groups()
            .map(|(email, g)| GroupView::new(email, g))
            .collect())
    }

    /// One group (`resourcemanager.projects.getIamPolicy`).
    pub fn describe_group(&self, caller: &Principal, email: &str) -> Result<GroupView, ApiError> {
        let snapshot = self.store.snapshot();
        self.require_groups(&snapshot, caller, false)?;
        let email = group_email(email)?;
        snapshot
            .group(&email)
            .map(|g| GroupView::new(&email, g))
            .ok_or_else(|| ApiError::NotFound(format!("group {email} has no members")))
    }

    /// Adds (`add` true) or removes a member (`resourcemanager.projects.setIamPolicy`). Takes
    /// effect on the next Check. A group whose last member leaves is deleted.
    pub async fn change_group(
        &self,
        caller: &Principal,
        email: &str,
        member: &str,
        add: bool,
    ) -> Result<GroupView, ApiError> {
        {
            let snapshot = self.store.snapshot();
            self.require_groups(&snapshot, caller, true)?;
        }
        let email = group_email(email)?;
        let member = match Member::parse(member).map_err(invalid)? {
            m @ (Member::User(_) | Member::ServiceAccount(_)) => m.to_string(),
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "invalid group member {:?}: a group holds user:EMAIL and \
                     serviceAccount:EMAIL members only",
                    other.to_string()
                )));
            }
        };
        let (e, m) = (email.clone(), member.clone());
        let (old, new) = self
            .store
            .mutate(move |draft: &mut Draft<'_>| {
                let old = draft.current.group(&e).map(|g| (**g).clone());
                let mut members = old.as_ref().map(|g| g.members.clone()).unwrap_or_default();
                let present = members.contains(&m);
                match (add, present) {
                    (true, true) => return Ok((old.clone(), old)),
                    (true, false) => {
                        members.push(m);
                        members.sort();
                    }
                    (false, false) => {
                        return Err(ApiError::NotFound(format!(
                            "{m} is not a member of group {e}"
                        )));
                    }
                    (false, true) => members.retain(|x| *x != m),
                }
                if members.is_empty() {
                    draft.delete_group(&e);
                    Ok((old, None))
                } else {
                    Ok((old, Some(draft.put_group(&e, members))))
                }
            })
            .await?;
        if old != new {
            let pair = vec![(format!("group:{email}"), member)];
            let (added, removed) = if add {
                (pair, Vec::new())
            } else {
                (Vec::new(), pair)
            };
            AuditEvent {
                caller: caller.id.to_string(),
                action: if add { "addMember" } else { "removeMember" },
                resource: format!("groups/{email}"),
                old_etag: etag_text(old.as_ref().map(|g| &g.etag)),
                new_etag: etag_text(new.as_ref().map(|g| &g.etag)),
                added,
                removed,
            }
            .log();
        }
        Ok(match new {
            Some(g) => GroupView::new(&email, &g),
            None => GroupView {
                name: format!("groups/{email}"),
                email,
                members: Vec::new(),
                etag: Etag::absent(),
            },
        })
    }
}

fn not_deployed(resource: &Resource) -> ApiError {
    ApiError::NotFound(format!("Deployment '{}' is not deployed.", resource.name()))
}

/// Refuses a role write that would give a role a permission its author does not hold at
/// project level, naming the first such permission.
fn not_beyond(holds: PermissionSet, adds: PermissionSet, project: &str) -> Result<(), ApiError> {
    match adds.difference(holds).iter().next() {
        None => Ok(()),
        Some(missing) => Err(ApiError::PermissionDenied(format!(
            "Permission '{missing}' denied on resource 'projects/{project}': a custom role can \
             only be given permissions its author holds on the project."
        ))),
    }
}

fn role_not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("The role named {name} was not found."))
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

fn group_email(email: &str) -> Result<String, ApiError> {
    let email = email.strip_prefix("group:").unwrap_or(email);
    match Member::parse(&format!("group:{email}")) {
        Ok(Member::Group(e)) => Ok(e),
        _ => Err(ApiError::InvalidArgument(format!(
            "invalid group {email:?}: expected a group email like ops@example.com"
        ))),
    }
}

fn audit_role(
    caller: &Principal,
    action: &'static str,
    old: Option<&CustomRole>,
    new: Option<&CustomRole>,
) {
    let perms = |r: Option<&CustomRole>| -> Vec<String> {
        r.map(|r| r.included_permissions.clone())
            .unwrap_or_default()
    };
    let (before, after) = (perms(old), perms(new));
    let name = new.or(old).map(|r| r.name.clone()).unwrap_or_default();
    let pairs = |from: &[String], without: &[String]| -> Vec<(String, String)> {
        from.iter()
            .filter(|p| !without.contains(p))
            .map(|p| (name.clone(), p.clone()))
            .collect()
    };
    AuditEvent {
        caller: caller.id.to_string(),
        action,
        resource: name.clone(),
        old_etag: etag_text(old.and_then(|r| r.etag.as_ref())),
        new_etag: etag_text(new.and_then(|r| r.etag.as_ref())),
        added: pairs(&after, &before),
        removed: pairs(&before, &after),
    }
    .log();
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
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    /// Records every event's target and fields.
    #[derive(Default)]
    struct Capture(Captured);

    /// Each event's target and its fields as text.
    type Captured = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

    struct Fields(Vec<(String, String)>);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields(Vec::new());
            event.record(&mut fields);
            if let Ok(mut events) = self.0.lock() {
                events.push((event.metadata().target().to_owned(), fields.0));
            }
        }
    }

    #[test]
    fn audit_event_is_one_structured_event_on_the_audit_target() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(events.clone()));
        let old = Policy {
            bindings: vec![crate::iam::policy::Binding {
                role: "roles/apigee.deploymentInvoker".into(),
                members: vec!["user:a@example.com".into()],
                condition: None,
            }],
            etag: Some(Etag::from_version(1)),
            ..Policy::default()
        };
        let new = Policy {
            bindings: vec![crate::iam::policy::Binding {
                role: "roles/apigee.deploymentInvoker".into(),
                members: vec!["user:b@example.com".into()],
                condition: None,
            }],
            etag: Some(Etag::from_version(2)),
            ..Policy::default()
        };
        let (added, removed) = binding_changes(&old, &new);
        tracing::subscriber::with_default(subscriber, || {
            AuditEvent {
                caller: "ops@example.com".into(),
                action: "setIamPolicy",
                resource: "projects/p".into(),
                old_etag: etag_text(old.etag.as_ref()),
                new_etag: etag_text(new.etag.as_ref()),
                added,
                removed,
            }
            .log();
        });
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1);
        let (target, fields) = &events[0];
        assert_eq!(target, AUDIT_TARGET);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no field {name}: {fields:?}"))
        };
        assert_eq!(field("caller"), "ops@example.com");
        assert_eq!(field("action"), "setIamPolicy");
        assert_eq!(field("resource"), "projects/p");
        assert_eq!(field("old_etag"), Etag::from_version(1).to_string());
        assert_eq!(field("new_etag"), Etag::from_version(2).to_string());
        assert_eq!(
            field("added"),
            r#"[["roles/apigee.deploymentInvoker","user:b@example.com"]]"#
        );
        assert_eq!(
            field("removed"),
            r#"[["roles/apigee.deploymentInvoker","user:a@example.com"]]"#
        );
    }

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
