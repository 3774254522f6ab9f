//! Admin API errors in Google's JSON shape (`{"error":{"code","message","status"}}`), mapped to
//! HTTP status in this one place.

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
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Aborted => ApiError::Aborted(e.to_string()),
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
