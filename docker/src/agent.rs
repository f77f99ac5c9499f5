//! One live sandbox container and the JSON-lines protocol to the agent that is its init process.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::container::{
    AttachContainerOptions, CreateContainerOptions, LogOutput, RemoveContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::spec::ContainerSpec;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to the agent (see `docker/agent/agent.py` for the other side).
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum AgentRequest<'a> {
    #[serde(rename_all = "camelCase")]
    Run {
        argv: &'a [String],
        cwd: &'a str,
        env: &'a BTreeMap<String, String>,
        stdin: Option<String>,
        files: BTreeMap<&'a str, String>,
        code_path: Option<&'a str>,
        code: Option<String>,
        output_paths: &'a [String],
        timeout_ms: u64,
        max_output: u64,
        max_file_bytes: u64,
    },
    Reset,
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
        status: String,
        truncated: bool,
        #[serde(default)]
        files: BTreeMap<String, String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        file_errors: Vec<String>,
    },
    Reset {
        ok: bool,
        detail: String,
    },
    Error {
        error: String,
    },
}

/// A started container whose agent has said it is ready. Owned by exactly one user at a time (the pool
/// or one run), so it needs no lock.
pub(crate) struct Sandbox {
    pub id: String,
    pub spec: ContainerSpec,
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
    pub async fn start(
        docker: &Docker,
        spec: &ContainerSpec,
        instance: &str,
        oci_runtime: Option<&str>,
    ) -> Result<Sandbox> {
        let name = format!("isol8-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: name.clone(),
                    platform: None,
                }),
                spec.to_config(instance, oci_runtime),
            )
            .await
            .map_err(|e| match &e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => Error::ImageMissing {
                    image: spec.image.clone(),
                },
                _ => Error::Docker {
                    action: "create container",
                    source: e,
                },
            })?;
        let id = created.id;
        match Self::attach_and_start(docker, &id, spec).await {
            Ok(sandbox) => Ok(sandbox),
            Err(err) => {
                remove(docker, &id).await;
                Err(err)
            }
        }
    }

    async fn attach_and_start(docker: &Docker, id: &str, spec: &ContainerSpec) -> Result<Sandbox> {
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
        let short = id.chars().take(12).collect::<String>();
        let reader = tokio::spawn(read_agent(attach.output, tx, short));
        docker
            .start_container::<String>(id, None)
            .await
            .map_err(Error::docker("start container"))?;
        let mut sandbox = Sandbox {
            id: id.to_string(),
            spec: spec.clone(),
            input: attach.input,
            events: rx,
            reader,
        };
        match tokio::time::timeout(READY_TIMEOUT, sandbox.events.recv()).await {
            Ok(Some(AgentEvent::Ready)) => Ok(sandbox),
            Ok(Some(other)) => Err(sandbox.failure(format!("agent said {other:?} before ready"))),
            Ok(None) => Err(sandbox.failure("the container exited before its agent was ready")),
            Err(_) => Err(Error::Timeout {
                what: "sandbox agent start",
                after: READY_TIMEOUT,
            }),
        }
    }

    pub fn short_id(&self) -> String {
        self.id.chars().take(12).collect()
    }

    pub fn failure(&self, message: impl Into<String>) -> Error {
        Error::Sandbox {
            container: self.short_id(),
            message: message.into(),
        }
    }

    pub async fn send(&mut self, request: &AgentRequest<'_>) -> Result<()> {
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
    pub async fn next_event(&mut self) -> Option<AgentEvent> {
        self.events.recv().await
    }

    /// Kills everything, wipes the writable places and checks that the agent reports them clean.
    pub async fn reset(&mut self, within: Duration) -> Result<()> {
        self.send(&AgentRequest::Reset).await?;
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

    /// Removes the container (force) and stops reading from it.
    pub async fn destroy(self, docker: &Docker) {
        self.reader.abort();
        remove(docker, &self.id).await;
    }
}

/// Force-removes a container with its anonymous volumes; a container that is already gone is fine.
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
        if !crate::error::is_not_found(&err) {
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
