//! `isol8-agent`: the one static binary isol8 puts into every sandbox (read-only, from a volume).
//! Without arguments it is the sandbox's init and agent (`agent`); `isol8-agent proxy` is the
//! filtered-mode egress proxy, run in its own container (`proxy`); `isol8-agent archive …` the
//! workspace snapshots the engine runs through `docker exec` (`archive`).

mod agent;
mod archive;
mod proxy;
mod sys;

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => agent::main(),
        Some("proxy") => proxy::main(),
        Some("archive") => archive::main(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some(other) => {
            eprintln!(
                "isol8-agent: unknown mode {other:?} (expected no argument, `proxy` or `archive`)"
            );
            ExitCode::from(2)
        }
    }
}
