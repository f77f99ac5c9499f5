//! The axum application: the route table and the middleware stack (the document is `openapi`, the
//! accept loop `serve`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use isol8_api::{ErrorBody, ErrorCode};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::require_key;
use crate::error::ApiError;
use crate::metrics;
use crate::routes::{audit, auth, execute, sessions, system, ws};
use crate::state::AppState;

const REQUEST_ID: &str = "x-request-id";

pub(crate) fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::ready))
        .routes(routes!(execute::execute))
        .routes(routes!(execute::execute_stream))
        .routes(routes!(execute::stream_alias))
        .routes(routes!(ws::execute_ws))
        .routes(routes!(system::cleanup))
        .routes(routes!(system::metrics))
        .routes(routes!(sessions::list_sessions))
        .routes(routes!(
            sessions::delete_session,
            sessions::get_session,
            sessions::update_session
        ))
        .routes(routes!(sessions::export_archive, sessions::import_archive))
        .routes(routes!(sessions::write_file, sessions::read_file))
        .routes(routes!(auth::create_key, auth::list_keys))
        .routes(routes!(auth::revoke_key))
        .routes(routes!(auth::login))
        .routes(routes!(audit::audit))
}

/// The whole HTTP application over `state`.
pub fn app(state: AppState) -> Router {
    let spec = crate::openapi::openapi();
    let (router, _) = api_router().split_for_parts();
    router
        .route("/openapi.json", axum::routing::get(move || async move { Json(spec) }))
        // MCP over Streamable HTTP; behind the key layer below like every other route.
        .route_service("/mcp", crate::mcp::service(state.clone()))
        .route_layer(middleware::from_fn(metrics::expose_matched_path))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        // The body limit: a too-large Content-Length is refused at once, before any is read.
        // Archive uploads have their own (`maxArchiveBytes`), checked by their own layer.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), limit_body))
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(middleware::from_fn(error_envelope))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), name_instance))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Which body limit a request has, and the config field that sets it: `maxArchiveBytes` for an
/// archive upload (`POST /session/{id}/archive`), `maxBodyBytes` for every other.
fn body_limit(state: &AppState, parts: &axum::http::request::Parts) -> (usize, &'static str) {
    let archive = parts.method == axum::http::Method::POST
        && parts.uri.path().starts_with("/session/")
        && parts.uri.path().ends_with("/archive");
    match archive {
        // The tar framing (headers, padding) on top of the contents the cap counts.
        true => (
            usize::try_from(state.config.max_archive_bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(1024 * 1024),
            "maxArchiveBytes",
        ),
        false => (state.config.max_body_bytes, "maxBodyBytes"),
    }
}

/// Bounds the body by its route's limit (`body_limit`): a larger Content-Length is refused at
/// once, before any is read; a longer body fails where it is read (`read_body_in_time`).
async fn limit_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let (limit, field) = body_limit(&state, &parts);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit, field);
    }
    let body = axum::body::Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
}

fn too_large(limit: usize, field: &str) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {field} ({limit} bytes)"),
    )
    .into_response()
}

/// Reads the whole request body, within `requestReadTimeoutMs`, before any handler sees it: a body
/// trickled a byte at a time cannot hold its connection for as long as the client likes (408).
/// Every body isol8 takes is a bounded JSON document read whole anyway.
///
/// Runs inside the key layer, so no body is read before the key is checked; the probes, which
/// answer without a key, get none at all. The bytes a body declares (`Content-Length`), or those
/// that arrive, are taken from the server-wide `maxBodyBytesInFlight` budget first and given back
/// once the request is answered: however many connections send at once, the bodies held in memory
/// stay within it (503 past it).
async fn read_body_in_time(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    if crate::auth::is_public(parts.uri.path()) {
        return next
            .run(Request::from_parts(parts, axum::body::Body::empty()))
            .await;
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    let mut budget = BodyBudget::new(&state);
    if let Err(refusal) = budget.take(declared) {
        return refusal.into_response();
    }
    let (max_bytes, field) = body_limit(&state, &parts);
    let limit = state.config.request_read_timeout_ms;
    let read = read_within_budget(body, &mut budget);
    let bytes = match tokio::time::timeout(Duration::from_millis(limit), read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::Budget(refusal))) => return refusal.into_response(),
        Ok(Err(BodyError::Read(error))) => {
            let error = error.into_inner();
            return if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(max_bytes, field)
            } else {
                ApiError::bad_request(format!("could not read the request body: {error}"))
                    .into_response()
            };
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {limit} ms"),
            )
            .into_response()
        }
    };
    let response = next.run(Request::from_parts(parts, bytes.into())).await;
    // The body's share of the budget is given back only now: the handler held it (or what it
    // parsed from it) until here.
    drop(budget);
    response
}

enum BodyError {
    Budget(ApiError),
    Read(axum::Error),
}

/// Reads `body` whole, taking from `budget` whatever arrives beyond what it already holds.
async fn read_within_budget(
    mut body: axum::body::Body,
    budget: &mut BodyBudget,
) -> Result<axum::body::Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut buffer = Vec::with_capacity(budget.held);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            let beyond = (buffer.len() + data.len()).saturating_sub(budget.held);
            budget.take(beyond).map_err(BodyError::Budget)?;
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.into())
}

/// One request's share of the server-wide body budget (`AppState::body_budget`); dropping it
/// gives the bytes back.
struct BodyBudget {
    semaphore: Arc<tokio::sync::Semaphore>,
    permits: Option<tokio::sync::OwnedSemaphorePermit>,
    held: usize,
    total: usize,
}

impl BodyBudget {
    fn new(state: &AppState) -> BodyBudget {
        BodyBudget {
            semaphore: Arc::clone(&state.body_budget),
            permits: None,
            held: 0,
            total: state.config.max_body_bytes_in_flight,
        }
    }

    /// Takes `bytes` more, at once or not at all (a client is not left waiting with a connection
    /// open; it is told to come back).
    fn take(&mut self, bytes: usize) -> Result<(), ApiError> {
        if bytes == 0 {
            return Ok(());
        }
        let refused = || {
            ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::BodyBudgetExhausted,
                format!(
                    "the server is already receiving {} bytes of request bodies (maxBodyBytesInFlight); retry later",
                    self.total
                ),
            )
        }
        };
        let count = u32::try_from(bytes).map_err(|_| refused())?;
        let permit = Arc::clone(&self.semaphore)
            .try_acquire_many_owned(count)
            .map_err(|_| refused())?;
        match &mut self.permits {
            Some(held) => held.merge(permit),
            None => self.permits = Some(permit),
        }
        self.held += bytes;
        Ok(())
    }
}

/// Names the replica that answered (`x-isol8-instance`), for operators behind a load balancer: a
/// session's calls should all show the same one.
async fn name_instance(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(state.engine.instance_id()) {
        response.headers_mut().insert("x-isol8-instance", value);
    }
    response
}

/// Writes the one error body, with the request id, for every error response: ours (carried as an
/// `ApiError` extension) and axum's own (unknown method, body limits).
async fn error_envelope(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut response = next.run(request).await;
    let status = response.status();
    let error = match response.extensions_mut().remove::<ApiError>() {
        Some(err) => err,
        None if status.is_client_error() || status.is_server_error() => {
            let is_json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if is_json {
                return response;
            }
            ApiError::new(
                status,
                ApiError::code_for_status(status),
                match status {
                    StatusCode::METHOD_NOT_ALLOWED => {
                        "method not allowed on this route".to_string()
                    }
                    StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
                    _ => status.canonical_reason().unwrap_or("error").to_string(),
                },
            )
        }
        None => return response,
    };
    let body = ErrorBody {
        error: error.client_message(&request_id),
        code: error.code,
        request_id,
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (parts, Json(body)).into_response()
}
