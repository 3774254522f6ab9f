//! Custom roles in the IAM API's shape (`projects/{p}/roles/{id}`): their validation rules and
//! the [`Catalog`] that resolves role names against the predefined roles and the custom ones.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::policy::Etag;
use super::roles::{PermissionSet, PredefinedRoles, RoleCatalog};

/// The shortest and longest custom role id Google accepts.
const ROLE_ID_LEN: std::ops::RangeInclusive<usize> = 3..=64;

/// A custom role's launch stage; a `DISABLED` role grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RoleStage {
    /// The default for a new role.
    #[default]
    Alpha,
    /// Beta.
    Beta,
    /// Generally available.
    Ga,
    /// Deprecated: still grants.
    Deprecated,
    /// Disabled: its bindings grant nothing.
    Disabled,
    /// Early access.
    Eap,
}

/// A custom role (google.iam.admin.v1.Role, the fields verifyiam keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomRole {
    /// `projects/{project}/roles/{roleId}`.
    pub name: String,
    /// A short title.
    #[serde(default)]
    pub title: String,
    /// A description.
    #[serde(default)]
    pub description: String,
    /// The permissions the role carries (each one verifyiam knows).
    #[serde(default)]
    pub included_permissions: Vec<String>,
    /// The launch stage.
    #[serde(default)]
    pub stage: RoleStage,
    /// Changes with every write; a write carrying a stale one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<Etag>,
}

impl CustomRole {
    /// The permissions the role grants in bindings (none when disabled).
    pub fn grants(&self) -> PermissionSet {
        if self.stage == RoleStage::Disabled {
            return PermissionSet::EMPTY;
        }
        PermissionSet::of_names(&self.included_permissions)
    }
}

/// Why a custom role was refused (`INVALID_ARGUMENT`); each names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The role id is malformed.
    #[error("invalid role id {0:?}: use 3 to 64 letters, digits, '_' or '.' (e.g. \"apiCaller\")")]
    BadId(String),
    /// A permission is not one verifyiam knows.
    #[error(
        "permission {0:?} is not valid: not a permission verifyiam knows \
         (for example apigee.deployments.invoke)"
    )]
    UnknownPermission(String),
}

/// Checks a custom role id (`[A-Za-z0-9_.]{3,64}`, as the IAM API).
pub fn check_role_id(id: &str) -> Result<(), RoleError> {
    if ROLE_ID_LEN.contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
    {
        Ok(())
    } else {
        Err(RoleError::BadId(id.to_owned()))
    }
}

/// Returns `permissions` sorted and de-duplicated, refusing any permission verifyiam does not know.
pub fn check_permissions(permissions: &[String]) -> Result<Vec<String>, RoleError> {
    let mut out = Vec::with_capacity(permissions.len());
    for p in permissions {
        if PermissionSet::of(p).is_none() {
            return Err(RoleError::UnknownPermission(p.clone()));
        }
        out.push(p.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The role catalogue of a snapshot: the predefined roles, then the custom roles by full name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    custom: HashMap<Box<str>, PermissionSet>,
}

impl Catalog {
    /// A catalogue of the predefined roles and `custom`.
    pub fn new<'a>(custom: impl IntoIterator<Item = &'a CustomRole>) -> Catalog {
        Catalog {
            custom: custom
                .into_iter()
                .map(|r| (r.name.clone().into_boxed_str(), r.grants()))
                .collect(),
        }
    }
}

impl RoleCatalog for Catalog {
    fn permissions(&self, role: &str) -> Option<PermissionSet> {
        PredefinedRoles
            .permissions(role)
            .or_else(|| self.custom.get(role).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(stage: RoleStage, perms: &[&str]) -> CustomRole {
        CustomRole {
            name: "projects/p/roles/caller".into(),
            title: String::new(),
            description: String::new(),
            included_permissions: perms.iter().map(|p| (*p).to_owned()).collect(),
            stage,
            etag: None,
        }
    }

    #[test]
    fn custom_role_with_invoke_grants_invoke() {
        let catalog = Catalog::new([&role(RoleStage::Ga, &["apigee.deployments.invoke"])]);
        assert_eq!(
            catalog.permissions("projects/p/roles/caller"),
            Some(PermissionSet::INVOKE)
        );
        // Predefined roles still resolve; unknown names do not.
        assert_eq!(
            catalog.permissions("roles/apigee.deploymentInvoker"),
            Some(PermissionSet::INVOKE)
        );
        assert_eq!(catalog.permissions("projects/p/roles/other"), None);
    }

    #[test]
    fn disabled_custom_role_grants_nothing() {
        let catalog = Catalog::new([&role(RoleStage::Disabled, &["apigee.deployments.invoke"])]);
        assert_eq!(
            catalog.permissions("projects/p/roles/caller"),
            Some(PermissionSet::EMPTY)
        );
    }

    #[test]
    fn custom_role_refuses_unknown_permissions() {
        assert_eq!(
            check_permissions(&["apigee.deployments.fly".into()]),
            Err(RoleError::UnknownPermission(
                "apigee.deployments.fly".into()
            ))
        );
        assert_eq!(
            check_permissions(&[
                "apigee.deployments.invoke".into(),
                "apigee.deployments.get".into(),
                "apigee.deployments.invoke".into()
            ]),
            Ok(vec![
                "apigee.deployments.get".to_owned(),
                "apigee.deployments.invoke".to_owned()
            ])
        );
    }

    #[test]
    fn custom_role_ids_follow_the_iam_api() {
        for good in ["abc", "api.caller_2", &"a".repeat(64)] {
            assert_eq!(check_role_id(good), Ok(()), "{good}");
        }
        for bad in ["ab", "a-b-c", "role/x", "", &"a".repeat(65), "caller id"] {
            assert!(check_role_id(bad).is_err(), "{bad}");
        }
    }
}
