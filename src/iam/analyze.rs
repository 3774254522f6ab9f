//! The Policy Analyzer's answers: "who holds these permissions on this resource?" and "what does
//! this identity hold, and where?", as one result per binding that grants (Google's
//! `IamPolicyAnalysisResult`: where the policy is attached, the binding, the accesses on the
//! resources they reach, and the identities).
//!
//! Every answer is read through the Check's own evaluation: a binding's grant is the
//! [`CompiledPolicy`] of that binding alone (so unknown and `DISABLED` roles, conditions and
//! members that do not parse grant nothing, exactly as in a Check), matched to an identity by
//! [`granted_in`], and passed to a resource by the table of [`reaches`] — the table [`held`]
//! folds. A property test in [`super::explain`] holds "who can invoke D" equal to the
//! principals the Check allows.
//!
//! [`held`]: super::eval::held

use std::collections::BTreeSet;

use super::eval::{CompiledPolicy, Level, Resource, applicable, granted_in, reaches};
use super::explain::ExplainSource;
use super::member::{Member, principal_members};
use super::policy::{Binding, Policy};
use super::roles::PermissionSet;

/// At most this many roles and permissions in one access selector (Google's limit).
pub const MAX_SELECTED: usize = 10;

/// Where the analyzer reads what the explanations do, plus group members and deployments.
pub trait AnalyzeSource: ExplainSource {
    /// The members (canonical `user:` / `serviceAccount:`) of the group `email` that verifyiam
    /// keeps; `None` for a group it does not.
    fn group_members(&self, email: &str) -> Option<&[String]>;

    /// The full names of every resource that holds a stored policy.
    fn policy_names(&self) -> Vec<String>;

    /// The full names of the deployments a Check may allow (deployed), sorted.
    fn deployments(&self) -> Vec<String>;
}

/// A question, as `IamPolicyAnalysisQuery` asks it (the scope is checked by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `resource_selector`: only grants that reach this resource.
    pub resource: Option<Resource>,
    /// `identity_selector`: only grants that include this member.
    pub identity: Option<String>,
    /// `access_selector.roles`.
    pub roles: Vec<String>,
    /// `access_selector.permissions`.
    pub permissions: Vec<String>,
    /// `options.expand_groups`: list the members of groups verifyiam keeps.
    pub expand_groups: bool,
    /// `options.expand_roles`: accesses as permissions rather than roles.
    pub expand_roles: bool,
    /// `options.expand_resources`: list the deployments a grant reaches.
    pub expand_resources: bool,
    /// `options.output_group_edges`: with `expand_groups`, the group → member edges.
    pub output_group_edges: bool,
}

/// Why a query was refused (`INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// One access of an access-control list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// A role (when roles are not expanded).
    Role(String),
    /// A permission.
    Permission(String),
}

/// Accesses and the resources they reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// Full resource names (relative).
    pub resources: Vec<String>,
    /// The accesses.
    pub accesses: Vec<Access>,
}

/// One binding that grants, analysed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The resource its policy is attached to (relative name).
    pub attached: String,
    /// The level of that resource.
    pub level: Level,
    /// The binding as stored (or the bootstrap administrators' implicit one).
    pub binding: Binding,
    /// The accesses it grants and where.
    pub acls: Vec<Acl>,
    /// Who it grants them to.
    pub identities: Vec<String>,
    /// Group → member edges, when asked for.
    pub group_edges: Vec<(String, String)>,
    /// Whether nothing of it was left out for the cap.
    pub fully_explored: bool,
}

/// An analysis.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analysis {
    /// The grants, by policy (project, environments, deployments), then binding.
    pub grants: Vec<Grant>,
    /// Whether nothing was left out for the cap.
    pub fully_explored: bool,
}

/// Answers `query` in project `project`, listing at most `cap` grants, identities per grant and
/// resources per access-control list (beyond it, `fully_explored` is false).
///
/// Refused, as Google refuses them: `expand_groups` with an identity selector, `expand_roles`
/// with an access selector, more than [`MAX_SELECTED`] roles and permissions, an unknown
/// permission, and an identity that is not `user:`, `serviceAccount:`, `group:` or `domain:`.
pub fn analyze<S: AnalyzeSource + ?Sized>(
    source: &S,
    project: &str,
    query: &Query,
    cap: usize,
) -> Result<Analysis, QueryError> {
    let members = check(query)?;
    let wanted = query
        .permissions
        .iter()
        .try_fold(PermissionSet::EMPTY, |acc, p| {
            PermissionSet::of(p)
                .map(|p| acc.union(p))
                .ok_or_else(|| QueryError(format!("unknown permission {p:?}")))
        })?;
    let selecting = !query.roles.is_empty() || !query.permissions.is_empty();
    let deployments = if query.expand_resources {
        source.deployments()
    } else {
        Vec::new()
    };
    let mut analysis = Analysis {
        grants: Vec::new(),
        fully_explored: true,
    };
    for (attached, level, passes, base) in candidates(source, project, query.resource.as_ref()) {
        let implicit = source.implicit_bindings(&attached);
        let document = source.document(&attached);
        let bindings = implicit
            .iter()
            .chain(document.iter().flat_map(|d| d.bindings.iter()));
        for binding in bindings {
            // The binding alone, compiled as a Check compiles it.
            let single = CompiledPolicy::compile(
                &Policy {
                    bindings: vec![binding.clone()],
                    ..Policy::default()
                },
                source.catalog(),
            );
            let mut grants = single.granted_to_anyone().intersection(passes);
            if let Some(members) = &members {
                grants = grants.intersection(granted_in(source, &single, members));
            }
            let accesses = accesses(query, selecting, wanted, &binding.role, grants);
            if accesses.is_empty() {
                continue;
            }
            if analysis.grants.len() == cap {
                analysis.fully_explored = false;
                return Ok(analysis);
            }
            let mut grant = Grant {
                attached: attached.clone(),
                level,
                binding: binding.clone(),
                acls: Vec::new(),
                identities: Vec::new(),
                group_edges: Vec::new(),
                fully_explored: true,
            };
            acls(
                &mut grant,
                project,
                &base,
                &deployments,
                accesses,
                source,
                cap,
            );
            identities(&mut grant, source, query, &single, cap);
            analysis.fully_explored &= grant.fully_explored;
            analysis.grants.push(grant);
        }
    }
    Ok(analysis)
}

/// Validates the query; the identity's members (as a principal's token would give them), if
/// one is selected.
fn check(query: &Query) -> Result<Option<Vec<Box<str>>>, QueryError> {
    if query.expand_groups && query.identity.is_some() {
        return Err(QueryError(
            "options.expand_groups cannot be used with an identity_selector".to_owned(),
        ));
    }
    let selecting = !query.roles.is_empty() || !query.permissions.is_empty();
    if query.expand_roles && selecting {
        return Err(QueryError(
            "options.expand_roles cannot be used with an access_selector".to_owned(),
        ));
    }
    if query.roles.len() + query.permissions.len() > MAX_SELECTED {
        return Err(QueryError(format!(
            "access_selector: at most {MAX_SELECTED} roles and permissions in total"
        )));
    }
    let Some(identity) = &query.identity else {
        return Ok(None);
    };
    let refused = || {
        QueryError(format!(
            "invalid identity_selector.identity {identity:?}: expected user:EMAIL, \
             serviceAccount:EMAIL, group:EMAIL or domain:DOMAIN"
        ))
    };
    let members = match Member::parse(identity).map_err(|_| refused())? {
        Member::User(email) | Member::ServiceAccount(email) => {
            principal_members(Some(&email), &[], None)
        }
        member @ (Member::Group(_) | Member::Domain(_)) => {
            vec![member.to_string().into_boxed_str()]
        }
        _ => return Err(refused()),
    };
    Ok(Some(members))
}

/// The policies to read: with a resource, those that bear on it (each with what passes to it);
/// else every policy, with what it grants where it is attached. Each with the resource its
/// grants are reported on.
fn candidates<S: AnalyzeSource + ?Sized>(
    source: &S,
    project: &str,
    resource: Option<&Resource>,
) -> Vec<(String, Level, PermissionSet, Resource)> {
    if let Some(resource) = resource {
        let applies = applicable(resource);
        return reaches(project, resource)
            .into_iter()
            .map(|r| {
                (
                    r.name,
                    r.level,
                    r.passes.intersection(applies),
                    resource.clone(),
                )
            })
            .collect();
    }
    let project_name = format!("projects/{project}");
    let mut names: BTreeSet<String> = source.policy_names().into_iter().collect();
    names.remove(&project_name);
    let mut out = Vec::with_capacity(names.len() + 1);
    let mut push = |name: &str| {
        let Some(on) = Resource::parse(name) else {
            return;
        };
        if let Some(own) = reaches(project, &on).into_iter().find(|r| r.name == name) {
            out.push((
                own.name,
                own.level,
                own.passes.intersection(applicable(&on)),
                on,
            ));
        }
    };
    push(&project_name);
    // Environments before deployments: their names sort first.
    for name in &names {
        push(name);
    }
    out
}

/// What of `grants` (held through `role`) the query asks about, as accesses.
fn accesses(
    query: &Query,
    selecting: bool,
    wanted: PermissionSet,
    role: &str,
    grants: PermissionSet,
) -> Vec<Access> {
    if grants.is_empty() {
        return Vec::new();
    }
    if !selecting {
        return if query.expand_roles {
            grants
                .iter()
                .map(|p| Access::Permission(p.to_owned()))
                .collect()
        } else {
            vec![Access::Role(role.to_owned())]
        };
    }
    let mut out = Vec::new();
    if query.roles.iter().any(|r| r == role) {
        out.push(Access::Role(role.to_owned()));
    }
    out.extend(
        grants
            .intersection(wanted)
            .iter()
            .map(|p| Access::Permission(p.to_owned())),
    );
    out
}

/// The access-control lists: each access on the resource asked about (or the attached one),
/// and, with `expand_resources`, on each deployment below it that the grant reaches by the
/// rules of [`reaches`] (so an environment's invoke reaches none).
fn acls<S: AnalyzeSource + ?Sized>(
    grant: &mut Grant,
    project: &str,
    base: &Resource,
    deployments: &[String],
    accesses: Vec<Access>,
    source: &S,
    cap: usize,
) {
    let role = source
        .catalog()
        .permissions(&grant.binding.role)
        .unwrap_or_default();
    let base_name = base.name();
    let mut acls: Vec<Acl> = Vec::new();
    for access in accesses {
        let carried = match &access {
            Access::Role(_) => role,
            Access::Permission(p) => PermissionSet::of(p).unwrap_or_default(),
        };
        let mut resources = vec![base_name.clone()];
        let below = deployments
            .iter()
            .filter(|d| *d != &base_name && is_below(d, &base_name));
        for deployment in below {
            let Some(on) = Resource::parse(deployment) else {
                continue;
            };
            let reaches_it = reaches(project, &on)
                .into_iter()
                .find(|r| r.name == grant.attached)
                .is_some_and(|r| {
                    !carried
                        .intersection(r.passes)
                        .intersection(applicable(&on))
                        .is_empty()
                });
            if !reaches_it {
                continue;
            }
            if resources.len() == cap {
                grant.fully_explored = false;
                break;
            }
            resources.push(deployment.clone());
        }
        match acls.iter_mut().find(|a| a.resources == resources) {
            Some(acl) => acl.accesses.push(access),
            None => acls.push(Acl {
                resources,
                accesses: vec![access],
            }),
        }
    }
    grant.acls = acls;
}

/// Whether `name` is a resource below `parent` (a project holds every deployment of its
/// organization; the caller passes only this instance's deployments).
fn is_below(name: &str, parent: &str) -> bool {
    parent.starts_with("projects/")
        || name
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The identities of a grant: the selected identity, or the binding's members that grant (as
/// compiled) and, with `expand_groups`, the members of its groups.
fn identities<S: AnalyzeSource + ?Sized>(
    grant: &mut Grant,
    source: &S,
    query: &Query,
    single: &CompiledPolicy,
    cap: usize,
) {
    let mut seen = BTreeSet::new();
    let mut push = |grant: &mut Grant, identity: String| {
        if seen.contains(&identity) {
            return true;
        }
        if grant.identities.len() == cap {
            grant.fully_explored = false;
            return false;
        }
        seen.insert(identity.clone());
        grant.identities.push(identity);
        true
    };
    if let Some(identity) = &query.identity {
        push(grant, identity.clone());
        return;
    }
    let members: Vec<Member> = grant
        .binding
        .members
        .iter()
        .filter_map(|m| Member::parse(m).ok())
        .filter(|m| !single.granted_to(&m.to_string()).is_empty())
        .collect();
    for member in members {
        if !push(grant, member.to_string()) {
            return;
        }
        let Member::Group(email) = &member else {
            continue;
        };
        if !query.expand_groups {
            continue;
        }
        for inner in source.group_members(email).unwrap_or_default() {
            if query.output_group_edges {
                grant.group_edges.push((member.to_string(), inner.clone()));
            }
            if !push(grant, inner.clone()) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::iam::custom::{CustomRole, RoleStage};
    use crate::iam::eval::{PolicyLookup, may_invoke};
    use crate::iam::roles::{DEPLOYMENT_INVOKER, INVOKE};
    use crate::iam::testing::*;

    const PAYMENTS: &str = "organizations/demo-project/environments/prod/deployments/payments";
    const TEST_ORDERS: &str = "organizations/demo-project/environments/test/deployments/orders";

    fn who_can_invoke(on: &str) -> Query {
        Query {
            resource: Some(resource(on)),
            permissions: vec![INVOKE.to_owned()],
            expand_groups: true,
            output_group_edges: true,
            ..Query::default()
        }
    }

    fn what_can_invoke(identity: &str) -> Query {
        Query {
            identity: Some(identity.to_owned()),
            permissions: vec![INVOKE.to_owned()],
            expand_resources: true,
            ..Query::default()
        }
    }

    fn run(f: &Fixture, query: &Query) -> Analysis {
        analyze(f, PROJECT, query, 1000).expect("a valid query")
    }

    /// The deployments an analysis says are reached with invoke.
    fn invoked(a: &Analysis) -> BTreeSet<String> {
        a.grants
            .iter()
            .flat_map(|g| &g.acls)
            .filter(|acl| {
                acl.accesses
                    .contains(&Access::Permission(INVOKE.to_owned()))
            })
            .flat_map(|acl| acl.resources.iter())
            .filter(|r| r.contains("/deployments/"))
            .cloned()
            .collect()
    }

    fn fixture() -> Fixture {
        Fixture::new(
            vec![
                (
                    PROJECT_NAME,
                    policy(&[
                        (DEPLOYMENT_INVOKER, &["group:ops@example.com"]),
                        ("roles/viewer", &["user:carol@example.com"]),
                    ]),
                ),
                (
                    PROD,
                    policy(&[(DEPLOYMENT_INVOKER, &["user:bob@example.com"])]),
                ),
                (
                    ORDERS,
                    policy(&[(DEPLOYMENT_INVOKER, &["user:alice@example.com"])]),
                ),
            ],
            Vec::new(),
            &[("ops@example.com", &["user:dave@example.com"])],
            &[],
        )
    }

    #[test]
    fn who_can_invoke_lists_the_project_and_deployment_grants_with_group_members() {
        let a = run(&fixture(), &who_can_invoke(ORDERS));
        assert!(a.fully_explored);
        let attached: Vec<(&str, Level)> = a
            .grants
            .iter()
            .map(|g| (g.attached.as_str(), g.level))
            .collect();
        // The environment's invoke does not pass down: it is not among the grants.
        assert_eq!(
            attached,
            [(PROJECT_NAME, Level::Project), (ORDERS, Level::Deployment)]
        );
        let project = &a.grants[0];
        assert_eq!(project.binding.role, DEPLOYMENT_INVOKER);
        assert_eq!(
            project.acls,
            [Acl {
                resources: vec![ORDERS.to_owned()],
                accesses: vec![Access::Permission(INVOKE.to_owned())],
            }]
        );
        assert_eq!(
            project.identities,
            ["group:ops@example.com", "user:dave@example.com"]
        );
        assert_eq!(
            project.group_edges,
            [(
                "group:ops@example.com".to_owned(),
                "user:dave@example.com".to_owned()
            )]
        );
        assert_eq!(a.grants[1].identities, ["user:alice@example.com"]);
        // Without expand_groups, the group stands for its members.
        let mut plain = who_can_invoke(ORDERS);
        plain.expand_groups = false;
        let a = run(&fixture(), &plain);
        assert_eq!(a.grants[0].identities, ["group:ops@example.com"]);
        assert!(a.grants[0].group_edges.is_empty());
    }

    #[test]
    fn what_an_identity_can_invoke_expands_project_grants_but_not_environment_ones() {
        let f = fixture();
        // dave is in ops, which holds invoke on the project: every deployment.
        let a = run(&f, &what_can_invoke("user:dave@example.com"));
        assert_eq!(
            invoked(&a),
            [ORDERS, PAYMENTS, TEST_ORDERS]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert_eq!(a.grants[0].identities, ["user:dave@example.com"]);
        assert_eq!(a.grants[0].acls[0].resources[0], PROJECT_NAME);
        // alice: only her deployment.
        let a = run(&f, &what_can_invoke("user:alice@example.com"));
        assert_eq!(invoked(&a), [ORDERS.to_owned()].into_iter().collect());
        assert_eq!(a.grants[0].level, Level::Deployment);
        // bob holds invoke on the environment itself, which reaches no deployment.
        let a = run(&f, &what_can_invoke("user:bob@example.com"));
        assert_eq!(a.grants.len(), 1);
        assert_eq!(a.grants[0].level, Level::Environment);
        assert_eq!(a.grants[0].acls[0].resources, [PROD]);
        assert!(invoked(&a).is_empty());
        // Nobody else holds invoke anywhere.
        let a = run(&f, &what_can_invoke("user:carol@example.com"));
        assert!(a.grants.is_empty());
    }

    #[test]
    fn expand_roles_lists_the_permissions_a_role_carries_where_it_is_attached() {
        let f = fixture();
        let query = Query {
            resource: Some(resource(ORDERS)),
            expand_roles: true,
            ..Query::default()
        };
        let a = run(&f, &query);
        // On a deployment, roles/viewer (project) carries the deployment permissions it holds.
        let viewer = a
            .grants
            .iter()
            .find(|g| g.binding.role == "roles/viewer")
            .expect("viewer reaches orders");
        let accesses = &viewer.acls[0].accesses;
        assert!(accesses.contains(&Access::Permission("apigee.deployments.get".into())));
        assert!(!accesses.contains(&Access::Permission(INVOKE.into())));
        // Without expand_roles, the role itself is the access.
        let query = Query {
            resource: Some(resource(ORDERS)),
            ..Query::default()
        };
        let a = run(&f, &query);
        assert!(
            a.grants
                .iter()
                .all(|g| g.acls[0].accesses == [Access::Role(g.binding.role.clone())])
        );
    }

    #[test]
    fn a_disabled_custom_role_grants_nothing_to_analyse() {
        let role = |stage| CustomRole {
            name: "projects/demo-project/roles/caller".into(),
            title: String::new(),
            description: String::new(),
            included_permissions: vec![INVOKE.into()],
            stage,
            etag: None,
        };
        let documents = || {
            vec![(
                PROJECT_NAME,
                policy(&[(
                    "projects/demo-project/roles/caller",
                    &["user:alice@example.com"],
                )]),
            )]
        };
        let on = Fixture::new(documents(), vec![role(RoleStage::Ga)], &[], &[]);
        assert_eq!(run(&on, &who_can_invoke(ORDERS)).grants.len(), 1);
        let off = Fixture::new(documents(), vec![role(RoleStage::Disabled)], &[], &[]);
        assert!(run(&off, &who_can_invoke(ORDERS)).grants.is_empty());
    }

    #[test]
    fn refused_combinations_are_errors_not_answers() {
        let f = fixture();
        let mut groups_and_identity = what_can_invoke("user:alice@example.com");
        groups_and_identity.expand_groups = true;
        let mut roles_and_access = who_can_invoke(ORDERS);
        roles_and_access.expand_roles = true;
        let mut too_many = who_can_invoke(ORDERS);
        too_many.roles = (0..10).map(|i| format!("roles/r{i}")).collect();
        let mut unknown = who_can_invoke(ORDERS);
        unknown.permissions = vec!["apigee.deployments.fly".into()];
        for (query, says) in [
            (groups_and_identity, "expand_groups"),
            (roles_and_access, "expand_roles"),
            (too_many, "at most 10"),
            (unknown, "apigee.deployments.fly"),
            (what_can_invoke("allUsers"), "identity_selector"),
            (what_can_invoke("alice@example.com"), "identity_selector"),
        ] {
            let err = analyze(&f, PROJECT, &query, 1000).expect_err("refused");
            assert!(err.0.contains(says), "{err} should name {says}");
        }
    }

    #[test]
    fn the_cap_bounds_the_answer_and_says_so() {
        let f = fixture();
        // Two grants reach orders: with a cap of one, one is listed and the answer is partial.
        let a = analyze(&f, PROJECT, &who_can_invoke(ORDERS), 1).expect("valid");
        assert_eq!(a.grants.len(), 1);
        assert!(!a.fully_explored);
        // Three deployments under the project: the list is cut at the cap.
        let a = analyze(&f, PROJECT, &what_can_invoke("user:dave@example.com"), 2).expect("valid");
        assert_eq!(a.grants[0].acls[0].resources.len(), 2);
        assert!(!a.grants[0].fully_explored);
        assert!(!a.fully_explored);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Over random policies at the three levels, custom roles (one `DISABLED`, one
        /// deleted), groups, domains and bootstrap owners: "who can invoke D" covers exactly
        /// the principals the Check allows on D, and "what can X invoke" lists exactly the
        /// deployments the Check allows X on.
        #[test]
        fn who_can_invoke_is_exactly_who_the_check_allows(
            policies in prop::collection::vec(policy_strategy(), RESOURCES.len()),
            caller in prop::collection::vec(0..crate::iam::roles::PERMISSIONS.len(), 0..4),
            ops in prop::collection::vec(0..EMAILS.len(), 0..3),
            bootstrap in prop::option::of(0..EMAILS.len()),
        ) {
            let documents: Vec<(&str, crate::iam::policy::Policy)> = RESOURCES
                .iter()
                .zip(policies)
                .filter_map(|(name, p)| p.map(|p| (*name, p)))
                .collect();
            let ops_members: Vec<String> = ops.iter().map(|&i| member_of(EMAILS[i])).collect();
            let ops_refs: Vec<&str> = ops_members.iter().map(String::as_str).collect();
            let boot = bootstrap.map(|i| member_of(EMAILS[i]));
            let boot_refs: Vec<&str> = boot.iter().map(String::as_str).collect();
            let f = Fixture::new(
                documents,
                custom_roles(&caller),
                &[("ops@example.com", &ops_refs)],
                &boot_refs,
            );
            let deployments: Vec<&str> =
                RESOURCES.iter().copied().filter(|r| r.contains("/deployments/")).collect();
            for on in &deployments {
                let expanded = run(&f, &who_can_invoke(on));
                let mut plain_query = who_can_invoke(on);
                plain_query.expand_groups = false;
                let plain = run(&f, &plain_query);
                let listed = |a: &Analysis| -> BTreeSet<String> {
                    a.grants.iter().flat_map(|g| g.identities.iter().cloned()).collect()
                };
                let (expanded, plain) = (listed(&expanded), listed(&plain));
                for email in EMAILS {
                    let members = crate::iam::member::principal_members(Some(email), &[], None);
                    let allowed = may_invoke(&f, PROJECT_NAME, on, &members);
                    // Groups expanded: the principal is listed by one of its own members.
                    let covered = members.iter().any(|m| expanded.contains(&**m));
                    prop_assert_eq!(covered, allowed, "expanded: {} on {}", email, on);
                    // Not expanded: listed by its own members or a group it belongs to.
                    let covered = members.iter().any(|m| {
                        plain.contains(&**m)
                            || f.groups_of(m).iter().any(|g| plain.contains(&**g))
                    });
                    prop_assert_eq!(covered, allowed, "plain: {} on {}", email, on);
                }
            }
            for email in EMAILS {
                let members = crate::iam::member::principal_members(Some(email), &[], None);
                let allowed: BTreeSet<String> = deployments
                    .iter()
                    .filter(|d| may_invoke(&f, PROJECT_NAME, d, &members))
                    .map(|d| (*d).to_owned())
                    .collect();
                let a = run(&f, &what_can_invoke(&member_of(email)));
                prop_assert_eq!(invoked(&a), allowed, "what can {} invoke", email);
            }
        }
    }

    fn member_of(email: &str) -> String {
        if email.ends_with(".gserviceaccount.com") {
            format!("serviceAccount:{email}")
        } else {
            format!("user:{email}")
        }
    }
}
