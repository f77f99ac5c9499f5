//! One run or session cell: its pipes, its limits, what it produced so far, and its result.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::kernel::Kernel;
use super::proto::{emit, emit_out, CellRequest, JobLimits, RunRequest, B64};
use super::sandbox::{self, absolute, WIPE_DIRS};
use super::spawn::spawn;
use super::waiting::Waiting;
use super::{program_env, DisplayPipes, READ_CHUNK, SANDBOX_DIR};
use crate::sys;

/// Where a bash session's cell and its stdin are written for the kernel to source.
const CELL_DIR: &str = "/tmp/.isol8-cell";

/// How a job ended, when not by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Timeout,
    Killed,
    OutputLimit,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Timeout => "timeout",
            Ending::Killed => "killed",
            Ending::OutputLimit => "output_limit",
        }
    }
}

/// The counters a job's usage is the difference of.
#[derive(Debug)]
struct Before {
    oom_kills: Option<u64>,
    cgroup_cpu_ns: Option<u64>,
    own_cpu_ns: u64,
    net: (u64, u64),
}

impl Before {
    fn now() -> Before {
        Before {
            oom_kills: sandbox::oom_kill_count(),
            cgroup_cpu_ns: sandbox::cgroup_cpu_ns(),
            own_cpu_ns: sys::own_cpu_ns(),
            net: sandbox::net_bytes(),
        }
    }
}

/// A one-shot program's display channel, as the agent reads it.
#[derive(Debug)]
pub(crate) struct DisplayChannel {
    pub(crate) reader: File,
    ack: File,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Job {
    /// A session cell (run by the kernel) rather than a program of its own.
    pub(crate) cell: bool,
    /// The program's main process (a cell's: the kernel's), also its process group.
    pub(crate) pid: i32,
    limits: JobLimits,
    cwd: String,
    code_path: Option<String>,
    counts: [u64; 3],
    truncated: bool,
    pub(crate) ending: Option<Ending>,
    /// The main process's wait status, once it ended (a cell's: encoded from the kernel's report).
    pub(crate) exit_status: Option<i32>,
    started: Instant,
    pub(crate) deadline: Instant,
    before: Before,
    /// The largest resident set of the processes reaped since the job began.
    pub(crate) reaped_peak_rss: u64,
    /// The program's stdout and stderr still open, with their stream numbers.
    pub(crate) pipes: Vec<(File, u8)>,
    pub(crate) display: Option<DisplayChannel>,
    pub(crate) stdin: Option<File>,
    stdin_buf: Vec<u8>,
    /// Live stdin (a WebSocket client typing): the pipe stays open until the client says eof.
    stdin_eof: bool,
    /// A run in a session container: its kill reaches only its own process group, so the
    /// session's interpreter survives a `cmd` or setup script.
    pub(crate) scoped: bool,
    /// The program never started; its stderr says why.
    exec_failed: bool,
    prestarted: bool,
    /// The kernel died during this cell.
    pub(crate) kernel_died: bool,
    /// Reported: the session's earlier state is gone.
    pub(crate) restarted: bool,
}

fn decode(b64: &str, what: &str) -> io::Result<Vec<u8>> {
    B64.decode(b64)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {err}")))
}

fn write_files(files: &BTreeMap<String, String>, cwd: &str) -> io::Result<()> {
    for (path, b64) in files {
        sandbox::write_file(&absolute(path, cwd), &decode(b64, path)?)?;
    }
    Ok(())
}

impl Job {
    fn new(cell: bool, limits: JobLimits, cwd: String) -> Job {
        let started = Instant::now();
        Job {
            cell,
            pid: 0,
            deadline: started + Duration::from_millis(limits.timeout_ms),
            limits,
            cwd,
            code_path: None,
            counts: [0; 3],
            truncated: false,
            ending: None,
            exit_status: None,
            started,
            before: Before::now(),
            reaped_peak_rss: 0,
            pipes: Vec::new(),
            display: None,
            stdin: None,
            stdin_buf: Vec::new(),
            stdin_eof: true,
            scoped: false,
            exec_failed: false,
            prestarted: false,
            kernel_died: false,
            restarted: false,
        }
    }

    /// Writes the run's files and starts its program: in `waiting`, the pre-started interpreter
    /// made for a run like this one, when this run is one (see `Waiting::fits`); else a new
    /// process. `waiting` is used or killed here, never left for a later run.
    pub(crate) fn start_run(
        req: RunRequest,
        waiting: Option<Waiting>,
        scoped: bool,
    ) -> io::Result<Job> {
        let cwd = req.cwd.clone().unwrap_or_else(|| SANDBOX_DIR.to_string());
        let mut job = Job::new(false, req.limits.clone(), cwd.clone());
        job.scoped = scoped;
        write_files(&req.files, &cwd)?;
        fs::create_dir_all(&cwd)?;
        if let Some(code_path) = &req.code_path {
            let code = decode(req.code.as_deref().unwrap_or(""), "code")?;
            sandbox::write_file(code_path.as_ref(), &code)?;
            job.code_path = Some(code_path.clone());
        }
        // The caller's MPLBACKEND or PYTHONPATH wins over the display channel's.
        let env = program_env(&req.env, req.display);
        let handed = waiting
            .filter(|w| w.fits(&req.argv, &cwd, &env, req.display))
            .and_then(|w| w.hand_over(&cwd, &env));
        let (pid, stdin, stdout, stderr, display) = match handed {
            Some(handed) => {
                job.prestarted = true;
                (
                    handed.pid,
                    handed.stdin,
                    handed.stdout,
                    handed.stderr,
                    handed.display,
                )
            }
            None => {
                let (display, extra) = DisplayPipes::open(req.display)?;
                match spawn(&req.argv, &env, &cwd, extra, None) {
                    Ok(s) => (s.pid, s.stdin, s.stdout, s.stderr, display),
                    Err(err) if is_exec_failure(&err) => {
                        job.not_started(&req.argv[0], &err);
                        return Ok(job);
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        job.pid = pid;
        for (pipe, stream) in [(stdout, 1), (stderr, 2)] {
            sys::set_blocking(pipe.as_fd(), false)?;
            job.pipes.push((pipe, stream));
        }
        if let Some(pipes) = display {
            // Counted as an output pipe: the run ends once the program's last figure is read.
            sys::set_blocking(pipes.reader.as_fd(), false)?;
            job.display = Some(DisplayChannel {
                reader: pipes.reader,
                ack: pipes.ack,
                buf: Vec::new(),
            });
        }
        job.stdin_eof = !req.live_stdin;
        let stdin_data = req.stdin.as_deref().unwrap_or("");
        if !stdin_data.is_empty() || !job.stdin_eof {
            job.stdin_buf = decode(stdin_data, "stdin")?;
            sys::set_blocking(stdin.as_fd(), false)?;
            job.stdin = Some(stdin);
        }
        Ok(job)
    }

    /// A program that could not be started: exit 127, status error, and why on its stderr.
    fn not_started(&mut self, program: &str, err: &io::Error) {
        self.exec_failed = true;
        // As shells say it: 127 when there is no such program, 126 when it cannot run.
        let code = if err.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        self.exit_status = Some(code << 8);
        self.forward(
            2,
            format!("isol8: cannot start {program}: {err}\n").as_bytes(),
        );
    }

    /// Writes the cell's files and hands its code to the session's interpreter.
    pub(crate) fn start_cell(
        req: CellRequest,
        kernel: &mut Kernel,
        restarted: bool,
    ) -> io::Result<Job> {
        let mut job = Job::new(
            true,
            req.limits.clone(),
            req.cwd.clone().unwrap_or_else(|| SANDBOX_DIR.to_string()),
        );
        job.restarted = restarted;
        job.pid = kernel.pid;
        write_files(&req.files, &job.cwd)?;
        if let Some(cwd) = &req.cwd {
            fs::create_dir_all(cwd)?;
        }
        let code = String::from_utf8_lossy(&decode(&req.code, "code")?).into_owned();
        let stdin = String::from_utf8_lossy(&decode(req.stdin.as_deref().unwrap_or(""), "stdin")?)
            .into_owned();
        if kernel.runtime == "bash" {
            // bash reads no JSON: the cell and its stdin go to files, the line to run sources them.
            fs::create_dir_all(CELL_DIR)?;
            sandbox::write_file(format!("{CELL_DIR}/cell.sh").as_ref(), code.as_bytes())?;
            sandbox::write_file(format!("{CELL_DIR}/stdin").as_ref(), stdin.as_bytes())?;
            let exports: String = req
                .env
                .iter()
                .map(|(k, v)| format!("export {k}={}; ", shell_quote(v)))
                .collect();
            let chdir = req
                .cwd
                .as_deref()
                .map(|cwd| format!("cd {} && ", shell_quote(cwd)))
                .unwrap_or_default();
            kernel.write_line(&format!(
                "{exports}{chdir}source {CELL_DIR}/cell.sh < {CELL_DIR}/stdin"
            ))?;
        } else {
            let line = json!({"code": code, "stdin": stdin, "env": req.env, "cwd": req.cwd});
            kernel.write_line(&line.to_string())?;
        }
        Ok(job)
    }

    /// Emits output up to the cap of its stream; past it, output is read and discarded, and the
    /// program runs on to its own end (its exit code is reported, the same every run).
    pub(crate) fn forward(&mut self, stream: u8, data: &[u8]) {
        let count = &mut self.counts[usize::from(stream)];
        let room = self.limits.max_output.saturating_sub(*count) as usize;
        let data = if data.len() > room {
            self.truncated = true;
            &data[..room]
        } else {
            data
        };
        *count += data.len() as u64;
        if !data.is_empty() {
            emit_out(stream, data);
        }
    }

    /// Emits one code-interpreter result, counted toward stdout's cap (a flood of figures is
    /// output too).
    pub(crate) fn display(&mut self, bundle: &Value, size: usize) {
        let Some(bundle) = bundle.as_object().filter(|b| !b.is_empty()) else {
            return;
        };
        if self.truncated {
            return;
        }
        if size as u64 > self.limits.max_output.saturating_sub(self.counts[1]) {
            self.truncated = true;
            self.terminate(Ending::OutputLimit);
            return;
        }
        self.counts[1] += size as u64;
        emit(&json!({"ev": "display", "data": bundle}));
    }

    pub(crate) fn terminate(&mut self, ending: Ending) {
        self.ending.get_or_insert(ending);
        self.kill();
    }

    /// Everything but the agent; in a session (`scoped`), only this run's process group.
    pub(crate) fn kill(&self) {
        if self.scoped {
            // A program that never started has no group (and kill(0) would be the agent's own).
            if self.pid > 0 {
                let _ = sys::kill(-self.pid, libc::SIGKILL);
            }
        } else {
            sandbox::kill_all();
        }
    }

    pub(crate) fn signal(&self, signal: libc::c_int) {
        if self.pid > 0 {
            let _ = sys::kill(-self.pid, signal);
        }
    }

    /// Reads once from output pipe `index`; at its end, closes it.
    pub(crate) fn on_pipe(&mut self, index: usize, buf: &mut [u8]) {
        let (pipe, stream) = &mut self.pipes[index];
        let stream = *stream;
        match pipe.read(buf) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => {
                self.pipes.remove(index);
            }
            Ok(n) => self.forward(stream, &buf[..n]),
        }
    }

    /// Reads what a one-shot program wrote to stdout and stderr before its latest result.
    fn drain_pipes(&mut self, buf: &mut [u8]) {
        let mut index = 0;
        while index < self.pipes.len() {
            let before = (self.pipes.len(), self.counts);
            self.on_pipe(index, buf);
            if self.pipes.len() == before.0 && self.counts == before.1 {
                index += 1; // nothing more there now
            }
        }
    }

    /// Reads a one-shot program's display channel: complete lines are results.
    pub(crate) fn on_display_pipe(&mut self, buf: &mut [u8]) {
        let Some(channel) = self.display.as_mut() else {
            return;
        };
        match channel.reader.read(buf) {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Ok(0) | Err(_) => self.display = None,
            Ok(n) => {
                channel.buf.extend_from_slice(&buf[..n]);
                while let Some(end) = self
                    .display
                    .as_ref()
                    .and_then(|c| c.buf.iter().position(|&b| b == b'\n'))
                {
                    let Some(channel) = self.display.as_mut() else {
                        return;
                    };
                    let line: Vec<u8> = channel.buf.drain(..=end).collect();
                    let line = &line[..line.len() - 1];
                    // Anything else the program wrote to fd 3 is not a result.
                    if let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(line) {
                        let mut scratch = vec![0; READ_CHUNK];
                        self.drain_pipes(&mut scratch);
                        self.display(message.get("display").unwrap_or(&Value::Null), line.len());
                    }
                    // Lets the program go on past its result (it waits, so its later output
                    // cannot pass it). A program gone needs no answer.
                    if let Some(channel) = self.display.as_mut() {
                        let _ = channel.ack.write_all(b"\n");
                    }
                }
            }
        }
    }

    /// Whether the agent waits to write stdin to the program.
    pub(crate) fn wants_stdin_write(&self) -> bool {
        self.stdin.is_some() && (!self.stdin_buf.is_empty() || self.stdin_eof)
    }

    /// Live stdin from the client; ignored once stdin is closed (the program is not reading).
    pub(crate) fn more_stdin(&mut self, data: &[u8], eof: bool) {
        if self.stdin.is_none() || self.stdin_eof {
            return;
        }
        self.stdin_buf.extend_from_slice(data);
        self.stdin_eof = eof;
    }

    pub(crate) fn feed_stdin(&mut self) {
        let Some(pipe) = self.stdin.as_mut() else {
            return;
        };
        let chunk = self.stdin_buf.len().min(READ_CHUNK);
        match pipe.write(&self.stdin_buf[..chunk]) {
            Ok(n) => {
                self.stdin_buf.drain(..n);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(_) => {
                // The program closed its stdin: the rest is not wanted.
                self.stdin_buf.clear();
                self.stdin_eof = true;
            }
        }
        if self.stdin_buf.is_empty() && self.stdin_eof {
            self.stdin = None;
        }
    }

    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub(crate) fn close_display(&mut self) {
        self.display = None;
    }

    /// Takes note of the processes reaped; the run ends with its main process, and what it left
    /// behind dies with it, so the pipes close.
    pub(crate) fn on_reaped(&mut self, reaped: &HashMap<i32, i32>, kernel_pid: Option<i32>) {
        if self.cell {
            if let Some(status) = kernel_pid.and_then(|pid| reaped.get(&pid)) {
                // The interpreter died (exit(), a crash, a kill): its state is gone, and so is
                // whatever it started, so the next call begins from a clean interpreter.
                self.kernel_died = true;
                self.restarted = true;
                self.exit_status.get_or_insert(*status);
                sandbox::kill_all();
            }
        } else if let Some(&status) = reaped.get(&self.pid) {
            if self.exit_status.is_none() {
                self.exit_status = Some(status);
                self.kill();
            }
        }
    }

    /// The kernel reported the cell done with `code`: encoded like a wait status.
    pub(crate) fn cell_exited(&mut self, code: i64) {
        if self.exit_status.is_none() {
            self.exit_status = Some(((code & 0xFF) as i32) << 8);
        }
    }

    /// Done: the main process ended and every output pipe is read to its end (a cell: the kernel
    /// reported, or died and its pipes are read out).
    pub(crate) fn finished(&self, kernel_output_open: bool) -> bool {
        if self.exit_status.is_none() {
            return false;
        }
        if self.cell {
            !self.kernel_died || !kernel_output_open
        } else {
            self.pipes.is_empty() && self.display.is_none()
        }
    }

    /// The `done` event. `live_rss` is what still runs of the job (a session's interpreter).
    pub(crate) fn result(&self, live_rss: u64) -> Value {
        let status = self.exit_status.unwrap_or(0);
        let code = if libc::WIFSIGNALED(status) {
            -libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        };
        let mut exit_code = if code >= 0 { code } else { 128 - code };
        let status = if self.exec_failed {
            "error"
        } else if let Some(ending) = self.ending {
            ending.as_str()
        } else {
            let oom_after = sandbox::oom_kill_count();
            match (self.before.oom_kills, oom_after) {
                (Some(before), Some(after)) if code < 0 && after > before => "memory_limit",
                _ if self.truncated => "output_limit",
                _ => "completed",
            }
        };
        if status == "timeout" {
            exit_code = 137;
        }
        let (files, errors) = self.output_files();
        if let Some(code_path) = &self.code_path {
            let _ = fs::remove_file(code_path);
        }
        let mut done = json!({
            "ev": "done",
            "exitCode": exit_code,
            "status": status,
            "durationMs": self.started.elapsed().as_millis() as u64,
            "truncated": self.truncated,
            "files": files,
            "usage": self.usage(live_rss),
        });
        if !errors.is_empty() {
            done["fileErrors"] = json!(errors);
        }
        if self.prestarted {
            done["prestarted"] = json!(true);
        }
        if self.restarted {
            done["restarted"] = json!(true);
        }
        done
    }

    /// Output files are what the run made (in the dirs it can write), not a way to read the
    /// image or /proc through a symlink. All of them together are capped too: they come back in
    /// one answer.
    fn output_files(&self) -> (Map<String, Value>, Vec<String>) {
        let limit = self.limits.max_file_bytes;
        let mut room = self.limits.max_files_total;
        let mut files = Map::new();
        let mut errors = Vec::new();
        for path in &self.limits.output_paths {
            let Some(real) = sandbox::resolved_within(&absolute(path, &self.cwd), &WIPE_DIRS)
            else {
                errors.push(format!("{path}: resolves outside {}", WIPE_DIRS.join(", ")));
                continue;
            };
            match sandbox::read_output_file(&real, limit.min(room), &WIPE_DIRS) {
                Err(_) => {} // a missing output file is simply not returned
                Ok(Err(why)) => {
                    let why = if room < limit {
                        format!(
                            "left out: the output files together may hold {} bytes (maxFilesTotal)",
                            self.limits.max_files_total
                        )
                    } else {
                        why
                    };
                    errors.push(format!("{path}: {why}"));
                }
                Ok(Ok(data)) => {
                    room -= data.len() as u64;
                    files.insert(path.clone(), json!(B64.encode(&data)));
                }
            }
        }
        (files, errors)
    }

    /// What this job used: the container's CPU since it began minus the agent's own, the largest
    /// resident set of its processes, the container's memory now, network bytes.
    fn usage(&self, live_rss: u64) -> Value {
        let own = sys::own_cpu_ns().saturating_sub(self.before.own_cpu_ns);
        let cpu = match (sandbox::cgroup_cpu_ns(), self.before.cgroup_cpu_ns) {
            (Some(after), Some(before)) => after.saturating_sub(before).saturating_sub(own),
            _ => 0,
        };
        let (rx, tx) = sandbox::net_bytes();
        json!({
            "cpuNs": cpu,
            "peakRss": self.reaped_peak_rss.max(live_rss),
            "memory": sandbox::cgroup_memory().unwrap_or(0),
            "netIn": rx.saturating_sub(self.before.net.0),
            "netOut": tx.saturating_sub(self.before.net.1),
        })
    }
}

/// Whether a spawn failed at exec (the program is missing or cannot run) rather than at fork
/// (the pids limit, memory).
fn is_exec_failure(err: &io::Error) -> bool {
    !matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOMEM))
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}
