//! The Envoy ext_authz gRPC service (`envoy.service.auth.v3.Authorization/Check`): decode the
//! request ([`request`]), pick the deployment, authenticate, authorize, all within the Check
//! deadline, and answer with a `CheckResponse` ([`response`]). An allowed request to a backend
//! that takes the gateway's ID token gets it ([`crate::backend`]), within the same deadline. Every
//! outcome is a reply; the gRPC call itself never fails, so Envoy's failure policy is never what
//! decides.

pub mod grpc;
pub mod request;
pub mod response;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use prost::Message as _;
use tonic::Status;
use tracing::Instrument as _;

use crate::authn::{Authenticator, AuthnError};
use crate::authz::{Authorizer, Decision, Denial, Reason};
use crate::backend::{AudienceError, BackendIdentity, IdToken, check_audience};
use crate::config::OnDependencyFailure;
use crate::route::{RouteError, Router};
pub use request::AuthzRequest;

/// The `context_extensions` key naming the backend's ID-token audience.
pub const BACKEND_AUDIENCE: &str = "backend_audience";

/// A decision, with the backend's ID token when it allows a request to a backend that takes one.
#[derive(Debug)]
pub struct Verdict {
    /// Allowed or not.
    pub decision: Decision,
    /// The gateway's ID token for the backend (allowed requests with an audience only).
    pub id_token: Option<Arc<IdToken>>,
}

impl From<Decision> for Verdict {
    fn from(decision: Decision) -> Verdict {
        Verdict {
            decision,
            id_token: None,
        }
    }
}

/// Everything a Check needs.
pub struct Checker {
    router: Arc<Router>,
    authenticator: Arc<Authenticator>,
    authorizer: Arc<Authorizer>,
    deadline: Duration,
    scope: Box<str>,
    backend: Option<BackendIdentity>,
    /// Every Check toward a backend whose ID token cannot be had would log: one line a minute.
    backend_failure_log: crate::telemetry::LogThrottle,
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
            backend: None,
            backend_failure_log: crate::telemetry::LogThrottle::new(Duration::from_secs(60)),
        }
    }

    /// Gives allowed requests whose route names a backend audience the gateway's ID token.
    /// Without it such requests are denied (`UNAVAILABLE`): never sent on without the token.
    #[must_use]
    pub fn with_backend_identity(mut self, backend: Option<BackendIdentity>) -> Checker {
        self.backend = backend;
        self
    }

    /// Decides one request, never taking longer than the deadline.
    pub async fn decide(&self, req: &AuthzRequest<'_>) -> Verdict {
        let until = tokio::time::Instant::now() + self.deadline;
        match tokio::time::timeout_at(until, self.decide_unbounded(req, until)).await {
            Ok(v) => v,
            Err(_) => Decision::deny(
                Reason::Unavailable,
                "authorization could not be decided within the deadline",
            )
            .into(),
        }
    }

    async fn decide_unbounded(
        &self,
        req: &AuthzRequest<'_>,
        until: tokio::time::Instant,
    ) -> Verdict {
        let target = match self
            .router
            .resolve(|k| req.extension(k), req.host, req.path)
        {
            Ok(t) => t,
            Err(e @ (RouteError::Unmapped | RouteError::BadExtensions(_))) => {
                return Decision::deny(
                    Reason::NoRoute,
                    format!("Permission 'apigee.deployments.invoke' denied: {e}."),
                )
                .into();
            }
            Err(e @ (RouteError::Malformed(_) | RouteError::BadHost)) => {
                return Decision::deny(
                    Reason::MalformedRequest,
                    format!("The request cannot be routed unambiguously: {e}."),
                )
                .into();
            }
        };
        // The backend's audience: the route's context_extensions, else its `[[routes]]` entry
        // (checked at start). Checked first, so a route that cannot work costs nothing.
        let extension_audience = req.extension(BACKEND_AUDIENCE).filter(|a| !a.is_empty());
        if let Some(Err(e)) = extension_audience.map(check_audience) {
            let (reason, message) = match e {
                AudienceError::GoogleApi(_) => (
                    Reason::InvalidRequest,
                    format!("The route's backend cannot be called: {e}."),
                ),
                _ => (
                    Reason::NoRoute,
                    format!(
                        "Permission 'apigee.deployments.invoke' denied: the route's context_extensions are invalid: backend_audience {e}."
                    ),
                ),
            };
            // No target: a route that cannot work is the gateway's problem, never a denial that
            // continues to the backend (continue-on-error applies to the caller's failures).
            return Decision::Deny(Denial {
                reason,
                message: message.into(),
                principal: None,
                target: None,
            })
            .into();
        }
        let route_audience = target.backend_audience.clone();
        let audience = extension_audience.or(route_audience.as_deref());
        let token = match req.token {
            Ok(t) => t,
            Err(e) => {
                return Decision::Deny(Denial {
                    reason: Reason::InvalidRequest,
                    message: e.to_string().into(),
                    principal: None,
                    target: Some(target),
                })
                .into();
            }
        };
        let principal = match self.authenticator.authenticate(token).await {
            Ok(p) => p,
            Err(e) => {
                let (reason, message) = match e {
                    AuthnError::InvalidToken(m) => (Reason::InvalidToken, m),
                    AuthnError::Throttled(m) => (Reason::InvalidToken, m.into()),
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
                })
                .into();
            }
        };
        let decision = self.authorizer.decide(principal, token, target).await;
        match (decision, audience) {
            (
                Decision::Allow {
                    principal,
                    target,
                    level,
                },
                Some(audience),
            ) => {
                self.backend_token(principal, target, level, audience, until)
                    .await
            }
            (decision, _) => decision.into(),
        }
    }

    /// The allowed request's ID token for its backend, or a denial: never allowed without it.
    async fn backend_token(
        &self,
        principal: Arc<crate::authn::Principal>,
        target: crate::route::Target,
        level: Option<crate::iam::Level>,
        audience: &str,
        until: tokio::time::Instant,
    ) -> Verdict {
        let message = match &self.backend {
            None => {
                // Once: a misconfigured route under load must not flood the log.
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        audience,
                        "a route names a backend audience but [backend_auth] is not configured"
                    );
                }
                "the backend's ID token is unavailable: no backend identity is configured"
            }
            Some(identity) => {
                match tokio::time::timeout_at(until, identity.id_token(audience)).await {
                    Ok(Ok(id_token)) => {
                        return Verdict {
                            decision: Decision::Allow {
                                principal,
                                target,
                                level,
                            },
                            id_token: Some(id_token),
                        };
                    }
                    Ok(Err(e)) => {
                        // Each fetch's failure is counted in
                        // verifyiam_backend_token_failures_total.
                        let log = &self.backend_failure_log;
                        if let Some(since_last) = log.due(std::time::Instant::now()) {
                            tracing::warn!(
                                audience,
                                error = %e,
                                since_last,
                                "no ID token for the backend; Checks toward it are denied 503 \
                                 (logged at most once a minute)"
                            );
                        }
                        "the backend's ID token is temporarily unavailable"
                    }
                    Err(_) => "the backend's ID token could not be had within the deadline",
                }
            }
        };
        Decision::Deny(Denial {
            reason: Reason::Unavailable,
            message: message.into(),
            principal: Some(principal),
            target: Some(target),
        })
        .into()
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
    on_failure: OnDependencyFailure,
    metrics: CheckMetrics,
}

/// `verifyiam_checks_total{decision,reason}` and the latency histogram, registered once so a
/// Check only adds to atomics.
struct CheckMetrics {
    allowed: metrics::Counter,
    denied: [metrics::Counter; REASONS.len()],
    /// Denials answered OK because the deployment continues on error.
    continued: [metrics::Counter; REASONS.len()],
    duration: metrics::Histogram,
}

const REASONS: [Reason; 8] = [
    Reason::InvalidRequest,
    Reason::MalformedRequest,
    Reason::InvalidToken,
    Reason::InsufficientScope,
    Reason::PermissionDenied,
    Reason::NoRoute,
    Reason::NotDeployed,
    Reason::Unavailable,
];

impl CheckMetrics {
    fn new() -> CheckMetrics {
        let _ = crate::telemetry::metrics_handle();
        CheckMetrics {
            allowed: metrics::counter!("verifyiam_checks_total", "decision" => "allow", "reason" => "ok"),
            denied: REASONS.map(|r| {
                metrics::counter!("verifyiam_checks_total", "decision" => "deny", "reason" => r.label())
            }),
            continued: REASONS.map(|r| {
                metrics::counter!("verifyiam_checks_total", "decision" => "continue", "reason" => r.label())
            }),
            duration: metrics::histogram!("verifyiam_check_duration_seconds"),
        }
    }

    fn denied(&self, reason: Reason, continued: bool) -> &metrics::Counter {
        let i = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        if continued {
            &self.continued[i]
        } else {
            &self.denied[i]
        }
    }
}

impl CheckService {
    /// Serves `checker`; `on_failure` says how a dependency failure is answered.
    pub fn new(checker: Arc<Checker>, on_failure: OnDependencyFailure) -> CheckService {
        let metrics = CheckMetrics::new();
        // The deadline beside the latency histogram, so dashboards and alerts compare the two
        // without restating the configuration.
        metrics::gauge!("verifyiam_check_deadline_seconds").set(checker.deadline.as_secs_f64());
        CheckService {
            checker,
            on_failure,
            metrics,
        }
    }

    /// One decoded Check (in-process: benchmarks and tests).
    pub async fn check_one(&self, check: &CheckRequest) -> CheckResponse {
        let (_, answer) = self
            .decide_and_answer(AuthzRequest::from_check(check))
            .await;
        answer.into_response(self.checker.scope())
    }

    /// One Check as the gRPC method runs it: the request's protobuf bytes in, the answer to
    /// encode out. Bytes that are not a `CheckRequest` earn a denial (400), not a gRPC error, so
    /// Envoy's failure policy never turns them into an allow. A gRPC error only when a
    /// dependency is down and `on_dependency_failure = "error"` asks for one.
    pub async fn check_wire(&self, bytes: &[u8]) -> Result<Answer, Status> {
        let (reason, answer) = match AuthzRequest::from_wire(bytes) {
            Ok(req) => self.decide_and_answer(req).await,
            Err(e) => {
                let decision = Decision::deny(
                    Reason::MalformedRequest,
                    format!("The request is not a valid CheckRequest: {e}."),
                );
                let span = tracing::debug_span!("check");
                self.answer(Instant::now(), &span, decision.into(), None)
            }
        };
        if reason == Some(Reason::Unavailable) && self.on_failure == OnDependencyFailure::Error {
            // Envoy's own failure policy (failure_mode_allow, status_on_error) decides.
            return Err(Status::unavailable(
                "authorization dependencies are unavailable",
            ));
        }
        Ok(answer)
    }

    async fn decide_and_answer(&self, req: AuthzRequest<'_>) -> (Option<Reason>, Answer) {
        let started = Instant::now();
        // Debug level: at the default `info` a span per Check would cost its formatting on
        // every request; `RUST_LOG=verifyiam=debug` shows each Check with its request id.
        let span = tracing::debug_span!("check", request_id = req.request_id);
        let verdict = self.checker.decide(&req).instrument(span.clone()).await;
        self.answer(started, &span, verdict, req.authorization)
    }

    /// Counts, logs and answers a verdict reached since `started`; `authorization` is the
    /// caller's own header, forwarded when the backend gets the gateway's ID token.
    fn answer(
        &self,
        started: Instant,
        span: &tracing::Span,
        verdict: Verdict,
        authorization: Option<&str>,
    ) -> (Option<Reason>, Answer) {
        let decision = &verdict.decision;
        // Continue on error: a denial that Envoy forwards, marked.
        let continues = self.checker.continues(decision);
        let reason = match decision {
            Decision::Allow {
                principal, target, ..
            } => {
                self.metrics.allowed.increment(1);
                span.in_scope(|| {
                    tracing::debug!(
                        principal = &*principal.id,
                        deployment = &*target.name,
                        "allowed"
                    )
                });
                None
            }
            Decision::Deny(d) => {
                self.metrics.denied(d.reason, continues).increment(1);
                span.in_scope(|| {
                    tracing::debug!(
                        reason = d.reason.label(),
                        why = d.reason.explanation(),
                        principal = d.principal.as_ref().map(|p| &*p.id),
                        deployment = d.target.as_ref().map(|t| &*t.name),
                        continues,
                        message = %d.message,
                        "denied"
                    )
                });
                Some(d.reason)
            }
        };
        self.metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        let answer = match (verdict.decision, &verdict.id_token) {
            // The common answer, written straight from what it names.
            (
                Decision::Allow {
                    principal,
                    target,
                    level,
                },
                None,
            ) => Answer::Allowed {
                principal,
                target,
                level,
            },
            (decision, id_token) => {
                let mut response = match &decision {
                    Decision::Deny(d) if continues => response::continued(d),
                    _ => response::check_response(&decision, self.checker.scope()),
                };
                if let Some(id_token) = id_token {
                    response::add_backend_identity(&mut response, id_token, authorization);
                }
                Answer::Response(response)
            }
        };
        // A continued denial is an OK answer: never turned into an error for Envoy.
        (reason.filter(|_| !continues), answer)
    }
}

/// A Check's answer, ready to be written: an allow (without backend credentials) is encoded
/// straight from its principal and deployment, anything else from its `CheckResponse`.
#[derive(Debug)]
pub enum Answer {
    /// Allowed: [`response::check_response`]'s allow, never built as a message.
    Allowed {
        /// The caller.
        principal: Arc<crate::authn::Principal>,
        /// The deployment.
        target: crate::route::Target,
        /// The level that granted, when known.
        level: Option<crate::iam::Level>,
    },
    /// Any other answer.
    Response(CheckResponse),
}

impl Answer {
    /// Writes the answer's protobuf encoding.
    pub fn encode(&self, out: &mut impl bytes::BufMut) {
        match self {
            Answer::Allowed {
                principal,
                target,
                level,
            } => response::encode_allow(
                &principal.id,
                &target.name,
                level.map(crate::iam::Level::as_str),
                out,
            ),
            Answer::Response(r) => r.encode_raw(out),
        }
    }

    /// The answer's protobuf encoding.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = bytes::BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// The answer as a message; `scope` is the required scope (named on `insufficient_scope`).
    pub fn into_response(self, scope: &str) -> CheckResponse {
        match self {
            Answer::Allowed {
                principal,
                target,
                level,
            } => response::check_response(
                &Decision::Allow {
                    principal,
                    target,
                    level,
                },
                scope,
            ),
            Answer::Response(r) => r,
        }
    }
}
