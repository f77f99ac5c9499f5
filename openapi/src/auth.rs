//! Key management and audit bodies: `/auth/keys`, `/auth/login`, `/audit` (master key only).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Per-key overrides of the server's `tenantLimits`; a field left out takes the server's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyLimits {
    /// Executions the key's tenant may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_concurrent: Option<u32>,
    /// Requests of the tenant that may wait for a slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    /// Sessions the tenant may hold at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
}

/// `POST /auth/keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "ci", "tenantId": "team-a", "ttlMs": 86400000}))]
pub struct CreateKeyRequest {
    /// A name for people (1 to 200 characters).
    pub name: String,
    /// The tenant the key acts for (default `default`): sessions, limits and audit rows belong to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub tenant_id: Option<String>,
    /// Lifetime in milliseconds (default `auth.defaultTtlMs`, at most `auth.maxTtlMs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub ttl_ms: Option<u64>,
    /// Overrides of the server's per-tenant limits for calls made with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<KeyLimits>,
}

/// `POST /auth/keys` answer: the only time the key itself is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    pub id: String,
    /// `isol8_` and 64 hex digits. Stored only as its SHA-256; it cannot be shown again.
    pub key: String,
    pub name: String,
    /// The first 10 characters and `...`, to recognise the key in a list.
    pub key_prefix: String,
    pub tenant_id: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// One key as `GET /auth/keys` shows it (never the key or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub key_prefix: String,
    pub tenant_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339, to within a minute; null when never used.
    pub last_used_at: Option<String>,
    pub revoked: bool,
    /// The key's own limits (the server's `tenantLimits` fill in the rest).
    #[serde(default)]
    pub limits: KeyLimits,
}

/// `GET /auth/keys` answer, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// `GET /auth/keys` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// Only this tenant's keys.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// `DELETE /auth/keys/{id}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokedKey {
    pub ok: bool,
    pub id: String,
}

/// `POST /auth/login` body (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "cli-login-2026-11-29T10:00:00Z", "ttlMs": 86400000}))]
pub struct LoginRequest {
    /// Default `login-<time>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub ttl_ms: Option<u64>,
}

/// `POST /auth/login` answer: a fresh key, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
    pub key_id: String,
}

/// `GET /audit` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this tenant's runs (`master` for the master key's).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Only runs at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// At most this many rows, newest first (default 100, at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One execution, as the audit trail keeps it: who, what (a hash of the code), how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    /// When the run finished, RFC 3339.
    pub time: String,
    /// The database key used; null for the master key and keys-file keys.
    pub key_id: Option<String>,
    /// The caller's tenant; `master` for the master key.
    pub tenant_id: String,
    pub runtime: String,
    pub status: String,
    pub exit_code: i64,
    pub duration_ms: i64,
    /// SHA-256 (hex) of the code (or command) run.
    pub code_sha256: String,
    /// Bytes of code, stdin and files sent.
    pub input_bytes: i64,
    /// Bytes of stdout and stderr returned.
    pub output_bytes: i64,
    /// The code itself, only when the server sets `audit.includeCode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `GET /audit` answer, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}
