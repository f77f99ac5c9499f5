//! Shared server state: the engine, the policy, the keys and the execution slots (server-wide and
//! per tenant).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use isol8_docker::{Engine, Limits, PlanDefaults};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{Caller, KeyDigest, NamedKey};
use crate::config::ServerConfig;
use crate::db::Database;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::remote_code::RemoteCode;
use crate::sessions::Sessions;
use crate::tenants::{TenantLimits, TenantSlot, Tenants};

/// Everything handlers share: a handle, cloned for every request and every extractor, so the
/// state itself sits behind one `Arc` (cloning its maps and lists per request cost a fifth of a
/// warm run's server time).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What `AppState` shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub engine: Engine,
    pub config: Arc<ServerConfig>,
    /// The config's defaults and network rules, validated once: every plan starts from them.
    pub plan_defaults: PlanDefaults,
    pub max_limits: Limits,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    /// The bearer key. Never logged; requests are compared against its digest.
    pub(crate) api_key: Arc<String>,
    /// SHA-256 of `api_key`, compared in constant time (see `auth::identify_static`).
    pub(crate) api_key_digest: KeyDigest,
    /// Further keys, each with a tenant (the config's `keysFile`), with their SHA-256.
    pub(crate) named_keys: Arc<Vec<(KeyDigest, NamedKey)>>,
    /// Database keys, tenants and the audit trail (`auth.enabled` / `--auth-db`).
    pub(crate) database: Option<Database>,
    /// Per-tenant execution counts (`tenantLimits`).
    pub(crate) tenants: Arc<Tenants>,
    /// `tenantLimits` with its defaults filled in; a key's own limits override them.
    pub(crate) tenant_limits: TenantLimits,
    /// One permit per running execution (`maxConcurrent`). Handlers hold a permit for the whole run,
    /// streams included; dropping it frees the slot.
    slots: Arc<Semaphore>,
    /// The bytes of request bodies held at once (`maxBodyBytesInFlight`): a request takes its
    /// body's bytes before they are read (`app::read_body_in_time`) and gives them back when it
    /// is answered.
    pub(crate) body_budget: Arc<Semaphore>,
    /// Requests waiting for a slot; bounded by `maxQueue`.
    waiting: Arc<AtomicUsize>,
    /// Persist runs admitted but whose container is not created yet (`persist.maxPerKey`).
    pub(crate) starting: Arc<crate::persist::Starting>,
    /// The `remoteCode` policy, compiled.
    pub remote_code: RemoteCode,
}

impl AppState {
    /// Fails on a config `ServerConfig::validate` would refuse (it is parsed here once more, not
    /// trusted to have been validated).
    pub fn new(engine: Engine, config: ServerConfig, api_key: String) -> Result<Self, String> {
        let tenant_limits = TenantLimits::defaults(&config);
        Ok(AppState(Arc::new(Shared {
            engine,
            plan_defaults: config.plan_defaults()?,
            max_limits: config.limits()?.1,
            metrics: Arc::new(Metrics::default()),
            sessions: Arc::new(Sessions::new(config.session_limits(), false, &config)),
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
            waiting: Arc::new(AtomicUsize::new(0)),
            body_budget: Arc::new(Semaphore::new(config.max_body_bytes_in_flight)),
            remote_code: RemoteCode::new(config.remote_code.clone())?,
            config: Arc::new(config),
            api_key_digest: crate::auth::digest(&api_key),
            api_key: Arc::new(api_key),
            named_keys: Arc::new(Vec::new()),
            database: None,
            tenants: Arc::new(Tenants::default()),
            tenant_limits,
            starting: Default::default(),
        })))
    }

    /// The state to change while it is being built (before any request shares it).
    fn building(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// Accepts `keys` besides the master key.
    pub fn with_named_keys(mut self, keys: Vec<NamedKey>) -> Self {
        let keys = keys
            .into_iter()
            .map(|key| (crate::auth::digest(&key.key), key))
            .collect();
        self.building().named_keys = Arc::new(keys);
        self
    }

    /// Accepts the keys of `database` and records executions there.
    pub fn with_database(mut self, database: Database) -> Self {
        self.building().database = Some(database);
        self
    }

    /// For the CLI's embedded server: sessions outlive the process and are shared by every local
    /// invocation (found again by their containers' labels).
    pub fn with_local_sessions(mut self) -> Self {
        let sessions = Arc::new(Sessions::new(
            self.config.session_limits(),
            true,
            &self.config,
        ));
        self.building().sessions = sessions;
        self
    }

    /// Identity of the key a request authenticated with; sandboxes are never shared across owners.
    pub fn owner_of(key: &str) -> String {
        hex::encode(&Sha256::digest(key.as_bytes())[..8])
    }

    /// Waits for an execution slot of the caller's tenant (unless it is the master key), then for
    /// one of the server's; refuses with 429 when a queue is full or the wait too long.
    pub async fn acquire_slot(&self, caller: &Caller) -> Result<Slot, ApiError> {
        self.acquire_slot_by(caller, self.queue_deadline()).await
    }

    /// When a request that starts waiting now has waited `queueTimeoutMs`.
    pub fn queue_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.config.queue_timeout_ms)
    }

    /// `acquire_slot`, giving up at `deadline` (a request that already waited for something else
    /// gets only what is left of its `queueTimeoutMs`).
    pub async fn acquire_slot_by(
        &self,
        caller: &Caller,
        deadline: tokio::time::Instant,
    ) -> Result<Slot, ApiError> {
        let tenant = match (&caller.tenant, caller.limits) {
            (Some(tenant), Some(limits)) => {
                Some(self.tenants.acquire(tenant, limits, deadline).await?)
            }
            _ => None,
        };
        let server = self.acquire_server_slot(deadline).await?;
        Ok(Slot {
            _server: server,
            _tenant: tenant,
        })
    }

    /// Waits for `turn` (a busy session's lock) as one of the server's `maxQueue` queued requests,
    /// until `deadline` at the latest: 429 when the queue is full or the wait too long. `what`
    /// names what is waited for in the message.
    pub async fn wait_in_queue<T>(
        &self,
        turn: impl std::future::Future<Output = T>,
        deadline: tokio::time::Instant,
        what: &str,
    ) -> Result<T, ApiError> {
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.waiting);
        if queued >= self.config.max_queue {
            return Err(ApiError::busy(
                format!(
                    "{what} is busy and {} requests are queued (maxQueue); retry later",
                    self.config.max_queue
                ),
                1,
            ));
        }
        tokio::time::timeout_at(deadline, turn).await.map_err(|_| {
            ApiError::busy(
                format!(
                    "{what} stayed busy for {} ms (queueTimeoutMs); retry later",
                    self.config.queue_timeout_ms
                ),
                1,
            )
        })
    }

    async fn acquire_server_slot(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
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
        match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await {
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

/// A running execution's place: one of the server's slots and, for a tenant's key, one of its
/// tenant's. Dropping it frees both.
#[derive(Debug)]
pub struct Slot {
    _server: OwnedSemaphorePermit,
    _tenant: Option<TenantSlot>,
}

/// Decrements the waiting counter when the waiter leaves, however it leaves.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
