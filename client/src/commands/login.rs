//! `isol8 login` / `logout`, the stored credentials (`~/.isol8/credentials.json`, mode 0600), and
//! how every remote command finds its key: `--key`, then `ISOL8_API_KEY`, then the credentials
//! stored for that host.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use isol8::{Client, ClientError};
use isol8_api::LoginRequest;
use serde::{Deserialize, Serialize};

use crate::error::{fail, CliResult};

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The isol8 server, e.g. https://sandbox.example.com.
    #[arg(long)]
    host: String,
    /// The server's master key (else ISOL8_API_KEY).
    #[arg(long, env = "ISOL8_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A name for the new key (default cli-login-<time>).
    #[arg(long)]
    name: Option<String>,
    /// Its lifetime in milliseconds (default: the server's auth.defaultTtlMs).
    #[arg(long)]
    ttl: Option<u64>,
    /// The tenant it acts for (default: the server's `default`).
    #[arg(long)]
    tenant: Option<String>,
}

/// What `isol8 login` stores, in the reference's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    host: String,
    token: String,
    expires_at: String,
    key_id: String,
}

fn credentials_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".isol8/credentials.json"))
}

/// `~/.isol8/credentials.json` as it is shown to people.
const SHOWN_PATH: &str = "~/.isol8/credentials.json";

fn same_host(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The key for `host`: the flag (clap fills it from `ISOL8_API_KEY` when the flag is absent),
/// else the token `isol8 login` stored for that host, with a warning when it has expired.
pub(crate) fn resolve_key(host: &str, flag: Option<String>) -> Result<String, String> {
    if let Some(key) = flag.filter(|k| !k.is_empty()) {
        return Ok(key);
    }
    let stored = credentials_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str::<Credentials>(&text).ok())
        .filter(|c| same_host(&c.host, host));
    let Some(stored) = stored else {
        return Err(format!(
            "API key required. Use --key, set ISOL8_API_KEY, or run `isol8 login --host {host}`."
        ));
    };
    let expired = chrono::DateTime::parse_from_rfc3339(&stored.expires_at)
        .map(|t| t < chrono::Utc::now())
        .unwrap_or(false);
    if expired {
        eprintln!(
            "[WARN] The stored credentials for {host} expired at {}; run `isol8 login --host {host}` again.",
            stored.expires_at
        );
    }
    Ok(stored.token)
}

pub(crate) async fn login(args: LoginArgs) -> CliResult {
    let Some(key) = args.key.filter(|k| !k.is_empty()) else {
        return Err(fail(
            "The master key is required. Use --key or set ISOL8_API_KEY.",
        ));
    };
    let client = Client::new(args.host.clone(), key);
    let name = args.name.unwrap_or_else(|| {
        format!(
            "cli-login-{}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    });
    let request = LoginRequest {
        name: Some(name),
        tenant_id: args.tenant,
        ttl_ms: args.ttl,
    };
    let answer = match client.login(&request).await {
        Ok(answer) => answer,
        Err(e @ ClientError::Api { status: 400, .. }) => {
            return Err(fail(format!(
                "{e}\n      Is DB-backed auth enabled on the server (isol8 serve --auth-db PATH)?"
            )))
        }
        Err(e) => return Err(fail(e)),
    };
    let credentials = Credentials {
        host: args.host.trim_end_matches('/').to_string(),
        token: answer.token,
        expires_at: answer.expires_at.clone(),
        key_id: answer.key_id,
    };
    if let Err(e) = store(&credentials) {
        return Err(fail(format!("cannot write {SHOWN_PATH}: {e}")));
    }
    eprintln!(
        "[OK] Logged in to {}; the token expires at {} (stored in {SHOWN_PATH}).",
        credentials.host, answer.expires_at
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the credentials readable by this user only, replacing the file in one step.
fn store(credentials: &Credentials) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = credentials_path().ok_or_else(|| std::io::Error::other("HOME is not set"))?;
    let dir = path.parent().expect("a parent");
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    let text = serde_json::to_string_pretty(credentials).map_err(std::io::Error::other)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)
}

pub(crate) fn logout() -> CliResult {
    let Some(path) = credentials_path() else {
        return Err(fail("HOME is not set"));
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {
            eprintln!("[OK] Credentials removed from {SHOWN_PATH}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("[INFO] No stored credentials found.");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(fail(format!("cannot remove {SHOWN_PATH}: {e}"))),
    }
}
