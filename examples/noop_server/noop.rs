//! The no-op Check service: the limit of the machine and of the gRPC stack verifyiam is built on
//! (tonic + envoy-types). It answers every Check OK with an empty `OkHttpResponse` and serves
//! `grpc.health.v1`, on the same kind of `tonic::transport::Server` that verifyiam runs.

use std::future::Future;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Answers every Check OK, doing nothing else.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopCheck;

#[tonic::async_trait]
impl Authorization for NoopCheck {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

/// Serves the no-op Check service and `grpc.health.v1` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AuthorizationServer<NoopCheck>>().await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(NoopCheck))
        // Nagle off, as verifyiam does, so the comparison is like for like.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
