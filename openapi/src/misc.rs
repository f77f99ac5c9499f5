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
    pub code: String,
    /// The request id, also sent as the `x-request-id` header.
    pub request_id: String,
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
}
