//! The permission registry and role catalogues: which permissions verifyiam knows, the
//! [`PermissionSet`] bitset over them, and which permissions each predefined role carries.

macro_rules! permissions {
    ($($bit:literal $konst:ident $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("The permission `", $name, "`.")]
            pub const $konst: &str = $name;
        )*

        impl PermissionSet {
            $(
                #[doc = concat!("The set holding only `", $name, "`.")]
                pub const $konst: PermissionSet = PermissionSet(1 << $bit);
            )*
        }

        /// Every known permission name; a name's index is its bit in a [`PermissionSet`].
        pub const PERMISSIONS: &[&str] = &[$($name),*];
    };
}

permissions! {
    0 INVOKE "apigee.deployments.invoke",
    1 DEPLOYMENTS_GET "apigee.deployments.get",
    2 DEPLOYMENTS_LIST "apigee.deployments.list",
    3 DEPLOYMENTS_GET_IAM_POLICY "apigee.deployments.getIamPolicy",
    4 DEPLOYMENTS_SET_IAM_POLICY "apigee.deployments.setIamPolicy",
    5 DEPLOYMENTS_CREATE "apigee.deployments.create",
    6 DEPLOYMENTS_DELETE "apigee.deployments.delete",
    7 DEPLOYMENTS_UPDATE "apigee.deployments.update",
    8 ENVIRONMENTS_GET "apigee.environments.get",
    9 ENVIRONMENTS_GET_IAM_POLICY "apigee.environments.getIamPolicy",
    10 ENVIRONMENTS_SET_IAM_POLICY "apigee.environments.setIamPolicy",
    11 PROJECTS_GET "resourcemanager.projects.get",
    12 PROJECTS_GET_IAM_POLICY "resourcemanager.projects.getIamPolicy",
    13 PROJECTS_SET_IAM_POLICY "resourcemanager.projects.setIamPolicy",
    14 ROLES_GET "iam.roles.get",
    15 ROLES_LIST "iam.roles.list",
    16 ROLES_CREATE "iam.roles.create",
    17 ROLES_UPDATE "iam.roles.update",
    18 ROLES_DELETE "iam.roles.delete",
}

// The bitset is a u64; the registry must fit in it.
const _: () = assert!(PERMISSIONS.len() < 64);

/// The role that grants `apigee.deployments.invoke` and nothing else.
pub const DEPLOYMENT_INVOKER: &str = "roles/apigee.deploymentInvoker";

/// A set of known permissions, one bit per entry of [`PERMISSIONS`].
///
/// Copyable and allocation-free, so the hot path can union and test sets freely.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct PermissionSet(u64);

impl PermissionSet {
    /// The set with no permissions.
    pub const EMPTY: PermissionSet = PermissionSet(0);

    /// Every `apigee.deployments.*` permission.
    pub const DEPLOYMENTS: PermissionSet = PermissionSet(
        Self::INVOKE.0
            | Self::DEPLOYMENTS_GET.0
            | Self::DEPLOYMENTS_LIST.0
            | Self::DEPLOYMENTS_GET_IAM_POLICY.0
            | Self::DEPLOYMENTS_SET_IAM_POLICY.0
            | Self::DEPLOYMENTS_CREATE.0
            | Self::DEPLOYMENTS_DELETE.0
            | Self::DEPLOYMENTS_UPDATE.0,
    );

    /// Every `apigee.environments.*` permission.
    pub const ENVIRONMENTS: PermissionSet = PermissionSet(
        Self::ENVIRONMENTS_GET.0
            | Self::ENVIRONMENTS_GET_IAM_POLICY.0
            | Self::ENVIRONMENTS_SET_IAM_POLICY.0,
    );

    /// Every known permission.
    pub const fn all() -> PermissionSet {
        PermissionSet((1u64 << PERMISSIONS.len()) - 1)
    }

    /// The set holding the single known permission `name`, or `None` if verifyiam does not know it.
    /// Names are case-sensitive, as on Google Cloud.
    pub fn of(name: &str) -> Option<PermissionSet> {
        PERMISSIONS
            .iter()
            .position(|known| *known == name)
            .map(|bit| PermissionSet(1 << bit))
    }

    /// Whether every permission in `other` is also in `self`.
    pub const fn contains(self, other: PermissionSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// The permissions in either set.
    #[must_use]
    pub const fn union(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 | other.0)
    }

    /// The permissions in both sets.
    #[must_use]
    pub const fn intersection(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 & other.0)
    }

    /// The permissions in `self` that are not in `other`.
    #[must_use]
    pub const fn difference(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 & !other.0)
    }

    /// Whether the set holds no permission.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds every permission of `other` to `self`.
    pub fn insert(&mut self, other: PermissionSet) {
        self.0 |= other.0;
    }

    /// The names of the permissions in the set, in registry order.
    pub fn iter(self) -> impl Iterator<Item = &'static str> {
        PERMISSIONS
            .iter()
            .enumerate()
            .filter(move |(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }

    /// The set of the given names; names verifyiam does not know are left out.
    pub fn of_names<S: AsRef<str>>(names: &[S]) -> PermissionSet {
        names
            .iter()
            .filter_map(|name| PermissionSet::of(name.as_ref()))
            .fold(PermissionSet::EMPTY, PermissionSet::union)
    }
}

/// Where role names are resolved to the permissions they carry.
pub trait RoleCatalog {
    /// The permissions `role` carries, or `None` if the role is unknown (role names are case-sensitive).
    fn permissions(&self, role: &str) -> Option<PermissionSet>;
}

/// The predefined roles of Google Cloud that matter to verifyiam, as
/// `(role, title, permissions)`. [`PredefinedRoles`] is built from this table.
pub const PREDEFINED: &[(&str, &str, &[&str])] = &[
    (DEPLOYMENT_INVOKER, "Apigee Deployment Invoker", &[INVOKE]),
    (
        "roles/apigee.admin",
        "Apigee Organization Admin",
        // Managing deployments is not calling them: no invoke. As on Google Cloud, no
        // `iam.roles.*` either: whoever may redefine roles may widen any role bound to them.
        &[
            DEPLOYMENTS_GET,
            DEPLOYMENTS_LIST,
            DEPLOYMENTS_GET_IAM_POLICY,
            DEPLOYMENTS_SET_IAM_POLICY,
            DEPLOYMENTS_CREATE,
            DEPLOYMENTS_DELETE,
            DEPLOYMENTS_UPDATE,
            ENVIRONMENTS_GET,
            ENVIRONMENTS_GET_IAM_POLICY,
            ENVIRONMENTS_SET_IAM_POLICY,
            PROJECTS_GET,
        ],
    ),
    (
        "roles/apigee.readOnlyAdmin",
        "Apigee Read-only Admin",
        &[
            DEPLOYMENTS_GET,
            DEPLOYMENTS_LIST,
            DEPLOYMENTS_GET_IAM_POLICY,
            ENVIRONMENTS_GET,
            ENVIRONMENTS_GET_IAM_POLICY,
            PROJECTS_GET,
        ],
    ),
    // Custom roles are managed with this role (or as owner). Creating or widening a role further
    // needs every added permission held at project level (see the admin service).
    (
        "roles/iam.roleAdmin",
        "Role Administrator",
        &[
            ROLES_GET,
            ROLES_LIST,
            ROLES_CREATE,
            ROLES_UPDATE,
            ROLES_DELETE,
            PROJECTS_GET,
            PROJECTS_GET_IAM_POLICY,
        ],
    ),
    // As on Google Cloud, the owner holds every permission, invoke included.
    ("roles/owner", "Owner", PERMISSIONS),
    (
        "roles/viewer",
        "Viewer",
        &[
            DEPLOYMENTS_GET,
            DEPLOYMENTS_LIST,
            ENVIRONMENTS_GET,
            PROJECTS_GET,
            PROJECTS_GET_IAM_POLICY,
            ROLES_GET,
            ROLES_LIST,
        ],
    ),
];

/// The catalogue of the roles in [`PREDEFINED`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PredefinedRoles;

impl RoleCatalog for PredefinedRoles {
    fn permissions(&self, role: &str) -> Option<PermissionSet> {
        PREDEFINED
            .iter()
            .find(|(name, _, _)| *name == role)
            .map(|(_, _, permissions)| PermissionSet::of_names(permissions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> PermissionSet {
        PredefinedRoles
            .permissions(name)
            .unwrap_or_else(|| panic!("{name} is predefined"))
    }

    #[test]
    fn each_permission_has_its_own_bit() {
        for (bit, name) in PERMISSIONS.iter().enumerate() {
            assert_eq!(PermissionSet::of(name), Some(PermissionSet(1 << bit)));
            assert_eq!(PermissionSet(1 << bit).iter().collect::<Vec<_>>(), [*name]);
        }
        assert_eq!(PermissionSet::INVOKE.iter().next(), Some(INVOKE));
        assert_eq!(
            PermissionSet::ROLES_DELETE.iter().next(),
            Some("iam.roles.delete")
        );
        assert_eq!(PERMISSIONS.len(), 19);
        assert_eq!(PermissionSet::all().iter().count(), 19);
    }

    #[test]
    fn unknown_permission_is_not_in_the_registry() {
        assert_eq!(PermissionSet::of("apigee.deployments.Invoke"), None);
        assert_eq!(PermissionSet::of("apigee.deployments.*"), None);
        assert_eq!(PermissionSet::of(""), None);
    }

    #[test]
    fn set_operations_behave_as_sets() {
        let mut set = PermissionSet::EMPTY;
        assert!(set.is_empty());
        set.insert(PermissionSet::INVOKE);
        set.insert(PermissionSet::DEPLOYMENTS_GET);
        assert!(set.contains(PermissionSet::INVOKE));
        assert!(set.contains(PermissionSet::EMPTY));
        assert!(!set.contains(PermissionSet::DEPLOYMENTS_LIST));
        assert!(PermissionSet::DEPLOYMENTS.contains(set));
        assert_eq!(
            set.intersection(PermissionSet::INVOKE.union(PermissionSet::PROJECTS_GET)),
            PermissionSet::INVOKE
        );
        assert_eq!(
            set.difference(PermissionSet::INVOKE),
            PermissionSet::DEPLOYMENTS_GET
        );
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [INVOKE, "apigee.deployments.get"]
        );
        assert_eq!(PermissionSet::DEPLOYMENTS.iter().count(), 8);
        assert!(
            PermissionSet::DEPLOYMENTS
                .iter()
                .all(|p| p.starts_with("apigee.deployments."))
        );
        assert!(
            PermissionSet::ENVIRONMENTS
                .iter()
                .all(|p| p.starts_with("apigee.environments."))
        );
    }

    #[test]
    fn predefined_roles_name_only_known_permissions() {
        for (name, title, permissions) in PREDEFINED {
            assert!(name.starts_with("roles/"), "{name}");
            assert!(!title.is_empty(), "{name}");
            for permission in *permissions {
                assert!(
                    PermissionSet::of(permission).is_some(),
                    "{name}: {permission}"
                );
            }
            assert_eq!(role(name).iter().count(), permissions.len(), "{name}");
        }
    }

    #[test]
    fn deployment_invoker_holds_only_invoke() {
        assert_eq!(role(DEPLOYMENT_INVOKER), PermissionSet::INVOKE);
    }

    #[test]
    fn apigee_admin_manages_but_cannot_invoke() {
        let admin = role("roles/apigee.admin");
        assert!(!admin.contains(PermissionSet::INVOKE));
        for permission in PERMISSIONS {
            let expected = (permission.starts_with("apigee.") && *permission != INVOKE)
                || *permission == PROJECTS_GET;
            assert_eq!(
                admin.contains(PermissionSet::of(permission).unwrap_or_default()),
                expected,
                "{permission}"
            );
        }
    }

    #[test]
    fn read_only_admin_reads_only() {
        let reader = role("roles/apigee.readOnlyAdmin");
        assert!(!reader.contains(PermissionSet::INVOKE));
        assert!(reader.contains(PermissionSet::DEPLOYMENTS_GET_IAM_POLICY));
        assert!(!reader.contains(PermissionSet::DEPLOYMENTS_SET_IAM_POLICY));
        assert!(reader.iter().all(|p| !p.ends_with("setIamPolicy")));
        assert_eq!(reader.iter().count(), 6);
    }

    #[test]
    fn only_the_role_administrator_and_owner_manage_roles() {
        for (name, _, _) in PREDEFINED {
            let manages = role(name).contains(PermissionSet::ROLES_UPDATE);
            assert_eq!(
                manages,
                matches!(*name, "roles/iam.roleAdmin" | "roles/owner"),
                "{name}"
            );
        }
        let role_admin = role("roles/iam.roleAdmin");
        assert!(!role_admin.contains(PermissionSet::PROJECTS_SET_IAM_POLICY));
        assert!(!role_admin.contains(PermissionSet::INVOKE));
    }

    #[test]
    fn owner_holds_every_permission_including_invoke() {
        assert_eq!(role("roles/owner"), PermissionSet::all());
        assert!(role("roles/owner").contains(PermissionSet::INVOKE));
    }

    #[test]
    fn viewer_cannot_invoke_or_change_policies() {
        let viewer = role("roles/viewer");
        assert!(!viewer.contains(PermissionSet::INVOKE));
        assert!(viewer.contains(PermissionSet::PROJECTS_GET_IAM_POLICY));
        assert!(viewer.iter().all(|p| !p.ends_with("setIamPolicy")));
        assert_eq!(viewer.iter().count(), 7);
    }

    #[test]
    fn role_names_are_case_sensitive() {
        assert_eq!(
            PredefinedRoles.permissions("roles/apigee.DeploymentInvoker"),
            None
        );
        assert_eq!(PredefinedRoles.permissions("roles/Owner"), None);
        assert_eq!(PredefinedRoles.permissions("owner"), None);
        assert_eq!(PredefinedRoles.permissions(""), None);
    }
}
