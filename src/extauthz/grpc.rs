//! `envoy.service.auth.v3.Authorization` on tonic's gRPC server machinery, with a codec of its
//! own: a Check's bytes are kept as they arrived and read in place by [`super::wire`], and an
//! [`Answer`] writes its own protobuf bytes, so no `CheckRequest` (with Envoy's whole header
//! map) is ever built, nor, for an allow, a `CheckResponse`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use futures_util::future::BoxFuture;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::{Answer, CheckService};

/// The gRPC method's path.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The ext_authz gRPC service: `Check`, answered by a [`CheckService`].
#[derive(Clone)]
pub struct AuthorizationServer {
    service: Arc<CheckService>,
}

impl AuthorizationServer {
    /// Serves `service`.
    pub fn new(service: CheckService) -> AuthorizationServer {
        AuthorizationServer {
            service: Arc::new(service),
        }
    }
}

impl NamedService for AuthorizationServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<B> tower::Service<http::Request<B>> for AuthorizationServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = Check(self.service.clone());
        Box::pin(async move { Ok(tonic::server::Grpc::new(Raw).unary(method, request).await) })
    }
}

/// The `Check` method over raw bytes.
struct Check(Arc<CheckService>);

impl UnaryService<Bytes> for Check {
    type Response = Answer;
    type Future = BoxFuture<'static, Result<Response<Answer>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            service
                .check_wire(request.get_ref())
                .await
                .map(Response::new)
        })
    }
}

/// Requests are kept as their bytes, to be read in place; answers write themselves.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Answer;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Answer;
    type Error = Status;

    fn encode(&mut self, item: Answer, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
