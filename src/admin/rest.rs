//! The admin REST API in Google's shapes: the IAM policy methods (`:getIamPolicy` GET or POST,
//! `:setIamPolicy`, `:testIamPermissions`) on `projects/{p}`, `organizations/{o}/environments/{e}`
//! and `…/deployments/{api}`; Apigee's deployments (list, describe, deploy, undeploy, update);
//! the IAM API's custom roles; groups; and the Policy Analyzer's `GET /v1/{scope}:analyzeIamPolicy`
//! (answered by [`super::analyze`]). Each handler decodes HTTP, calls one operation of
//! [`super::AdminState`], and encodes the answer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::{Deserialize, Serialize};

use super::deployments::{DeploymentView, check_bool};
use super::groups::GroupView;
use super::roles::RoleFields;
use super::{AdminState, ApiError};
use crate::iam::eval::Resource;
use crate::iam::policy::Policy;

/// The REST routes (custom methods ride on the last path segment: `name:verb`).
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/projects/{name}", any(project))
        .route("/v1/organizations/{name}", any(organization))
        .route("/v1/projects/{project}/roles", any(roles))
        .route("/v1/projects/{project}/roles/{id}", any(role))
        .route(
            "/v1/organizations/{org}/environments/{name}",
            any(environment),
        )
        .route(
            "/v1/organizations/{org}/environments/{env}/deployments",
            get(list_deployments),
        )
        .route(
            "/v1/organizations/{org}/environments/{env}/deployments/{name}",
            any(deployment),
        )
        .route(
            "/v1/organizations/{org}/environments/{env}/apis/{api}/revisions/{rev}/deployments",
            any(revision_deployment),
        )
        .route("/v1/groups", get(list_groups))
        .route("/v1/groups/{name}", any(group))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetIamPolicyRequest {
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    update_mask: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GetIamPolicyRequest {
    #[serde(default)]
    options: Option<GetPolicyOptions>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GetPolicyOptions {
    #[serde(default)]
    requested_policy_version: i32,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateRoleRequest {
    role_id: String,
    #[serde(default)]
    role: RoleFields,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateDeploymentRequest {
    continue_on_error: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberRequest {
    member: String,
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

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidArgument(format!("Invalid JSON payload received. {e}")))
}

/// The query parameters, refusing any not in `allowed`.
fn query(raw: Option<String>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::InvalidArgument(format!(
                "Invalid query parameter {k:?}: accepted here: {}",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        out.insert(k.into_owned(), v.into_owned());
    }
    Ok(out)
}

fn unsupported(method: &Method) -> ApiError {
    ApiError::NotFound(format!("Method {method} is not supported here"))
}

fn mask(text: Option<&String>) -> Vec<String> {
    text.map(|m| {
        m.split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

async fn project(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Some(project) = name.strip_suffix(":analyzeIamPolicy") {
        return analyze_method(
            &state,
            format!("projects/{project}"),
            raw,
            &method,
            &headers,
        )
        .await;
    }
    let (project, verb) = split_verb(&name)?;
    let resource = Resource::Project {
        project: project.to_owned(),
    };
    policy_method(&state, method, &headers, body, resource, verb).await
}

/// `organizations/{o}`: only the Policy Analyzer's scope.
async fn organization(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match name.strip_suffix(":analyzeIamPolicy") {
        Some(org) => {
            analyze_method(
                &state,
                format!("organizations/{org}"),
                raw,
                &method,
                &headers,
            )
            .await
        }
        None => Err(ApiError::NotFound(format!("Method not found: {name}"))),
    }
}

async fn analyze_method(
    state: &AdminState,
    scope: String,
    raw: Option<String>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(unsupported(method));
    }
    super::analyze::rest(state, scope, raw, headers).await
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
    policy_method(&state, method, &headers, body, resource, verb).await
}

async fn deployment(
    State(state): State<Arc<AdminState>>,
    Path((organization, environment, name)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !name.contains(':') {
        // The deployment itself: describe (GET) or change its settings (PATCH).
        let resource = Resource::Deployment {
            organization,
            environment,
            deployment: name,
        };
        let caller = state.caller(&headers).await?;
        return match method {
            Method::GET => {
                Ok(Json(state.describe_deployment(&caller, &resource).await?).into_response())
            }
            Method::PATCH => {
                let request: UpdateDeploymentRequest = parse_json(&body)?;
                let view = state
                    .update_deployment(&caller, &resource, request.continue_on_error)
                    .await?;
                Ok(Json(view).into_response())
            }
            other => Err(unsupported(&other)),
        };
    }
    let (deployment, verb) = split_verb(&name)?;
    let resource = Resource::Deployment {
        organization,
        environment,
        deployment: deployment.to_owned(),
    };
    policy_method(&state, method, &headers, body, resource, verb).await
}

async fn policy_method(
    state: &AdminState,
    method: Method,
    headers: &HeaderMap,
    body: Bytes,
    resource: Resource,
    verb: Verb,
) -> Result<Response, ApiError> {
    match (&verb, &method) {
        (Verb::Get, &Method::GET | &Method::POST) | (Verb::Set | Verb::Test, &Method::POST) => {}
        _ => return Err(unsupported(&method)),
    }
    let caller = state.caller(headers).await?;
    match verb {
        Verb::Get => {
            let request: GetIamPolicyRequest = if body.iter().all(u8::is_ascii_whitespace) {
                GetIamPolicyRequest::default()
            } else {
                parse_json(&body)?
            };
            let version = request.options.map_or(0, |o| o.requested_policy_version);
            Ok(Json(state.get_iam_policy(&caller, &resource, version).await?).into_response())
        }
        Verb::Set => {
            // Authorization comes before parsing, so a caller without permission learns nothing.
            state.set_iam_policy_precheck(&caller, &resource).await?;
            let request: SetIamPolicyRequest = parse_json(&body)?;
            let stored = state
                .set_iam_policy(
                    &caller,
                    &resource,
                    request.policy,
                    &mask(request.update_mask.as_ref()),
                )
                .await?;
            Ok(Json(stored).into_response())
        }
        Verb::Test => {
            let request: TestIamPermissionsRequest = parse_json(&body)?;
            let permissions = state
                .test_iam_permissions(&caller, &resource, &request.permissions)
                .await?;
            Ok(Json(TestIamPermissionsResponse { permissions }).into_response())
        }
    }
}

// ---- deployments ----------------------------------------------------------------------------

#[derive(Serialize)]
struct DeploymentList {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    deployments: Vec<DeploymentView>,
}

async fn list_deployments(
    State(state): State<Arc<AdminState>>,
    Path((organization, environment)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    query(raw, &[])?;
    let deployments = state
        .list_deployments(&caller, &organization, &environment)
        .await?;
    Ok(Json(DeploymentList { deployments }).into_response())
}

async fn revision_deployment(
    State(state): State<Arc<AdminState>>,
    Path((organization, environment, api, revision)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let resource = Resource::Deployment {
        organization,
        environment,
        deployment: api,
    };
    match method {
        Method::POST => {
            let params = query(raw, &["continueOnError", "override"])?;
            let continue_on_error = params
                .get("continueOnError")
                .map(|v| check_bool("continueOnError", v))
                .transpose()?;
            let view = state
                .deploy(&caller, &resource, &revision, continue_on_error)
                .await?;
            Ok(Json(view).into_response())
        }
        Method::DELETE => {
            query(raw, &[])?;
            Ok(Json(state.undeploy(&caller, &resource, &revision).await?).into_response())
        }
        other => Err(unsupported(&other)),
    }
}

// ---- custom roles ---------------------------------------------------------------------------

#[derive(Serialize)]
struct RoleList {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<crate::iam::custom::CustomRole>,
}

async fn roles(
    State(state): State<Arc<AdminState>>,
    Path(project): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    match method {
        Method::GET => {
            let roles = state.list_roles(&caller, &project).await?;
            Ok(Json(RoleList { roles }).into_response())
        }
        Method::POST => {
            state.require_roles_precheck(&caller, &project).await?;
            let request: CreateRoleRequest = parse_json(&body)?;
            let role = state
                .create_role(&caller, &project, &request.role_id, request.role)
                .await?;
            Ok(Json(role).into_response())
        }
        other => Err(unsupported(&other)),
    }
}

async fn role(
    State(state): State<Arc<AdminState>>,
    Path((project, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    match method {
        Method::GET => Ok(Json(state.describe_role(&caller, &project, &id).await?).into_response()),
        Method::PATCH => {
            let params = query(raw, &["updateMask"])?;
            let fields: RoleFields = parse_json(&body)?;
            let role = state
                .update_role(
                    &caller,
                    &project,
                    &id,
                    fields,
                    &mask(params.get("updateMask")),
                )
                .await?;
            Ok(Json(role).into_response())
        }
        Method::DELETE => {
            query(raw, &["etag"])?;
            Ok(Json(state.delete_role(&caller, &project, &id).await?).into_response())
        }
        other => Err(unsupported(&other)),
    }
}

// ---- groups ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct GroupList {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<GroupView>,
}

async fn list_groups(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    let groups = state.list_groups(&caller).await?;
    Ok(Json(GroupList { groups }).into_response())
}

async fn group(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers).await?;
    match (method, name.rsplit_once(':')) {
        (Method::GET, None) => {
            Ok(Json(state.describe_group(&caller, &name).await?).into_response())
        }
        (Method::POST, Some((email, verb @ ("addMember" | "removeMember")))) => {
            let request: MemberRequest = parse_json(&body)?;
            let group = state
                .change_group(&caller, email, &request.member, verb == "addMember")
                .await?;
            Ok(Json(group).into_response())
        }
        (method, Some((_, verb))) if method == Method::POST => Err(ApiError::NotFound(format!(
            "Method not found: {verb} (use addMember or removeMember)"
        ))),
        (method, _) => Err(unsupported(&method)),
    }
}
