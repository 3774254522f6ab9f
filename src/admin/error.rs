//! Admin API errors in Google's JSON shape (`{"error":{"code","message","status"}}`), mapped to
//! HTTP status (REST) and to gRPC status codes (google.iam.v1 over gRPC) in this one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// An admin API failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// 401 `UNAUTHENTICATED`; the `error` of the `WWW-Authenticate` challenge rides along.
    #[error("{message}")]
    Unauthenticated {
        /// Shown to the caller.
        message: String,
        /// `invalid_request` or `invalid_token`.
        challenge: &'static str,
    },
    /// 403 `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// 404 `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `ABORTED`.
    #[error("{0}")]
    Aborted(String),
    /// 409 `ALREADY_EXISTS`.
    #[error("{0}")]
    AlreadyExists(String),
    /// 400 `FAILED_PRECONDITION`: the request is valid but the system's state refuses it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// 503 `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// 500 `INTERNAL`.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            ApiError::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            ApiError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Aborted(_) => (StatusCode::CONFLICT, "ABORTED"),
            ApiError::AlreadyExists(_) => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            ApiError::FailedPrecondition(_) => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl From<ApiError> for tonic::Status {
    /// The gRPC form: the same code names as the JSON `status`, the same message.
    fn from(e: ApiError) -> tonic::Status {
        use tonic::Code;
        let code = match &e {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::Unauthenticated { .. } => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Aborted(_) => Code::Aborted,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Aborted => ApiError::Aborted(e.to_string()),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "policy store unavailable");
                ApiError::Unavailable(
                    "the policy store is unavailable; the change was not applied, retry later"
                        .to_owned(),
                )
            }
            StoreError::Busy(waited) => {
                tracing::warn!(error = %e, "policy write gave up waiting for the writer");
                ApiError::Unavailable(format!(
                    "the policy store is busy: the write waited {waited:?} for the writes ahead \
                     of it; the change was not applied, retry later"
                ))
            }
            StoreError::OutcomeUnknown(_) => {
                tracing::warn!(error = %e, "policy write outcome unknown");
                ApiError::Unavailable(e.to_string())
            }
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::Internal("the policy store failed; the change was not applied".to_owned())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, name) = self.parts();
        let body = crate::extauthz::response::error_body(status.as_u16(), name, &self.to_string());
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
            body,
        )
            .into_response();
        if let ApiError::Unauthenticated { challenge, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Bearer realm=\"verifyiam\", error=\"{challenge}\""
            )) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        response
    }
}
