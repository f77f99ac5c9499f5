//! `GET /execute/ws`: the reference's WebSocket protocol (an `execute` message, each stream event as
//! one JSON text message, close 1000 after the run), plus live `stdin` and `signal` messages.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use isol8_api::{ErrorBody, ExecuteBody, StreamEvent, StreamEventType};
use isol8_docker::{RunControl, RunEvent, RunSignal};
use serde_json::Value;

use crate::auth::Caller;
use crate::routes::execute::{start, to_wire};
use crate::state::AppState;

/// Close codes of the protocol.
const NORMAL: u16 = 1000;
const UNSUPPORTED_DATA: u16 = 1003;

/// Run code over a WebSocket, with live stdin and signals.
///
/// Client messages (JSON text): `{"type": "execute", "request", "options"?, "sessionId"?}` (the
/// body of `POST /execute` plus its type) starts the run; `{"type": "stdin", "data": "..."}`
/// reaches the program's stdin as it arrives and `{"type": "stdin", "eof": true}` closes it;
/// `{"type": "signal", "signal": "SIGINT" | "SIGTERM" | "SIGKILL"}` goes to the program's process
/// group. Server messages: each stream event of `POST /execute/stream` as one JSON text message,
/// the `result` event last; then close 1000 "Execution complete". Invalid JSON: an `error`
/// message, then close 1003. An unknown type: an `error` message; the socket stays open. Closing
/// the socket kills the run. Auth is on the upgrade request (401/403 before any upgrade).
#[utoipa::path(get, path = "/execute/ws", tag = "execution",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "No key", body = ErrorBody),
        (status = 403, description = "Wrong key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn execute_ws(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| serve_socket(state, caller, headers, socket))
}

/// What one client message asks for.
enum Incoming {
    Execute(Box<ExecuteBody>),
    Control(RunControl),
    /// Answered with an `error` message; the socket stays open.
    Refused(String),
    /// Not JSON: the protocol closes the socket.
    Invalid,
}

fn parse(text: &str) -> Incoming {
    let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(text) else {
        return Incoming::Invalid;
    };
    let kind = message.remove("type");
    match kind.as_ref().and_then(Value::as_str) {
        Some("execute") => match serde_json::from_value::<ExecuteBody>(Value::Object(message)) {
            Ok(body) => Incoming::Execute(Box::new(body)),
            Err(err) => Incoming::Refused(format!("invalid execute message: {err}")),
        },
        Some("stdin") => {
            if message.get("eof").and_then(Value::as_bool) == Some(true) {
                return Incoming::Control(RunControl::StdinEof);
            }
            match message.get("data").and_then(Value::as_str) {
                Some(data) => Incoming::Control(RunControl::Stdin(data.as_bytes().to_vec())),
                None => Incoming::Refused(
                    "a stdin message needs \"data\" (a string) or \"eof\": true".into(),
                ),
            }
        }
        Some("signal") => match message
            .get("signal")
            .and_then(Value::as_str)
            .and_then(RunSignal::from_name)
        {
            Some(signal) => Incoming::Control(RunControl::Signal(signal)),
            None => Incoming::Refused(
                "a signal message needs \"signal\": \"SIGINT\", \"SIGTERM\" or \"SIGKILL\"".into(),
            ),
        },
        Some(other) => Incoming::Refused(format!("Unknown message type: {other}")),
        None => Incoming::Refused("a message needs a \"type\"".into()),
    }
}

async fn serve_socket(state: AppState, caller: Caller, headers: HeaderMap, mut socket: WebSocket) {
    // Before the run: wait for its `execute` message.
    let body = loop {
        let Some(Ok(message)) = socket.recv().await else {
            return;
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return,
            Message::Binary(_) => {
                close(&mut socket, UNSUPPORTED_DATA, "Invalid JSON").await;
                return;
            }
            _ => continue,
        };
        match parse(&text) {
            Incoming::Execute(body) => break body,
            Incoming::Control(_) => {
                send_error(&mut socket, "no run yet: send an execute message first").await;
            }
            Incoming::Refused(why) => send_error(&mut socket, &why).await,
            Incoming::Invalid => {
                send_error(&mut socket, "Invalid JSON message").await;
                close(&mut socket, UNSUPPORTED_DATA, "Invalid JSON").await;
                return;
            }
        }
    };
    let mut events = match start(&state, &caller, &headers, &body, true).await {
        Ok(events) => events,
        Err(err) => {
            let request_id = headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            send_error(&mut socket, &err.client_message(request_id)).await;
            close(&mut socket, NORMAL, "Execution complete").await;
            return;
        }
    };
    let control = events.controller();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                if let RunEvent::Finished(result) = &event {
                    state.metrics.record_execution(result);
                }
                if !send_event(&mut socket, &to_wire(event)).await {
                    return; // the client is gone: dropping `events` kills the run
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => match parse(&text) {
                    Incoming::Control(input) => {
                        // Full only while the agent is busy: input waits, in order.
                        let _ = control.send(input).await;
                    }
                    Incoming::Execute(_) => {
                        send_error(&mut socket, "a run is already going on this socket").await;
                    }
                    Incoming::Refused(why) => send_error(&mut socket, &why).await,
                    Incoming::Invalid => {
                        send_error(&mut socket, "Invalid JSON message").await;
                        close(&mut socket, UNSUPPORTED_DATA, "Invalid JSON").await;
                        return;
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    close(&mut socket, NORMAL, "Execution complete").await;
}

async fn send_event(socket: &mut WebSocket, event: &StreamEvent) -> bool {
    let text = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .is_ok()
}

async fn send_error(socket: &mut WebSocket, message: &str) {
    let event = StreamEvent {
        kind: StreamEventType::Error,
        data: message.to_string(),
        phase: None,
        result: None,
    };
    send_event(socket, &event).await;
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}
