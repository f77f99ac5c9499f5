//! The sandbox's init process, which runs programs on request.
//!
//! The engine talks to it over the container's attached stdio, one JSON object per line in each
//! direction (`proto.rs`; the engine's side is docker/src/agent.rs), so a run costs no
//! `docker exec`. It runs as the sandbox's unprivileged uid and marks itself non-dumpable, so
//! programs of the same uid can neither ptrace it nor open its memory or environment.
//!
//! One thread: a poll loop over the agent's stdin, a self-pipe woken by SIGCHLD, and the pipes of
//! the current job (a run or a session cell) and of the session's interpreter.

mod job;
mod kernel;
mod proto;
mod sandbox;
mod spawn;
mod waiting;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use job::{Ending, Job};
use kernel::Kernel;
use proto::{emit, emit_error, emit_not_started, emit_ready, Request, Template, B64};
use spawn::pipe;
use waiting::Waiting;

use crate::sys;

pub(crate) const SANDBOX_DIR: &str = "/sandbox";
pub(crate) const READ_CHUNK: usize = 65536;
/// isol8_display.py and the matplotlib backend isol8_mpl.py. A one-shot program asked to display
/// gets them through PYTHONPATH and MPLBACKEND, and fd 3 as its display channel: one JSON line
/// {"display": bundle} per result (figures at plt.show() and those still open at exit); it waits
/// for a line on fd 4 after each. Session kernels write the same lines to their report pipe.
const DISPLAY_DIR: &str = "/opt/isol8/agent/display";

/// The agent's own environment (the image's and the container's: it holds no secrets).
pub(crate) fn agent_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// A program's environment: the agent's, the display channel's variables for a program that has
/// one, then `extra` (the run's, or a pre-started interpreter's).
pub(crate) fn program_env(
    extra: &BTreeMap<String, String>,
    display: bool,
) -> BTreeMap<String, String> {
    let mut env = agent_env();
    if display {
        env.insert("ISOL8_DISPLAY_FD".into(), "3".into());
        env.insert("ISOL8_DISPLAY_ACK_FD".into(), "4".into());
        env.insert("MPLBACKEND".into(), "module://isol8_mpl".into());
        let path = match env.get("PYTHONPATH").filter(|p| !p.is_empty()) {
            Some(existing) => format!("{existing}:{DISPLAY_DIR}"),
            None => DISPLAY_DIR.to_string(),
        };
        env.insert("PYTHONPATH".into(), path);
    }
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The agent's ends of a one-shot program's display channel.
#[derive(Debug)]
pub(crate) struct DisplayPipes {
    pub(crate) reader: File,
    pub(crate) ack: File,
}

impl DisplayPipes {
    /// The channel when `display`, and the program's ends (its fds 3 and 4).
    pub(crate) fn open(display: bool) -> io::Result<(Option<DisplayPipes>, Vec<File>)> {
        if !display {
            return Ok((None, Vec::new()));
        }
        let (reader, writer) = pipe()?;
        let (ack_r, ack) = pipe()?;
        Ok((Some(DisplayPipes { reader, ack }), vec![writer, ack_r]))
    }
}

/// What the agent is doing: the current job, a session's interpreter, the next run's
/// pre-started interpreter.
#[derive(Debug, Default)]
struct State {
    job: Option<Job>,
    kernel: Option<Kernel>,
    /// The interpreter died between calls; the next cell says so.
    kernel_lost: bool,
    /// Processes a session call left running (a background job, a server it started): each set
    /// dies at its call's deadline, so nothing runs past a timeout the call was held to.
    lingering: Vec<(Instant, HashSet<i32>)>,
    /// Alive when the current session call began.
    pids_before: HashSet<i32>,
    waiting: Option<Waiting>,
}

impl State {
    /// Pre-starts the next run's interpreter, when nothing runs. Best effort: a run without one
    /// starts its interpreter the normal way.
    fn start_waiting(&mut self, template: Template) {
        if self.job.is_some() || self.kernel.is_some() || self.waiting.is_some() {
            return;
        }
        match Waiting::start(template) {
            Ok(waiting) => self.waiting = Some(waiting),
            Err(err) => eprintln!("isol8-agent: no pre-started interpreter: {err}"),
        }
    }

    fn call_started(&mut self) {
        self.pids_before = sandbox::other_pids();
    }

    fn call_ended(&mut self, deadline: Instant) {
        let Some(kernel) = &self.kernel else {
            return;
        };
        let mut left = sandbox::other_pids();
        left.retain(|pid| !self.pids_before.contains(pid) && *pid != kernel.pid);
        if !left.is_empty() {
            self.lingering.push((deadline, left));
        }
    }

    /// SIGKILLs the processes whose call's deadline passed, and what they started since.
    fn kill_lingering(&mut self) {
        let now = Instant::now();
        if !self.lingering.iter().any(|(deadline, _)| *deadline <= now) {
            return;
        }
        let mut doomed = HashSet::new();
        self.lingering.retain(|(deadline, pids)| {
            let due = *deadline <= now;
            if due {
                doomed.extend(pids.iter().copied());
            }
            !due
        });
        doomed.extend(sandbox::descendants(&doomed));
        if let Some(kernel) = &self.kernel {
            doomed.remove(&kernel.pid);
        }
        for pid in doomed {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }

    fn reset(&mut self, prestart: Option<Template>) {
        if let Some(job) = self.job.as_mut() {
            job.terminate(Ending::Killed);
        }
        self.job = None;
        self.kernel = None;
        self.waiting = None;
        self.lingering.clear();
        let (ok, detail) = sandbox::wipe_and_verify(|_| {});
        emit(&serde_json::json!({"ev": "reset", "ok": ok, "detail": detail}));
        // The next run's interpreter starts only in the sandbox just found clean, after the answer
        // (the engine can hand the container out while the fork and exec happen).
        if let (true, Some(template)) = (ok, prestart) {
            self.start_waiting(template);
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Run(_) | Request::Cell(_) if self.job.is_some() => {
                emit_not_started("a program is already running in this sandbox");
            }
            Request::Run(req) => {
                let in_session = self.kernel.is_some();
                if in_session {
                    self.call_started();
                }
                let waiting = self.waiting.take().filter(|_| !in_session);
                match Job::start_run(*req, waiting, in_session) {
                    Ok(job) => self.job = Some(job),
                    Err(err) => emit_not_started(&format!("could not start the program: {err}")),
                }
            }
            Request::Cell(req) => {
                self.call_started();
                self.waiting = None;
                let started = match self.kernel.as_mut() {
                    Some(kernel) => Ok(kernel),
                    None => Kernel::start(&req.runtime).map(|k| self.kernel.insert(k)),
                }
                .and_then(|kernel| {
                    let lost = std::mem::take(&mut self.kernel_lost);
                    Job::start_cell(*req, kernel, lost)
                });
                match started {
                    Ok(job) => self.job = Some(job),
                    Err(err) => emit_not_started(&format!("could not start the program: {err}")),
                }
            }
            Request::Reset(prestart) => self.reset(prestart),
            // A new container, clean by construction.
            Request::Prestart(template) => self.start_waiting(template),
            Request::Ping => emit_ready(),
            Request::Stdin { data, eof } => {
                if let Some(job) = self.job.as_mut() {
                    job.more_stdin(&data, eof);
                }
            }
            Request::Signal(name) => {
                let signal = match name.as_str() {
                    "SIGINT" => Some(libc::SIGINT),
                    "SIGTERM" => Some(libc::SIGTERM),
                    "SIGKILL" => Some(libc::SIGKILL),
                    _ => None,
                };
                if let (Some(job), Some(signal)) = (&self.job, signal) {
                    job.signal(signal);
                }
            }
            Request::Write { path, data } => emit(&file_write(&path, &data)),
            Request::Read { path, max_bytes } => emit(&file_read(&path, max_bytes)),
        }
    }

    /// After the processes in `reaped` ended: the job's and the interpreters' bookkeeping, and
    /// the job's end when it is done.
    fn after_reaping(&mut self, reaped: &HashMap<i32, i32>) {
        self.kill_lingering();
        if let Some(waiting) = &mut self.waiting {
            if waiting.pid.is_some_and(|pid| reaped.contains_key(&pid)) {
                // It died waiting (it ran nothing): the next run starts the normal way.
                waiting.pid = None;
                self.waiting = None;
            }
        }
        let is_cell = self.job.as_ref().is_some_and(|j| j.cell);
        // The interpreter died outside a cell (a `cmd` run killed it, or it crashed): the next
        // cell starts a new one and says the state is gone.
        if !is_cell
            && self
                .kernel
                .as_ref()
                .is_some_and(|k| reaped.contains_key(&k.pid))
        {
            self.kernel = None;
            self.kernel_lost = true;
        }
        let kernel_pid = self.kernel.as_ref().map(|k| k.pid);
        let Some(job) = self.job.as_mut() else {
            return;
        };
        job.on_reaped(reaped, kernel_pid);
        let ending = job.exit_status.is_some() || job.ending.is_some();
        let kernel_output_open = self.kernel.as_ref().is_some_and(|k| !k.outputs.is_empty());
        if !ending && Instant::now() >= job.deadline {
            job.terminate(Ending::Timeout);
        } else if ending && !job.finished(kernel_output_open) {
            if job.cell {
                if job.ending.is_some() || job.kernel_died {
                    sandbox::kill_all();
                }
            } else {
                // A process forked during the last kill: keep killing until the pipes close.
                job.kill();
            }
        }
        if job.finished(kernel_output_open) {
            job.close_stdin();
            job.close_display();
            let live_rss = match (&self.kernel, job.cell && !job.kernel_died) {
                (Some(kernel), true) => sandbox::rss_of(kernel.pid),
                _ => 0,
            };
            emit(&job.result(live_rss));
            let (deadline, kernel_died) = (job.deadline, job.kernel_died);
            self.job = None;
            self.call_ended(deadline);
            if kernel_died {
                self.kernel = None;
            }
        }
    }

    /// How long the loop may sleep.
    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        match &self.job {
            None => {
                // Keep reaping orphans even when idle.
                let idle = Duration::from_secs(1);
                self.lingering
                    .iter()
                    .map(|(deadline, _)| deadline.saturating_duration_since(now))
                    .min()
                    .map_or(idle, |d| d.min(idle))
            }
            // Killing: poll until every pipe writer is gone.
            Some(job) if job.exit_status.is_some() || job.ending.is_some() => {
                Duration::from_millis(50)
            }
            Some(job) => job.deadline.saturating_duration_since(now),
        }
    }
}

/// What a poll entry stands for.
#[derive(Debug, Clone, Copy)]
enum Source {
    Requests,
    Wake,
    JobPipe(usize),
    JobDisplay,
    JobStdin,
    KernelOutput(usize),
    KernelReports,
}

fn file_write(path: &str, data: &[u8]) -> Value {
    let target = Path::new(path);
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = target
        .parent()
        .filter(|_| !name.is_empty() && path.starts_with('/'))
        .and_then(|p| sandbox::resolved_within(p, &sandbox::SANDBOX_ONLY));
    let Some(parent) = parent else {
        return serde_json::json!({"ev": "error",
            "error": format!("{path} is not a file path inside /sandbox")});
    };
    let target = parent.join(name);
    if target
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return serde_json::json!({"ev": "error", "error": format!("{path} is a symlink")});
    }
    match sandbox::write_file(&target, data) {
        Ok(()) => serde_json::json!({"ev": "file", "data": ""}),
        Err(err) => io_error(path, &err),
    }
}

fn file_read(path: &str, max_bytes: u64) -> Value {
    let Some(real) = sandbox::resolved_within(Path::new(path), &sandbox::SANDBOX_ONLY)
        .filter(|_| path.starts_with('/'))
    else {
        return serde_json::json!({"ev": "error", "error": format!("{path} resolves outside /sandbox")});
    };
    match sandbox::read_output_file(&real, max_bytes, &sandbox::SANDBOX_ONLY) {
        Ok(Ok(data)) => {
            serde_json::json!({"ev": "file", "data": base64::Engine::encode(&B64, data)})
        }
        Ok(Err(why)) => serde_json::json!({"ev": "error", "error": format!("{path}: {why}")}),
        Err(err) => io_error(path, &err),
    }
}

fn io_error(path: &str, err: &io::Error) -> Value {
    if err.kind() == io::ErrorKind::NotFound {
        return serde_json::json!({"ev": "error", "error": format!("{path} does not exist"),
            "notFound": true});
    }
    serde_json::json!({"ev": "error", "error": format!("{path}: {err}")})
}

pub(crate) fn main() -> ExitCode {
    // Its resets kill every process it may signal: that is the sandbox only as a container's init.
    if std::process::id() != 1 {
        eprintln!("isol8-agent: the agent runs only as the init (PID 1) of an isol8 sandbox");
        return ExitCode::from(2);
    }
    if let Err(err) = sys::set_dumpable(false) {
        eprintln!("isol8-agent: prctl failed: {err}"); // report and go on; the engine decides
    }
    let (mut wake_r, wake_w) = match pipe() {
        Ok(p) => p,
        Err(err) => {
            eprintln!("isol8-agent: no pipe: {err}");
            return ExitCode::FAILURE;
        }
    };
    let armed = sys::set_blocking(wake_r.as_fd(), false)
        .and_then(|()| sys::set_blocking(wake_w.as_fd(), false))
        .and_then(|()| {
            sys::wake_on(
                &[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT],
                wake_w.as_raw_fd(),
            )
        });
    if let Err(err) = armed {
        eprintln!("isol8-agent: no signal handling: {err}");
        return ExitCode::FAILURE;
    }
    let mut requests = io::stdin().lock();
    let mut inbuf: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut state = State::default();
    emit_ready();

    loop {
        let mut polled: Vec<(RawFd, i16, Source)> = vec![
            (0, sys::READABLE, Source::Requests),
            (wake_r.as_raw_fd(), sys::READABLE, Source::Wake),
        ];
        if let Some(job) = &state.job {
            for (index, (pipe, _)) in job.pipes.iter().enumerate() {
                polled.push((pipe.as_raw_fd(), sys::READABLE, Source::JobPipe(index)));
            }
            if let Some(display) = &job.display {
                polled.push((
                    display.reader.as_raw_fd(),
                    sys::READABLE,
                    Source::JobDisplay,
                ));
            }
            if let (Some(stdin), true) = (&job.stdin, job.wants_stdin_write()) {
                polled.push((stdin.as_raw_fd(), sys::WRITABLE, Source::JobStdin));
            }
        }
        if let Some(kernel) = &state.kernel {
            for (index, (pipe, _)) in kernel.outputs.iter().enumerate() {
                polled.push((pipe.as_raw_fd(), sys::READABLE, Source::KernelOutput(index)));
            }
            if let Some(reports) = &kernel.reports {
                polled.push((reports.as_raw_fd(), sys::READABLE, Source::KernelReports));
            }
        }
        let fds: Vec<(RawFd, i16)> = polled.iter().map(|&(fd, ev, _)| (fd, ev)).collect();
        let ready = sys::poll(&fds, Some(state.poll_timeout()));
        // Sources are served from the last: a pipe that closes (and leaves its list) never shifts
        // the index of one still to serve; requests, first in the list, come after the pipes.
        for (&(_, _, source), &events) in polled.iter().zip(&ready).rev() {
            if events == 0 {
                continue;
            }
            match source {
                Source::Requests => {
                    let n = match requests.read(&mut buf) {
                        Ok(n) => n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    if n == 0 {
                        // The engine is gone: so is the sandbox.
                        sandbox::kill_all();
                        return ExitCode::SUCCESS;
                    }
                    inbuf.extend_from_slice(&buf[..n]);
                    while let Some(end) = inbuf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = inbuf.drain(..=end).collect();
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        match Request::parse(&line) {
                            Ok(request) => state.handle(request),
                            Err(bad) if bad.is_job => emit_not_started(&bad.why),
                            Err(bad) => emit_error(&bad.why),
                        }
                    }
                }
                Source::Wake => while matches!(wake_r.read(&mut buf), Ok(n) if n > 0) {},
                Source::JobPipe(index) => {
                    if let Some(job) = state.job.as_mut().filter(|j| index < j.pipes.len()) {
                        job.on_pipe(index, &mut buf);
                    }
                }
                Source::JobDisplay => {
                    if let Some(job) = state.job.as_mut() {
                        job.on_display_pipe(&mut buf);
                    }
                }
                Source::JobStdin => {
                    if let Some(job) = state.job.as_mut() {
                        job.feed_stdin();
                    }
                }
                Source::KernelOutput(index) => {
                    if let Some(kernel) = state.kernel.as_mut().filter(|k| index < k.outputs.len())
                    {
                        kernel.read_output(index, state.job.as_mut(), &mut buf);
                    }
                }
                Source::KernelReports => serve_reports(&mut state, &mut buf),
            }
        }
        let mut reaped = HashMap::new();
        while let Some(child) = sys::reap_one() {
            if let Some(job) = state.job.as_mut() {
                job.reaped_peak_rss = job.reaped_peak_rss.max(child.max_rss);
            }
            reaped.insert(child.pid, child.status);
        }
        state.after_reaping(&reaped);
    }
}

/// The kernel's reports: a cell's end, and results to display (a result published between
/// cells is dropped, but still acknowledged).
fn serve_reports(state: &mut State, buf: &mut [u8]) {
    let Some(kernel) = state.kernel.as_mut() else {
        return;
    };
    let reports = kernel.read_reports(buf);
    let mut cell = state.job.as_mut().filter(|j| j.cell);
    for report in reports {
        let Value::Object(report) = report else {
            continue;
        };
        if let Some(bundle) = report.get("display") {
            if let Some(cell) = cell.as_deref_mut().filter(|c| c.exit_status.is_none()) {
                // Output written before the result comes first: the kernel flushed it already.
                kernel.drain(Some(cell), buf);
                let size = serde_json::to_string(bundle).map_or(0, |s| s.len());
                cell.display(bundle, size);
            }
            kernel.ack_display();
        } else if let (Some(cell), Some(code)) = (cell.as_deref_mut(), report.get("exit")) {
            if cell.exit_status.is_none() {
                cell.cell_exited(code.as_i64().unwrap_or(1));
                kernel.drain(Some(cell), buf);
            }
        }
    }
}
