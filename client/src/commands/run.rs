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
    ExecuteBody, ExecutionOptions, ExecutionRequest, ExecutionStatus, NetworkFilter, NetworkMode,
    Runtime, StreamEventType,
};
use isol8_server::{AppState, ServerConfig};
use tokio::net::TcpListener;

use super::images::{connect_engine, Progress};
use super::sessions::{expire_local, use_local};
use crate::err;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// File to run; the runtime comes from its extension unless --runtime is given.
    file: Option<PathBuf>,
    /// Code to run.
    #[arg(short = 'e', long = "eval")]
    eval: Option<String>,
    /// python, node, bun, deno or bash.
    #[arg(short, long)]
    runtime: Option<String>,
    /// Data for the program's standard input.
    #[arg(long)]
    stdin: Option<String>,
    /// Wait for the whole result instead of streaming output.
    #[arg(long)]
    no_stream: bool,
    /// Network: none (default), host, or filtered (only hosts matching --allow).
    #[arg(long)]
    net: Option<NetworkMode>,
    /// Regex of hostnames the program may reach in filtered mode. Repeatable.
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// Regex of hostnames refused in filtered mode (wins over --allow). Repeatable.
    #[arg(long = "deny")]
    deny: Vec<String>,
    /// Package to make available before the run. Repeatable. Without --net this selects
    /// filtered networking with the runtime's package registry allowed.
    #[arg(long = "install")]
    install: Vec<String>,
    /// Print the network requests the program made (filtered mode) on stderr.
    #[arg(long)]
    log_network: bool,
    /// Time limit in milliseconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Memory limit, e.g. 512m or 1g.
    #[arg(long)]
    memory: Option<String>,
    /// CPU cores.
    #[arg(long)]
    cpu: Option<f64>,
    #[arg(long)]
    pids_limit: Option<u64>,
    /// Bytes of output kept per stream.
    #[arg(long)]
    max_output: Option<u64>,
    #[arg(long)]
    sandbox_size: Option<String>,
    #[arg(long)]
    tmp_size: Option<String>,
    /// KEY=VALUE, set in the sandbox and masked in all output. Repeatable.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// KEY=VALUE environment variable. Repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Also write stdout to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this image instead of the runtime's.
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
    /// A remote isol8 server, e.g. http://host:3000.
    #[arg(long)]
    host: Option<String>,
    /// API key for --host.
    #[arg(long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
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

fn build_body(args: &RunArgs) -> Result<ExecuteBody, String> {
    let (code, from_file) = match (&args.eval, &args.file) {
        (Some(_), Some(_)) => return Err("give a file or --eval, not both".into()),
        (Some(code), None) => (code.clone(), None),
        (None, Some(path)) => {
            let code = std::fs::read_to_string(path)
                .map_err(|_| format!("File not found: {}", path.display()))?;
            (code, Some(path))
        }
        (None, None) => {
            if std::io::stdin().is_terminal() {
                return Err("no code given: pass a file, -e <code>, or pipe code on stdin".into());
            }
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .map_err(|e| format!("cannot read code from stdin: {e}"))?;
            (code, None)
        }
    };
    let extension = from_file
        .and_then(|p| p.extension())
        .map(|e| e.to_string_lossy().to_string());
    let runtime = match (&args.runtime, &extension) {
        (Some(name), _) => name
            .parse::<Runtime>()
            .map_err(|e| format!("{e}. Use --runtime to specify."))?,
        (None, Some(ext)) => Runtime::from_extension(ext).ok_or_else(|| {
            format!("Cannot detect the runtime of \".{ext}\" files. Use --runtime to specify.")
        })?,
        (None, None) => {
            return Err(
                "Cannot detect the runtime without a file. Use --runtime to specify.".into(),
            )
        }
    };
    let request = ExecutionRequest {
        runtime,
        code: Some(code),
        stdin: args.stdin.clone(),
        timeout_ms: args.timeout,
        env: parse_pairs("--env", &args.env)?,
        file_extension: extension.map(|e| format!(".{e}")),
        install_packages: args.install.clone(),
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
        session_id: session_id(args),
    })
}

/// The session a run names: --session-id, or a fresh name for --persistent.
fn session_id(args: &RunArgs) -> Option<String> {
    match (&args.session_id, args.persistent) {
        (Some(id), _) => Some(id.clone()),
        (None, true) => Some(format!("cli-{}", random_hex(6))),
        (None, false) => None,
    }
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
pub(crate) async fn start_embedded(runtime: Runtime) -> Result<Client, ExitCode> {
    let mut config = ServerConfig {
        pool_size: 0,
        ..ServerConfig::load().map_err(err)?.0
    };
    // The user at the terminal is the operator: filtered networking (rules they give) is theirs.
    if !config.allowed_networks.contains(&NetworkMode::Filtered) {
        config.allowed_networks.push(NetworkMode::Filtered);
    }
    let engine = connect_engine(&config).await?;
    // The first local run on a machine builds the runtime's image.
    let progress = Progress::new(false);
    let built = engine
        .build_images(&[runtime], false, &|p| progress.report(p))
        .await;
    progress.abandon();
    built.map_err(err)?;
    expire_local(
        &engine,
        Duration::from_millis(config.session_idle_timeout_ms),
    )
    .await;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let key = random_hex(32);
    // Sessions outlive this process: the next `isol8 run --session-id` continues them.
    let state = AppState::new(engine, config, key.clone()).with_local_sessions();
    tokio::spawn(isol8_server::serve(state, listener, std::future::pending()));
    Ok(Client::new(format!("http://{addr}"), key))
}

pub async fn run(args: RunArgs) -> ExitCode {
    let body = match build_body(&args) {
        Ok(b) => b,
        Err(e) => return err(e),
    };
    if let Some(id) = &body.session_id {
        // Checked here too: the id also names a file under ~/.isol8/sessions.
        if let Err(e) = isol8_server::check_session_id(id) {
            return err(e);
        }
        eprintln!("[INFO] Session ID: {id}");
    }
    // Held until this run ends (see `use_local`).
    let _turn = match (&body.session_id, &args.host) {
        (Some(id), None) => use_local(id),
        _ => None,
    };
    let client = match &args.host {
        Some(host) => {
            let Some(key) = args.key.clone().filter(|k| !k.is_empty()) else {
                return err("API key required. Use --key or set ISOL8_API_KEY.");
            };
            Client::new(host.clone(), key)
        }
        None => match start_embedded(body.request.runtime).await {
            Ok(client) => client,
            Err(code) => return code,
        },
    };
    let outcome = tokio::select! {
        code = execute(&client, &body, &args) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("[WARN] interrupted; the run was killed");
            ExitCode::from(130)
        }
    };
    outcome
}

async fn execute(client: &Client, body: &ExecuteBody, args: &RunArgs) -> ExitCode {
    let mut out_file = match &args.out {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some(f),
            Err(e) => return err(format!("cannot write {}: {e}", path.display())),
        },
        None => None,
    };
    let mut write_stdout = |text: &str| {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        if let Some(f) = out_file.as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
    };
    let (status, exit_code, container) = if args.no_stream {
        let result = match client.execute(body).await {
            Ok(r) => r,
            Err(e) => return err(e),
        };
        write_stdout(&result.stdout);
        for bundle in result.results.iter().flatten() {
            write_stdout(&result_text(bundle));
        }
        eprint!("{}", result.stderr);
        print_network_logs(args, &result);
        (result.status, result.exit_code, result.container_id)
    } else {
        let mut events = match client.execute_stream(body).await {
            Ok(s) => Box::pin(s),
            Err(e) => return err(e),
        };
        let mut summary = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(ev) => ev,
                Err(e) => return err(e),
            };
            match event.kind {
                StreamEventType::Stdout => write_stdout(&event.data),
                StreamEventType::Stderr => eprint!("{}", event.data),
                StreamEventType::Result => summary = event.result,
                StreamEventType::Display => {
                    if let Ok(bundle) = serde_json::from_str(&event.data) {
                        write_stdout(&result_text(&bundle));
                    }
                }
                // Network events are printed from the result, once, with --log-network.
                StreamEventType::Exit | StreamEventType::Error | StreamEventType::Network => {}
            }
        }
        match summary {
            Some(r) => {
                print_network_logs(args, &r);
                (r.status, r.exit_code, r.container_id)
            }
            None => return err("the stream ended without a result"),
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
        ExecutionStatus::Error => Some("the sandbox failed".to_string()),
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
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
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
    for entry in result.network_logs.iter().flatten() {
        let verdict = if entry.allowed { "ALLOW" } else { "BLOCK" };
        let reason = entry
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        eprintln!(
            "[NET] {} {verdict} {} {}{}{reason} {}ms",
            entry.time,
            entry.method,
            entry.host,
            entry.path.as_deref().unwrap_or(""),
            entry.duration_ms
        );
    }
}
