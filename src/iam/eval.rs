//! Pure evaluation of policies: resource names, policies compiled to member → permission maps,
//! and the rules deciding which permissions a principal holds on a project, an environment or a
//! deployment (including the hot-path invoke check).

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;

use super::member::Member;
use super::policy::Policy;
use super::roles::{PermissionSet, RoleCatalog};

/// The longest resource-name segment accepted.
const MAX_SEGMENT_LEN: usize = 255;

/// A resource that carries an IAM policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `projects/{project}`.
    Project {
        /// The project id.
        project: String,
    },
    /// `organizations/{organization}/environments/{environment}`.
    Environment {
        /// The Apigee organization (named after its project).
        organization: String,
        /// The environment.
        environment: String,
    },
    /// `organizations/{organization}/environments/{environment}/deployments/{deployment}`.
    Deployment {
        /// The Apigee organization (named after its project).
        organization: String,
        /// The environment the API is deployed to.
        environment: String,
        /// The deployment, named after the API proxy.
        deployment: String,
    },
}

impl Resource {
    /// The full resource name, e.g. `organizations/o/environments/e/deployments/a`.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Parses a full resource name; the exact inverse of [`Resource::name`].
    ///
    /// Each segment must be 1 to 255 characters of `[A-Za-z0-9._-]`, and not `.` or `..`
    /// (names end up as storage keys).
    pub fn parse(name: &str) -> Option<Resource> {
        let mut parts = name.split('/');
        let mut next = || parts.next();
        let resource = match (next(), next()) {
            (Some("projects"), Some(project)) if is_segment(project) => Resource::Project {
                project: project.to_owned(),
            },
            (Some("organizations"), Some(organization)) if is_segment(organization) => {
                let environment = match (next(), next()) {
                    (Some("environments"), Some(env)) if is_segment(env) => env,
                    _ => return None,
                };
                match (next(), next()) {
                    (None, _) => Resource::Environment {
                        organization: organization.to_owned(),
                        environment: environment.to_owned(),
                    },
                    (Some("deployments"), Some(deployment)) if is_segment(deployment) => {
                        Resource::Deployment {
                            organization: organization.to_owned(),
                            environment: environment.to_owned(),
                            deployment: deployment.to_owned(),
                        }
                    }
                    _ => return None,
                }
            }
            _ => return None,
        };
        // Nothing may follow the last segment.
        next().is_none().then_some(resource)
    }

    /// The name of a deployment's parent environment; `None` for other resources.
    pub fn environment_name(&self) -> Option<String> {
        match self {
            Resource::Deployment {
                organization,
                environment,
                ..
            } => Some(environment_name(organization, environment)),
            Resource::Project { .. } | Resource::Environment { .. } => None,
        }
    }
}

impl fmt::Display for Resource {
    /// The full resource name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Project { project } => write!(f, "projects/{project}"),
            Resource::Environment {
                organization,
                environment,
            } => write!(f, "organizations/{organization}/environments/{environment}"),
            Resource::Deployment {
                organization,
                environment,
                deployment,
            } => write!(
                f,
                "organizations/{organization}/environments/{environment}/deployments/{deployment}"
            ),
        }
    }
}

fn environment_name(organization: &str, environment: &str) -> String {
    format!("organizations/{organization}/environments/{environment}")
}

fn is_segment(segment: &str) -> bool {
    (1..=MAX_SEGMENT_LEN).contains(&segment.len())
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a permission test was refused (Google answers `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The permission is not one verifyiam knows.
    #[error("unknown permission {0:?}: not a permission verifyiam knows")]
    UnknownPermission(String),
    /// The permission means nothing on this kind of resource.
    #[error("permission {permission:?} is not valid for resource {resource:?}")]
    NotApplicable {
        /// The permission asked for.
        permission: String,
        /// The resource it was asked on.
        resource: String,
    },
}

/// A policy compiled for evaluation: canonical member string → permissions granted to it.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    grants: HashMap<Box<str>, PermissionSet>,
}

impl CompiledPolicy {
    /// Compiles `policy` against `roles`.
    ///
    /// Fails closed: bindings with a condition or a role the catalogue does not know, and members
    /// that do not parse, grant nothing.
    pub fn compile(policy: &Policy, roles: &dyn RoleCatalog) -> CompiledPolicy {
        let mut compiled = CompiledPolicy::default();
        for binding in &policy.bindings {
            if binding.condition.is_some() {
                continue;
            }
            let Some(permissions) = roles.permissions(&binding.role) else {
                continue;
            };
            for member in &binding.members {
                match Member::parse(member) {
                    // A deleted principal is kept in the document and grants nothing.
                    Ok(Member::Deleted(_)) | Err(_) => {}
                    Ok(member) => compiled.insert(member.to_string().into_boxed_str(), permissions),
                }
            }
        }
        compiled
    }

    /// Grants `perms` to `member` (e.g. [`PermissionSet::all`] to a bootstrap admin).
    ///
    /// A member that parses is stored in canonical form; anything else is stored verbatim, so it
    /// only ever matches the same verbatim subject string.
    pub fn grant(&mut self, member: &str, perms: PermissionSet) {
        let key = match Member::parse(member) {
            Ok(parsed) => parsed.to_string(),
            Err(_) => member.to_owned(),
        };
        self.insert(key.into_boxed_str(), perms);
    }

    /// The union of the permissions granted to any of `members` (canonical strings).
    /// Does not allocate.
    pub fn granted(&self, members: &[Box<str>]) -> PermissionSet {
        members
            .iter()
            .filter_map(|member| self.grants.get(&**member))
            .fold(PermissionSet::EMPTY, |acc, perms| acc.union(*perms))
    }

    /// The permissions granted to one member (a canonical string).
    pub fn granted_to(&self, member: &str) -> PermissionSet {
        self.grants
            .get(member)
            .copied()
            .unwrap_or(PermissionSet::EMPTY)
    }

    /// Every permission the policy grants to anyone.
    pub fn granted_to_anyone(&self) -> PermissionSet {
        self.grants
            .values()
            .fold(PermissionSet::EMPTY, |acc, perms| acc.union(*perms))
    }

    /// Whether the policy grants nothing to anyone.
    pub fn is_empty(&self) -> bool {
        self.grants.values().all(|perms| perms.is_empty())
    }

    fn insert(&mut self, member: Box<str>, perms: PermissionSet) {
        self.grants.entry(member).or_default().insert(perms);
    }
}

/// Where compiled policies are found, by full resource name.
pub trait PolicyLookup {
    /// The compiled policy of `resource_name`, or `None` if it has none.
    fn policy(&self, resource_name: &str) -> Option<&CompiledPolicy>;

    /// The `group:G` members that a principal's own member (`user:…` or `serviceAccount:…`)
    /// belongs to, from the group data verifyiam keeps. None by default.
    ///
    /// Consulted at evaluation time, so a membership change applies to the next decision even for
    /// principals whose member list is cached.
    fn groups_of(&self, _member: &str) -> &[Box<str>] {
        &[]
    }
}

impl<S: BuildHasher> PolicyLookup for HashMap<String, CompiledPolicy, S> {
    fn policy(&self, resource_name: &str) -> Option<&CompiledPolicy> {
        self.get(resource_name)
    }
}

/// The permissions that mean anything on this kind of resource.
///
/// Deployment: `apigee.deployments.*`; environment: `apigee.deployments.*` and
/// `apigee.environments.*`; project: every known permission.
pub fn applicable(resource: &Resource) -> PermissionSet {
    match resource {
        Resource::Deployment { .. } => PermissionSet::DEPLOYMENTS,
        Resource::Environment { .. } => {
            PermissionSet::DEPLOYMENTS.union(PermissionSet::ENVIRONMENTS)
        }
        Resource::Project { .. } => PermissionSet::all(),
    }
}

fn granted_on<L: PolicyLookup + ?Sized>(
    lookup: &L,
    resource_name: &str,
    members: &[Box<str>],
) -> PermissionSet {
    match lookup.policy(resource_name) {
        Some(policy) => granted_in(lookup, policy, members),
        None => PermissionSet::EMPTY,
    }
}

/// The permissions `policy` grants to `members` or to the groups `lookup` says they belong to.
#[inline]
pub fn granted_in<L: PolicyLookup + ?Sized>(
    lookup: &L,
    policy: &CompiledPolicy,
    members: &[Box<str>],
) -> PermissionSet {
    // The principal's own members, then the groups the store says they belong to: no allocation.
    members.iter().fold(PermissionSet::EMPTY, |acc, member| {
        lookup
            .groups_of(member)
            .iter()
            .fold(acc.union(policy.granted_to(member)), |acc, group| {
                acc.union(policy.granted_to(group))
            })
    })
}

/// The level of the resource a policy is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// `projects/{project}`: reaches every resource of the project.
    Project,
    /// `organizations/{o}/environments/{e}`: reaches its deployments, except for invoke.
    Environment,
    /// `organizations/{o}/environments/{e}/deployments/{d}`: grants only invoke, on itself.
    Deployment,
}

impl Level {
    /// The level's name as verifyiam prints it (and as a Check's metadata names it).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Project => "project",
            Level::Environment => "environment",
            Level::Deployment => "deployment",
        }
    }
}

/// One policy that bears on a resource: where it is attached, its level, and the permissions
/// whose grant in it reaches the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The full name of the resource the policy is attached to.
    pub name: String,
    /// Its level.
    pub level: Level,
    /// The permissions a grant in it passes to the resource asked about (before
    /// [`applicable`] limits them).
    pub passes: PermissionSet,
}

/// The policies that bear on `resource` (whose organization maps to project `project`), in the
/// order project, environment, deployment: the rules of §1 in one table, read by [`held`], by
/// the explanations and by the analyzer.
///
/// - Deployment: `apigee.deployments.invoke` from the project policy or the deployment's own
///   policy, never from the environment's (environment-level invoke does not pass down); every
///   other permission from the project or the parent environment policy. A deployment's own
///   policy grants only invoke.
/// - Environment: from the project policy or the environment's own.
/// - Project: from the project's own policy.
pub fn reaches(project: &str, resource: &Resource) -> Vec<Reach> {
    let reach = |name: String, level, passes| Reach {
        name,
        level,
        passes,
    };
    let project_name = format!("projects/{project}");
    match resource {
        Resource::Project { .. } => {
            vec![reach(resource.name(), Level::Project, PermissionSet::all())]
        }
        Resource::Environment { .. } => vec![
            reach(project_name, Level::Project, PermissionSet::all()),
            reach(resource.name(), Level::Environment, PermissionSet::all()),
        ],
        Resource::Deployment {
            organization,
            environment,
            ..
        } => vec![
            reach(project_name, Level::Project, PermissionSet::all()),
            reach(
                environment_name(organization, environment),
                Level::Environment,
                PermissionSet::all().difference(PermissionSet::INVOKE),
            ),
            reach(resource.name(), Level::Deployment, PermissionSet::INVOKE),
        ],
    }
}

/// The permissions `members` hold on `resource`, whose organization maps to project `project`,
/// by the table of [`reaches`].
///
/// The result is always within [`applicable`]`(resource)`. The organization is not compared
/// with `project`: mapping one to the other is the caller's job.
pub fn held<L: PolicyLookup + ?Sized>(
    lookup: &L,
    project: &str,
    resource: &Resource,
    members: &[Box<str>],
) -> PermissionSet {
    reaches(project, resource)
        .iter()
        .fold(PermissionSet::EMPTY, |acc, r| {
            acc.union(granted_on(lookup, &r.name, members).intersection(r.passes))
        })
        .intersection(applicable(resource))
}

/// The level whose policy lets `members` invoke a deployment (the project's first), or `None`:
/// the hot-path form of [`held`] for invoke, which a test holds equal to it.
///
/// Takes full resource names, `project_name` = `projects/{project}` and `deployment_name` =
/// `organizations/{org}/environments/{env}/deployments/{api}`, so it formats nothing and
/// allocates nothing itself (callers build the names once per route). The environment is not
/// needed: invoke granted on an environment does not pass down.
pub fn invoke_level<L: PolicyLookup + ?Sized>(
    lookup: &L,
    project_name: &str,
    deployment_name: &str,
    members: &[Box<str>],
) -> Option<Level> {
    let invokes = |name: &str| granted_on(lookup, name, members).contains(PermissionSet::INVOKE);
    if invokes(project_name) {
        Some(Level::Project)
    } else if invokes(deployment_name) {
        Some(Level::Deployment)
    } else {
        None
    }
}

/// Whether `members` may invoke a deployment: [`invoke_level`] is some level.
pub fn may_invoke<L: PolicyLookup + ?Sized>(
    lookup: &L,
    project_name: &str,
    deployment_name: &str,
    members: &[Box<str>],
) -> bool {
    invoke_level(lookup, project_name, deployment_name, members).is_some()
}

/// The subset of `asked` that `members` hold on `resource`, in the asked order, without
/// duplicates (Google's `TestIamPermissions`).
///
/// An unknown permission, or one that means nothing on this kind of resource, is an error naming
/// it, whatever else was asked.
pub fn test_permissions<L: PolicyLookup + ?Sized>(
    lookup: &L,
    project: &str,
    resource: &Resource,
    members: &[Box<str>],
    asked: &[String],
) -> Result<Vec<String>, EvalError> {
    let applicable = applicable(resource);
    let mut wanted = Vec::with_capacity(asked.len());
    for name in asked {
        let permission =
            PermissionSet::of(name).ok_or_else(|| EvalError::UnknownPermission(name.clone()))?;
        if !applicable.contains(permission) {
            return Err(EvalError::NotApplicable {
                permission: name.clone(),
                resource: resource.name(),
            });
        }
        wanted.push((name, permission));
    }
    let held = held(lookup, project, resource, members);
    let mut answered = PermissionSet::EMPTY;
    let mut out = Vec::new();
    for (name, permission) in wanted {
        if held.contains(permission) && !answered.contains(permission) {
            answered.insert(permission);
            out.push(name.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iam::member::principal_members;
    use crate::iam::policy::{Binding, Expr};
    use crate::iam::roles::{DEPLOYMENT_INVOKER, INVOKE, PredefinedRoles};

    const PROJECT: &str = "demo-project";
    const PROJECT_NAME: &str = "projects/demo-project";
    const PROD: &str = "organizations/demo-project/environments/prod";
    const ORDERS: &str = "organizations/demo-project/environments/prod/deployments/orders";
    const PAYMENTS: &str = "organizations/demo-project/environments/prod/deployments/payments";

    type Store = HashMap<String, CompiledPolicy>;

    fn policy(bindings: &[(&str, &[&str])]) -> Policy {
        Policy {
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

    fn store(entries: &[(&str, Policy)]) -> Store {
        entries
            .iter()
            .map(|(name, p)| {
                (
                    (*name).to_owned(),
                    CompiledPolicy::compile(p, &PredefinedRoles),
                )
            })
            .collect()
    }

    fn alice() -> Vec<Box<str>> {
        principal_members(Some("alice@example.com"), &[], None)
    }

    fn bob() -> Vec<Box<str>> {
        principal_members(Some("bob@example.com"), &[], None)
    }

    fn resource(name: &str) -> Resource {
        Resource::parse(name).unwrap_or_else(|| panic!("{name} is a resource name"))
    }

    fn invoker_alice() -> Policy {
        policy(&[(DEPLOYMENT_INVOKER, &["user:alice@example.com"])])
    }

    /// Checks `held` and `may_invoke` agree and returns the answer.
    fn invokes(store: &Store, deployment: &str, members: &[Box<str>]) -> bool {
        let fast = may_invoke(store, PROJECT_NAME, deployment, members);
        let slow =
            held(store, PROJECT, &resource(deployment), members).contains(PermissionSet::INVOKE);
        assert_eq!(fast, slow, "may_invoke and held disagree on {deployment}");
        // The granting level is the first policy of `reaches` whose grant of invoke passes down.
        let level = reaches(PROJECT, &resource(deployment))
            .into_iter()
            .find(|r| {
                r.passes.contains(PermissionSet::INVOKE)
                    && granted_on(store, &r.name, members).contains(PermissionSet::INVOKE)
            })
            .map(|r| r.level);
        assert_eq!(
            invoke_level(store, PROJECT_NAME, deployment, members),
            level,
            "invoke_level disagrees with reaches on {deployment}"
        );
        fast
    }

    #[test]
    fn resource_names_round_trip() {
        for name in [PROJECT_NAME, PROD, ORDERS, "projects/a.b_c-D9"] {
            assert_eq!(resource(name).name(), name);
        }
        assert_eq!(
            resource(ORDERS),
            Resource::Deployment {
                organization: PROJECT.into(),
                environment: "prod".into(),
                deployment: "orders".into(),
            }
        );
        assert_eq!(resource(ORDERS).environment_name().as_deref(), Some(PROD));
        assert_eq!(resource(PROD).environment_name(), None);
        assert_eq!(resource(PROJECT_NAME).environment_name(), None);
    }

    #[test]
    fn malformed_resource_names_are_refused() {
        let long = format!("projects/{}", "a".repeat(256));
        for bad in [
            "",
            "projects",
            "projects/",
            "projects/p/",
            "projects/p/extra",
            "projects/a b",
            "projects/a%2Fb",
            "projects/..",
            "organizations/o",
            "organizations/o/environments",
            "organizations/o/environments/",
            "organizations/o/environments/e/",
            "organizations/o/environments/e/deployments",
            "organizations/o/environments/e/deployments/",
            "organizations/o/environments/e/deployments/a/b",
            "organizations/o/environments/e/apis/a",
            "organizations//environments/e",
            "Organizations/o/environments/e",
            "/projects/p",
            long.as_str(),
        ] {
            assert_eq!(Resource::parse(bad), None, "{bad:?}");
        }
        assert!(Resource::parse(&format!("projects/{}", "a".repeat(255))).is_some());
    }

    #[test]
    fn project_grant_allows_every_deployment() {
        let store = store(&[(PROJECT_NAME, invoker_alice())]);
        assert!(invokes(&store, ORDERS, &alice()));
        assert!(invokes(&store, PAYMENTS, &alice()));
        assert!(invokes(
            &store,
            "organizations/demo-project/environments/test/deployments/other",
            &alice()
        ));
        assert!(!invokes(&store, ORDERS, &bob()));
        // Works through a trait object too.
        let dynamic: &dyn PolicyLookup = &store;
        assert!(may_invoke(dynamic, PROJECT_NAME, PAYMENTS, &alice()));
    }

    #[test]
    fn deployment_grant_allows_only_that_deployment() {
        let store = store(&[(ORDERS, invoker_alice())]);
        assert!(invokes(&store, ORDERS, &alice()));
        assert!(!invokes(&store, PAYMENTS, &alice()));
        assert!(!invokes(&store, ORDERS, &bob()));
        assert!(
            !held(&store, PROJECT, &resource(PROJECT_NAME), &alice())
                .contains(PermissionSet::INVOKE)
        );
    }

    #[test]
    fn environment_invoke_does_not_pass_down() {
        let store = store(&[
            (PROD, invoker_alice()),
            (
                PROJECT_NAME,
                policy(&[("roles/owner", &["user:carol@example.com"])]),
            ),
        ]);
        assert!(!invokes(&store, ORDERS, &alice()));
        assert!(!invokes(&store, PAYMENTS, &alice()));
        // It is still held on the environment itself.
        assert!(held(&store, PROJECT, &resource(PROD), &alice()).contains(PermissionSet::INVOKE));
    }

    #[test]
    fn on_a_deployment_only_invoke_counts() {
        let store = store(&[(
            ORDERS,
            policy(&[("roles/apigee.admin", &["user:alice@example.com"])]),
        )]);
        assert_eq!(
            held(&store, PROJECT, &resource(ORDERS), &alice()),
            PermissionSet::EMPTY
        );
        let store_owner = self::store(&[(
            ORDERS,
            policy(&[("roles/owner", &["user:alice@example.com"])]),
        )]);
        assert_eq!(
            held(&store_owner, PROJECT, &resource(ORDERS), &alice()),
            PermissionSet::INVOKE
        );
    }

    #[test]
    fn environment_grant_of_admin_permissions_covers_its_deployments() {
        let store = store(&[(
            PROD,
            policy(&[("roles/apigee.admin", &["user:alice@example.com"])]),
        )]);
        let on_orders = held(&store, PROJECT, &resource(ORDERS), &alice());
        assert_eq!(
            on_orders,
            PermissionSet::DEPLOYMENTS.difference(PermissionSet::INVOKE)
        );
        let elsewhere = held(
            &store,
            PROJECT,
            &resource("organizations/demo-project/environments/test/deployments/orders"),
            &alice(),
        );
        assert_eq!(elsewhere, PermissionSet::EMPTY);
    }

    #[test]
    fn project_grants_are_limited_to_what_applies() {
        let store = store(&[(
            PROJECT_NAME,
            policy(&[("roles/owner", &["user:alice@example.com"])]),
        )]);
        assert_eq!(
            held(&store, PROJECT, &resource(ORDERS), &alice()),
            PermissionSet::DEPLOYMENTS
        );
        assert_eq!(
            held(&store, PROJECT, &resource(PROD), &alice()),
            PermissionSet::DEPLOYMENTS.union(PermissionSet::ENVIRONMENTS)
        );
        assert_eq!(
            held(&store, PROJECT, &resource(PROJECT_NAME), &alice()),
            PermissionSet::all()
        );
    }

    #[test]
    fn unknown_role_at_compile_grants_nothing() {
        let mut p = policy(&[
            ("roles/apigee.superInvoker", &["user:alice@example.com"]),
            (DEPLOYMENT_INVOKER, &["bob", "user:"]),
        ]);
        p.bindings.push(Binding {
            role: DEPLOYMENT_INVOKER.into(),
            members: vec!["user:alice@example.com".into()],
            condition: Some(Expr {
                expression: "false".into(),
                ..Expr::default()
            }),
        });
        let compiled = CompiledPolicy::compile(&p, &PredefinedRoles);
        assert!(compiled.is_empty());
        assert_eq!(compiled.granted(&alice()), PermissionSet::EMPTY);
        let store = store(&[(PROJECT_NAME, p)]);
        assert!(!invokes(&store, ORDERS, &alice()));
    }

    #[test]
    fn compile_unions_roles_and_canonicalizes_members() {
        let compiled = CompiledPolicy::compile(
            &policy(&[
                (DEPLOYMENT_INVOKER, &["user:Alice@Example.com"]),
                ("roles/viewer", &["user:alice@example.com"]),
            ]),
            &PredefinedRoles,
        );
        let viewer = PredefinedRoles
            .permissions("roles/viewer")
            .unwrap_or_default();
        assert_eq!(
            compiled.granted(&alice()),
            viewer.union(PermissionSet::INVOKE)
        );
    }

    #[test]
    fn group_and_domain_grants_match_their_principals() {
        let store = store(&[
            (
                ORDERS,
                policy(&[(DEPLOYMENT_INVOKER, &["group:ops@example.com"])]),
            ),
            (
                PAYMENTS,
                policy(&[(DEPLOYMENT_INVOKER, &["domain:example.com"])]),
            ),
        ]);
        let in_ops = principal_members(None, &["ops@example.com".into()], None);
        assert!(invokes(&store, ORDERS, &in_ops));
        assert!(!invokes(&store, ORDERS, &alice()));
        assert!(invokes(&store, PAYMENTS, &alice()));
        let outsider = principal_members(Some("eve@example.org"), &[], None);
        assert!(!invokes(&store, PAYMENTS, &outsider));
    }

    #[test]
    fn all_users_and_all_authenticated_users_always_match() {
        let store = store(&[
            (ORDERS, policy(&[(DEPLOYMENT_INVOKER, &["allUsers"])])),
            (
                PAYMENTS,
                policy(&[(DEPLOYMENT_INVOKER, &["allAuthenticatedUsers"])]),
            ),
        ]);
        for members in [
            alice(),
            principal_members(None, &[], None),
            principal_members(None, &[], Some("principal://pool/subject/x")),
        ] {
            assert!(invokes(&store, ORDERS, &members));
            assert!(invokes(&store, PAYMENTS, &members));
        }
        // Nobody else is implied: no members, no grant.
        assert!(!invokes(&store, ORDERS, &[]));
    }

    #[test]
    fn federated_subject_member_matches_verbatim() {
        let subject = "principal://iam.googleapis.com/locations/global/workforcePools/p/subject/s";
        let store = store(&[(ORDERS, policy(&[(DEPLOYMENT_INVOKER, &[subject])]))]);
        assert!(invokes(
            &store,
            ORDERS,
            &principal_members(None, &[], Some(subject))
        ));
        assert!(!invokes(&store, ORDERS, &alice()));
    }

    #[test]
    fn deleted_members_grant_nothing() {
        let store = store(&[(
            ORDERS,
            policy(&[(
                DEPLOYMENT_INVOKER,
                &["deleted:user:alice@example.com?uid=1234567890"],
            )]),
        )]);
        assert!(!invokes(&store, ORDERS, &alice()));
    }

    #[test]
    fn pool_sets_match_the_pool_identities_they_describe_and_nobody_else() {
        use crate::iam::member::pool_members;
        const POOL: &str = "projects/1/locations/global/workloadIdentityPools/k8s";
        let set = "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/k8s/attribute.namespace/default";
        let store = store(&[(ORDERS, policy(&[(DEPLOYMENT_INVOKER, &[set])]))]);
        let namespace = |ns: &str| vec![("namespace".to_string(), ns.to_string())];
        assert!(invokes(
            &store,
            ORDERS,
            &pool_members(POOL, "a", &[], &namespace("default"))
        ));
        assert!(!invokes(
            &store,
            ORDERS,
            &pool_members(POOL, "a", &[], &namespace("other"))
        ));
        let other_pool = "projects/1/locations/global/workloadIdentityPools/ci";
        assert!(!invokes(
            &store,
            ORDERS,
            &pool_members(other_pool, "a", &[], &namespace("default"))
        ));
        assert!(!invokes(&store, ORDERS, &alice()));
    }

    #[test]
    fn test_permissions_returns_held_subset_in_order() {
        let store = store(&[
            (
                PROJECT_NAME,
                policy(&[("roles/viewer", &["user:alice@example.com"])]),
            ),
            (ORDERS, invoker_alice()),
        ]);
        let asked: Vec<String> = [
            "apigee.deployments.list",
            "apigee.deployments.delete",
            INVOKE,
            "apigee.deployments.get",
            "apigee.deployments.list",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            test_permissions(&store, PROJECT, &resource(ORDERS), &alice(), &asked),
            Ok(vec![
                "apigee.deployments.list".to_owned(),
                INVOKE.to_owned(),
                "apigee.deployments.get".to_owned(),
            ])
        );
        assert_eq!(
            test_permissions(&store, PROJECT, &resource(ORDERS), &bob(), &asked),
            Ok(vec![])
        );
        assert_eq!(
            test_permissions(&store, PROJECT, &resource(ORDERS), &alice(), &[]),
            Ok(vec![])
        );
    }

    #[test]
    fn test_permissions_refuses_unknown_permission() {
        let store = store(&[(PROJECT_NAME, invoker_alice())]);
        let asked = vec![INVOKE.to_owned(), "apigee.deployments.fly".to_owned()];
        let err =
            test_permissions(&store, PROJECT, &resource(ORDERS), &alice(), &asked).unwrap_err();
        assert_eq!(
            err,
            EvalError::UnknownPermission("apigee.deployments.fly".into())
        );
        assert!(err.to_string().contains("\"apigee.deployments.fly\""));
    }

    #[test]
    fn test_permissions_refuses_permission_not_applicable() {
        let store = store(&[]);
        let asked = vec!["resourcemanager.projects.get".to_owned()];
        let err =
            test_permissions(&store, PROJECT, &resource(ORDERS), &alice(), &asked).unwrap_err();
        assert_eq!(
            err,
            EvalError::NotApplicable {
                permission: "resourcemanager.projects.get".into(),
                resource: ORDERS.into(),
            }
        );
        assert!(err.to_string().contains(ORDERS));
        let asked = vec!["apigee.environments.get".to_owned()];
        assert!(test_permissions(&store, PROJECT, &resource(ORDERS), &alice(), &asked).is_err());
        assert_eq!(
            test_permissions(&store, PROJECT, &resource(PROD), &alice(), &asked),
            Ok(vec![])
        );
    }

    #[test]
    fn bootstrap_grant_of_owner_holds_everything() {
        let owner = PredefinedRoles
            .permissions("roles/owner")
            .unwrap_or_default();
        let mut compiled = CompiledPolicy::default();
        compiled.grant("user:Root@Example.com", owner);
        assert_eq!(
            compiled.granted(&principal_members(Some("root@example.com"), &[], None)),
            PermissionSet::all()
        );
        let store: Store = [(PROJECT_NAME.to_owned(), compiled)].into();
        let root = principal_members(Some("root@example.com"), &[], None);
        assert_eq!(
            held(&store, PROJECT, &resource(PROJECT_NAME), &root),
            PermissionSet::all()
        );
        assert!(invokes(&store, ORDERS, &root));
        assert_eq!(
            held(&store, PROJECT, &resource(PROD), &root),
            applicable(&resource(PROD))
        );
        assert!(!invokes(&store, ORDERS, &alice()));
    }

    /// A store with group data, as the snapshot keeps it: member → its groups.
    struct WithGroups(Store, HashMap<Box<str>, Box<[Box<str>]>>);

    impl PolicyLookup for WithGroups {
        fn policy(&self, resource_name: &str) -> Option<&CompiledPolicy> {
            self.0.get(resource_name)
        }
        fn groups_of(&self, member: &str) -> &[Box<str>] {
            self.1.get(member).map_or(&[], |g| g)
        }
    }

    #[test]
    fn group_membership_kept_by_verifyiam_grants_through_group_bindings() {
        let policies = store(&[(
            ORDERS,
            policy(&[(DEPLOYMENT_INVOKER, &["group:ops@example.com"])]),
        )]);
        let groups: HashMap<Box<str>, Box<[Box<str>]>> = [(
            "user:alice@example.com".into(),
            vec!["group:ops@example.com".into()].into_boxed_slice(),
        )]
        .into();
        let lookup = WithGroups(policies, groups);
        assert!(may_invoke(&lookup, PROJECT_NAME, ORDERS, &alice()));
        assert!(
            held(&lookup, PROJECT, &resource(ORDERS), &alice()).contains(PermissionSet::INVOKE)
        );
        assert!(!may_invoke(&lookup, PROJECT_NAME, ORDERS, &bob()));
        assert!(!may_invoke(&lookup, PROJECT_NAME, PAYMENTS, &alice()));
        // Without the membership, alice's own members do not match the group binding.
        let without = WithGroups(lookup.0, HashMap::new());
        assert!(!may_invoke(&without, PROJECT_NAME, ORDERS, &alice()));
    }
}
