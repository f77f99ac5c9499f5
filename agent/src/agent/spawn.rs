//! Starting a program of the sandbox: its own session, piped stdio, the descriptors it is given
//! at fixed numbers, and nothing else of the agent's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};

use crate::sys;

/// Where a pre-started interpreter's loader reads its run (see `waiting.rs`): above what an
/// interpreter opens at start, so its own descriptors number as usual.
pub(crate) const HANDOFF_FD: RawFd = 99;

/// A started program: its pid and the agent's ends of its stdio pipes.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) stdin: File,
    pub(crate) stdout: File,
    pub(crate) stderr: File,
}

/// An OS pipe as (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> io::Result<(File, File)> {
    let (reader, writer) = io::pipe()?;
    Ok((
        File::from(OwnedFd::from(reader)),
        File::from(OwnedFd::from(writer)),
    ))
}

/// Starts `argv` in `cwd` with exactly `env`. `extra` descriptors become 3, 4, … and `handoff`
/// becomes HANDOFF_FD in the program; the agent's copies close when this returns. An error means
/// the program did not start (no such program, not executable, the pids limit).
pub(crate) fn spawn(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
    extra: Vec<File>,
    handoff: Option<File>,
) -> io::Result<Spawned> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an empty command line"))?;
    let mut placed: Vec<(RawFd, RawFd)> = extra
        .iter()
        .zip(3..)
        .map(|(file, target)| (file.as_raw_fd(), target))
        .collect();
    if let Some(handoff) = &handoff {
        placed.push((handoff.as_raw_fd(), HANDOFF_FD));
    }
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::prepare_program(&mut command, placed);
    let mut child = command.spawn()?;
    // The given descriptors (`extra`, `handoff`) are the program's now: dropped here.
    drop((extra, handoff));
    let taken = |pipe: Option<OwnedFd>| File::from(pipe.expect("piped"));
    Ok(Spawned {
        pid: child.id() as i32,
        stdin: taken(child.stdin.take().map(OwnedFd::from)),
        stdout: taken(child.stdout.take().map(OwnedFd::from)),
        stderr: taken(child.stderr.take().map(OwnedFd::from)),
    })
}
