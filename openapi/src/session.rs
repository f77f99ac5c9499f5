//! Session bodies: the caller's sessions, files in and out.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{Runtime, SessionId};

/// One of the caller's sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub id: String,
    pub runtime: Runtime,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub last_accessed_at: String,
    /// A call is running in it (or waiting for it).
    pub is_active: bool,
    /// Short id of its container, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// `GET /sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"sessions": [{"id": "agent-7", "runtime": "python",
    "createdAt": "2026-11-29T10:00:00.000Z", "lastAccessedAt": "2026-11-29T10:05:00.000Z",
    "isActive": false, "containerId": "3f2a9c1b7d4e"}]}))]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

/// `POST /file`: write a file into a session's `/sandbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"sessionId": "agent-7", "path": "/sandbox/data.csv", "content": "YSxiCjEsMgo="}))]
pub struct FileWrite {
    #[schema(inline)]
    pub session_id: SessionId,
    /// Inside `/sandbox` (absolute, or relative to it); parent folders are created.
    #[schema(pattern = "^[^\\u0000]*\\S[^\\u0000]*$")]
    pub path: String,
    /// The bytes, base64-encoded (standard alphabet, padded).
    #[schema(pattern = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    pub content: String,
}

/// `GET /file` query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    #[param(inline)]
    pub session_id: SessionId,
    /// Inside `/sandbox`.
    #[param(pattern = "^[^\\u0000]*\\S[^\\u0000]*$")]
    pub path: String,
}

/// `GET /file` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileContent {
    /// The bytes, base64-encoded.
    pub content: String,
}

/// A plain acknowledgement (`POST /file`, `DELETE /session/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OkResponse {
    pub ok: bool,
}

/// `GET /session/{id}` (and the answer to `PATCH /session/{id}`): one session's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "agent-7", "runtime": "python",
    "createdAt": "2026-11-29T10:00:00.000Z", "lastAccessedAt": "2026-11-29T10:05:00.000Z",
    "isActive": false, "containerId": "3f2a9c1b7d4e", "paused": true, "idleTimeoutMs": 3600000,
    "expiresAt": "2026-11-29T11:05:00.000Z", "sandboxBytes": 40960}))]
pub struct SessionDetail {
    pub id: String,
    pub runtime: Runtime,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub last_accessed_at: String,
    /// A call is running in it (or waiting for it).
    pub is_active: bool,
    /// Short id of its container, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Frozen while idle (no CPU); the next call thaws it.
    pub paused: bool,
    /// It ends once idle this long (milliseconds).
    pub idle_timeout_ms: u64,
    /// RFC 3339: when it ends if no call comes first (the idle deadline).
    pub expires_at: String,
    /// Bytes in use in its `/sandbox` (as of its freezing, when frozen); absent while a call runs
    /// or before it has a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_bytes: Option<u64>,
}

/// `PATCH /session/{id}`: change a session's lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"idleTimeoutMs": 14400000}))]
pub struct SessionUpdate {
    /// End the session once idle this long (milliseconds; at least 1000, at most the server's
    /// `maxSessionIdleTimeoutMs`), counted from its last use.
    #[schema(minimum = 1000)]
    pub idle_timeout_ms: u64,
}

/// `POST /session/{id}/archive` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArchiveQuery {
    /// Create the session with this runtime when it does not exist (without it, an unknown
    /// session is 404).
    #[serde(default)]
    pub runtime: Option<Runtime>,
}

/// `POST /session/{id}/archive` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveImported {
    pub ok: bool,
    /// The session was created for this archive.
    pub session_created: bool,
}
