//! `isol8 session list|stop|export|import`, and the bookkeeping that lets CLI sessions expire: each local call
//! touches `~/.isol8/sessions/<id>`, and a local start removes sessions idle past the timeout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use isol8::Client;
use isol8_server::engine::Engine;

use super::images::local_engine;
use crate::error::{fail, CliResult};
use crate::output::outln;

#[derive(Debug, Args)]
pub(crate) struct SessionArgs {
    #[command(subcommand)]
    command: SessionCommand,
    /// A remote isol8 server [default: the sessions of this machine's CLI].
    #[arg(long, global = true)]
    host: Option<String>,
    /// API key for --host.
    #[arg(long, global = true, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// List sessions.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a session and remove its container.
    Stop { id: String },
    /// Save a session's /sandbox as a tar archive.
    Export {
        id: String,
        /// Where to write the archive (`-` for stdout).
        file: PathBuf,
    },
    /// Unpack a tar archive into a session's /sandbox.
    Import {
        id: String,
        /// The archive (uncompressed tar; `-` for stdin).
        file: PathBuf,
        /// Create the session with this runtime when it does not exist.
        #[arg(short, long)]
        runtime: Option<isol8_api::Runtime>,
    },
}

pub(crate) async fn session(args: SessionArgs) -> CliResult {
    if let SessionCommand::Stop { id }
    | SessionCommand::Export { id, .. }
    | SessionCommand::Import { id, .. } = &args.command
    {
        if let Err(e) = isol8_api::SessionId::parse(id.as_str()) {
            return Err(fail(e));
        }
    }
    if matches!(
        args.command,
        SessionCommand::Export { .. } | SessionCommand::Import { .. }
    ) {
        return archive(args).await;
    }
    match &args.host {
        Some(host) => {
            let key = match super::login::resolve_key(host, args.key.clone()) {
                Ok(key) => key,
                Err(e) => return Err(fail(e)),
            };
            remote(Client::new(host.clone(), key), args.command).await
        }
        None => local(args.command).await,
    }
}

/// `export` and `import`: through the server named by --host, or the embedded one (the same
/// routes) for this machine's CLI sessions.
async fn archive(args: SessionArgs) -> CliResult {
    let (client, _turn) = match &args.host {
        Some(host) => match super::login::resolve_key(host, args.key.clone()) {
            Ok(key) => (Client::new(host.clone(), key), None),
            Err(e) => return Err(fail(e)),
        },
        None => {
            let (id, runtime) = match &args.command {
                SessionCommand::Export { id, .. } => (id, None),
                SessionCommand::Import { id, runtime, .. } => (id, *runtime),
                _ => unreachable!("only archive commands come here"),
            };
            // Takes the session's turn, as `isol8 run --session-id` does.
            let turn = use_local(id);
            (super::run::start_embedded_for(runtime).await?, turn)
        }
    };
    match args.command {
        SessionCommand::Export { id, file } => {
            let tar = match client.export_archive(&id).await {
                Ok(tar) => tar,
                Err(e) => return Err(fail(e)),
            };
            let written = match file.as_os_str() == "-" {
                true => std::io::Write::write_all(&mut std::io::stdout(), &tar),
                false => std::fs::write(&file, &tar),
            };
            match written {
                Ok(()) => {
                    eprintln!(
                        "[OK] Session \"{id}\": /sandbox saved ({} bytes).",
                        tar.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(fail(format!("cannot write {}: {e}", file.display()))),
            }
        }
        SessionCommand::Import { id, file, runtime } => {
            let tar = match file.as_os_str() == "-" {
                true => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
                }
                false => std::fs::read(&file),
            };
            let tar = match tar {
                Ok(tar) => tar,
                Err(e) => return Err(fail(format!("cannot read {}: {e}", file.display()))),
            };
            match client.import_archive(&id, tar, runtime).await {
                Ok(done) => {
                    let made = if done.session_created {
                        " (new session)"
                    } else {
                        ""
                    };
                    eprintln!("[OK] Session \"{id}\"{made}: archive unpacked into /sandbox.");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(fail(e)),
            }
        }
        _ => unreachable!("only archive commands come here"),
    }
}

async fn remote(client: Client, command: SessionCommand) -> CliResult {
    match command {
        SessionCommand::List { json } => match client.list_sessions().await {
            Ok(list) if json => print_json(&list),
            Ok(list) if list.sessions.is_empty() => {
                eprintln!("[INFO] No active sessions.");
                Ok(ExitCode::SUCCESS)
            }
            Ok(list) => {
                for s in list.sessions {
                    let state = if s.is_active { "busy" } else { "idle" };
                    outln!(
                        "{}  {}  {state}  last used {}",
                        s.id,
                        s.runtime,
                        s.last_accessed_at
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(fail(e)),
        },
        SessionCommand::Stop { id } => match client.delete_session(&id).await {
            Ok(()) => {
                eprintln!("[OK] Session \"{id}\" destroyed.");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(fail(e)),
        },
        SessionCommand::Export { .. } | SessionCommand::Import { .. } => {
            unreachable!("archive commands go through `archive`")
        }
    }
}

async fn local(command: SessionCommand) -> CliResult {
    let engine = local_engine().await?;
    let code = match command {
        SessionCommand::List { json } => match engine.local_sessions().await {
            Ok(list) if json => {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|s| {
                        serde_json::json!({"id": s.id, "runtime": s.runtime,
                            "containerId": isol8_server::engine::short_id(&s.container_id),
                            "running": s.running})
                    })
                    .collect();
                print_json(&serde_json::json!({ "sessions": rows }))
            }
            Ok(list) if list.is_empty() => {
                eprintln!("[INFO] No active sessions.");
                Ok(ExitCode::SUCCESS)
            }
            Ok(list) => {
                for s in list {
                    let state = if s.running { "running" } else { "stopped" };
                    outln!("{}  {}  {state}", s.id, s.runtime);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(fail(e)),
        },
        SessionCommand::Stop { id } => match engine.remove_local_session(&id).await {
            Ok(true) => {
                forget_local(&id);
                eprintln!("[OK] Session \"{id}\" destroyed.");
                Ok(ExitCode::SUCCESS)
            }
            Ok(false) => Err(fail(format!("No session \"{id}\"."))),
            Err(e) => Err(fail(e)),
        },
        SessionCommand::Export { .. } | SessionCommand::Import { .. } => {
            unreachable!("archive commands go through `archive`")
        }
    };
    engine.shutdown().await;
    code
}

fn print_json(value: &impl serde::Serialize) -> CliResult {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            outln!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(fail(e)),
    }
}

fn marker(id: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".isol8/sessions").join(id))
}

/// Records that the CLI session `id` is being used, and takes its turn: the returned file holds an
/// exclusive lock until dropped, so two `isol8 run --session-id` processes take turns instead of
/// talking to the session's agent at once (each process has its own server, so the server's
/// per-session lock cannot order them).
pub(crate) fn use_local(id: &str) -> Option<std::fs::File> {
    let path = marker(id)?;
    std::fs::create_dir_all(path.parent()?).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .ok()?;
    file.lock().ok()?;
    let _ = file.set_modified(SystemTime::now()); // the idle clock of `expire_local`
    Some(file)
}

fn forget_local(id: &str) {
    if let Some(path) = marker(id) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes CLI sessions not used for `idle` (by their marker's age; no marker counts as idle).
pub(crate) async fn expire_local(engine: &Engine, idle: Duration) {
    let Ok(sessions) = engine.local_sessions().await else {
        return;
    };
    for session in sessions {
        let age = marker(&session.id)
            .and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_none_or(|age| age >= idle) {
            tracing::info!(session = %session.id, "removing an idle CLI session");
            if engine.remove_local_session(&session.id).await.is_ok() {
                forget_local(&session.id);
            }
        }
    }
}
