//! `isol8 run`: turns flags into an execution request and runs it through the embedded server
//! (local) or a remote one (`--host`), printing output as it arrives.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use isol8::Client;
use isol8_api::{
    BufferTag, ExecuteBody, ExecutionOptions, ExecutionRequest, ExecutionStatus, FileData,
    NetworkFilter, NetworkMode, NodeBuffer, Runtime, SessionId, StreamEvent, StreamEventType,
};
use isol8_server::{AppState, ServerConfig};

use super::images::{connect_engine, Progress};
use super::sessions::{expire_local, use_local};
use crate::error::{fail, CliError, CliResult};
use crate::output;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").args(["file", "eval", "cmd", "url", "github", "gist"]))]
pub(crate) struct RunArgs {
    /// File to run; the runtime comes from its extension unless --runtime is given. Without a
    /// file, -e, --cmd or a remote source, the code is read from standard input.
    file: Option<PathBuf>,
    /// Code to run [default runtime: python].
    #[arg(short = 'e', long = "eval", value_name = "CODE")]
    eval: Option<String>,
    /// A shell command, run with `bash -c` in the runtime's image [default runtime: bash].
    #[arg(long, value_name = "COMMAND")]
    cmd: Option<String>,
    /// python, node, bun, deno or bash [default: from the file's or URL's extension; python for
    /// -e and standard input; bash for --cmd].
    #[arg(short, long)]
    runtime: Option<String>,
    /// Code the server fetches from this URL (its remoteCode policy decides what it may fetch).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Code from GitHub: owner/repo/ref/path/to/file (raw.githubusercontent.com).
    #[arg(long, value_name = "OWNER/REPO/REF/PATH")]
    github: Option<String>,
    /// Code from a GitHub gist: gistId/file.ext (gist.githubusercontent.com).
    #[arg(long, value_name = "ID/FILE")]
    gist: Option<String>,
    /// SHA-256 (hex) the fetched code must have (--url, --github, --gist).
    #[arg(long, value_name = "SHA256")]
    hash: Option<String>,
    /// Let the server fetch code over plain http:// (where its policy permits it).
    #[arg(long)]
    allow_insecure_code_url: bool,
    /// Shell commands run before the code, in the same sandbox; a value naming an existing file
    /// is replaced by its contents. Repeatable; joined with newlines.
    #[arg(long = "setup", value_name = "COMMAND|FILE")]
    setup: Vec<String>,
    /// Working directory, /sandbox or inside it [default: /sandbox].
    #[arg(long, value_name = "DIR")]
    workdir: Option<String>,
    /// Copy this folder's files (recursively; not .git, node_modules, __pycache__, .venv, venv,
    /// .tox) into the sandbox: DIR/a/b.txt lands at /sandbox/a/b.txt.
    #[arg(long, value_name = "DIR")]
    files: Option<PathBuf>,
    /// Data for the program's standard input [default: none, the program reads end-of-file].
    #[arg(long, value_name = "DATA")]
    stdin: Option<String>,
    /// Stream this terminal's or pipe's standard input to the program as it arrives (over GET
    /// /execute/ws). Ctrl-C sends SIGINT to the program; a second Ctrl-C quits, killing the run.
    #[arg(short = 'i', long, conflicts_with_all = ["stdin", "no_stream"])]
    interactive: bool,
    /// Wait for the whole result instead of streaming output as it is produced.
    #[arg(long)]
    no_stream: bool,
    /// Network: none, host, or filtered (only hosts matching --allow) [default: the server's
    /// defaultNetwork, none; filtered with --install].
    #[arg(long, value_name = "MODE")]
    net: Option<NetworkMode>,
    /// Regex of hostnames the program may reach in filtered mode. Repeatable [default: none
    /// reachable].
    #[arg(long = "allow", value_name = "REGEX")]
    allow: Vec<String>,
    /// Regex of hostnames refused in filtered mode (wins over --allow). Repeatable.
    #[arg(long = "deny", value_name = "REGEX")]
    deny: Vec<String>,
    /// Package to make available before the run (a custom image holding it, else installed at
    /// the start through the filtered proxy). Repeatable. Without --net this selects filtered
    /// networking with the runtime's package registry allowed.
    #[arg(long = "install", value_name = "PACKAGE")]
    install: Vec<String>,
    /// Print the network requests the program made (filtered mode) on stderr.
    #[arg(long)]
    log_network: bool,
    /// Time limit in milliseconds [default: the server's defaults.timeoutMs, 30000].
    #[arg(long, value_name = "MS")]
    timeout: Option<u64>,
    /// Memory limit, e.g. 512m or 1g; no swap [default: the server's, 512m].
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU cores [default: the server's, 1].
    #[arg(long, value_name = "CORES")]
    cpu: Option<f64>,
    /// Processes and threads [default: the server's, 64].
    #[arg(long, value_name = "N")]
    pids_limit: Option<u64>,
    /// Bytes of output kept per stream [default: the server's, 1048576].
    #[arg(long, value_name = "BYTES")]
    max_output: Option<u64>,
    /// Size of the /sandbox tmpfs [default: the server's, 512m].
    #[arg(long, value_name = "SIZE")]
    sandbox_size: Option<String>,
    /// Size of the /tmp tmpfs [default: the server's, 256m].
    #[arg(long, value_name = "SIZE")]
    tmp_size: Option<String>,
    /// KEY=VALUE, set in the sandbox and masked as *** in all output. Repeatable.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    secrets: Vec<String>,
    /// KEY=VALUE environment variable. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Also write stdout to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Run in this image instead of the runtime's default: one of isol8's (e.g. from `isol8
    /// build`), or locally any image on the engine (never pulled; the runtime's interpreter must be
    /// in it); with --host, what the server's allowedImages allow.
    #[arg(long)]
    image: Option<String>,
    /// Keep the container after the run for inspection and print its id.
    #[arg(long)]
    persist: bool,
    /// Run in a session whose state (variables, files, packages) later runs continue; prints the
    /// session id to pass as --session-id.
    #[arg(long)]
    persistent: bool,
    /// The session to run in (created on first use; implies --persistent).
    #[arg(long, value_name = "NAME")]
    session_id: Option<String>,
    /// A remote isol8 server, e.g. http://host:3000 [default: a server started in this process
    /// on loopback].
    #[arg(long, value_name = "URL")]
    host: Option<String>,
    /// API key for --host.
    #[arg(long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

/// How `run` hands output over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `POST /execute/stream`: output is printed as it is produced.
    Stream,
    /// `POST /execute`: everything is printed at the end.
    Wait,
    /// `GET /execute/ws`: output as in `Stream`, and this process's stdin and Ctrl-C reach the
    /// program as they come.
    Interactive,
}

fn parse_pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{flag} \"{item}\" must look like KEY=VALUE")),
        })
        .collect()
}

/// What the run executes, as the user named it.
enum Source {
    Code { code: String, file: Option<PathBuf> },
    Command(String),
    Remote(String),
}

/// `--github owner/repo/ref/path/to/file` → its raw.githubusercontent.com URL.
fn github_url(spec: &str) -> Result<String, String> {
    let parts: Vec<&str> = spec.trim_matches('/').split('/').collect();
    if parts.len() < 4 || parts.iter().any(|p| p.is_empty()) {
        return Err("--github format must be owner/repo/ref/path/to/file".into());
    }
    Ok(format!(
        "https://raw.githubusercontent.com/{}",
        parts.join("/")
    ))
}

/// `--gist gistId/file.ext` → its gist.githubusercontent.com raw URL.
fn gist_url(spec: &str) -> Result<String, String> {
    match spec.trim_matches('/').split('/').collect::<Vec<_>>()[..] {
        [id, file] if !id.is_empty() && !file.is_empty() => Ok(format!(
            "https://gist.githubusercontent.com/{id}/raw/{file}"
        )),
        _ => Err("--gist format must be gistId/file.ext".into()),
    }
}

fn source(args: &RunArgs) -> Result<Source, String> {
    if let Some(cmd) = &args.cmd {
        return Ok(Source::Command(cmd.clone()));
    }
    let remote = match (&args.url, &args.github, &args.gist) {
        (Some(url), _, _) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!(
                    "--url \"{url}\" must be an http:// or https:// URL"
                ));
            }
            Some(url.clone())
        }
        (_, Some(spec), _) => Some(github_url(spec)?),
        (_, _, Some(spec)) => Some(gist_url(spec)?),
        _ => None,
    };
    if let Some(url) = remote {
        return Ok(Source::Remote(url));
    }
    if args.hash.is_some() || args.allow_insecure_code_url {
        return Err(
            "--hash and --allow-insecure-code-url go with --url, --github or --gist".into(),
        );
    }
    match (&args.eval, &args.file) {
        (Some(code), _) => Ok(Source::Code {
            code: code.clone(),
            file: None,
        }),
        (None, Some(path)) => {
            let code = std::fs::read_to_string(path)
                .map_err(|_| format!("File not found: {}", path.display()))?;
            Ok(Source::Code {
                code,
                file: Some(path.clone()),
            })
        }
        (None, None) => {
            if args.interactive {
                return Err(
                    "-i gives standard input to the program: name the code with a file, \
                     -e, --cmd or --url"
                        .into(),
                );
            }
            if std::io::stdin().is_terminal() {
                return Err(
                    "no code given: pass a file, -e <code>, --cmd <command>, or pipe code on stdin"
                        .into(),
                );
            }
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .map_err(|e| format!("cannot read code from stdin: {e}"))?;
            Ok(Source::Code { code, file: None })
        }
    }
}

/// The extension of the last path segment of `url` (query and fragment ignored).
fn url_extension(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_string())
}

/// `--setup` values: a value naming an existing file is that file's contents; joined by newlines.
fn setup_script(values: &[String]) -> Result<Option<String>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    let parts = values
        .iter()
        .map(|v| match std::path::Path::new(v).is_file() {
            true => std::fs::read_to_string(v).map_err(|e| format!("--setup {v}: {e}")),
            false => Ok(v.clone()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(parts.join("\n")))
}

/// Folders `--files` never copies: version control, dependencies and caches a sandbox rebuilds.
const SKIPPED_DIRS: [&str; 6] = [
    ".git",
    "node_modules",
    "__pycache__",
    ".venv",
    "venv",
    ".tox",
];

/// `--files DIR`: every text file under `dir` (skipping [`SKIPPED_DIRS`]) as `/sandbox/<rel>`.
fn sandbox_files(dir: &std::path::Path) -> Result<BTreeMap<String, FileData>, String> {
    if !dir.is_dir() {
        return Err(format!(
            "--files path is not a directory: {}",
            dir.display()
        ));
    }
    let mut files = BTreeMap::new();
    let walk = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || !(e.file_type().is_dir()
                    && SKIPPED_DIRS.contains(&e.file_name().to_string_lossy().as_ref()))
        });
    for entry in walk {
        let entry = entry.map_err(|e| format!("--files: {e}"))?;
        // Symlinks to files are followed; symlinked folders are not entered.
        if !entry.path().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| format!("--files: {e}"))?;
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // Text as text; anything else as a Node Buffer, whose bytes are written exactly.
        match std::fs::read(entry.path()) {
            Ok(bytes) => {
                let content = match String::from_utf8(bytes) {
                    Ok(text) => FileData::Text(text),
                    Err(not_text) => FileData::Buffer(NodeBuffer {
                        kind: BufferTag::Buffer,
                        data: not_text.into_bytes(),
                    }),
                };
                files.insert(format!("/sandbox/{}", rel.join("/")), content);
            }
            Err(e) => return Err(format!("--files: {}: {e}", entry.path().display())),
        }
    }
    Ok(files)
}

fn build_body(args: &RunArgs) -> Result<ExecuteBody, String> {
    let source = source(args)?;
    let extension = match &source {
        Source::Code {
            file: Some(path), ..
        } => path.extension().map(|e| e.to_string_lossy().to_string()),
        Source::Remote(url) => url_extension(url),
        _ => None,
    };
    let runtime = match (&args.runtime, &source, &extension) {
        (Some(name), _, _) => name
            .parse::<Runtime>()
            .map_err(|e| format!("{e}. Use --runtime to specify."))?,
        (None, Source::Command(_), _) => Runtime::Bash,
        (None, Source::Code { file: None, .. }, _) => Runtime::Python,
        (None, _, Some(ext)) => Runtime::from_extension(ext).ok_or_else(|| {
            format!("Cannot detect the runtime of \".{ext}\" files. Use --runtime to specify.")
        })?,
        (None, Source::Remote(_), None) => {
            return Err(
                "Cannot detect the runtime from the URL path. Use --runtime to specify.".into(),
            )
        }
        (
            None,
            Source::Code {
                file: Some(path), ..
            },
            None,
        ) => {
            return Err(format!(
                "Cannot detect the runtime of {}. Use --runtime to specify.",
                path.display()
            ))
        }
    };
    if let Some(hash) = &args.hash {
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "--hash \"{hash}\" must be a SHA-256 in hex (64 characters)"
            ));
        }
    }
    let (code, cmd, code_url) = match source {
        Source::Code { code, .. } => (Some(code), None, None),
        Source::Command(cmd) => (None, Some(cmd), None),
        Source::Remote(url) => (None, None, Some(url)),
    };
    let remote = code_url.is_some();
    let request = ExecutionRequest {
        runtime,
        code,
        cmd,
        code_url,
        code_hash: args.hash.clone(),
        allow_insecure_code_url: (remote && args.allow_insecure_code_url).then_some(true),
        stdin: args.stdin.clone(),
        timeout_ms: args.timeout,
        env: parse_pairs("--env", &args.env)?,
        file_extension: extension.map(|e| format!(".{e}")),
        files: match &args.files {
            Some(dir) => sandbox_files(dir)?,
            None => BTreeMap::new(),
        },
        install_packages: args.install.clone(),
        setup_script: setup_script(&args.setup)?,
        workdir: args.workdir.clone(),
        ..Default::default()
    };
    // --install needs a way to the package registry: filtered networking, unless --net says otherwise.
    let network = match args.net {
        None if !args.install.is_empty() => {
            eprintln!("[INFO] --install without --net: using filtered networking");
            Some(NetworkMode::Filtered)
        }
        explicit => explicit,
    };
    let network_filter = (!args.allow.is_empty() || !args.deny.is_empty()).then(|| NetworkFilter {
        whitelist: args.allow.clone(),
        blacklist: args.deny.clone(),
    });
    let options = ExecutionOptions {
        network,
        network_filter,
        log_network: args.log_network.then_some(true),
        memory_limit: args.memory.clone(),
        cpu_limit: args.cpu,
        pids_limit: args.pids_limit,
        max_output_size: args.max_output,
        sandbox_size: args.sandbox_size.clone(),
        tmp_size: args.tmp_size.clone(),
        secrets: parse_pairs("--secret", &args.secrets)?,
        image: args.image.clone(),
        persist: args.persist.then_some(true),
        ..Default::default()
    };
    Ok(ExecuteBody {
        request,
        options: Some(options),
        session_id: session_id(args)?,
    })
}

/// The session a run names: --session-id, or a fresh name for --persistent. Checked here too,
/// not only by the server: the id also names a file under ~/.isol8/sessions.
fn session_id(args: &RunArgs) -> Result<Option<SessionId>, String> {
    let id = match (&args.session_id, args.persistent) {
        (Some(id), _) => id.clone(),
        (None, true) => format!("cli-{}", random_hex(6)),
        (None, false) => return Ok(None),
    };
    SessionId::parse(id).map(Some).map_err(|e| e.to_string())
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a server in this process on loopback with a random key, for local runs, and returns a
/// client of it. It is never stopped gracefully: when this process exits its attach connections
/// close, and Docker stops and removes those containers itself (stdin-once + auto-remove), so the
/// user does not wait for container removals. Kept containers and sessions are not of that kind.
pub(crate) async fn start_embedded(runtime: Runtime) -> Result<Client, CliError> {
    start_embedded_for(Some(runtime)).await
}

/// `start_embedded`, building `runtime`'s image first when given (`None`: the call needs none
/// built, e.g. a session archive).
pub(crate) async fn start_embedded_for(runtime: Option<Runtime>) -> Result<Client, CliError> {
    let mut config = ServerConfig {
        pool_size: 0,
        ..ServerConfig::load_user().map_err(fail)?.0
    };
    // The user at the terminal is the operator: filtered networking (rules they give) is theirs,
    // and so is fetching the code they name with --url (https and public addresses only, unless
    // their own config says more).
    if !config.allowed_networks.contains(&NetworkMode::Filtered) {
        config.allowed_networks.push(NetworkMode::Filtered);
    }
    config.remote_code.enabled = true;
    // …and so is every image on their own engine (`--image python:3.12`), hardened the same.
    config.allowed_images = vec!["*".to_string()];
    let engine = connect_engine(&config).await?;
    // The first local run on a machine builds the runtime's image. Idle local sessions expire
    // meanwhile: both are Docker round trips on a cold start's path.
    let expired = expire_local(
        &engine,
        Duration::from_millis(config.session_idle_timeout_ms),
    );
    let built = async {
        let Some(runtime) = runtime else {
            return Ok(());
        };
        let progress = Progress::new(false);
        let built = engine
            .build_images(&[runtime], false, &|p| progress.report(p))
            .await;
        progress.abandon();
        built.map(drop)
    };
    let ((), built) = tokio::join!(expired, built);
    built.map_err(fail)?;
    let key = random_hex(32);
    // Sessions outlive this process: the next `isol8 run --session-id` continues them.
    let state = AppState::new(engine, config, key.clone())
        .map_err(fail)?
        .with_local_sessions();
    let (base, _serving) = isol8_server::serve_loopback(state, std::future::pending())
        .await
        .map_err(fail)?;
    Ok(Client::new(base, key))
}

pub(crate) async fn run(args: RunArgs) -> CliResult {
    let body = match build_body(&args) {
        Ok(b) => b,
        Err(e) => return Err(fail(e)),
    };
    if let Some(id) = &body.session_id {
        eprintln!("[INFO] Session ID: {id}");
    }
    // Held until this run ends (see `use_local`).
    let _turn = match (&body.session_id, &args.host) {
        (Some(id), None) => use_local(id),
        _ => None,
    };
    let client = match &args.host {
        Some(host) => {
            let key = match super::login::resolve_key(host, args.key.clone()) {
                Ok(key) => key,
                Err(e) => return Err(fail(e)),
            };
            Client::new(host.clone(), key)
        }
        None => {
            // A run in an image the user names needs isol8's runtime image built only for the
            // proxy of a filtered run.
            let needs_runtime_image = body
                .options
                .as_ref()
                .is_none_or(|o| o.image.is_none() || o.network == Some(NetworkMode::Filtered));
            start_embedded_for(needs_runtime_image.then_some(body.request.runtime)).await?
        }
    };
    if args.interactive {
        // Ctrl-C is the program's here (see `interactive`).
        return execute(&client, &body, &args).await;
    }
    let outcome = tokio::select! {
        code = execute(&client, &body, &args) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("[WARN] interrupted; the run was killed");
            Ok(ExitCode::from(130))
        }
    };
    outcome
}

async fn execute(client: &Client, body: &ExecuteBody, args: &RunArgs) -> CliResult {
    let mut out_file = match &args.out {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some(f),
            Err(e) => return Err(fail(format!("cannot write {}: {e}", path.display()))),
        },
        None => None,
    };
    let mut write_stdout = |text: &str| {
        if let Some(f) = out_file.as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
        output::write_stdout(text.as_bytes());
    };
    let mode = match (args.interactive, args.no_stream) {
        (true, _) => Mode::Interactive,
        (false, true) => Mode::Wait,
        (false, false) => Mode::Stream,
    };
    // `error`: why a run in error ended, when the stream said it (the wait mode's stderr holds it).
    let (status, exit_code, container, error) = if mode == Mode::Wait {
        let result = match client.execute(body).await {
            Ok(r) => r,
            Err(e) => return Err(fail(e)),
        };
        write_stdout(&result.stdout);
        for bundle in result.results.iter().flatten() {
            write_stdout(&result_text(bundle));
        }
        eprint!("{}", result.stderr);
        print_network_logs(args, &result);
        (result.status, result.exit_code, result.container_id, None)
    } else {
        let mut printer = Printer {
            write_stdout: &mut write_stdout,
            summary: None,
            last_error: None,
        };
        let ended = if mode == Mode::Interactive {
            interactive(client, body, &mut printer).await
        } else {
            match client.execute_stream(body).await {
                Ok(events) => {
                    let mut events = Box::pin(events);
                    loop {
                        match events.next().await {
                            Some(Ok(event)) => printer.print(event),
                            Some(Err(e)) => break Err(fail(e)),
                            None => break Ok(()),
                        }
                    }
                }
                Err(e) => Err(fail(e)),
            }
        };
        ended?;
        match printer.summary {
            Some(r) => {
                print_network_logs(args, &r);
                (r.status, r.exit_code, r.container_id, printer.last_error)
            }
            // A run refused before it started (policy, capacity) is one error event on the
            // WebSocket, where the SSE route would have answered with an error status.
            None => {
                return Err(fail(
                    printer
                        .last_error
                        .unwrap_or_else(|| "the stream ended without a result".into()),
                ))
            }
        }
    };
    if args.persist {
        eprintln!("[INFO] container kept: {container} (remove it with `docker rm -f {container}` or `isol8 cleanup`)");
    }
    let reason = match status {
        ExecutionStatus::Completed => None,
        ExecutionStatus::Timeout => {
            Some("timed out; the whole process tree was killed".to_string())
        }
        ExecutionStatus::MemoryLimit => Some("killed: memory limit exceeded".to_string()),
        ExecutionStatus::OutputLimit => {
            Some("stopped: output limit reached, output was cut".to_string())
        }
        ExecutionStatus::Killed => Some("killed".to_string()),
        ExecutionStatus::Error => Some(error.unwrap_or_else(|| "the sandbox failed".to_string())),
    };
    if let Some(reason) = reason {
        eprintln!("[ERR] {reason}");
    }
    let code = if status == ExecutionStatus::Completed {
        exit_code
    } else if exit_code == 0 {
        1
    } else {
        exit_code
    };
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

/// Prints stream events as they arrive, the same for the SSE stream and the WebSocket.
struct Printer<'a, W: FnMut(&str)> {
    write_stdout: &'a mut W,
    /// The final `result` event's summary.
    summary: Option<isol8_api::ExecutionResult>,
    /// The last `error` event's message.
    last_error: Option<String>,
}

impl<W: FnMut(&str)> Printer<'_, W> {
    fn print(&mut self, event: StreamEvent) {
        match event.kind {
            StreamEventType::Stdout => (self.write_stdout)(&event.data),
            StreamEventType::Stderr => eprint!("{}", event.data),
            StreamEventType::Result => self.summary = event.result,
            StreamEventType::Display => {
                if let Ok(bundle) = serde_json::from_str(&event.data) {
                    (self.write_stdout)(&result_text(&bundle));
                }
            }
            StreamEventType::Error => self.last_error = Some(event.data),
            // Network events are printed from the result, once, with --log-network.
            StreamEventType::Exit | StreamEventType::Network => {}
        }
    }
}

/// What the CLI sends on a WebSocket run besides the request.
#[derive(Debug)]
enum Input {
    /// Text from this process's stdin; `None` at its end.
    Stdin(Option<String>),
    Signal(&'static str),
}

/// `run -i`: the run over `GET /execute/ws`, with this process's stdin streamed to the program
/// and Ctrl-C sent to it as SIGINT; a second Ctrl-C returns at once with status 130 (the socket
/// closes as the process exits, which kills the run).
async fn interactive<W: FnMut(&str)>(
    client: &Client,
    body: &ExecuteBody,
    printer: &mut Printer<'_, W>,
) -> CliResult<()> {
    // Registered before the run starts, so no Ctrl-C falls between the default action (which
    // would kill this process without telling the program) and the loop below.
    let mut interrupts = Interrupts::new().map_err(fail)?;
    let (mut input, mut events) = client.execute_ws(body).await.map_err(fail)?;
    // Input for the writer task, in order; bounded, so a fast pipe waits for the socket.
    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<Input>(16);
    read_stdin_into(input_tx.clone());
    // The writer task: the only sender on the socket after the request. It ends when the
    // socket fails (the event stream then says why) or when this function drops it.
    let writer = tokio::spawn(async move {
        while let Some(next) = input_rx.recv().await {
            let sent = match next {
                Input::Stdin(Some(text)) => input.stdin(&text).await,
                Input::Stdin(None) => input.stdin_eof().await,
                Input::Signal(name) => input.signal(name).await,
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let _writer = tokio_util::task::AbortOnDropHandle::new(writer);
    let mut interrupted = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => printer.print(event),
                Some(Err(e)) => return Err(fail(e)),
                None => return Ok(()),
            },
            _ = interrupts.recv() => {
                if interrupted {
                    eprintln!("[WARN] interrupted; the run was killed");
                    return Err(CliError::Exit(ExitCode::from(130)));
                }
                interrupted = true;
                // Behind stdin already queued, as a terminal's ^C comes after what was typed.
                let _ = input_tx.send(Input::Signal("SIGINT")).await;
                eprintln!("[INFO] SIGINT sent to the program; Ctrl-C again to quit");
            }
        }
    }
}

/// Ctrl-C (SIGINT) as a stream: every one is seen, also those that arrive while the previous is
/// handled.
struct Interrupts {
    #[cfg(unix)]
    signals: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Self> {
        Ok(Interrupts {
            #[cfg(unix)]
            signals: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        self.signals.recv().await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reads this process's stdin on a thread of its own (a terminal gives a line per read, a pipe
/// what is there) and sends it on as text, `None` at its end. The thread is detached: it may
/// block in `read` after the run ended, and the process exits without waiting for it (a tokio
/// blocking task would hold the runtime's shutdown).
fn read_stdin_into(input: tokio::sync::mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        // Bytes of a UTF-8 character that a read split, kept for the next read.
        let mut pending = Vec::new();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            pending.extend_from_slice(&buf[..n]);
            let text = take_text(&mut pending);
            if !text.is_empty() && input.blocking_send(Input::Stdin(Some(text))).is_err() {
                return;
            }
        }
        if !pending.is_empty() {
            let rest = String::from_utf8_lossy(&pending).into_owned();
            let _ = input.blocking_send(Input::Stdin(Some(rest)));
        }
        let _ = input.blocking_send(Input::Stdin(None));
    });
}

/// The text in `pending`, leaving an incomplete last character there for the next read. Bytes
/// that are not UTF-8 become U+FFFD (the protocol's stdin is text).
fn take_text(pending: &mut Vec<u8>) -> String {
    match std::str::from_utf8(pending) {
        Ok(text) => {
            let text = text.to_string();
            pending.clear();
            text
        }
        Err(e) if e.error_len().is_none() => {
            let valid = e.valid_up_to();
            let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
            pending.drain(..valid);
            text
        }
        Err(_) => String::from_utf8_lossy(&std::mem::take(pending)).into_owned(),
    }
}

/// A code-interpreter result as a REPL shows it: its text on stdout; what a terminal cannot show
/// (an image, HTML) named on stderr.
fn result_text(bundle: &isol8_api::MimeBundle) -> String {
    let rich: Vec<&str> = bundle
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "text/plain")
        .collect();
    if !rich.is_empty() {
        eprintln!("[result also as {}]", rich.join(", "));
    }
    match bundle.get("text/plain").and_then(|v| v.as_str()) {
        Some(text) => format!("{text}\n"),
        None => String::new(),
    }
}

/// `--log-network`: one stderr line per request the program made through the filtered proxy.
fn print_network_logs(args: &RunArgs, result: &isol8_api::ExecutionResult) {
    if !args.log_network {
        return;
    }
    // Whatever the program asked for is shown escaped: a hostname may carry terminal control
    // sequences.
    let shown = |text: &str| text.escape_debug().to_string();
    for entry in result.network_logs.iter().flatten() {
        let verdict = match entry.action {
            isol8_api::NetworkAction::Allow => "ALLOW",
            isol8_api::NetworkAction::Block => "BLOCK",
        };
        let reason = entry
            .reason
            .as_deref()
            .map(|r| format!(" ({})", shown(r)))
            .unwrap_or_default();
        eprintln!(
            "[NET] {} {verdict} {} {}{}{reason} {}ms",
            shown(&entry.timestamp),
            shown(&entry.method),
            shown(&entry.host),
            shown(entry.path.as_deref().unwrap_or("")),
            entry.duration_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::take_text;

    #[test]
    fn stdin_text_keeps_a_character_split_between_reads_whole() {
        let euro = "€".as_bytes();
        let mut pending = vec![b'a', euro[0], euro[1]];
        assert_eq!(take_text(&mut pending), "a");
        assert_eq!(pending, &euro[..2]);
        pending.push(euro[2]);
        assert_eq!(take_text(&mut pending), "€");
        assert!(pending.is_empty());
        let mut pending = vec![b'x', 0xff, b'y'];
        assert_eq!(take_text(&mut pending), "x\u{fffd}y");
        assert!(pending.is_empty());
    }
}
