//! `isol8 audit`: a server's audit trail of executions (master key), as a table or JSON.

use std::process::ExitCode;

use clap::Args;
use isol8_api::AuditQuery;

use super::keys::{client, print_json, print_table};
use crate::error::{fail, CliResult};

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// The isol8 server.
    #[arg(long, env = "ISOL8_HOST")]
    host: Option<String>,
    /// Its master key (else ISOL8_API_KEY, else the stored credentials for --host).
    #[arg(long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Only this tenant's runs (`master` for the master key's).
    #[arg(long)]
    tenant: Option<String>,
    /// Only runs since this time (RFC 3339, e.g. 2026-11-29T00:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// At most this many rows, newest first (default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// As JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn audit(args: AuditArgs) -> CliResult {
    let client = match client(args.host, args.key) {
        Ok(c) => c,
        Err(e) => return Err(fail(e)),
    };
    let query = AuditQuery {
        tenant_id: args.tenant,
        since: args.since,
        limit: args.limit,
    };
    match client.audit(&query).await {
        Ok(list) if args.json => print_json(&list),
        Ok(list) if list.entries.is_empty() => {
            eprintln!("[INFO] No audit entries.");
            Ok(ExitCode::SUCCESS)
        }
        Ok(list) => {
            let rows: Vec<Vec<String>> = list
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.time.clone(),
                        e.tenant_id.clone(),
                        e.key_id.clone().unwrap_or_else(|| "-".into()),
                        e.runtime.clone(),
                        e.status.clone(),
                        e.exit_code.to_string(),
                        e.duration_ms.to_string(),
                        e.code_sha256[..12.min(e.code_sha256.len())].to_string(),
                        e.input_bytes.to_string(),
                        e.output_bytes.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TIME", "TENANT", "KEY", "RUNTIME", "STATUS", "EXIT", "MS", "CODE", "IN", "OUT",
                ],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(fail(e)),
    }
}
