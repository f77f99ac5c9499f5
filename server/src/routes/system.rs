//! `GET /health`, `GET /ready`, `POST /cleanup`, `GET /metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use isol8_api::{
    CleanupCounts, CleanupRequest, CleanupResponse, ErrorBody, ErrorCode, HealthResponse,
    ReadyResponse, Runtime,
};

use isol8_docker::CleanupScope;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Liveness: the process answers. No key needed.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, description = "The server is up", body = HealthResponse)))]
pub(crate) async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Readiness: Docker answers and every runtime image is built. No key needed (a probe), so it says
/// only whether the server is ready and which runtimes are: the Docker address and the reason it
/// does not answer go to the server's log, never to the caller.
#[utoipa::path(get, path = "/ready", tag = "system",
    responses(
        (status = 200, description = "Ready to run code", body = ReadyResponse),
        (status = 503, description = "Docker unreachable or images missing", body = ErrorBody),
    ))]
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Json<ReadyResponse>, ApiError> {
    let not_ready = |error: isol8_docker::Error| {
        tracing::warn!(%error, "not ready");
        let (code, message) = if error.is_docker_unavailable() {
            (
                ErrorCode::DockerUnavailable,
                "not ready: the Docker engine does not answer",
            )
        } else {
            (
                ErrorCode::NotReady,
                "not ready: the Docker engine could not be queried",
            )
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    };
    state.engine.ping().await.map_err(not_ready)?;
    let built = state.engine.built_runtimes().await.map_err(not_ready)?;
    let missing: Vec<&str> = Runtime::ALL
        .iter()
        .filter(|r| !built.contains_key(r))
        .map(|r| r.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ImageMissing,
            format!(
                "not ready: runtime images not built: {}; run `isol8 setup`",
                missing.join(", ")
            ),
        ));
    }
    Ok(Json(ReadyResponse {
        status: "ready".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        runtimes: built.into_keys().collect(),
    }))
}

/// With the master key: end every session of this server and remove every container it created
/// (and isol8's images with `{"images": true}`); another server's or a CLI's containers on the same
/// Docker engine are left alone. With a tenant's key: end that tenant's sessions and drop its warm
/// containers and the containers it kept (`persist`).
#[utoipa::path(post, path = "/cleanup", tag = "system",
    request_body(content = Option<CleanupRequest>),
    responses(
        (status = 200, description = "What was removed", body = CleanupResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key, or images asked for without the master key", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn cleanup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<CleanupResponse>, ApiError> {
    // The body is optional: no body means `{}`.
    let images = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let invalid =
            |e: serde_json::Error| ApiError::bad_request(format!("invalid cleanup body: {e}"));
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(invalid)?;
        // serde would also take a struct from a JSON array (`[]`, `[true]`): the contract says object.
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "invalid cleanup body: expected a JSON object such as {\"images\": true}",
            ));
        }
        serde_json::from_value::<CleanupRequest>(value)
            .map_err(invalid)?
            .images
    };
    if !caller.master {
        // A tenant's key cleans up what is its own: its sessions and its warm containers.
        if images {
            return Err(ApiError::policy(
                "only the master key may remove images: they are shared by every tenant",
            ));
        }
        let sessions = state
            .sessions
            .close_matching(&state.engine, Some(&caller.owner))
            .await;
        let warm = state.engine.cleanup_owner(&caller.owner).await;
        let kept = state.engine.remove_kept(&caller.owner).await?;
        return Ok(Json(CleanupResponse {
            ok: true,
            sessions,
            containers: CleanupCounts {
                removed: (warm + kept) as u64,
                ..Default::default()
            },
            images: None,
            volumes: None,
        }));
    }
    let sessions = state.sessions.close_matching(&state.engine, None).await;
    let mut response = state.engine.cleanup(CleanupScope::Instance, images).await?;
    response.ok &= sessions.failed == 0;
    response.sessions = sessions;
    Ok(Json(response))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state
        .metrics
        .render(state.engine.pool_stats(), state.sessions.count());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
