//! Turning an API request into a validated run plan: runtime, program, inputs, limits.

use std::collections::BTreeMap;
use std::time::Duration;

use isol8_api::{ExecutionOptions, ExecutionRequest, NetworkMode, Runtime};

use crate::agent::Prestart;
use crate::custom::PackageSet;
use crate::error::{Error, Result};
use crate::limits::{parse_size, Limits};

pub const SANDBOX_DIR: &str = "/sandbox";
const WRITABLE_ROOTS: [&str; 2] = ["/sandbox", "/tmp"];
/// Files one run may ask back (`outputPaths`); their total size is capped by the limits.
const MAX_OUTPUT_PATHS: usize = 64;

/// What the sandbox runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Program {
    /// Source code written to a file and run with the runtime's interpreter.
    Code { source: String, extension: String },
    /// A shell command run with `bash -c`.
    Command(String),
}

/// A fully validated run: everything the engine needs, nothing left to check.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub runtime: Runtime,
    /// An image to use instead of the runtime's own (a custom image with packages).
    pub image: Option<String>,
    /// Packages the program needs; served by a custom image that holds them.
    pub packages: PackageSet,
    pub program: Program,
    pub setup_script: Option<String>,
    pub stdin: Option<Vec<u8>>,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    /// Absolute, normalized paths inside `/sandbox` or `/tmp`.
    pub files: BTreeMap<String, Vec<u8>>,
    pub output_paths: Vec<String>,
    pub workdir: String,
    pub limits: Limits,
    pub network: NetworkMode,
    /// `filtered` mode: hostnames (regexes, full match) the program may reach, and ones it may not
    /// (deny wins; an empty allow list allows nothing).
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    /// Return the proxy's request log with the result.
    pub log_network: bool,
    /// Package registry hostnames, allowed in `filtered` mode only while packages are installed at
    /// the start of the run (set by the server from its config).
    pub registry_hosts: Vec<String>,
    /// Identity of the API key the run belongs to; containers are never reused across owners.
    pub owner: String,
    /// Keep the container after the run (for inspection); it is never reused.
    pub persist: bool,
    /// When a kept container may be removed (Unix seconds, its `isol8.expires` label; set by the
    /// server from `persist.maxAgeMs`). `None`: only a cleanup removes it.
    pub persist_expires_at: Option<u64>,
    /// The program's stdin stays open for live input (`RunControl::Stdin`) until its end is sent.
    pub live_stdin: bool,
    /// Values masked in output besides the secrets' (a session's earlier secret values).
    pub masked: Vec<String>,
}

impl RunPlan {
    /// Validates `request` and `options` against `defaults` (the limits used where the client is silent).
    /// Policy maximums are the server's business and are checked before this.
    pub fn from_request(
        request: &ExecutionRequest,
        options: &ExecutionOptions,
        defaults: &Limits,
        owner: &str,
    ) -> Result<RunPlan> {
        let invalid = |msg: String| Error::InvalidRequest(msg);
        if request.code_url.is_some() {
            // The server fetches remote code (under its policy) and passes it on as `code`.
            return Err(invalid(
                "codeUrl: remote code is fetched by the server; the engine runs only code or cmd"
                    .into(),
            ));
        }
        let program = match (&request.code, &request.cmd) {
            (Some(_), Some(_)) => return Err(invalid("give either code or cmd, not both".into())),
            (None, None) => return Err(invalid("nothing to run: give code or cmd".into())),
            (Some(code), None) if code.trim().is_empty() => {
                return Err(invalid("nothing to run: code is empty".into()))
            }
            (None, Some(cmd)) if cmd.trim().is_empty() => {
                return Err(invalid("nothing to run: cmd is empty".into()))
            }
            (Some(code), None) => Program::Code {
                source: code.clone(),
                extension: code_extension(request.runtime, request.file_extension.as_deref())?,
            },
            (None, Some(cmd)) => Program::Command(cmd.clone()),
        };

        let workdir = match request.workdir.as_deref() {
            None | Some("") => SANDBOX_DIR.to_string(),
            Some(w) => confine(SANDBOX_DIR, w, &[SANDBOX_DIR]).ok_or_else(|| {
                invalid(format!(
                    "workdir \"{w}\": working directory must be inside /sandbox"
                ))
            })?,
        };

        let limits = merge_limits(request, options, defaults)?;

        let mut files = BTreeMap::new();
        for (path, content) in &request.files {
            let abs = confine(&workdir, path, &WRITABLE_ROOTS).ok_or_else(|| {
                invalid(format!("files: \"{path}\" must be inside /sandbox or /tmp"))
            })?;
            if content.len() as u64 > limits.max_file_bytes {
                return Err(invalid(format!(
                    "files: \"{path}\" is {} bytes; the limit is {} bytes",
                    content.len(),
                    limits.max_file_bytes
                )));
            }
            files.insert(abs, content.clone().into_bytes());
        }
        if request.output_paths.len() > MAX_OUTPUT_PATHS {
            return Err(invalid(format!(
                "outputPaths: {} paths; at most {MAX_OUTPUT_PATHS} may be asked for",
                request.output_paths.len()
            )));
        }
        for path in &request.output_paths {
            if path.trim().is_empty() || path.contains('\0') {
                return Err(invalid(format!("outputPaths: \"{path}\" is not a path")));
            }
        }

        check_env("env", &request.env)?;
        check_env("secrets", &options.secrets)?;
        let packages = PackageSet::parse(request.runtime, &request.install_packages)?;
        let network = options.network.unwrap_or_default();
        let filter = options.network_filter.clone().unwrap_or_default();
        for pattern in filter.whitelist.iter().chain(&filter.blacklist) {
            regex::Regex::new(pattern).map_err(|e| {
                invalid(format!(
                    "networkFilter: \"{pattern}\" is not a valid regex: {e}"
                ))
            })?;
        }
        if network == NetworkMode::Filtered && options.persist == Some(true) {
            return Err(invalid(
                "persist is not available with network \"filtered\": the run's network and proxy end with it".into(),
            ));
        }
        if let Some(image) = &options.image {
            if image.trim().is_empty() || image.contains(char::is_whitespace) {
                return Err(invalid(format!("image \"{image}\" is not an image name")));
            }
        }

        Ok(RunPlan {
            runtime: request.runtime,
            image: options.image.clone(),
            packages,
            program,
            setup_script: request
                .setup_script
                .clone()
                .filter(|s| !s.trim().is_empty()),
            stdin: request.stdin.clone().map(String::into_bytes),
            env: request.env.clone(),
            secrets: options.secrets.clone(),
            files,
            output_paths: request.output_paths.clone(),
            workdir,
            limits,
            network,
            allow_hosts: filter.whitelist,
            deny_hosts: filter.blacklist,
            log_network: options.log_network.unwrap_or(false),
            registry_hosts: Vec::new(),
            owner: owner.to_string(),
            persist: options.persist.unwrap_or(false),
            persist_expires_at: None,
            live_stdin: false,
            masked: Vec::new(),
        })
    }

    /// The interpreter command line for this plan, given where the code file was put.
    pub fn argv(&self, code_path: &str) -> Vec<String> {
        match &self.program {
            Program::Command(cmd) => vec!["bash".into(), "-c".into(), cmd.clone()],
            Program::Code { .. } => code_argv(self.runtime, code_path),
        }
    }

    /// Environment added for every run of this runtime (before the caller's env and secrets).
    pub fn runtime_env(&self) -> BTreeMap<String, String> {
        runtime_env(self.runtime)
    }
}

/// The command line that runs the code file at `code_path` with `runtime`'s interpreter.
fn code_argv(runtime: Runtime, code_path: &str) -> Vec<String> {
    let args: &[&str] = match runtime {
        Runtime::Python => &["python3"],
        Runtime::Node => &["node"],
        Runtime::Bun => &["bun"],
        Runtime::Deno => &["deno", "run", "-A"],
        Runtime::Bash => &["bash"],
    };
    args.iter()
        .map(|s| s.to_string())
        .chain([code_path.to_string()])
        .collect()
}

fn runtime_env(runtime: Runtime) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if runtime == Runtime::Python {
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
    }
    env
}

/// Where a run's code goes: a file in its working directory.
pub(crate) fn code_path(workdir: &str, extension: &str) -> String {
    format!("{workdir}/.isol8_main.{extension}")
}

/// Whether a one-shot program of `runtime` gets a display channel (isol8's matplotlib backend).
pub(crate) fn has_display(runtime: Runtime) -> bool {
    runtime == Runtime::Python
}

/// What a warm sandbox of the runtime named `runtime_label` pre-starts for its next run: the
/// interpreter of a default run (the code file in `/sandbox` with the runtime's extension, the
/// runtime's environment), where a run can be handed to it exactly as a normal start would run
/// it: python and node. bun and deno read configuration files of the working directory while
/// they start (`.env`, `bunfig.toml`, `deno.json`), which the run's own files may bring, and
/// bash starts in about a millisecond, so they start the normal way.
pub(crate) fn prestart_template(runtime_label: &str) -> Option<Prestart> {
    let runtime: Runtime = runtime_label.parse().ok()?;
    if !matches!(runtime, Runtime::Python | Runtime::Node) {
        return None;
    }
    let extension = code_extension(runtime, None).ok()?;
    Some(Prestart {
        runtime: runtime.as_str(),
        argv: code_argv(runtime, &code_path(SANDBOX_DIR, &extension)),
        cwd: SANDBOX_DIR.to_string(),
        env: runtime_env(runtime),
        display: has_display(runtime),
    })
}

fn merge_limits(
    request: &ExecutionRequest,
    options: &ExecutionOptions,
    defaults: &Limits,
) -> Result<Limits> {
    let mut limits = defaults.clone();
    if let Some(ms) = request.timeout_ms.or(options.timeout_ms) {
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(m) = &options.memory_limit {
        limits.memory_bytes = parse_size("memoryLimit", m)?;
    }
    if let Some(c) = options.cpu_limit {
        limits.cpus = c;
    }
    if let Some(p) = options.pids_limit {
        limits.pids = p;
    }
    if let Some(o) = options.max_output_size {
        limits.max_output_bytes = o;
    }
    if let Some(s) = &options.sandbox_size {
        limits.sandbox_bytes = parse_size("sandboxSize", s)?;
    }
    if let Some(s) = &options.tmp_size {
        limits.tmp_bytes = parse_size("tmpSize", s)?;
    }
    limits.validate()?;
    Ok(limits)
}

fn code_extension(runtime: Runtime, requested: Option<&str>) -> Result<String> {
    let default = match runtime {
        Runtime::Python => "py",
        Runtime::Node => "mjs",
        Runtime::Bun => "ts",
        Runtime::Deno => "ts",
        Runtime::Bash => "sh",
    };
    let ext = requested
        .map(|e| e.trim().trim_start_matches('.'))
        .filter(|e| !e.is_empty())
        .unwrap_or(default);
    if ext.len() > 16 || !ext.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::InvalidRequest(format!(
            "fileExtension \"{ext}\" must be letters and digits only, like .py or .cjs"
        )));
    }
    Ok(ext.to_string())
}

/// A hostname pattern for `filtered` mode must compile.
pub fn check_host_pattern(pattern: &str) -> std::result::Result<(), String> {
    regex::Regex::new(pattern)
        .map(drop)
        .map_err(|e| format!("\"{pattern}\" is not a valid regex: {e}"))
}

fn check_env(field: &str, vars: &BTreeMap<String, String>) -> Result<()> {
    for (key, value) in vars {
        let key_ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(Error::InvalidRequest(format!(
                "{field}: \"{key}\" is not a valid variable name (letters, digits and _, not starting with a digit)"
            )));
        }
        if value.contains('\0') {
            return Err(Error::InvalidRequest(format!(
                "{field}: the value of {key} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// Resolves `path` against `base` lexically and returns it only when it stays inside one of `roots`.
pub fn confine(base: &str, path: &str, roots: &[&str]) -> Option<String> {
    if path.contains('\0') {
        return None;
    }
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    let normalized = format!("/{}", parts.join("/"));
    roots
        .iter()
        .any(|root| normalized == *root || normalized.starts_with(&format!("{root}/")))
        .then_some(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: Option<&str>, cmd: Option<&str>) -> ExecutionRequest {
        ExecutionRequest {
            runtime: Runtime::Python,
            code: code.map(str::to_string),
            cmd: cmd.map(str::to_string),
            ..Default::default()
        }
    }

    fn plan(req: &ExecutionRequest) -> Result<RunPlan> {
        RunPlan::from_request(req, &ExecutionOptions::default(), &Limits::default(), "k")
    }

    #[test]
    fn exactly_one_of_code_and_cmd() {
        assert!(plan(&request(Some("print(1)"), None)).is_ok());
        assert!(plan(&request(None, Some("echo 1"))).is_ok());
        let both = plan(&request(Some("print(1)"), Some("echo 1"))).unwrap_err();
        assert!(both.to_string().contains("not both"));
        let blank_other = plan(&request(Some("print(1)"), Some(""))).unwrap_err();
        assert!(blank_other.to_string().contains("not both"));
        let none = plan(&request(Some("   "), None)).unwrap_err();
        assert!(none.to_string().contains("empty"));
    }

    #[test]
    fn workdir_must_stay_in_sandbox() {
        let mut req = request(Some("x"), None);
        req.workdir = Some("/sandbox/../etc".into());
        assert!(plan(&req)
            .unwrap_err()
            .to_string()
            .contains("inside /sandbox"));
        req.workdir = Some("sub/dir".into());
        assert_eq!(plan(&req).unwrap().workdir, "/sandbox/sub/dir");
    }

    #[test]
    fn confine_normalizes_and_refuses_escapes() {
        let roots = ["/sandbox", "/tmp"];
        assert_eq!(
            confine("/sandbox", "a/./b/../c", &roots).as_deref(),
            Some("/sandbox/a/c")
        );
        assert_eq!(
            confine("/sandbox", "/tmp/x", &roots).as_deref(),
            Some("/tmp/x")
        );
        assert_eq!(confine("/sandbox", "../etc/passwd", &roots), None);
        assert_eq!(confine("/sandbox", "/sandboxx", &roots), None);
        assert_eq!(confine("/sandbox", "/../../", &roots), None);
    }

    #[test]
    fn bad_sizes_and_limits_are_invalid_requests() {
        let req = request(Some("x"), None);
        let opts = ExecutionOptions {
            memory_limit: Some("12xb".into()),
            ..Default::default()
        };
        let err = RunPlan::from_request(&req, &opts, &Limits::default(), "k").unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
        let opts = ExecutionOptions {
            pids_limit: Some(0),
            ..Default::default()
        };
        assert!(RunPlan::from_request(&req, &opts, &Limits::default(), "k").is_err());
    }

    #[test]
    fn bad_env_names_are_refused() {
        let mut req = request(Some("x"), None);
        req.env.insert("A=B".into(), "1".into());
        assert!(plan(&req).is_err());
    }

    #[test]
    fn oversized_files_are_refused() {
        let mut req = request(Some("x"), None);
        req.files
            .insert("big.txt".into(), "x".repeat(11 * 1024 * 1024).into());
        assert!(plan(&req).unwrap_err().to_string().contains("limit"));
    }
}
