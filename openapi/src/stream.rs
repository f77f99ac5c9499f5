//! Server-Sent Event payloads of `POST /execute/stream`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ExecutionResult;

/// The kind of a stream event; also its SSE `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamEventType {
    Stdout,
    Stderr,
    /// `data` is the exit code as a decimal string.
    Exit,
    /// `data` is a message; the run failed or hit a limit.
    Error,
    /// `filtered` mode with `logNetwork`: `data` is one request through the proxy, a
    /// `NetworkLogEntry` as JSON, sent as it happens.
    Network,
    /// A code-interpreter result (last expression, `display()`, a figure): `data` is its MIME
    /// bundle as JSON, sent in order with the output.
    Display,
    /// The final event: `result` carries the summary (`stdout`/`stderr` empty, they were streamed).
    Result,
}

impl StreamEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEventType::Stdout => "stdout",
            StreamEventType::Stderr => "stderr",
            StreamEventType::Exit => "exit",
            StreamEventType::Network => "network",
            StreamEventType::Display => "display",
            StreamEventType::Error => "error",
            StreamEventType::Result => "result",
        }
    }
}

/// Which part of a run an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamPhase {
    Setup,
    Code,
}

/// One event of an execution stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"type": "stdout", "data": "hello\n", "phase": "code"}))]
pub struct StreamEvent {
    #[serde(rename = "type")]
    pub kind: StreamEventType,
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StreamPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecutionResult>,
}

impl StreamEvent {
    pub fn new(kind: StreamEventType, data: impl Into<String>) -> Self {
        StreamEvent {
            kind,
            data: data.into(),
            phase: Some(StreamPhase::Code),
            result: None,
        }
    }
}
