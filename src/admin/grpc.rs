//! `google.iam.v1.IAMPolicy` over gRPC: the same operations as the REST API (on
//! [`super::AdminState`]), with the caller's token in the `authorization` metadata and errors
//! mapped to status codes in [`super::error`]. Messages are converted to and from the
//! [`crate::iam::policy`] model here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::iam::eval::Resource;
use crate::iam::policy::{Binding, Etag, Expr, Policy};
use crate::proto::google::iam::v1 as pb;
use crate::proto::google::r#type as pb_type;
use pb::iam_policy_server::{IamPolicy, IamPolicyServer};

/// The service, ready to be routed.
pub fn server(state: Arc<AdminState>) -> IamPolicyServer<IamPolicyService> {
    IamPolicyServer::new(IamPolicyService { state })
}

/// Implements `google.iam.v1.IAMPolicy` over the admin state.
pub struct IamPolicyService {
    state: Arc<AdminState>,
}

impl IamPolicyService {
    async fn caller<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, ApiError> {
        let headers = request.metadata().clone().into_headers();
        self.state.caller(&headers).await
    }
}

fn resource(name: &str) -> Result<Resource, ApiError> {
    Resource::parse(name).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "invalid resource {name:?}: expected projects/P, organizations/O/environments/E or \
             organizations/O/environments/E/deployments/API"
        ))
    })
}

/// A wire policy in the model's form (audit configs are kept only to be refused by validation).
pub fn policy_from_pb(p: pb::Policy) -> Policy {
    Policy {
        version: p.version,
        etag: (!p.etag.is_empty()).then_some(Etag(p.etag)),
        bindings: p
            .bindings
            .into_iter()
            .map(|b| Binding {
                role: b.role,
                members: b.members,
                condition: b.condition.map(|c| Expr {
                    expression: c.expression,
                    title: Some(c.title).filter(|s| !s.is_empty()),
                    description: Some(c.description).filter(|s| !s.is_empty()),
                    location: Some(c.location).filter(|s| !s.is_empty()),
                }),
            })
            .collect(),
        audit_configs: p
            .audit_configs
            .into_iter()
            .map(|a| serde_json::json!({ "service": a.service }))
            .collect(),
    }
}

/// The model's policy on the wire.
pub fn policy_to_pb(p: Policy) -> pb::Policy {
    pb::Policy {
        version: p.version,
        etag: p.etag.map(|e| e.0).unwrap_or_default(),
        bindings: p
            .bindings
            .into_iter()
            .map(|b| pb::Binding {
                role: b.role,
                members: b.members,
                condition: b.condition.map(|c| pb_type::Expr {
                    expression: c.expression,
                    title: c.title.unwrap_or_default(),
                    description: c.description.unwrap_or_default(),
                    location: c.location.unwrap_or_default(),
                }),
            })
            .collect(),
        audit_configs: Vec::new(),
    }
}

#[tonic::async_trait]
impl IamPolicy for IamPolicyService {
    async fn set_iam_policy(
        &self,
        request: Request<pb::SetIamPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let resource = resource(&request.resource)?;
        let mask = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let stored = self
            .state
            .set_iam_policy(
                &caller,
                &resource,
                request.policy.map(policy_from_pb),
                &mask,
            )
            .await?;
        Ok(Response::new(policy_to_pb(stored)))
    }

    async fn get_iam_policy(
        &self,
        request: Request<pb::GetIamPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let resource = resource(&request.resource)?;
        let version = request.options.map_or(0, |o| o.requested_policy_version);
        let policy = self
            .state
            .get_iam_policy(&caller, &resource, version)
            .await?;
        Ok(Response::new(policy_to_pb(policy)))
    }

    async fn test_iam_permissions(
        &self,
        request: Request<pb::TestIamPermissionsRequest>,
    ) -> Result<Response<pb::TestIamPermissionsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let resource = resource(&request.resource)?;
        let permissions = self
            .state
            .test_iam_permissions(&caller, &resource, &request.permissions)
            .await?;
        Ok(Response::new(pb::TestIamPermissionsResponse {
            permissions,
        }))
    }
}
