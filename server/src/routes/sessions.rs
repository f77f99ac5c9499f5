//! `GET /sessions`, `DELETE /session/{id}`, `POST /file`, `GET /file`: the caller's sessions and
//! their files.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use base64::Engine as _;
use isol8_api::{
    ErrorBody, FileContent, FileQuery, FileWrite, OkResponse, SessionInfo, SessionList,
};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::sessions::{self, Session};
use crate::state::AppState;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Decoding accepts non-zero trailing bits, as most encoders' readers do.
const B64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn info(session: &Session) -> SessionInfo {
    SessionInfo {
        id: session.id.clone(),
        runtime: session.runtime,
        created_at: rfc3339(session.created),
        last_accessed_at: rfc3339(session.last_used()),
        is_active: session.busy(),
        container_id: session.slot.try_lock().ok().and_then(|s| s.container_id()),
    }
}

/// The caller's sessions (never another key's).
#[utoipa::path(get, path = "/sessions", tag = "sessions",
    responses(
        (status = 200, description = "The caller's sessions", body = SessionList),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_sessions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<SessionList> {
    let sessions = state.sessions.list(&caller.owner);
    Json(SessionList {
        sessions: sessions.iter().map(|s| info(s)).collect(),
    })
}

/// End a session and remove its container (after a running call, if any, ends). Idempotent.
#[utoipa::path(delete, path = "/session/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "The session is gone (or never was)", body = OkResponse),
        (status = 400, description = "Not a valid session id", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<OkResponse>, ApiError> {
    sessions::check_id(&id)?;
    if let Some(session) = state.sessions.remove(&caller.owner, &id) {
        let engine = state.engine.clone();
        // The answer does not wait for a running call to end; the container goes when it does.
        tokio::spawn(async move { sessions::close(&engine, &session).await });
    }
    Ok(Json(OkResponse { ok: true }))
}

/// Write a file into a session's `/sandbox` (parent folders created).
#[utoipa::path(post, path = "/file", tag = "sessions",
    request_body = FileWrite,
    responses(
        (status = 200, description = "Written", body = OkResponse),
        (status = 400, description = "Bad path or content", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn write_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<FileWrite>,
) -> Result<Json<OkResponse>, ApiError> {
    let data = B64_LENIENT
        .decode(body.content.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("content is not base64: {e}")))?;
    let session = state.sessions.get(&caller.owner, &body.session_id)?;
    session.touch();
    let mut slot = session.slot.lock().await;
    let sandbox = slot
        .sandbox_mut()
        .ok_or_else(|| no_container(&body.session_id))?;
    state
        .engine
        .write_session_file(sandbox, &body.path, &data)
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

/// Read a file from a session's `/sandbox`.
#[utoipa::path(get, path = "/file", tag = "sessions",
    params(FileQuery),
    responses(
        (status = 200, description = "The file's bytes", body = FileContent),
        (status = 400, description = "Bad path, or not a regular file, or too large", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
        (status = 404, description = "No such session or file", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn read_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<FileQuery>,
) -> Result<Json<FileContent>, ApiError> {
    let session = state.sessions.get(&caller.owner, &query.session_id)?;
    session.touch();
    let mut slot = session.slot.lock().await;
    let sandbox = slot
        .sandbox_mut()
        .ok_or_else(|| no_container(&query.session_id))?;
    let data = state
        .engine
        .read_session_file(sandbox, &query.path, state.config.max_file_bytes)
        .await?;
    Ok(Json(FileContent {
        content: B64.encode(data),
    }))
}

fn no_container(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "session \"{id}\" has no container (its first call failed)"
    ))
}
