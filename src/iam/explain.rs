//! Why a principal holds (or lacks) a permission on a resource: the decision of [`held`] with its
//! reasons, per policy that counts, per binding (does its role carry the permission?) and per
//! member (does it include the principal, and how?), with the facts whose change would flip the
//! answer marked [`Relevance::High`]. The troubleshooter answers from this; the Check's
//! [`may_invoke`] is its hot-path form, and the property test below holds the two equal.
//!
//! [`held`]: super::eval::held
//! [`may_invoke`]: super::eval::may_invoke

use std::collections::HashSet;

use super::eval::{EvalError, PolicyLookup, Resource, applicable, held, reaches};
use super::member::Member;
use super::policy::{Binding, Expr, Policy};
use super::roles::{PermissionSet, RoleCatalog};

pub use super::eval::Level;

/// How much a fact weighs on the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relevance {
    /// Changing it alone would not change the answer.
    Normal,
    /// Changing it alone would change the answer.
    High,
}

/// Whether a binding's role carries the permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolePermission {
    /// It does.
    Included,
    /// It does not.
    NotIncluded,
    /// A custom role that carries the permission but is `DISABLED`: it carries nothing.
    Disabled,
    /// A role the catalogue does not know: it carries nothing.
    UnknownRole,
}

/// How a binding member includes the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The principal's own member (`user:`, `serviceAccount:`, `principal://`).
    Direct,
    /// A set of a pool's identities that includes the principal (`principalSet://`: the whole
    /// pool, or one of its groups or attribute values).
    PrincipalSet,
    /// A group the principal belongs to.
    Group,
    /// The domain of the principal's email.
    Domain,
    /// `allAuthenticatedUsers`.
    AllAuthenticatedUsers,
    /// `allUsers`.
    AllUsers,
}

/// One member of a binding, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedMember {
    /// The member as the binding lists it.
    pub member: String,
    /// How it includes the principal; `None` when it does not.
    pub matched: Option<Match>,
    /// Whether changing this member alone would change the answer.
    pub relevance: Relevance,
}

/// One binding of a policy, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedBinding {
    /// The role bound.
    pub role: String,
    /// A grant that lives outside the stored document (the configured bootstrap administrators'
    /// `roles/owner` on the project).
    pub implicit: bool,
    /// Whether the role carries the permission.
    pub role_permission: RolePermission,
    /// Whether changing the role alone would change the answer.
    pub role_relevance: Relevance,
    /// The binding's condition; a conditional binding grants nothing (conditions are refused).
    pub condition: Option<Expr>,
    /// Each member.
    pub members: Vec<ExplainedMember>,
    /// Whether this binding grants the permission on the resource asked about.
    pub granted: bool,
    /// Whether changing this binding alone would change the answer.
    pub relevance: Relevance,
}

impl ExplainedBinding {
    /// Whether some member includes the principal.
    pub fn matches(&self) -> bool {
        self.members.iter().any(|m| m.matched.is_some())
    }

    /// Whether the binding would grant the permission where it is attached.
    fn would_grant(&self) -> bool {
        self.role_permission == RolePermission::Included
            && self.condition.is_none()
            && self.matches()
    }
}

/// One policy, explained.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainedPolicy {
    /// The resource it is attached to (relative name).
    pub resource: String,
    /// The level of that resource.
    pub level: Level,
    /// Whether a grant of the permission in this policy reaches the resource asked about. It
    /// does not from an environment for invoke, nor from a deployment for anything but invoke.
    pub passes_down: bool,
    /// Whether this policy grants the permission on the resource asked about.
    pub granted: bool,
    /// The stored document (bootstrap grants are not in it).
    pub policy: Policy,
    /// Each binding, implicit ones first.
    pub bindings: Vec<ExplainedBinding>,
    /// Whether changing this policy alone could change the answer.
    pub relevance: Relevance,
}

/// A decision with its reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Whether the principal holds the permission on the resource: always equal to
    /// `held(..).contains(permission)`.
    pub granted: bool,
    /// Every policy that counts, then any policy that would grant but does not pass down.
    pub policies: Vec<ExplainedPolicy>,
}

/// Where an explanation reads the documents behind the compiled policies a Check reads.
pub trait ExplainSource: PolicyLookup {
    /// The stored policy of a resource, if it has one.
    fn document(&self, resource_name: &str) -> Option<&Policy>;

    /// The role catalogue the compiled policies were built with.
    fn catalog(&self) -> &dyn RoleCatalog;

    /// The permissions a `DISABLED` custom role lists (it grants none of them); `None` for any
    /// other role.
    fn disabled_role(&self, _role: &str) -> Option<PermissionSet> {
        None
    }

    /// Grants compiled into a resource's policy that its document does not hold, as bindings
    /// with canonical members (the bootstrap administrators' `roles/owner` on the project).
    fn implicit_bindings(&self, _resource_name: &str) -> Vec<Binding> {
        Vec::new()
    }
}

/// Explains whether `members` hold `permission` on `resource` (whose organization maps to
/// `project`), by the same rules as [`held`](super::eval::held).
///
/// An unknown permission, or one that means nothing on this kind of resource, is an error.
pub fn explain<S: ExplainSource + ?Sized>(
    source: &S,
    project: &str,
    resource: &Resource,
    members: &[Box<str>],
    permission: &str,
) -> Result<Explanation, EvalError> {
    let wanted = PermissionSet::of(permission)
        .ok_or_else(|| EvalError::UnknownPermission(permission.to_owned()))?;
    if !applicable(resource).contains(wanted) {
        return Err(EvalError::NotApplicable {
            permission: permission.to_owned(),
            resource: resource.name(),
        });
    }
    // The principal's members and the groups the store says they belong to.
    let own: HashSet<&str> = members.iter().map(|m| &**m).collect();
    let groups: HashSet<&str> = members
        .iter()
        .flat_map(|m| source.groups_of(m).iter().map(|g| &**g))
        .collect();
    let mut policies = Vec::new();
    for reach in reaches(project, resource) {
        let (name, level) = (reach.name, reach.level);
        let passes_down = reach.passes.contains(wanted);
        let document = source.document(&name).cloned();
        let mut bindings: Vec<ExplainedBinding> = source
            .implicit_bindings(&name)
            .iter()
            .map(|b| explain_binding(source, b, true, wanted, &own, &groups))
            .collect();
        if let Some(document) = &document {
            bindings.extend(
                document
                    .bindings
                    .iter()
                    .map(|b| explain_binding(source, b, false, wanted, &own, &groups)),
            );
        }
        for binding in &mut bindings {
            binding.granted = passes_down && binding.would_grant();
        }
        let would_grant = bindings.iter().any(ExplainedBinding::would_grant);
        // A policy whose grant does not reach the resource is shown only when it would grant:
        // that is the grant an operator expects to work (an environment's invoke).
        if !passes_down && !would_grant {
            continue;
        }
        policies.push(ExplainedPolicy {
            resource: name,
            level,
            passes_down,
            granted: passes_down && would_grant,
            policy: document.unwrap_or_default(),
            bindings,
            relevance: Relevance::Normal,
        });
    }
    // The answer is the Check's own evaluation; the reasons above are read from the same table
    // of levels, and must agree with it.
    let granted = held(source, project, resource, members).contains(wanted);
    debug_assert_eq!(granted, policies.iter().any(|p| p.granted));
    mark_relevance(&mut policies, granted);
    Ok(Explanation { granted, policies })
}

fn explain_binding<S: ExplainSource + ?Sized>(
    source: &S,
    binding: &Binding,
    implicit: bool,
    wanted: PermissionSet,
    own: &HashSet<&str>,
    groups: &HashSet<&str>,
) -> ExplainedBinding {
    let role_permission = match source.catalog().permissions(&binding.role) {
        None => RolePermission::UnknownRole,
        Some(p) if p.contains(wanted) => RolePermission::Included,
        Some(_)
            if source
                .disabled_role(&binding.role)
                .is_some_and(|p| p.contains(wanted)) =>
        {
            RolePermission::Disabled
        }
        Some(_) => RolePermission::NotIncluded,
    };
    let members = binding
        .members
        .iter()
        .map(|m| ExplainedMember {
            member: m.clone(),
            matched: matches(m, own, groups),
            relevance: Relevance::Normal,
        })
        .collect();
    ExplainedBinding {
        role: binding.role.clone(),
        implicit,
        role_permission,
        role_relevance: Relevance::Normal,
        condition: binding.condition.clone(),
        members,
        granted: false,
        relevance: Relevance::Normal,
    }
}

/// How the binding member `member` includes the principal whose canonical members are `own`
/// (and who belongs to `groups`), as compiling the policy would match it.
fn matches(member: &str, own: &HashSet<&str>, groups: &HashSet<&str>) -> Option<Match> {
    // A member that does not parse grants nothing (see `CompiledPolicy::compile`).
    let parsed = Member::parse(member).ok()?;
    let canonical = parsed.to_string();
    let kind = match parsed {
        Member::User(_) | Member::ServiceAccount(_) | Member::Principal(_) => Match::Direct,
        Member::PrincipalSet(_) => Match::PrincipalSet,
        // A deleted principal includes nobody.
        Member::Deleted(_) => return None,
        Member::Group(_) => Match::Group,
        Member::Domain(_) => Match::Domain,
        Member::AllAuthenticatedUsers => Match::AllAuthenticatedUsers,
        Member::AllUsers => Match::AllUsers,
    };
    let found = own.contains(canonical.as_str())
        || (kind == Match::Group && groups.contains(canonical.as_str()));
    found.then_some(kind)
}

/// Marks HIGH exactly the facts whose change alone would flip the answer.
///
/// Granted: when a single binding grants, that binding, its role, and its member when only one
/// member matches; the policy holding every granting binding. Not granted: in the policies that
/// pass down, each binding one change away from granting (its role carries the permission but
/// no member matches, or a member matches but the role lacks the permission), and the policies
/// themselves (a binding added to them would grant).
fn mark_relevance(policies: &mut [ExplainedPolicy], granted: bool) {
    if granted {
        let granting: usize = policies
            .iter()
            .map(|p| p.bindings.iter().filter(|b| b.granted).count())
            .sum();
        for policy in policies.iter_mut() {
            let here = policy.bindings.iter().filter(|b| b.granted).count();
            if here == granting {
                policy.relevance = Relevance::High;
            }
            if granting != 1 {
                continue;
            }
            for binding in policy.bindings.iter_mut().filter(|b| b.granted) {
                binding.relevance = Relevance::High;
                binding.role_relevance = Relevance::High;
                let matched = binding
                    .members
                    .iter()
                    .filter(|m| m.matched.is_some())
                    .count();
                if matched == 1 {
                    for m in binding.members.iter_mut().filter(|m| m.matched.is_some()) {
                        m.relevance = Relevance::High;
                    }
                }
            }
        }
    } else {
        for policy in policies.iter_mut().filter(|p| p.passes_down) {
            policy.relevance = Relevance::High;
            for binding in &mut policy.bindings {
                let role = binding.role_permission == RolePermission::Included;
                let member = binding.matches();
                if binding.condition.is_none() && role != member {
                    binding.relevance = Relevance::High;
                    if member {
                        binding.role_relevance = Relevance::High;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::iam::custom::{CustomRole, RoleStage};
    use crate::iam::eval::{held, may_invoke};
    use crate::iam::member::principal_members;
    use crate::iam::roles::{DEPLOYMENT_INVOKER, INVOKE, PERMISSIONS};
    use crate::iam::testing::*;

    fn invoke(f: &Fixture, on: &str, members: &[Box<str>]) -> Explanation {
        explain(f, PROJECT, &resource(on), members, INVOKE).expect("invoke applies")
    }

    #[test]
    fn explanation_shows_a_pool_set_as_including_the_pool_principal_and_deleted_as_nobody() {
        const POOL: &str = "projects/1/locations/global/workloadIdentityPools/k8s";
        let set = format!("principalSet://iam.googleapis.com/{POOL}/attribute.namespace/default");
        let other = format!("principalSet://iam.googleapis.com/{POOL}/attribute.namespace/other");
        let f = Fixture::new(
            vec![(
                ORDERS,
                policy(&[(
                    DEPLOYMENT_INVOKER,
                    &[
                        "deleted:user:alice@example.com?uid=1",
                        other.as_str(),
                        set.as_str(),
                    ],
                )]),
            )],
            vec![],
            &[],
            &[],
        );
        let caller = crate::iam::member::pool_members(
            POOL,
            "system:serviceaccount:default:orders",
            &[],
            &[("namespace".into(), "default".into())],
        );
        let e = invoke(&f, ORDERS, &caller);
        assert!(e.granted);
        let b = &e.policies[1].bindings[0];
        let matched: Vec<_> = b.members.iter().map(|m| m.matched).collect();
        assert_eq!(matched, [None, None, Some(Match::PrincipalSet)]);
        // The deleted member is not alice, and grants her nothing.
        let e = invoke(&f, ORDERS, &alice());
        assert!(!e.granted);
        assert_eq!(e.policies[1].bindings[0].members[0].matched, None);
    }

    #[test]
    fn explanation_names_the_granting_binding_as_high() {
        let f = Fixture::new(
            vec![(
                ORDERS,
                policy(&[(
                    DEPLOYMENT_INVOKER,
                    &["user:alice@example.com", "user:bob@example.com"],
                )]),
            )],
            vec![],
            &[],
            &[],
        );
        let e = invoke(&f, ORDERS, &alice());
        assert!(e.granted);
        let levels: Vec<_> = e.policies.iter().map(|p| p.level).collect();
        assert_eq!(levels, [Level::Project, Level::Deployment]);
        let d = &e.policies[1];
        assert!(d.granted && d.relevance == Relevance::High);
        let b = &d.bindings[0];
        assert_eq!(b.role_permission, RolePermission::Included);
        assert_eq!(
            (b.relevance, b.role_relevance),
            (Relevance::High, Relevance::High)
        );
        assert_eq!(b.members[0].matched, Some(Match::Direct));
        assert_eq!(b.members[0].relevance, Relevance::High);
        assert_eq!(b.members[1].matched, None);
        assert_eq!(b.members[1].relevance, Relevance::Normal);
        assert_eq!(e.policies[0].relevance, Relevance::Normal);
    }

    #[test]
    fn explanation_of_two_grants_marks_no_single_binding_high() {
        let f = Fixture::new(
            vec![
                (
                    PROJECT_NAME,
                    policy(&[(DEPLOYMENT_INVOKER, &["domain:example.com"])]),
                ),
                (ORDERS, policy(&[(DEPLOYMENT_INVOKER, &["allUsers"])])),
            ],
            vec![],
            &[],
            &[],
        );
        let e = invoke(&f, ORDERS, &alice());
        assert!(e.granted);
        for p in &e.policies {
            assert_eq!(p.relevance, Relevance::Normal);
            assert!(p.bindings.iter().all(|b| b.relevance == Relevance::Normal));
        }
        assert_eq!(
            e.policies[0].bindings[0].members[0].matched,
            Some(Match::Domain)
        );
        assert_eq!(
            e.policies[1].bindings[0].members[0].matched,
            Some(Match::AllUsers)
        );
    }

    #[test]
    fn explanation_shows_environment_invoke_as_not_passing_down() {
        let f = Fixture::new(
            vec![(
                PROD,
                policy(&[(DEPLOYMENT_INVOKER, &["group:ops@example.com"])]),
            )],
            vec![],
            &[("ops@example.com", &["user:alice@example.com"])],
            &[],
        );
        let e = invoke(&f, ORDERS, &alice());
        assert!(!e.granted);
        let env = e
            .policies
            .iter()
            .find(|p| p.level == Level::Environment)
            .expect("the environment's grant is shown");
        assert!(!env.passes_down && !env.granted);
        assert_eq!(env.relevance, Relevance::Normal);
        let b = &env.bindings[0];
        assert_eq!(b.members[0].matched, Some(Match::Group));
        assert!(!b.granted && b.relevance == Relevance::Normal);
        // The policies that count are HIGH: a grant added to either would flip the answer.
        for p in e.policies.iter().filter(|p| p.passes_down) {
            assert_eq!(p.relevance, Relevance::High, "{}", p.resource);
        }
        // On the environment itself, the same grant counts.
        assert!(invoke(&f, PROD, &alice()).granted);
    }

    #[test]
    fn explanation_hides_environment_policy_that_would_not_grant() {
        let f = Fixture::new(
            vec![(
                PROD,
                policy(&[(DEPLOYMENT_INVOKER, &["user:bob@example.com"])]),
            )],
            vec![],
            &[],
            &[],
        );
        let e = invoke(&f, ORDERS, &alice());
        assert!(e.policies.iter().all(|p| p.level != Level::Environment));
    }

    #[test]
    fn explanation_of_disabled_custom_role_carries_nothing() {
        let role = CustomRole {
            name: "projects/demo-project/roles/caller".into(),
            title: String::new(),
            description: String::new(),
            included_permissions: vec![INVOKE.into()],
            stage: RoleStage::Disabled,
            etag: None,
        };
        let f = Fixture::new(
            vec![(
                PROJECT_NAME,
                policy(&[(
                    "projects/demo-project/roles/caller",
                    &["user:alice@example.com"],
                )]),
            )],
            vec![role],
            &[],
            &[],
        );
        let e = invoke(&f, ORDERS, &alice());
        assert!(!e.granted);
        let b = &e.policies[0].bindings[0];
        assert_eq!(b.role_permission, RolePermission::Disabled);
        // One change from granting: the member matches, so the role is what flips it.
        assert_eq!(
            (b.relevance, b.role_relevance),
            (Relevance::High, Relevance::High)
        );
    }

    #[test]
    fn explanation_of_role_without_permission_marks_the_role_high() {
        let f = Fixture::new(
            vec![(
                PROJECT_NAME,
                policy(&[
                    ("roles/viewer", &["user:alice@example.com"]),
                    (DEPLOYMENT_INVOKER, &["user:bob@example.com"]),
                    ("roles/apigee.superInvoker", &["user:alice@example.com"]),
                ]),
            )],
            vec![],
            &[],
            &[],
        );
        let e = invoke(&f, ORDERS, &alice());
        assert!(!e.granted);
        let b = &e.policies[0].bindings;
        assert_eq!(b[0].role_permission, RolePermission::NotIncluded);
        assert_eq!(b[0].role_relevance, Relevance::High);
        assert_eq!(b[1].role_permission, RolePermission::Included);
        assert_eq!(
            (b[1].relevance, b[1].role_relevance),
            (Relevance::High, Relevance::Normal)
        );
        assert_eq!(b[2].role_permission, RolePermission::UnknownRole);
    }

    #[test]
    fn explanation_shows_bootstrap_owner_as_implicit_binding() {
        let f = Fixture::new(vec![], vec![], &[], &["user:alice@example.com"]);
        let e = invoke(&f, ORDERS, &alice());
        assert!(e.granted);
        let b = &e.policies[0].bindings[0];
        assert!(b.implicit && b.granted && b.role == "roles/owner");
        assert!(e.policies[0].policy.bindings.is_empty());
    }

    #[test]
    fn explanation_refuses_unknown_or_inapplicable_permission() {
        let f = Fixture::new(vec![], vec![], &[], &[]);
        let on = resource(ORDERS);
        assert!(matches!(
            explain(&f, PROJECT, &on, &alice(), "apigee.deployments.fly"),
            Err(EvalError::UnknownPermission(_))
        ));
        assert!(matches!(
            explain(&f, PROJECT, &on, &alice(), "resourcemanager.projects.get"),
            Err(EvalError::NotApplicable { .. })
        ));
    }

    // --- the troubleshooter and the Check can never disagree ---

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Over random policies at the project, environment and deployment levels, custom
        /// roles (one `DISABLED`, one deleted), groups, domains and bootstrap owners, the
        /// explanation's answer equals the Check's `may_invoke` and `held`, for every
        /// principal, resource and applicable permission.
        #[test]
        fn explanation_agrees_with_the_check(
            policies in prop::collection::vec(policy_strategy(), RESOURCES.len()),
            caller in prop::collection::vec(0..PERMISSIONS.len(), 0..4),
            ops in prop::collection::vec(0..EMAILS.len(), 0..3),
            bootstrap in prop::option::of(0..EMAILS.len()),
        ) {
            let documents: Vec<(&str, Policy)> = RESOURCES
                .iter()
                .zip(policies)
                .filter_map(|(name, p)| p.map(|p| (*name, p)))
                .collect();
            let ops_members: Vec<String> =
                ops.iter().map(|&i| format!("user:{}", EMAILS[i])).collect();
            let ops_refs: Vec<&str> = ops_members.iter().map(String::as_str).collect();
            let boot = bootstrap.map(|i| format!("user:{}", EMAILS[i]));
            let boot_refs: Vec<&str> = boot.iter().map(String::as_str).collect();
            let f = Fixture::new(
                documents,
                custom_roles(&caller),
                &[("ops@example.com", &ops_refs)],
                &boot_refs,
            );
            let callers = EMAILS
                .iter()
                .map(|email| (email.to_string(), principal_members(Some(email), &[], None)))
                .chain(pool_callers().into_iter().map(|m| (m[0].to_string(), m)));
            for (email, members) in callers {
                for name in RESOURCES {
                    let on = resource(name);
                    let held = held(&f, PROJECT, &on, &members);
                    for permission in applicable(&on).iter() {
                        let e = explain(&f, PROJECT, &on, &members, permission)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let wanted = PermissionSet::of(permission).unwrap_or_default();
                        prop_assert_eq!(e.granted, held.contains(wanted), "{} {} {}", email, name, permission);
                        // The reasons agree with the answer: some policy grants exactly when it is granted.
                        prop_assert_eq!(e.policies.iter().any(|p| p.granted), e.granted);
                    }
                    if matches!(on, Resource::Deployment { .. }) {
                        let e = explain(&f, PROJECT, &on, &members, INVOKE)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(
                            e.granted,
                            may_invoke(&f, PROJECT_NAME, name, &members),
                            "{} {}", email, name
                        );
                    }
                }
            }
        }
    }
}
