//! One run's driver: sends the agent its program(s), relays output and control, holds the run to
//! its deadline whatever the client does, and turns the agent's answer into the result.

use std::collections::BTreeMap;
use std::ops::DerefMut;

use base64::Engine as _;
use bollard::Docker;
use isol8_api::{ExecutionResult, ExecutionStatus, StreamPhase};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::time::Instant as Deadline;

use super::{RunEvent, BACKSTOP_GRACE};
use crate::agent::{AgentEvent, AgentRequest, AgentUsage, Sandbox};
use crate::error::Result;
use crate::network::FilteredNetwork;
use crate::output::OutputFilter;
use crate::plan::{code_path, has_display, Program, RunPlan, SANDBOX_DIR};
use crate::run::{RunControl, RunSide};

/// One run in progress: holds its sandbox (owned, from the pool; or a session's, locked for the
/// call) until it is done.
pub(crate) struct Run<S> {
    pub(crate) sandbox: S,
    pub(crate) plan: RunPlan,
    tx: mpsc::Sender<RunEvent>,
    /// Live input from the caller, forwarded to the agent while a phase runs.
    control: mpsc::Receiver<RunControl>,
    /// The caller stopped sending live input (its sender is gone).
    control_closed: bool,
    /// Signals the caller's `RunEvents::ended` when the run is dropped.
    _ended: tokio_util::sync::DropGuard,
    pub(crate) docker: Docker,
    /// Code goes to the session's long-lived interpreter instead of a fresh process.
    pub(crate) session: bool,
    /// The session's earlier container was lost; this call runs in a new one.
    pub(crate) session_replaced: bool,
    /// This call made the session (an unknown or expired id): its state is new.
    pub(crate) session_created: bool,
    /// `filtered` mode: the run's network and proxy.
    pub(crate) network: Option<FilteredNetwork>,
    /// Until when the current phase waits for a slow consumer of its output; past it, output the
    /// consumer cannot take is dropped, so the agent (and the run's timeout) never wait on it.
    output_deadline: Deadline,
    /// The consumer fell behind past the deadline: output is being dropped.
    stalled: bool,
    /// What the code phase used.
    usage: Option<AgentUsage>,
    /// The code phase ran in a pre-started interpreter.
    pub(crate) prestarted: bool,
}

/// How one agent program run ended, before it becomes an `ExecutionResult`.
struct PhaseOutcome {
    exit_code: i64,
    status: ExecutionStatus,
    truncated: bool,
    files: BTreeMap<String, String>,
    /// The sandbox can serve again (after a reset).
    reusable: bool,
    error: Option<String>,
    /// A session's interpreter died during this phase.
    restarted: bool,
}

enum Stop {
    /// The consumer of the events went away: the run is cancelled.
    Cancelled,
    Outcome(PhaseOutcome),
}

impl<S: DerefMut<Target = Sandbox> + Send> Run<S> {
    pub(crate) fn new(
        sandbox: S,
        plan: RunPlan,
        side: RunSide,
        docker: Docker,
        session: bool,
        network: Option<FilteredNetwork>,
    ) -> Self {
        Run {
            sandbox,
            plan,
            tx: side.tx,
            control: side.control,
            control_closed: false,
            _ended: side.ended,
            docker,
            session,
            session_replaced: false,
            session_created: false,
            network,
            output_deadline: Deadline::now(),
            stalled: false,
            usage: None,
            prestarted: false,
        }
    }

    /// Runs the setup script (if any) and the program; sends every event; returns whether the
    /// sandbox may be reused.
    pub(crate) async fn drive(&mut self) -> bool {
        let started = Instant::now();
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // With logNetwork, each proxied request is an event as it happens, and the whole log is
        // the result's (a cancelled run drops the follower, which stops it).
        let network_log = match (&self.network, self.plan.log_network) {
            (Some(network), true) => {
                Some(network.follow(self.docker.clone(), self.tx.clone(), self.masked_values()))
            }
            _ => None,
        };
        let mut outcome = None;
        if self.session_replaced {
            let message = "the session's container was replaced; state from earlier calls is gone";
            self.emit(RunEvent::Error {
                phase: StreamPhase::Code,
                message: message.into(),
            })
            .await;
        }
        if let Some(script) = self.plan.setup_script.clone() {
            match self.phase(StreamPhase::Setup, Some(script)).await {
                Stop::Cancelled => return false,
                Stop::Outcome(setup) => {
                    if setup.status != ExecutionStatus::Completed || setup.exit_code != 0 {
                        let message = match setup.status {
                            ExecutionStatus::Timeout => "SETUP SCRIPT TIMED OUT".to_string(),
                            _ => setup.error.clone().unwrap_or_else(|| {
                                format!("Setup script failed (exit code {})", setup.exit_code)
                            }),
                        };
                        self.emit(RunEvent::Error {
                            phase: StreamPhase::Setup,
                            message,
                        })
                        .await;
                        outcome = Some(PhaseOutcome {
                            status: match setup.status {
                                ExecutionStatus::Completed => ExecutionStatus::Error,
                                other => other,
                            },
                            ..setup
                        });
                    }
                }
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => match self.phase(StreamPhase::Code, None).await {
                Stop::Cancelled => return false,
                Stop::Outcome(o) => o,
            },
        };
        let result = ExecutionResult {
            stdout: String::new(),
            stderr: String::new(),
            exit_code: outcome.exit_code,
            status: outcome.status,
            duration_ms: started.elapsed().as_millis() as u64,
            truncated: outcome.truncated,
            execution_id: uuid::Uuid::new_v4().to_string(),
            runtime: self.plan.runtime,
            timestamp,
            container_id: self.sandbox.short_id(),
            files: (!self.plan.output_paths.is_empty()).then_some(outcome.files),
            network_logs: None,
            resource_usage: self
                .usage
                .map(|usage| usage.to_api(started.elapsed().as_millis() as u64)),
            results: None,
            session_restarted: self
                .session
                .then_some(outcome.restarted || self.session_replaced),
            session_created: self.session.then_some(self.session_created),
        };
        let mut result = result;
        if let Some(network_log) = network_log {
            result.network_logs = Some(network_log.finish(&self.docker).await);
        }
        self.emit(RunEvent::Finished(result)).await;
        outcome.reusable
    }

    /// Every value masked in this run's output (secrets, and a session's earlier ones).
    fn masked_values(&self) -> Vec<String> {
        self.plan
            .secrets
            .values()
            .chain(&self.plan.masked)
            .cloned()
            .collect()
    }

    /// What the user is told when the agent could not exec `program` (the agent answers an exec
    /// failure with status `error` and exit code 127, its reason on stderr): the program and the
    /// image, as an image a request names may well lack the runtime's interpreter.
    fn missing_program(&self, phase: StreamPhase, program: &str) -> String {
        let image = &self.sandbox.spec.image;
        let what = match (phase, &self.plan.program) {
            (StreamPhase::Setup, _) => "setup scripts run with it".to_string(),
            (StreamPhase::Code, Program::Command(_)) => "cmd runs with it".to_string(),
            (StreamPhase::Code, _) => {
                format!("the {} runtime runs code with it", self.plan.runtime)
            }
        };
        format!(
            "{program} could not be started: it is not in image {image} (or not on its PATH), and {what}; use an image that has it, or another runtime"
        )
    }

    /// Sends an event that is not output (errors, exit, the result): waited for until the
    /// backstop, so a consumer that never reads cannot hold the run past it.
    async fn emit(&mut self, event: RunEvent) -> bool {
        let until = self.output_deadline + BACKSTOP_GRACE;
        matches!(
            tokio::time::timeout_at(until, self.tx.send(event)).await,
            Ok(Ok(()))
        )
    }

    /// Sends output: waited for until the phase's deadline; after it, whatever the consumer cannot
    /// take at once is dropped. False when the consumer is gone (the run is cancelled).
    async fn emit_output(&mut self, event: RunEvent) -> bool {
        if !self.stalled {
            match tokio::time::timeout_at(self.output_deadline, self.tx.send(event)).await {
                Ok(sent) => return sent.is_ok(),
                Err(_) => {
                    tracing::info!(container = %self.sandbox.short_id(), "the client is not reading; dropping output");
                    self.stalled = true;
                    return true;
                }
            }
        }
        !matches!(
            self.tx.try_send(event),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }

    /// Forwards one piece of live input to the agent.
    async fn forward_control(&mut self, control: RunControl) -> Result<()> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let request = match &control {
            RunControl::Stdin(data) => AgentRequest::Stdin {
                data: Some(b64(data)),
                eof: false,
            },
            RunControl::StdinEof => AgentRequest::Stdin {
                data: None,
                eof: true,
            },
            RunControl::Signal(signal) => AgentRequest::Signal {
                signal: signal.name(),
            },
        };
        self.sandbox.send(&request).await
    }

    /// Runs one program (the setup script, or the plan's program) to its end.
    async fn phase(&mut self, phase: StreamPhase, setup_script: Option<String>) -> Stop {
        let Some(request) = agent_request(&self.plan, phase, setup_script.as_deref(), self.session)
        else {
            // Refused by `check_runnable` before any run starts.
            let why = "remote code was not fetched".to_string();
            return Stop::Outcome(self.failed(phase, why).await);
        };
        // What the agent execs: named when it is not in the image (see `missing_program`).
        let program = match &request {
            AgentRequest::Run { argv, .. } => argv.first().cloned(),
            _ => None,
        };
        let timeout = self.plan.limits.timeout;
        self.output_deadline = Deadline::now() + timeout;
        self.stalled = false;
        if let Err(err) = self.sandbox.send(&request).await {
            return Stop::Outcome(self.failed(phase, err.to_string()).await);
        }

        let masked = || self.plan.secrets.values().chain(&self.plan.masked);
        let mut stdout = OutputFilter::new(masked());
        let mut stderr = OutputFilter::new(masked());
        let backstop = tokio::time::sleep(timeout + BACKSTOP_GRACE);
        tokio::pin!(backstop);
        loop {
            let event = tokio::select! {
                event = self.sandbox.next_event() => event,
                control = self.control.recv(), if !self.control_closed => {
                    match control {
                        Some(control) => {
                            if let Err(err) = self.forward_control(control).await {
                                return Stop::Outcome(self.failed(phase, err.to_string()).await);
                            }
                        }
                        None => self.control_closed = true,
                    }
                    continue;
                }
                _ = self.tx.closed() => {
                    tracing::info!(container = %self.sandbox.short_id(), "client went away; cancelling the run");
                    return Stop::Cancelled;
                }
                _ = &mut backstop => {
                    let message = "the sandbox did not stop at its timeout; it is destroyed".to_string();
                    let mut outcome = self.failed(phase, message).await;
                    outcome.status = ExecutionStatus::Timeout;
                    outcome.exit_code = 137;
                    return Stop::Outcome(outcome);
                }
            };
            match event {
                Some(AgentEvent::Out { s, d }) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(d)
                        .unwrap_or_default();
                    let (filter, is_err) = if s == 2 {
                        (&mut stderr, true)
                    } else {
                        (&mut stdout, false)
                    };
                    let text = filter.push(&bytes);
                    if !text.is_empty()
                        && !self.emit_output(output_event(phase, is_err, text)).await
                    {
                        return Stop::Cancelled;
                    }
                }
                Some(AgentEvent::Done {
                    exit_code,
                    status,
                    truncated,
                    files,
                    error,
                    file_errors,
                    restarted,
                    prestarted,
                    usage,
                }) => {
                    let error = match (error, &program) {
                        (None, Some(program))
                            if status == ExecutionStatus::Error && exit_code == 127 =>
                        {
                            Some(self.missing_program(phase, program))
                        }
                        (error, _) => error,
                    };
                    if phase == StreamPhase::Code {
                        self.usage = usage;
                        self.prestarted = prestarted;
                    }
                    for (filter, is_err) in [(&mut stdout, false), (&mut stderr, true)] {
                        let text = filter.finish(truncated);
                        if !text.is_empty() {
                            self.emit(output_event(phase, is_err, text)).await;
                        }
                    }
                    match status {
                        ExecutionStatus::Timeout => {
                            self.emit(RunEvent::Error {
                                phase,
                                message: "EXECUTION TIMED OUT".into(),
                            })
                            .await;
                        }
                        ExecutionStatus::MemoryLimit => {
                            self.emit(RunEvent::Error {
                                phase,
                                message: "MEMORY LIMIT EXCEEDED".into(),
                            })
                            .await;
                        }
                        ExecutionStatus::OutputLimit => {
                            self.emit(RunEvent::Error {
                                phase,
                                message: format!(
                                    "OUTPUT LIMIT REACHED ({} bytes); further output was discarded",
                                    self.plan.limits.max_output_bytes
                                ),
                            })
                            .await;
                        }
                        _ => {}
                    }
                    if let Some(message) = &error {
                        self.emit(RunEvent::Error {
                            phase,
                            message: message.clone(),
                        })
                        .await;
                    }
                    if restarted {
                        self.emit(RunEvent::Error {
                            phase,
                            message: "the session's interpreter was restarted; state from earlier calls is gone".into(),
                        })
                        .await;
                    }
                    for message in file_errors {
                        self.emit(RunEvent::Error {
                            phase,
                            message: format!("outputPaths: {message}"),
                        })
                        .await;
                    }
                    self.emit(RunEvent::Exit {
                        phase,
                        code: exit_code,
                    })
                    .await;
                    return Stop::Outcome(PhaseOutcome {
                        exit_code,
                        status,
                        truncated,
                        files,
                        reusable: true,
                        error,
                        restarted,
                    });
                }
                Some(AgentEvent::Display { mut data }) => {
                    mask_bundle(&mut data, &self.plan.secrets);
                    if !self.emit(RunEvent::Display(data)).await {
                        return Stop::Cancelled;
                    }
                }
                Some(AgentEvent::Error { error, .. }) => {
                    return Stop::Outcome(self.failed(phase, error).await);
                }
                Some(AgentEvent::Ready | AgentEvent::Reset { .. } | AgentEvent::File { .. }) => {
                    continue
                }
                None => {
                    let oom = self.container_oom_killed().await;
                    let message = if oom {
                        "MEMORY LIMIT EXCEEDED (the sandbox was killed)".to_string()
                    } else {
                        "the sandbox container exited unexpectedly".to_string()
                    };
                    let mut outcome = self.failed(phase, message).await;
                    if oom {
                        outcome.status = ExecutionStatus::MemoryLimit;
                        outcome.exit_code = 137;
                    }
                    return Stop::Outcome(outcome);
                }
            }
        }
    }

    async fn failed(&mut self, phase: StreamPhase, message: String) -> PhaseOutcome {
        tracing::warn!(container = %self.sandbox.short_id(), %message, "run failed");
        self.emit(RunEvent::Error {
            phase,
            message: message.clone(),
        })
        .await;
        self.emit(RunEvent::Exit { phase, code: 1 }).await;
        PhaseOutcome {
            exit_code: 1,
            status: ExecutionStatus::Error,
            truncated: false,
            files: BTreeMap::new(),
            reusable: false,
            error: Some(message),
            restarted: false,
        }
    }

    async fn container_oom_killed(&mut self) -> bool {
        self.docker
            .inspect_container(&self.sandbox.id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false)
    }
}

/// What the agent is sent for one phase of `plan`: the setup script (`setup_script`) or the
/// program, with its files (before the run's first program only), input, environment and limits;
/// a session's code goes to its interpreter as a cell. `None` for code not fetched yet.
fn agent_request<'a>(
    plan: &'a RunPlan,
    phase: StreamPhase,
    setup_script: Option<&str>,
    session: bool,
) -> Option<AgentRequest<'a>> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    // Files go in before the first program of the run: the setup script if there is one.
    let first = phase == StreamPhase::Setup || plan.setup_script.is_none();
    let files = plan
        .files
        .iter()
        .filter(|_| first)
        .map(|(path, content)| (path.as_str(), b64(content)))
        .collect();
    let (stdin, output_paths) = match phase {
        StreamPhase::Code => (plan.stdin.as_deref().map(b64), plan.output_paths.as_slice()),
        StreamPhase::Setup => (None, &[][..]),
    };
    let mut env = plan.runtime_env();
    env.extend(plan.env.clone());
    env.extend(plan.secrets.clone());
    let timeout_ms = plan.limits.timeout.as_millis() as u64;
    let (max_output, max_file_bytes, max_files_total) = (
        plan.limits.max_output_bytes,
        plan.limits.max_file_bytes,
        plan.limits.max_output_files_bytes,
    );
    let (argv, code_path, code) = match (setup_script, &plan.program) {
        (Some(script), _) => {
            let path = "/tmp/.isol8-setup.sh".to_string();
            let argv = vec!["bash".to_string(), path.clone()];
            (argv, Some(path), Some(b64(script.as_bytes())))
        }
        (None, Program::Code { source, .. }) if session => {
            return Some(AgentRequest::Cell {
                runtime: plan.runtime.as_str(),
                code: b64(source.as_bytes()),
                stdin,
                env,
                // The session keeps its own working directory unless the call names one.
                cwd: (plan.workdir != SANDBOX_DIR).then_some(plan.workdir.as_str()),
                files,
                output_paths,
                timeout_ms,
                max_output,
                max_file_bytes,
                max_files_total,
            });
        }
        (None, Program::Code { source, extension }) => {
            let path = code_path(&plan.workdir, extension);
            (plan.argv(&path), Some(path), Some(b64(source.as_bytes())))
        }
        (None, Program::Command(_)) => (plan.argv(""), None, None),
        (None, Program::Remote { .. }) => return None,
    };
    Some(AgentRequest::Run {
        argv,
        cwd: &plan.workdir,
        env,
        stdin,
        files,
        code_path,
        code,
        output_paths,
        timeout_ms,
        max_output,
        max_file_bytes,
        max_files_total,
        live_stdin: plan.live_stdin && phase == StreamPhase::Code,
        // One-shot python programs hand matplotlib figures over (isol8's backend).
        display: phase == StreamPhase::Code
            && has_display(plan.runtime)
            && matches!(plan.program, Program::Code { .. }),
    })
}

fn output_event(phase: StreamPhase, is_err: bool, text: String) -> RunEvent {
    if is_err {
        RunEvent::Stderr { phase, text }
    } else {
        RunEvent::Stdout { phase, text }
    }
}

/// Masks secrets in a bundle's text values, as in stdout and stderr.
fn mask_bundle(bundle: &mut isol8_api::MimeBundle, secrets: &BTreeMap<String, String>) {
    if secrets.is_empty() {
        return;
    }
    for value in bundle.values_mut() {
        if let serde_json::Value::String(text) = value {
            *text = OutputFilter::mask_text(secrets.values(), text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanDefaults;
    use isol8_api::{ExecutionOptions, ExecutionRequest, Runtime};
    use serde_json::{json, Value};

    fn plan(request: ExecutionRequest) -> RunPlan {
        let options = ExecutionOptions {
            secrets: [("TOKEN".to_string(), "s3cret".to_string())].into(),
            ..Default::default()
        };
        RunPlan::from_request(&request, &options, &PlanDefaults::default(), "k").unwrap()
    }

    fn sent(plan: &RunPlan, phase: StreamPhase, setup: Option<&str>, session: bool) -> Value {
        serde_json::to_value(agent_request(plan, phase, setup, session).unwrap()).unwrap()
    }

    #[test]
    fn a_program_is_written_to_its_workdir_and_run_with_its_inputs_env_and_limits() {
        let plan = plan(ExecutionRequest {
            runtime: Runtime::Python,
            code: Some("print(1)".into()),
            stdin: Some("in".into()),
            workdir: Some("job".into()),
            env: [("A".to_string(), "1".to_string())].into(),
            files: [("data.txt".to_string(), "x".into())].into(),
            output_paths: vec!["out.txt".into()],
            ..Default::default()
        });
        let run = sent(&plan, StreamPhase::Code, None, false);
        assert_eq!(run["op"], "run", "{run}");
        assert_eq!(
            run["argv"],
            json!(["python3", "/sandbox/job/.isol8_main.py"])
        );
        assert_eq!(run["codePath"], "/sandbox/job/.isol8_main.py");
        assert_eq!(run["code"], "cHJpbnQoMSk=");
        assert_eq!(run["cwd"], "/sandbox/job");
        assert_eq!(run["stdin"], "aW4=");
        assert_eq!(run["files"], json!({"/sandbox/job/data.txt": "eA=="}));
        assert_eq!(run["outputPaths"], json!(["out.txt"]));
        assert_eq!(run["env"]["A"], "1");
        assert_eq!(run["env"]["TOKEN"], "s3cret");
        assert_eq!(run["env"]["PYTHONUNBUFFERED"], "1");
        assert_eq!(run["timeoutMs"], 30000);
        assert_eq!(run["display"], true);
    }

    #[test]
    fn a_setup_script_runs_first_with_the_files_and_the_program_after_without_them() {
        let plan = plan(ExecutionRequest {
            runtime: Runtime::Bash,
            cmd: Some("cat data.txt".into()),
            setup_script: Some("echo setup".into()),
            files: [("data.txt".to_string(), "x".into())].into(),
            stdin: Some("in".into()),
            ..Default::default()
        });
        let setup = sent(&plan, StreamPhase::Setup, Some("echo setup"), false);
        assert_eq!(setup["argv"], json!(["bash", "/tmp/.isol8-setup.sh"]));
        assert_eq!(setup["files"], json!({"/sandbox/data.txt": "eA=="}));
        assert_eq!(setup["stdin"], Value::Null);
        assert_eq!(setup["display"], false);
        let code = sent(&plan, StreamPhase::Code, None, false);
        assert_eq!(code["argv"], json!(["bash", "-c", "cat data.txt"]));
        assert_eq!(code["files"], json!({}));
        assert_eq!(code["stdin"], "aW4=");
    }

    #[test]
    fn session_code_is_a_cell_and_remote_code_is_never_sent() {
        let cell = plan(ExecutionRequest {
            runtime: Runtime::Python,
            code: Some("x = 1".into()),
            ..Default::default()
        });
        let sent = sent(&cell, StreamPhase::Code, None, true);
        assert_eq!(sent["op"], "cell", "{sent}");
        assert_eq!(sent["runtime"], "python");
        assert_eq!(
            sent["cwd"],
            Value::Null,
            "the session keeps its own directory"
        );
        let remote = plan(ExecutionRequest {
            runtime: Runtime::Python,
            code_url: Some("https://example.com/a.py".into()),
            ..Default::default()
        });
        assert!(agent_request(&remote, StreamPhase::Code, None, false).is_none());
    }
}
