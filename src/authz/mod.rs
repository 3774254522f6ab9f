//! Authorization: a principal × a deployment → allowed or not, evaluated against the current
//! policy snapshot (project level or the deployment itself grant `apigee.deployments.invoke`).
//! Also the [`Decision`] every Check ends in: a denial is data, not an error.

use std::borrow::Cow;
use std::sync::Arc;

use crate::authn::Principal;
use crate::iam::eval::may_invoke;
use crate::route::Target;
use crate::store::PolicyStore;

/// The permission a caller needs on a deployment.
pub const INVOKE: &str = "apigee.deployments.invoke";

/// Why a Check was denied; each maps to one HTTP status and one `WWW-Authenticate` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No token or a malformed `Authorization` header (401, `invalid_request`).
    InvalidRequest,
    /// Bad, expired or untrusted token (401, `invalid_token`).
    InvalidToken,
    /// Valid token without the required scope (403, `insufficient_scope`).
    InsufficientScope,
    /// No invoke permission, or no such deployment (403).
    PermissionDenied,
    /// The request maps to no deployment (403).
    NoRoute,
    /// A dependency could not answer in time (503).
    Unavailable,
    /// The deployment was undeployed, or (strict mode) was never deployed (403, same message as
    /// [`Reason::PermissionDenied`]: existence is not leaked).
    NotDeployed,
}

impl Reason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "invalid_request",
            Reason::InvalidToken => "invalid_token",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::PermissionDenied => "permission_denied",
            Reason::NoRoute => "no_route",
            Reason::Unavailable => "unavailable",
            Reason::NotDeployed => "not_deployed",
        }
    }
}

/// A denial: the reason, a message safe to show the caller, and what was known.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Why.
    pub reason: Reason,
    /// Human-readable; never contains the token.
    pub message: Cow<'static, str>,
    /// The caller, when authenticated.
    pub principal: Option<Arc<Principal>>,
    /// The deployment, when known.
    pub target: Option<Target>,
}

/// The outcome of a Check.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Allowed.
    Allow {
        /// The caller.
        principal: Arc<Principal>,
        /// The deployment.
        target: Target,
    },
    /// Denied.
    Deny(Denial),
}

impl Decision {
    /// A denial with nothing known beyond the reason.
    pub fn deny(reason: Reason, message: impl Into<Cow<'static, str>>) -> Decision {
        Decision::Deny(Denial {
            reason,
            message: message.into(),
            principal: None,
            target: None,
        })
    }
}

/// The message for a missing permission, the same whether or not the deployment exists.
pub fn permission_denied_message(resource: &str) -> String {
    format!("Permission '{INVOKE}' denied on resource '{resource}' (or it may not exist).")
}

/// Evaluates invoke permission against the store.
pub struct Authorizer {
    store: Arc<PolicyStore>,
    /// `projects/{project}`, built once.
    project_name: Box<str>,
    organization: Box<str>,
    /// `iam.strict_deployments`: only explicitly deployed APIs may be allowed.
    strict_deployments: bool,
}

impl Authorizer {
    /// An authorizer for `project`, whose deployments live under `organization`.
    pub fn new(store: Arc<PolicyStore>, project: &str, organization: &str) -> Authorizer {
        Authorizer {
            store,
            project_name: format!("projects/{project}").into(),
            organization: organization.into(),
            strict_deployments: false,
        }
    }

    /// Only explicitly deployed APIs may be allowed (`iam.strict_deployments`).
    #[must_use]
    pub fn with_strict_deployments(mut self, strict: bool) -> Authorizer {
        self.strict_deployments = strict;
        self
    }

    /// Whether the deployment may be allowed at all: deployed, or (unless strict) never undeployed.
    pub fn is_deployed(&self, target: &Target) -> bool {
        self.store
            .snapshot()
            .is_deployed(&target.name, self.strict_deployments)
    }

    /// Whether a denied Check on `target` goes on to the backend (continue on error).
    pub fn continues_on_error(&self, target: &Target) -> bool {
        self.store.snapshot().continues_on_error(&target.name)
    }

    /// Whether `principal` may invoke `target`.
    pub fn may_invoke(&self, principal: &Principal, target: &Target) -> bool {
        // Project-level grants cover this project's organization only.
        if *target.organization != *self.organization {
            return false;
        }
        let snapshot = self.store.snapshot();
        may_invoke(
            &**snapshot,
            &self.project_name,
            &target.name,
            &principal.members,
        )
    }

    /// Authorizes an authenticated caller for a deployment.
    pub fn decide(&self, principal: Arc<Principal>, target: Target) -> Decision {
        if !self.is_deployed(&target) {
            return Decision::Deny(Denial {
                reason: Reason::NotDeployed,
                message: permission_denied_message(&target.name).into(),
                principal: Some(principal),
                target: Some(target),
            });
        }
        if self.may_invoke(&principal, &target) {
            Decision::Allow { principal, target }
        } else {
            Decision::Deny(Denial {
                reason: Reason::PermissionDenied,
                message: permission_denied_message(&target.name).into(),
                principal: Some(principal),
                target: Some(target),
            })
        }
    }
}
