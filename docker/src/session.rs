//! Sessions on the engine side: one dedicated container per session whose agent keeps the
//! interpreter alive between calls, calls serialized by the session's lock, files in and out, and
//! CLI sessions that outlive the process that made them.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bollard::container::ListContainersOptions;
use isol8_api::Runtime;
use tokio::sync::OwnedMutexGuard;

use crate::agent::{remove, AgentRequest, Sandbox};
use crate::engine::{Engine, Run};
use crate::error::{Error, Result};
use crate::plan::{confine, RunPlan, SANDBOX_DIR};
use crate::run::{run_channels, RunEvents};
use crate::spec::{
    ContainerKind, LABEL_KIND, LABEL_MANAGED, LABEL_OWNER, LABEL_RUNTIME, LABEL_SESSION,
};

/// Whose session this is and where it lives.
#[derive(Debug, Clone)]
pub struct SessionKey {
    pub id: String,
    /// Identity of the API key that owns it.
    pub owner: String,
    /// A CLI session: its container outlives this process and is found again by its labels.
    pub local: bool,
}

/// A session's container. Kept behind the session's lock (`SessionSlot`): one call at a time.
#[derive(Debug)]
pub struct SessionSandbox {
    sandbox: Sandbox,
    pub runtime: Runtime,
    /// Every secret a call of this session passed: they stay in the interpreter's environment,
    /// so later calls mask them too.
    secrets: std::collections::BTreeMap<String, String>,
    /// Every secret value ever given, also those since replaced under the same name (the
    /// interpreter may still hold them).
    secret_values: std::collections::BTreeSet<String>,
}

impl SessionSandbox {
    pub fn container_id(&self) -> String {
        self.sandbox.short_id()
    }
}

/// What a session holds between calls: its container (none until the first call creates it, and
/// again after it was lost), and whether one was lost, so the next call can say so.
#[derive(Debug, Default)]
pub struct SessionState {
    sandbox: Option<SessionSandbox>,
    lost: bool,
}

impl SessionState {
    pub fn has_container(&self) -> bool {
        self.sandbox.is_some()
    }

    pub fn container_id(&self) -> Option<String> {
        self.sandbox.as_ref().map(SessionSandbox::container_id)
    }

    pub fn sandbox_mut(&mut self) -> Option<&mut SessionSandbox> {
        self.sandbox.as_mut()
    }

    /// Takes the container out (to close the session).
    pub fn take(&mut self) -> Option<SessionSandbox> {
        self.sandbox.take()
    }
}

/// The lock that serializes a session's calls.
pub type SessionSlot = Arc<tokio::sync::Mutex<SessionState>>;

/// A session's sandbox locked for one call; handed to the run task so the lock is held until the
/// call ends, also when the client streams.
struct Locked(OwnedMutexGuard<SessionState>);

impl Locked {
    fn session(&mut self) -> &mut SessionSandbox {
        self.0
            .sandbox
            .as_mut()
            .expect("a locked session has a sandbox")
    }
}

impl Deref for Locked {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self
            .0
            .sandbox
            .as_ref()
            .expect("a locked session has a sandbox")
            .sandbox
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Sandbox {
        &mut self.session().sandbox
    }
}

/// A CLI session found on the Docker engine.
#[derive(Debug, Clone)]
pub struct LocalSession {
    pub id: String,
    pub runtime: String,
    pub container_id: String,
    /// Unix seconds.
    pub created: i64,
    pub running: bool,
}

impl Engine {
    /// Runs `plan` in the session behind `slot` (locked by the caller), creating its container on
    /// first use (a CLI session's container is found again by its labels). The lock is held until
    /// the call's last event.
    pub async fn execute_in_session(
        &self,
        mut slot: OwnedMutexGuard<SessionState>,
        key: &SessionKey,
        mut plan: RunPlan,
    ) -> Result<RunEvents> {
        let mut replaced = false;
        if let Some(session) = slot.sandbox.as_ref() {
            if session.runtime != plan.runtime {
                return Err(Error::Conflict(format!(
                    "session \"{}\" runs {}, not {}",
                    key.id, session.runtime, plan.runtime
                )));
            }
        } else {
            let adopted = match key.local {
                true => self.adopt_local_session(key, plan.runtime).await?,
                false => None,
            };
            let session = match adopted {
                Some(session) => session,
                None => self.create_session(key, &plan).await?,
            };
            slot.sandbox = Some(session);
            replaced = std::mem::take(&mut slot.lost);
        }
        if let Some(session) = slot.sandbox.as_mut() {
            // Every value ever given stays masked for the session's life: a new value under the
            // same name replaces the variable, not the masking of the old one.
            session.secret_values.extend(plan.secrets.values().cloned());
            session.secrets.extend(plan.secrets.clone());
            plan.secrets = session.secrets.clone();
            plan.masked = session.secret_values.iter().cloned().collect();
        }
        let (side, events) = run_channels();
        let mut run = Run::new(Locked(slot), plan, side, self.docker().clone(), true, None);
        run.session_replaced = replaced;
        let pool = Arc::clone(self.pool());
        // A pool task, so shutdown waits for the call to end like any other run.
        self.pool().spawn(async move {
            let usable = run.drive().await;
            // A call that was cancelled or overran its backstop may still be running in the agent,
            // and a dead container cannot serve: either way the next call starts a fresh one (and
            // says the session restarted) rather than read this call's leftovers.
            if !usable || run.sandbox.is_gone() {
                if let Some(session) = run.sandbox.0.sandbox.take() {
                    run.sandbox.0.lost = true;
                    pool.destroy(session.sandbox).await;
                }
            }
        });
        Ok(events)
    }

    async fn create_session(&self, key: &SessionKey, plan: &RunPlan) -> Result<SessionSandbox> {
        let mut spec = self.container_spec(plan).await?;
        spec.kind = match key.local {
            true => ContainerKind::LocalSession,
            false => ContainerKind::Session,
        };
        spec.labels.insert(LABEL_SESSION.into(), key.id.clone());
        spec.labels.insert(LABEL_OWNER.into(), key.owner.clone());
        let sandbox = self.pool().create(&spec).await?;
        if key.local {
            // Not this process's to remove at shutdown: later CLI calls continue it.
            self.pool().untrack(&sandbox.id);
        }
        tracing::info!(session = %key.id, container = %sandbox.short_id(), "session started");
        Ok(SessionSandbox {
            sandbox,
            runtime: plan.runtime,
            secrets: Default::default(),
            secret_values: Default::default(),
        })
    }

    async fn adopt_local_session(
        &self,
        key: &SessionKey,
        runtime: Runtime,
    ) -> Result<Option<SessionSandbox>> {
        let Some(found) = self
            .local_sessions()
            .await?
            .into_iter()
            .find(|s| s.id == key.id)
        else {
            return Ok(None);
        };
        if found.runtime != runtime.as_str() {
            return Err(Error::Conflict(format!(
                "session \"{}\" runs {}, not {runtime}",
                key.id, found.runtime
            )));
        }
        if !found.running {
            remove(self.docker(), &found.container_id).await;
            return Ok(None);
        }
        let docker = self.docker();
        let inspect = docker
            .inspect_container(&found.container_id, None)
            .await
            .map_err(Error::docker("inspect container"))?;
        let image = inspect.config.and_then(|c| c.image).unwrap_or_default();
        let mut spec = crate::spec::ContainerSpec::new(
            image,
            runtime.as_str(),
            self.default_limits(),
            Default::default(),
        );
        spec.kind = ContainerKind::LocalSession;
        let sandbox = Sandbox::adopt(docker, &found.container_id, spec).await?;
        Ok(Some(SessionSandbox {
            sandbox,
            runtime,
            secrets: Default::default(),
            secret_values: Default::default(),
        }))
    }

    /// Writes `data` to `path` (inside /sandbox; parent folders created) in the session's container.
    pub async fn write_session_file(
        &self,
        session: &mut SessionSandbox,
        path: &str,
        data: &[u8],
    ) -> Result<()> {
        use base64::Engine as _;
        let path = session_path(path)?;
        let request = AgentRequest::Write {
            path: &path,
            data: base64::engine::general_purpose::STANDARD.encode(data),
        };
        session.sandbox.file_op(&request).await.map(drop)
    }

    /// Reads `path` (inside /sandbox, at most `max_bytes`) from the session's container.
    pub async fn read_session_file(
        &self,
        session: &mut SessionSandbox,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>> {
        let path = session_path(path)?;
        let request = AgentRequest::Read {
            path: &path,
            max_bytes,
        };
        session.sandbox.file_op(&request).await
    }

    /// Ends a session: its container is removed.
    pub async fn close_session(&self, session: SessionSandbox) {
        self.pool().destroy(session.sandbox).await;
    }

    /// CLI sessions on this Docker engine.
    pub async fn local_sessions(&self) -> Result<Vec<LocalSession>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_KIND}={}", ContainerKind::LocalSession.as_str()),
            ],
        )]);
        let containers = self
            .docker()
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(Error::docker("list containers"))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(LocalSession {
                    id: labels.get(LABEL_SESSION)?.clone(),
                    runtime: labels.get(LABEL_RUNTIME).cloned().unwrap_or_default(),
                    container_id: c.id?,
                    created: c.created.unwrap_or_default(),
                    running: c.state.as_deref() == Some("running"),
                })
            })
            .collect())
    }

    /// Removes the CLI session `id`; false when there was none.
    pub async fn remove_local_session(&self, id: &str) -> Result<bool> {
        let found: Vec<LocalSession> = self
            .local_sessions()
            .await?
            .into_iter()
            .filter(|s| s.id == id)
            .collect();
        for session in &found {
            remove(self.docker(), &session.container_id).await;
        }
        Ok(!found.is_empty())
    }
}

/// A file route's path, resolved lexically inside /sandbox (the agent also refuses symlinks out).
fn session_path(path: &str) -> Result<String> {
    confine(SANDBOX_DIR, path, &[SANDBOX_DIR])
        .filter(|p| p != SANDBOX_DIR)
        .ok_or_else(|| {
            Error::InvalidRequest(format!("path \"{path}\" must be a file inside /sandbox"))
        })
}
