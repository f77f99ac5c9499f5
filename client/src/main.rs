//! The `isol8` command line: `run` (local through an embedded server, or remote), `serve`, `setup`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use isol8::Client;
use isol8_api::{
    ExecuteBody, ExecutionOptions, ExecutionRequest, ExecutionStatus, NetworkMode, Runtime,
    StreamEventType,
};
use isol8_server::engine::{BuildProgress, Engine};
use isol8_server::{AppState, ServerConfig};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "isol8",
    version,
    about = "Run untrusted code in locked-down Docker sandboxes",
    arg_required_else_help = true
)]
struct Cli {
    /// Debug logs for the CLI and engine (on stderr).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run code in a sandbox.
    ///
    /// Examples:
    ///   isol8 run -e "print(2 ** 10)" --runtime python
    ///   isol8 run script.py --stdin "input"
    ///   echo 'console.log(1)' | isol8 run -r node
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// Start the HTTP server.
    Serve(ServeArgs),
    /// Build the runtime images (cached by recipe hash; --force rebuilds).
    Setup {
        #[arg(long)]
        force: bool,
        /// Runtimes to build (default: all), comma-separated.
        #[arg(long = "runtime", value_delimiter = ',')]
        runtimes: Vec<Runtime>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
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
    /// none, host or filtered.
    #[arg(long)]
    net: Option<NetworkMode>,
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
    /// Keep the container after the run and print its id.
    #[arg(long)]
    persist: bool,
    /// A remote isol8 server, e.g. http://host:3000.
    #[arg(long)]
    host: Option<String>,
    /// API key for --host.
    #[arg(long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Port (else ISOL8_PORT, PORT, 3000).
    #[arg(short, long)]
    port: Option<String>,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// API key (else ISOL8_API_KEY).
    #[arg(short, long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISOL8_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("[ERR] cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Serve(args) => serve(args).await,
            Command::Setup { force, runtimes } => setup(force, runtimes).await,
        }
    })
}

fn err(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("[ERR] {message}");
    ExitCode::FAILURE
}

fn print_progress(p: BuildProgress) {
    match p {
        BuildProgress::UpToDate { .. } => {}
        BuildProgress::Started { image } => eprintln!("[INFO] building {image}"),
        BuildProgress::Step { image, step } => eprintln!("       {image}: {step}"),
        BuildProgress::Finished { image } => eprintln!("[OK] built {image}"),
    }
}

async fn connect_engine(config: &ServerConfig) -> Result<Engine, ExitCode> {
    let docker_down = |e: isol8_server::engine::Error| {
        err(format!(
            "Docker is not running or not installed. {e}\n      Start the Docker daemon (e.g. `sudo dockerd &`) or set DOCKER_HOST."
        ))
    };
    let engine = Engine::connect(config.engine_config())
        .await
        .map_err(docker_down)?;
    engine.ping().await.map_err(docker_down)?;
    Ok(engine)
}

async fn setup(force: bool, runtimes: Vec<Runtime>) -> ExitCode {
    let runtimes = if runtimes.is_empty() {
        Runtime::ALL.to_vec()
    } else {
        runtimes
    };
    let config = ServerConfig {
        pool_size: 0,
        ..ServerConfig::default()
    };
    let engine = match connect_engine(&config).await {
        Ok(e) => e,
        Err(code) => return code,
    };
    let result = engine.build_images(&runtimes, force, &print_progress).await;
    engine.shutdown().await;
    match result {
        Ok(tags) => {
            for (runtime, tag) in tags {
                eprintln!("[OK] {runtime}: {tag}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => err(e),
    }
}

fn resolve_port(flag: Option<String>) -> Result<u16, String> {
    let (raw, source) = match flag {
        Some(p) => (p, "--port"),
        None => match std::env::var("ISOL8_PORT") {
            Ok(p) => (p, "ISOL8_PORT"),
            Err(_) => match std::env::var("PORT") {
                Ok(p) => (p, "PORT"),
                Err(_) => return Ok(3000),
            },
        },
    };
    match raw.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "Invalid port from {source}: {raw}. Expected 1-65535."
        )),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let Some(key) = args.key.filter(|k| !k.is_empty()) else {
        return err("API key required. Use --key or set ISOL8_API_KEY.");
    };
    let port = match resolve_port(args.port) {
        Ok(p) => p,
        Err(e) => return err(e),
    };
    let (config, source) = match ServerConfig::load() {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let listener = match TcpListener::bind((args.bind.as_str(), port)).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            match TcpListener::bind((args.bind.as_str(), 0)).await {
                Ok(l) => {
                    let free = l.local_addr().map(|a| a.port()).unwrap_or_default();
                    eprintln!(
                        "[WARN] Port {port} is in use. Falling back to available port {free}."
                    );
                    l
                }
                Err(e) => return err(format!("cannot bind {}: {e}", args.bind)),
            }
        }
        Err(e) => return err(format!("cannot bind {}:{port}: {e}", args.bind)),
    };
    // The server starts even while Docker is down: it answers 503 until Docker is back.
    let engine = match Engine::connect(config.engine_config()).await {
        Ok(e) => e,
        Err(e) => return err(format!("Docker is not running or not installed. {e}")),
    };
    if let Err(e) = engine.ping().await {
        eprintln!("[WARN] {e}; executions get 503 until Docker answers");
    }
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match source {
        Some(path) => eprintln!("[INFO] config: {}", path.display()),
        None => eprintln!("[INFO] config: defaults (no config file found)"),
    }
    eprintln!(
        "[INFO] isol8 server v{} listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    eprintln!("       Auth: Bearer token required");
    let state = AppState::new(engine, config, key);
    match isol8_server::serve(state, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => err(e),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
        ..Default::default()
    };
    let options = ExecutionOptions {
        network: args.net,
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
        session_id: None,
    })
}

/// A server started in this process on loopback with a random key, for local runs.
struct EmbeddedServer {
    client: Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_embedded(runtime: Runtime) -> Result<EmbeddedServer, ExitCode> {
    let config = ServerConfig {
        pool_size: 0,
        ..ServerConfig::load().map_err(err)?.0
    };
    let engine = connect_engine(&config).await?;
    // The first local run on a machine builds the runtime's image.
    engine
        .build_images(&[runtime], false, &print_progress)
        .await
        .map_err(err)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let key: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::thread_rng().gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let state = AppState::new(engine, config, key.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(isol8_server::serve(state, listener, async move {
        let _ = stopped.await;
    }));
    Ok(EmbeddedServer {
        client: Client::new(format!("http://{addr}"), key),
        stop,
        task,
    })
}

async fn run(args: RunArgs) -> ExitCode {
    let body = match build_body(&args) {
        Ok(b) => b,
        Err(e) => return err(e),
    };
    let (client, embedded) = match &args.host {
        Some(host) => {
            let Some(key) = args.key.clone().filter(|k| !k.is_empty()) else {
                return err("API key required. Use --key or set ISOL8_API_KEY.");
            };
            (Client::new(host.clone(), key), None)
        }
        None => match start_embedded(body.request.runtime).await {
            Ok(server) => (server.client.clone(), Some(server)),
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
    if let Some(server) = embedded {
        let _ = server.stop.send(());
        let _ = server.task.await;
    }
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
        eprint!("{}", result.stderr);
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
                StreamEventType::Exit | StreamEventType::Error => {}
            }
        }
        match summary {
            Some(r) => (r.status, r.exit_code, r.container_id),
            None => return err("the stream ended without a result"),
        }
    };
    if args.persist {
        eprintln!("[INFO] container kept: {container}");
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
