//! The `isol8-server` binary: the HTTP service alone (the `isol8` CLI's `serve` runs the same code).

use std::process::ExitCode;

use clap::Parser;
use isol8_server::launch::{serve, ServeArgs};

#[derive(Debug, Parser)]
#[command(name = "isol8-server", version, about = "The isol8 HTTP service")]
struct Cli {
    /// Debug logs.
    #[arg(long)]
    debug: bool,
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    serve(cli.serve, cli.debug).await
}
