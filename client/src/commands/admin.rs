//! `isol8 config` (the resolved configuration) and `isol8 cleanup` (removing isol8's containers and
//! images from the local Docker engine).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use isol8_server::engine::{short_id, CleanupScope};
use isol8_server::ServerConfig;

use super::images::local_engine;
use crate::error::{fail, CliError, CliResult};
use crate::output::outln;

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// Print the configuration as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    force: bool,
    /// Also remove isol8's images (they are rebuilt by `isol8 setup`).
    #[arg(long)]
    images: bool,
}

pub(crate) fn config(args: ConfigArgs) -> CliResult {
    let (config, source) = match ServerConfig::load() {
        Ok(loaded) => loaded,
        Err(e) => return Err(fail(e)),
    };
    let text = match serde_json::to_string_pretty(&config) {
        Ok(t) => t,
        Err(e) => return Err(fail(e)),
    };
    if args.json {
        outln!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    match source {
        Some(path) => outln!("Config file: {}", path.display()),
        None => outln!("Config file: none found; using the defaults"),
    }
    outln!(
        "(ISOL8_... environment variables override single fields; see server/config.schema.json)\n"
    );
    outln!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cleanup(args: CleanupArgs) -> CliResult {
    let engine = local_engine().await?;
    let outcome = remove_managed(&engine, &args).await;
    engine.shutdown().await;
    outcome
}

async fn remove_managed(engine: &isol8_server::engine::Engine, args: &CleanupArgs) -> CliResult {
    let managed = match engine.list_managed(CleanupScope::Engine, args.images).await {
        Ok(m) => m,
        Err(e) => return Err(fail(e)),
    };
    if managed.containers.is_empty() && managed.images.is_empty() && managed.volumes.is_empty() {
        eprintln!("[OK] Nothing of isol8's to remove.");
        return Ok(ExitCode::SUCCESS);
    }
    for c in &managed.containers {
        outln!("container {}  {}  {}", short_id(&c.id), c.image, c.state);
    }
    for i in &managed.images {
        match i.tags.is_empty() {
            true => outln!("image     {} (build intermediate)", short_id(&i.id)),
            false => outln!("image     {}", i.tags.join(", ")),
        }
    }
    for v in &managed.volumes {
        outln!("volume    {v}");
    }
    if !args.force && !confirm(&managed) {
        eprintln!("[INFO] Nothing removed.");
        return Err(CliError::Exit(ExitCode::FAILURE));
    }
    let response = match engine.cleanup(CleanupScope::Engine, args.images).await {
        Ok(r) => r,
        Err(e) => return Err(fail(e)),
    };
    let mut report = format!("Removed {} container(s)", response.containers.removed);
    if let Some(images) = &response.images {
        report.push_str(&format!(", {} image(s)", images.removed));
    }
    if let Some(volumes) = &response.volumes {
        report.push_str(&format!(", {} volume(s)", volumes.removed));
    }
    let errors: Vec<&String> = response
        .containers
        .errors
        .iter()
        .chain(response.images.iter().flat_map(|i| &i.errors))
        .chain(response.volumes.iter().flat_map(|v| &v.errors))
        .collect();
    for e in &errors {
        eprintln!("[WARN] {e}");
    }
    if errors.is_empty() {
        eprintln!("[OK] {report}.");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(fail(format!(
            "{report}; {} could not be removed.",
            errors.len()
        )))
    }
}

/// Asks on the terminal; without one (no `--force`) nothing is removed.
fn confirm(managed: &isol8_server::engine::Managed) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("[ERR] Not a terminal: pass --force to remove without asking.");
        return false;
    }
    eprint!(
        "Remove {} container(s), {} image(s) and {} volume(s)? [y/N] ",
        managed.containers.len(),
        managed.images.len(),
        managed.volumes.len()
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}
