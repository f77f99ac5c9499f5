//! The config blocks of the database-backed features: `auth`, `audit` and `tenantLimits`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Keys and tenants in a database (`--auth-db` turns it on too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Keep keys, tenants and the audit trail in a database.
    pub enabled: bool,
    /// A SQLite file path (default `~/.isol8/auth.db`), or `postgres://user:pass@host/db` for a
    /// PostgreSQL server that replicas share.
    pub connection_string: Option<String>,
    /// Lifetime of a new key when the request gives none (milliseconds).
    pub default_ttl_ms: u64,
    /// The longest lifetime a key may be given (milliseconds).
    pub max_ttl_ms: u64,
    /// Revoked and expired keys stay listed this long (milliseconds), then are deleted.
    pub keep_revoked_ms: u64,
    /// How often expired keys and old audit rows are deleted (milliseconds).
    pub cleanup_interval_ms: u64,
    /// Database connections this server holds at most.
    pub max_connections: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            connection_string: None,
            default_ttl_ms: 86_400_000,
            max_ttl_ms: 365 * 86_400_000,
            keep_revoked_ms: 7 * 86_400_000,
            cleanup_interval_ms: 3_600_000,
            max_connections: 8,
        }
    }
}

/// The audit trail: one row per execution, in the auth database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record executions (when the auth database is on).
    pub enabled: bool,
    /// Also keep the code run (never stdin, files or secrets). Off by default: a hash is kept.
    pub include_code: bool,
    /// Rows older than this many days are deleted (0 keeps them forever).
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            include_code: false,
            retention_days: 30,
        }
    }
}

/// What one tenant may use at once (the master key is not limited). A key can lower or raise
/// these for its own calls (`limits` on `POST /auth/keys`); the server-wide limits still apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TenantLimitsConfig {
    /// Executions one tenant runs at once (default: half of `maxConcurrent`, at least 1).
    pub max_concurrent: Option<usize>,
    /// Requests of one tenant waiting for a slot (default: half of `maxQueue`).
    pub max_queue: Option<usize>,
    /// Sessions one tenant holds (default: `maxSessionsPerKey`).
    pub max_sessions: Option<usize>,
}

impl AuthConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.default_ttl_ms == 0 || self.default_ttl_ms > self.max_ttl_ms {
            return Err("auth.defaultTtlMs must be between 1 and auth.maxTtlMs".into());
        }
        if self.cleanup_interval_ms == 0 {
            return Err("auth.cleanupIntervalMs must be greater than zero".into());
        }
        if self.max_connections == 0 {
            return Err("auth.maxConnections must be at least 1".into());
        }
        Ok(())
    }
}

impl TenantLimitsConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == Some(0) {
            return Err("tenantLimits.maxConcurrent must be at least 1".into());
        }
        Ok(())
    }
}
