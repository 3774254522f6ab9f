//! Identity and access management: who a principal is as policy members ([`member`]), which
//! permissions roles carry ([`roles`], [`custom`]), the policy document and its rules
//! ([`policy`]), the evaluation of policies against a principal on a resource ([`eval`]), and
//! that evaluation with its reasons ([`explain`]) and as the Policy Analyzer's answers
//! ([`analyze`]).
//!
//! Everything here is pure: no I/O, no clocks, no global state, so it is tested in isolation and
//! used unchanged by the Check hot path and the policy admin API.

pub mod analyze;
pub mod custom;
pub mod eval;
pub mod explain;
pub mod member;
pub mod policy;
pub mod roles;
#[cfg(test)]
pub(crate) mod testing;

pub use custom::{Catalog, CustomRole, RoleError, RoleStage};
pub use eval::{
    CompiledPolicy, EvalError, Level, PolicyLookup, Reach, Resource, applicable, held,
    invoke_level, may_invoke, reaches, test_permissions,
};
pub use member::{Member, MemberError, principal_members};
pub use policy::{
    Binding, Etag, Expr, MAX_GROUPS, MAX_PRINCIPALS, Policy, PolicyError, binding_changes,
    normalize,
};
pub use roles::{PREDEFINED, PermissionSet, PredefinedRoles, RoleCatalog};
