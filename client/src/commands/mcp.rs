//! `isol8 mcp`: the MCP tools over stdio, for agents that start their tool servers as processes.
//!
//! Each JSON-RPC message read from stdin (one per line) is posted to a server's `/mcp` (the
//! in-process server of local runs, or `--host`), and every message of the answer is written to
//! stdout, one per line. So the tools, their results and their progress notifications are the
//! HTTP endpoint's, with one implementation. Nothing but protocol messages goes to stdout; logs
//! and image-build progress go to stderr.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use futures::StreamExt;
use isol8::Client;
use isol8_api::Runtime;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::run::start_embedded;
use crate::error::{fail, CliResult};

#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// A remote isol8 server, e.g. http://host:3000 (default: an in-process one on this machine).
    #[arg(long, env = "ISOL8_HOST")]
    host: Option<String>,
    /// API key for --host.
    #[arg(long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

/// Calls in flight by JSON-RPC id, so a `notifications/cancelled` can drop the HTTP request
/// (which stops the run). Locked only to insert, remove or abort; never across an `.await`.
type InFlight = Arc<Mutex<HashMap<String, JoinHandle<()>>>>;

pub(crate) async fn mcp(args: McpArgs) -> CliResult {
    let client = match args.host {
        Some(host) => match args.key {
            Some(key) => Client::new(host, key),
            None => return Err(fail("--host needs --key (or ISOL8_API_KEY)")),
        },
        None => start_embedded(Runtime::Python).await?,
    };
    // Every message for stdout goes through this channel to one writer task, so lines from
    // concurrent calls never interleave. The task ends when every sender is gone.
    let (out, mut lines_out) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = lines_out.recv().await {
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let in_flight: InFlight = Arc::default();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match stdin.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                eprintln!("[ERR] reading stdin: {e}");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                let answer = json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32700, "message": format!("parse error: {e}")}});
                let _ = out.send(answer.to_string()).await;
                continue;
            }
        };
        if message["method"] == "notifications/cancelled" {
            let id = message["params"]["requestId"].to_string();
            if let Some(call) = in_flight.lock().remove(&id) {
                call.abort();
            }
        }
        let id = message
            .get("id")
            .filter(|_| message.get("method").is_some());
        let key = id.map(Value::to_string);
        // Held while spawning, so a quick call cannot remove itself before it is inserted.
        let mut calls = in_flight.lock();
        let task = tokio::spawn(relay(
            client.clone(),
            line,
            id.cloned(),
            out.clone(),
            in_flight.clone(),
        ));
        if let Some(key) = key {
            calls.insert(key, task);
        }
        drop(calls);
    }
    // stdin closed: the agent is done. Answers still on their way are not waited for.
    for (_, call) in in_flight.lock().drain() {
        call.abort();
    }
    drop(out);
    let _ = writer.await;
    Ok(ExitCode::SUCCESS)
}

/// Posts one message and writes each message of the answer; a failure to reach the server
/// becomes the request's JSON-RPC error.
async fn relay(
    client: Client,
    line: String,
    id: Option<Value>,
    out: mpsc::Sender<String>,
    in_flight: InFlight,
) {
    let failure = match client.mcp(line).await {
        Ok(mut messages) => loop {
            match messages.next().await {
                Some(Ok(message)) => {
                    if out.send(message).await.is_err() {
                        break None;
                    }
                }
                Some(Err(e)) => break Some(e.to_string()),
                None => break None,
            }
        },
        Err(e) => Some(e.to_string()),
    };
    if let Some(id) = &id {
        in_flight.lock().remove(&id.to_string());
        if let Some(message) = failure {
            let answer = json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32603, "message": message}});
            let _ = out.send(answer.to_string()).await;
        }
    }
}
