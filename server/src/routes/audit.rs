//! `GET /audit`: the audit trail of executions, for the master key only.

use axum::extract::{Query, State};
use axum::Json;
use isol8_api::{AuditList, AuditQuery, ErrorBody};

use super::auth::database;
use crate::error::ApiError;
use crate::state::AppState;

/// Executions, newest first: who ran what (a hash of the code) and how it ended.
#[utoipa::path(get, path = "/audit", tag = "auth",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit rows", body = AuditList),
        (status = 400, description = "Bad query, or DB-backed auth is not enabled", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Not the master key", body = ErrorBody),
        (status = 503, description = "The auth database is unreachable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let entries = database(&state)?.audit(&query).await?;
    Ok(Json(AuditList { entries }))
}
