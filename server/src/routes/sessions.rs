//! `GET /sessions`, `GET|PATCH|DELETE /session/{id}`, `GET|POST /session/{id}/archive`,
//! `POST /file`, `GET /file`: the caller's sessions, their lifetime, files and workspace snapshots.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use isol8_api::{
    ArchiveImported, ArchiveQuery, ErrorBody, ExecuteBody, ExecutionRequest, FileContent,
    FileQuery, FileWrite, OkResponse, SessionDetail, SessionId, SessionInfo, SessionList,
    SessionUpdate,
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
pub(crate) async fn list_sessions(
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
pub(crate) fn close(state: &AppState, caller: &Caller, id: &SessionId) -> Result<bool, ApiError> {
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
    let sandbox = state
        .engine
        .session_sandbox(&mut slot)
        .await?
        .ok_or_else(|| no_container(id))?;
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
    let sandbox = state
        .engine
        .session_sandbox(&mut slot)
        .await?
        .ok_or_else(|| no_container(id))?;
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
pub(crate) async fn delete_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<OkResponse>, ApiError> {
    close(&state, &caller, &SessionId::parse(id)?)?;
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
pub(crate) async fn write_file(
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
pub(crate) async fn read_file(
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

/// The session's state, measured now where it can be (not while a call runs).
async fn detail(state: &AppState, session: &Session) -> Result<SessionDetail, ApiError> {
    let base = info(session);
    let (paused, sandbox_bytes) = match session.slot.try_lock() {
        Err(_) => (false, None),
        Ok(slot) if slot.is_paused() => (true, slot.frozen_usage()),
        Ok(mut slot) if slot.has_container() => {
            (false, state.engine.session_usage(&mut slot).await?)
        }
        Ok(_) => (false, None),
    };
    Ok(SessionDetail {
        id: base.id,
        runtime: base.runtime,
        created_at: base.created_at,
        last_accessed_at: base.last_accessed_at,
        is_active: base.is_active,
        container_id: base.container_id,
        paused,
        idle_timeout_ms: session.idle_timeout().as_millis() as u64,
        expires_at: rfc3339(session.idle_deadline()),
        sandbox_bytes,
    })
}

/// One of the caller's sessions: created, last used, frozen or not, idle deadline, runtime and
/// the space its `/sandbox` uses. Does not count as a use.
#[utoipa::path(get, path = "/session/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "The session", body = SessionDetail),
        (status = 400, description = "Not a valid session id", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
        (status = 404, description = "No such session (of this key)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn get_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionDetail>, ApiError> {
    let id = SessionId::parse(id)?;
    let session = state.sessions.get(&caller.owner, &id)?;
    Ok(Json(detail(&state, &session).await?))
}

/// Change a session's idle timeout (counted from its last use), up to the server's
/// `maxSessionIdleTimeoutMs`.
#[utoipa::path(patch, path = "/session/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    request_body = SessionUpdate,
    responses(
        (status = 200, description = "The session, updated", body = SessionDetail),
        (status = 400, description = "Bad id or idleTimeoutMs", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
        (status = 404, description = "No such session (of this key)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn update_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SessionUpdate>,
) -> Result<Json<SessionDetail>, ApiError> {
    let id = SessionId::parse(id)?;
    let max = state.sessions.limits().max_idle_timeout.as_millis() as u64;
    if !(1000..=max).contains(&body.idle_timeout_ms) {
        return Err(ApiError::bad_request(format!(
            "idleTimeoutMs must be between 1000 and {max} (the server's maxSessionIdleTimeoutMs), not {}",
            body.idle_timeout_ms
        )));
    }
    let session = state.sessions.get(&caller.owner, &id)?;
    session.set_idle_timeout(Duration::from_millis(body.idle_timeout_ms));
    state.sessions.persist(&session);
    Ok(Json(detail(&state, &session).await?))
}

/// The session's `/sandbox` as a tar archive (files, folders, symlinks), at most the server's
/// `maxArchiveBytes`.
#[utoipa::path(get, path = "/session/{id}/archive", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "A tar archive of /sandbox", body = Vec<u8>, content_type = "application/x-tar"),
        (status = 400, description = "Bad id, or /sandbox holds more than maxArchiveBytes", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
        (status = 404, description = "No such session (of this key)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn export_archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = SessionId::parse(id)?;
    let session = found(&state, &caller, &id).await?;
    session.touch();
    let mut slot = session.slot.lock().await;
    let tar = state
        .engine
        .export_session(&mut slot, state.config.max_archive_bytes)
        .await?
        .ok_or_else(|| no_container(&id))?;
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{id}.tar\""))
        .map_err(|_| ApiError::bad_request("the session id cannot name a file"))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-tar"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        tar,
    )
        .into_response())
}

/// Unpack a tar archive into the session's `/sandbox` (files and folders replaced, others
/// kept). Only regular files, folders and symlinks that stay inside `/sandbox`, relative paths
/// without `..`, nothing below a symlink, at most `maxArchiveBytes`: anything else is a 400
/// naming the entry, and nothing is unpacked. With `?runtime=`, an unknown session is created.
#[utoipa::path(post, path = "/session/{id}/archive", tag = "sessions",
    params(("id" = String, Path, description = "The session id"), ArchiveQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "An uncompressed tar archive"),
    responses(
        (status = 200, description = "Unpacked", body = ArchiveImported),
        (status = 400, description = "Bad id, or an archive refused (the message names the entry and why)", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
        (status = 404, description = "No such session (of this key), and no runtime to create it", body = ErrorBody),
        (status = 413, description = "Larger than maxArchiveBytes", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn import_archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<ArchiveQuery>,
    body: axum::body::Bytes,
) -> Result<Json<ArchiveImported>, ApiError> {
    let id = SessionId::parse(id)?;
    // Checked whole before anything is created or written.
    let tar = isol8_docker::sanitize_archive(&body, state.config.max_archive_bytes)?;
    let existing = match (found(&state, &caller, &id).await, query.runtime) {
        (Ok(session), _) => Some(session),
        (Err(_), Some(_)) => None,
        (Err(err), None) => return Err(err),
    };
    let (session, created) = match existing {
        Some(session) => (session, false),
        None => {
            let runtime = query.runtime.unwrap_or_default();
            let session = state.sessions.get_or_create(
                &caller.owner,
                &id,
                runtime,
                caller.limits.map(|l| l.max_sessions),
            )?;
            (session, true)
        }
    };
    session.touch();
    state.sessions.persist(&session);
    let mut slot = session.slot.lock().await;
    let mut made = false;
    if !slot.has_container() {
        // The container is made as a first call's would be (defaults and policy); the code is
        // never run.
        let body = ExecuteBody {
            request: ExecutionRequest {
                runtime: session.runtime,
                code: Some("0".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let plan = super::execute::plan(&state, &caller, &body).await?;
        let key = session.key(state.sessions.local, state.sessions.store().server_id());
        match state.engine.open_session(&mut slot, &key, &plan).await {
            Ok(new) => made = new,
            Err(err) => {
                drop(slot);
                if created {
                    state.sessions.remove(&caller.owner, &id);
                }
                return Err(err.into());
            }
        }
    }
    state.engine.import_session(&mut slot, tar).await?;
    Ok(Json(ArchiveImported {
        ok: true,
        session_created: created && made,
    }))
}

/// The caller's session `id`; in CLI mode also one an earlier CLI process left (found by its
/// container's labels).
async fn found(
    state: &AppState,
    caller: &Caller,
    id: &SessionId,
) -> Result<std::sync::Arc<Session>, ApiError> {
    match state.sessions.get(&caller.owner, id) {
        Ok(session) => Ok(session),
        Err(err) if state.sessions.local => {
            let local = state.engine.local_sessions().await?;
            let Some((runtime, container)) = local
                .into_iter()
                .find(|s| s.id == id.as_str() && s.running)
                .and_then(|s| Some((s.runtime.parse().ok()?, s.container_id)))
            else {
                return Err(err);
            };
            let session = state
                .sessions
                .get_or_create(&caller.owner, id, runtime, None)?;
            let mut slot = session.slot.lock().await;
            if !slot.has_container() {
                // Attached (and its agent pinged) on first use, like a server's adopted sessions.
                *slot = isol8_docker::SessionState::adoptable(container, false);
            }
            drop(slot);
            Ok(session)
        }
        Err(err) => Err(err),
    }
}
