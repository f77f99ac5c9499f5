//! The one HTTP error model: every failure becomes `{"error", "code", "requestId"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use isol8_api::ErrorCode;
use isol8_docker::Error as EngineError;

/// An error on its way to the client. The body is written by the `error_envelope` middleware, which
/// knows the request id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn policy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::PolicyViolation, message)
    }

    /// The server's own failure; the message is logged, the client gets a generic one.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }

    pub fn busy(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::OverCapacity,
                message,
            )
        }
    }

    /// A tenant is at one of its `tenantLimits` (the message names which).
    pub fn tenant_limit(message: impl Into<String>) -> Self {
        ApiError {
            retry_after_secs: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TenantLimit,
                message,
            )
        }
    }

    /// The code used when a response has an error status but came from outside our handlers
    /// (unknown route, wrong method, body too large, timeouts).
    pub fn code_for_status(status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::BAD_REQUEST => ErrorCode::BadRequest,
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
            StatusCode::FORBIDDEN => ErrorCode::Forbidden,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::CONFLICT => ErrorCode::Conflict,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
            StatusCode::TOO_MANY_REQUESTS => ErrorCode::OverCapacity,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
            _ if status.is_server_error() => ErrorCode::Internal,
            _ => ErrorCode::Error,
        }
    }
}

impl From<isol8_api::InvalidSessionId> for ApiError {
    fn from(err: isol8_api::InvalidSessionId) -> Self {
        ApiError::bad_request(err.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let message = err.to_string();
        // Exhaustive on purpose: a new engine error must get a deliberate status.
        let (status, code) = match &err {
            EngineError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            EngineError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            EngineError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            EngineError::Unsupported(_) => (StatusCode::BAD_REQUEST, ErrorCode::Unsupported),
            EngineError::DockerUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::DockerUnavailable,
            ),
            EngineError::Docker { .. } if err.is_docker_unavailable() => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::DockerUnavailable,
            ),
            EngineError::Docker { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::DockerError),
            EngineError::ImageMissing { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ImageMissing)
            }
            EngineError::ImageBuild { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::ImageBuild)
            }
            EngineError::Sandbox { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::SandboxFailed)
            }
            EngineError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
            EngineError::Timeout { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::SandboxTimeout)
            }
            EngineError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response.extensions_mut().insert(self);
        response
    }
}
