//! `POST /execute`, `POST /execute/stream` (alias `POST /stream`) and `GET /execute/ws`: one way
//! to start a run (`start`), three ways to hand back its events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use futures::Stream;
use isol8_api::{
    ErrorBody, ExecuteBody, ExecutionResult, SessionId, StreamEvent, StreamEventType, StreamPhase,
    SESSION_HEADER,
};
use isol8_docker::{Engine, Program, RunEvent, RunEvents, RunPlan};

use crate::auth::Caller;
use crate::db::AuditTicket;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::remote_code::CodeRequest;
use crate::state::{AppState, Slot};
use crate::{persist, policy};

/// The run a request asks for: planned in one validation pass with the server's defaults, held
/// to its policy, and its remote code (`codeUrl`) fetched only then.
pub(crate) async fn plan(
    state: &AppState,
    caller: &Caller,
    body: &ExecuteBody,
) -> Result<RunPlan, ApiError> {
    let options = body.options.clone().unwrap_or_default();
    let config = &state.config;
    let mut plan =
        RunPlan::from_request(&body.request, &options, &state.plan_defaults, &caller.owner)?;
    policy::check(&plan, &options, &state.max_limits, &config.allowed_networks)?;
    if plan.persist {
        config.persist.check(caller)?;
        plan.persist_expires_at = Some(config.persist.expires_at());
    }
    if let Program::Remote {
        url,
        hash,
        allow_insecure,
        extension,
    } = &plan.program
    {
        let source = state
            .remote_code
            .fetch(&CodeRequest {
                url,
                hash: hash.as_deref(),
                allow_insecure: *allow_insecure,
            })
            .await?;
        if source.trim().is_empty() {
            return Err(ApiError::bad_request(format!(
                "codeUrl \"{url}\": the code fetched is empty"
            )));
        }
        plan.program = Program::Code {
            source,
            extension: extension.clone(),
        };
    }
    Ok(plan)
}

/// The failures every execution route can answer with (one list, so the routes cannot drift).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only: the answers are built by `ApiError`
enum ExecutionErrors {
    #[response(status = 400, description = "Invalid request")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No key")]
    NoKey(ErrorBody),
    #[response(status = 403, description = "Wrong key or over policy")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No image holds the requested packages")]
    NoImage(ErrorBody),
    #[response(status = 409, description = "The session runs another runtime")]
    SessionConflict(ErrorBody),
    #[response(status = 413, description = "Body too large")]
    TooLarge(ErrorBody),
    #[response(status = 429, description = "Over capacity")]
    Busy(ErrorBody),
    #[response(status = 503, description = "Docker unreachable or images missing")]
    Unavailable(ErrorBody),
}

/// Run code and wait for the result.
#[utoipa::path(post, path = "/execute", tag = "execution",
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "The run finished (any exit code, timeout or limit)", body = ExecutionResult),
        ExecutionErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn execute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecuteBody>,
) -> Result<Json<ExecutionResult>, ApiError> {
    let audit = AuditTicket::new(&state, &caller, &body);
    let events = start(&state, &caller, &headers, &body, false).await?;
    let result = Engine::collect(events).await?;
    state.metrics.record_execution(&result);
    audit.record(&result).await;
    Ok(Json(result))
}

/// Validates the call, takes an execution slot and starts it: in a fresh sandbox, or in the session
/// it names (created on first use). The slot is held until the run has ended, however the caller
/// reads its events (or does not). `live_stdin` keeps the program's stdin open for
/// `RunControl::Stdin`. Shared by every route that runs code (`/execute`, the streams, `/mcp`).
pub(crate) async fn start(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &ExecuteBody,
    live_stdin: bool,
) -> Result<RunEvents, ApiError> {
    let mut plan = plan(state, caller, body).await?;
    plan.live_stdin = live_stdin;
    // The header carries the id where the body cannot be read for routing (ingress affinity);
    // the body's `sessionId` wins when both are given.
    let session_id = match &body.session_id {
        Some(id) => Some(id.clone()),
        None => headers
            .get(SESSION_HEADER)
            .map(|v| {
                let text = v.to_str().map_err(|_| {
                    ApiError::bad_request(format!("the {SESSION_HEADER} header is not text"))
                })?;
                Ok::<_, ApiError>(SessionId::parse(text)?)
            })
            .transpose()?,
    };
    let Some(id) = session_id else {
        // Counted against the key's cap until its container exists (`execute_stream` made it).
        let _kept = if plan.persist {
            Some(persist::admit(state, caller).await?)
        } else {
            None
        };
        let slot = state.acquire_slot(caller).await?;
        let events = state.engine.execute_stream(plan).await?;
        hold_until_ended(slot, &events);
        return Ok(events);
    };
    let session = state.sessions.get_or_create(
        &caller.owner,
        &id,
        plan.runtime,
        caller.limits.map(|l| l.max_sessions),
    )?;
    session.touch();
    // Every secret the session was given stays in its interpreter and masked in its output; the
    // record (the next server process's way to keep masking them) is saved before any of them
    // reaches the container.
    let (secrets, masked) = session.add_secrets(&plan.secrets);
    plan.secrets = secrets;
    plan.masked = masked;
    state.sessions.persist(&session);
    // The session's turn first, then an execution slot: calls queued on a busy session must not
    // hold slots other clients could use. Waiting for a busy session is queueing like waiting for
    // a slot: it counts toward `maxQueue`, and both waits together last `queueTimeoutMs` at most.
    let deadline = state.queue_deadline();
    let locked = match Arc::clone(&session.slot).try_lock_owned() {
        Ok(locked) => locked,
        Err(_) => {
            let turn = Arc::clone(&session.slot).lock_owned();
            let what = format!("session {id}");
            state.wait_in_queue(turn, deadline, &what).await?
        }
    };
    let slot = state.acquire_slot_by(caller, deadline).await?;
    let key = session.key(state.sessions.local, state.sessions.store().server_id());
    match state.engine.execute_in_session(locked, &key, plan).await {
        Ok(events) => {
            hold_until_ended(slot, &events);
            Ok(events)
        }
        Err(err) => {
            // A session whose container could not even be made is not kept.
            if session.slot.try_lock().is_ok_and(|s| !s.has_container()) {
                state.sessions.remove(&caller.owner, &id);
            }
            Err(err.into())
        }
    }
}

/// Keeps the execution slot until the run ends (its task released the sandbox): a client that stops
/// reading a stream cannot keep the slot past the run's own deadline.
fn hold_until_ended(slot: Slot, events: &RunEvents) {
    let ended = events.ended();
    tokio::spawn(async move {
        ended.await;
        drop(slot);
    });
}

/// Run code and stream its output as Server-Sent Events.
///
/// Events: `stdout`, `stderr`, `error`, `exit` (data = exit code), then `result` with the summary.
/// Keep-alive comments are sent while the program is silent. Disconnecting kills the run.
#[utoipa::path(post, path = "/execute/stream", tag = "execution",
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "text/event-stream of StreamEvent", body = StreamEvent, content_type = "text/event-stream"),
        ExecutionErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn execute_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecuteBody>,
) -> Result<impl IntoResponse, ApiError> {
    let audit = AuditTicket::new(&state, &caller, &body);
    let mut events = start(&state, &caller, &headers, &body, false).await?;
    let stream = async_stream::stream! {
        while let Some(event) = events.recv().await {
            if let RunEvent::Finished(result) = &event {
                state.metrics.record_execution(result);
                audit.record(result).await;
            }
            let wire = to_wire(event);
            let data = serde_json::to_string(&wire).unwrap_or_else(|_| "{}".into());
            yield Ok::<Event, Infallible>(Event::default().event(wire.kind.as_str()).data(data));
        }
    };
    Ok((
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        sse(stream),
    ))
}

/// Same as `/execute/stream`.
#[utoipa::path(post, path = "/stream", tag = "execution",
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "text/event-stream of StreamEvent", body = StreamEvent, content_type = "text/event-stream"),
        ExecutionErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn stream_alias(
    state: State<AppState>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    body: JsonBody<ExecuteBody>,
) -> Result<impl IntoResponse, ApiError> {
    execute_stream(state, caller, headers, body).await
}

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(
    stream: S,
) -> Sse<axum::response::sse::KeepAliveStream<S>> {
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(5))
            .text("keep-alive"),
    )
}

/// A run event as the streams send it (the SSE `data`, a WebSocket text message).
pub(crate) fn to_wire(event: RunEvent) -> StreamEvent {
    match event {
        RunEvent::Stdout { phase, text } => with_phase(StreamEventType::Stdout, text, phase),
        RunEvent::Stderr { phase, text } => with_phase(StreamEventType::Stderr, text, phase),
        RunEvent::Exit { phase, code } => {
            with_phase(StreamEventType::Exit, code.to_string(), phase)
        }
        RunEvent::Error { phase, message } => with_phase(StreamEventType::Error, message, phase),
        RunEvent::Network(entry) => with_phase(
            StreamEventType::Network,
            serde_json::to_string(&entry).unwrap_or_default(),
            StreamPhase::Code,
        ),
        RunEvent::Display(bundle) => with_phase(
            StreamEventType::Display,
            serde_json::to_string(&bundle).unwrap_or_default(),
            StreamPhase::Code,
        ),
        RunEvent::Finished(result) => StreamEvent {
            kind: StreamEventType::Result,
            data: result.status.as_str().to_string(),
            phase: None,
            result: Some(result),
        },
    }
}

fn with_phase(kind: StreamEventType, data: String, phase: StreamPhase) -> StreamEvent {
    StreamEvent {
        kind,
        data,
        phase: Some(phase),
        result: None,
    }
}
