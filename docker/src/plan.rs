//! Turning an API request into a validated run plan: runtime, program, inputs, limits.

use std::collections::BTreeMap;

use isol8_api::{ExecutionOptions, ExecutionRequest, NetworkMode, Runtime};

use crate::agent::Prestart;
use crate::custom::PackageSet;
use crate::error::{Error, Result};
use crate::limits::{LimitFields, Limits};

pub(crate) const SANDBOX_DIR: &str = "/sandbox";
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
    /// Code at a URL (`codeUrl`): the server fetches it under its remote-code policy, after the
    /// plan passed policy, and replaces this with `Code`. The engine refuses to run it.
    Remote {
        url: String,
        /// The sha256 (hex) the fetched code must have.
        hash: Option<String>,
        /// `http:` allowed for this request (the policy decides whether it may be).
        allow_insecure: bool,
        extension: String,
    },
}

/// What a plan takes where its request is silent, and the server's own network rules: the
/// server's policy, validated once when its config is loaded.
#[derive(Debug, Clone, Default)]
pub struct PlanDefaults {
    pub limits: Limits,
    pub network: NetworkMode,
    /// Hostname regexes every `filtered` run may reach besides the request's own.
    pub network_allow: Vec<String>,
    /// Hostname regexes no `filtered` run may reach, whatever its request allows (deny wins).
    pub network_deny: Vec<String>,
    /// Package registry hostnames per runtime name, opened in `filtered` mode only while
    /// packages are installed.
    pub registry_hosts: BTreeMap<String, Vec<String>>,
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
    /// The one validation pass: `request` and `options` parsed and checked, with `defaults` where
    /// they are silent. The result holds everything the engine needs; policy maximums are the
    /// server's business and are checked on it next.
    pub fn from_request(
        request: &ExecutionRequest,
        options: &ExecutionOptions,
        defaults: &PlanDefaults,
        owner: &str,
    ) -> Result<RunPlan> {
        let invalid = |msg: String| Error::InvalidRequest(msg);
        let program = match (&request.code, &request.cmd, &request.code_url) {
            (_, _, Some(_)) if request.code.is_some() || request.cmd.is_some() => {
                return Err(invalid("give exactly one of code, cmd and codeUrl".into()))
            }
            (None, None, Some(url)) => Program::Remote {
                url: url.clone(),
                hash: request.code_hash.clone(),
                allow_insecure: request.allow_insecure_code_url == Some(true),
                extension: code_extension(request.runtime, request.file_extension.as_deref())?,
            },
            (Some(_), Some(_), _) => {
                return Err(invalid("give either code or cmd, not both".into()))
            }
            (None, None, _) => return Err(invalid("nothing to run: give code or cmd".into())),
            (Some(code), None, _) if code.trim().is_empty() => {
                return Err(invalid("nothing to run: code is empty".into()))
            }
            (None, Some(cmd), _) if cmd.trim().is_empty() => {
                return Err(invalid("nothing to run: cmd is empty".into()))
            }
            (Some(code), None, _) => Program::Code {
                source: code.clone(),
                extension: code_extension(request.runtime, request.file_extension.as_deref())?,
            },
            (None, Some(cmd), _) => Program::Command(cmd.clone()),
        };

        let workdir = match request.workdir.as_deref() {
            None | Some("") => SANDBOX_DIR.to_string(),
            Some(w) => confine(SANDBOX_DIR, w, &[SANDBOX_DIR]).ok_or_else(|| {
                invalid(format!(
                    "workdir \"{w}\": working directory must be inside /sandbox"
                ))
            })?,
        };

        let limits = defaults
            .limits
            .overlay(&LimitFields::of_request(request, options), "")?;

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
        let network = options.network.unwrap_or(defaults.network);
        let mut filter = options.network_filter.clone().unwrap_or_default();
        for pattern in filter.whitelist.iter().chain(&filter.blacklist) {
            check_host_pattern(pattern).map_err(|e| invalid(format!("networkFilter: {e}")))?;
        }
        let mut registry_hosts = Vec::new();
        if network == NetworkMode::Filtered {
            // The server's lists join the request's: its allow rules add, its deny rules win.
            filter
                .whitelist
                .extend(defaults.network_allow.iter().cloned());
            filter
                .blacklist
                .extend(defaults.network_deny.iter().cloned());
            registry_hosts = defaults
                .registry_hosts
                .get(request.runtime.as_str())
                .cloned()
                .unwrap_or_default();
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
            registry_hosts,
            owner: owner.to_string(),
            persist: options.persist.unwrap_or(false),
            persist_expires_at: None,
            live_stdin: false,
            masked: Vec::new(),
        })
    }

    /// Refuses a plan whose code the server has not fetched yet.
    pub(crate) fn check_runnable(&self) -> Result<()> {
        match &self.program {
            Program::Remote { url, .. } => Err(Error::InvalidRequest(format!(
                "codeUrl \"{url}\": remote code is fetched by the server; the engine runs only code or cmd"
            ))),
            _ => Ok(()),
        }
    }

    /// The interpreter command line for this plan, given where the code file was put.
    pub fn argv(&self, code_path: &str) -> Vec<String> {
        match &self.program {
            Program::Command(cmd) => vec!["bash".into(), "-c".into(), cmd.clone()],
            Program::Code { .. } | Program::Remote { .. } => code_argv(self.runtime, code_path),
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
/// it: python, node and bash (whose start, 3 ms here, is most of a warm `echo`). bun and deno
/// read configuration files of the working directory while they start (`.env`, `bunfig.toml`,
/// `deno.json`), which the run's own files may bring, so they start the normal way.
pub(crate) fn prestart_template(runtime_label: &str) -> Option<Prestart> {
    let runtime: Runtime = runtime_label.parse().ok()?;
    if !matches!(runtime, Runtime::Python | Runtime::Node | Runtime::Bash) {
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

/// A hostname pattern for `filtered` mode. The proxy enforces it with Python's `re`; a pattern is
/// accepted only in the subset both dialects read alike: it must compile here (so lookarounds and
/// backreferences, which only `re` has, are refused), and none of the constructs only this crate's
/// dialect has may appear, since `re` reads them as something else (`[[:alpha:]]` as the
/// characters `[:alph`, a deny rule that would then deny nothing).
pub fn check_host_pattern(pattern: &str) -> std::result::Result<(), String> {
    regex::Regex::new(pattern).map_err(|e| format!("\"{pattern}\" is not a valid regex: {e}"))?;
    let refuse = |what: &str| {
        Err(format!(
            "\"{pattern}\": {what} means something else to the proxy's regex dialect (Python re); write it another way"
        ))
    };
    const OUTSIDE: [(&str, &str); 7] = [
        ("\\p", "a Unicode class (\\p)"),
        ("\\P", "a Unicode class (\\P)"),
        ("\\z", "\\z"),
        ("\\<", "a word-start boundary (\\<)"),
        ("\\>", "a word-end boundary (\\>)"),
        ("\\b{", "a special word boundary (\\b{...})"),
        ("[[:", "a POSIX class ([[:name:]])"),
    ];
    // Escapes count whole, so `\\p` (a backslash, then p) is not a Unicode class.
    // Every construct looked for is ASCII: walk bytes, skipping those inside a multi-byte char.
    let bytes = pattern.as_bytes();
    let (mut i, mut in_class) = (0, false);
    while i < bytes.len() {
        let Some(rest) = pattern.get(i..) else {
            i += 1;
            continue;
        };
        if let Some((_, what)) = OUTSIDE.iter().find(|(text, _)| rest.starts_with(text)) {
            return refuse(what);
        }
        if in_class && ["&&", "--", "~~"].iter().any(|op| rest.starts_with(op)) {
            return refuse("a class set operation (&&, --, ~~)");
        }
        if let Some(group) = rest.strip_prefix("(?") {
            let flags: String = group
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if flags.contains(['U', 'R']) {
                return refuse("the U or R flag");
            }
            // `(?i)` anywhere but the start: `re` refuses global flags elsewhere.
            if i > 0 && group[flags.len()..].starts_with(')') {
                return refuse("a flag group not at the start");
            }
        }
        match bytes[i] {
            b'\\' => i += 1,
            b'[' if !in_class => {
                in_class = true;
                // A `]` or `^]` right after the opening bracket is a literal.
                if bytes.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if bytes.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' if in_class => in_class = false,
            _ => {}
        }
        i += 1;
    }
    Ok(())
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
        RunPlan::from_request(
            req,
            &ExecutionOptions::default(),
            &PlanDefaults::default(),
            "k",
        )
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
        let err = RunPlan::from_request(&req, &opts, &PlanDefaults::default(), "k").unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
        let opts = ExecutionOptions {
            pids_limit: Some(0),
            ..Default::default()
        };
        assert!(RunPlan::from_request(&req, &opts, &PlanDefaults::default(), "k").is_err());
    }

    #[test]
    fn the_servers_defaults_fill_what_the_request_leaves_out_and_its_rules_join_the_requests() {
        let defaults = PlanDefaults {
            limits: Limits {
                pids: 32,
                ..Limits::default()
            },
            network: NetworkMode::Filtered,
            network_allow: vec!["^pypi\\.org$".into()],
            network_deny: vec!["^evil\\.example$".into()],
            registry_hosts: BTreeMap::from([(
                "python".to_string(),
                vec!["^files\\.pythonhosted\\.org$".to_string()],
            )]),
        };
        let options = ExecutionOptions {
            network_filter: Some(isol8_api::NetworkFilter {
                whitelist: vec!["^example\\.com$".into()],
                blacklist: vec![],
            }),
            ..Default::default()
        };
        let plan =
            RunPlan::from_request(&request(Some("x"), None), &options, &defaults, "k").unwrap();
        assert_eq!(plan.network, NetworkMode::Filtered);
        assert_eq!(plan.limits.pids, 32);
        assert_eq!(plan.allow_hosts, ["^example\\.com$", "^pypi\\.org$"]);
        assert_eq!(plan.deny_hosts, ["^evil\\.example$"]);
        assert_eq!(plan.registry_hosts, ["^files\\.pythonhosted\\.org$"]);
        let none = ExecutionOptions {
            network: Some(NetworkMode::None),
            ..options
        };
        let plan = RunPlan::from_request(&request(Some("x"), None), &none, &defaults, "k").unwrap();
        assert!(plan.allow_hosts.len() == 1 && plan.registry_hosts.is_empty());
    }

    #[test]
    fn code_url_is_planned_for_the_server_to_fetch_and_excludes_code_and_cmd() {
        let mut req = request(None, None);
        req.code_url = Some("https://example.com/a.py".into());
        req.code_hash = Some("ab".into());
        assert_eq!(
            plan(&req).unwrap().program,
            Program::Remote {
                url: "https://example.com/a.py".into(),
                hash: Some("ab".into()),
                allow_insecure: false,
                extension: "py".into()
            }
        );
        req.code = Some("print(1)".into());
        assert!(plan(&req).unwrap_err().to_string().contains("exactly one"));
    }

    #[test]
    fn host_patterns_must_read_the_same_to_the_proxy() {
        for good in [
            r"^example\.com$",
            r"^xn--bcher-kva\.example$",
            r".*\.pythonhosted\.org",
            r"^(api|www)\.github\.com$",
            r"^[a-z0-9-]+\.internal$",
            r"^[]a]\.x$",
            r"\\p",
            r"(?i)^EXAMPLE\.com$",
            r"^bücher\.example$",
        ] {
            assert_eq!(check_host_pattern(good), Ok(()), "{good}");
        }
        for (bad, named) in [
            (r"^[[:alpha:]]+\.com$", "POSIX class"),
            (r"^\p{L}+\.com$", "Unicode class"),
            (r"^[a-z&&[^x]]\.com$", "set operation"),
            (r"^[a-z--x]\.com$", "set operation"),
            (r"example\.com\z", "\\z"),
            (r"\<example\>", "word-start"),
            (r"(?U)^a+$", "U or R flag"),
            (r"^a(?i)b$", "not at the start"),
            (r"^(?=x)example\.com$", "not a valid regex"),
        ] {
            let err = check_host_pattern(bad).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
        }
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
