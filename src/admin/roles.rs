//! Custom roles (the IAM API's `projects.roles`): create, describe, list, update and delete.
//! A role can only be given permissions its author holds on the project, so managing roles never
//! widens the author's own reach; a role still bound in a policy cannot be deleted.

use serde::Deserialize;

use super::audit::{Change, etag_text};
use super::operation::{Operation, invalid};
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::custom::{CustomRole, RoleStage, check_permissions, check_role_id};
use crate::iam::eval::Resource;
use crate::iam::policy::Etag;
use crate::iam::roles::PermissionSet;
use crate::store::{Draft, StoreError};

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

impl AdminState {
    fn role_name(&self, project: &str, id: &str) -> Result<String, ApiError> {
        check_role_id(id).map_err(invalid)?;
        Ok(format!("projects/{project}/roles/{id}"))
    }

    /// Loads the state and refuses unless the caller holds `permission` on `project` (where
    /// every role permission is checked).
    async fn require_on_project<'a>(
        &'a self,
        caller: &'a Principal,
        project: &str,
        permission: PermissionSet,
    ) -> Result<Operation<'a>, ApiError> {
        let resource = Resource::Project {
            project: project.to_owned(),
        };
        self.require(caller, &resource, permission).await
    }

    /// The authorization of `create_role` alone, for transports that check it before decoding.
    pub async fn require_roles_precheck(
        &self,
        caller: &Principal,
        project: &str,
    ) -> Result<(), ApiError> {
        self.require_on_project(caller, project, PermissionSet::ROLES_CREATE)
            .await
            .map(drop)
    }

    /// Creates a custom role (`iam.roles.create`); unknown permissions are refused.
    pub async fn create_role(
        &self,
        caller: &Principal,
        project: &str,
        role_id: &str,
        fields: RoleFields,
    ) -> Result<CustomRole, ApiError> {
        let op = self
            .require_on_project(caller, project, PermissionSet::ROLES_CREATE)
            .await?;
        let name = self.role_name(project, role_id)?;
        let permissions =
            check_permissions(&fields.included_permissions.unwrap_or_default()).map_err(invalid)?;
        let grants = PermissionSet::of_names(&permissions);
        // Early, from the snapshot; judged again in the write, on the state it commits on.
        not_beyond(op.held(), grants, project)?;
        let author = op.requirement();
        let project_owned = project.to_owned();
        let role = CustomRole {
            name: name.clone(),
            title: fields.title.unwrap_or_default(),
            description: fields.description.unwrap_or_default(),
            included_permissions: permissions,
            stage: fields.stage.unwrap_or_default(),
            etag: None,
        };
        let change = move |draft: &mut Draft<'_>| {
            not_beyond(author.held(draft.current), grants, &project_owned)?;
            if draft.current.role(&name).is_some() {
                return Err(ApiError::AlreadyExists(format!(
                    "A role named {name} already exists."
                )));
            }
            Ok(draft.put_role(role))
        };
        op.write("createRole", change, |stored| {
            role_change(None, Some(stored))
        })
        .await
    }

    /// One custom role (`iam.roles.get`).
    pub async fn describe_role(
        &self,
        caller: &Principal,
        project: &str,
        role_id: &str,
    ) -> Result<CustomRole, ApiError> {
        let op = self
            .require_on_project(caller, project, PermissionSet::ROLES_GET)
            .await?;
        let name = self.role_name(project, role_id)?;
        op.snapshot()
            .role(&name)
            .map(|r| (**r).clone())
            .ok_or_else(|| role_not_found(&name))
    }

    /// The project's custom roles (`iam.roles.list`), by name.
    pub async fn list_roles(
        &self,
        caller: &Principal,
        project: &str,
    ) -> Result<Vec<CustomRole>, ApiError> {
        let op = self
            .require_on_project(caller, project, PermissionSet::ROLES_LIST)
            .await?;
        Ok(op.snapshot().roles().map(|r| (**r).clone()).collect())
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
        let op = self
            .require_on_project(caller, project, PermissionSet::ROLES_UPDATE)
            .await?;
        let author = op.requirement();
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
        let change = move |draft: &mut Draft<'_>| {
            let old = stored_role(draft, &name)?;
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
            // must hold, in the state this write commits on.
            let holds = author.held(draft.current);
            not_beyond(holds, new.grants().difference(old.grants()), &project_owned)?;
            Ok((old, draft.put_role(new)))
        };
        let (_, stored) = op
            .write("updateRole", change, |(old, stored)| {
                role_change(Some(old), Some(stored))
            })
            .await?;
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
        let op = self
            .require_on_project(caller, project, PermissionSet::ROLES_DELETE)
            .await?;
        let name = self.role_name(project, role_id)?;
        let change = move |draft: &mut Draft<'_>| {
            let old = stored_role(draft, &name)?;
            if let Some(user) = draft.current.role_used_by(&name) {
                return Err(ApiError::FailedPrecondition(format!(
                    "role {name} is still bound in the policy of {user}: remove its bindings \
                     before deleting it"
                )));
            }
            draft.delete_role(&name);
            Ok(old)
        };
        op.write("deleteRole", change, |old| role_change(Some(old), None))
            .await
    }
}

/// The role named `name` as the write finds it, or `NOT_FOUND`.
fn stored_role(draft: &Draft<'_>, name: &str) -> Result<CustomRole, ApiError> {
    draft
        .current
        .role(name)
        .map(|r| (**r).clone())
        .ok_or_else(|| role_not_found(name))
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

/// A role write as the audit log records it: `(role, permission)` pairs granted and taken away.
fn role_change(old: Option<&CustomRole>, new: Option<&CustomRole>) -> Option<Change> {
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
    Some(Change {
        resource: name.clone(),
        old_etag: etag_text(old.and_then(|r| r.etag.as_ref())),
        new_etag: etag_text(new.and_then(|r| r.etag.as_ref())),
        added: pairs(&after, &before),
        removed: pairs(&before, &after),
    })
}
