//! The one HTTP error model: every failure becomes `{"error", "code", "requestId"}`.
//!
//! Who is at fault decides what the client reads. A client's fault (bad input, over policy, a
//! missing session) keeps its precise message. The server's own (Docker's answers, I/O, a sandbox
//! that broke, a filtered network it could not set up) keeps its detail in the log, under the
//! request id, and the client gets a short message that names that id.

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
    /// What the client reads.
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// A server fault's detail: logged with the request id, never sent.
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            detail: None,
        }
    }

    /// The server's own failure: the client reads `message` and the request id, the log `detail`.
    pub fn server_fault(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            detail: Some(detail.into()),
            ..Self::new(status, code, message)
        }
    }

    /// What the client reads for the request `request_id` (the error body, a WebSocket's or an
    /// MCP call's error). A server fault is logged here, once, with its detail.
    pub fn client_message(&self, request_id: &str) -> String {
        if self.detail.is_some() || self.status.is_server_error() {
            tracing::warn!(
                request_id,
                status = self.status.as_u16(),
                code = self.code.as_str(),
                error = %self.detail.as_deref().unwrap_or(&self.message),
                "request failed"
            );
        }
        match &self.detail {
            Some(_) => format!(
                "{} (the server's log has the details under request id {request_id})",
                self.message
            ),
            None => self.message.clone(),
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

    /// The server's own failure; `detail` is logged, the client gets a generic message.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::server_fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
            detail,
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
        use StatusCode as S;
        let fault = |status, code, message: &str| {
            ApiError::server_fault(status, code, message, err.to_string())
        };
        // Exhaustive on purpose: a new engine error must get a deliberate status, and a deliberate
        // answer to whether its message may reach the client.
        match &err {
            // The client's fault: its precise message.
            EngineError::InvalidRequest(m) => ApiError::bad_request(m.clone()),
            EngineError::NotFound(m) => ApiError::new(S::NOT_FOUND, ErrorCode::NotFound, m),
            EngineError::NotAllowed(m) => ApiError::policy(m.clone()),
            EngineError::Conflict(m) => ApiError::new(S::CONFLICT, ErrorCode::Conflict, m),
            EngineError::Unsupported(m) => ApiError::new(S::BAD_REQUEST, ErrorCode::Unsupported, m),
            // Nobody's fault in particular, and nothing internal in the message: said as it is.
            EngineError::ImageMissing { .. } => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                ErrorCode::ImageMissing,
                err.to_string(),
            ),
            EngineError::ShuttingDown => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                err.to_string(),
            ),
            EngineError::Timeout { .. } => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                ErrorCode::SandboxTimeout,
                err.to_string(),
            ),
            // The server's fault: the detail goes to the log.
            EngineError::NetworkSetup(_) => fault(
                S::SERVICE_UNAVAILABLE,
                ErrorCode::NetworkSetupFailed,
                "filtered networking could not be set up, so the run is refused",
            ),
            EngineError::DockerUnavailable { .. } => fault(
                S::SERVICE_UNAVAILABLE,
                ErrorCode::DockerUnavailable,
                "the Docker engine does not answer",
            ),
            EngineError::Docker { .. } if err.is_docker_unavailable() => fault(
                S::SERVICE_UNAVAILABLE,
                ErrorCode::DockerUnavailable,
                "the Docker engine does not answer",
            ),
            EngineError::Docker { .. } => fault(
                S::BAD_GATEWAY,
                ErrorCode::DockerError,
                "the Docker engine failed a call",
            ),
            EngineError::ImageBuild { .. } => fault(
                S::INTERNAL_SERVER_ERROR,
                ErrorCode::ImageBuild,
                "an image build failed",
            ),
            EngineError::Sandbox { .. } => fault(
                S::INTERNAL_SERVER_ERROR,
                ErrorCode::SandboxFailed,
                "the sandbox failed",
            ),
            EngineError::Io { .. } => fault(
                S::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            ),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filtered_network_the_server_cannot_set_up_is_its_fault() {
        let err = ApiError::from(EngineError::NetworkSetup(
            "could not create the run's network for filtered networking: 172.30.0.0/16 overlaps"
                .into(),
        ));
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code, ErrorCode::NetworkSetupFailed);
        let said = err.client_message("req-1");
        assert!(
            said.contains("filtered networking") && said.contains("req-1"),
            "{said}"
        );
        assert!(!said.contains("172.30"), "{said}");
    }

    #[test]
    fn internal_detail_is_logged_not_sent_and_client_faults_keep_their_words() {
        let io = ApiError::from(EngineError::Io {
            action: "read /var/lib/isol8/secret-path".into(),
            source: std::io::Error::other("disk on fire"),
        });
        assert_eq!(io.status, StatusCode::INTERNAL_SERVER_ERROR);
        let said = io.client_message("req-2");
        assert!(
            !said.contains("secret-path") && !said.contains("disk"),
            "{said}"
        );
        assert!(said.contains("req-2"), "{said}");
        let sandbox = ApiError::from(EngineError::Sandbox {
            container: "3f2a9c1b7d4e".into(),
            message: "agent wrote garbage".into(),
        });
        assert!(!sandbox.client_message("r").contains("garbage"));

        let bad = ApiError::from(EngineError::InvalidRequest(
            "memoryLimit \"lots\" is not a size".into(),
        ));
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            bad.client_message("r"),
            "memoryLimit \"lots\" is not a size"
        );
    }
}
