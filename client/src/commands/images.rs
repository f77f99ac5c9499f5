//! `isol8 setup`, `isol8 build` and `isol8 images`: building runtime and custom images on the local
//! Docker engine, with a progress display, and listing the custom ones.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use isol8_api::Runtime;
use isol8_server::engine::{BuildProgress, Engine, PackageSet};
use isol8_server::ServerConfig;
use parking_lot::Mutex;

use crate::error::{fail, CliError, CliResult};
use crate::output::outln;

#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Rebuild even when an image from the same recipe exists.
    #[arg(long)]
    force: bool,
    /// Runtimes to build, comma-separated [default: all].
    #[arg(long = "runtime", value_delimiter = ',')]
    runtimes: Vec<Runtime>,
    /// Python packages baked into the image python runs use by default (comma-separated)
    /// [default: none].
    #[arg(long, value_delimiter = ',', value_name = "PACKAGES")]
    python: Vec<String>,
    /// npm packages baked into the default node image.
    #[arg(long, value_delimiter = ',', value_name = "PACKAGES")]
    node: Vec<String>,
    /// npm packages baked into the default bun image.
    #[arg(long, value_delimiter = ',', value_name = "PACKAGES")]
    bun: Vec<String>,
    /// npm: or jsr: modules cached in the default deno image.
    #[arg(long, value_delimiter = ',', value_name = "MODULES")]
    deno: Vec<String>,
    /// Debian packages installed in the default bash image.
    #[arg(long, value_delimiter = ',', value_name = "PACKAGES")]
    bash: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// Runtime the image is based on.
    #[arg(long)]
    base: Runtime,
    /// Package to bake in. Repeatable and comma-separated.
    #[arg(long = "install", value_delimiter = ',', value_name = "PACKAGE")]
    install: Vec<String>,
    /// Extra name for the image, e.g. my-python [default: only its content-hashed tag,
    /// isol8-custom-<runtime>:<hash>].
    #[arg(long)]
    tag: Option<String>,
    /// Rebuild even when an image from the same recipe exists.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImagesArgs {
    /// Print the list as JSON (one object per image: tags, runtime, packages, sizeBytes,
    /// created, current).
    #[arg(long)]
    json: bool,
}

/// Shows build progress: a spinner per image on a terminal, plain lines otherwise.
pub(crate) struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    interactive: bool,
    show_up_to_date: bool,
}

impl Progress {
    /// `show_up_to_date`: also list images that needed no build (setup does; a run stays quiet).
    pub(crate) fn new(show_up_to_date: bool) -> Progress {
        Progress {
            bar: Mutex::new(None),
            interactive: std::io::stderr().is_terminal(),
            show_up_to_date,
        }
    }

    pub(crate) fn report(&self, event: BuildProgress) {
        let mut bar = self.bar.lock();
        match event {
            BuildProgress::UpToDate { image } if self.show_up_to_date => {
                eprintln!("[OK] {image}: up to date")
            }
            BuildProgress::UpToDate { .. } => {}
            BuildProgress::Started { image } if self.interactive => {
                let spinner = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {prefix} {wide_msg} [{elapsed}]")
                        .expect("valid template"),
                );
                spinner.set_prefix(image);
                spinner.enable_steady_tick(Duration::from_millis(120));
                *bar = Some(spinner);
            }
            BuildProgress::Started { image } => eprintln!("[INFO] building {image}"),
            BuildProgress::Step { image, step } => match bar.as_ref() {
                Some(spinner) => spinner.set_message(step),
                None => eprintln!("       {image}: {step}"),
            },
            BuildProgress::Finished { image } => {
                if let Some(spinner) = bar.take() {
                    spinner.finish_and_clear();
                }
                eprintln!("[OK] built {image}");
            }
        }
    }

    /// Clears a spinner left by a failed build so the error prints on a clean line.
    pub(crate) fn abandon(&self) {
        if let Some(spinner) = self.bar.lock().take() {
            spinner.finish_and_clear();
        }
    }
}

/// Connects to the local Docker engine, or says how to get one running.
pub(crate) async fn connect_engine(config: &ServerConfig) -> Result<Engine, CliError> {
    let docker_down = |e: isol8_server::engine::Error| {
        fail(format!(
            "Docker is not running or not installed. {e}\n      Start the Docker daemon (e.g. `sudo dockerd &`) or set DOCKER_HOST."
        ))
    };
    let engine = Engine::connect(config.engine_config().map_err(fail)?)
        .await
        .map_err(docker_down)?;
    engine.ping().await.map_err(docker_down)?;
    Ok(engine)
}

/// An engine on the local Docker for one command (build, cleanup, sessions): the user's config,
/// no warm pool.
pub(crate) async fn local_engine() -> Result<Engine, CliError> {
    let config = ServerConfig {
        pool_size: 0,
        ..ServerConfig::load_user().map_err(fail)?.0
    };
    connect_engine(&config).await
}

pub(crate) async fn setup(args: SetupArgs) -> CliResult {
    let runtimes = if args.runtimes.is_empty() {
        Runtime::ALL.to_vec()
    } else {
        args.runtimes
    };
    let defaults = [
        (Runtime::Python, args.python),
        (Runtime::Node, args.node),
        (Runtime::Bun, args.bun),
        (Runtime::Deno, args.deno),
        (Runtime::Bash, args.bash),
    ];
    let mut baked = Vec::new();
    for (runtime, names) in defaults {
        match PackageSet::parse(runtime, &names) {
            Ok(set) if !set.is_empty() => baked.push((runtime, set)),
            Ok(_) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    let engine = local_engine().await?;
    let progress = Progress::new(true);
    let report = |p| progress.report(p);
    let result = async {
        let mut tags = engine.build_images(&runtimes, args.force, &report).await?;
        for (runtime, packages) in &baked {
            let tag = engine
                .build_custom_image(*runtime, packages, None, true, args.force, &report)
                .await?;
            tags.insert(*runtime, tag);
        }
        Ok::<_, isol8_server::engine::Error>(tags)
    }
    .await;
    progress.abandon();
    engine.shutdown().await;
    match result {
        Ok(tags) => {
            for (runtime, tag) in tags {
                eprintln!("[OK] {runtime}: {tag}");
            }
            eprintln!("\n[DONE] Setup complete!");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(fail(e)),
    }
}

pub(crate) async fn build(args: BuildArgs) -> CliResult {
    let packages = match PackageSet::parse(args.base, &args.install) {
        Ok(set) if set.is_empty() => {
            return Err(fail("No packages specified. Use --install <package>."));
        }
        Ok(set) => set,
        Err(e) => return Err(fail(e)),
    };
    let engine = local_engine().await?;
    let progress = Progress::new(true);
    let result = engine
        .build_custom_image(
            args.base,
            &packages,
            args.tag.as_deref(),
            false,
            args.force,
            &|p| progress.report(p),
        )
        .await;
    progress.abandon();
    engine.shutdown().await;
    match result {
        Ok(tag) => {
            eprintln!("[DONE] Custom image build complete!");
            eprintln!("       Runtime:  {}", args.base);
            eprintln!(
                "       Packages: {}",
                packages.names().collect::<Vec<_>>().join(", ")
            );
            eprintln!("       Image:    {tag}");
            if let Some(alias) = args.tag {
                eprintln!("       Alias:    {alias}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(fail(e)),
    }
}

pub(crate) async fn list(args: ImagesArgs) -> CliResult {
    let engine = local_engine().await?;
    let images = engine.custom_images().await;
    engine.shutdown().await;
    let images = match images {
        Ok(i) => i,
        Err(e) => return Err(fail(e)),
    };
    if args.json {
        match serde_json::to_string_pretty(&images) {
            Ok(text) => outln!("{text}"),
            Err(e) => return Err(fail(e)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if images.is_empty() {
        eprintln!("[INFO] No custom isol8 images. Make one with `isol8 build --base python --install numpy`.");
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|image| {
            let mut tag = image.tags.join(", ");
            if tag.is_empty() {
                tag = image.id.clone();
            }
            if !image.current {
                tag.push_str(" (stale: built on an older runtime image, never used)");
            }
            [
                tag,
                image.runtime.to_string(),
                image.packages.join(","),
                human_size(image.size_bytes),
                age(now - image.created),
            ]
        })
        .collect();
    let header = ["IMAGE", "RUNTIME", "PACKAGES", "SIZE", "CREATED"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        outln!("{}", cells.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes as Docker prints them (decimal units).
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes}B"),
        _ => format!("{value:.1}{}", units[unit]),
    }
}

/// Seconds ago, as a person says it.
fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (n, unit) = match s {
        0..60 => return "just now".into(),
        60..3600 => (s / 60, "minute"),
        3600..86_400 => (s / 3600, "hour"),
        86_400..2_592_000 => (s / 86_400, "day"),
        2_592_000..31_536_000 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_docker_images() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(312_400_000), "312.4MB");
        assert_eq!(age(5), "just now");
        assert_eq!(age(60), "1 minute ago");
        assert_eq!(age(7200), "2 hours ago");
        assert_eq!(age(3 * 86_400), "3 days ago");
    }
}
