//! The IAM policy REST API in Google's shapes: `:getIamPolicy` (GET or POST), `:setIamPolicy`
//! and `:testIamPermissions` on `projects/{p}`, `organizations/{o}/environments/{e}` and
//! `organizations/{o}/environments/{e}/deployments/{api}`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::{Deserialize, Serialize};

use super::{AdminState, ApiError};
use crate::iam::eval::{Resource, held, test_permissions};
use crate::iam::policy::{Policy, normalize};
use crate::iam::roles::PermissionSet;

/// The REST routes (custom methods ride on the last path segment: `name:verb`).
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/projects/{name}", any(project))
        .route(
            "/v1/organizations/{org}/environments/{name}",
            any(environment),
        )
        .route(
            "/v1/organizations/{org}/environments/{env}/deployments/{name}",
            any(deployment),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetIamPolicyRequest {
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    update_mask: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestIamPermissionsRequest {
    #[serde(default)]
    permissions: Vec<String>,
}

#[derive(Serialize)]
struct TestIamPermissionsResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    permissions: Vec<String>,
}

enum Verb {
    Get,
    Set,
    Test,
}

fn split_verb(segment: &str) -> Result<(&str, Verb), ApiError> {
    let not_found = || ApiError::NotFound(format!("Method not found: {segment}"));
    let (id, verb) = segment.rsplit_once(':').ok_or_else(not_found)?;
    let verb = match verb {
        "getIamPolicy" => Verb::Get,
        "setIamPolicy" => Verb::Set,
        "testIamPermissions" => Verb::Test,
        _ => return Err(not_found()),
    };
    Ok((id, verb))
}

type Request = (State<Arc<AdminState>>, Method, HeaderMap, Bytes);

async fn project(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (project, verb) = split_verb(&name)?;
    let resource = Resource::Project {
        project: project.to_owned(),
    };
    dispatch((State(state), method, headers, body), resource, verb).await
}

async fn environment(
    State(state): State<Arc<AdminState>>,
    Path((organization, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (environment, verb) = split_verb(&name)?;
    let resource = Resource::Environment {
        organization,
        environment: environment.to_owned(),
    };
    dispatch((State(state), method, headers, body), resource, verb).await
}

async fn deployment(
    State(state): State<Arc<AdminState>>,
    Path((organization, environment, name)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (deployment, verb) = split_verb(&name)?;
    let resource = Resource::Deployment {
        organization,
        environment,
        deployment: deployment.to_owned(),
    };
    dispatch((State(state), method, headers, body), resource, verb).await
}

/// The permissions that read and write a resource's policy.
fn policy_permissions(
    resource: &Resource,
) -> (&'static str, PermissionSet, &'static str, PermissionSet) {
    match resource {
        Resource::Project { .. } => (
            "resourcemanager.projects.getIamPolicy",
            PermissionSet::PROJECTS_GET_IAM_POLICY,
            "resourcemanager.projects.setIamPolicy",
            PermissionSet::PROJECTS_SET_IAM_POLICY,
        ),
        Resource::Environment { .. } => (
            "apigee.environments.getIamPolicy",
            PermissionSet::ENVIRONMENTS_GET_IAM_POLICY,
            "apigee.environments.setIamPolicy",
            PermissionSet::ENVIRONMENTS_SET_IAM_POLICY,
        ),
        Resource::Deployment { .. } => (
            "apigee.deployments.getIamPolicy",
            PermissionSet::DEPLOYMENTS_GET_IAM_POLICY,
            "apigee.deployments.setIamPolicy",
            PermissionSet::DEPLOYMENTS_SET_IAM_POLICY,
        ),
    }
}

/// Whether a resource is one this instance manages (its project, its organization, valid names).
fn is_ours(state: &AdminState, resource: &Resource) -> bool {
    Resource::parse(&resource.name()).is_some()
        && match resource {
            Resource::Project { project } => *project == state.project,
            Resource::Environment { organization, .. }
            | Resource::Deployment { organization, .. } => *organization == state.organization,
        }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidArgument(format!("Invalid JSON payload received. {e}")))
}

async fn dispatch(
    (State(state), method, headers, body): Request,
    resource: Resource,
    verb: Verb,
) -> Result<Response, ApiError> {
    match (&verb, &method) {
        (Verb::Get, &Method::GET | &Method::POST) | (Verb::Set | Verb::Test, &Method::POST) => {}
        _ => {
            return Err(ApiError::NotFound(format!(
                "Method {method} is not supported here"
            )));
        }
    }
    let caller = state.caller(&headers).await?;
    let name = resource.name();
    let ours = is_ours(&state, &resource);
    let snapshot = state.store.snapshot();
    let holds = |perm: PermissionSet| {
        ours && held(&**snapshot, &state.project, &resource, &caller.members).contains(perm)
    };
    let denied = |perm: &str| {
        ApiError::PermissionDenied(format!(
            "Permission '{perm}' denied on resource '{name}' (or it may not exist)."
        ))
    };
    let (get_name, get_perm, set_name, set_perm) = policy_permissions(&resource);
    match verb {
        Verb::Get => {
            if !holds(get_perm) {
                return Err(denied(get_name));
            }
            Ok(Json(state.store.policy(&resource)).into_response())
        }
        Verb::Set => {
            if !holds(set_perm) {
                return Err(denied(set_name));
            }
            drop(snapshot);
            let request: SetIamPolicyRequest = parse_json(&body)?;
            if let Some(mask) = &request.update_mask {
                if mask
                    .split(',')
                    .any(|f| !matches!(f.trim(), "bindings" | "etag" | ""))
                {
                    return Err(ApiError::InvalidArgument(format!(
                        "update_mask may name only bindings and etag, not {mask:?}"
                    )));
                }
            }
            // `{}` (no policy at all) clears every binding, as the seed document shows.
            let policy = request.policy.unwrap_or_default();
            let expected = policy.etag.clone();
            let policy = normalize(policy, state.store.roles())
                .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
            let old = state.store.policy(&resource);
            let stored = state.store.set_policy(&resource, policy, expected).await?;
            tracing::info!(
                target: "verifyiam::audit",
                caller = &*caller.id,
                resource = %name,
                old_etag = %old.etag.as_ref().map(ToString::to_string).unwrap_or_default(),
                new_etag = %stored.etag.as_ref().map(ToString::to_string).unwrap_or_default(),
                bindings = stored.bindings.len(),
                "setIamPolicy"
            );
            Ok(Json(stored).into_response())
        }
        Verb::Test => {
            let request: TestIamPermissionsRequest = parse_json(&body)?;
            let permissions = if ours {
                test_permissions(
                    &**snapshot,
                    &state.project,
                    &resource,
                    &caller.members,
                    &request.permissions,
                )
                .map_err(|e| ApiError::InvalidArgument(e.to_string()))?
            } else {
                Vec::new()
            };
            Ok(Json(TestIamPermissionsResponse { permissions }).into_response())
        }
    }
}
