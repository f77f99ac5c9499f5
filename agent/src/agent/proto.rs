//! The agent's side of the stdio protocol: requests read from stdin, events written to stdout,
//! one JSON object per line each (the engine's side is docker/src/agent.rs).

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `{"op":"run"}`: one program, in a new process (or the pre-started interpreter it fits).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunRequest {
    pub(crate) argv: Vec<String>,
    #[serde(default)]
    pub(crate) cwd: Option<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) stdin: Option<String>,
    #[serde(default)]
    pub(crate) files: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) code_path: Option<String>,
    #[serde(default)]
    pub(crate) code: Option<String>,
    #[serde(flatten)]
    pub(crate) limits: JobLimits,
    /// Keep stdin open for `stdin` requests until one says `eof` (a WebSocket client typing).
    #[serde(default)]
    pub(crate) live_stdin: bool,
    /// A python program gets isol8's matplotlib backend and a display channel on fd 3.
    #[serde(default)]
    pub(crate) display: bool,
}

/// `{"op":"cell"}`: code for the session's long-lived interpreter (its state persists).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CellRequest {
    pub(crate) runtime: String,
    #[serde(default)]
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) stdin: Option<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) cwd: Option<String>,
    #[serde(default)]
    pub(crate) files: BTreeMap<String, String>,
    #[serde(flatten)]
    pub(crate) limits: JobLimits,
}

/// The limits and output files of a run or cell. They come with every request: their defaults
/// are the engine's, never the agent's.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobLimits {
    #[serde(default)]
    pub(crate) output_paths: Vec<String>,
    pub(crate) timeout_ms: u64,
    pub(crate) max_output: u64,
    pub(crate) max_file_bytes: u64,
    /// All output files together: they come back in one answer.
    pub(crate) max_files_total: u64,
}

/// How to pre-start the next run's interpreter: the command line, working directory, start
/// environment and display channel of a default run of its runtime (see `waiting.rs`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Template {
    pub(crate) runtime: String,
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: String,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) display: bool,
}

/// Every request, by its `op`.
#[derive(Debug)]
pub(crate) enum Request {
    Run(Box<RunRequest>),
    Cell(Box<CellRequest>),
    Stdin { data: Vec<u8>, eof: bool },
    Signal(String),
    Reset(Option<Template>),
    Prestart(Template),
    Ping,
    Write { path: String, data: Vec<u8> },
    Read { path: String, max_bytes: u64 },
}

/// A request that cannot be read. A malformed run or cell still gets a `done` (the engine waits
/// for one); anything else gets an `error`.
#[derive(Debug)]
pub(crate) struct BadRequest {
    pub(crate) is_job: bool,
    pub(crate) why: String,
}

fn field<T: serde::de::DeserializeOwned>(value: Value, op: &str) -> Result<T, String> {
    serde_json::from_value(value).map_err(|err| format!("bad {op} request: {err}"))
}

fn bytes(value: Option<&Value>, what: &str) -> Result<Vec<u8>, String> {
    match value.and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(text) => B64
            .decode(text)
            .map_err(|err| format!("{what} is not base64: {err}")),
    }
}

impl Request {
    pub(crate) fn parse(line: &[u8]) -> Result<Request, BadRequest> {
        let value: Value = serde_json::from_slice(line).map_err(|err| BadRequest {
            is_job: false,
            why: format!("a request is not JSON: {err}"),
        })?;
        let op = value
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let is_job = op == "run" || op == "cell";
        let text = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let parsed = match op.as_str() {
            "run" => field(value.clone(), "run").map(|r| Request::Run(Box::new(r))),
            "cell" => field(value.clone(), "cell").map(|r| Request::Cell(Box::new(r))),
            "stdin" => bytes(value.get("data"), "stdin data").map(|data| Request::Stdin {
                data,
                eof: value.get("eof").and_then(Value::as_bool).unwrap_or(false),
            }),
            "signal" => Ok(Request::Signal(text("signal"))),
            "reset" => match value.get("prestart") {
                None | Some(Value::Null) => Ok(Request::Reset(None)),
                // A template that cannot be read costs the pre-start, never the reset.
                Some(template) => Ok(Request::Reset(
                    field(template.clone(), "reset")
                        .inspect_err(|why| eprintln!("isol8-agent: no pre-start: {why}"))
                        .ok(),
                )),
            },
            "prestart" => field(value.clone(), "prestart").map(Request::Prestart),
            "ping" => Ok(Request::Ping),
            "write" => bytes(value.get("data"), "file data").map(|data| Request::Write {
                path: text("path"),
                data,
            }),
            "read" => Ok(Request::Read {
                path: text("path"),
                max_bytes: value.get("maxBytes").and_then(Value::as_u64).unwrap_or(0),
            }),
            other => Err(format!("unknown op {other:?}")),
        };
        parsed.map_err(|why| BadRequest { is_job, why })
    }
}

/// Writes one event line to stdout (the attach stream), whole.
pub(crate) fn emit(event: &Value) {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    // A failed write means the engine is gone; the closed stdin ends the agent next.
    let _ = std::io::stdout().lock().write_all(&line);
}

pub(crate) fn emit_ready() {
    emit(&json!({"ev": "ready"}));
}

/// Program output on stream 1 or 2.
pub(crate) fn emit_out(stream: u8, data: &[u8]) {
    emit(&json!({"ev": "out", "s": stream, "d": B64.encode(data)}));
}

pub(crate) fn emit_error(why: &str) {
    emit(&json!({"ev": "error", "error": why}));
}

/// The `done` of a run or cell that never started.
pub(crate) fn emit_not_started(why: &str) {
    emit(
        &json!({"ev": "done", "exitCode": 1, "status": "error", "durationMs": 0,
        "truncated": false, "files": {}, "error": why}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Request, BadRequest> {
        Request::parse(line.as_bytes())
    }

    #[test]
    fn a_run_needs_its_limits_and_gets_a_done_when_it_lacks_them() {
        let full = r#"{"op":"run","argv":["python3","x.py"],"timeoutMs":1000,"maxOutput":10,
            "maxFileBytes":10,"maxFilesTotal":20,"outputPaths":["a"],"liveStdin":true}"#;
        let Ok(Request::Run(run)) = parse(full) else {
            panic!("a full run request parses");
        };
        assert_eq!(run.argv, ["python3", "x.py"]);
        assert_eq!(run.limits.output_paths, ["a"]);
        assert_eq!(run.limits.max_files_total, 20);
        assert!(run.live_stdin && !run.display);
        let bad = parse(r#"{"op":"run","argv":["python3"]}"#).unwrap_err();
        assert!(bad.is_job, "a malformed run still gets a done");
        assert!(bad.why.contains("timeoutMs"), "{}", bad.why);
    }

    #[test]
    fn other_requests_parse_by_op_and_unknown_ones_are_named() {
        assert!(matches!(
            parse(r#"{"op":"reset"}"#),
            Ok(Request::Reset(None))
        ));
        let with =
            r#"{"op":"reset","prestart":{"runtime":"python","argv":["python3"],"cwd":"/sandbox"}}"#;
        assert!(matches!(parse(with), Ok(Request::Reset(Some(t))) if t.runtime == "python"));
        let Ok(Request::Stdin { data, eof }) = parse(r#"{"op":"stdin","data":"aGk=","eof":true}"#)
        else {
            panic!("stdin parses");
        };
        assert_eq!((data.as_slice(), eof), (&b"hi"[..], true));
        let bad = parse(r#"{"op":"launch"}"#).unwrap_err();
        assert!(!bad.is_job);
        assert_eq!(bad.why, r#"unknown op "launch""#);
        assert!(parse("not json").unwrap_err().why.contains("not JSON"));
        let bad = parse(r#"{"op":"write","path":"/sandbox/a","data":"%%"}"#).unwrap_err();
        assert!(bad.why.contains("not base64"), "{}", bad.why);
    }
}
