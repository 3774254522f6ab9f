//! The Policy Troubleshooter: "why may (or may not) this principal use this permission on this
//! resource?", answered by [`crate::iam::explain::explain`] — the evaluation a Check uses, with
//! its reasons — over gRPC (`google.cloud.policytroubleshooter.iam.v3.PolicyTroubleshooter/
//! TroubleshootIamPolicy`) and REST (`POST /v3/iam:troubleshoot`), and in the older v1 shape
//! (`google.cloud.policytroubleshooter.v1.IamChecker/TroubleshootIamPolicy`, `POST
//! /v1/iam:troubleshoot`), both converted from the one transport-neutral [`Troubleshot`]. v1 has
//! no place for "an environment grant does not pass down" but its `errors`, so it is said there.
//!
//! Who may ask: anyone authenticated; each policy the caller may not read (`*.getIamPolicy` at
//! its level) is `UNKNOWN_INFO` with nothing of it shown, as Google does, and an answer that
//! depends on such a policy is `UNKNOWN_INFO` too. Every request is audited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Request, Status};

use super::audit::AUDIT_TARGET;
use super::grpc::policy_to_pb;
use super::operation::invalid;
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::eval::{PolicyLookup, Resource, held};
use crate::iam::explain::{
    ExplainSource, ExplainedBinding, ExplainedPolicy, Level, Relevance, RolePermission, explain,
};
use crate::iam::member::{Member, pool_members, principal_members};
use crate::iam::policy::{Binding, Policy};
use crate::iam::roles::{PermissionSet, RoleCatalog};
use crate::iam::{CompiledPolicy, RoleStage};
use crate::proto::google::cloud::policytroubleshooter::iam::v3 as pb;
use crate::proto::google::cloud::policytroubleshooter::v1 as pb1;
use crate::store::Snapshot;
use pb::policy_troubleshooter_server::{PolicyTroubleshooter, PolicyTroubleshooterServer};
use pb::troubleshoot_iam_policy_response::OverallAccessState;
use pb1::iam_checker_server::{IamChecker, IamCheckerServer};

/// The service name of project resources in full resource names.
const PROJECTS_SERVICE: &str = "//cloudresourcemanager.googleapis.com/";
/// The service name of Apigee resources in full resource names.
const APIGEE_SERVICE: &str = "//apigee.googleapis.com/";

/// A snapshot seen as the documents behind its compiled policies, with the bootstrap owners.
pub(super) struct View<'a> {
    pub(super) snapshot: &'a Snapshot,
    pub(super) project_name: String,
    pub(super) bootstrap: &'a [Box<str>],
}

impl PolicyLookup for View<'_> {
    fn policy(&self, resource_name: &str) -> Option<&CompiledPolicy> {
        self.snapshot.policy(resource_name)
    }
    fn groups_of(&self, member: &str) -> &[Box<str>] {
        self.snapshot.groups_of(member)
    }
}

impl ExplainSource for View<'_> {
    fn document(&self, resource_name: &str) -> Option<&Policy> {
        self.snapshot.entry(resource_name).map(|e| &e.policy)
    }
    fn catalog(&self) -> &dyn RoleCatalog {
        self.snapshot.catalog()
    }
    fn disabled_role(&self, role: &str) -> Option<PermissionSet> {
        self.snapshot
            .role(role)
            .filter(|r| r.stage == RoleStage::Disabled)
            .map(|r| PermissionSet::of_names(&r.included_permissions))
    }
    fn implicit_bindings(&self, resource_name: &str) -> Vec<Binding> {
        if resource_name != self.project_name || self.bootstrap.is_empty() {
            return Vec::new();
        }
        vec![Binding {
            role: "roles/owner".to_owned(),
            members: self.bootstrap.iter().map(|m| m.to_string()).collect(),
            condition: None,
        }]
    }
}

/// A resource's full name: `//cloudresourcemanager.googleapis.com/projects/P` or
/// `//apigee.googleapis.com/organizations/…`.
pub fn full_name(resource: &Resource) -> String {
    match resource {
        Resource::Project { .. } => format!("{PROJECTS_SERVICE}{resource}"),
        _ => format!("{APIGEE_SERVICE}{resource}"),
    }
}

/// Parses a full resource name, or a relative one.
pub fn parse_resource(name: &str) -> Result<Resource, ApiError> {
    let relative = if let Some(rest) = name.strip_prefix(PROJECTS_SERVICE) {
        Some(rest).filter(|r| r.starts_with("projects/"))
    } else if let Some(rest) = name.strip_prefix(APIGEE_SERVICE) {
        Some(rest).filter(|r| r.starts_with("organizations/"))
    } else if name.starts_with("//") {
        None
    } else {
        Some(name)
    };
    relative.and_then(Resource::parse).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "invalid full_resource_name {name:?}: expected \
             //cloudresourcemanager.googleapis.com/projects/P, \
             //apigee.googleapis.com/organizations/O/environments/E[/deployments/D] \
             or the relative name"
        ))
    })
}

/// A permission in its v1 form; the v2 form (`apigee.googleapis.com/deployments.invoke`) is
/// accepted too.
fn v1_permission(permission: &str) -> String {
    match permission.split_once(".googleapis.com/") {
        Some((service, rest)) => format!("{service}.{rest}"),
        None => permission.to_owned(),
    }
}

/// A permission in its v2 form: `apigee.deployments.invoke` → `apigee.googleapis.com/deployments.invoke`.
fn v2_permission(permission: &str) -> String {
    match permission.split_once('.') {
        Some((service, rest)) => format!("{service}.googleapis.com/{rest}"),
        None => permission.to_owned(),
    }
}

/// The permission that reads a policy at a level.
fn reader(level: Level) -> PermissionSet {
    match level {
        Level::Project => PermissionSet::PROJECTS_GET_IAM_POLICY,
        Level::Environment => PermissionSet::ENVIRONMENTS_GET_IAM_POLICY,
        Level::Deployment => PermissionSet::DEPLOYMENTS_GET_IAM_POLICY,
    }
}

/// One policy of an answer: shown, or hidden from a caller who may not read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    /// The caller may read it.
    Visible(ExplainedPolicy),
    /// The caller may not: nothing of it is shown.
    Hidden,
}

/// The overall answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The principal holds the permission.
    Granted,
    /// It does not.
    NotGranted,
    /// The caller may not read every policy the answer depends on.
    Unknown,
}

/// A troubleshooter answer, transport-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct Troubleshot {
    /// The principal asked about (bare email).
    pub principal: String,
    /// The resource asked about.
    pub resource: Resource,
    /// The full resource name as the caller wrote it.
    pub full_resource_name: String,
    /// The permission asked about, v1 form.
    pub permission: String,
    /// The overall answer.
    pub access: Access,
    /// For a deployment that is not deployed: the Check denies whatever the policies say.
    pub not_deployed: bool,
    /// The policies, in the order project, environment, deployment.
    pub policies: Vec<Shown>,
}

impl AdminState {
    /// `TroubleshootIamPolicy`: whether `principal` (an email) holds `permission` on the
    /// resource `full_resource_name`, with the reasons the caller may see. Audited.
    pub async fn troubleshoot(
        &self,
        caller: &Principal,
        principal: &str,
        full_resource_name: &str,
        permission: &str,
    ) -> Result<Troubleshot, ApiError> {
        let answer = self
            .troubleshoot_unaudited(caller, principal, full_resource_name, permission)
            .await;
        let outcome = match &answer {
            Ok(t) => match t.access {
                Access::Granted => "CAN_ACCESS",
                Access::NotGranted => "CANNOT_ACCESS",
                Access::Unknown => "UNKNOWN_INFO",
            },
            Err(_) => "error",
        };
        tracing::info!(
            target: AUDIT_TARGET,
            caller = %caller.id.escape_debug(),
            action = "troubleshootIamPolicy",
            resource = %full_resource_name.escape_debug(),
            principal = %principal.escape_debug(),
            permission = %permission.escape_debug(),
            outcome,
            "admin read"
        );
        answer
    }

    async fn troubleshoot_unaudited(
        &self,
        caller: &Principal,
        principal: &str,
        full_resource_name: &str,
        permission: &str,
    ) -> Result<Troubleshot, ApiError> {
        let members = match pool_identity(principal) {
            // A pool identity is known here by its name alone: its subject and its pool (so
            // `principalSet://…/*` includes it); its groups and attributes come only with a token.
            Some((pool, subject)) => pool_members(pool, subject, &[], &[]),
            None => principal_members(Some(principal), &[], None),
        };
        // A valid email yields its own member, its domain and the two public members.
        if (principal.contains(':') || members.len() < 4) && pool_identity(principal).is_none() {
            return Err(ApiError::InvalidArgument(format!(
                "invalid principal {principal:?}: expected the email of a user or a service \
                 account, e.g. alice@example.com, or a pool identity, \
                 principal://iam.googleapis.com/POOL/subject/SUBJECT"
            )));
        }
        let resource = parse_resource(full_resource_name)?;
        if !self.is_ours(&resource) {
            return Err(ApiError::InvalidArgument(format!(
                "resource {full_resource_name:?} is not in project {:?}",
                self.project
            )));
        }
        let permission = v1_permission(permission);
        let snapshot = self.load().await?;
        let view = View {
            snapshot: &snapshot,
            project_name: format!("projects/{}", self.project),
            bootstrap: self.store.bootstrap_admins(),
        };
        let explanation =
            explain(&view, &self.project, &resource, &members, &permission).map_err(invalid)?;
        let may_read = |p: &ExplainedPolicy| {
            Resource::parse(&p.resource).is_some_and(|on| {
                held(&**snapshot, &self.project, &on, &caller.members).contains(reader(p.level))
            })
        };
        let mut policies = Vec::with_capacity(explanation.policies.len());
        let mut hidden_counts = false;
        let mut visible_grants = false;
        for policy in explanation.policies {
            if may_read(&policy) {
                visible_grants |= policy.granted;
                policies.push(Shown::Visible(policy));
            } else if policy.passes_down {
                hidden_counts = true;
                policies.push(Shown::Hidden);
            }
            // A hidden policy that does not pass down is left out: showing it would tell that
            // it would grant.
        }
        let not_deployed = matches!(resource, Resource::Deployment { .. })
            && !snapshot.is_deployed(&resource.name(), self.strict_deployments);
        // The Check refuses invoke on a deployment that is not deployed, whatever its policies.
        let refused_anyway = not_deployed && permission == crate::iam::roles::INVOKE;
        let access = if visible_grants && !refused_anyway {
            Access::Granted
        } else if hidden_counts {
            Access::Unknown
        } else {
            Access::NotGranted
        };
        if hidden_counts {
            // What flips the answer depends on what the caller may not see: claim nothing.
            for shown in &mut policies {
                if let Shown::Visible(p) = shown {
                    flatten_relevance(p);
                }
            }
        }
        Ok(Troubleshot {
            principal: principal.to_owned(),
            resource,
            full_resource_name: full_resource_name.to_owned(),
            permission,
            access,
            not_deployed,
            policies,
        })
    }
}

fn flatten_relevance(p: &mut ExplainedPolicy) {
    p.relevance = Relevance::Normal;
    for b in &mut p.bindings {
        b.relevance = Relevance::Normal;
        b.role_relevance = Relevance::Normal;
        for m in &mut b.members {
            m.relevance = Relevance::Normal;
        }
    }
}

fn relevance(r: Relevance) -> i32 {
    match r {
        Relevance::Normal => pb::HeuristicRelevance::Normal as i32,
        Relevance::High => pb::HeuristicRelevance::High as i32,
    }
}

fn allow_state(granted: bool) -> i32 {
    if granted {
        pb::AllowAccessState::Granted as i32
    } else {
        pb::AllowAccessState::NotGranted as i32
    }
}

fn binding_to_v3(b: ExplainedBinding) -> pb::AllowBindingExplanation {
    let matches = b.matches();
    let membership = |matched: bool| {
        if matched {
            pb::MembershipMatchingState::MembershipMatched as i32
        } else {
            pb::MembershipMatchingState::MembershipNotMatched as i32
        }
    };
    // The membership as a whole flips the answer when the binding does and its members are
    // what it hinges on (it grants, or only a member is missing).
    let combined = if b.relevance == Relevance::High && (b.granted || !matches) {
        Relevance::High
    } else {
        Relevance::Normal
    };
    pb::AllowBindingExplanation {
        allow_access_state: allow_state(b.granted),
        role: b.role,
        role_permission: match b.role_permission {
            RolePermission::Included => pb::RolePermissionInclusionState::RolePermissionIncluded,
            RolePermission::NotIncluded
            | RolePermission::Disabled
            | RolePermission::UnknownRole => {
                pb::RolePermissionInclusionState::RolePermissionNotIncluded
            }
        } as i32,
        role_permission_relevance: relevance(b.role_relevance),
        combined_membership: Some(pb::allow_binding_explanation::AnnotatedAllowMembership {
            membership: membership(matches),
            relevance: relevance(combined),
        }),
        memberships: b
            .members
            .into_iter()
            .map(|m| {
                (
                    m.member,
                    pb::allow_binding_explanation::AnnotatedAllowMembership {
                        membership: membership(m.matched.is_some()),
                        relevance: relevance(m.relevance),
                    },
                )
            })
            .collect(),
        relevance: relevance(b.relevance),
        condition: b.condition.map(expr_to_proto),
    }
}

/// The answer as `google.cloud.policytroubleshooter.iam.v3.TroubleshootIamPolicyResponse`.
pub fn to_v3(t: Troubleshot) -> pb::TroubleshootIamPolicyResponse {
    let (overall, allow) = match t.access {
        Access::Granted => (OverallAccessState::CanAccess, pb::AllowAccessState::Granted),
        Access::NotGranted => (
            OverallAccessState::CannotAccess,
            pb::AllowAccessState::NotGranted,
        ),
        Access::Unknown => (
            OverallAccessState::UnknownInfo,
            pb::AllowAccessState::UnknownInfo,
        ),
    };
    let explained_policies = t
        .policies
        .into_iter()
        .map(|shown| match shown {
            Shown::Hidden => pb::ExplainedAllowPolicy {
                allow_access_state: pb::AllowAccessState::UnknownInfo as i32,
                ..pb::ExplainedAllowPolicy::default()
            },
            Shown::Visible(p) => pb::ExplainedAllowPolicy {
                allow_access_state: allow_state(p.granted),
                full_resource_name: Resource::parse(&p.resource)
                    .map(|r| full_name(&r))
                    .unwrap_or(p.resource),
                binding_explanations: p.bindings.into_iter().map(binding_to_v3).collect(),
                relevance: relevance(p.relevance),
                policy: Some(policy_to_pb(p.policy)),
            },
        })
        .collect();
    pb::TroubleshootIamPolicyResponse {
        overall_access_state: overall as i32,
        access_tuple: Some(pb::AccessTuple {
            principal: t.principal,
            full_resource_name: t.full_resource_name,
            permission_fqdn: v2_permission(&t.permission),
            permission: t.permission,
        }),
        allow_policy_explanation: Some(pb::AllowPolicyExplanation {
            allow_access_state: allow as i32,
            explained_policies,
            relevance: relevance(Relevance::High),
        }),
        deny_policy_explanation: Some(pb::DenyPolicyExplanation {
            deny_access_state: pb::DenyAccessState::NotDenied as i32,
            relevance: relevance(Relevance::Normal),
            permission_deniable: false,
        }),
    }
}

/// The service, ready to be routed.
pub fn server(state: Arc<AdminState>) -> PolicyTroubleshooterServer<TroubleshooterService> {
    PolicyTroubleshooterServer::new(TroubleshooterService { state })
}

/// Implements `google.cloud.policytroubleshooter.iam.v3.PolicyTroubleshooter`.
pub struct TroubleshooterService {
    state: Arc<AdminState>,
}

#[tonic::async_trait]
impl PolicyTroubleshooter for TroubleshooterService {
    async fn troubleshoot_iam_policy(
        &self,
        request: Request<pb::TroubleshootIamPolicyRequest>,
    ) -> Result<tonic::Response<pb::TroubleshootIamPolicyResponse>, Status> {
        let headers = request.metadata().clone().into_headers();
        let caller = self.state.caller(&headers).await?;
        let tuple = request.into_inner().access_tuple.unwrap_or_default();
        let answer = self
            .state
            .troubleshoot(
                &caller,
                &tuple.principal,
                &tuple.full_resource_name,
                &tuple.permission,
            )
            .await?;
        Ok(tonic::Response::new(to_v3(answer)))
    }
}

/// The REST routes: `POST /v3/iam:troubleshoot` and `POST /v1/iam:troubleshoot`.
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v3/iam:troubleshoot", post(troubleshoot_rest))
        .route("/v1/iam:troubleshoot", post(troubleshoot_rest_v1))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RestRequest {
    #[serde(default)]
    access_tuple: RestAccessTuple,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RestAccessTuple {
    #[serde(default)]
    principal: String,
    #[serde(default)]
    full_resource_name: String,
    #[serde(default)]
    permission: String,
    /// Output only; ignored when sent back.
    #[serde(default)]
    #[allow(dead_code)]
    permission_fqdn: String,
    /// Conditions are not supported; an empty context is accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    condition_context: Option<Value>,
}

/// Whether the query asks for enums as numbers (`$alt=json;enum-encoding=int`, what Google's
/// client libraries send). Any other parameter is refused.
fn enums_as_numbers(raw: Option<String>) -> Result<bool, ApiError> {
    let mut numbers = false;
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "$alt" | "alt" => {
                let mut parts = v.split(';');
                if parts.next() != Some("json") {
                    return Err(ApiError::InvalidArgument(format!(
                        "unsupported {k} {v:?}: only json is served"
                    )));
                }
                numbers = parts.any(|p| p.trim() == "enum-encoding=int");
            }
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "Invalid query parameter {k:?}: accepted here: $alt"
                )));
            }
        }
    }
    Ok(numbers)
}

/// A REST request's answer and whether its enums are to be numbers.
async fn rest_answer(
    state: &AdminState,
    raw: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Troubleshot, bool), ApiError> {
    let caller = state.caller(headers).await?;
    let numbers = enums_as_numbers(raw)?;
    let request: RestRequest = if body.is_empty() {
        RestRequest {
            access_tuple: RestAccessTuple::default(),
        }
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::InvalidArgument(format!("Invalid JSON payload received. {e}")))?
    };
    let tuple = request.access_tuple;
    let answer = state
        .troubleshoot(
            &caller,
            &tuple.principal,
            &tuple.full_resource_name,
            &tuple.permission,
        )
        .await?;
    Ok((answer, numbers))
}

async fn troubleshoot_rest(
    State(state): State<Arc<AdminState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (answer, numbers) = rest_answer(&state, raw, &headers, &body).await?;
    Ok(axum::Json(v3_json(&to_v3(answer), numbers)).into_response())
}

async fn troubleshoot_rest_v1(
    State(state): State<Arc<AdminState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (answer, numbers) = rest_answer(&state, raw, &headers, &body).await?;
    Ok(axum::Json(v1_json(&to_v1(answer), numbers)).into_response())
}

/// An enum field in Google's JSON mapping: left out at its default (0), else its name, or its
/// number when the caller asked for `enum-encoding=int`.
fn enum_json(n: i32, name: Option<&'static str>, numbers: bool) -> Option<Value> {
    if n == 0 {
        None
    } else if numbers {
        Some(json!(n))
    } else {
        Some(json!(name.unwrap_or("UNSPECIFIED")))
    }
}

/// The v3 answer in Google's JSON mapping: lowerCamelCase names, default values left out,
/// enums as names (or numbers when asked).
pub fn v3_json(r: &pb::TroubleshootIamPolicyResponse, numbers: bool) -> Value {
    let e = |n: i32, name: Option<&'static str>| enum_json(n, name, numbers);
    let rel = |n: i32| {
        e(
            n,
            pb::HeuristicRelevance::try_from(n)
                .ok()
                .map(|v| v.as_str_name()),
        )
    };
    let allow = |n: i32| {
        e(
            n,
            pb::AllowAccessState::try_from(n)
                .ok()
                .map(|v| v.as_str_name()),
        )
    };
    let member = |n: i32| {
        e(
            n,
            pb::MembershipMatchingState::try_from(n)
                .ok()
                .map(|v| v.as_str_name()),
        )
    };
    let annotated = |m: &pb::allow_binding_explanation::AnnotatedAllowMembership| {
        object([
            ("membership", member(m.membership)),
            ("relevance", rel(m.relevance)),
        ])
    };
    let binding = |b: &pb::AllowBindingExplanation| {
        let memberships: serde_json::Map<String, Value> = b
            .memberships
            .iter()
            .map(|(k, v)| (k.clone(), annotated(v)))
            .collect();
        object([
            ("allowAccessState", allow(b.allow_access_state)),
            ("role", text(&b.role)),
            (
                "rolePermission",
                e(
                    b.role_permission,
                    pb::RolePermissionInclusionState::try_from(b.role_permission)
                        .ok()
                        .map(|v| v.as_str_name()),
                ),
            ),
            ("rolePermissionRelevance", rel(b.role_permission_relevance)),
            (
                "combinedMembership",
                b.combined_membership.as_ref().map(annotated),
            ),
            (
                "memberships",
                (!memberships.is_empty()).then_some(Value::Object(memberships)),
            ),
            ("relevance", rel(b.relevance)),
            ("condition", b.condition.as_ref().map(expr_json)),
        ])
    };
    let explained = |p: &pb::ExplainedAllowPolicy| {
        let bindings: Vec<Value> = p.binding_explanations.iter().map(binding).collect();
        object([
            ("allowAccessState", allow(p.allow_access_state)),
            ("fullResourceName", text(&p.full_resource_name)),
            (
                "bindingExplanations",
                (!bindings.is_empty()).then(|| json!(bindings)),
            ),
            ("relevance", rel(p.relevance)),
            ("policy", p.policy.as_ref().map(policy_json)),
        ])
    };
    let overall = r.overall_access_state;
    object([
        (
            "overallAccessState",
            e(
                overall,
                OverallAccessState::try_from(overall)
                    .ok()
                    .map(|v| v.as_str_name()),
            ),
        ),
        (
            "accessTuple",
            r.access_tuple.as_ref().map(|t| {
                object([
                    ("principal", text(&t.principal)),
                    ("fullResourceName", text(&t.full_resource_name)),
                    ("permission", text(&t.permission)),
                    ("permissionFqdn", text(&t.permission_fqdn)),
                ])
            }),
        ),
        (
            "allowPolicyExplanation",
            r.allow_policy_explanation.as_ref().map(|a| {
                let policies: Vec<Value> = a.explained_policies.iter().map(explained).collect();
                object([
                    ("allowAccessState", allow(a.allow_access_state)),
                    (
                        "explainedPolicies",
                        (!policies.is_empty()).then(|| json!(policies)),
                    ),
                    ("relevance", rel(a.relevance)),
                ])
            }),
        ),
        (
            "denyPolicyExplanation",
            r.deny_policy_explanation.as_ref().map(|d| {
                object([
                    (
                        "denyAccessState",
                        e(
                            d.deny_access_state,
                            pb::DenyAccessState::try_from(d.deny_access_state)
                                .ok()
                                .map(|v| v.as_str_name()),
                        ),
                    ),
                    ("relevance", rel(d.relevance)),
                    (
                        "permissionDeniable",
                        d.permission_deniable.then_some(json!(true)),
                    ),
                ])
            }),
        ),
    ])
}

/// `google.rpc.Code.FAILED_PRECONDITION`: what v1's `errors` carry to explain the answer.
const FAILED_PRECONDITION: i32 = 9;

/// The sentences v1 carries in `errors`: when access is not granted, a visible grant that does
/// not pass down to the resource asked about (an operator's most common surprise), and a
/// deployment that is not deployed.
fn v1_errors(t: &Troubleshot) -> Vec<crate::proto::google::rpc::Status> {
    let asked = t.resource.name();
    let mut errors = Vec::new();
    let granted = t.access == Access::Granted;
    for shown in t.policies.iter().filter(|_| !granted) {
        let Shown::Visible(p) = shown else { continue };
        if p.passes_down {
            continue;
        }
        for b in &p.bindings {
            let would_grant = b.role_permission == RolePermission::Included
                && b.condition.is_none()
                && b.matches();
            if would_grant {
                errors.push(crate::proto::google::rpc::Status {
                    code: FAILED_PRECONDITION,
                    message: format!(
                        "{role} on the {level} {on} grants {perm} to {who} there, but a grant on \
                         an {level} does not pass down to {asked}: grant it on the resource \
                         itself or on the project",
                        role = b.role,
                        level = p.level.as_str(),
                        on = p.resource,
                        perm = t.permission,
                        who = t.principal,
                    ),
                });
            }
        }
    }
    if t.not_deployed && t.permission == crate::iam::roles::INVOKE {
        errors.push(crate::proto::google::rpc::Status {
            code: FAILED_PRECONDITION,
            message: format!(
                "{asked} is not deployed: its requests are refused whatever its policies say"
            ),
        });
    }
    errors
}

fn relevance_v1(r: Relevance) -> i32 {
    match r {
        Relevance::Normal => pb1::HeuristicRelevance::Normal as i32,
        Relevance::High => pb1::HeuristicRelevance::High as i32,
    }
}

fn access_v1(granted: bool) -> i32 {
    if granted {
        pb1::AccessState::Granted as i32
    } else {
        pb1::AccessState::NotGranted as i32
    }
}

fn binding_to_v1(b: ExplainedBinding) -> pb1::BindingExplanation {
    use pb1::binding_explanation::{AnnotatedMembership, Membership, RolePermission as V1Role};
    pb1::BindingExplanation {
        access: access_v1(b.granted),
        role: b.role,
        role_permission: match b.role_permission {
            RolePermission::Included => V1Role::Included,
            RolePermission::NotIncluded
            | RolePermission::Disabled
            | RolePermission::UnknownRole => V1Role::NotIncluded,
        } as i32,
        role_permission_relevance: relevance_v1(b.role_relevance),
        memberships: b
            .members
            .into_iter()
            .map(|m| {
                let membership = if m.matched.is_some() {
                    Membership::Included
                } else {
                    Membership::NotIncluded
                };
                (
                    m.member,
                    AnnotatedMembership {
                        membership: membership as i32,
                        relevance: relevance_v1(m.relevance),
                    },
                )
            })
            .collect(),
        relevance: relevance_v1(b.relevance),
        condition: b.condition.map(expr_to_proto),
    }
}

/// The answer as `google.cloud.policytroubleshooter.v1.TroubleshootIamPolicyResponse`.
pub fn to_v1(t: Troubleshot) -> pb1::TroubleshootIamPolicyResponse {
    let errors = v1_errors(&t);
    let access = match t.access {
        Access::Granted => pb1::AccessState::Granted,
        Access::NotGranted => pb1::AccessState::NotGranted,
        Access::Unknown => pb1::AccessState::UnknownInfoDenied,
    };
    let explained_policies = t
        .policies
        .into_iter()
        .map(|shown| match shown {
            Shown::Hidden => pb1::ExplainedPolicy {
                access: pb1::AccessState::UnknownInfoDenied as i32,
                ..pb1::ExplainedPolicy::default()
            },
            Shown::Visible(p) => pb1::ExplainedPolicy {
                access: access_v1(p.granted),
                full_resource_name: Resource::parse(&p.resource)
                    .map(|r| full_name(&r))
                    .unwrap_or(p.resource),
                policy: Some(policy_to_pb(p.policy)),
                binding_explanations: p.bindings.into_iter().map(binding_to_v1).collect(),
                relevance: relevance_v1(p.relevance),
            },
        })
        .collect();
    pb1::TroubleshootIamPolicyResponse {
        access: access as i32,
        explained_policies,
        errors,
    }
}

/// The v1 answer in Google's JSON mapping: lowerCamelCase names, default values left out,
/// enums as names (or numbers when asked).
pub fn v1_json(r: &pb1::TroubleshootIamPolicyResponse, numbers: bool) -> Value {
    use pb1::binding_explanation::{Membership, RolePermission as V1Role};
    let e = |n: i32, name: Option<&'static str>| enum_json(n, name, numbers);
    let rel = |n: i32| {
        e(
            n,
            pb1::HeuristicRelevance::try_from(n)
                .ok()
                .map(|v| v.as_str_name()),
        )
    };
    let access = |n: i32| {
        e(
            n,
            pb1::AccessState::try_from(n).ok().map(|v| v.as_str_name()),
        )
    };
    let binding = |b: &pb1::BindingExplanation| {
        let memberships: serde_json::Map<String, Value> = b
            .memberships
            .iter()
            .map(|(k, m)| {
                let membership = e(
                    m.membership,
                    Membership::try_from(m.membership)
                        .ok()
                        .map(|v| v.as_str_name()),
                );
                (
                    k.clone(),
                    object([("membership", membership), ("relevance", rel(m.relevance))]),
                )
            })
            .collect();
        object([
            ("access", access(b.access)),
            ("role", text(&b.role)),
            (
                "rolePermission",
                e(
                    b.role_permission,
                    V1Role::try_from(b.role_permission)
                        .ok()
                        .map(|v| v.as_str_name()),
                ),
            ),
            ("rolePermissionRelevance", rel(b.role_permission_relevance)),
            (
                "memberships",
                (!memberships.is_empty()).then_some(Value::Object(memberships)),
            ),
            ("relevance", rel(b.relevance)),
            ("condition", b.condition.as_ref().map(expr_json)),
        ])
    };
    let explained = |p: &pb1::ExplainedPolicy| {
        let bindings: Vec<Value> = p.binding_explanations.iter().map(binding).collect();
        object([
            ("access", access(p.access)),
            ("fullResourceName", text(&p.full_resource_name)),
            ("policy", p.policy.as_ref().map(policy_json)),
            (
                "bindingExplanations",
                (!bindings.is_empty()).then(|| json!(bindings)),
            ),
            ("relevance", rel(p.relevance)),
        ])
    };
    let policies: Vec<Value> = r.explained_policies.iter().map(explained).collect();
    let errors: Vec<Value> = r
        .errors
        .iter()
        .map(|s| {
            object([
                ("code", (s.code != 0).then(|| json!(s.code))),
                ("message", text(&s.message)),
            ])
        })
        .collect();
    object([
        ("access", access(r.access)),
        (
            "explainedPolicies",
            (!policies.is_empty()).then(|| json!(policies)),
        ),
        ("errors", (!errors.is_empty()).then(|| json!(errors))),
    ])
}

/// A `google.iam.v1.Policy` in Google's JSON mapping.
/// A binding's condition as both troubleshooter versions carry it (`google.type.Expr`).
fn expr_to_proto(c: crate::iam::policy::Expr) -> crate::proto::google::r#type::Expr {
    crate::proto::google::r#type::Expr {
        expression: c.expression,
        title: c.title.unwrap_or_default(),
        description: c.description.unwrap_or_default(),
        location: c.location.unwrap_or_default(),
    }
}

/// A `google.type.Expr` in the JSON answers of both versions.
fn expr_json(c: &crate::proto::google::r#type::Expr) -> Value {
    object([
        ("expression", text(&c.expression)),
        ("title", text(&c.title)),
        ("description", text(&c.description)),
        ("location", text(&c.location)),
    ])
}

fn policy_json(p: &crate::proto::google::iam::v1::Policy) -> Value {
    let bindings: Vec<Value> = p
        .bindings
        .iter()
        .map(|b| object([("role", text(&b.role)), ("members", Some(json!(b.members)))]))
        .collect();
    object([
        ("version", (p.version != 0).then(|| json!(p.version))),
        (
            "etag",
            (!p.etag.is_empty()).then(|| {
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &p.etag
                ))
            }),
        ),
        ("bindings", (!bindings.is_empty()).then(|| json!(bindings))),
    ])
}

/// The v1 service, ready to be routed.
pub fn server_v1(state: Arc<AdminState>) -> IamCheckerServer<IamCheckerService> {
    IamCheckerServer::new(IamCheckerService { state })
}

/// Implements `google.cloud.policytroubleshooter.v1.IamChecker`.
pub struct IamCheckerService {
    state: Arc<AdminState>,
}

#[tonic::async_trait]
impl IamChecker for IamCheckerService {
    async fn troubleshoot_iam_policy(
        &self,
        request: Request<pb1::TroubleshootIamPolicyRequest>,
    ) -> Result<tonic::Response<pb1::TroubleshootIamPolicyResponse>, Status> {
        let headers = request.metadata().clone().into_headers();
        let caller = self.state.caller(&headers).await?;
        let tuple = request.into_inner().access_tuple.unwrap_or_default();
        let answer = self
            .state
            .troubleshoot(
                &caller,
                &tuple.principal,
                &tuple.full_resource_name,
                &tuple.permission,
            )
            .await?;
        Ok(tonic::Response::new(to_v1(answer)))
    }
}

/// A JSON object of the fields that are set.
fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    let map: HashMap<&str, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    json!(map)
}

/// A string field, left out when empty.
fn text(s: &str) -> Option<Value> {
    (!s.is_empty()).then(|| json!(s))
}

/// `(POOL, SUBJECT)` of a well-formed `principal://iam.googleapis.com/POOL/subject/SUBJECT`.
fn pool_identity(principal: &str) -> Option<(&str, &str)> {
    match Member::parse(principal).ok()? {
        Member::Principal(_) => {
            let rest = principal.strip_prefix("principal://iam.googleapis.com/")?;
            // A pool's name holds no `/subject/`: the first one ends it.
            rest.split_once("/subject/")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_relative_resource_names_parse() {
        let orders = "organizations/o/environments/prod/deployments/orders";
        for name in [
            format!("//apigee.googleapis.com/{orders}"),
            orders.to_owned(),
        ] {
            assert_eq!(
                parse_resource(&name).map(|r| r.name()),
                Ok(orders.to_owned())
            );
        }
        let p = parse_resource("//cloudresourcemanager.googleapis.com/projects/p").unwrap();
        assert_eq!(
            full_name(&p),
            "//cloudresourcemanager.googleapis.com/projects/p"
        );
        for bad in [
            "//apigee.googleapis.com/projects/p",
            "//cloudresourcemanager.googleapis.com/organizations/o/environments/e",
            "//compute.googleapis.com/projects/p",
            "",
        ] {
            assert!(parse_resource(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn permission_forms_convert() {
        assert_eq!(
            v1_permission("apigee.googleapis.com/deployments.invoke"),
            "apigee.deployments.invoke"
        );
        assert_eq!(
            v1_permission("apigee.deployments.invoke"),
            "apigee.deployments.invoke"
        );
        assert_eq!(
            v2_permission("apigee.deployments.invoke"),
            "apigee.googleapis.com/deployments.invoke"
        );
    }

    #[test]
    fn rest_query_accepts_the_client_libraries_alt() {
        assert_eq!(enums_as_numbers(None), Ok(false));
        assert_eq!(
            enums_as_numbers(Some("%24alt=json%3Benum-encoding%3Dint".into())),
            Ok(true)
        );
        assert_eq!(enums_as_numbers(Some("$alt=json".into())), Ok(false));
        assert!(enums_as_numbers(Some("fields=x".into())).is_err());
        assert!(enums_as_numbers(Some("$alt=proto".into())).is_err());
    }
}
