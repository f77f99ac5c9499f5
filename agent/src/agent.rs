//! The sandbox's init and agent (port of docker/agent/agent.py; being written).

use std::process::ExitCode;

pub(crate) fn main() -> ExitCode {
    eprintln!("isol8-agent: not built yet");
    ExitCode::from(1)
}
