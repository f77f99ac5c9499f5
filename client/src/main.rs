//! The `isol8` command line: parses arguments and dispatches to the commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use isol8_api::Runtime;
use isol8_server::engine::{BuildProgress, Engine, EngineConfig};

#[derive(Debug, Parser)]
#[command(
    name = "isol8",
    version,
    about = "Run untrusted code in locked-down Docker sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the runtime images (cached by recipe hash; --force rebuilds).
    Setup {
        #[arg(long)]
        force: bool,
        /// Runtimes to build (default: all).
        #[arg(long = "runtime", value_delimiter = ',')]
        runtimes: Vec<Runtime>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup { force, runtimes } => {
            let runtimes = if runtimes.is_empty() {
                Runtime::ALL.to_vec()
            } else {
                runtimes
            };
            let config = EngineConfig {
                warm_runtimes: vec![],
                ..Default::default()
            };
            let engine = match Engine::connect(config).await {
                Ok(e) => e,
                Err(err) => {
                    eprintln!("[ERR] Docker is not running or not installed. {err}");
                    return ExitCode::FAILURE;
                }
            };
            let progress = |p: BuildProgress| match p {
                BuildProgress::UpToDate { image } => eprintln!("[OK] {image} is up to date"),
                BuildProgress::Started { image } => eprintln!("[INFO] building {image}"),
                BuildProgress::Step { image, step } => eprintln!("       {image}: {step}"),
                BuildProgress::Finished { image } => eprintln!("[OK] built {image}"),
            };
            let result = engine.build_images(&runtimes, force, &progress).await;
            engine.shutdown().await;
            match result {
                Ok(tags) => {
                    for (runtime, tag) in tags {
                        eprintln!("[OK] {runtime}: {tag}");
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("[ERR] {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
