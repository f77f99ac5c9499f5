//! `CliError`: what a command failed with. Commands return it; `main` prints it, in one place.

use std::fmt::Display;
use std::process::ExitCode;

/// A command's failure.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Printed by `main` as `[ERR] message`; exit status 1.
    Message(String),
    /// Already told (a second Ctrl-C, a question answered no): exit with this status, silently.
    Exit(ExitCode),
}

/// A command's outcome: its exit status (a run's is its program's), or its failure.
pub(crate) type CliResult<T = ExitCode> = Result<T, CliError>;

/// A failure whose message is `message`.
pub(crate) fn fail(message: impl Display) -> CliError {
    CliError::Message(message.to_string())
}

impl CliError {
    /// Prints the failure (once) and gives the exit status.
    pub(crate) fn report(self) -> ExitCode {
        match self {
            CliError::Message(message) => {
                eprintln!("[ERR] {message}");
                ExitCode::FAILURE
            }
            CliError::Exit(code) => code,
        }
    }
}

impl From<isol8::ClientError> for CliError {
    fn from(e: isol8::ClientError) -> Self {
        fail(e)
    }
}

impl From<isol8_server::engine::Error> for CliError {
    fn from(e: isol8_server::engine::Error) -> Self {
        fail(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        fail(e)
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Message(message)
    }
}
