//! One live sandbox container and the JSON-lines protocol to the agent that is its init process.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use bollard::container::{
    AttachContainerOptions, CreateContainerOptions, LogOutput, RemoveContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use isol8_api::ExecutionStatus;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::host::DockerHost;
use crate::spec::ContainerSpec;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to the agent (see `agent/src/agent/proto.rs` for the other side).
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum AgentRequest<'a> {
    #[serde(rename_all = "camelCase")]
    Run {
        argv: Vec<String>,
        cwd: &'a str,
        env: BTreeMap<String, String>,
        stdin: Option<String>,
        files: BTreeMap<&'a str, String>,
        code_path: Option<String>,
        code: Option<String>,
        output_paths: &'a [String],
        timeout_ms: u64,
        max_output: u64,
        max_file_bytes: u64,
        /// All `output_paths` files together.
        max_files_total: u64,
        /// Keep stdin open for `Stdin` requests until one says `eof`.
        live_stdin: bool,
        /// Give the program a display channel (fd 3) and isol8's matplotlib backend.
        display: bool,
    },
    /// Code for the session's long-lived interpreter (state persists between cells).
    #[serde(rename_all = "camelCase")]
    Cell {
        runtime: &'a str,
        code: String,
        stdin: Option<String>,
        env: BTreeMap<String, String>,
        cwd: Option<&'a str>,
        files: BTreeMap<&'a str, String>,
        output_paths: &'a [String],
        timeout_ms: u64,
        max_output: u64,
        max_file_bytes: u64,
        max_files_total: u64,
    },
    /// Live stdin for the running program.
    Stdin {
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        eof: bool,
    },
    /// A signal to the running program's process group (`SIGINT`, `SIGTERM`, `SIGKILL`).
    Signal {
        signal: &'a str,
    },
    /// Kill everything, wipe, verify; then pre-start the next run's interpreter.
    Reset {
        #[serde(skip_serializing_if = "Option::is_none")]
        prestart: Option<&'a Prestart>,
    },
    /// Pre-start the next run's interpreter now (a container that has run nothing yet).
    Prestart(&'a Prestart),
    Ping,
    Write {
        path: &'a str,
        data: String,
    },
    #[serde(rename_all = "camelCase")]
    Read {
        path: &'a str,
        max_bytes: u64,
    },
}

/// How the agent pre-starts the next run's interpreter (`Waiting` in the agent): the command line,
/// working directory, environment and display channel of a default run of the runtime. A run
/// that would start its interpreter in any other way starts it the normal way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Prestart {
    pub runtime: &'static str,
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub display: bool,
}

/// An event from the agent.
#[derive(Debug, Deserialize)]
#[serde(tag = "ev", rename_all = "lowercase")]
pub(crate) enum AgentEvent {
    Ready,
    Out {
        s: u8,
        d: String,
    },
    #[serde(rename_all = "camelCase")]
    Done {
        exit_code: i64,
        status: ExecutionStatus,
        truncated: bool,
        #[serde(default)]
        files: BTreeMap<String, String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        file_errors: Vec<String>,
        /// A session's interpreter died during the cell: earlier state is gone.
        #[serde(default)]
        restarted: bool,
        /// The program ran in a pre-started interpreter.
        #[serde(default)]
        prestarted: bool,
        #[serde(default)]
        usage: Option<AgentUsage>,
    },
    File {
        data: String,
    },
    /// A code-interpreter result: a MIME bundle.
    Display {
        data: isol8_api::MimeBundle,
    },
    Reset {
        ok: bool,
        detail: String,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        error: String,
        #[serde(default)]
        not_found: bool,
    },
}

/// What a run used, as the agent measured it (see `Run.usage` in the agent).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentUsage {
    /// CPU time of the run's processes, in nanoseconds.
    pub cpu_ns: u64,
    /// The largest resident set of any of its processes, in bytes.
    pub peak_rss: u64,
    /// The container's memory in use at the end, in bytes.
    pub memory: u64,
    pub net_in: u64,
    pub net_out: u64,
}

impl AgentUsage {
    pub(crate) fn to_api(self, duration_ms: u64) -> isol8_api::ResourceUsage {
        const MIB: f64 = 1024.0 * 1024.0;
        let cpu_time_ms = self.cpu_ns / 1_000_000;
        let round = |v: f64| (v * 100.0).round() / 100.0;
        isol8_api::ResourceUsage {
            cpu_percent: round(cpu_time_ms as f64 * 100.0 / duration_ms.max(1) as f64),
            memory_mb: round(self.memory as f64 / MIB),
            network_bytes_in: self.net_in,
            network_bytes_out: self.net_out,
            peak_memory_mb: round(self.peak_rss as f64 / MIB),
            cpu_time_ms,
            peak_memory_bytes: self.peak_rss,
        }
    }
}

/// A started container whose agent has said it is ready. Owned by exactly one user at a time (the pool
/// or one run), so it needs no lock.
pub(crate) struct Sandbox {
    pub id: String,
    pub spec: ContainerSpec,
    /// The uid its agent and programs run as (its own: `uids.rs`).
    pub uid: u32,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    /// Agent events, fed by `reader`; closed when the container's output ends (it died).
    events: mpsc::Receiver<AgentEvent>,
    /// Reads the attach stream and parses lines; ends with the container.
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("id", &self.id).finish()
    }
}

impl Sandbox {
    /// Creates, attaches and starts a container for `spec`, and waits for its agent.
    /// On any failure the container is removed before the error is returned.
    pub(crate) async fn start(
        docker: &Docker,
        spec: &ContainerSpec,
        instance: &str,
        oci_runtime: Option<&str>,
        host: &DockerHost,
        uid: u32,
    ) -> Result<Sandbox> {
        let name = format!("isol8-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: name.clone(),
                    platform: None,
                }),
                spec.to_config(instance, oci_runtime, uid),
            )
            .await
            .map_err(|e| match &e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => Error::ImageMissing {
                    image: spec.image.clone(),
                },
                // Docker refuses what the request asked for (a malformed image name): the caller's error.
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 400,
                    message,
                } => Error::InvalidRequest(format!("image \"{}\": {message}", spec.image)),
                _ => Error::Docker {
                    action: "create container",
                    source: e,
                },
            })?;
        let id = created.id;
        match Self::attach_and_start(docker, &id, spec, host, uid).await {
            Ok(sandbox) => Ok(sandbox),
            Err(err) => {
                remove(docker, &id).await;
                Err(err)
            }
        }
    }

    async fn attach_and_start(
        docker: &Docker,
        id: &str,
        spec: &ContainerSpec,
        host: &DockerHost,
        uid: u32,
    ) -> Result<Sandbox> {
        let mut sandbox = Self::attach(docker, id, spec.clone(), uid).await?;
        docker
            .start_container::<String>(id, None)
            .await
            .map_err(Error::docker("start container"))?;
        if host.cgroup_v1 {
            let cap = crate::host::socket_memory_cap(spec.memory_bytes);
            if let Err(why) = crate::host::limit_socket_memory(id, cap) {
                warn_once_socket_memory(&why);
            }
        }
        sandbox.wait_ready().await?;
        Ok(sandbox)
    }

    async fn attach(docker: &Docker, id: &str, spec: ContainerSpec, uid: u32) -> Result<Sandbox> {
        let attach = docker
            .attach_container(
                id,
                Some(AttachContainerOptions::<String> {
                    stdin: Some(true),
                    stdout: Some(true),
                    stderr: Some(true),
                    stream: Some(true),
                    logs: Some(false),
                    detach_keys: None,
                }),
            )
            .await
            .map_err(Error::docker("attach container"))?;
        let (tx, rx) = mpsc::channel(256);
        let short = crate::short_id(id);
        let reader = tokio::spawn(read_agent(attach.output, tx, short));
        Ok(Sandbox {
            id: id.to_string(),
            spec,
            uid,
            input: attach.input,
            events: rx,
            reader,
        })
    }

    async fn wait_ready(&mut self) -> Result<()> {
        match tokio::time::timeout(READY_TIMEOUT, self.events.recv()).await {
            Ok(Some(AgentEvent::Ready)) => Ok(()),
            Ok(Some(other)) => Err(self.failure(format!("agent said {other:?} before ready"))),
            Ok(None) => Err(self.failure("the container exited before its agent was ready")),
            Err(_) => Err(Error::Timeout {
                what: "sandbox agent start",
                after: READY_TIMEOUT,
            }),
        }
    }

    /// Writes or reads one file through the agent (paths confined to /sandbox by the agent too).
    pub(crate) async fn file_op(&mut self, request: &AgentRequest<'_>) -> Result<Vec<u8>> {
        self.send(request).await?;
        loop {
            match tokio::time::timeout(READY_TIMEOUT, self.next_event()).await {
                Ok(Some(AgentEvent::File { data })) => {
                    return base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|e| self.failure(format!("agent sent bad base64: {e}")))
                }
                Ok(Some(AgentEvent::Error { error, not_found })) => {
                    return Err(match not_found {
                        true => Error::NotFound(error),
                        false => Error::InvalidRequest(error),
                    })
                }
                Ok(Some(_)) => continue, // late output of an earlier call
                Ok(None) => return Err(self.failure("the container is gone")),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: "sandbox file transfer",
                        after: READY_TIMEOUT,
                    })
                }
            }
        }
    }

    /// Attaches to a sandbox container that is already running (a session kept by an earlier
    /// process) and checks that its agent answers.
    /// Output the agent sends first (the end of a call its earlier holder did not live to read)
    /// is skipped.
    pub(crate) async fn adopt(
        docker: &Docker,
        id: &str,
        spec: ContainerSpec,
        uid: u32,
    ) -> Result<Sandbox> {
        let mut sandbox = Self::attach(docker, id, spec, uid).await?;
        sandbox.send(&AgentRequest::Ping).await?;
        let ready = async {
            loop {
                match sandbox.events.recv().await {
                    Some(AgentEvent::Ready) => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        };
        match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(true) => Ok(sandbox),
            Ok(false) => Err(sandbox.failure("the container exited before its agent answered")),
            Err(_) => Err(Error::Timeout {
                what: "sandbox agent ping",
                after: READY_TIMEOUT,
            }),
        }
    }

    /// Whether the container's output ended (it exited or was removed).
    pub(crate) fn is_gone(&self) -> bool {
        self.reader.is_finished()
    }

    pub(crate) fn short_id(&self) -> String {
        crate::short_id(&self.id)
    }

    pub(crate) fn failure(&self, message: impl Into<String>) -> Error {
        Error::Sandbox {
            container: self.short_id(),
            message: message.into(),
        }
    }

    pub(crate) async fn send(&mut self, request: &AgentRequest<'_>) -> Result<()> {
        let mut line = serde_json::to_vec(request).map_err(|e| self.failure(e.to_string()))?;
        line.push(b'\n');
        self.input
            .write_all(&line)
            .await
            .map_err(|e| self.failure(format!("cannot write to the agent: {e}")))?;
        self.input
            .flush()
            .await
            .map_err(|e| self.failure(format!("cannot write to the agent: {e}")))
    }

    /// The next agent event; `None` when the container is gone.
    pub(crate) async fn next_event(&mut self) -> Option<AgentEvent> {
        self.events.recv().await
    }

    /// Kills everything, wipes the writable places and checks that the agent reports them clean;
    /// then the agent pre-starts the next run's interpreter as `prestart` says.
    pub(crate) async fn reset(
        &mut self,
        within: Duration,
        prestart: Option<&Prestart>,
    ) -> Result<()> {
        self.send(&AgentRequest::Reset { prestart }).await?;
        let wait = async {
            while let Some(event) = self.next_event().await {
                match event {
                    AgentEvent::Reset { ok: true, .. } => return Ok(()),
                    AgentEvent::Reset { ok: false, detail } => {
                        return Err(format!("reset not clean: {detail}"))
                    }
                    _ => continue, // late output of the last run
                }
            }
            Err("the container exited during reset".to_string())
        };
        match tokio::time::timeout(within, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(self.failure(msg)),
            Err(_) => Err(Error::Timeout {
                what: "sandbox reset",
                after: within,
            }),
        }
    }

    /// Has the agent of a container that has run nothing yet pre-start the next run's
    /// interpreter (no answer: a run finds it or starts its own).
    pub(crate) async fn prestart(&mut self, prestart: &Prestart) -> Result<()> {
        self.send(&AgentRequest::Prestart(prestart)).await
    }

    /// Ends the container and returns once it is gone. One that ends with its connection is let
    /// go: its attach stream closes, the agent reads the end of its stdin and exits (taking every
    /// process of the container with it, as PID 1) and Docker removes it, which costs the engine
    /// less than killing a running container (strict mode makes and ends one per run). One not
    /// gone within GONE_WITHIN, and every other kind, is force-removed.
    pub(crate) async fn destroy(self, docker: &Docker) {
        let Sandbox {
            id,
            spec,
            input,
            reader,
            ..
        } = self;
        reader.abort();
        drop(input);
        if !spec.ends_with_connection()
            || tokio::time::timeout(GONE_WITHIN, removed(docker, &id)).await != Ok(true)
        {
            remove(docker, &id).await;
        }
    }
}

/// Says once per process that socket buffers are bounded only per socket here (a cgroup v1 Docker
/// host whose cgroups this process cannot write: a remote engine, or a server in a container).
fn warn_once_socket_memory(why: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            reason = why,
            "cgroup v1: cannot bound sandboxes' socket buffers together; each socket stays capped"
        )
    });
}

/// How long a container let go (`Sandbox::destroy`) may take to exit and be removed.
const GONE_WITHIN: Duration = Duration::from_secs(3);

/// Waits until Docker has removed container `id`; false if it cannot tell.
async fn removed(docker: &Docker, id: &str) -> bool {
    let options = WaitContainerOptions {
        condition: "removed",
    };
    let mut wait = docker.wait_container(id, Some(options));
    match wait.next().await {
        // The answer comes once it is removed (a non-zero exit status arrives as an error).
        None | Some(Ok(_)) => true,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => true,
        Some(Err(err)) => crate::error::status_of(&err) == Some(404),
    }
}

/// Force-removes a container with its anonymous volumes; a container that is already gone, or
/// already being removed (409: an auto-remove container whose agent died), is fine.
pub(crate) async fn remove(docker: &Docker, id: &str) {
    let result = docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    if let Err(err) = result {
        if !matches!(crate::error::status_of(&err), Some(404 | 409)) {
            tracing::warn!(container = %id, error = %err, "could not remove container");
        }
    }
}

async fn read_agent(
    mut output: Pin<
        Box<dyn futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    tx: mpsc::Sender<AgentEvent>,
    container: String,
) {
    let mut line = Vec::new();
    while let Some(item) = output.next().await {
        let chunk = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => message,
            Ok(LogOutput::StdErr { message }) => {
                tracing::warn!(%container, agent_stderr = %String::from_utf8_lossy(&message), "agent wrote to stderr");
                continue;
            }
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(err) => {
                tracing::debug!(%container, error = %err, "attach stream ended with an error");
                break;
            }
        };
        let mut rest: &[u8] = &chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            match serde_json::from_slice::<AgentEvent>(&line) {
                Ok(event) => {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(%container, error = %err, "unparsable agent line");
                }
            }
            line.clear();
        }
        line.extend_from_slice(rest);
    }
}
