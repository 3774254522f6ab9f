//! Test fixtures shared by the tests of [`super::explain`] and [`super::analyze`]: a store as the
//! snapshot keeps one, and random policies, roles and members for the property tests.

use std::collections::HashMap;

use proptest::prelude::*;

use super::analyze::AnalyzeSource;
use super::custom::{Catalog, CustomRole, RoleStage};
use super::eval::{CompiledPolicy, PolicyLookup, Resource};
use super::explain::ExplainSource;
use super::member::principal_members;
use super::policy::{Binding, Policy};
use super::roles::{DEPLOYMENT_INVOKER, PERMISSIONS, PermissionSet, RoleCatalog};

pub(crate) const PROJECT: &str = "demo-project";
pub(crate) const PROJECT_NAME: &str = "projects/demo-project";
pub(crate) const PROD: &str = "organizations/demo-project/environments/prod";
pub(crate) const ORDERS: &str = "organizations/demo-project/environments/prod/deployments/orders";

/// A store as the snapshot keeps one: documents, their compiled forms, custom roles, groups,
/// and bootstrap owners compiled into the project policy.
pub(crate) struct Fixture {
    pub(crate) documents: HashMap<String, Policy>,
    pub(crate) compiled: HashMap<String, CompiledPolicy>,
    pub(crate) roles: Vec<CustomRole>,
    pub(crate) catalog: Catalog,
    pub(crate) groups_of: HashMap<Box<str>, Box<[Box<str>]>>,
    pub(crate) bootstrap: Vec<String>,
    /// Group email → its members (`user:…`), as the store keeps them.
    pub(crate) groups: HashMap<String, Vec<String>>,
    /// The deployed deployments.
    pub(crate) deployments: Vec<String>,
}

impl Fixture {
    pub(crate) fn new(
        documents: Vec<(&str, Policy)>,
        roles: Vec<CustomRole>,
        groups: &[(&str, &[&str])],
        bootstrap: &[&str],
    ) -> Fixture {
        let catalog = Catalog::new(&roles);
        let mut compiled: HashMap<String, CompiledPolicy> = documents
            .iter()
            .map(|(n, p)| ((*n).to_owned(), CompiledPolicy::compile(p, &catalog)))
            .collect();
        let owner = catalog.permissions("roles/owner").unwrap_or_default();
        for m in bootstrap {
            compiled
                .entry(PROJECT_NAME.to_owned())
                .or_default()
                .grant(m, owner);
        }
        let mut groups_of: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
        for (group, members) in groups {
            for m in *members {
                groups_of
                    .entry((*m).into())
                    .or_default()
                    .push(format!("group:{group}").into());
            }
        }
        Fixture {
            documents: documents
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect(),
            compiled,
            roles,
            catalog,
            groups_of: groups_of
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
            bootstrap: bootstrap.iter().map(|m| (*m).to_owned()).collect(),
            groups: groups
                .iter()
                .map(|(g, ms)| {
                    (
                        (*g).to_owned(),
                        ms.iter().map(|m| (*m).to_owned()).collect(),
                    )
                })
                .collect(),
            deployments: RESOURCES
                .iter()
                .filter(|r| r.contains("/deployments/"))
                .map(|r| (*r).to_owned())
                .collect(),
        }
    }
}

impl AnalyzeSource for Fixture {
    fn group_members(&self, email: &str) -> Option<&[String]> {
        self.groups.get(email).map(Vec::as_slice)
    }
    fn policy_names(&self) -> Vec<String> {
        self.documents.keys().cloned().collect()
    }
    fn deployments(&self) -> Vec<String> {
        self.deployments.clone()
    }
}

impl PolicyLookup for Fixture {
    fn policy(&self, name: &str) -> Option<&CompiledPolicy> {
        self.compiled.get(name)
    }
    fn groups_of(&self, member: &str) -> &[Box<str>] {
        self.groups_of.get(member).map_or(&[], |g| g)
    }
}

impl ExplainSource for Fixture {
    fn document(&self, name: &str) -> Option<&Policy> {
        self.documents.get(name)
    }
    fn catalog(&self) -> &dyn RoleCatalog {
        &self.catalog
    }
    fn disabled_role(&self, role: &str) -> Option<PermissionSet> {
        self.roles
            .iter()
            .find(|r| r.name == role && r.stage == RoleStage::Disabled)
            .map(|r| PermissionSet::of_names(&r.included_permissions))
    }
    fn implicit_bindings(&self, name: &str) -> Vec<Binding> {
        if name != PROJECT_NAME || self.bootstrap.is_empty() {
            return Vec::new();
        }
        vec![Binding {
            role: "roles/owner".into(),
            members: self.bootstrap.clone(),
            condition: None,
        }]
    }
}

pub(crate) fn policy(bindings: &[(&str, &[&str])]) -> Policy {
    Policy {
        version: 1,
        bindings: bindings
            .iter()
            .map(|(role, members)| Binding {
                role: (*role).to_owned(),
                members: members.iter().map(|m| (*m).to_owned()).collect(),
                condition: None,
            })
            .collect(),
        ..Policy::default()
    }
}

pub(crate) fn alice() -> Vec<Box<str>> {
    principal_members(Some("alice@example.com"), &[], None)
}

pub(crate) fn resource(name: &str) -> Resource {
    Resource::parse(name).unwrap_or_else(|| panic!("{name} is a resource name"))
}

pub(crate) const EMAILS: &[&str] = &[
    "alice@example.com",
    "bob@example.com",
    "eve@example.org",
    "svc@demo-project.iam.gserviceaccount.com",
];
pub(crate) const ROLES: &[&str] = &[
    DEPLOYMENT_INVOKER,
    "roles/owner",
    "roles/viewer",
    "roles/apigee.admin",
    "roles/apigee.readOnlyAdmin",
    "projects/demo-project/roles/caller",
    "projects/demo-project/roles/off",
    "projects/demo-project/roles/gone",
];
pub(crate) const RESOURCES: &[&str] = &[
    PROJECT_NAME,
    PROD,
    "organizations/demo-project/environments/test",
    ORDERS,
    "organizations/demo-project/environments/prod/deployments/payments",
    "organizations/demo-project/environments/test/deployments/orders",
];

pub(crate) fn member_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..EMAILS.len()).prop_map(|i| {
            let e = EMAILS[i];
            if e.ends_with(".gserviceaccount.com") {
                format!("serviceAccount:{e}")
            } else {
                format!("user:{e}")
            }
        }),
        prop_oneof![Just("group:ops@example.com"), Just("group:eng@example.com")]
            .prop_map(String::from),
        prop_oneof![Just("domain:example.com"), Just("domain:example.org")].prop_map(String::from),
        Just("allUsers".to_owned()),
        Just("allAuthenticatedUsers".to_owned()),
        prop_oneof![
            Just(format!(
                "principal://iam.googleapis.com/{POOL}/subject/orders"
            )),
            Just(format!(
                "principalSet://iam.googleapis.com/{POOL}/attribute.ns/default"
            )),
            Just(format!("principalSet://iam.googleapis.com/{POOL}/group/ci")),
            Just(format!("principalSet://iam.googleapis.com/{POOL}/*")),
            Just("deleted:user:alice@example.com?uid=7".to_owned()),
        ],
    ]
}

/// The workload identity pool the random policies' pool members name.
pub(crate) const POOL: &str = "projects/1/locations/global/workloadIdentityPools/k8s";

/// Pool identities beside the email ones: with the attribute, with the group, with neither.
pub(crate) fn pool_callers() -> Vec<Vec<Box<str>>> {
    let pool = crate::iam::member::pool_members;
    vec![
        pool(POOL, "orders", &[], &[("ns".into(), "default".into())]),
        pool(POOL, "billing", &["ci".into()], &[]),
        pool(POOL, "other", &[], &[]),
    ]
}

pub(crate) fn binding_strategy() -> impl Strategy<Value = Binding> {
    (
        0..ROLES.len(),
        prop::collection::vec(member_strategy(), 1..4),
    )
        .prop_map(|(r, members)| Binding {
            role: ROLES[r].to_owned(),
            members,
            condition: None,
        })
}

pub(crate) fn policy_strategy() -> impl Strategy<Value = Option<Policy>> {
    prop::option::of(
        prop::collection::vec(binding_strategy(), 0..4).prop_map(|bindings| Policy {
            version: 1,
            bindings,
            ..Policy::default()
        }),
    )
}

pub(crate) fn custom_roles(caller: &[usize]) -> Vec<CustomRole> {
    let perms: Vec<String> = caller.iter().map(|&i| PERMISSIONS[i].to_owned()).collect();
    vec![
        CustomRole {
            name: "projects/demo-project/roles/caller".into(),
            title: String::new(),
            description: String::new(),
            included_permissions: perms.clone(),
            stage: RoleStage::Ga,
            etag: None,
        },
        CustomRole {
            name: "projects/demo-project/roles/off".into(),
            title: String::new(),
            description: String::new(),
            included_permissions: perms,
            stage: RoleStage::Disabled,
            etag: None,
        },
    ]
}
