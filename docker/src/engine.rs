//! The engine: connects to Docker, runs plans in pooled sandboxes, streams events. Its jobs live in
//! submodules: `resolve` (which image a run gets), `drive` (one run, start to result) and
//! `cleanup` (listing and removing isol8's objects).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use isol8_api::{ExecutionResult, NetworkMode, Runtime, StreamPhase};
use parking_lot::Mutex;

use crate::agent::Sandbox;
use crate::error::{Error, Result};
use crate::image_policy::ImagePolicy;
use crate::images::{ImageBuilder, ImageConfig};
use crate::limits::Limits;
use crate::network::{FilteredNetwork, HostAddresses};
use crate::plan::RunPlan;
use crate::pool::{Pool, PoolConfig, PoolStats};
use crate::run::{run_channels, RunEvents};
use crate::spec::ContainerSpec;

mod cleanup;
mod drive;
mod resolve;

pub(crate) use cleanup::{dies_with_instance, reclaim_orphans};
pub use cleanup::{CleanupScope, Managed, ManagedContainer, ManagedImage};
pub(crate) use drive::Run;

/// Extra time past a run's timeout before the engine stops waiting for the agent and destroys the
/// container itself.
const BACKSTOP_GRACE: Duration = Duration::from_secs(5);

/// The oldest Docker Engine API this engine speaks (Docker 20.10).
const MIN_API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Everything the engine is configured with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Docker address (`unix:///…`, `tcp://…`); `None` uses `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
    /// Limits used where a request says nothing.
    pub default_limits: Limits,
    pub pool: PoolConfig,
    /// Runtimes whose default sandboxes are kept warm.
    pub warm_runtimes: Vec<Runtime>,
    /// OCI runtime for sandboxes (e.g. `runsc` for gVisor); `None` is Docker's default.
    pub oci_runtime: Option<String>,
    pub images: ImageConfig,
    /// Images a request may name (`options.image`) besides isol8's own; runs in them keep every
    /// hardening setting, without pre-started interpreters.
    pub allowed_images: ImagePolicy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            docker_host: None,
            default_limits: Limits::default(),
            pool: PoolConfig::default(),
            warm_runtimes: vec![Runtime::Python, Runtime::Bash],
            oci_runtime: None,
            images: ImageConfig::default(),
            allowed_images: ImagePolicy::default(),
        }
    }
}

/// One thing that happened during a run, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Stdout {
        phase: StreamPhase,
        text: String,
    },
    Stderr {
        phase: StreamPhase,
        text: String,
    },
    Exit {
        phase: StreamPhase,
        code: i64,
    },
    Error {
        phase: StreamPhase,
        message: String,
    },
    /// A request the program made through the filtered proxy (with `logNetwork`).
    Network(isol8_api::NetworkLogEntry),
    /// A code-interpreter result (last expression, `display()`, a figure), in order with the output.
    Display(isol8_api::MimeBundle),
    /// Always last. `stdout`/`stderr` are empty here: they were sent as events.
    Finished(ExecutionResult),
}

/// The sandbox engine. Cheap to clone; all clones share one pool.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    address: Arc<str>,
    config: Arc<EngineConfig>,
    pool: Arc<Pool>,
    images: Arc<ImageBuilder>,
    /// Runtime → resolved image tag. Guards a small map; never held across `.await`.
    resolved: Arc<Mutex<HashMap<Runtime, String>>>,
    /// The Docker host's addresses, which filtered runs may never reach.
    host_addresses: Arc<HostAddresses>,
}

impl Engine {
    /// Connects to Docker (negotiating the API version), removes sandboxes left by dead instances, and
    /// starts keeping warm containers for the configured runtimes whose images are built.
    /// A Docker engine that does not answer yet is not an error here (see `ping`): calls fail with
    /// `DockerUnavailable` until it does.
    pub async fn connect(config: EngineConfig) -> Result<Engine> {
        let (docker, address) = connect_docker(config.docker_host.as_deref()).await?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let pool = Arc::new(Pool::new(
            docker.clone(),
            config.pool.clone(),
            instance,
            config.oci_runtime.clone(),
        ));
        match reclaim_orphans(&docker).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed sandboxes left by a dead instance"),
            Err(err) => tracing::warn!(error = %err, "could not look for orphaned sandboxes"),
        }
        let engine = Engine {
            images: Arc::new(ImageBuilder::new(docker.clone(), config.images.clone())),
            docker,
            address: address.into(),
            config: Arc::new(config),
            pool: Arc::clone(&pool),
            resolved: Arc::new(Mutex::new(HashMap::new())),
            host_addresses: Arc::default(),
        };
        engine.refresh_warm_set().await;
        pool.start_replenisher();
        Ok(engine)
    }

    /// The Docker address this engine talks to.
    pub fn docker_address(&self) -> &str {
        &self.address
    }

    /// The value of the `isol8.instance` label on every container this engine creates.
    pub fn instance_id(&self) -> &str {
        self.pool.instance()
    }

    pub fn default_limits(&self) -> &Limits {
        &self.config.default_limits
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Answers when Docker answers.
    pub async fn ping(&self) -> Result<()> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| Error::DockerUnavailable {
                address: self.address.to_string(),
                reason: e.to_string(),
            })
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Runs `plan` and waits for the whole result.
    pub async fn execute(&self, plan: RunPlan) -> Result<ExecutionResult> {
        Self::collect(self.execute_stream(plan).await?).await
    }

    /// Waits for a run's events to end and assembles its result (the code phase's output). What
    /// the stream sends as `error` events (timeout, a sandbox that died, refused output paths)
    /// ends stderr as `--- message ---` lines, so a caller without the stream still sees why.
    pub async fn collect(events: RunEvents) -> Result<ExecutionResult> {
        Self::collect_observed(events, |_| {}).await
    }

    /// `collect`, showing each event to `observe` first (to relay progress as it happens).
    pub async fn collect_observed(
        mut events: RunEvents,
        mut observe: impl FnMut(&RunEvent) + Send,
    ) -> Result<ExecutionResult> {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let mut results = Vec::new();
        while let Some(event) = events.recv().await {
            observe(&event);
            match event {
                RunEvent::Stdout {
                    phase: StreamPhase::Code,
                    text,
                } => stdout.push_str(&text),
                RunEvent::Stderr { text, .. } => stderr.push_str(&text),
                RunEvent::Error { message, .. } => {
                    if !stderr.is_empty() && !stderr.ends_with('\n') {
                        stderr.push('\n');
                    }
                    stderr.push_str(&format!("--- {message} ---\n"));
                }
                RunEvent::Display(bundle) => results.push(bundle),
                RunEvent::Finished(mut result) => {
                    result.stdout = stdout;
                    result.stderr = stderr;
                    result.results = (!results.is_empty()).then_some(results);
                    return Ok(result);
                }
                _ => {}
            }
        }
        Err(Error::Sandbox {
            container: String::new(),
            message: "the run ended without a result".into(),
        })
    }

    /// Starts `plan` in a sandbox and returns its events as they happen. Errors before the program
    /// starts (bad image, Docker down) are returned here; later failures arrive as events.
    pub async fn execute_stream(&self, mut plan: RunPlan) -> Result<RunEvents> {
        plan.check_runnable()?;
        let (spec, install) = self.container_plan(&plan).await?;
        if let Some(install) = install {
            // The install is the run's first (setup-phase) step: its output streams as setup
            // events, and a failure stops the run with the installer's words. Its subshell keeps
            // `set -e` and `cd` away from the caller's own setup script. The registries are
            // reachable only for installs.
            let script = format!("( {install} ) || exit $?");
            plan.setup_script = Some(match plan.setup_script.take() {
                Some(own) => format!("{script}\n{own}"),
                None => script,
            });
            plan.allow_hosts.append(&mut plan.registry_hosts);
        }
        // Everything from here runs in a pool task, so a caller that goes away mid-setup (a
        // client hanging up while the filtered network and proxy are made) leaves nothing behind:
        // the task finishes the setup, sees nobody waits for it, and tears it down.
        let (ready, started) = tokio::sync::oneshot::channel::<Result<RunEvents>>();
        let engine = self.clone();
        self.pool.spawn(async move {
            let (sandbox, network) = match engine.prepare(&mut plan, spec).await {
                Ok(prepared) => prepared,
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            };
            let (side, events) = run_channels();
            if ready.send(Ok(events)).is_err() {
                // The caller is gone: the run never starts. A pooled sandbox goes back as any
                // released one does (it is counted busy until then); a filtered run's is its own.
                match network {
                    Some(network) => {
                        engine.pool.destroy(sandbox).await;
                        network.teardown(&engine.docker).await;
                    }
                    None => engine.pool.release(sandbox, plan.owner.clone(), true),
                }
                return;
            }
            let owner = plan.owner.clone();
            let persist = plan.persist;
            let pool = Arc::clone(&engine.pool);
            let mut run = Run::new(
                Box::new(sandbox),
                plan,
                side,
                engine.docker.clone(),
                false,
                network,
            );
            let reusable = run.drive().await;
            if run.prestarted {
                pool.count_prestarted();
            }
            if let Some(network) = run.network.take() {
                pool.destroy(*run.sandbox).await;
                network.teardown(&run.docker).await;
            } else if persist {
                tracing::info!(container = %run.sandbox.short_id(), "keeping container (persist)");
                pool.forget(*run.sandbox);
            } else {
                pool.release(*run.sandbox, owner, reusable);
            }
        });
        started.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// The sandbox for `plan` (and, in filtered mode, its own network and proxy, whose variables
    /// join the plan's environment). On failure nothing made here is left.
    async fn prepare(
        &self,
        plan: &mut RunPlan,
        mut spec: ContainerSpec,
    ) -> Result<(Sandbox, Option<FilteredNetwork>)> {
        let unavailable = |e: Error| {
            if e.is_docker_unavailable() {
                Error::DockerUnavailable {
                    address: self.address.to_string(),
                    reason: e.to_string(),
                }
            } else {
                e
            }
        };
        // Filtered runs get their own network and proxy, and a container made for them alone.
        let network = match plan.network {
            NetworkMode::Filtered => {
                // The proxy runs from isol8's own runtime image, never one the request names.
                let proxy_image = self.runtime_image(plan.runtime).await?;
                self.pool.agent_volume(&proxy_image).await?;
                let service_uid = self.pool.service_uid().await;
                let host = self
                    .host_addresses
                    .get(&self.docker, &proxy_image, self.instance_id(), service_uid)
                    .await?;
                let network = FilteredNetwork::create(
                    &self.docker,
                    self.instance_id(),
                    &proxy_image,
                    &plan.allow_hosts,
                    &plan.deny_hosts,
                    &host,
                    service_uid,
                )
                .await?;
                spec.filtered_network = Some(network.name.clone());
                plan.env.extend(network.proxy_env());
                Some(network)
            }
            _ => None,
        };
        let sandbox = match &network {
            Some(_) => self.pool.create(&spec).await,
            None => self.pool.acquire(&spec, &plan.owner).await,
        };
        match sandbox {
            Ok(sandbox) => Ok((sandbox, network)),
            Err(err) => {
                if let Some(network) = network {
                    network.teardown(&self.docker).await;
                }
                Err(unavailable(err))
            }
        }
    }

    /// Removes the warm containers kept for `owner` (one tenant's cleanup; sessions are the
    /// server's). Returns how many.
    pub async fn cleanup_owner(&self, owner: &str) -> usize {
        self.pool.drop_owner(owner).await
    }

    /// Stops taking runs and removes every container this engine created.
    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
    }
}

async fn connect_docker(host: Option<&str>) -> Result<(Docker, String)> {
    let address = host
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let unavailable = |reason: String| Error::DockerUnavailable {
        address: address.clone(),
        reason,
    };
    let docker = if let Some(path) = address.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
    } else if address.starts_with("tcp://") || address.starts_with("http://") {
        Docker::connect_with_http(&address, 120, bollard::API_DEFAULT_VERSION)
    } else {
        return Err(unavailable(
            "unsupported address; use unix:///path or tcp://host:port".into(),
        ));
    }
    .map_err(|e| unavailable(e.to_string()))?;
    // Negotiate when Docker answers; when it does not (yet), keep a client at API 1.41 (Engine 20.10,
    // understood by every newer engine) so the server can start, answer 503, and recover later.
    let docker = match docker.clone().negotiate_version().await {
        Ok(negotiated) => negotiated,
        Err(e) => {
            tracing::warn!(%address, error = %e, "Docker is not answering; will retry on use");
            match address.strip_prefix("unix://") {
                Some(path) => Docker::connect_with_unix(path, 120, &MIN_API_VERSION),
                None => Docker::connect_with_http(&address, 120, &MIN_API_VERSION),
            }
            .map_err(|e| unavailable(e.to_string()))?
        }
    };
    Ok((docker, address))
}
