//! The `isol8` command line: argument parsing and dispatch to the commands.

mod commands;
mod error;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use commands::admin::{self, CleanupArgs, ConfigArgs};
use commands::audit::{self as audit_cmd, AuditArgs};
use commands::images::{self, BuildArgs, ImagesArgs, SetupArgs};
use commands::keys::{self as keys_cmd, KeysArgs};
use commands::login::{self, LoginArgs};
use commands::mcp::{self, McpArgs};
use commands::run::{self, RunArgs};
use commands::sessions::{self, SessionArgs};
use error::{fail, CliError};
use isol8_server::launch::{self, ServeArgs};

/// `isol8 --help`'s closing lines.
const MAIN_EXAMPLES: &str = "\
Examples:
  isol8 run -e \"print(2 ** 10)\"                        run Python (the default for -e and stdin)
  isol8 run script.ts --net filtered --allow '^api\\.openai\\.com$'
  ISOL8_API_KEY=secret isol8 serve --port 3000          the HTTP API for agents and other clients

Environment:
  ISOL8_API_KEY          key for --host (and the key `isol8 serve` requires)
  ISOL8_EXTRA_CA_CERTS   extra CA files (`,` or `:` separated) trusted in images and sandboxes,
                         besides the host's bundle (ISOL8_HOST_CA_CERTS names another, or none)
  ISOL8_CONFIG           the config file [default: ./isol8.config.json, else ~/.isol8/config.json]
  ISOL8_LOG              log filter, e.g. debug

Full reference: docs/cli.md";

#[derive(Debug, Parser)]
#[command(
    name = "isol8",
    version,
    about = "Run untrusted code in locked-down Docker sandboxes",
    long_about = "Run untrusted code in locked-down Docker sandboxes.\n\n\
        isol8 runs Python, Node, Bun, Deno and Bash code in read-only, capability-less containers with \
        memory, CPU, process and time limits and no network unless asked, and returns its output. \
        `isol8 run` starts the same HTTP server `isol8 serve` runs, in-process on loopback, or talks \
        to a remote one with --host.",
    after_help = MAIN_EXAMPLES,
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
    /// Run code in a sandbox and print its output.
    ///
    /// The code is a file (runtime from its extension), -e CODE or standard input (python unless
    /// --runtime says otherwise), a shell command (--cmd, bash), or a URL the server fetches
    /// (--url, --github, --gist). Output streams as it is produced (with -i, standard input
    /// too); the exit status is the program's (1 when it was stopped by a limit without one of
    /// its own).
    #[command(after_help = "\
Examples:
  isol8 run -e \"print(2 ** 10)\"
  echo 'console.log(1)' | isol8 run -r node
  isol8 run main.py --files ./project --setup 'pip list' --workdir /sandbox/src
  isol8 run --cmd 'ls -la /sandbox' --files .
  isol8 run -i quiz.py
  isol8 run job.py --host http://sandbox:3000 --key \"$KEY\" --net filtered --allow '^api\\.openai\\.com$'")]
    Run(Box<RunArgs>),
    /// Start the HTTP API server (its contract: openapi/openapi.json).
    ///
    /// Every route but /health and /ready needs `Authorization: Bearer <key>`. Limits, network
    /// policy and capacity come from the config file (see `isol8 config`).
    #[command(after_help = "\
Examples:
  ISOL8_API_KEY=secret isol8 serve
  isol8 serve --port 8080 --bind 127.0.0.1 --key secret
  ISOL8_ALLOWED_NETWORKS=none,filtered,host isol8 serve --key secret")]
    Serve(ServeArgs),
    /// Build the runtime images (cached by recipe hash).
    ///
    /// The first build bootstraps a Debian root filesystem with debootstrap (about two minutes);
    /// later ones are cached until a recipe or the trusted CA certificates change.
    #[command(after_help = "\
Examples:
  isol8 setup
  isol8 setup --runtime python,bash
  isol8 setup --runtime python --python numpy,pandas")]
    Setup(SetupArgs),
    /// Build a custom image: a runtime image with packages baked in.
    ///
    /// Runs whose installPackages (or --install) the image holds use it, with no install at run
    /// time. Packages come from the public registries, or a mirror named by PIP_INDEX_URL (+
    /// PIP_TRUSTED_HOST) or npm_config_registry.
    #[command(after_help = "\
Examples:
  isol8 build --base python --install numpy,requests
  isol8 build --base node --install lodash --tag my-node
  PIP_INDEX_URL=https://pypi.internal/simple isol8 build --base python --install mylib")]
    Build(BuildArgs),
    /// List the custom images on this Docker engine: packages, size and age.
    #[command(
        visible_alias = "list-custom",
        after_help = "\
Examples:
  isol8 images
  isol8 list-custom
  isol8 images --json | jq -r '.[].tags[0]'"
    )]
    Images(ImagesArgs),
    /// List or stop sessions (this machine's CLI sessions, or a server's with --host).
    #[command(after_help = "\
Examples:
  isol8 session list
  isol8 session stop my-notebook
  isol8 session list --host http://sandbox:3000 --key \"$KEY\" --json")]
    Session(SessionArgs),
    /// Get a fresh key from a server (with its master key) and store it for that host.
    ///
    /// Later remote commands for that host use it when neither --key nor ISOL8_API_KEY is given.
    ///
    /// Examples:
    ///   isol8 login --host https://sandbox.example.com --key "$MASTER_KEY" --ttl 86400000
    #[command(verbatim_doc_comment)]
    Login(LoginArgs),
    /// Forget the stored credentials (~/.isol8/credentials.json); the key stays valid on the server.
    Logout,
    /// Make, list or revoke a server's keys (master key).
    ///
    /// Examples:
    ///   isol8 keys create --host http://sandbox:3000 --name ci --tenant team-a
    ///   isol8 keys list --host http://sandbox:3000 --json
    ///   isol8 keys revoke --host http://sandbox:3000 KEY_ID
    #[command(verbatim_doc_comment)]
    Keys(KeysArgs),
    /// Show a server's audit trail of executions (master key).
    ///
    /// Examples:
    ///   isol8 audit --host http://sandbox:3000 --tenant team-a --since 2026-11-29T00:00:00Z
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),
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
    #[command(after_help = "\
Examples:
  isol8 config
  isol8 config --json
  ISOL8_CONFIG=./prod.json isol8 config --json | jq .allowedNetworks")]
    Config(ConfigArgs),
    /// Remove isol8's containers (and images with --images) from this Docker engine.
    #[command(after_help = "\
Examples:
  isol8 cleanup
  isol8 cleanup --force
  isol8 cleanup --force --images")]
    Cleanup(CleanupArgs),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  isol8 completions bash > /etc/bash_completion.d/isol8
  isol8 completions zsh > \"${fpath[1]}/_isol8\"
  isol8 completions fish > ~/.config/fish/completions/isol8.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start: {e}")).report(),
    };
    // `serve` starts logging once it has read the config (which picks the log format).
    if !matches!(cli.command, Command::Serve(_)) {
        init_cli_logging(cli.debug);
    }
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Serve(args) => Ok(launch::serve(args, cli.debug).await),
            Command::Setup(args) => images::setup(args).await,
            Command::Build(args) => images::build(args).await,
            Command::Images(args) => images::list(args).await,
            Command::Session(args) => sessions::session(args).await,
            Command::Login(args) => login::login(args).await,
            Command::Logout => login::logout(),
            Command::Keys(args) => keys_cmd::keys(args).await,
            Command::Audit(args) => audit_cmd::audit(args).await,
            Command::Mcp(args) => mcp::mcp(args).await,
            Command::Config(args) => admin::config(args),
            Command::Cleanup(args) => admin::cleanup(args).await,
            Command::Completions { shell } => {
                // Into a buffer first: clap_complete panics on a write error (a closed pipe).
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "isol8", &mut script);
                output::write_stdout(&script);
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // Every command's failure is printed here, once.
    outcome.unwrap_or_else(CliError::report)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/cli.md` is generated from this parser; regenerate with
    /// `ISOL8_UPDATE_DOCS=1 cargo test -p isol8 --bin isol8 docs`.
    #[test]
    fn docs_cli_md_is_the_generated_reference() {
        let options = clap_markdown::MarkdownOptions::new()
            .title("isol8 command-line reference".into())
            .show_footer(false);
        let generated = format!(
            "<!-- Generated from the CLI's clap definitions: ISOL8_UPDATE_DOCS=1 cargo test -p isol8 --bin isol8 docs -->\n\n{}",
            fence_blocks(&clap_markdown::help_markdown_custom::<Cli>(&options))
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md");
        if std::env::var_os("ISOL8_UPDATE_DOCS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/cli.md is stale; regenerate with ISOL8_UPDATE_DOCS=1 cargo test -p isol8 --bin isol8 docs"
        );
    }

    /// The indented lines under "Examples:" and "Environment:" as fenced blocks, so Markdown keeps
    /// them one per line.
    fn fence_blocks(markdown: &str) -> String {
        let mut out = String::new();
        let mut fenced = false;
        for line in markdown.lines() {
            if fenced && !line.starts_with("  ") {
                out.push_str("```\n");
                fenced = false;
            }
            out.push_str(line);
            out.push('\n');
            if line == "Examples:" || line == "Environment:" {
                out.push_str("```text\n");
                fenced = true;
            }
        }
        if fenced {
            out.push_str("```\n");
        }
        out
    }

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }
}
