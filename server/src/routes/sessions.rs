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
    Json(SessionList {
        sessions: list(&state, &caller),
    })
}

/// The caller's sessions, oldest first (`GET /sessions` and MCP's `list_sessions`).
pub(crate) fn list(state: &AppState, caller: &Caller) -> Vec<SessionInfo> {
    let sessions = state.sessions.list(&caller.owner);
    sessions.iter().map(|s| info(s)).collect()
}

/// Ends the caller's session `id`, if it exists; its container goes once a running call ends.
/// Returns whether there was one.
pub(crate) fn close(state: &AppState, caller: &Caller, id: &str) -> Result<bool, ApiError> {
    sessions::check_id(id)?;
    let Some(session) = state.sessions.remove(&caller.owner, id) else {
        return Ok(false);
    };
    let engine = state.engine.clone();
    // The answer does not wait for a running call to end; the container goes when it does.
    tokio::spawn(async move { sessions::close(&engine, &session).await });
    Ok(true)
}

/// Writes `data` to `path` in the caller's session `id` (`POST /file`, MCP's `write_file`).
pub(crate) async fn write(
    state: &AppState,
    caller: &Caller,
    id: &str,
    path: &str,
    data: &[u8],
) -> Result<(), ApiError> {
    let session = state.sessions.get(&caller.owner, id)?;
    session.touch();
    let mut slot = session.slot.lock().await;
    let sandbox = slot.sandbox_mut().ok_or_else(|| no_container(id))?;
    state.engine.write_session_file(sandbox, path, data).await?;
    Ok(())
}

/// The bytes at `path` in the caller's session `id` (`GET /file`, MCP's `read_file`).
pub(crate) async fn read(
    state: &AppState,
    caller: &Caller,
    id: &str,
    path: &str,
) -> Result<Vec<u8>, ApiError> {
    let session = state.sessions.get(&caller.owner, id)?;
    session.touch();
    let mut slot = session.slot.lock().await;
    let sandbox = slot.sandbox_mut().ok_or_else(|| no_container(id))?;
    let data = state
        .engine
        .read_session_file(sandbox, path, state.config.max_file_bytes)
        .await?;
    Ok(data)
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
    close(&state, &caller, &id)?;
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
    write(&state, &caller, &body.session_id, &body.path, &data).await?;
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
    let data = read(&state, &caller, &query.session_id, &query.path).await?;
    Ok(Json(FileContent {
        content: B64.encode(data),
    }))
}

fn no_container(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "session \"{id}\" has no container (its first call failed)"
    ))
}
