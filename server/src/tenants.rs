//! Per-tenant limits: executions running at once and requests queued, counted per tenant on this
//! replica, so one tenant cannot take every slot (sessions are counted by `Sessions`, by owner).

use std::collections::HashMap;
use std::sync::Arc;

use isol8_api::KeyLimits;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// The limits one caller's tenant runs under: the server's `tenantLimits`, with its key's own
/// overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    pub max_concurrent: usize,
    pub max_queue: usize,
    pub max_sessions: usize,
}

impl TenantLimits {
    /// The server's defaults: `tenantLimits`, else half the server's capacity.
    pub fn defaults(config: &ServerConfig) -> TenantLimits {
        let limits = &config.tenant_limits;
        TenantLimits {
            max_concurrent: limits
                .max_concurrent
                .unwrap_or(config.max_concurrent.div_ceil(2))
                .max(1),
            max_queue: limits.max_queue.unwrap_or(config.max_queue / 2),
            max_sessions: limits.max_sessions.unwrap_or(config.max_sessions_per_key),
        }
    }

    /// These limits with a key's overrides.
    pub fn with(self, key: &KeyLimits) -> TenantLimits {
        let or = |v: Option<u32>, d: usize| v.map_or(d, |v| v as usize);
        TenantLimits {
            max_concurrent: or(key.max_concurrent, self.max_concurrent).max(1),
            max_queue: or(key.max_queue, self.max_queue),
            max_sessions: or(key.max_sessions, self.max_sessions),
        }
    }
}

/// One tenant's counts on this replica.
#[derive(Debug, Default)]
struct Tenant {
    /// Running and waiting executions; locked only to read or change them, never across `.await`.
    counts: Mutex<Counts>,
    /// Signalled (to every waiter of this tenant) each time one of its executions ends.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Counts {
    running: usize,
    waiting: usize,
}

/// Every tenant's counts. Tenants are added on first use and dropped when idle.
#[derive(Debug, Default)]
pub(crate) struct Tenants {
    /// Tenant id to its counts; held only to look up or insert, never across `.await`.
    map: Mutex<HashMap<String, Arc<Tenant>>>,
}

/// A running execution of a tenant; dropping it frees the tenant's slot.
#[derive(Debug)]
pub(crate) struct TenantSlot {
    tenant: Arc<Tenant>,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.tenant.counts.lock().running -= 1;
        self.tenant.freed.notify_waiters();
    }
}

/// Takes a waiter out of the tenant's queue however it leaves.
struct Waiting<'a>(&'a Tenant);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.counts.lock().waiting -= 1;
    }
}

impl Tenants {
    fn tenant(&self, id: &str) -> Arc<Tenant> {
        let mut map = self.map.lock();
        // Tenants with nothing running or waiting are forgotten, so the map stays as small as
        // the set of active tenants.
        if map.len() > 1024 {
            map.retain(|_, t| Arc::strong_count(t) > 1);
        }
        Arc::clone(map.entry(id.to_string()).or_default())
    }

    /// Waits until `tenant` runs fewer than `limits.max_concurrent` executions, until `deadline`;
    /// refuses at once (429) when `limits.max_queue` of its requests already wait.
    pub(crate) async fn acquire(
        &self,
        tenant_id: &str,
        limits: TenantLimits,
        deadline: Instant,
    ) -> Result<TenantSlot, ApiError> {
        let tenant = self.tenant(tenant_id);
        {
            let mut counts = tenant.counts.lock();
            if counts.running < limits.max_concurrent {
                counts.running += 1;
                return Ok(TenantSlot {
                    tenant: Arc::clone(&tenant),
                });
            }
            if counts.waiting >= limits.max_queue {
                return Err(ApiError::tenant_limit(format!(
                    "tenant \"{tenant_id}\" is at its limits: {} executions running \
                     (tenantLimits.maxConcurrent) and {} waiting (tenantLimits.maxQueue); retry later",
                    limits.max_concurrent, limits.max_queue
                )));
            }
            counts.waiting += 1;
        }
        let waiting = Waiting(&tenant);
        loop {
            // Registered before the check, so an execution ending in between still wakes us.
            let freed = tenant.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut counts = tenant.counts.lock();
                if counts.running < limits.max_concurrent {
                    counts.running += 1;
                    drop(counts);
                    drop(waiting);
                    return Ok(TenantSlot {
                        tenant: Arc::clone(&tenant),
                    });
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(ApiError::tenant_limit(format!(
                    "tenant \"{tenant_id}\" ran {} executions (tenantLimits.maxConcurrent) for the whole \
                     queue timeout; retry later",
                    limits.max_concurrent
                )));
            }
        }
    }
}
