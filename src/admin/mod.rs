//! The admin listener: the Google-shaped management REST API ([`rest`]) and the
//! `google.iam.v1.IAMPolicy` gRPC service ([`grpc`]) on one port, routed by content type;
//! `/healthz`, `/readyz`, `/metrics` and, in development, the dev issuer's JWK set. Callers
//! authenticate with the same token validation as Checks, and are authorized by the same IAM
//! rules.
//!
//! Both surfaces only decode a request, call one operation on [`AdminState`] and encode the
//! answer, so they share semantics and errors ([`error`]). The operations are transport-neutral,
//! one file per resource family:
//!
//! | file | owns |
//! |---|---|
//! | [`policies`] | `getIamPolicy`, `setIamPolicy`, `testIamPermissions` |
//! | [`deployments`] | list, describe, deploy, undeploy, update |
//! | [`roles`] | custom roles |
//! | [`groups`] | group membership, and its seeding from configuration |
//! | `operation` | the steps every operation shares, written once: load the state, require the permission, write, audit |
//! | [`audit`] | the audit event each write logs |
//! | [`analyze`] | the Policy Analyzer (`google.cloud.asset.v1.AssetService/AnalyzeIamPolicy` over gRPC, `GET /v1/{scope}:analyzeIamPolicy`), answering from the same evaluation that decides a Check |
//! | [`explain`] | the Policy Troubleshooter (`google.cloud.policytroubleshooter.iam.v3` and `.v1` over gRPC, `POST /v3/iam:troubleshoot` and `POST /v1/iam:troubleshoot`), answering from the same evaluation that decides a Check |

pub mod analyze;
pub mod audit;
pub mod deployments;
pub mod error;
pub mod explain;
pub mod groups;
pub mod grpc;
mod operation;
pub mod policies;
pub mod rest;
pub mod roles;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use http_body::Body as _;

use crate::authn::bearer::{self, BearerError};
use crate::authn::{Authenticator, AuthnError, Principal};
use crate::store::PolicyStore;
pub use error::ApiError;

/// Shared state of the admin handlers.
pub struct AdminState {
    /// The policy store.
    pub store: Arc<PolicyStore>,
    /// Caller authentication.
    pub authenticator: Arc<Authenticator>,
    /// The project id.
    pub project: String,
    /// The organization deployments live under.
    pub organization: String,
    /// The dev issuer's JWK set, when running `--dev`.
    pub dev_jwks: Option<serde_json::Value>,
    /// Prometheus rendering.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// `iam.strict_deployments`: only deployed APIs accept policies.
    pub strict_deployments: bool,
    /// Full names of the deployments `[[routes]]` name (they exist unless undeployed).
    pub route_deployments: Vec<String>,
}

impl AdminState {
    /// Authenticates the caller of an admin request.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let token = match (values.next(), values.next()) {
            (None, _) => Err(BearerError::Missing),
            (Some(_), Some(_)) => Err(BearerError::Multiple),
            (Some(v), None) => v
                .to_str()
                .map_err(|_| BearerError::Malformed)
                .and_then(bearer::parse),
        };
        let token = token.map_err(|e| ApiError::Unauthenticated {
            message: format!(
                "Request is missing required authentication credential. Expected OAuth 2 access token: {e}."
            ),
            challenge: "invalid_request",
        })?;
        self.authenticator
            .authenticate(token)
            .await
            .map_err(|e| match e {
                AuthnError::InvalidToken(m) => ApiError::Unauthenticated {
                    message: format!("Request had invalid authentication credentials: {m}."),
                    challenge: "invalid_token",
                },
                AuthnError::Throttled(m) => ApiError::Unauthenticated {
                    message: format!("Request had invalid authentication credentials: {m}."),
                    challenge: "invalid_token",
                },
                AuthnError::InsufficientScope => ApiError::PermissionDenied(
                    "Request had insufficient authentication scopes.".to_owned(),
                ),
                AuthnError::Unavailable(m) => {
                    tracing::warn!(error = %m, "admin caller verification unavailable");
                    ApiError::Unavailable(
                        "token verification is temporarily unavailable".to_owned(),
                    )
                }
            })
    }
}

/// The whole admin listener: gRPC requests (`content-type: application/grpc…`) go to the
/// `google.iam.v1.IAMPolicy`, Policy Troubleshooter and Policy Analyzer services, everything else to the REST [`router`]. Outside the
/// unauthenticated endpoints, the caller's bearer token is verified before anything reads the
/// request body (`authenticate_first`).
pub fn service(state: Arc<AdminState>) -> Router {
    let grpc = tonic::service::Routes::new(grpc::server(state.clone()))
        .add_service(explain::server(state.clone()))
        .add_service(explain::server_v1(state.clone()))
        .add_service(analyze::server(state.clone()))
        .prepare();
    router(state.clone())
        .layer(axum::middleware::from_fn_with_state(grpc, by_content_type))
        .layer(axum::middleware::from_fn_with_state(
            state,
            authenticate_first,
        ))
}

/// Refuses an API request (REST under `/v1/` or `/v3/`, or gRPC) whose bearer token is missing or
/// invalid before its body is read, so an unauthenticated client cannot make the listener
/// buffer what it sends. The operation checks the caller again (from the token cache) for its
/// own authorization. The other paths (`/healthz`, `/readyz`, `/metrics`, `/dev/jwks.json`, and
/// the 404 for anything else) read no body.
async fn authenticate_first(
    State(state): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if !path.starts_with("/v1/") && !path.starts_with("/v3/") && !is_grpc(request.headers()) {
        return next.run(request).await;
    }
    match state.caller(request.headers()).await {
        Ok(_) => next.run(request).await,
        Err(e) if is_grpc(request.headers()) => tonic::Status::from(e)
            .into_http::<axum::body::Body>()
            .map(axum::body::Body::new),
        Err(e) => {
            let mut response = e.into_response();
            // The body is left unread: tell an HTTP/1 client the connection will not be reused.
            if !request.body().is_end_stream() {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            response
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

async fn by_content_type(
    State(grpc): State<tonic::service::Routes>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !is_grpc(request.headers()) {
        return next.run(request).await;
    }
    match tower::ServiceExt::oneshot(grpc, request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    }
}

/// The admin REST router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dev/jwks.json", get(dev_jwks))
        .merge(rest::routes())
        .merge(explain::routes())
        .fallback(|| async {
            ApiError::NotFound("The requested URL was not found on this server.".to_owned())
        })
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // Ready while Checks can be answered: the snapshot is loaded and (PostgreSQL) heard from the
    // database within `iam.max_staleness`.
    let epoch = state.store.snapshot().epoch;
    if state.store.is_fresh() {
        (StatusCode::OK, format!("ready (policy epoch {epoch})\n"))
    } else if state.store.is_loaded() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the policy store is stale (policy epoch {epoch})\n"),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the policy store has not loaded yet\n".to_owned(),
        )
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn dev_jwks(
    State(state): State<Arc<AdminState>>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    state
        .dev_jwks
        .clone()
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound("no development issuer is configured".to_owned()))
}
