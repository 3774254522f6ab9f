//! Authorization: a principal × a deployment → allowed or not. The source is the embedded
//! store's current snapshot (`local`: project level or the deployment itself grant
//! `apigee.deployments.invoke`) or Google IAM (`google`: Apigee's testIamPermissions with the
//! caller's token). Decisions are cached by (principal, deployment, snapshot generation and
//! epoch: a revision number never names two histories); remote ones are
//! refreshed ahead of expiry when hot and served stale, within bounds, when the source fails.
//! Also the [`Decision`] every Check ends in: a denial is data, not an error.

pub mod google;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::authn::{Principal, PrincipalKey};
use crate::config::AuthzConfig;
use crate::iam::eval::{Level, invoke_level};
use crate::route::Target;
use crate::store::PolicyStore;
use crate::telemetry::CacheCounters;

/// The permission a caller needs on a deployment.
pub const INVOKE: &str = "apigee.deployments.invoke";

/// Why a Check was denied; each maps to one HTTP status and one `WWW-Authenticate` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No token or a malformed `Authorization` header (401, `invalid_request`).
    InvalidRequest,
    /// A path or host that cannot be read one way only, so no route can be chosen safely
    /// (400, `INVALID_ARGUMENT`; labelled `invalid_request` too).
    MalformedRequest,
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
            Reason::InvalidRequest | Reason::MalformedRequest => "invalid_request",
            Reason::InvalidToken => "invalid_token",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::PermissionDenied => "permission_denied",
            Reason::NoRoute => "no_route",
            Reason::Unavailable => "unavailable",
            Reason::NotDeployed => "not_deployed",
        }
    }

    /// What the reason means, for an operator (the debug log, `verifyiam check`); never sent to
    /// the caller, whose 403 stays the same whether or not the deployment exists.
    pub fn explanation(self) -> &'static str {
        match self {
            Reason::InvalidRequest => {
                "the request carries no bearer token, or its Authorization header is malformed"
            }
            Reason::MalformedRequest => {
                "the request's path or host cannot be read one way only, so no route is chosen"
            }
            Reason::InvalidToken => {
                "the token is not valid: bad signature, expired, or from an issuer that is not trusted"
            }
            Reason::InsufficientScope => "the token is valid but lacks the required scope",
            Reason::PermissionDenied => {
                "the principal holds apigee.deployments.invoke neither on the project nor on the \
                 deployment (a grant on the environment does not pass down)"
            }
            Reason::NoRoute => {
                "the request names no deployment: no context_extensions and no [[routes]] entry matches"
            }
            Reason::Unavailable => {
                "a dependency (a key set, tokeninfo, the policy store) could not answer in time"
            }
            Reason::NotDeployed => {
                "the API is not deployed in this environment (undeployed, or never deployed while \
                 iam.strict_deployments is on): its requests are refused whatever its policies say"
            }
        }
    }

    /// [`Reason::explanation`] for a metric label (the `reason` of the dynamic metadata).
    pub fn explain_label(label: &str) -> Option<&'static str> {
        Some(match label {
            "ok" => "allowed",
            "invalid_request" => {
                "the request carries no usable bearer token, or its path or host cannot be read \
                 one way only"
            }
            "invalid_token" => Reason::InvalidToken.explanation(),
            "insufficient_scope" => Reason::InsufficientScope.explanation(),
            "permission_denied" => Reason::PermissionDenied.explanation(),
            "no_route" => Reason::NoRoute.explanation(),
            "unavailable" => Reason::Unavailable.explanation(),
            "not_deployed" => Reason::NotDeployed.explanation(),
            _ => return None,
        })
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
        /// The level whose policy granted invoke (`None` when a remote source decided).
        level: Option<Level>,
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

/// Why a remote source gave no verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// It could not answer (timeout, 5xx, garbage).
    #[error("{0}")]
    Unavailable(String),
    /// It did not accept the caller's token.
    #[error("the policy source did not accept the caller's token")]
    Unauthenticated,
}

/// A policy source asked over the network (Google IAM, or a test double).
pub trait RemoteSource: Send + Sync + 'static {
    /// Whether the caller, by its own `token`, holds invoke on `target`.
    fn may_invoke<'a>(
        &'a self,
        token: &'a str,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<bool, SourceError>>;
}

/// The decision-cache key: who, where, and the policy history it was computed at: the
/// snapshot's generation (a new one for every full reload, e.g. after a restored backup) and
/// epoch, so a revision number that comes round again in another history misses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    principal: PrincipalKey,
    deployment: Arc<str>,
    generation: u64,
    epoch: u64,
}

#[derive(Clone, Copy)]
struct Cached {
    granted: Granted,
    at: Instant,
}

/// A source's verdict: denied, or allowed (at the level that granted, when the source knows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Granted {
    No,
    Yes(Option<Level>),
}

impl Granted {
    fn remote(allowed: bool) -> Granted {
        if allowed {
            Granted::Yes(None)
        } else {
            Granted::No
        }
    }

    fn allowed(self) -> bool {
        self != Granted::No
    }
}

type Flight = Shared<BoxFuture<'static, Result<bool, SourceError>>>;

enum Source {
    Local {
        /// `projects/{project}`, built once.
        project_name: Box<str>,
        organization: Box<str>,
    },
    Remote {
        source: Arc<dyn RemoteSource>,
        /// One remote question per (principal, deployment) at a time.
        flights: Arc<Mutex<HashMap<Key, Flight>>>,
        timeout: Duration,
    },
}

/// Evaluates invoke permission, through the decision cache.
pub struct Authorizer {
    /// Deployment facts (deployed, undeployed, continue on error), whatever the policy source.
    store: Arc<PolicyStore>,
    /// `iam.strict_deployments`: only explicitly deployed APIs may be allowed.
    strict_deployments: bool,
    source: Source,
    cache: moka::sync::Cache<Key, Cached>,
    ttl: Duration,
    refresh_ahead: Duration,
    max_stale: Duration,
    /// How long a Check waits for a refresh of a stale remote decision before serving it stale.
    stale_wait: Duration,
    counters: CacheCounters,
}

impl Authorizer {
    /// Decisions from the embedded store for `project`, whose deployments live under
    /// `organization`.
    pub fn local(
        store: Arc<PolicyStore>,
        project: &str,
        organization: &str,
        config: &AuthzConfig,
    ) -> Authorizer {
        Self::with(
            store,
            Source::Local {
                project_name: format!("projects/{project}").into(),
                organization: organization.into(),
            },
            config,
            Duration::ZERO,
        )
    }

    /// Decisions from a remote source; `deadline` is the Check deadline. The store still holds
    /// the deployment facts.
    pub fn remote(
        store: Arc<PolicyStore>,
        source: Arc<dyn RemoteSource>,
        config: &AuthzConfig,
        deadline: Duration,
    ) -> Authorizer {
        Self::with(
            store,
            Source::Remote {
                source,
                flights: Default::default(),
                timeout: config.timeout,
            },
            config,
            deadline * 2 / 3,
        )
    }

    fn with(
        store: Arc<PolicyStore>,
        source: Source,
        config: &AuthzConfig,
        stale_wait: Duration,
    ) -> Authorizer {
        let evicted = |_: Arc<Key>, _: Cached, cause: moka::notification::RemovalCause| {
            let cause = match cause {
                moka::notification::RemovalCause::Expired => "expired",
                moka::notification::RemovalCause::Size => "size",
                _ => return,
            };
            metrics::counter!("verifyiam_cache_evictions_total", "cache" => "decision", "cause" => cause).increment(1);
        };
        // Registered at zero: a counter that first appears at 1 hides that increase from rate().
        metrics::counter!("verifyiam_decision_stale_served_total").increment(0);
        Authorizer {
            store,
            strict_deployments: false,
            source,
            cache: moka::sync::Cache::builder()
                .max_capacity(config.decision_cache_capacity)
                // A backstop only: freshness is judged on each entry's own timestamp.
                .time_to_live(config.cache_ttl + config.max_stale + Duration::from_secs(1))
                .eviction_listener(evicted)
                .build(),
            ttl: config.cache_ttl,
            refresh_ahead: config.refresh_ahead,
            max_stale: config.max_stale,
            stale_wait,
            counters: CacheCounters::new("decision"),
        }
    }

    /// Only explicitly deployed APIs may be allowed (`iam.strict_deployments`).
    #[must_use]
    pub fn with_strict_deployments(mut self, strict: bool) -> Authorizer {
        self.strict_deployments = strict;
        self
    }

    /// Whether the deployment may be allowed at all: deployed, or (unless strict) never undeployed.
    /// Read from the current snapshot on every Check, outside the decision cache, so an undeploy
    /// applies to the next Check.
    pub fn is_deployed(&self, target: &Target) -> bool {
        self.store
            .snapshot()
            .is_deployed(&target.name, self.strict_deployments)
    }

    /// Whether a denied Check on `target` goes on to the backend (continue on error).
    pub fn continues_on_error(&self, target: &Target) -> bool {
        self.store.snapshot().continues_on_error(&target.name)
    }

    /// Entries in the decision cache (after applying its pending bookkeeping).
    pub fn cache_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Authorizes an authenticated caller (`token` is its own bearer token, for remote sources).
    pub async fn decide(&self, principal: Arc<Principal>, token: &str, target: Target) -> Decision {
        // Fail static, within bounds: a replica cut off from a shared store answers from its
        // last snapshot for `iam.max_staleness`, then refuses rather than miss a revocation.
        if !self.store.is_fresh() {
            return Decision::Deny(Denial {
                reason: Reason::Unavailable,
                message: "the policy store is temporarily unavailable".into(),
                principal: Some(principal),
                target: Some(target),
            });
        }
        if !self.is_deployed(&target) {
            return Decision::Deny(Denial {
                reason: Reason::NotDeployed,
                message: permission_denied_message(&target.name).into(),
                principal: Some(principal),
                target: Some(target),
            });
        }
        match self.allowed(&principal, token, &target).await {
            Ok(Granted::Yes(level)) => Decision::Allow {
                principal,
                target,
                level,
            },
            Ok(Granted::No) => Decision::Deny(Denial {
                reason: Reason::PermissionDenied,
                message: permission_denied_message(&target.name).into(),
                principal: Some(principal),
                target: Some(target),
            }),
            Err(e) => {
                let (reason, message): (Reason, Cow<'static, str>) = match e {
                    SourceError::Unauthenticated => (
                        Reason::InvalidToken,
                        "the policy source did not accept the token".into(),
                    ),
                    SourceError::Unavailable(m) => {
                        tracing::warn!(error = %m, "policy source unavailable");
                        (
                            Reason::Unavailable,
                            "the policy source is temporarily unavailable".into(),
                        )
                    }
                };
                Decision::Deny(Denial {
                    reason,
                    message,
                    principal: Some(principal),
                    target: Some(target),
                })
            }
        }
    }

    async fn allowed(
        &self,
        principal: &Principal,
        token: &str,
        target: &Target,
    ) -> Result<Granted, SourceError> {
        match &self.source {
            Source::Local {
                project_name,
                organization,
            } => {
                // Project-level grants cover this project's organization only.
                if *target.organization != **organization {
                    return Ok(Granted::No);
                }
                let snapshot = self.store.snapshot();
                let key = Key {
                    principal: principal.key,
                    deployment: target.name.clone(),
                    generation: snapshot.generation,
                    epoch: snapshot.epoch,
                };
                if let Some(c) = self.cache.get(&key) {
                    if c.at.elapsed() < self.ttl {
                        self.counters.hit.increment(1);
                        return Ok(c.granted);
                    }
                }
                self.counters.miss.increment(1);
                let granted =
                    match invoke_level(&**snapshot, project_name, &target.name, &principal.members)
                    {
                        Some(level) => Granted::Yes(Some(level)),
                        None => Granted::No,
                    };
                self.cache.insert(
                    key,
                    Cached {
                        granted,
                        at: Instant::now(),
                    },
                );
                Ok(granted)
            }
            Source::Remote { .. } => self
                .remote_allowed(principal, token, target)
                .await
                .map(Granted::remote),
        }
    }

    async fn remote_allowed(
        &self,
        principal: &Principal,
        token: &str,
        target: &Target,
    ) -> Result<bool, SourceError> {
        let key = Key {
            principal: principal.key,
            deployment: target.name.clone(),
            generation: 0,
            epoch: 0,
        };
        let cached = self.cache.get(&key);
        let age = cached.map(|c| c.at.elapsed());
        match (cached, age) {
            (Some(c), Some(age)) if age < self.ttl => {
                self.counters.hit.increment(1);
                if age + self.refresh_ahead >= self.ttl {
                    // Hot and about to expire: refresh in the background, answer now.
                    drop(self.flight(&key, token, target));
                }
                Ok(c.granted.allowed())
            }
            (Some(c), Some(age)) if age < self.ttl + self.max_stale => {
                self.counters.stale.increment(1);
                let flight = self.flight(&key, token, target);
                match tokio::time::timeout(self.stale_wait, flight).await {
                    Ok(Ok(allowed)) => Ok(allowed),
                    // The source failed or is slow: the last verdict, within max_stale.
                    Ok(Err(SourceError::Unavailable(_))) | Err(_) => {
                        metrics::counter!("verifyiam_decision_stale_served_total").increment(1);
                        Ok(c.granted.allowed())
                    }
                    Ok(Err(e)) => Err(e),
                }
            }
            _ => {
                self.counters.miss.increment(1);
                self.flight(&key, token, target).await
            }
        }
    }

    /// Joins the remote question in flight for `key`, or asks it in a task of its own (so a
    /// Check giving up at its deadline does not cancel it for the others).
    fn flight(&self, key: &Key, token: &str, target: &Target) -> Flight {
        let Source::Remote {
            source,
            flights,
            timeout,
        } = &self.source
        else {
            unreachable!("flights exist only for remote sources");
        };
        let Ok(mut map) = flights.lock() else {
            return futures_util::future::ready(Err(SourceError::Unavailable(
                "internal lock poisoned".into(),
            )))
            .boxed()
            .shared();
        };
        if let Some(f) = map.get(key) {
            return f.clone();
        }
        let (source, flights, cache) = (source.clone(), flights.clone(), self.cache.clone());
        let (key_owned, token, target, timeout) =
            (key.clone(), token.to_owned(), target.clone(), *timeout);
        let task = tokio::spawn(async move {
            let result =
                match tokio::time::timeout(timeout, source.may_invoke(&token, &target)).await {
                    Ok(r) => r,
                    Err(_) => Err(SourceError::Unavailable("remote IAM timed out".into())),
                };
            if let Ok(allowed) = result {
                cache.insert(
                    key_owned.clone(),
                    Cached {
                        granted: Granted::remote(allowed),
                        at: Instant::now(),
                    },
                );
            }
            if let Ok(mut map) = flights.lock() {
                map.remove(&key_owned);
            }
            result
        });
        let flight: Flight = async move {
            task.await.unwrap_or_else(|e| {
                Err(SourceError::Unavailable(format!(
                    "remote IAM task failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        map.insert(key.clone(), flight.clone());
        flight
    }
}
