//! Execution request, options and result: the body and answer of `POST /execute`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::SessionId;

/// A language runtime a sandbox can run.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    #[default]
    Python,
    Node,
    Bun,
    Deno,
    Bash,
}

impl Runtime {
    pub const ALL: [Runtime; 5] = [
        Runtime::Python,
        Runtime::Node,
        Runtime::Bun,
        Runtime::Deno,
        Runtime::Bash,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Bun => "bun",
            Runtime::Deno => "deno",
            Runtime::Bash => "bash",
        }
    }

    /// The runtime a file extension (with or without the dot) implies, as documented in DESIGN.md.
    pub fn from_extension(ext: &str) -> Option<Runtime> {
        match ext.trim_start_matches('.').to_ascii_lowercase().as_str() {
            "py" => Some(Runtime::Python),
            "js" | "mjs" | "cjs" => Some(Runtime::Node),
            "ts" => Some(Runtime::Bun),
            "mts" => Some(Runtime::Deno),
            "sh" => Some(Runtime::Bash),
            _ => None,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Runtime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown runtime \"{s}\"; expected one of: python, node, bun, deno, bash")
            })
    }
}

/// Network access of a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// Full outbound access (only where the server's policy allows it).
    Host,
    /// Only hosts matching the allow list, through a proxy the server controls.
    Filtered,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Filtered => "filtered",
        }
    }
}

impl FromStr for NetworkMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            "filtered" => Ok(NetworkMode::Filtered),
            _ => Err(format!(
                "unknown network mode \"{s}\"; expected none, host or filtered"
            )),
        }
    }
}

/// Host patterns for `filtered` mode: a host passes when it matches a whitelist regex and no blacklist regex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkFilter {
    #[serde(default)]
    pub whitelist: Vec<String>,
    #[serde(default)]
    pub blacklist: Vec<String>,
}

/// A package specifier: a name with an optional version (`requests==2.32.3`, `lodash@4`, `jq`).
#[derive(ToSchema)]
#[schema(pattern = "^\\s*[A-Za-z0-9@][A-Za-z0-9@._/+:=<>!~^*,\\[\\]-]{0,213}\\s*$")]
#[allow(dead_code)] // a schema only: the field holds plain strings
struct PackageName(String);

/// A file path inside the sandbox.
#[derive(ToSchema)]
#[schema(pattern = "^[^\\u0000]*\\S[^\\u0000]*$")]
#[allow(dead_code)] // a schema only: the field holds plain strings
struct FilePath(String);

/// A count that JSON may spell as a float with no fraction (`1000.0`), as some clients do.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let value: Option<f64> = Option::deserialize(deserializer)?;
    match value {
        None => Ok(None),
        Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= u64::MAX as f64 => Ok(Some(v as u64)),
        Some(v) => Err(serde::de::Error::custom(format!(
            "{v} is not a whole number of at least 0"
        ))),
    }
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"runtime": "python", "code": "print(2 ** 10)"}))]
pub struct ExecutionRequest {
    pub runtime: Runtime,
    /// Source code to run with the runtime's interpreter. Exactly one of `code`, `cmd` and `codeUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "\\S")]
    pub code: Option<String>,
    /// A shell command run with `bash -c` in the runtime's image. Exactly one of `code`, `cmd` and `codeUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "\\S")]
    pub cmd: Option<String>,
    /// Code fetched by the server from this URL and run as `code` would be. Only where the server's
    /// `remoteCode` policy enables it (403 otherwise): https only unless `allowInsecureCodeUrl` and
    /// the policy allow http, allowed hosts only, public addresses only, size-capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "\\S")]
    pub code_url: Option<String>,
    /// sha256 (hex, any case) the code fetched from `codeUrl` must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^\\s*[0-9A-Fa-f]{64}\\s*$")]
    pub code_hash: Option<String>,
    /// Allow an `http://` `codeUrl` (the server's policy must allow the scheme too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure_code_url: Option<bool>,
    /// Accepted for compatibility with the reference client's `agent` runtime, which isol8 does not
    /// have; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_flags: Option<String>,
    /// Time limit in milliseconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_number"
    )]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Environment variables (names: letters, digits and `_`, not starting with a digit).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// File name extension of the code file, e.g. `.cjs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^\\s*\\.?[A-Za-z0-9]{0,16}\\s*$")]
    pub file_extension: Option<String>,
    /// Files written before the run: path (absolute, or relative to `workdir`) to UTF-8 text, or
    /// to a Node Buffer as JSON (`{"type": "Buffer", "data": [104, 105]}`) whose bytes are written exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileData>,
    /// Files read back after the run and returned base64-encoded in `files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(inline, value_type = Vec<FilePath>)]
    pub output_paths: Vec<String>,
    /// Packages the code needs, served by a custom image that holds them (`isol8 build`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(inline, value_type = Vec<PackageName>)]
    pub install_packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_script: Option<String>,
    /// Working directory; must be `/sandbox` or inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// How to run it: limits and sandbox settings. Each may only tighten the server's policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"memoryLimit": "256m", "timeoutMs": 5000}))]
pub struct ExecutionOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_filter: Option<NetworkFilter>,
    /// Memory limit such as `512m` or `1g` (binary multiples, at least 16m); swap is never allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^\\s*[0-9]{1,12}(\\.[0-9]{1,6})?\\s*[kKmMgGtT]?[bB]?\\s*$")]
    pub memory_limit: Option<String>,
    /// CPU cores, e.g. `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01)]
    pub cpu_limit: Option<f64>,
    /// Processes and threads (at least 8).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_number"
    )]
    #[schema(minimum = 8)]
    pub pids_limit: Option<u64>,
    /// Bytes kept per output stream; more is cut and flagged `truncated`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_number"
    )]
    #[schema(minimum = 1)]
    pub max_output_size: Option<u64>,
    /// Size of the `/sandbox` tmpfs, e.g. `512m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^\\s*[0-9]{1,12}(\\.[0-9]{1,6})?\\s*[kKmMgGtT]?[bB]?\\s*$")]
    pub sandbox_size: Option<String>,
    /// Size of the `/tmp` tmpfs, e.g. `256m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^\\s*[0-9]{1,12}(\\.[0-9]{1,6})?\\s*[kKmMgGtT]?[bB]?\\s*$")]
    pub tmp_size: Option<String>,
    /// Environment variables whose values are masked as `***` in all output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// An image to run in instead of the runtime's: one of isol8's (e.g. a custom image from
    /// `isol8 build`), or any image on the engine the server's `allowedImages` patterns match
    /// (403 otherwise, the same answer whether or not it exists; 404 for an allowed one that is
    /// not there: images are never pulled). Every sandbox setting holds in it; the runtime's
    /// interpreter must be on its PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^\\S+$")]
    pub image: Option<String>,
    /// Keep the container after the run for inspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_network: Option<bool>,
    /// Time limit in milliseconds (the request's `timeoutMs` wins when both are given).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_number"
    )]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// The reference client's engine mode. Accepted and ignored: a call is in a session exactly
    /// when it names one (`sessionId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EngineMode>,
    /// The reference client's debug logging. Accepted and ignored: a request cannot change how the
    /// server logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    /// The root filesystem is always read-only; `false` is refused (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_root_fs: Option<bool>,
    /// The seccomp profile is always isol8's strict one; anything else is refused (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityOptions>,
    /// The reference client's audit settings. Accepted and ignored: auditing is the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub audit: Option<serde_json::Map<String, serde_json::Value>>,
    /// The reference client's remote-code policy. The policy is the server's (`remoteCode` in its
    /// config): a disabled one is accepted and ignored, `enabled: true` is refused (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub remote_code: Option<serde_json::Map<String, serde_json::Value>>,
    /// The reference engine's pool strategy. Accepted and ignored (the server's pool is its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_strategy: Option<PoolStrategy>,
    /// The reference engine's pool size (a number or `{clean, dirty}`). Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<PoolSize>,
}

/// The reference engine's `poolSize`: one count, or clean and dirty counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PoolSize {
    Count(u64),
    Split { clean: u64, dirty: u64 },
}

/// The reference client's engine mode (`options.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineMode {
    Ephemeral,
    Persistent,
}

/// The reference engine's pool strategy (`options.poolStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolStrategy {
    Fast,
    Secure,
}

/// `options.security`: only isol8's strict seccomp profile is available.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityOptions {
    /// `strict` (the default and the only value accepted); `unconfined` and `custom` are refused (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// Refused (403): the server never reads a profile a request names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_profile_path: Option<String>,
}

/// The content of one `files` entry: UTF-8 text, or a Node Buffer as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FileData {
    Text(String),
    /// `{"type": "Buffer", "data": [bytes]}`, what `JSON.stringify` makes of a Node Buffer.
    Buffer(NodeBuffer),
}

impl FileData {
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            FileData::Text(text) => text.into_bytes(),
            FileData::Buffer(buffer) => buffer.data,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            FileData::Text(text) => text.len(),
            FileData::Buffer(buffer) => buffer.data.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for FileData {
    fn from(text: String) -> Self {
        FileData::Text(text)
    }
}

impl From<&str> for FileData {
    fn from(text: &str) -> Self {
        FileData::Text(text.to_string())
    }
}

/// A Node Buffer as `JSON.stringify` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeBuffer {
    #[serde(rename = "type")]
    pub kind: BufferTag,
    pub data: Vec<u8>,
}

/// The `type` of a Node Buffer's JSON: always `Buffer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum BufferTag {
    Buffer,
}

/// The body of `POST /execute` and `POST /execute/stream`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"request": {"runtime": "python", "code": "print(2 ** 10)"}}))]
pub struct ExecuteBody {
    pub request: ExecutionRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<ExecutionOptions>,
    /// Run in this session (created on first use): its container and interpreter state persist
    /// between calls. The `X-Isol8-Session` header may carry it instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub session_id: Option<SessionId>,
}

/// One request a `filtered` sandbox made through isol8's proxy (the reference's shape, plus `reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkLogEntry {
    /// When the request was decided (RFC 3339).
    pub timestamp: String,
    /// `CONNECT` for HTTPS, else the HTTP method.
    pub method: String,
    /// The hostname asked for; characters outside printable ASCII are escaped (`\xNN`).
    pub host: String,
    /// The path for plain HTTP; `null` for HTTPS tunnels, whose path the proxy cannot see.
    pub path: Option<String>,
    pub action: NetworkAction,
    /// Why it was refused, or why an allowed request could not connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: u64,
}

/// What the proxy did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum NetworkAction {
    Allow,
    Block,
}

/// What a run used, measured inside its sandbox for this run alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUsage {
    /// CPU time over wall time, in percent of one core (can pass 100 with several cores).
    pub cpu_percent: f64,
    /// Memory in use by the sandbox when the run ended, in MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: f64,
    /// Bytes received on the sandbox's network interfaces (loopback excluded) during the run.
    pub network_bytes_in: u64,
    /// Bytes sent on the sandbox's network interfaces (loopback excluded) during the run.
    pub network_bytes_out: u64,
    /// `peakMemoryBytes` in MiB.
    #[serde(rename = "peakMemoryMB")]
    pub peak_memory_mb: f64,
    /// CPU time (user + system) of every process of the run, in milliseconds.
    pub cpu_time_ms: u64,
    /// The largest resident set of any process of the run, in bytes.
    pub peak_memory_bytes: u64,
}

/// How a run ended; the same value in the result and in the stream's final event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// The program exited by itself (any exit code).
    Completed,
    /// The time limit was reached; the whole process tree was killed.
    Timeout,
    /// The kernel killed the program for exceeding the memory limit.
    MemoryLimit,
    /// The output cap was reached: output past `maxOutputSize` was discarded (`truncated`), and the
    /// program ran on to its own end; `exitCode` is its own. (A run that also times out or runs
    /// out of memory says `timeout` or `memory_limit` instead.)
    OutputLimit,
    /// The run was cancelled (client disconnected or shutdown).
    Killed,
    /// The sandbox failed; see `stderr` or the error message.
    Error,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Timeout => "timeout",
            ExecutionStatus::MemoryLimit => "memory_limit",
            ExecutionStatus::OutputLimit => "output_limit",
            ExecutionStatus::Killed => "killed",
            ExecutionStatus::Error => "error",
        }
    }
}

/// The answer of `POST /execute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"stdout": "1024\n", "stderr": "", "exitCode": 0, "status": "completed",
    "durationMs": 24, "truncated": false, "executionId": "0b6e4f8e-9a53-4a53-9f0e-0d8a3c1e2f00",
    "runtime": "python", "timestamp": "2026-11-29T10:00:00Z", "containerId": "3f2a9c1b7d4e"}))]
pub struct ExecutionResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
    pub status: ExecutionStatus,
    pub duration_ms: u64,
    pub truncated: bool,
    pub execution_id: String,
    pub runtime: Runtime,
    /// When the run started (RFC 3339).
    pub timestamp: String,
    pub container_id: String,
    /// `outputPaths` that existed, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
    /// `filtered` mode with `logNetwork`: every request the program made through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_logs: Option<Vec<NetworkLogEntry>>,
    /// What the run used (CPU, memory, network), for this run alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_usage: Option<ResourceUsage>,
    /// Sessions only: the interpreter had to be restarted during this call (a timeout, or the
    /// interpreter itself ending: a crash, `os._exit`, `process.exit()`, bash's `exit`), so state
    /// from earlier calls is gone. Python's `exit()`/`sys.exit(n)` end the cell, not the
    /// interpreter: the state stays and `exitCode` is `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_restarted: Option<bool>,
    /// Sessions only: this call created the session (its id was unknown, or had expired), so
    /// nothing from earlier calls is there; `false` when it continued an existing one (also one
    /// a restarted server adopted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_created: Option<bool>,
    /// Code-interpreter results, in order: a python cell's last expression, `display()` calls,
    /// matplotlib figures (cells and one-shot python runs), a JavaScript cell's last value. Each is a
    /// MIME bundle in the Jupyter display-data convention. Absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<MimeBundleSchema>>)]
    pub results: Option<Vec<MimeBundle>>,
}

/// One display result: MIME type to data (`text/plain`, `text/html`, `text/markdown`,
/// `image/svg+xml` as text; `image/png`, `image/jpeg` as base64; `application/json` as JSON).
pub type MimeBundle = serde_json::Map<String, serde_json::Value>;

/// A MIME bundle (see `MimeBundle`).
#[derive(ToSchema)]
#[schema(as = MimeBundle, example = json!({"text/plain": "<Figure size 640x480 with 1 Axes>", "image/png": "iVBORw0KGgo..."}))]
#[allow(dead_code)] // a schema only: the field holds JSON maps
struct MimeBundleSchema(BTreeMap<String, serde_json::Value>);
