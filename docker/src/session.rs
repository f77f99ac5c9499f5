//! Sessions on the engine side: one dedicated container per session whose agent keeps the
//! interpreter alive between calls, calls serialized by the session's lock, files in and out,
//! freezing idle ones (`docker pause`), and containers that outlive the process that made them:
//! CLI sessions, and server sessions a restarted server (same `serverId`) adopts.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use isol8_api::Runtime;
use tokio::sync::OwnedMutexGuard;

use crate::agent::{remove, AgentRequest, Sandbox};
use crate::engine::{Engine, Run};
use crate::error::{Error, Result};
use crate::plan::{confine, RunPlan, SANDBOX_DIR};
use crate::run::{run_channels, RunEvents};
use crate::spec::{
    ContainerKind, LABEL_KIND, LABEL_MANAGED, LABEL_OWNER, LABEL_RUNTIME, LABEL_SERVER,
    LABEL_SESSION,
};

/// Whose session this is and where it lives.
#[derive(Debug, Clone)]
pub struct SessionKey {
    pub id: String,
    /// Identity of the API key that owns it.
    pub owner: String,
    /// A CLI session: its container outlives this process and is found again by its labels.
    pub local: bool,
    /// The server identity (`serverId`) its container is labelled with, so a restarted server
    /// with the same identity adopts it; `None` for CLI sessions.
    pub server: Option<String>,
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
    /// A container an earlier server process left (found by its labels at start-up), attached and
    /// its agent pinged on first use.
    pending: Option<String>,
    /// The container is frozen (`docker pause`); the next use thaws it.
    paused: bool,
    /// Bytes in use in `/sandbox`, measured when the session was last frozen (it cannot be
    /// measured while frozen).
    frozen_usage: Option<u64>,
}

impl SessionState {
    /// A session whose container (full id) an earlier server left: adopted on first use.
    pub fn adoptable(container_id: String, paused: bool) -> Self {
        SessionState {
            pending: Some(container_id),
            paused,
            ..Default::default()
        }
    }

    pub fn has_container(&self) -> bool {
        self.sandbox.is_some() || self.pending.is_some()
    }

    pub fn container_id(&self) -> Option<String> {
        match (&self.sandbox, &self.pending) {
            (Some(sandbox), _) => Some(sandbox.container_id()),
            (None, Some(id)) => Some(crate::short_id(id)),
            (None, None) => None,
        }
    }

    fn full_container_id(&self) -> Option<&str> {
        match (&self.sandbox, &self.pending) {
            (Some(sandbox), _) => Some(&sandbox.sandbox.id),
            (None, Some(id)) => Some(id),
            (None, None) => None,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `/sandbox`'s usage as measured when the session was frozen.
    pub fn frozen_usage(&self) -> Option<u64> {
        self.frozen_usage
    }

    pub fn sandbox_mut(&mut self) -> Option<&mut SessionSandbox> {
        self.sandbox.as_mut()
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

/// A server session's container found on the Docker engine by its labels.
#[derive(Debug, Clone)]
pub struct ServerSession {
    pub id: String,
    /// Identity of the API key that owns it.
    pub owner: String,
    pub runtime: Runtime,
    /// Full container id.
    pub container_id: String,
    /// Unix seconds.
    pub created: i64,
    /// Docker's state: running, paused, exited, ...
    pub state: String,
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
        plan.check_runnable()?;
        let mut replaced = false;
        let mut created = false;
        self.ready_session(&mut slot).await?;
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
                None => {
                    created = true;
                    self.create_session(key, &plan).await?
                }
            };
            slot.sandbox = Some(session);
            replaced = std::mem::take(&mut slot.lost);
        }
        if let Some(session) = slot.sandbox.as_mut() {
            // Every value ever given stays masked for the session's life: a new value under the
            // same name replaces the variable, not the masking of the old one.
            session.secret_values.extend(plan.secrets.values().cloned());
            session.secret_values.extend(plan.masked.iter().cloned());
            session.secrets.extend(plan.secrets.clone());
            plan.secrets = session.secrets.clone();
            plan.masked = session.secret_values.iter().cloned().collect();
        }
        let (side, events) = run_channels();
        let mut run = Run::new(Locked(slot), plan, side, self.docker().clone(), true, None);
        run.session_replaced = replaced;
        run.session_created = created && !replaced;
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

    /// Makes a session's container usable: thaws it when frozen, and adopts one an earlier
    /// server process left (attach, agent ping). A container that cannot be adopted (its agent
    /// died, it is gone) is removed and the session marked lost, so its next call starts afresh
    /// and says so.
    pub async fn ready_session(&self, state: &mut SessionState) -> Result<()> {
        if state.paused {
            if let Some(id) = state.full_container_id().map(str::to_string) {
                match self.docker().unpause_container(&id).await {
                    Ok(()) => {}
                    // 409: not paused (thawed by hand); fine.
                    Err(err) if crate::error::status_of(&err) == Some(409) => {}
                    Err(err) if crate::error::status_of(&err) == Some(404) => {
                        tracing::warn!(container = %state.container_id().unwrap_or_default(), "a frozen session's container is gone");
                        state.pending = None;
                        if let Some(session) = state.sandbox.take() {
                            self.pool().destroy(session.sandbox).await;
                        }
                        state.lost = true;
                    }
                    Err(err) => return Err(Error::docker("unpause container")(err)),
                }
            }
            state.paused = false;
            state.frozen_usage = None;
        }
        if let Some(id) = state.pending.take() {
            match self.adopt_container(&id).await {
                Ok(session) => {
                    tracing::info!(container = %session.container_id(), "session adopted");
                    state.sandbox = Some(session);
                }
                Err(error) => {
                    tracing::warn!(container = %crate::short_id(&id), %error, "could not adopt a session's container; removing it");
                    remove(self.docker(), &id).await;
                    state.lost = true;
                }
            }
        }
        Ok(())
    }

    /// The session's sandbox, thawed or adopted first (`ready_session`); `None` when it has none.
    pub async fn session_sandbox<'a>(
        &self,
        state: &'a mut SessionState,
    ) -> Result<Option<&'a mut SessionSandbox>> {
        self.ready_session(state).await?;
        Ok(state.sandbox.as_mut())
    }

    /// Freezes a session's container (`docker pause`: the cgroup freezer, so it uses no CPU);
    /// its next use thaws it. Measures `/sandbox` first, as a frozen container cannot answer.
    /// Returns whether it froze it.
    pub async fn pause_session(&self, state: &mut SessionState) -> Result<bool> {
        if state.paused || state.sandbox.as_ref().is_some_and(|s| s.sandbox.is_gone()) {
            return Ok(false);
        }
        let Some(id) = state.full_container_id().map(str::to_string) else {
            return Ok(false);
        };
        let usage = self.sandbox_usage_of(&id).await.ok();
        self.docker()
            .pause_container(&id)
            .await
            .map_err(Error::docker("pause container"))?;
        state.paused = true;
        state.frozen_usage = usage;
        Ok(true)
    }

    /// Bytes in use in the session's `/sandbox` (thawing it first).
    pub async fn session_usage(&self, state: &mut SessionState) -> Result<Option<u64>> {
        self.ready_session(state).await?;
        match state.full_container_id().map(str::to_string) {
            Some(id) => self.sandbox_usage_of(&id).await.map(Some),
            None => Ok(None),
        }
    }

    /// `/sandbox` of the session as a tar archive, at most `max_bytes` (thawing it first).
    pub async fn export_session(
        &self,
        state: &mut SessionState,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>> {
        self.ready_session(state).await?;
        match state.full_container_id().map(str::to_string) {
            Some(id) => crate::archive::export(self.docker(), &id, max_bytes)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Unpacks `tar` (checked by [`crate::check_archive`]) into the session's `/sandbox`;
    /// false when the session has no container.
    pub async fn import_session(&self, state: &mut SessionState, tar: Vec<u8>) -> Result<bool> {
        self.ready_session(state).await?;
        match state.full_container_id().map(str::to_string) {
            Some(id) => crate::archive::import(self.docker(), &id, tar)
                .await
                .map(|()| true),
            None => Ok(false),
        }
    }

    async fn sandbox_usage_of(&self, container: &str) -> Result<u64> {
        crate::archive::usage(self.docker(), container).await
    }

    /// Ends a session, whatever state its container is in (attached, frozen, left by an earlier
    /// server): the container is removed.
    pub async fn end_session(&self, state: &mut SessionState) {
        if let Some(session) = state.sandbox.take() {
            self.close_session(session).await;
        }
        if let Some(id) = state.pending.take() {
            remove(self.docker(), &id).await;
        }
        state.paused = false;
    }

    /// Creates the session's container when it has none yet (`POST /session/{id}/archive` on a new
    /// session). Returns whether it did.
    pub async fn open_session(
        &self,
        state: &mut SessionState,
        key: &SessionKey,
        plan: &RunPlan,
    ) -> Result<bool> {
        self.ready_session(state).await?;
        if state.sandbox.is_some() {
            return Ok(false);
        }
        if key.local {
            if let Some(session) = self.adopt_local_session(key, plan.runtime).await? {
                state.sandbox = Some(session);
                return Ok(false);
            }
        }
        state.sandbox = Some(self.create_session(key, plan).await?);
        Ok(true)
    }

    async fn create_session(&self, key: &SessionKey, plan: &RunPlan) -> Result<SessionSandbox> {
        let mut spec = self.container_spec(plan).await?;
        spec.kind = match key.local {
            true => ContainerKind::LocalSession,
            false => ContainerKind::Session,
        };
        spec.labels.insert(LABEL_SESSION.into(), key.id.clone());
        spec.labels.insert(LABEL_OWNER.into(), key.owner.clone());
        if let Some(server) = &key.server {
            spec.labels.insert(LABEL_SERVER.into(), server.clone());
        }
        let sandbox = self.pool().create(&spec).await?;
        // Not this process's to remove at shutdown: later CLI calls, or the server restarted with
        // the same identity, continue it.
        self.pool().untrack(&sandbox.id);
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
        self.adopt_container(&found.container_id).await.map(Some)
    }

    /// Attaches to a running session container (a CLI session, or one an earlier server left)
    /// and pings its agent. Its runtime and kind come from its labels.
    async fn adopt_container(&self, id: &str) -> Result<SessionSandbox> {
        let docker = self.docker();
        let inspect = docker
            .inspect_container(id, None)
            .await
            .map_err(Error::docker("inspect container"))?;
        let running = inspect
            .state
            .as_ref()
            .is_some_and(|s| s.running == Some(true) && s.paused != Some(true));
        let config = inspect.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        // "uid:gid", as `ContainerSpec::to_config` wrote it.
        let uid = config
            .user
            .as_deref()
            .and_then(|user| user.split(':').next()?.parse::<u32>().ok())
            .ok_or_else(|| Error::Sandbox {
                container: id.chars().take(12).collect(),
                message: "its user is not a numeric uid".into(),
            })?;
        let runtime: Runtime = labels
            .get(LABEL_RUNTIME)
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| Error::Sandbox {
                container: crate::short_id(id),
                message: "its runtime label is missing".into(),
            })?;
        if !running {
            return Err(Error::Sandbox {
                container: crate::short_id(id),
                message: "it is not running".into(),
            });
        }
        let mut spec = crate::spec::ContainerSpec::new(
            config.image.unwrap_or_default(),
            runtime.as_str(),
            self.default_limits(),
            Default::default(),
        );
        spec.kind = match labels.get(LABEL_KIND).map(String::as_str) {
            Some("local-session") => ContainerKind::LocalSession,
            _ => ContainerKind::Session,
        };
        let sandbox = Sandbox::adopt(docker, id, spec, uid).await?;
        self.pool().claim_uid(uid);
        Ok(SessionSandbox {
            sandbox,
            runtime,
            secrets: Default::default(),
            secret_values: Default::default(),
        })
    }

    /// The session containers of the server identity `server` on this Docker engine, whatever
    /// process made them (a restarted server adopts them).
    pub async fn server_sessions(&self, server: &str) -> Result<Vec<ServerSession>> {
        let containers = self
            .containers_labelled(vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_KIND}={}", ContainerKind::Session.as_str()),
                format!("{LABEL_SERVER}={server}"),
            ])
            .await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(ServerSession {
                    id: labels.get(LABEL_SESSION)?.clone(),
                    owner: labels.get(LABEL_OWNER)?.clone(),
                    runtime: labels.get(LABEL_RUNTIME)?.parse().ok()?,
                    container_id: c.id?,
                    created: c.created.unwrap_or_default(),
                    state: c.state.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Removes a session container by id (one a restarted server found expired, or could not
    /// adopt).
    pub async fn remove_session_container(&self, id: &str) {
        remove(self.docker(), id).await;
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
        let containers = self
            .containers_labelled(vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_KIND}={}", ContainerKind::LocalSession.as_str()),
            ])
            .await?;
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
