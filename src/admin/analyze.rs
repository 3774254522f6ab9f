//! The Policy Analyzer: "who can invoke this deployment?" and "what can this identity invoke?",
//! answered by [`crate::iam::analyze::analyze`] — read through the evaluation a Check uses —
//! over gRPC (`google.cloud.asset.v1.AssetService/AnalyzeIamPolicy`; the service's other methods
//! answer `UNIMPLEMENTED`) and REST (`GET /v1/{scope}:analyzeIamPolicy`, the query in Google's
//! query parameters).
//!
//! Who may ask: a caller who may read the project's policies
//! (`resourcemanager.projects.getIamPolicy`). Answers are capped at [`CAP`] results, identities
//! per result and resources per access-control list, with `fully_explored = false` beyond it.
//! Every request is audited.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::{Request, Status};

use super::audit::AUDIT_TARGET;
use super::explain::{View, full_name, parse_resource};
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::analyze::{self, Access, AnalyzeSource, Query};
use crate::iam::eval::Resource;
use crate::iam::roles::PermissionSet;
use crate::proto::google::cloud::asset::v1 as pb;
use crate::proto::google::iam::v1 as pb_iam;
use pb::asset_service_server::{AssetService, AssetServiceServer};
use pb::iam_policy_analysis_query::{AccessSelector, IdentitySelector, Options, ResourceSelector};
use pb::iam_policy_analysis_result as result;

/// The most results, identities per result and resources per access-control list in one answer
/// (Google's synchronous limit).
pub const CAP: usize = 1000;

impl AnalyzeSource for View<'_> {
    fn group_members(&self, email: &str) -> Option<&[String]> {
        self.snapshot.group(email).map(|g| g.members.as_slice())
    }
    fn policy_names(&self) -> Vec<String> {
        self.snapshot
            .entries()
            .map(|(name, _)| name.to_owned())
            .collect()
    }
    fn deployments(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .snapshot
            .deployments()
            .filter(|(_, d)| d.deployed)
            .map(|(name, _)| name.to_owned())
            .collect();
        names.sort();
        names
    }
}

impl AdminState {
    /// `AnalyzeIamPolicy`: the grants that answer `query`, for a caller who may read the
    /// project's policies. Audited.
    pub async fn analyze_iam_policy(
        &self,
        caller: &Principal,
        query: pb::IamPolicyAnalysisQuery,
    ) -> Result<pb::AnalyzeIamPolicyResponse, ApiError> {
        let answer = self.analyze_unaudited(caller, &query).await;
        tracing::info!(
            target: AUDIT_TARGET,
            caller = %caller.id.escape_debug(),
            action = "analyzeIamPolicy",
            scope = %query.scope.escape_debug(),
            resource = %query
                .resource_selector
                .as_ref()
                .map_or("", |r| r.full_resource_name.as_str())
                .escape_debug(),
            identity = %query
                .identity_selector
                .as_ref()
                .map_or("", |i| i.identity.as_str())
                .escape_debug(),
            outcome = match &answer {
                Ok(_) => "ok",
                Err(_) => "error",
            },
            "admin read"
        );
        let results = answer?;
        let fully_explored = results.fully_explored;
        Ok(pb::AnalyzeIamPolicyResponse {
            main_analysis: Some(pb::analyze_iam_policy_response::IamPolicyAnalysis {
                analysis_query: Some(query),
                analysis_results: results.grants.into_iter().map(to_pb).collect(),
                fully_explored,
                non_critical_errors: Vec::new(),
            }),
            service_account_impersonation_analysis: Vec::new(),
            fully_explored,
        })
    }

    async fn analyze_unaudited(
        &self,
        caller: &Principal,
        query: &pb::IamPolicyAnalysisQuery,
    ) -> Result<analyze::Analysis, ApiError> {
        let organization = format!("organizations/{}", self.organization);
        let project = format!("projects/{}", self.project);
        if query.scope != project && query.scope != organization {
            return Err(ApiError::InvalidArgument(format!(
                "invalid analysis_query.scope {:?}: expected {project} or {organization}",
                query.scope
            )));
        }
        let operation = self
            .require(
                caller,
                &self.project_resource(),
                PermissionSet::PROJECTS_GET_IAM_POLICY,
            )
            .await?;
        let options = query.options.unwrap_or_default();
        if options.analyze_service_account_impersonation {
            return Err(ApiError::InvalidArgument(
                "options.analyze_service_account_impersonation is not supported: verifyiam \
                 grants nothing through impersonation"
                    .to_owned(),
            ));
        }
        let resource = match query.resource_selector.as_ref() {
            Some(r) => {
                let resource = parse_resource(&r.full_resource_name)?;
                if !self.is_ours(&resource) {
                    return Err(ApiError::InvalidArgument(format!(
                        "resource {:?} is not in scope {:?}",
                        r.full_resource_name, query.scope
                    )));
                }
                Some(resource)
            }
            None => None,
        };
        let access = query.access_selector.clone().unwrap_or_default();
        let question = Query {
            resource,
            identity: query.identity_selector.as_ref().map(|i| i.identity.clone()),
            roles: access.roles,
            permissions: access
                .permissions
                .iter()
                .map(|p| p.trim().to_owned())
                .collect(),
            expand_groups: options.expand_groups,
            expand_roles: options.expand_roles,
            expand_resources: options.expand_resources,
            output_group_edges: options.output_group_edges,
        };
        let view = View {
            snapshot: operation.snapshot(),
            project_name: project,
            bootstrap: self.store.bootstrap_admins(),
        };
        analyze::analyze(&view, &self.project, &question, CAP)
            .map_err(|e| ApiError::InvalidArgument(e.0))
    }
}

fn full(name: &str) -> String {
    Resource::parse(name).map_or_else(|| name.to_owned(), |r| full_name(&r))
}

fn to_pb(grant: analyze::Grant) -> pb::IamPolicyAnalysisResult {
    let edge = |(source_node, target_node): (String, String)| result::Edge {
        source_node,
        target_node,
    };
    pb::IamPolicyAnalysisResult {
        attached_resource_full_name: full(&grant.attached),
        iam_binding: Some(pb_iam::Binding {
            role: grant.binding.role,
            members: grant.binding.members,
            condition: None,
        }),
        access_control_lists: grant
            .acls
            .into_iter()
            .map(|acl| result::AccessControlList {
                resources: acl
                    .resources
                    .iter()
                    .map(|r| result::Resource {
                        full_resource_name: full(r),
                        analysis_state: None,
                    })
                    .collect(),
                accesses: acl
                    .accesses
                    .into_iter()
                    .map(|a| result::Access {
                        oneof_access: Some(match a {
                            Access::Role(r) => result::access::OneofAccess::Role(r),
                            Access::Permission(p) => result::access::OneofAccess::Permission(p),
                        }),
                        analysis_state: None,
                    })
                    .collect(),
                resource_edges: Vec::new(),
                condition_evaluation: None,
            })
            .collect(),
        identity_list: Some(result::IdentityList {
            identities: grant
                .identities
                .into_iter()
                .map(|name| result::Identity {
                    name,
                    analysis_state: None,
                })
                .collect(),
            group_edges: grant.group_edges.into_iter().map(edge).collect(),
        }),
        fully_explored: grant.fully_explored,
    }
}

/// The service, ready to be routed.
pub fn server(state: Arc<AdminState>) -> AssetServiceServer<AnalyzerService> {
    AssetServiceServer::new(AnalyzerService { state })
}

/// Implements `google.cloud.asset.v1.AssetService` (`AnalyzeIamPolicy` only).
pub struct AnalyzerService {
    state: Arc<AdminState>,
}

#[tonic::async_trait]
impl AssetService for AnalyzerService {
    async fn analyze_iam_policy(
        &self,
        request: Request<pb::AnalyzeIamPolicyRequest>,
    ) -> Result<tonic::Response<pb::AnalyzeIamPolicyResponse>, Status> {
        let headers = request.metadata().clone().into_headers();
        let caller = self.state.caller(&headers).await?;
        let request = request.into_inner();
        if !request.saved_analysis_query.is_empty() {
            return Err(ApiError::InvalidArgument(
                "saved_analysis_query is not supported".to_owned(),
            )
            .into());
        }
        let query = request.analysis_query.unwrap_or_default();
        Ok(tonic::Response::new(
            self.state.analyze_iam_policy(&caller, query).await?,
        ))
    }
}

/// `GET /v1/{scope}:analyzeIamPolicy`, `scope` being `projects/P` or `organizations/O`: the
/// query from Google's query parameters (`analysisQuery.resourceSelector.fullResourceName`, …),
/// the answer in Google's JSON mapping.
pub async fn rest(
    state: &AdminState,
    scope: String,
    raw: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(headers).await?;
    let query = rest_query(scope, raw)?;
    let answer = state.analyze_iam_policy(&caller, query).await?;
    Ok(axum::Json(response_json(&answer)).into_response())
}

fn boolean(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(ApiError::InvalidArgument(format!(
            "Invalid value at '{key}' (TYPE_BOOL), \"{value}\""
        ))),
    }
}

/// The query of a REST request; any parameter Google's mapping does not name is refused.
fn rest_query(scope: String, raw: Option<String>) -> Result<pb::IamPolicyAnalysisQuery, ApiError> {
    let mut query = pb::IamPolicyAnalysisQuery {
        scope,
        ..Default::default()
    };
    let mut options = Options::default();
    let mut access = AccessSelector::default();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let (key, value) = (k.as_ref(), v.into_owned());
        match key {
            "$alt" | "alt" => {
                if value.split(';').next() != Some("json") {
                    return Err(ApiError::InvalidArgument(format!(
                        "unsupported {key} {value:?}: only json is served"
                    )));
                }
            }
            "analysisQuery.resourceSelector.fullResourceName" => {
                query.resource_selector = Some(ResourceSelector {
                    full_resource_name: value,
                });
            }
            "analysisQuery.identitySelector.identity" => {
                query.identity_selector = Some(IdentitySelector { identity: value });
            }
            "analysisQuery.accessSelector.roles" => access.roles.push(value),
            "analysisQuery.accessSelector.permissions" => access.permissions.push(value),
            "analysisQuery.options.expandGroups" => options.expand_groups = boolean(key, &value)?,
            "analysisQuery.options.expandRoles" => options.expand_roles = boolean(key, &value)?,
            "analysisQuery.options.expandResources" => {
                options.expand_resources = boolean(key, &value)?;
            }
            "analysisQuery.options.outputResourceEdges" => {
                options.output_resource_edges = boolean(key, &value)?;
            }
            "analysisQuery.options.outputGroupEdges" => {
                options.output_group_edges = boolean(key, &value)?;
            }
            "analysisQuery.options.analyzeServiceAccountImpersonation" => {
                options.analyze_service_account_impersonation = boolean(key, &value)?;
            }
            // Conditions are refused in policies, so no binding depends on the access time.
            "analysisQuery.conditionContext.accessTime" | "executionTimeout" => {}
            "savedAnalysisQuery" if value.is_empty() => {}
            "savedAnalysisQuery" => {
                return Err(ApiError::InvalidArgument(
                    "savedAnalysisQuery is not supported".to_owned(),
                ));
            }
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "Invalid query parameter {key:?}: expected analysisQuery.resourceSelector.\
                     fullResourceName, analysisQuery.identitySelector.identity, \
                     analysisQuery.accessSelector.roles, analysisQuery.accessSelector.permissions, \
                     analysisQuery.options.* or $alt"
                )));
            }
        }
    }
    if access != AccessSelector::default() {
        query.access_selector = Some(access);
    }
    if options != Options::default() {
        query.options = Some(options);
    }
    Ok(query)
}

/// Drops the default values, as Google's JSON mapping does.
fn prune(value: Value) -> Option<Value> {
    match value {
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items.into_iter().filter_map(prune).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::String(s) if s.is_empty() => None,
        Value::Bool(false) | Value::Null => None,
        other => Some(other),
    }
}

/// The answer in Google's JSON mapping (lowerCamelCase, default values left out).
pub fn response_json(r: &pb::AnalyzeIamPolicyResponse) -> Value {
    let query = |q: &pb::IamPolicyAnalysisQuery| {
        json!({
            "scope": q.scope,
            "resourceSelector": q.resource_selector.as_ref().map(|r| json!({"fullResourceName": r.full_resource_name})),
            "identitySelector": q.identity_selector.as_ref().map(|i| json!({"identity": i.identity})),
            "accessSelector": q.access_selector.as_ref().map(|a| json!({"roles": a.roles, "permissions": a.permissions})),
            "options": q.options.as_ref().map(|o| json!({
                "expandGroups": o.expand_groups,
                "expandRoles": o.expand_roles,
                "expandResources": o.expand_resources,
                "outputResourceEdges": o.output_resource_edges,
                "outputGroupEdges": o.output_group_edges,
                "analyzeServiceAccountImpersonation": o.analyze_service_account_impersonation,
            })),
        })
    };
    let edge = |e: &result::Edge| json!({"sourceNode": e.source_node, "targetNode": e.target_node});
    let result = |r: &pb::IamPolicyAnalysisResult| {
        json!({
            "attachedResourceFullName": r.attached_resource_full_name,
            "iamBinding": r.iam_binding.as_ref().map(|b| json!({"role": b.role, "members": b.members})),
            "accessControlLists": r.access_control_lists.iter().map(|acl| json!({
                "resources": acl.resources.iter().map(|x| json!({"fullResourceName": x.full_resource_name})).collect::<Vec<_>>(),
                "accesses": acl.accesses.iter().map(|a| match &a.oneof_access {
                    Some(result::access::OneofAccess::Role(role)) => json!({"role": role}),
                    Some(result::access::OneofAccess::Permission(p)) => json!({"permission": p}),
                    None => json!({}),
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "identityList": r.identity_list.as_ref().map(|l| json!({
                "identities": l.identities.iter().map(|i| json!({"name": i.name})).collect::<Vec<_>>(),
                "groupEdges": l.group_edges.iter().map(edge).collect::<Vec<_>>(),
            })),
            "fullyExplored": r.fully_explored,
        })
    };
    let main = r.main_analysis.as_ref().map(|m| {
        json!({
            "analysisQuery": m.analysis_query.as_ref().map(query),
            "analysisResults": m.analysis_results.iter().map(result).collect::<Vec<_>>(),
            "fullyExplored": m.fully_explored,
        })
    });
    prune(json!({"mainAnalysis": main, "fullyExplored": r.fully_explored})).unwrap_or(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::audit::capture::{audit_events, field};
    use crate::admin::operation::tests::admin;

    const OWNER: &str = "root@example.com";

    /// Runs `f` to completion on this thread (the audit capture is this thread's).
    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn caller(email: &str) -> Principal {
        Principal {
            id: email.into(),
            key: [0; 32],
            members: crate::iam::principal_members(Some(email), &[], None),
            expires_at: u64::MAX,
            has_scope: true,
        }
    }

    fn who_can_invoke(resource: &str) -> pb::IamPolicyAnalysisQuery {
        pb::IamPolicyAnalysisQuery {
            scope: "projects/p".into(),
            resource_selector: Some(ResourceSelector {
                full_resource_name: resource.into(),
            }),
            access_selector: Some(AccessSelector {
                roles: Vec::new(),
                permissions: vec![crate::iam::roles::INVOKE.into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_analysis_is_audited_answered_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = admin(dir.path(), OWNER);
        let orders = "organizations/p/environments/prod/deployments/orders";
        let (answer, events, _) = audit_events(|| {
            block_on(state.analyze_iam_policy(&caller(OWNER), who_can_invoke(orders)))
        });
        // The bootstrap owner holds invoke through the project.
        let answer = answer.unwrap();
        let results = &answer.main_analysis.unwrap().analysis_results;
        assert_eq!(results.len(), 1);
        assert_eq!(
            results[0].iam_binding.as_ref().unwrap().members,
            [format!("user:{OWNER}")]
        );
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(field(&events[0], "action"), "analyzeIamPolicy");
        assert_eq!(field(&events[0], "caller"), OWNER);
        assert_eq!(field(&events[0], "resource"), orders);
        assert_eq!(field(&events[0], "outcome"), "ok");

        let (answer, events, _) = audit_events(|| {
            block_on(state.analyze_iam_policy(&caller("eve@example.org"), who_can_invoke(orders)))
        });
        assert!(
            matches!(answer, Err(ApiError::PermissionDenied(_))),
            "{answer:?}"
        );
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(field(&events[0], "caller"), "eve@example.org");
        assert_eq!(field(&events[0], "outcome"), "error");
    }

    #[test]
    fn rest_query_reads_googles_parameter_names() {
        let raw = "analysisQuery.resourceSelector.fullResourceName=%2F%2Fapigee.googleapis.com%2Forganizations%2Fp\
                   &analysisQuery.identitySelector.identity=user%3Aa%40example.com\
                   &analysisQuery.accessSelector.permissions=apigee.deployments.invoke\
                   &analysisQuery.accessSelector.roles=roles%2Fowner\
                   &analysisQuery.options.expandGroups=true&analysisQuery.options.expandRoles=false\
                   &analysisQuery.options.expandResources=true&analysisQuery.options.outputGroupEdges=true\
                   &%24alt=json%3Benum-encoding%3Dint";
        let q = rest_query("projects/p".into(), Some(raw.into())).unwrap();
        assert_eq!(q.scope, "projects/p");
        assert_eq!(
            q.resource_selector.unwrap().full_resource_name,
            "//apigee.googleapis.com/organizations/p"
        );
        assert_eq!(q.identity_selector.unwrap().identity, "user:a@example.com");
        let access = q.access_selector.unwrap();
        assert_eq!(access.permissions, ["apigee.deployments.invoke"]);
        assert_eq!(access.roles, ["roles/owner"]);
        let options = q.options.unwrap();
        assert!(options.expand_groups && options.expand_resources && options.output_group_edges);
        assert!(!options.expand_roles);
        for bad in [
            "analysisQuery.options.expandGroups=yes",
            "analysisQuery.foo=1",
            "$alt=proto",
        ] {
            assert!(
                matches!(
                    rest_query("projects/p".into(), Some(bad.into())),
                    Err(ApiError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
