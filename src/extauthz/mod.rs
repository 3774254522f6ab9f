//! The Envoy ext_authz gRPC service (`envoy.service.auth.v3.Authorization/Check`): decode the
//! request ([`request`]), pick the deployment, authenticate, authorize, all within the Check
//! deadline, and answer with a `CheckResponse` ([`response`]). Every outcome is a reply; the gRPC
//! call itself never fails, so Envoy's failure policy is never what decides.

pub mod request;
pub mod response;

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::authn::{Authenticator, AuthnError};
use crate::authz::{Authorizer, Decision, Denial, Reason};
use crate::route::{RouteError, Router};
pub use request::AuthzRequest;

/// Everything a Check needs.
pub struct Checker {
    router: Arc<Router>,
    authenticator: Arc<Authenticator>,
    authorizer: Arc<Authorizer>,
    deadline: Duration,
    scope: Box<str>,
}

impl Checker {
    /// A checker over the given stages.
    pub fn new(
        router: Arc<Router>,
        authenticator: Arc<Authenticator>,
        authorizer: Arc<Authorizer>,
        deadline: Duration,
        scope: &str,
    ) -> Checker {
        Checker {
            router,
            authenticator,
            authorizer,
            deadline,
            scope: scope.into(),
        }
    }

    /// Decides one request, never taking longer than the deadline.
    pub async fn decide(&self, req: &AuthzRequest<'_>) -> Decision {
        match tokio::time::timeout(self.deadline, self.decide_unbounded(req)).await {
            Ok(d) => d,
            Err(_) => Decision::deny(
                Reason::Unavailable,
                "authorization could not be decided within the deadline",
            ),
        }
    }

    async fn decide_unbounded(&self, req: &AuthzRequest<'_>) -> Decision {
        let target = match self
            .router
            .resolve(|k| req.extension(k), req.host, req.path)
        {
            Ok(t) => t,
            Err(e @ (RouteError::Unmapped | RouteError::BadExtensions(_))) => {
                return Decision::deny(
                    Reason::NoRoute,
                    format!("Permission 'apigee.deployments.invoke' denied: {e}."),
                );
            }
        };
        let token = match req.token {
            Ok(t) => t,
            Err(e) => {
                return Decision::Deny(Denial {
                    reason: Reason::InvalidRequest,
                    message: e.to_string().into(),
                    principal: None,
                    target: Some(target),
                });
            }
        };
        let principal = match self.authenticator.authenticate(token).await {
            Ok(p) => p,
            Err(e) => {
                let (reason, message) = match e {
                    AuthnError::InvalidToken(m) => (Reason::InvalidToken, m),
                    AuthnError::InsufficientScope => (
                        Reason::InsufficientScope,
                        format!(
                            "Request had insufficient authentication scopes: {} is required.",
                            self.scope
                        )
                        .into(),
                    ),
                    AuthnError::Unavailable(m) => {
                        tracing::warn!(error = %m, "token verification unavailable");
                        (
                            Reason::Unavailable,
                            "token verification is temporarily unavailable".into(),
                        )
                    }
                };
                return Decision::Deny(Denial {
                    reason,
                    message,
                    principal: None,
                    target: Some(target),
                });
            }
        };
        self.authorizer.decide(principal, target)
    }

    /// Whether a decision is a denial that goes on to the backend: the deployment is marked
    /// continue-on-error. An unavailable dependency (503) does not continue: an outage stays
    /// visible and retryable, and Envoy's failure policy is the place to decide about outages.
    pub fn continues(&self, decision: &Decision) -> bool {
        match decision {
            Decision::Deny(d) if d.reason != Reason::Unavailable => d
                .target
                .as_ref()
                .is_some_and(|t| self.authorizer.continues_on_error(t)),
            _ => false,
        }
    }

    /// The scope tokens must carry.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

/// The tonic service.
pub struct CheckService {
    checker: Arc<Checker>,
}

impl CheckService {
    /// Serves `checker`.
    pub fn new(checker: Arc<Checker>) -> CheckService {
        CheckService { checker }
    }

    /// One Check, as the gRPC method runs it (also used in-process by benchmarks).
    pub async fn check_one(&self, check: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let req = AuthzRequest::from_check(check);
        let span = tracing::info_span!("check", request_id = req.request_id);
        let decision = self.checker.decide(&req).instrument(span.clone()).await;
        // Continue on error: a denial that Envoy forwards, marked.
        let continues = self.checker.continues(&decision);
        let (label, reason) = match &decision {
            Decision::Allow { .. } => ("allow", "ok"),
            Decision::Deny(d) if continues => ("continue", d.reason.label()),
            Decision::Deny(d) => ("deny", d.reason.label()),
        };
        span.in_scope(|| match &decision {
            Decision::Allow { principal, target } => {
                tracing::debug!(
                    principal = &*principal.id,
                    deployment = &*target.name,
                    "allowed"
                )
            }
            Decision::Deny(d) => tracing::debug!(reason, message = %d.message, "denied"),
        });
        metrics::counter!("verifyiam_checks_total", "decision" => label, "reason" => reason)
            .increment(1);
        metrics::histogram!("verifyiam_check_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match &decision {
            Decision::Deny(d) if continues => response::continued(d),
            _ => response::check_response(&decision, self.checker.scope()),
        }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.check_one(request.get_ref()).await))
    }
}
