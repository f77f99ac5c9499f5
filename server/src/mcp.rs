//! `/mcp`: the Model Context Protocol tools agents call (`run_code`, `run_command`, `write_file`,
//! `read_file`, `list_sessions`, `close_session`), served over Streamable HTTP with rmcp.
//!
//! Every call runs as the key of the HTTP request that carried it (the `Caller` the auth layer put
//! into the request), through the same functions as the REST routes: sessions made here are the
//! ones `GET /sessions` shows for that key. The service is stateless (no MCP session is kept
//! between HTTP requests): all state lives in isol8's own sessions, named by `sessionId`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::Engine as _;
use isol8_api::{
    ErrorCode, ExecuteBody, ExecutionRequest, ExecutionResult, ExecutionStatus, Runtime, SessionId,
};
use isol8_docker::{Engine, RunEvent};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::{execute, sessions};
use crate::state::AppState;

/// Base64 characters of one image put into a tool result; larger ones are left out (MCP clients
/// drop or cut big images) and only `structuredContent` has them.
pub const MAX_IMAGE_BASE64: usize = 1 << 20;
/// Base64 characters of all images of one tool result together.
pub const MAX_IMAGES_BASE64: usize = 4 << 20;
/// MIME types sent as MCP image content (the ones MCP clients show).
const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The `/mcp` endpoint over `state`. It sits behind the bearer-key layer like every route, so
/// no host or origin allow-list is needed: a request without the key never reaches it.
pub fn service(state: AppState) -> StreamableHttpService<Tools, NeverSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(state.config.max_body_bytes)
        .disable_allowed_hosts();
    let tools = Tools { state };
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// The MCP server handler: one per HTTP request (cheap: it only holds the shared state).
#[derive(Debug, Clone)]
pub struct Tools {
    state: AppState,
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("isol8", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "isol8 runs code in locked-down sandboxes. Use run_code with a sessionId to keep \
                 variables, files and installed packages between calls (a python session works \
                 like a notebook: the last expression's value, display() and matplotlib figures \
                 come back as results). Without a sessionId every call starts from nothing.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let parts = context.extensions.get::<Parts>();
        let caller = parts
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("the request carries no caller", None))?;
        let request_id = parts
            .and_then(|parts| parts.headers.get("x-request-id"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let args = Value::Object(request.arguments.unwrap_or_default());
        let name = request.name.as_ref();
        let answer = match name {
            "run_code" => self.run_code(&caller, args, &context).await,
            "run_command" => self.run_command(&caller, args, &context).await,
            "write_file" => self.write_file(&caller, args, &context).await,
            "read_file" => self.read_file(&caller, args).await,
            "list_sessions" => parse::<NoArgs>(name, args)
                .map(|_| session_list(sessions::list(&self.state, &caller))),
            "close_session" => self.close_session(&caller, args),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool \"{other}\""),
                    None,
                ))
            }
        };
        Ok(answer
            .unwrap_or_else(|error| refused(&error, &request_id))
            .into())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RunCode {
    code: String,
    #[serde(default)]
    runtime: Option<Runtime>,
    #[serde(default)]
    session_id: Option<SessionId>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    packages: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RunCommand {
    cmd: String,
    #[serde(default)]
    runtime: Option<Runtime>,
    #[serde(default)]
    session_id: Option<SessionId>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    stdin: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Text,
    Base64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WriteFile {
    session_id: SessionId,
    path: String,
    content: String,
    #[serde(default)]
    encoding: Encoding,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReadFile {
    session_id: SessionId,
    path: String,
    #[serde(default)]
    encoding: Option<Encoding>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CloseSession {
    session_id: SessionId,
}

/// The tool's arguments, or a 400 naming what is wrong (serde names the field).
fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, ApiError> {
    serde_json::from_value(args)
        .map_err(|e| ApiError::bad_request(format!("invalid arguments for {tool}: {e}")))
}

impl Tools {
    async fn run_code(
        &self,
        caller: &Caller,
        args: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let args: RunCode = parse("run_code", args)?;
        let body = ExecuteBody {
            request: ExecutionRequest {
                runtime: args.runtime.unwrap_or_default(),
                code: Some(args.code),
                timeout_ms: args.timeout_ms,
                stdin: args.stdin,
                files: args.files.into_iter().map(|(p, t)| (p, t.into())).collect(),
                install_packages: args.packages,
                ..Default::default()
            },
            options: None,
            session_id: args.session_id,
        };
        self.run(caller, &body, context)
            .await
            .map(|r| run_result(&r))
    }

    async fn run_command(
        &self,
        caller: &Caller,
        args: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let args: RunCommand = parse("run_command", args)?;
        let runtime = args
            .runtime
            .or_else(|| self.session_runtime(caller, args.session_id.as_deref()))
            .unwrap_or_default();
        let body = ExecuteBody {
            request: ExecutionRequest {
                runtime,
                cmd: Some(args.cmd),
                timeout_ms: args.timeout_ms,
                stdin: args.stdin,
                ..Default::default()
            },
            options: None,
            session_id: args.session_id,
        };
        self.run(caller, &body, context)
            .await
            .map(|r| run_result(&r))
    }

    /// The runtime of the caller's session `id`, when it exists.
    fn session_runtime(&self, caller: &Caller, id: Option<&str>) -> Option<Runtime> {
        let id = id?;
        self.state
            .sessions
            .get(&caller.owner, id)
            .ok()
            .map(|s| s.runtime)
    }

    /// Runs `body` through the route's own path (policy, plan, slots, sessions). With a progress
    /// token, output is also sent as progress notifications as it arrives. A cancelled request
    /// drops the events, which kills the run.
    async fn run(
        &self,
        caller: &Caller,
        body: &ExecuteBody,
        context: &RequestContext<RoleServer>,
    ) -> Result<ExecutionResult, ApiError> {
        let events = execute::start(&self.state, caller, &HeaderMap::new(), body, false).await?;
        let (progress, notifier) = match context.meta.get_progress_token() {
            Some(token) => {
                let (tx, task) = progress_notifier(context.peer.clone(), token);
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let observe = |event: &RunEvent| {
            let message = match event {
                RunEvent::Stdout { text, .. } => text.clone(),
                RunEvent::Stderr { text, .. } => format!("[stderr] {text}"),
                _ => return,
            };
            if let Some(progress) = &progress {
                // A client slow to take notifications loses some; the result has everything.
                let _ = progress.try_send(message);
            }
        };
        let result = tokio::select! {
            result = Engine::collect_observed(events, observe) => result?,
            () = context.ct.cancelled() => {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    ErrorCode::Cancelled,
                    "the client cancelled the call; the run was stopped",
                ))
            }
        };
        // Every notification goes out before the result: clients drop progress that comes after.
        drop(progress);
        if let Some(notifier) = notifier {
            let _ = notifier.await;
        }
        self.state.metrics.record_execution(&result);
        Ok(result)
    }

    async fn write_file(
        &self,
        caller: &Caller,
        args: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let args: WriteFile = parse("write_file", args)?;
        let data = match args.encoding {
            Encoding::Text => args.content.into_bytes(),
            Encoding::Base64 => B64.decode(args.content.trim()).map_err(|e| {
                ApiError::bad_request(format!("content is not base64 (encoding is base64): {e}"))
            })?,
        };
        // Like every session call, the first one creates the session (here with a no-op run).
        if self
            .session_runtime(caller, Some(&args.session_id))
            .is_none()
        {
            let body = ExecuteBody {
                request: ExecutionRequest {
                    cmd: Some("true".into()),
                    ..Default::default()
                },
                options: None,
                session_id: Some(args.session_id.clone()),
            };
            let started = self.run(caller, &body, context).await?;
            if started.status != ExecutionStatus::Completed {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::SandboxFailed,
                    format!(
                        "could not start session \"{}\": {}",
                        args.session_id, started.stderr
                    ),
                ));
            }
        }
        sessions::write(&self.state, caller, &args.session_id, &args.path, &data).await?;
        let text = format!(
            "wrote {} bytes to {} in session \"{}\"",
            data.len(),
            args.path,
            args.session_id
        );
        Ok(with_structured(
            CallToolResult::success(vec![ContentBlock::text(text)]),
            json!({"sessionId": args.session_id, "path": args.path, "bytes": data.len()}),
        ))
    }

    async fn read_file(&self, caller: &Caller, args: Value) -> Result<CallToolResult, ApiError> {
        let args: ReadFile = parse("read_file", args)?;
        let data = sessions::read(&self.state, caller, &args.session_id, &args.path).await?;
        let text = match args.encoding {
            Some(Encoding::Text) => Some(String::from_utf8(data.clone()).map_err(|_| {
                ApiError::bad_request(format!(
                    "{} is not UTF-8 text; read it with encoding \"base64\"",
                    args.path
                ))
            })?),
            Some(Encoding::Base64) => None,
            None => String::from_utf8(data.clone()).ok(),
        };
        let structured = match &text {
            Some(text) => json!({"path": args.path, "encoding": "text", "content": text}),
            None => json!({"path": args.path, "encoding": "base64", "content": B64.encode(&data)}),
        };
        let mut content = vec![ContentBlock::text(match &text {
            Some(text) => text.clone(),
            None => format!(
                "{}: {} bytes, not UTF-8 text; base64:\n{}",
                args.path,
                data.len(),
                B64.encode(&data)
            ),
        })];
        if let Some(mime) = image_type(&args.path) {
            let encoded = B64.encode(&data);
            if encoded.len() <= MAX_IMAGE_BASE64 {
                content = vec![
                    ContentBlock::text(format!("{}: {} bytes, {mime}", args.path, data.len())),
                    ContentBlock::image(encoded, mime),
                ];
            }
        }
        Ok(with_structured(
            CallToolResult::success(content),
            structured,
        ))
    }

    fn close_session(&self, caller: &Caller, args: Value) -> Result<CallToolResult, ApiError> {
        let args: CloseSession = parse("close_session", args)?;
        let existed = sessions::close(&self.state, caller, &args.session_id)?;
        let text = match existed {
            true => format!("session \"{}\" closed", args.session_id),
            false => format!("there was no session \"{}\"", args.session_id),
        };
        Ok(with_structured(
            CallToolResult::success(vec![ContentBlock::text(text)]),
            json!({"sessionId": args.session_id, "closed": existed}),
        ))
    }
}

/// Sends each message it is given to the client as a progress notification (the message is the
/// text), in order. The task ends when the returned sender is dropped (the run's end) and the
/// messages queued before are sent; the caller waits for it before answering.
fn progress_notifier(
    peer: Peer<RoleServer>,
    token: ProgressToken,
) -> (mpsc::Sender<String>, tokio::task::JoinHandle<()>) {
    // Bounded: output past what the client takes is dropped from the notifications.
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let task = tokio::spawn(async move {
        let mut sent = 0u32;
        while let Some(message) = rx.recv().await {
            sent += 1;
            let mut note = ProgressNotificationParam::new(token.clone(), f64::from(sent));
            note.message = Some(message);
            // A client that stopped listening to notifications still gets its result.
            let _ = peer.notify_progress(note).await;
        }
    });
    (tx, task)
}

fn with_structured(mut result: CallToolResult, structured: Value) -> CallToolResult {
    result.structured_content = Some(structured);
    result
}

/// A refused call (bad arguments, policy, capacity, a missing session): a tool error whose text
/// says why, so the model can correct itself.
fn refused(error: &ApiError, request_id: &str) -> CallToolResult {
    let message = error.client_message(request_id);
    let text = format!(
        "refused: {message} (HTTP {}, {})",
        error.status.as_u16(),
        error.code
    );
    with_structured(
        CallToolResult::error(vec![ContentBlock::text(text)]),
        json!({"error": message, "code": error.code}),
    )
}

fn session_list(list: Vec<isol8_api::SessionInfo>) -> CallToolResult {
    let text = if list.is_empty() {
        "no sessions".to_string()
    } else {
        list.iter()
            .map(|s| {
                format!(
                    "{} ({}, last used {}{})",
                    s.id,
                    s.runtime,
                    s.last_accessed_at,
                    if s.is_active { ", running" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(text)]),
        json!({"sessions": list}),
    )
}

fn image_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "gif" => Some("image/gif"),
        "webp" => Some("image/webp"),
        _ => None,
    }
}

fn push_section(text: &mut String, title: &str, body: &str) {
    text.push_str(&format!("--- {title} ---\n"));
    text.push_str(body);
    if !body.ends_with('\n') {
        text.push('\n');
    }
}

/// A run as an MCP tool result: one text block (stdout, stderr, each result's text, the status
/// line), then each image result as image content within the caps, and the whole result as
/// `structuredContent`. Anything but a clean exit is `isError`.
pub fn run_result(result: &ExecutionResult) -> CallToolResult {
    let mut text = String::new();
    if !result.stdout.is_empty() {
        push_section(&mut text, "stdout", &result.stdout);
    }
    if !result.stderr.is_empty() {
        push_section(&mut text, "stderr", &result.stderr);
    }
    let mut images = Vec::new();
    let mut left_out = Vec::new();
    let mut image_total = 0usize;
    for (i, bundle) in result.results.iter().flatten().enumerate() {
        let mut kinds: Vec<&str> = bundle.keys().map(String::as_str).collect();
        kinds.retain(|k| *k != "text/plain");
        let plain = bundle.get("text/plain").and_then(Value::as_str);
        let image = IMAGE_TYPES
            .iter()
            .find_map(|mime| Some((*mime, bundle.get(*mime)?.as_str()?)));
        let mut title = format!("result {}", i + 1);
        if !kinds.is_empty() {
            title.push_str(&format!(
                " (also {} in structuredContent.results[{i}])",
                kinds.join(", ")
            ));
        }
        push_section(&mut text, &title, plain.unwrap_or(""));
        if let Some((mime, data)) = image {
            let size = data.len();
            if size > MAX_IMAGE_BASE64 {
                left_out.push(format!(
                    "result {} ({mime}, {} KiB of base64, over the {} KiB cap per image)",
                    i + 1,
                    size / 1024,
                    MAX_IMAGE_BASE64 / 1024
                ));
            } else if image_total + size > MAX_IMAGES_BASE64 {
                left_out.push(format!(
                    "result {} ({mime}, {} KiB of base64, past the {} KiB cap for all images)",
                    i + 1,
                    size / 1024,
                    MAX_IMAGES_BASE64 / 1024
                ));
            } else {
                image_total += size;
                images.push(ContentBlock::image(data, mime));
            }
        }
    }
    let mut status = format!(
        "{}, exit code {}, {} ms",
        result.status.as_str(),
        result.exit_code,
        result.duration_ms
    );
    if result.truncated {
        status.push_str(", output truncated");
    }
    if result.session_restarted == Some(true) {
        status.push_str(", session restarted (earlier state is gone)");
    }
    text.push_str(&format!("--- {status} ---\n"));
    if !left_out.is_empty() {
        text.push_str(&format!(
            "Images left out of this answer: {}. structuredContent.results holds every result whole.\n",
            left_out.join("; ")
        ));
    }
    let failed = result.status != ExecutionStatus::Completed || result.exit_code != 0;
    let mut content = vec![ContentBlock::text(text)];
    content.extend(images);
    let mut answer = match failed {
        true => CallToolResult::error(content),
        false => CallToolResult::success(content),
    };
    answer.structured_content = serde_json::to_value(result).ok();
    answer
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => unreachable!("tool schemas are objects"),
    }
}

/// The tools with their input schemas and hints. The same list is served over stdio by
/// `isol8 mcp` (it relays to this endpoint).
pub fn tools() -> Vec<Tool> {
    let runtime = json!({"type": "string", "enum": ["python", "node", "bun", "deno", "bash"],
        "description": "Language runtime. Default python."});
    let session = json!({"type": "string", "pattern": SessionId::PATTERN,
        "description": "Run in this persistent session (created on first use): variables, \
            functions, files and the working directory persist between calls. Omit for a fresh \
            sandbox that is discarded after the call."});
    let timeout = json!({"type": "integer", "minimum": 1,
        "description": "Time limit in milliseconds (default: the server's, usually 30000)."});
    let stdin = json!({"type": "string", "description": "Text for the program's standard input."});
    let session_required = json!({"type": "string", "pattern": SessionId::PATTERN,
        "description": "The session (as given to run_code)."});
    let run_hints = ToolAnnotations::new()
        .read_only(false)
        .destructive(true)
        .idempotent(false)
        .open_world(false);
    vec![
        Tool::new(
            "run_code",
            "Run code in an isolated sandbox (no network) and return its stdout, stderr, exit \
             code and results. In a python session, the value of the last expression, \
             display(obj) calls and matplotlib figures come back as results (images as image \
             content); node, bun and deno sessions return the last expression's value. A \
             non-zero exit or a timeout is reported as an error with the output.",
            schema(json!({
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "The source code to run."},
                    "runtime": runtime,
                    "sessionId": session,
                    "timeoutMs": timeout,
                    "stdin": stdin,
                    "files": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Text files written before the run: path (relative to \
                            /sandbox, or absolute inside it) to content."},
                    "packages": {"type": "array", "items": {"type": "string"},
                        "description": "Packages the code needs (pip or npm names, e.g. \
                            matplotlib); served by an isol8 image that holds them."}
                },
                "required": ["code"],
                "additionalProperties": false
            })),
        )
        .with_title("Run code")
        .with_annotations(run_hints.clone()),
        Tool::new(
            "run_command",
            "Run a shell command (bash -c) in a sandbox, e.g. `ls -la` or `pip install rich` in \
             a session. Returns stdout, stderr and the exit code.",
            schema(json!({
                "type": "object",
                "properties": {
                    "cmd": {"type": "string", "description": "The shell command."},
                    "sessionId": session,
                    "runtime": {"type": "string", "enum": ["python", "node", "bun", "deno", "bash"],
                        "description": "Whose image runs the command: default the session's \
                            runtime, else python."},
                    "timeoutMs": timeout,
                    "stdin": stdin
                },
                "required": ["cmd"],
                "additionalProperties": false
            })),
        )
        .with_title("Run a shell command")
        .with_annotations(run_hints),
        Tool::new(
            "write_file",
            "Write a file into a session's /sandbox (parent folders are created; the session is \
             created if it does not exist yet).",
            schema(json!({
                "type": "object",
                "properties": {
                    "sessionId": session_required,
                    "path": {"type": "string", "description": "Path inside /sandbox (relative to it, or absolute)."},
                    "content": {"type": "string", "description": "The file's content: text, or base64 with encoding \"base64\"."},
                    "encoding": {"type": "string", "enum": ["text", "base64"], "description": "How content is given. Default text."}
                },
                "required": ["sessionId", "path", "content"],
                "additionalProperties": false
            })),
        )
        .with_title("Write a file")
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true)
                .open_world(false),
        ),
        Tool::new(
            "read_file",
            "Read a file from a session's /sandbox. Text comes back as text, other bytes as \
             base64; PNG, JPEG, GIF and WebP files also as an image.",
            schema(json!({
                "type": "object",
                "properties": {
                    "sessionId": session_required,
                    "path": {"type": "string", "description": "Path inside /sandbox."},
                    "encoding": {"type": "string", "enum": ["text", "base64"],
                        "description": "Force text (fails on non-UTF-8) or base64. Default: text when the file is UTF-8, else base64."}
                },
                "required": ["sessionId", "path"],
                "additionalProperties": false
            })),
        )
        .with_title("Read a file")
        .with_annotations(ToolAnnotations::new().read_only(true).open_world(false)),
        Tool::new(
            "list_sessions",
            "List this key's live sessions (id, runtime, last use).",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        )
        .with_title("List sessions")
        .with_annotations(ToolAnnotations::new().read_only(true).open_world(false)),
        Tool::new(
            "close_session",
            "End a session and remove its sandbox; its variables and files are gone.",
            schema(json!({
                "type": "object",
                "properties": {"sessionId": session_required},
                "required": ["sessionId"],
                "additionalProperties": false
            })),
        )
        .with_title("Close a session")
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true)
                .open_world(false),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_with(results: Vec<isol8_api::MimeBundle>, exit_code: i64) -> ExecutionResult {
        ExecutionResult {
            stdout: "hi\n".into(),
            stderr: String::new(),
            exit_code,
            status: ExecutionStatus::Completed,
            duration_ms: 5,
            truncated: false,
            execution_id: "x".into(),
            runtime: Runtime::Python,
            timestamp: "t".into(),
            container_id: "c".into(),
            files: None,
            network_logs: None,
            session_restarted: None,
            session_created: None,
            resource_usage: None,
            results: Some(results),
        }
    }

    fn bundle(value: Value) -> isol8_api::MimeBundle {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn images_past_the_cap_are_left_out_with_a_sentence_and_kept_in_structured_content() {
        let big = "A".repeat(MAX_IMAGE_BASE64 + 4);
        let result = result_with(
            vec![
                bundle(json!({"text/plain": "<Figure 1>", "image/png": "iVBORw0KGgo="})),
                bundle(json!({"text/plain": "<Figure 2>", "image/png": big})),
            ],
            0,
        );
        let answer = run_result(&result);
        assert_eq!(answer.is_error, Some(false));
        let images = answer
            .content
            .iter()
            .filter(|c| matches!(c, ContentBlock::Image(_)))
            .count();
        assert_eq!(images, 1);
        let ContentBlock::Text(text) = &answer.content[0] else {
            panic!("text first")
        };
        assert!(text.text.contains("--- stdout ---\nhi\n"), "{}", text.text);
        assert!(text.text.contains("left out"), "{}", text.text);
        assert!(text.text.contains("result 2 (image/png"), "{}", text.text);
        let structured = answer.structured_content.unwrap();
        assert_eq!(
            structured["results"][1]["image/png"]
                .as_str()
                .unwrap()
                .len(),
            MAX_IMAGE_BASE64 + 4
        );
    }

    #[test]
    fn a_nonzero_exit_is_a_tool_error() {
        let answer = run_result(&result_with(vec![], 3));
        assert_eq!(answer.is_error, Some(true));
        let ContentBlock::Text(text) = &answer.content[0] else {
            panic!("text first")
        };
        assert!(text.text.contains("exit code 3"), "{}", text.text);
    }
}
