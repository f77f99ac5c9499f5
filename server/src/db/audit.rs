//! The audit trail: one row per execution (who, when, a hash of the code, sizes, how it ended),
//! written where executions finish and read by `GET /audit`. Never stdin, files, env or secrets;
//! the code itself only with `audit.includeCode`.

use chrono::DateTime;
use isol8_api::{AuditEntry, AuditQuery, ExecuteBody, ExecutionResult};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::keys::rfc3339;
use super::store::{now_ms, Database, DbError};
use crate::auth::Caller;
use crate::state::AppState;

/// The tenant name audit rows give the master key's runs.
const MASTER_TENANT: &str = "master";

/// What an execution's audit row needs from its request, taken before the run starts (so the
/// request itself need not be kept while it runs). Does nothing when there is no audit trail.
#[derive(Debug)]
pub(crate) struct AuditTicket(Option<Box<Pending>>);

#[derive(Debug)]
struct Pending {
    db: Database,
    key_id: Option<String>,
    tenant: String,
    code_sha256: String,
    input_bytes: i64,
    code: Option<String>,
}

impl AuditTicket {
    /// The ticket of `body`, run by `caller`.
    pub(crate) fn new(state: &AppState, caller: &Caller, body: &ExecuteBody) -> AuditTicket {
        let Some(db) = state.database.as_ref().filter(|db| db.audit.enabled) else {
            return AuditTicket(None);
        };
        let request = &body.request;
        let code = request
            .code
            .as_deref()
            .or(request.cmd.as_deref())
            .unwrap_or_default();
        let input = code.len()
            + request.stdin.as_ref().map_or(0, String::len)
            + request.files.values().map(|f| f.len()).sum::<usize>();
        AuditTicket(Some(Box::new(Pending {
            db: db.clone(),
            key_id: caller.key_id.clone(),
            tenant: caller
                .tenant
                .clone()
                .unwrap_or_else(|| MASTER_TENANT.to_string()),
            code_sha256: hex::encode(Sha256::digest(code.as_bytes())),
            input_bytes: i64::try_from(input).unwrap_or(i64::MAX),
            code: db.audit.include_code.then(|| code.to_string()),
        })))
    }

    /// Writes the row of the finished run. A database failure is logged, not returned: the
    /// caller already has its result.
    pub(crate) async fn record(&self, result: &ExecutionResult) {
        let Some(pending) = &self.0 else {
            return;
        };
        let output = result.stdout.len() + result.stderr.len();
        let written = sqlx::query(
            "INSERT INTO audit_log (time, key_id, tenant_id, runtime, status, exit_code, duration_ms, \
             code_sha256, input_bytes, output_bytes, code) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(now_ms())
        .bind(pending.key_id.clone())
        .bind(&pending.tenant)
        .bind(result.runtime.as_str())
        .bind(result.status.as_str())
        .bind(result.exit_code)
        .bind(i64::try_from(result.duration_ms).unwrap_or(i64::MAX))
        .bind(&pending.code_sha256)
        .bind(pending.input_bytes)
        .bind(i64::try_from(output).unwrap_or(i64::MAX))
        .bind(pending.code.clone())
        .execute(&pending.db.pool)
        .await;
        if let Err(error) = written {
            tracing::warn!(%error, execution = %result.execution_id, "could not write the audit row");
        }
    }
}

/// Rows `GET /audit` returns when the query names no limit, and at most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

impl Database {
    /// Audit rows, newest first, filtered as `query` says.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, DbError> {
        let since = match &query.since {
            Some(raw) => DateTime::parse_from_rfc3339(raw)
                .map_err(|e| {
                    DbError::Invalid(format!("since must be an RFC 3339 time ({raw:?}: {e})"))
                })?
                .timestamp_millis(),
            None => 0,
        };
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(DbError::Invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let columns = "id, time, key_id, tenant_id, runtime, status, exit_code, duration_ms, \
                       code_sha256, input_bytes, output_bytes, code";
        let rows = match &query.tenant_id {
            Some(tenant) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM audit_log WHERE tenant_id = $1 AND time >= $2 ORDER BY id DESC LIMIT $3"
                ))
                .bind(tenant)
                .bind(since)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM audit_log WHERE time >= $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(since)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        let entry = |row: &sqlx::any::AnyRow| -> Result<AuditEntry, sqlx::Error> {
            Ok(AuditEntry {
                id: row.try_get("id")?,
                time: rfc3339(row.try_get("time")?),
                key_id: row.try_get("key_id")?,
                tenant_id: row.try_get("tenant_id")?,
                runtime: row.try_get("runtime")?,
                status: row.try_get("status")?,
                exit_code: row.try_get("exit_code")?,
                duration_ms: row.try_get("duration_ms")?,
                code_sha256: row.try_get("code_sha256")?,
                input_bytes: row.try_get("input_bytes")?,
                output_bytes: row.try_get("output_bytes")?,
                code: row.try_get("code")?,
            })
        };
        Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
    }
}
