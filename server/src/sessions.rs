//! Persistent sessions: the registry of live sessions per API key, their limits, idle freezing and
//! expiry, and adoption of the sessions an earlier process of this server left.
//!
//! Sessions are namespaced by the key's identity: another key naming the same id reaches a session of
//! its own, never this one. The registry's map is behind a std mutex that is never held across an
//! `.await`; each session's calls are serialized by its own tokio mutex (`SessionSlot`), held for the
//! whole call, streams included, and by the freezer while it pauses the container. Each session's
//! small fields (last use, idle timeout, secrets) sit behind std mutexes held for one update.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use isol8_api::{CleanupCounts, Runtime, SessionId};
use isol8_docker::{Engine, SessionKey, SessionSlot, SessionState};
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::session_store::{SessionRecord, SessionStore};

/// Where a CLI's sessions belong: every local invocation shares them, whatever its random key.
pub(crate) const LOCAL_OWNER: &str = "local";

/// One live session.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub owner: String,
    pub runtime: Runtime,
    pub created: DateTime<Utc>,
    last_used: Mutex<(DateTime<Utc>, Instant)>,
    /// Its own idle timeout (`PATCH /session/{id}`), else the server's.
    idle_timeout: Mutex<Duration>,
    /// The secrets its interpreter holds, and every secret value it was ever given (all masked).
    secrets: Mutex<(BTreeMap<String, String>, BTreeSet<String>)>,
    pub slot: SessionSlot,
}

impl Session {
    pub fn touch(&self) {
        *self.last_used.lock() = (Utc::now(), Instant::now());
    }

    pub fn idle_timeout(&self) -> Duration {
        *self.idle_timeout.lock()
    }

    pub fn set_idle_timeout(&self, timeout: Duration) {
        *self.idle_timeout.lock() = timeout;
    }

    /// When it expires if it stays idle.
    pub fn idle_deadline(&self) -> DateTime<Utc> {
        let timeout =
            chrono::Duration::from_std(self.idle_timeout()).unwrap_or(chrono::Duration::MAX);
        self.last_used()
            .checked_add_signed(timeout)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Adds this call's secrets to the session's; returns all of them and every value to mask.
    pub fn add_secrets(
        &self,
        new: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, Vec<String>) {
        let mut secrets = self.secrets.lock();
        secrets.1.extend(new.values().cloned());
        secrets.0.extend(new.clone());
        (secrets.0.clone(), secrets.1.iter().cloned().collect())
    }

    /// What the next server process needs to adopt it.
    pub fn record(&self) -> SessionRecord {
        let (secrets, secret_values) = self.secrets.lock().clone();
        SessionRecord {
            id: self.id.clone(),
            owner: self.owner.clone(),
            runtime: self.runtime,
            created: self.created,
            last_used: self.last_used(),
            idle_timeout_ms: self.idle_timeout().as_millis() as u64,
            secrets,
            secret_values,
        }
    }

    pub fn last_used(&self) -> DateTime<Utc> {
        self.last_used.lock().0
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().1.elapsed()
    }

    /// A call holds the session's lock.
    pub fn busy(&self) -> bool {
        self.slot.try_lock().is_err()
    }

    pub fn key(&self, local: bool, server: &str) -> SessionKey {
        SessionKey {
            id: self.id.clone(),
            owner: self.owner.clone(),
            local,
            server: (!local).then(|| server.to_string()),
        }
    }
}

/// Limits of the registry.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub idle_timeout: Duration,
    /// The most a session may set its own idle timeout to.
    pub max_idle_timeout: Duration,
    /// Idle this long, a session's container is frozen; `None` never.
    pub pause_after: Option<Duration>,
    pub max_per_key: usize,
    pub max_total: usize,
}

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<(String, String), Arc<Session>>>,
    limits: SessionLimits,
    /// CLI mode: sessions outlive the process; their containers are found again by label.
    pub local: bool,
    /// This server's identity and its sessions' records (server mode), opened on first use so
    /// the CLI's embedded server (local sessions) never touches the data folder.
    store: std::sync::OnceLock<SessionStore>,
    /// `serverId` and `dataDir` from the config, for opening `store`.
    identity: crate::config::ServerConfig,
}

/// What adoption at start-up did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub adopted: usize,
    /// Found past their idle deadline, and removed.
    pub expired: usize,
    /// Dead, without a record, or over the limits: removed.
    pub removed: usize,
}

impl Sessions {
    pub fn new(limits: SessionLimits, local: bool, config: &crate::config::ServerConfig) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            limits,
            local,
            store: std::sync::OnceLock::new(),
            identity: crate::config::ServerConfig {
                server_id: config.server_id.clone(),
                data_dir: config.data_dir.clone(),
                ..Default::default()
            },
        }
    }

    /// This server's identity and session records.
    pub fn store(&self) -> &SessionStore {
        self.store.get_or_init(|| match self.local {
            true => SessionStore::ephemeral(),
            false => SessionStore::open(&self.identity),
        })
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Whether `get_or_create` would make a new session for this id.
    pub fn exists(&self, owner: &str, id: &str) -> bool {
        self.map
            .lock()
            .contains_key(&(self.owner(owner), id.to_string()))
    }

    /// Saves the session's record (server mode), for the next process to adopt it.
    pub fn persist(&self, session: &Session) {
        if !self.local {
            self.store().save(&session.record());
        }
    }

    /// Adopts the sessions an earlier process of this server (same `serverId`) left on the
    /// engine: each becomes a session again, its container attached on first use. Those past
    /// their idle deadline, those whose container died and those without a record (their secrets
    /// could not be masked) are removed. Runs before the server takes requests.
    pub async fn adopt(&self, engine: &Engine) -> Result<Adopted, isol8_docker::Error> {
        let mut done = Adopted::default();
        if self.local {
            return Ok(done);
        }
        let found = engine.server_sessions(self.store().server_id()).await?;
        let mut doomed = Vec::new();
        let now = Utc::now();
        for container in &found {
            let record = self.store().load(&container.owner, &container.id);
            let live = matches!(container.state.as_str(), "running" | "paused");
            let Some(record) = record.filter(|r| live && r.runtime == container.runtime) else {
                tracing::warn!(session = %container.id, state = %container.state, "removing a session container that cannot be adopted (not running, or no record)");
                self.store().remove(&container.owner, &container.id);
                doomed.push(container.container_id.clone());
                done.removed += 1;
                continue;
            };
            let idle = (now - record.last_used).to_std().unwrap_or_default();
            let timeout = Duration::from_millis(record.idle_timeout_ms);
            if idle >= timeout {
                self.store().remove(&record.owner, &record.id);
                doomed.push(container.container_id.clone());
                done.expired += 1;
                continue;
            }
            let key = (record.owner.clone(), record.id.clone());
            let mut map = self.map.lock();
            if map.contains_key(&key) || map.len() >= self.limits.max_total {
                drop(map);
                doomed.push(container.container_id.clone());
                done.removed += 1;
                continue;
            }
            let state = SessionState::adoptable(
                container.container_id.clone(),
                container.state == "paused",
            );
            let since = Instant::now()
                .checked_sub(idle)
                .unwrap_or_else(Instant::now);
            map.insert(
                key,
                Arc::new(Session {
                    id: record.id,
                    owner: record.owner,
                    runtime: record.runtime,
                    created: record.created,
                    last_used: Mutex::new((record.last_used, since)),
                    idle_timeout: Mutex::new(timeout.min(self.limits.max_idle_timeout)),
                    secrets: Mutex::new((record.secrets, record.secret_values)),
                    slot: Arc::new(tokio::sync::Mutex::new(state)),
                }),
            );
            done.adopted += 1;
        }
        // Records whose container is gone (removed by hand, `isol8 cleanup`) are dropped.
        for record in self.store().all() {
            if !self
                .map
                .lock()
                .contains_key(&(record.owner.clone(), record.id.clone()))
            {
                self.store().remove(&record.owner, &record.id);
            }
        }
        futures::future::join_all(doomed.iter().map(|id| engine.remove_session_container(id)))
            .await;
        Ok(done)
    }

    /// The caller's session `id`, created (without a container yet) when it does not exist.
    /// `tenant_max` is the caller's `tenantLimits.maxSessions` (a tenant's key), which replaces
    /// `maxSessionsPerKey`.
    pub fn get_or_create(
        &self,
        owner: &str,
        id: &SessionId,
        runtime: Runtime,
        tenant_max: Option<usize>,
    ) -> Result<Arc<Session>, ApiError> {
        let owner = self.owner(owner);
        let mut map = self.map.lock();
        if let Some(session) = map.get(&(owner.clone(), id.to_string())) {
            return Ok(Arc::clone(session));
        }
        let mine = map.keys().filter(|(o, _)| *o == owner).count();
        if let Some(max) = tenant_max.filter(|max| mine >= *max) {
            return Err(ApiError::tenant_limit(format!(
                "{owner} holds {mine} sessions, its limit (tenantLimits.maxSessions {max}); \
                 delete one (DELETE /session/{{id}}) first"
            )));
        }
        if tenant_max.is_none() && mine >= self.limits.max_per_key {
            return Err(ApiError::busy(
                format!(
                    "this key has {mine} sessions, the most allowed; delete one (DELETE /session/{{id}}) first"
                ),
                60,
            ));
        }
        if map.len() >= self.limits.max_total {
            return Err(ApiError::busy(
                format!(
                    "the server holds {} sessions, the most allowed; retry later",
                    map.len()
                ),
                60,
            ));
        }
        let now = (Utc::now(), Instant::now());
        let session = Arc::new(Session {
            id: id.to_string(),
            owner: owner.clone(),
            runtime,
            created: now.0,
            last_used: Mutex::new(now),
            idle_timeout: Mutex::new(self.limits.idle_timeout),
            secrets: Default::default(),
            slot: Default::default(),
        });
        map.insert((owner, id.to_string()), Arc::clone(&session));
        Ok(session)
    }

    /// The caller's session `id`, or 404.
    pub fn get(&self, owner: &str, id: &str) -> Result<Arc<Session>, ApiError> {
        self.map
            .lock()
            .get(&(self.owner(owner), id.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no session \"{id}\"")))
    }

    pub fn remove(&self, owner: &str, id: &str) -> Option<Arc<Session>> {
        let owner = self.owner(owner);
        let removed = self.map.lock().remove(&(owner.clone(), id.to_string()));
        if removed.is_some() && !self.local {
            self.store().remove(&owner, id);
        }
        removed
    }

    /// The caller's sessions, oldest first.
    pub fn list(&self, owner: &str) -> Vec<Arc<Session>> {
        let owner = self.owner(owner);
        let mut mine: Vec<Arc<Session>> = self
            .map
            .lock()
            .values()
            .filter(|s| s.owner == owner)
            .cloned()
            .collect();
        mine.sort_by_key(|s| s.created);
        mine
    }

    pub fn count(&self) -> usize {
        self.map.lock().len()
    }

    /// Takes out every session idle past the timeout and not in a call.
    fn take_expired(&self) -> Vec<Arc<Session>> {
        let mut map = self.map.lock();
        let expired: Vec<(String, String)> = map
            .iter()
            .filter(|(_, s)| s.idle_for() >= s.idle_timeout() && !s.busy())
            .map(|(k, _)| k.clone())
            .collect();
        expired.iter().filter_map(|k| map.remove(k)).collect()
    }

    /// Takes out every session of `owner` (its cleanup).
    fn take_owner(&self, owner: &str) -> Vec<Arc<Session>> {
        let owner = self.owner(owner);
        let mut map = self.map.lock();
        let keys: Vec<(String, String)> =
            map.keys().filter(|(o, _)| *o == owner).cloned().collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    }

    /// Ends every session of `owner` (its cleanup), or every session of this server (`None`, the
    /// master key's cleanup).
    pub async fn close_matching(&self, engine: &Engine, owner: Option<&str>) -> CleanupCounts {
        let sessions = match owner {
            Some(owner) => self.take_owner(owner),
            None => self.take_all(),
        };
        let mut counts = CleanupCounts::default();
        for session in sessions {
            self.store().remove(&session.owner, &session.id);
            close(engine, &session).await;
            counts.removed += 1;
        }
        // The master key's cleanup: also this server's session containers no registry entry holds
        // (a call creating one right now, or one that could not be adopted).
        if owner.is_none() && !self.local {
            match engine.server_sessions(self.store().server_id()).await {
                Ok(left) => {
                    for container in left {
                        engine
                            .remove_session_container(&container.container_id)
                            .await;
                        self.store().remove(&container.owner, &container.id);
                        counts.removed += 1;
                    }
                }
                Err(error) => {
                    counts.failed += 1;
                    counts.errors.push(error.to_string());
                }
            }
        }
        counts
    }

    /// Takes out every session (shutdown).
    fn take_all(&self) -> Vec<Arc<Session>> {
        self.map.lock().drain().map(|(_, s)| s).collect()
    }

    fn owner(&self, owner: &str) -> String {
        match self.local {
            true => LOCAL_OWNER.to_string(),
            false => owner.to_string(),
        }
    }

    /// Every few seconds, until the task is aborted: removes expired sessions and freezes those
    /// idle past `pause_after`.
    pub async fn expire_idle(self: Arc<Self>, engine: Engine) {
        let shortest = match self.limits.pause_after {
            Some(pause) => pause.min(self.limits.idle_timeout),
            None => self.limits.idle_timeout,
        };
        let every = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::time::sleep(every).await;
            for session in self.take_expired() {
                tracing::info!(session = %session.id, "session expired after being idle");
                if !self.local {
                    self.store().remove(&session.owner, &session.id);
                }
                close(&engine, &session).await;
            }
            // Not CLI sessions: another CLI process takes them over by label, unaware of a freeze.
            if let (Some(after), false) = (self.limits.pause_after, self.local) {
                self.freeze_idle(&engine, after).await;
            }
        }
    }

    /// Freezes the containers of sessions idle at least `after` and not in a call.
    async fn freeze_idle(&self, engine: &Engine, after: Duration) {
        let idle: Vec<Arc<Session>> = self
            .map
            .lock()
            .values()
            .filter(|s| s.idle_for() >= after)
            .cloned()
            .collect();
        for session in idle {
            // A call holds the lock: it is not idle. The next tick looks again.
            let Ok(mut state) = session.slot.try_lock() else {
                continue;
            };
            if state.is_paused() || !state.has_container() {
                continue;
            }
            match engine.pause_session(&mut state).await {
                Ok(true) => {
                    tracing::debug!(session = %session.id, "session frozen while idle");
                    drop(state);
                    self.persist(&session);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(session = %session.id, %error, "could not freeze an idle session")
                }
            }
        }
    }

    /// Server shutdown: every session is frozen and its record saved, for the next process of
    /// this server to adopt. CLI sessions are left to later CLI calls.
    pub async fn close_all(&self, engine: &Engine) {
        if self.local {
            return;
        }
        let sessions: Vec<Arc<Session>> = self.map.lock().values().cloned().collect();
        let freeze = sessions.iter().map(|session| async move {
            let wait = Duration::from_secs(30);
            match tokio::time::timeout(wait, session.slot.lock()).await {
                Ok(mut state) => {
                    if let Err(error) = engine.pause_session(&mut state).await {
                        tracing::warn!(session = %session.id, %error, "could not freeze a session at shutdown");
                    }
                }
                Err(_) => tracing::warn!(session = %session.id, "a call still holds the session at shutdown; leaving it running"),
            }
            self.persist(session);
        });
        futures::future::join_all(freeze).await;
        self.map.lock().clear();
    }
}

/// Removes a session's container, after the call that holds it (if any) ends.
pub(crate) async fn close(engine: &Engine, session: &Session) {
    engine.end_session(&mut *session.slot.lock().await).await;
}
