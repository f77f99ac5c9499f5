//! Small bodies: errors, health and cleanup.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The one error body of every failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"error": "Missing Authorization header", "code": "unauthorized", "requestId": "8c1c..."}))]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// A stable machine-readable code, e.g. `bad_request`, `policy_violation`, `docker_unavailable`.
    pub code: ErrorCode,
    /// The request id, also sent as the `x-request-id` header.
    pub request_id: String,
}

/// The `code` of an error body: stable, machine-readable, one per kind of failure. The wire strings
/// are the snake_case names; they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or invalid input; the message names the field.
    BadRequest,
    /// No key.
    Unauthorized,
    /// Wrong key, or a route for another key (the master key).
    Forbidden,
    /// Asks for more than the server's policy allows; the message names the limit.
    PolicyViolation,
    NotFound,
    Conflict,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The request (headers or body) did not arrive in time.
    RequestTimeout,
    /// The server (or the key) is at its concurrency, queue or session cap.
    OverCapacity,
    /// The tenant is at one of its `tenantLimits`.
    TenantLimit,
    /// The key keeps as many `persist` containers as it may.
    PersistLimit,
    /// The bodies being received at once are at `maxBodyBytesInFlight`.
    BodyBudgetExhausted,
    /// The engine cannot do what was asked here (a feature this host lacks).
    Unsupported,
    /// The server cannot serve now (a generic 503).
    Unavailable,
    DockerUnavailable,
    /// The Docker engine refused or failed a call.
    DockerError,
    /// A runtime image is not built (`isol8 setup`).
    ImageMissing,
    ImageBuild,
    /// The sandbox could not be set up or failed.
    SandboxFailed,
    /// The filtered network (its Docker network or proxy) could not be set up.
    NetworkSetupFailed,
    SandboxTimeout,
    ShuttingDown,
    /// `GET /ready`: the engine could not be queried.
    NotReady,
    /// The key database does not answer.
    AuthUnavailable,
    /// An MCP call cancelled by its client.
    Cancelled,
    /// The server's own failure; details are in its log under the request id.
    Internal,
    /// Any other error status (and, read by a client, a code it does not know).
    #[serde(other)]
    Error,
}

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PolicyViolation => "policy_violation",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::OverCapacity => "over_capacity",
            ErrorCode::TenantLimit => "tenant_limit",
            ErrorCode::PersistLimit => "persist_limit",
            ErrorCode::BodyBudgetExhausted => "body_budget_exhausted",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DockerUnavailable => "docker_unavailable",
            ErrorCode::DockerError => "docker_error",
            ErrorCode::ImageMissing => "image_missing",
            ErrorCode::ImageBuild => "image_build",
            ErrorCode::SandboxFailed => "sandbox_failed",
            ErrorCode::NetworkSetupFailed => "network_setup_failed",
            ErrorCode::SandboxTimeout => "sandbox_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::AuthUnavailable => "auth_unavailable",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
            ErrorCode::Error => "error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok", "version": "0.1.0"}))]
pub struct HealthResponse {
    pub status: String,
    pub version: String,
}

/// `GET /ready` when ready: the runtimes whose images are built. Nothing else (no Docker address,
/// no error detail): it answers without a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ready", "version": "0.1.0", "runtimes": ["python", "node", "bun", "deno", "bash"]}))]
pub struct ReadyResponse {
    pub status: String,
    pub version: String,
    pub runtimes: Vec<crate::Runtime>,
}

/// `POST /cleanup` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CleanupRequest {
    /// Also remove isol8's images (default false; master key only).
    #[serde(default)]
    pub images: bool,
}

/// Counts of one kind of removed object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupCounts {
    pub removed: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

/// `POST /cleanup` answer. `ok` is true when everything asked for is gone (a container someone else
/// was already removing counts as removed, not failed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupResponse {
    pub ok: bool,
    /// Sessions ended (each with its container).
    pub sessions: CleanupCounts,
    /// Other containers removed: warm ones, and runs still in flight.
    pub containers: CleanupCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<CleanupCounts>,
    /// Unused agent volumes removed (the volume every sandbox mounts its agent from), with the
    /// images. A volume in use is left, and counts as neither removed nor failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<CleanupCounts>,
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    /// `as_str` (logs, MCP answers) and serde (the error body) write the same string.
    #[test]
    fn every_code_serializes_as_its_wire_string() {
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::PolicyViolation,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::MethodNotAllowed,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::RequestTimeout,
            ErrorCode::OverCapacity,
            ErrorCode::TenantLimit,
            ErrorCode::PersistLimit,
            ErrorCode::BodyBudgetExhausted,
            ErrorCode::Unsupported,
            ErrorCode::Unavailable,
            ErrorCode::DockerUnavailable,
            ErrorCode::DockerError,
            ErrorCode::ImageMissing,
            ErrorCode::ImageBuild,
            ErrorCode::SandboxFailed,
            ErrorCode::NetworkSetupFailed,
            ErrorCode::SandboxTimeout,
            ErrorCode::ShuttingDown,
            ErrorCode::NotReady,
            ErrorCode::AuthUnavailable,
            ErrorCode::Cancelled,
            ErrorCode::Internal,
            ErrorCode::Error,
        ];
        for code in all {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, code.as_str(), "{code:?}");
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), code);
        }
        let unknown: ErrorCode = serde_json::from_str("\"some_new_code\"").unwrap();
        assert_eq!(unknown, ErrorCode::Error);
    }
}
