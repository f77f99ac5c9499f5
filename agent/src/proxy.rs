//! The filtered-mode egress proxy (port of docker/agent/proxy.py; being written).

use std::process::ExitCode;

pub(crate) fn main() -> ExitCode {
    eprintln!("isol8-agent proxy: not built yet");
    ExitCode::from(1)
}
