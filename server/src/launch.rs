//! Launching the server from a command line (`isol8 serve` and the `isol8-server` binary): port
//! resolution, busy-port handling, logging setup, and running until SIGTERM/SIGINT.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use isol8_docker::Engine;
use tokio::net::TcpListener;

use crate::{AppState, ServerConfig};

fn err(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("[ERR] {message}");
    ExitCode::FAILURE
}

/// Installs the tracing subscriber on stderr: `json` for log collectors, else text. `ISOL8_LOG`
/// (an env-filter directive) overrides the level.
pub fn init_logging(debug: bool, json: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ISOL8_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on [default: ISOL8_PORT, else PORT, else 3000; a busy one falls back to a free
    /// port; 0 takes a free one: the "listening on" line names it].
    #[arg(short, long)]
    port: Option<String>,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// The API key every request must carry as `Authorization: Bearer <key>` [required; or
    /// ISOL8_API_KEY].
    #[arg(short, long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Keep keys, tenants and the audit trail in this database: a SQLite file, or a
    /// postgres:// URL (else `auth.connectionString` when `auth.enabled`). This key is then the
    /// master key.
    #[arg(
        long,
        value_name = "PATH|URL",
        env = "ISOL8_AUTH_DB",
        hide_env_values = true
    )]
    auth_db: Option<String>,
    /// Say how to update the server (it is part of this binary) and exit.
    #[arg(long)]
    update: bool,
    /// Ask the server on this port (loopback) whether it is up, exit 0 if so (container
    /// HEALTHCHECK; the image has no curl).
    #[arg(long)]
    health_check: bool,
}

/// `GET /health` on loopback with plain std I/O: true when the server answers 200.
fn health_check(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_secs(2),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.ends_with(b" 200")
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
        // Asked for on the command line only (test harnesses, scripts that read the line); in the
        // environment a 0 is more likely a mistake.
        Ok(0) if source == "--port" => Ok(0),
        _ => Err(format!(
            "Invalid port from {source}: {raw}. Expected 1-65535."
        )),
    }
}

/// Runs the server as `args` say, until SIGTERM/SIGINT. Loads the config, then starts logging in
/// its format.
pub async fn serve(args: ServeArgs, debug: bool) -> ExitCode {
    if args.update {
        eprintln!(
            "[INFO] The server is built into this isol8 binary (v{}); update isol8 itself to update it.",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let port = match resolve_port(args.port.clone()) {
        Ok(p) => p,
        Err(e) => return err(e),
    };
    if args.health_check {
        return match health_check(port) {
            true => ExitCode::SUCCESS,
            false => err(format!("no healthy isol8 server on 127.0.0.1:{port}")),
        };
    }
    let Some(key) = args.key.filter(|k| !k.is_empty()) else {
        return err("API key required. Use --key or set ISOL8_API_KEY.");
    };
    let (config, source) = match ServerConfig::load() {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    init_logging(debug, config.log_format == crate::LogFormat::Json);
    // Every client connection is a descriptor; the usual soft limit of 1024 would cap the server
    // far below `maxConnections`.
    match rlimit::increase_nofile_limit(config.max_connections as u64 + 1024) {
        Ok(limit) if limit < config.max_connections as u64 => tracing::warn!(
            limit,
            "open-file limit is below maxConnections; accepts will fail past it"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    let listener = match bind(&args.bind, port, config.max_connections).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    // The server starts even while Docker is down: it answers 503 until Docker is back.
    let engine_config = match config.engine_config() {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let engine = match Engine::connect(engine_config).await {
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
    let keys = match &config.keys_file {
        Some(path) => match crate::load_keys(path) {
            Ok(keys) => keys,
            Err(e) => return err(e),
        },
        None => Vec::new(),
    };
    let database = match auth_database(args.auth_db.as_deref(), &config) {
        Some(connection) => {
            match crate::Database::open(&connection, &config.auth, &config.audit).await {
                Ok(db) => {
                    eprintln!("       Keys: database ({:?})", db.backend);
                    Some(db)
                }
                Err(e) => return err(e),
            }
        }
        None => None,
    };
    let mut state = match AppState::new(engine, config, key) {
        Ok(state) => state.with_named_keys(keys),
        Err(e) => return err(e),
    };
    if let Some(db) = database {
        state = state.with_database(db);
    }
    crate::serve(state, listener, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// The auth database to open: `--auth-db`, else `auth.connectionString` (or `~/.isol8/auth.db`)
/// when `auth.enabled`.
fn auth_database(flag: Option<&str>, config: &ServerConfig) -> Option<String> {
    if let Some(flag) = flag.filter(|f| !f.trim().is_empty()) {
        return Some(flag.to_string());
    }
    if !config.auth.enabled {
        return None;
    }
    config.auth.connection_string.clone().or_else(|| {
        let home = std::env::var_os("HOME")?;
        Some(
            std::path::Path::new(&home)
                .join(".isol8/auth.db")
                .to_string_lossy()
                .into_owned(),
        )
    })
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

/// Binds `port`; when it is taken, asks what to do on a terminal, else warns and takes a free port.
async fn bind(address: &str, port: u16, max_connections: usize) -> Result<TcpListener, ExitCode> {
    let mut port = port;
    loop {
        match crate::serve::listen(address, port, max_connections).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(err(format!("cannot bind {address}:{port}: {e}"))),
        }
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !interactive {
            let listener = crate::serve::listen(address, 0, max_connections)
                .await
                .map_err(|e| err(format!("cannot bind {address}: {e}")))?;
            let free = listener.local_addr().map(|a| a.port()).unwrap_or_default();
            eprintln!("[WARN] Port {port} is in use. Falling back to available port {free}.");
            return Ok(listener);
        }
        eprintln!("[WARN] Port {port} is in use.");
        eprintln!("  [1] Enter another port");
        eprintln!("  [2] Find an available port (default)");
        eprintln!("  [3] Exit");
        match prompt("Choose [1-3]: ").trim() {
            "1" => match prompt("Port: ").trim().parse::<u16>() {
                Ok(p) if p > 0 => port = p,
                _ => eprintln!("[ERR] Expected a port between 1 and 65535."),
            },
            "" | "2" => port = 0,
            _ => return Err(ExitCode::FAILURE),
        }
    }
}

fn prompt(question: &str) -> String {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    answer
}
