//! `persist: true` under policy: who may keep a run's container after it ends (the master key;
//! tenants only where `persist.allowTenants`), how many one key keeps at once, and how long.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use isol8_api::ErrorCode;
use isol8_docker::Engine;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// What `options.persist` may keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PersistPolicy {
    /// Whether tenants' keys (keys file, database) may keep containers; the master key always
    /// may. Off by default: a kept container runs outside every session and execution limit.
    pub allow_tenants: bool,
    /// Containers one key keeps at once on the Docker engine (all keys of a tenant count
    /// together); past it a 429 until some are removed (`/cleanup`) or expire.
    pub max_per_key: usize,
    /// A kept container is removed this long (milliseconds) after its run started.
    pub max_age_ms: u64,
}

impl Default for PersistPolicy {
    fn default() -> Self {
        PersistPolicy {
            allow_tenants: false,
            max_per_key: 5,
            max_age_ms: 3_600_000,
        }
    }
}

impl PersistPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_age_ms == 0 {
            return Err("persist.maxAgeMs must be greater than zero".into());
        }
        Ok(())
    }

    /// 403 when `caller` may not keep containers at all.
    pub fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        if caller.master || self.allow_tenants {
            return Ok(());
        }
        Err(ApiError::policy(
            "options.persist is not allowed for this key: this server keeps containers only for the master key (persist.allowTenants)",
        ))
    }

    /// When a container kept from now may be removed, in Unix seconds.
    pub fn expires_at(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (now + Duration::from_millis(self.max_age_ms))
            .as_secs_f64()
            .ceil() as u64
    }

    /// How often the sweeper looks for expired containers: often enough that none outlives its
    /// limit by more than half of it, and at most once a second.
    fn sweep_interval(&self) -> Duration {
        Duration::from_millis((self.max_age_ms / 2).clamp(1_000, 60_000))
    }
}

/// Persist runs being started, per owner, not yet visible as containers; counted with the kept
/// containers so concurrent requests cannot pass the cap together on this replica.
#[derive(Debug, Default)]
pub(crate) struct Starting {
    /// Owner to the number of its persist runs between admission and their container's creation;
    /// locked only to change a count, never across `.await`.
    pending: Mutex<HashMap<String, usize>>,
}

/// A persist run admitted under its key's cap; dropped once its container exists (or the run
/// failed to start).
#[derive(Debug)]
pub(crate) struct Admitted {
    starting: Arc<Starting>,
    owner: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut pending = self.starting.pending.lock();
        if let Some(count) = pending.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.owner);
            }
        }
    }
}

/// Admits a persist run of `caller` when its key keeps fewer than `persist.maxPerKey` containers
/// (429 naming the limit otherwise). Hold the answer until the run's container is created.
pub(crate) async fn admit(state: &AppState, caller: &Caller) -> Result<Admitted, ApiError> {
    let policy = &state.config.persist;
    let admitted = {
        let mut pending = state.starting.pending.lock();
        *pending.entry(caller.owner.clone()).or_default() += 1;
        Admitted {
            starting: Arc::clone(&state.starting),
            owner: caller.owner.clone(),
        }
    };
    let kept = state.engine.kept_count(&caller.owner).await?;
    let pending = state
        .starting
        .pending
        .lock()
        .get(&caller.owner)
        .copied()
        .unwrap_or(1);
    // `pending` includes this run.
    if kept + pending > policy.max_per_key {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::PersistLimit,
            format!(
                "options.persist: this key already keeps {kept} container(s), the most persist.maxPerKey ({}) allows; remove them with POST /cleanup or wait until they expire",
                policy.max_per_key
            ),
        ));
    }
    Ok(admitted)
}

/// Background task: removes kept containers past their expiry, until aborted.
pub(crate) async fn expire_forever(engine: Engine, policy: PersistPolicy) {
    let mut every = tokio::time::interval(policy.sweep_interval());
    loop {
        every.tick().await;
        match engine.remove_expired_kept().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed expired kept containers"),
            Err(error) => tracing::debug!(%error, "could not look for expired kept containers"),
        }
    }
}
