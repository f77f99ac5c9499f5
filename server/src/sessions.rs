//! Persistent sessions: the registry of live sessions per API key, their limits, and idle expiry.
//!
//! Sessions are namespaced by the key's identity: another key naming the same id reaches a session of
//! its own, never this one. The registry's map is behind a std mutex that is never held across an
//! `.await`; each session's calls are serialized by its own tokio mutex (`SessionSlot`), held for the
//! whole call, streams included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use isol8_api::{CleanupCounts, Runtime};
use isol8_docker::{Engine, SessionKey, SessionSlot};

use crate::error::ApiError;

/// Where a CLI's sessions belong: every local invocation shares them, whatever its random key.
pub const LOCAL_OWNER: &str = "local";

/// One live session.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub owner: String,
    pub runtime: Runtime,
    pub created: DateTime<Utc>,
    last_used: Mutex<(DateTime<Utc>, Instant)>,
    pub slot: SessionSlot,
}

impl Session {
    pub fn touch(&self) {
        *lock(&self.last_used) = (Utc::now(), Instant::now());
    }

    pub fn last_used(&self) -> DateTime<Utc> {
        lock(&self.last_used).0
    }

    fn idle_for(&self) -> Duration {
        lock(&self.last_used).1.elapsed()
    }

    /// A call holds the session's lock.
    pub fn busy(&self) -> bool {
        self.slot.try_lock().is_err()
    }

    pub fn key(&self, local: bool) -> SessionKey {
        SessionKey {
            id: self.id.clone(),
            owner: self.owner.clone(),
            local,
        }
    }
}

/// Limits of the registry.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub idle_timeout: Duration,
    pub max_per_key: usize,
    pub max_total: usize,
}

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<(String, String), Arc<Session>>>,
    limits: SessionLimits,
    /// CLI mode: sessions outlive the process; their containers are found again by label.
    pub local: bool,
}

/// Checks a session id: 1 to 128 letters, digits, `.`, `_`, `-` or `:`.
pub fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "sessionId {id:?} is not valid: use 1 to 128 letters, digits, '.', '_', '-' or ':'"
        )))
    }
}

impl Sessions {
    pub fn new(limits: SessionLimits, local: bool) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            limits,
            local,
        }
    }

    /// The caller's session `id`, created (without a container yet) when it does not exist.
    /// `tenant_max` is the caller's `tenantLimits.maxSessions` (a tenant's key), which replaces
    /// `maxSessionsPerKey`.
    pub fn get_or_create(
        &self,
        owner: &str,
        id: &str,
        runtime: Runtime,
        tenant_max: Option<usize>,
    ) -> Result<Arc<Session>, ApiError> {
        check_id(id)?;
        let owner = self.owner(owner);
        let mut map = lock(&self.map);
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
            slot: Default::default(),
        });
        map.insert((owner, id.to_string()), Arc::clone(&session));
        Ok(session)
    }

    /// The caller's session `id`, or 404.
    pub fn get(&self, owner: &str, id: &str) -> Result<Arc<Session>, ApiError> {
        lock(&self.map)
            .get(&(self.owner(owner), id.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no session \"{id}\"")))
    }

    pub fn remove(&self, owner: &str, id: &str) -> Option<Arc<Session>> {
        lock(&self.map).remove(&(self.owner(owner), id.to_string()))
    }

    /// The caller's sessions, oldest first.
    pub fn list(&self, owner: &str) -> Vec<Arc<Session>> {
        let owner = self.owner(owner);
        let mut mine: Vec<Arc<Session>> = lock(&self.map)
            .values()
            .filter(|s| s.owner == owner)
            .cloned()
            .collect();
        mine.sort_by_key(|s| s.created);
        mine
    }

    pub fn count(&self) -> usize {
        lock(&self.map).len()
    }

    /// Takes out every session idle past the timeout and not in a call.
    fn take_expired(&self) -> Vec<Arc<Session>> {
        let mut map = lock(&self.map);
        let expired: Vec<(String, String)> = map
            .iter()
            .filter(|(_, s)| s.idle_for() >= self.limits.idle_timeout && !s.busy())
            .map(|(k, _)| k.clone())
            .collect();
        expired.iter().filter_map(|k| map.remove(k)).collect()
    }

    /// Takes out every session of `owner` (its cleanup).
    fn take_owner(&self, owner: &str) -> Vec<Arc<Session>> {
        let owner = self.owner(owner);
        let mut map = lock(&self.map);
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
            close(engine, &session).await;
            counts.removed += 1;
        }
        counts
    }

    /// Takes out every session (shutdown).
    fn take_all(&self) -> Vec<Arc<Session>> {
        lock(&self.map).drain().map(|(_, s)| s).collect()
    }

    fn owner(&self, owner: &str) -> String {
        match self.local {
            true => LOCAL_OWNER.to_string(),
            false => owner.to_string(),
        }
    }

    /// Removes expired sessions every few seconds, until the task is aborted.
    pub async fn expire_idle(self: Arc<Self>, engine: Engine) {
        let every = (self.limits.idle_timeout / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            tokio::time::sleep(every).await;
            for session in self.take_expired() {
                tracing::info!(session = %session.id, "session expired after being idle");
                close(&engine, &session).await;
            }
        }
    }

    /// Ends every session (server shutdown). CLI sessions are left to later CLI calls.
    pub async fn close_all(&self, engine: &Engine) {
        if self.local {
            return;
        }
        for session in self.take_all() {
            close(engine, &session).await;
        }
    }
}

/// Removes a session's container, after the call that holds it (if any) ends.
pub async fn close(engine: &Engine, session: &Session) {
    if let Some(sandbox) = session.slot.lock().await.take() {
        engine.close_session(sandbox).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map or timestamp update: a panic cannot leave them torn.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
