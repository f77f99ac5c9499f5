//! `isol8-agent`: the one static binary isol8 puts into every sandbox (read-only, from a volume).
//! Without arguments it is the sandbox's init and agent (`agent`); `isol8-agent proxy` is the
//! filtered-mode egress proxy, run in its own container (`proxy`).

mod agent;
mod proxy;
mod sys;

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => agent::main(),
        Some("proxy") => proxy::main(),
        Some(other) => {
            eprintln!("isol8-agent: unknown mode {other:?} (expected no argument, or `proxy`)");
            ExitCode::from(2)
        }
    }
}
