//! Shared server state: the engine, the policy, the key and the execution slots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use isol8_docker::{Engine, Limits};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::NamedKey;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::remote_code::RemoteCode;
use crate::sessions::Sessions;

/// Everything handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    pub config: Arc<ServerConfig>,
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    /// The bearer key. Compared in constant time; never logged.
    pub(crate) api_key: Arc<String>,
    /// Further keys, each with a tenant (the config's `keysFile`).
    pub(crate) named_keys: Arc<Vec<NamedKey>>,
    /// One permit per running execution (`maxConcurrent`). Handlers hold a permit for the whole run,
    /// streams included; dropping it frees the slot.
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot; bounded by `maxQueue`.
    waiting: Arc<AtomicUsize>,
    /// The `remoteCode` policy, compiled.
    pub remote_code: RemoteCode,
}

impl AppState {
    pub fn new(engine: Engine, config: ServerConfig, api_key: String) -> Self {
        AppState {
            engine,
            default_limits: config.default_limits(),
            max_limits: config.max_limits(),
            metrics: Arc::new(Metrics::default()),
            sessions: Arc::new(Sessions::new(config.session_limits(), false)),
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
            waiting: Arc::new(AtomicUsize::new(0)),
            // Validated with the rest of the config at load; an invalid one allows nothing.
            remote_code: RemoteCode::new(config.remote_code.clone()).unwrap_or_else(|_| {
                RemoteCode::new(Default::default()).expect("the default is valid")
            }),
            config: Arc::new(config),
            api_key: Arc::new(api_key),
            named_keys: Arc::new(Vec::new()),
        }
    }

    /// Accepts `keys` besides the master key.
    pub fn with_named_keys(mut self, keys: Vec<NamedKey>) -> Self {
        self.named_keys = Arc::new(keys);
        self
    }

    /// For the CLI's embedded server: sessions outlive the process and are shared by every local
    /// invocation (found again by their containers' labels).
    pub fn with_local_sessions(mut self) -> Self {
        self.sessions = Arc::new(Sessions::new(self.config.session_limits(), true));
        self
    }

    /// Identity of the key a request authenticated with; sandboxes are never shared across owners.
    pub fn owner_of(key: &str) -> String {
        hex::encode(&Sha256::digest(key.as_bytes())[..8])
    }

    /// Waits for an execution slot, or refuses with 429 when the queue is full or the wait too long.
    pub async fn acquire_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.waiting);
        if queued >= self.config.max_queue {
            return Err(ApiError::busy(
                format!(
                    "the server is at capacity ({} running, {} queued); retry later",
                    self.config.max_concurrent, self.config.max_queue
                ),
                1,
            ));
        }
        let wait = Duration::from_millis(self.config.queue_timeout_ms);
        match tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::busy(
                format!(
                    "no execution slot became free within {} ms",
                    wait.as_millis()
                ),
                1,
            )),
        }
    }
}

/// Decrements the waiting counter when the waiter leaves, however it leaves.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
