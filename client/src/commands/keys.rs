//! `isol8 keys create|list|revoke`: a server's database keys (master key).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use isol8::Client;
use isol8_api::{CreateKeyRequest, KeyLimits, KeyQuery};

use super::login::resolve_key;
use crate::error::{fail, CliResult};

#[derive(Debug, Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    /// The isol8 server.
    #[arg(long, global = true, env = "ISOL8_HOST")]
    host: Option<String>,
    /// Its master key (else ISOL8_API_KEY, else the stored credentials for --host).
    #[arg(long, global = true, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a key; it is printed once, on stdout.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// The tenant it acts for (default: `default`).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in milliseconds (default: the server's auth.defaultTtlMs).
        #[arg(long)]
        ttl: Option<u64>,
        /// Executions its tenant may run at once (default: the server's tenantLimits).
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// Requests of its tenant that may wait for a slot.
        #[arg(long)]
        max_queue: Option<u32>,
        /// Sessions its tenant may hold.
        #[arg(long)]
        max_sessions: Option<u32>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never the keys themselves).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: every replica refuses it at once.
    Revoke { id: String },
}

/// A client of `--host` with its key resolved.
pub(crate) fn client(host: Option<String>, key: Option<String>) -> Result<Client, String> {
    let host = host.ok_or("--host is required (or set ISOL8_HOST)")?;
    let key = resolve_key(&host, key)?;
    Ok(Client::new(host, key))
}

pub(crate) async fn keys(args: KeysArgs) -> CliResult {
    let client = match client(args.host, args.key) {
        Ok(c) => c,
        Err(e) => return Err(fail(e)),
    };
    match args.command {
        KeysCommand::Create {
            name,
            tenant,
            ttl,
            max_concurrent,
            max_queue,
            max_sessions,
            json,
        } => {
            let limits = KeyLimits {
                max_concurrent,
                max_queue,
                max_sessions,
            };
            let request = CreateKeyRequest {
                name,
                tenant_id: tenant,
                ttl_ms: ttl,
                limits: (limits != KeyLimits::default()).then_some(limits),
            };
            match client.create_key(&request).await {
                Ok(created) if json => print_json(&created),
                Ok(created) => {
                    println!("{}", created.key);
                    eprintln!(
                        "[OK] Key {} ({}) for tenant {}, expires {}. It is shown only this once.",
                        created.id, created.name, created.tenant_id, created.expires_at
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(fail(e)),
            }
        }
        KeysCommand::List { tenant, json } => {
            match client.list_keys(&KeyQuery { tenant_id: tenant }).await {
                Ok(list) if json => print_json(&list),
                Ok(list) if list.keys.is_empty() => {
                    eprintln!("[INFO] No keys.");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(list) => {
                    let rows: Vec<Vec<String>> = list
                        .keys
                        .iter()
                        .map(|k| {
                            let state = if k.revoked { "revoked" } else { "active" };
                            vec![
                                k.id.clone(),
                                k.name.clone(),
                                k.key_prefix.clone(),
                                k.tenant_id.clone(),
                                state.into(),
                                k.expires_at.clone(),
                                k.last_used_at.clone().unwrap_or_else(|| "never".into()),
                            ]
                        })
                        .collect();
                    print_table(
                        &[
                            "ID",
                            "NAME",
                            "PREFIX",
                            "TENANT",
                            "STATE",
                            "EXPIRES",
                            "LAST USED",
                        ],
                        &rows,
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(fail(e)),
            }
        }
        KeysCommand::Revoke { id } => match client.revoke_key(&id).await {
            Ok(_) => {
                eprintln!("[OK] Key {id} revoked.");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(fail(e)),
        },
    }
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> CliResult {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(fail(e)),
    }
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
