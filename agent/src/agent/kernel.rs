//! A session's long-lived interpreter (the kernels in /opt/isol8/agent/kernels): its output
//! pipes stay open between cells, and output that arrives while no cell runs (a background job)
//! is dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use serde_json::Value;

use super::job::Job;
use super::spawn::{pipe, spawn};
use super::{agent_env, SANDBOX_DIR};
use crate::sys;

/// Where the volume isol8 mounts into every sandbox holds the session kernels.
const KERNEL_DIR: &str = "/opt/isol8/agent/kernels";

/// The command line of each runtime's session interpreter.
fn command(runtime: &str) -> Option<Vec<String>> {
    let kernel = |file: &str| format!("{KERNEL_DIR}/{file}");
    let argv = match runtime {
        "python" => vec!["python3".into(), "-u".into(), kernel("python.py")],
        "node" => vec![
            "node".into(),
            "--disable-warning=ExperimentalWarning".into(),
            kernel("js.mjs"),
        ],
        "bun" => vec!["bun".into(), kernel("js.mjs")],
        "deno" => vec!["deno".into(), "run".into(), "-A".into(), kernel("js.mjs")],
        "bash" => vec![
            "bash".into(),
            "--noprofile".into(),
            "--norc".into(),
            kernel("bash.sh"),
        ],
        _ => return None,
    };
    Some(argv)
}

#[derive(Debug)]
pub(crate) struct Kernel {
    pub(crate) runtime: String,
    pub(crate) pid: i32,
    /// Where cells (and display acknowledgements) go: the kernel's fd 3.
    control: File,
    /// Its stdout and stderr, with their stream numbers, while open.
    pub(crate) outputs: Vec<(File, u8)>,
    /// Its reports (cell done, display results): the kernel's fd 4, while open.
    pub(crate) reports: Option<File>,
    reports_buf: Vec<u8>,
}

impl Kernel {
    pub(crate) fn start(runtime: &str) -> io::Result<Kernel> {
        let argv = command(runtime).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no session interpreter for runtime {runtime:?}"),
            )
        })?;
        let (control_r, control) = pipe()?;
        let (reports, reports_w) = pipe()?;
        let spawned = spawn(
            &argv,
            &agent_env(),
            SANDBOX_DIR,
            vec![control_r, reports_w],
            None,
        )?;
        // Cells get their stdin from the cell message.
        drop(spawned.stdin);
        for file in [&spawned.stdout, &spawned.stderr, &reports] {
            sys::set_blocking(file.as_fd(), false)?;
        }
        Ok(Kernel {
            runtime: runtime.to_string(),
            pid: spawned.pid,
            control,
            outputs: vec![(spawned.stdout, 1), (spawned.stderr, 2)],
            reports: Some(reports),
            reports_buf: Vec::new(),
        })
    }

    /// Reads once from output pipe `index` and hands the bytes to `cell` (dropped when no cell
    /// runs). Returns whether anything was read; closes the pipe at its end.
    pub(crate) fn read_output(
        &mut self,
        index: usize,
        cell: Option<&mut Job>,
        buf: &mut [u8],
    ) -> bool {
        let (pipe, stream) = &mut self.outputs[index];
        let stream = *stream;
        match pipe.read(buf) {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                false
            }
            Ok(0) | Err(_) => {
                self.outputs.remove(index);
                false
            }
            Ok(n) => {
                if let Some(cell) = cell {
                    cell.forward(stream, &buf[..n]);
                }
                true
            }
        }
    }

    /// Reads what the interpreter wrote before it reported (it flushed first). Bounded: a
    /// background writer the cell left (`yes &`) must not hold the agent here forever.
    pub(crate) fn drain(&mut self, mut cell: Option<&mut Job>, buf: &mut [u8]) {
        const MAX_READS: usize = 64;
        let (mut index, mut reads) = (0, 0);
        while index < self.outputs.len() && reads < MAX_READS {
            reads += 1;
            let open = self.outputs.len();
            if !self.read_output(index, cell.as_deref_mut(), buf) && self.outputs.len() == open {
                index += 1;
            }
        }
    }

    /// The complete JSON lines of the report pipe so far (none at its end).
    pub(crate) fn read_reports(&mut self, buf: &mut [u8]) -> Vec<Value> {
        let Some(reports) = self.reports.as_mut() else {
            return Vec::new();
        };
        match reports.read(buf) {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Vec::new()
            }
            Ok(0) | Err(_) => {
                self.reports = None; // the interpreter is gone
                return Vec::new();
            }
            Ok(n) => self.reports_buf.extend_from_slice(&buf[..n]),
        }
        let mut lines = Vec::new();
        while let Some(end) = self.reports_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.reports_buf.drain(..=end).collect();
            // A cell's code may write to the report pipe too: not the kernel's line.
            if let Ok(value) = serde_json::from_slice::<Value>(&line) {
                lines.push(value);
            }
        }
        lines
    }

    /// The publisher waits for this after each result (see isol8_display.publish).
    pub(crate) fn ack_display(&mut self) {
        let _ = self.write_line(""); // the interpreter may be gone
    }

    pub(crate) fn write_line(&mut self, line: &str) -> io::Result<()> {
        let mut data = line.as_bytes().to_vec();
        data.push(b'\n');
        self.control.write_all(&data)
    }
}
