//! The warm pool: started sandboxes ready to run, and their reuse after a verified reset (same
//! owner only). What a crashed instance left behind is the janitor's (`engine::cleanup`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::agent::{remove, Prestart, Sandbox};
use crate::agent_volume::AgentVolume;
use crate::error::{Error, Result};
use crate::host::DockerHost;
use crate::plan::prestart_template;
use crate::spec::{ContainerKind, ContainerSpec, LABEL_KIND};
use crate::uids::{service_uid, uid_range, SandboxUids};

const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh containers the replenisher starts at once.
const PARALLEL_STARTS: usize = 4;
/// How often a running pool removes orphans (see `reclaim_orphans`): exited sandboxes, proxies and
/// networks no run uses any more.
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(300);
/// How long a caller waits for its own container's reset before taking a fresh one.
const RESET_WAIT: Duration = Duration::from_millis(100);

/// How the pool keeps and reuses containers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Fresh (never used) containers kept started per warm spec.
    pub size: usize,
    /// Reuse a container for the same owner after a verified reset. Off: every run gets a fresh
    /// container that is destroyed afterwards (strict mode).
    pub reuse: bool,
    /// Reset containers kept per owner and spec.
    pub max_idle_per_owner: usize,
    /// A reset container unused this long is removed.
    pub idle_ttl: Duration,
    /// Keep the next run's interpreter started in each pooled python, node and bash sandbox (see
    /// `Waiting` in the agent); runs that need another start, and every runtime else, start theirs
    /// the normal way.
    pub prestart: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 2,
            reuse: true,
            max_idle_per_owner: 8,
            idle_ttl: Duration::from_secs(120),
            prestart: true,
        }
    }
}

/// Idle containers are bucketed by spec and owner; `None` holds fresh containers anyone may take.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    spec: ContainerSpec,
    owner: Option<String>,
}

#[derive(Debug)]
struct Idle {
    sandbox: Sandbox,
    since: Instant,
}

/// Pool counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub ready: usize,
    pub busy: usize,
    /// Runs so far whose program ran in a pre-started interpreter.
    pub prestarted_runs: u64,
}

#[derive(Debug)]
pub(crate) struct Pool {
    docker: Docker,
    config: PoolConfig,
    instance: String,
    oci_runtime: Option<String>,
    /// Idle sandboxes. Guards only the map: taken and released without any `.await` while held.
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    /// Ids of every container this pool created and has not removed, so shutdown can remove
    /// in-use ones too. Same rule: never held across `.await`.
    live: Mutex<HashSet<String>>,
    /// Specs the replenisher keeps `config.size` fresh containers of.
    warm: Mutex<Vec<ContainerSpec>>,
    /// Wakes the replenisher: signalled when a fresh container is taken or the warm set changes.
    wake: Notify,
    /// Containers being reset, per bucket: a caller whose own container is a few milliseconds
    /// from ready waits for it rather than taking a fresh one (which would make the replenisher
    /// start a new container, stealing CPU from the run). Same locking rule as `idle`.
    resetting: Mutex<HashMap<PoolKey, usize>>,
    /// Signalled whenever a reset ends.
    returned: Notify,
    busy: AtomicUsize,
    /// Runs that used a pre-started interpreter (counted by the engine when a run ends).
    prestarted: AtomicU64,
    closed: AtomicBool,
    /// The uids of its containers.
    uids: SandboxUids,
    /// Read by the first container's creation (Docker may not answer when the pool is made).
    host: tokio::sync::OnceCell<DockerHost>,
    /// Every background task of the pool (replenisher, resets, removals); shutdown waits for them
    /// so nothing is created after it returns.
    tasks: TaskTracker,
    /// The volume holding the agent, made sure of before the first container mounts it.
    agent_volume: AgentVolume,
}

impl Pool {
    pub(crate) fn new(
        docker: Docker,
        config: PoolConfig,
        instance: String,
        oci_runtime: Option<String>,
    ) -> Self {
        Pool {
            docker,
            config,
            instance,
            oci_runtime,
            idle: Mutex::new(HashMap::new()),
            live: Mutex::new(HashSet::new()),
            warm: Mutex::new(Vec::new()),
            wake: Notify::new(),
            resetting: Mutex::new(HashMap::new()),
            returned: Notify::new(),
            busy: AtomicUsize::new(0),
            prestarted: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            uids: SandboxUids::default(),
            host: tokio::sync::OnceCell::new(),
            tasks: TaskTracker::new(),
            agent_volume: AgentVolume::default(),
        }
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let ready = self
            .idle
            .lock()
            .values()
            .flatten()
            .filter(|i| !i.sandbox.is_gone())
            .count();
        PoolStats {
            ready,
            busy: self.busy.load(Ordering::Relaxed),
            prestarted_runs: self.prestarted.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_prestarted(&self) {
        self.prestarted.fetch_add(1, Ordering::Relaxed);
    }

    /// What a pooled sandbox of `spec` pre-starts for its next run: nothing when the config says
    /// so, for containers that serve one run (kept, filtered) or a session, or in an image not
    /// isol8's (no loader there).
    fn prestart_template(&self, spec: &ContainerSpec) -> Option<Prestart> {
        let pooled = spec.kind == ContainerKind::Sandbox
            && spec.filtered_network.is_none()
            && !spec.foreign_image;
        (self.config.prestart && pooled)
            .then(|| prestart_template(&spec.runtime_label))
            .flatten()
    }

    pub(crate) fn set_warm(&self, specs: Vec<ContainerSpec>) {
        *self.warm.lock() = specs;
        self.wake.notify_one();
    }

    /// A sandbox for `owner`: one of theirs reset after an earlier run, else a fresh one, else a new one.
    pub(crate) async fn acquire(&self, spec: &ContainerSpec, owner: &str) -> Result<Sandbox> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let own = PoolKey {
            spec: spec.clone(),
            owner: Some(owner.to_string()),
        };
        let wait_until = Instant::now() + RESET_WAIT;
        // Idle containers that died while waiting (killed from outside, Docker restarted).
        let mut dead = Vec::new();
        let taken = loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let (found, resetting) = {
                let mut idle = self.idle.lock();
                let mut take = |key: &PoolKey| loop {
                    let found = idle.get_mut(key).and_then(Vec::pop)?;
                    if !found.sandbox.is_gone() {
                        break Some(found);
                    }
                    dead.push(found.sandbox);
                };
                match take(&own) {
                    Some(found) => (Some((found, false)), false),
                    None => {
                        let resetting = self.resetting.lock().get(&own).copied().unwrap_or(0) > 0;
                        let fresh = PoolKey {
                            spec: spec.clone(),
                            owner: None,
                        };
                        match resetting && Instant::now() < wait_until {
                            true => (None, true),
                            false => (take(&fresh).map(|found| (found, true)), false),
                        }
                    }
                }
            };
            if !resetting {
                break found;
            }
            let _ = tokio::time::timeout_at(wait_until.into(), returned).await;
        };
        if !dead.is_empty() {
            self.wake.notify_one();
        }
        for sandbox in dead {
            self.destroy(sandbox).await;
        }
        let sandbox = match taken {
            Some((found, fresh)) => {
                if fresh {
                    self.wake.notify_one();
                }
                found.sandbox
            }
            None => self.create(spec).await?,
        };
        self.busy.fetch_add(1, Ordering::Relaxed);
        Ok(sandbox)
    }

    pub(crate) async fn create(&self, spec: &ContainerSpec) -> Result<Sandbox> {
        let host = self.host().await;
        let mut looked_inside = false;
        let sandbox = loop {
            self.agent_volume(&spec.image).await?;
            let trusted = self.agent_volume.trusted();
            let uid = self.uids.lease(uid_range(&host));
            let started = Sandbox::start(
                &self.docker,
                spec,
                &self.instance,
                self.oci_runtime.as_deref(),
                &host,
                uid,
            )
            .await;
            match started {
                Ok(sandbox) => break sandbox,
                Err(err) => {
                    self.uids.release(uid);
                    // The volume may be incomplete (another server is filling it this moment)
                    // or gone (a cleanup removed it while this server ran): look inside it
                    // before the next container, and once, at once, for this one.
                    self.agent_volume.invalidate();
                    let retry = trusted
                        && !looked_inside
                        && !matches!(err, Error::ImageMissing { .. } | Error::InvalidRequest(_));
                    if !retry {
                        return Err(err);
                    }
                    tracing::info!(error = %err, "a sandbox did not start; checking the agent volume");
                    looked_inside = true;
                }
            }
        };
        self.live.lock().insert(sandbox.id.clone());
        if self.closed.load(Ordering::SeqCst) {
            self.destroy(sandbox).await;
            return Err(Error::ShuttingDown);
        }
        Ok(sandbox)
    }

    /// Gives a sandbox back after a run. It serves again only when reuse is on, the run left it
    /// `reusable`, and the reset verifies clean; it then waits in its owner's bucket. Otherwise it is
    /// destroyed. Runs in the background so the caller's answer is not delayed.
    pub(crate) fn release(self: &Arc<Self>, mut sandbox: Sandbox, owner: String, reusable: bool) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
        let pool = Arc::clone(self);
        self.tasks.spawn(async move {
            let keep = reusable && pool.config.reuse && !pool.closed.load(Ordering::SeqCst);
            if !keep {
                pool.destroy(sandbox).await;
                return;
            }
            let key = PoolKey {
                spec: sandbox.spec.clone(),
                owner: Some(owner),
            };
            *pool.resetting.lock().entry(key.clone()).or_default() += 1;
            let prestart = pool.prestart_template(&sandbox.spec);
            let reset = sandbox.reset(RESET_TIMEOUT, prestart.as_ref()).await;
            let done_resetting = || {
                let mut resetting = pool.resetting.lock();
                if let Some(n) = resetting.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        resetting.remove(&key);
                    }
                }
            };
            if let Err(err) = reset {
                done_resetting();
                pool.returned.notify_waiters();
                // Shutdown removes every container, those resetting too: no warning then.
                if pool.closed.load(Ordering::SeqCst) {
                    tracing::debug!(container = %sandbox.short_id(), error = %err, "reset ended by shutdown");
                } else {
                    tracing::warn!(container = %sandbox.short_id(), error = %err, "reset failed; destroying");
                }
                pool.destroy(sandbox).await;
                return;
            }
            let overflow = {
                let mut idle = pool.idle.lock();
                let bucket = idle.entry(key.clone()).or_default();
                let overflow = if bucket.len() < pool.config.max_idle_per_owner {
                    bucket.push(Idle {
                        sandbox,
                        since: Instant::now(),
                    });
                    None
                } else {
                    Some(sandbox)
                };
                done_resetting();
                overflow
            };
            pool.returned.notify_waiters();
            if let Some(sandbox) = overflow {
                pool.destroy(sandbox).await;
            }
        });
    }

    /// Forgets a sandbox that its user keeps (persist): it is never reused nor removed by shutdown.
    pub(crate) fn forget(&self, sandbox: Sandbox) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
        self.live.lock().remove(&sandbox.id);
        drop(sandbox);
    }

    /// Runs `task` as one of the pool's background tasks, so shutdown waits for it.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Stops tracking a container this pool created, so shutdown leaves it (CLI sessions).
    pub(crate) fn untrack(&self, id: &str) {
        self.live.lock().remove(id);
    }

    pub(crate) async fn destroy(&self, sandbox: Sandbox) {
        let (id, uid) = (sandbox.id.clone(), sandbox.uid);
        sandbox.destroy(&self.docker).await;
        self.live.lock().remove(&id);
        self.uids.release(uid);
    }

    /// Marks the uid of a container an earlier process made (an adopted session) as in use.
    pub(crate) fn claim_uid(&self, uid: u32) {
        self.uids.claim(uid);
    }

    /// The agent volume's name, once it holds this build's agent (filled on first use, with
    /// `image` for the helper container that fills it).
    pub(crate) async fn agent_volume(&self, image: &str) -> Result<&'static str> {
        self.agent_volume
            .ensure(&self.docker, image, &self.instance)
            .await
    }

    /// Checks the agent volume again before the next container (a cleanup removed it).
    pub(crate) fn invalidate_agent_volume(&self) {
        self.agent_volume.invalidate();
    }

    /// The uid isol8's helper containers (proxies, probes) run as.
    pub(crate) async fn service_uid(&self) -> u32 {
        service_uid(&self.host().await)
    }

    async fn host(&self) -> DockerHost {
        *self
            .host
            .get_or_init(|| DockerHost::read(&self.docker))
            .await
    }

    /// Starts the background task that keeps `size` fresh containers per warm spec, removes
    /// expired idle ones and, every few minutes, what crashed servers or cancelled filtered-run
    /// setups left behind. It ends when the pool closes.
    pub(crate) fn start_replenisher(self: &Arc<Self>) {
        let pool = Arc::clone(self);
        self.tasks.spawn(pool.replenish());
    }

    async fn replenish(self: Arc<Self>) {
        // What the engine's host is like (one `docker info`, slow on some engines), read before
        // the first container needs it: a cold `isol8 run` overlaps it with its other start-up.
        self.host().await;
        let mut failures = 0u32;
        let mut last_sweep = Instant::now();
        // After a failed start, no new one before this (a backoff that doubles per failure).
        let mut not_before = Instant::now();
        // Every missing fresh container, up to PARALLEL_STARTS starting at once, each replaced in
        // flight as soon as it is up: strict mode (a fresh container per run) is bound by how
        // many starts overlap, and waiting for a whole batch left the engine idle for its slowest.
        let mut starting = FuturesUnordered::new();
        let mut in_flight: HashMap<ContainerSpec, usize> = HashMap::new();
        while !self.closed.load(Ordering::SeqCst) {
            for sandbox in self.take_stale() {
                self.destroy(sandbox).await;
            }
            // A server runs for weeks: orphans are not left until its next start.
            if last_sweep.elapsed() > ORPHAN_SWEEP_EVERY {
                last_sweep = Instant::now();
                if let Err(error) = crate::engine::reclaim_orphans(&self.docker).await {
                    tracing::warn!(%error, "could not sweep orphaned containers");
                }
            }
            if Instant::now() >= not_before {
                for spec in self.missing(&in_flight, PARALLEL_STARTS - starting.len()) {
                    *in_flight.entry(spec.clone()).or_default() += 1;
                    let pool = &*self;
                    starting.push(async move {
                        let started = pool.create(&spec).await;
                        (spec, started)
                    });
                }
            }
            let tick = match Instant::now() < not_before {
                true => not_before,
                false => Instant::now() + Duration::from_secs(5),
            };
            tokio::select! {
                Some((spec, started)) = starting.next(), if !starting.is_empty() => {
                    if let Some(n) = in_flight.get_mut(&spec) {
                        *n -= 1;
                        if *n == 0 {
                            in_flight.remove(&spec);
                        }
                    }
                    match started {
                        Ok(sandbox) => {
                            failures = 0;
                            self.keep_fresh(&spec, sandbox).await;
                        }
                        Err(err) => {
                            failures += 1;
                            let backoff = Duration::from_millis(200 * 2u64.pow(failures.min(6)));
                            tracing::warn!(error = %err, ?backoff, "could not start a warm sandbox");
                            not_before = Instant::now() + backoff;
                        }
                    }
                }
                _ = tokio::time::sleep_until(tick.into()) => {}
                _ = self.wake.notified() => {}
            }
        }
        // Starts still under way finish (a create dropped halfway could leave its container
        // untracked); `create` destroys what it made once the pool is closed.
        while let Some((_, started)) = starting.next().await {
            if let Ok(sandbox) = started {
                self.destroy(sandbox).await;
            }
        }
    }

    /// Up to `room` fresh containers to start: for each warm spec, what its bucket lacks of the
    /// pool's size beyond those `in_flight`.
    fn missing(
        &self,
        in_flight: &HashMap<ContainerSpec, usize>,
        room: usize,
    ) -> Vec<ContainerSpec> {
        let warm = self.warm.lock().clone();
        let idle = self.idle.lock();
        warm.into_iter()
            .flat_map(|spec| {
                let key = PoolKey {
                    spec: spec.clone(),
                    owner: None,
                };
                let have =
                    idle.get(&key).map_or(0, Vec::len) + in_flight.get(&spec).copied().unwrap_or(0);
                std::iter::repeat_n(spec, self.config.size.saturating_sub(have))
            })
            .take(room)
            .collect()
    }

    /// A fresh container, up: its next run's interpreter pre-started, it waits for any owner.
    async fn keep_fresh(&self, spec: &ContainerSpec, mut sandbox: Sandbox) {
        if let Some(prestart) = self.prestart_template(spec) {
            if let Err(error) = sandbox.prestart(&prestart).await {
                tracing::warn!(container = %sandbox.short_id(), %error, "could not pre-start an interpreter");
            }
        }
        let key = PoolKey {
            spec: spec.clone(),
            owner: None,
        };
        self.idle.lock().entry(key).or_default().push(Idle {
            sandbox,
            since: Instant::now(),
        });
    }

    /// Removes the idle containers kept for `owner` (its reused, reset sandboxes); returns how many.
    pub(crate) async fn drop_owner(&self, owner: &str) -> usize {
        let taken: Vec<Sandbox> = {
            let mut idle = self.idle.lock();
            let keys: Vec<PoolKey> = idle
                .keys()
                .filter(|k| k.owner.as_deref() == Some(owner))
                .cloned()
                .collect();
            keys.iter()
                .filter_map(|k| idle.remove(k))
                .flatten()
                .map(|i| i.sandbox)
                .collect()
        };
        let count = taken.len();
        for sandbox in taken {
            self.destroy(sandbox).await;
        }
        count
    }

    /// Idle containers that died (killed from outside, the engine restarted) or, kept for an owner,
    /// idled past `idle_ttl`: taken out for removal, so the replenisher counts only live ones.
    fn take_stale(&self) -> Vec<Sandbox> {
        let mut idle = self.idle.lock();
        let mut out = Vec::new();
        for (key, bucket) in idle.iter_mut() {
            let kept_for_owner = key.owner.is_some();
            let (old, keep): (Vec<Idle>, Vec<Idle>) = bucket.drain(..).partition(|i| {
                i.sandbox.is_gone() || (kept_for_owner && i.since.elapsed() > self.config.idle_ttl)
            });
            *bucket = keep;
            out.extend(old.into_iter().map(|i| i.sandbox));
        }
        idle.retain(|_, bucket| !bucket.is_empty());
        out
    }

    /// Stops taking work and removes every container this pool created, idle or in use.
    pub(crate) async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        let idle: Vec<Sandbox> = self
            .idle
            .lock()
            .drain()
            .flat_map(|(_, bucket)| bucket.into_iter().map(|i| i.sandbox))
            .collect();
        for sandbox in idle {
            self.destroy(sandbox).await;
        }
        // Containers still in use go first: their runs then end at once, and so do the tasks
        // driving them (and tearing down filtered networks), which are waited for next.
        let live: Vec<String> = self.live.lock().drain().collect();
        for id in live {
            remove(&self.docker, &id).await;
        }
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(60), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("pool tasks did not finish within 60 s of shutdown");
        }
        // Anything still labelled with this instance (a create that raced shutdown) goes too,
        // but sessions: they outlive the process, for the next one to adopt.
        if let Ok(left) =
            crate::engine::dies_with_instance(&self.docker, Some(&self.instance)).await
        {
            let session = |c: &bollard::models::ContainerSummary| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_KIND))
                    .map(String::as_str)
                    == Some(ContainerKind::Session.as_str())
            };
            for id in left
                .into_iter()
                .filter(|c| !session(c))
                .filter_map(|c| c.id)
            {
                remove(&self.docker, &id).await;
            }
        }
    }
}
