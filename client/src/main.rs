//! The `isol8` command line: argument parsing and dispatch to the commands.

mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use commands::admin::{self, CleanupArgs, ConfigArgs};
use commands::images::{self, BuildArgs, SetupArgs};
use commands::mcp::{self, McpArgs};
use commands::run::{self, RunArgs};
use commands::sessions::{self, SessionArgs};
use isol8_server::launch::{self, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "isol8",
    version,
    about = "Run untrusted code in locked-down Docker sandboxes",
    arg_required_else_help = true
)]
struct Cli {
    /// Debug logs for the CLI and engine (on stderr).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run code in a sandbox.
    ///
    /// Examples:
    ///   isol8 run -e "print(2 ** 10)" --runtime python
    ///   isol8 run script.py --stdin "input"
    ///   echo 'console.log(1)' | isol8 run -r node
    ///   isol8 run job.py --host http://sandbox:3000 --key "$KEY"
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// Start the HTTP server.
    ///
    /// Examples:
    ///   ISOL8_API_KEY=secret isol8 serve --port 3000
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Build the runtime images (cached by recipe hash; --force rebuilds).
    ///
    /// Examples:
    ///   isol8 setup
    ///   isol8 setup --runtime python --python numpy,pandas
    #[command(verbatim_doc_comment)]
    Setup(SetupArgs),
    /// Build a custom image: a runtime image with packages baked in.
    ///
    /// Runs whose installPackages (or --install) the image holds use it, with no install at run time.
    ///
    /// Examples:
    ///   isol8 build --base python --install numpy,requests --tag my-python
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
    /// List or stop sessions (this machine's CLI sessions, or a server's with --host).
    ///
    /// Examples:
    ///   isol8 session list
    ///   isol8 session stop my-notebook
    ///   isol8 session list --host http://sandbox:3000 --key "$KEY" --json
    #[command(verbatim_doc_comment)]
    Session(SessionArgs),
    /// Serve the MCP tools (run_code, run_command, files, sessions) over stdio, for AI agents.
    ///
    /// Runs on this machine's Docker (an in-process server) unless --host is given. Stdout
    /// carries only MCP messages; logs go to stderr.
    ///
    /// Examples:
    ///   isol8 mcp
    ///   isol8 mcp --host http://sandbox:3000 --key "$KEY"
    #[command(verbatim_doc_comment)]
    Mcp(McpArgs),
    /// Show the resolved configuration and where it came from.
    Config(ConfigArgs),
    /// Remove isol8's containers (and images with --images) from this Docker engine.
    Cleanup(CleanupArgs),
    /// Print a shell completion script, e.g. `isol8 completions bash > /etc/bash_completion.d/isol8`.
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return err(format!("cannot start: {e}")),
    };
    // `serve` starts logging once it has read the config (which picks the log format).
    if !matches!(cli.command, Command::Serve(_)) {
        init_cli_logging(cli.debug);
    }
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Serve(args) => launch::serve(args, cli.debug).await,
            Command::Setup(args) => images::setup(args).await,
            Command::Build(args) => images::build(args).await,
            Command::Session(args) => sessions::session(args).await,
            Command::Mcp(args) => mcp::mcp(args).await,
            Command::Config(args) => admin::config(args),
            Command::Cleanup(args) => admin::cleanup(args).await,
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "isol8",
                    &mut std::io::stdout(),
                );
                ExitCode::SUCCESS
            }
        }
    })
}

/// The CLI is quiet unless asked: warnings only, `--debug` for everything.
fn init_cli_logging(debug: bool) {
    let filter = if debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISOL8_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn err(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("[ERR] {message}");
    ExitCode::FAILURE
}
