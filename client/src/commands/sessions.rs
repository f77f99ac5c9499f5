//! `isol8 session list|stop`, and the bookkeeping that lets CLI sessions expire: each local call
//! touches `~/.isol8/sessions/<id>`, and a local start removes sessions idle past the timeout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use isol8::Client;
use isol8_server::engine::Engine;

use super::images::local_engine;
use crate::err;
use crate::output::outln;

#[derive(Debug, Args)]
pub struct SessionArgs {
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
}

pub async fn session(args: SessionArgs) -> ExitCode {
    if let SessionCommand::Stop { id } = &args.command {
        if let Err(e) = isol8_server::check_session_id(id) {
            return err(e);
        }
    }
    match &args.host {
        Some(host) => {
            let key = match super::login::resolve_key(host, args.key.clone()) {
                Ok(key) => key,
                Err(e) => return err(e),
            };
            remote(Client::new(host.clone(), key), args.command).await
        }
        None => local(args.command).await,
    }
}

async fn remote(client: Client, command: SessionCommand) -> ExitCode {
    match command {
        SessionCommand::List { json } => match client.list_sessions().await {
            Ok(list) if json => print_json(&list),
            Ok(list) if list.sessions.is_empty() => {
                eprintln!("[INFO] No active sessions.");
                ExitCode::SUCCESS
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
                ExitCode::SUCCESS
            }
            Err(e) => err(e),
        },
        SessionCommand::Stop { id } => match client.delete_session(&id).await {
            Ok(()) => {
                eprintln!("[OK] Session \"{id}\" destroyed.");
                ExitCode::SUCCESS
            }
            Err(e) => err(e),
        },
    }
}

async fn local(command: SessionCommand) -> ExitCode {
    let engine = match local_engine().await {
        Ok(e) => e,
        Err(code) => return code,
    };
    let code = match command {
        SessionCommand::List { json } => match engine.local_sessions().await {
            Ok(list) if json => {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|s| {
                        serde_json::json!({"id": s.id, "runtime": s.runtime,
                            "containerId": &s.container_id[..12.min(s.container_id.len())],
                            "running": s.running})
                    })
                    .collect();
                print_json(&serde_json::json!({ "sessions": rows }))
            }
            Ok(list) if list.is_empty() => {
                eprintln!("[INFO] No active sessions.");
                ExitCode::SUCCESS
            }
            Ok(list) => {
                for s in list {
                    let state = if s.running { "running" } else { "stopped" };
                    outln!("{}  {}  {state}", s.id, s.runtime);
                }
                ExitCode::SUCCESS
            }
            Err(e) => err(e),
        },
        SessionCommand::Stop { id } => match engine.remove_local_session(&id).await {
            Ok(true) => {
                forget_local(&id);
                eprintln!("[OK] Session \"{id}\" destroyed.");
                ExitCode::SUCCESS
            }
            Ok(false) => err(format!("No session \"{id}\".")),
            Err(e) => err(e),
        },
    };
    engine.shutdown().await;
    code
}

fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            outln!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => err(e),
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
pub fn use_local(id: &str) -> Option<std::fs::File> {
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
pub async fn expire_local(engine: &Engine, idle: Duration) {
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
