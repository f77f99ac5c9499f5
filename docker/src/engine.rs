//! The engine: connects to Docker, resolves images, runs plans in pooled sandboxes, streams events.

use std::collections::{BTreeMap, HashMap};
use std::ops::DerefMut;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bollard::container::ListContainersOptions;
use bollard::image::{ListImagesOptions, RemoveImageOptions};
use bollard::Docker;
use isol8_api::{
    CleanupCounts, CleanupResponse, ExecutionResult, ExecutionStatus, NetworkMode, Runtime,
    StreamPhase,
};
use tokio::sync::mpsc;
use tokio::time::Instant as Deadline;

use crate::agent::{AgentEvent, AgentRequest, AgentUsage, Sandbox};
use crate::custom::{default_custom_tag, PackageSet};
use crate::error::{is_not_found, Error, Result};
use crate::images::{BuildProgress, ImageBuilder, ImageConfig};
use crate::limits::Limits;
use crate::network::{FilteredNetwork, HostAddresses};
use crate::output::OutputFilter;
use crate::plan::{code_path, has_display, Program, RunPlan, SANDBOX_DIR};
use crate::pool::{Pool, PoolConfig, PoolStats};
use crate::run::{run_channels, RunControl, RunEvents, RunSide};
use crate::spec::{ContainerKind, ContainerSpec, LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER};

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

/// Whose containers a cleanup removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupScope {
    /// Every isol8 container on the Docker engine, any process's (`isol8 cleanup`).
    Engine,
    /// Only what this engine created or adopted (a server's `POST /cleanup`): another server's
    /// runs and a CLI's sessions on the same Docker engine are not its to remove.
    Instance,
}

/// isol8's objects on a Docker engine, as listed by [`Engine::list_managed`].
#[derive(Debug, Clone, Default)]
pub struct Managed {
    pub containers: Vec<ManagedContainer>,
    pub images: Vec<ManagedImage>,
}

#[derive(Debug, Clone)]
pub struct ManagedContainer {
    pub id: String,
    pub image: String,
    /// Docker's state: running, exited, ...
    pub state: String,
}

#[derive(Debug, Clone)]
pub struct ManagedImage {
    pub id: String,
    pub tags: Vec<String>,
}

/// Our labelled images plus the unlabelled build intermediates stacked on them (they would block the
/// removal of their parents), ordered children before parents.
fn managed_images(all: Vec<bollard::models::ImageSummary>) -> Vec<ManagedImage> {
    let parent: HashMap<&str, &str> = all
        .iter()
        .map(|i| (i.id.as_str(), i.parent_id.as_str()))
        .collect();
    let mut ours: std::collections::HashSet<&str> = all
        .iter()
        .filter(|i| i.labels.get(LABEL_MANAGED).map(String::as_str) == Some("true"))
        .map(|i| i.id.as_str())
        .collect();
    loop {
        let before = ours.len();
        for image in &all {
            if ours.contains(image.parent_id.as_str()) {
                ours.insert(image.id.as_str());
            }
        }
        if ours.len() == before {
            break;
        }
    }
    let depth = |start: &str| {
        let (mut id, mut depth) = (start, 0);
        while let Some(up) = parent.get(id).copied().filter(|p| ours.contains(p)) {
            depth += 1;
            id = up;
        }
        depth
    };
    let mut images: Vec<(usize, ManagedImage)> = all
        .iter()
        .filter(|i| ours.contains(i.id.as_str()))
        .map(|i| {
            let image = ManagedImage {
                id: i.id.clone(),
                tags: i.repo_tags.clone(),
            };
            (depth(&i.id), image)
        })
        .collect();
    images.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
    images.into_iter().map(|(_, image)| image).collect()
}

/// Tallies one removal into the cleanup counts.
trait Tally {
    fn count(&mut self, id: &str, removal: std::result::Result<(), bollard::errors::Error>);
}

impl Tally for CleanupCounts {
    fn count(&mut self, id: &str, removal: std::result::Result<(), bollard::errors::Error>) {
        match removal {
            Ok(()) => self.removed += 1,
            // Gone already, or being removed by someone else (an auto-remove container that
            // stopped, another cleanup): what was asked is done.
            Err(err) if matches!(crate::error::status_of(&err), Some(404 | 409)) => {
                self.removed += 1
            }
            Err(err) => {
                self.failed += 1;
                self.errors.push(format!("{id}: {err}"));
            }
        }
    }
}

/// The sandbox engine. Cheap to clone; all clones share one pool.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    address: String,
    config: Arc<EngineConfig>,
    pool: Arc<Pool>,
    images: ImageBuilder,
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
        match pool.reclaim_orphans().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed sandboxes left by a dead instance"),
            Err(err) => tracing::warn!(error = %err, "could not look for orphaned sandboxes"),
        }
        let engine = Engine {
            images: ImageBuilder::new(docker.clone(), config.images.clone()),
            docker,
            address,
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
                address: self.address.clone(),
                reason: e.to_string(),
            })
    }

    /// The image tag of each runtime built from the current recipes (missing ones absent).
    pub async fn built_runtimes(&self) -> Result<BTreeMap<Runtime, String>> {
        self.images.find_runtimes(&Runtime::ALL).await
    }

    /// The custom images on this Docker engine (`isol8 images`).
    pub async fn custom_images(&self) -> Result<Vec<crate::CustomImage>> {
        self.images.list_custom().await
    }

    /// Builds the runtime images (hash-cached unless `force`), reporting progress.
    pub async fn build_images(
        &self,
        runtimes: &[Runtime],
        force: bool,
        progress: &(dyn Fn(BuildProgress) + Send + Sync),
    ) -> Result<BTreeMap<Runtime, String>> {
        let mut out = BTreeMap::new();
        for runtime in runtimes {
            let tag = self
                .images
                .ensure_runtime(*runtime, force, progress)
                .await?;
            // Resolved again on next use: a default custom image (`setup --python …`) may win.
            lock(&self.resolved).remove(runtime);
            out.insert(*runtime, tag);
        }
        self.refresh_warm_set().await;
        Ok(out)
    }

    /// Builds the custom image of `runtime` holding `packages` (tagged `alias` too when given) and
    /// returns its tag. With `make_default` it becomes the image every run of `runtime` uses when
    /// the request names no image or packages (what `isol8 setup --python numpy` does).
    pub async fn build_custom_image(
        &self,
        runtime: Runtime,
        packages: &PackageSet,
        alias: Option<&str>,
        make_default: bool,
        force: bool,
        progress: &(dyn Fn(BuildProgress) + Send + Sync),
    ) -> Result<String> {
        let default_tag = make_default.then(|| default_custom_tag(runtime));
        let tag = self
            .images
            .ensure_custom(runtime, packages, alias, force, progress)
            .await?;
        if let Some(default_tag) = default_tag {
            self.images.tag(&tag, &default_tag).await?;
            lock(&self.resolved).insert(runtime, default_tag);
            self.refresh_warm_set().await;
        }
        Ok(tag)
    }

    async fn refresh_warm_set(&self) {
        let mut specs = Vec::new();
        for runtime in &self.config.warm_runtimes {
            match self.runtime_image(*runtime).await {
                Ok(image) => specs.push(ContainerSpec::new(
                    image,
                    runtime.as_str(),
                    &self.config.default_limits,
                    Default::default(),
                )),
                Err(err) => tracing::info!(%runtime, error = %err, "not keeping this runtime warm"),
            }
        }
        self.pool.set_warm(specs);
    }

    async fn runtime_image(&self, runtime: Runtime) -> Result<String> {
        if let Some(tag) = lock(&self.resolved).get(&runtime) {
            return Ok(tag.clone());
        }
        let tag = match self.images.find_default_custom(runtime).await? {
            Some(tag) => tag,
            None => {
                self.images
                    .find_runtime(runtime)
                    .await?
                    .ok_or_else(|| Error::ImageMissing {
                        image: format!("isol8-{runtime}"),
                    })?
            }
        };
        lock(&self.resolved).insert(runtime, tag.clone());
        Ok(tag)
    }

    /// The container `plan` needs: its image (the runtime's, a custom image holding its packages, or
    /// the one it names) and its container-level limits.
    pub(crate) async fn container_spec(&self, plan: &RunPlan) -> Result<ContainerSpec> {
        if plan.network == NetworkMode::Filtered {
            return Err(Error::Unsupported(
                "sessions cannot use network \"filtered\" yet: each filtered run gets its own network and proxy".into(),
            ));
        }
        let (spec, install) = self.container_plan(plan).await?;
        if install.is_some() {
            return Err(Error::Unsupported(
                "packages that no image holds are installed at run time only in ephemeral runs with network \"filtered\"; build an image with `isol8 build` for sessions".into(),
            ));
        }
        Ok(spec)
    }

    /// `image` when it is one of isol8's for `runtime` (a runtime image or one `isol8 build` made
    /// from it), as the tag isol8 computes for it (see `ImageBuilder::verified_tag`). Any other
    /// image on the engine (the server's own, the Docker-in-Docker one, one built `FROM` an isol8
    /// image) is not a sandbox: a request may not run code in it. A missing image and a foreign one
    /// get the same answer, so requests cannot map the engine's images.
    async fn check_requested_image(&self, image: &str, runtime: Runtime) -> Result<String> {
        match self.images.verified_tag(image).await {
            Ok(Some((built_for, tag))) if built_for == runtime => Ok(tag),
            Ok(Some((built_for, _))) => Err(Error::InvalidRequest(format!(
                "image {image} is a {built_for} image, not a {runtime} one"
            ))),
            Ok(None) => Err(Error::InvalidRequest(format!(
                "image {image} is not an isol8 image on this server; use one `isol8 setup` or `isol8 build` made"
            ))),
            // Docker refuses a malformed name: the caller's error.
            Err(Error::Docker {
                source:
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 400,
                        message,
                    },
                ..
            }) => Err(Error::InvalidRequest(format!(
                "image \"{image}\": {message}"
            ))),
            Err(err) => Err(err),
        }
    }

    /// The container `plan` needs, and the script installing its packages at the start of the run
    /// when no image holds them and `filtered` networking can reach their registry.
    async fn container_plan(&self, plan: &RunPlan) -> Result<(ContainerSpec, Option<String>)> {
        let mut install = None;
        // Installing needs the registry: reachable through the filtered proxy, or the host network.
        let run_time_install = match plan.network {
            NetworkMode::Filtered | NetworkMode::Host => plan.packages.install_script(plan.runtime),
            NetworkMode::None => None,
        };
        let image = match &plan.image {
            Some(image) => self.check_requested_image(image, plan.runtime).await?,
            None if plan.packages.is_empty() => self.runtime_image(plan.runtime).await?,
            None => match self
                .images
                .find_custom(plan.runtime, &plan.packages)
                .await?
            {
                Some(image) => image,
                None if run_time_install.is_some() => {
                    install = run_time_install;
                    self.runtime_image(plan.runtime).await?
                }
                None => {
                    let names: Vec<&str> = plan.packages.names().collect();
                    let or_install = match plan.packages.install_script(plan.runtime) {
                        Some(_) => {
                            ", or install at run time with network \"filtered\" (or \"host\")"
                        }
                        None => "",
                    };
                    return Err(Error::NotFound(format!(
                        "no {} image holds {}; build one with `isol8 build --base {} --install {}`{or_install}",
                        plan.runtime,
                        names.join(", "),
                        plan.runtime,
                        names.join(","),
                    )));
                }
            },
        };
        let mut spec = ContainerSpec::new(image, plan.runtime.as_str(), &plan.limits, plan.network);
        if plan.persist {
            spec.kind = ContainerKind::Kept;
            // Counted per owner, removed with its owner's cleanup and past its expiry (`kept.rs`).
            spec.labels.insert(LABEL_OWNER.into(), plan.owner.clone());
            if let Some(at) = plan.persist_expires_at {
                spec.labels
                    .insert(crate::kept::LABEL_EXPIRES.into(), at.to_string());
            }
        }
        Ok((spec, install))
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
                // The caller is gone: the run never starts.
                engine.pool.destroy(sandbox).await;
                if let Some(network) = network {
                    network.teardown(&engine.docker).await;
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
                    address: self.address.clone(),
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
                let host = self
                    .host_addresses
                    .get(&self.docker, &proxy_image, self.instance_id())
                    .await?;
                let network = FilteredNetwork::create(
                    &self.docker,
                    self.instance_id(),
                    &proxy_image,
                    &plan.allow_hosts,
                    &plan.deny_hosts,
                    &host,
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

    /// isol8's containers on this Docker engine (from any instance, or this engine's own with
    /// `CleanupScope::Instance`), and its images with `images`.
    pub async fn list_managed(&self, scope: CleanupScope, images: bool) -> Result<Managed> {
        let mut labels = vec![format!("{LABEL_MANAGED}=true")];
        if scope == CleanupScope::Instance {
            labels.push(format!("{LABEL_INSTANCE}={}", self.instance_id()));
        }
        let containers = self
            .containers_labelled(labels)
            .await?
            .into_iter()
            .filter_map(|c| {
                Some(ManagedContainer {
                    id: c.id?,
                    image: c.image.unwrap_or_default(),
                    state: c.state.unwrap_or_default(),
                })
            })
            .collect();
        let mut managed = Managed {
            containers,
            images: Vec::new(),
        };
        if images {
            let all = self
                .docker
                .list_images(Some(ListImagesOptions::<String> {
                    all: true,
                    ..Default::default()
                }))
                .await
                .map_err(Error::docker("list images"))?;
            managed.images = managed_images(all);
        }
        Ok(managed)
    }

    /// Every container (any state) carrying all of `labels` (`key=value`).
    pub(crate) async fn containers_labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let filters = HashMap::from([("label".to_string(), labels)]);
        self.docker
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(Error::docker("list containers"))
    }

    /// Removes isol8's containers in `scope` (and isol8's images with `images`). `sessions` in the
    /// answer is left empty: sessions are the caller's to end first.
    pub async fn cleanup(&self, scope: CleanupScope, images: bool) -> Result<CleanupResponse> {
        let managed = self.list_managed(scope, images).await?;
        let mut containers = CleanupCounts::default();
        for container in &managed.containers {
            let removal = self
                .docker
                .remove_container(
                    &container.id,
                    Some(bollard::container::RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
            containers.count(&container.id, removal);
        }
        let mut response = CleanupResponse {
            ok: containers.failed == 0,
            sessions: CleanupCounts::default(),
            containers,
            images: None,
        };
        if images {
            let mut counts = CleanupCounts::default();
            for image in &managed.images {
                let options = RemoveImageOptions {
                    force: true,
                    noprune: false,
                };
                match self
                    .docker
                    .remove_image(&image.id, Some(options), None)
                    .await
                {
                    // Already gone with a child removed before it (untagged parents are pruned).
                    Err(err) if is_not_found(&err) => {}
                    removal => counts.count(&image.id, removal.map(drop)),
                }
            }
            lock(&self.resolved).clear();
            self.refresh_warm_set().await;
            response.ok &= counts.failed == 0;
            response.images = Some(counts);
        }
        Ok(response)
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

/// Aborts a background task when dropped (the network-log follower ends with its run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One run in progress: holds its sandbox (owned, from the pool; or a session's, locked for the
/// call) until it is done.
pub(crate) struct Run<S> {
    pub(crate) sandbox: S,
    pub(crate) plan: RunPlan,
    tx: mpsc::Sender<RunEvent>,
    /// Live input from the caller, forwarded to the agent while a phase runs.
    control: mpsc::Receiver<RunControl>,
    /// The caller stopped sending live input (its sender is gone).
    control_closed: bool,
    /// Signals the caller's `RunEvents::ended` when the run is dropped.
    _ended: tokio_util::sync::DropGuard,
    pub(crate) docker: Docker,
    /// Code goes to the session's long-lived interpreter instead of a fresh process.
    pub(crate) session: bool,
    /// The session's earlier container was lost; this call runs in a new one.
    pub(crate) session_replaced: bool,
    /// This call made the session (an unknown or expired id): its state is new.
    pub(crate) session_created: bool,
    /// `filtered` mode: the run's network and proxy.
    pub(crate) network: Option<FilteredNetwork>,
    /// Until when the current phase waits for a slow consumer of its output; past it, output the
    /// consumer cannot take is dropped, so the agent (and the run's timeout) never wait on it.
    output_deadline: Deadline,
    /// The consumer fell behind past the deadline: output is being dropped.
    stalled: bool,
    /// What the code phase used.
    usage: Option<AgentUsage>,
    /// The code phase ran in a pre-started interpreter.
    pub(crate) prestarted: bool,
}

/// How one agent program run ended, before it becomes an `ExecutionResult`.
struct PhaseOutcome {
    exit_code: i64,
    status: ExecutionStatus,
    truncated: bool,
    files: BTreeMap<String, String>,
    /// The sandbox can serve again (after a reset).
    reusable: bool,
    error: Option<String>,
    /// A session's interpreter died during this phase.
    restarted: bool,
}

enum Stop {
    /// The consumer of the events went away: the run is cancelled.
    Cancelled,
    Outcome(PhaseOutcome),
}

impl<S: DerefMut<Target = Sandbox> + Send> Run<S> {
    pub(crate) fn new(
        sandbox: S,
        plan: RunPlan,
        side: RunSide,
        docker: Docker,
        session: bool,
        network: Option<FilteredNetwork>,
    ) -> Self {
        Run {
            sandbox,
            plan,
            tx: side.tx,
            control: side.control,
            control_closed: false,
            _ended: side.ended,
            docker,
            session,
            session_replaced: false,
            session_created: false,
            network,
            output_deadline: Deadline::now(),
            stalled: false,
            usage: None,
            prestarted: false,
        }
    }

    /// Runs the setup script (if any) and the program; sends every event; returns whether the
    /// sandbox may be reused.
    pub(crate) async fn drive(&mut self) -> bool {
        let started = Instant::now();
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // With logNetwork, each proxied request is also an event, as it happens.
        let _network_events = match (&self.network, self.plan.log_network) {
            (Some(network), true) => Some(AbortOnDrop(tokio::spawn(network.follow(
                self.docker.clone(),
                self.tx.clone(),
                self.masked_values(),
            )))),
            _ => None,
        };
        let mut outcome = None;
        if self.session_replaced {
            let message = "the session's container was replaced; state from earlier calls is gone";
            self.emit(RunEvent::Error {
                phase: StreamPhase::Code,
                message: message.into(),
            })
            .await;
        }
        if let Some(script) = self.plan.setup_script.clone() {
            match self.phase(StreamPhase::Setup, Some(script)).await {
                Stop::Cancelled => return false,
                Stop::Outcome(setup) => {
                    if setup.status != ExecutionStatus::Completed || setup.exit_code != 0 {
                        let message = match setup.status {
                            ExecutionStatus::Timeout => "SETUP SCRIPT TIMED OUT".to_string(),
                            _ => setup.error.clone().unwrap_or_else(|| {
                                format!("Setup script failed (exit code {})", setup.exit_code)
                            }),
                        };
                        self.emit(RunEvent::Error {
                            phase: StreamPhase::Setup,
                            message,
                        })
                        .await;
                        outcome = Some(PhaseOutcome {
                            status: match setup.status {
                                ExecutionStatus::Completed => ExecutionStatus::Error,
                                other => other,
                            },
                            ..setup
                        });
                    }
                }
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => match self.phase(StreamPhase::Code, None).await {
                Stop::Cancelled => return false,
                Stop::Outcome(o) => o,
            },
        };
        let result = ExecutionResult {
            stdout: String::new(),
            stderr: String::new(),
            exit_code: outcome.exit_code,
            status: outcome.status,
            duration_ms: started.elapsed().as_millis() as u64,
            truncated: outcome.truncated,
            execution_id: uuid::Uuid::new_v4().to_string(),
            runtime: self.plan.runtime,
            timestamp,
            container_id: self.sandbox.short_id(),
            files: (!self.plan.output_paths.is_empty()).then_some(outcome.files),
            network_logs: None,
            resource_usage: self
                .usage
                .map(|usage| usage.to_api(started.elapsed().as_millis() as u64)),
            results: None,
            session_restarted: self
                .session
                .then_some(outcome.restarted || self.session_replaced),
            session_created: self.session.then_some(self.session_created),
        };
        let mut result = result;
        if let (Some(network), true) = (&self.network, self.plan.log_network) {
            let masked = self.masked_values();
            result.network_logs = Some(network.logs(&self.docker, &masked).await);
        }
        self.emit(RunEvent::Finished(result)).await;
        outcome.reusable
    }

    /// Every value masked in this run's output (secrets, and a session's earlier ones).
    fn masked_values(&self) -> Vec<String> {
        self.plan
            .secrets
            .values()
            .chain(&self.plan.masked)
            .cloned()
            .collect()
    }

    /// Sends an event that is not output (errors, exit, the result): waited for until the
    /// backstop, so a consumer that never reads cannot hold the run past it.
    async fn emit(&mut self, event: RunEvent) -> bool {
        let until = self.output_deadline + BACKSTOP_GRACE;
        matches!(
            tokio::time::timeout_at(until, self.tx.send(event)).await,
            Ok(Ok(()))
        )
    }

    /// Sends output: waited for until the phase's deadline; after it, whatever the consumer cannot
    /// take at once is dropped. False when the consumer is gone (the run is cancelled).
    async fn emit_output(&mut self, event: RunEvent) -> bool {
        if !self.stalled {
            match tokio::time::timeout_at(self.output_deadline, self.tx.send(event)).await {
                Ok(sent) => return sent.is_ok(),
                Err(_) => {
                    tracing::info!(container = %self.sandbox.short_id(), "the client is not reading; dropping output");
                    self.stalled = true;
                    return true;
                }
            }
        }
        !matches!(
            self.tx.try_send(event),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }

    /// Forwards one piece of live input to the agent.
    async fn forward_control(&mut self, control: RunControl) -> Result<()> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let request = match &control {
            RunControl::Stdin(data) => AgentRequest::Stdin {
                data: Some(b64(data)),
                eof: false,
            },
            RunControl::StdinEof => AgentRequest::Stdin {
                data: None,
                eof: true,
            },
            RunControl::Signal(signal) => AgentRequest::Signal {
                signal: signal.name(),
            },
        };
        self.sandbox.send(&request).await
    }

    /// Runs one program (the setup script, or the plan's program) to its end.
    async fn phase(&mut self, phase: StreamPhase, setup_script: Option<String>) -> Stop {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let plan = &self.plan;
        let (argv, code_path, code) = match (&setup_script, &plan.program) {
            (Some(script), _) => {
                let path = "/tmp/.isol8-setup.sh".to_string();
                (
                    vec!["bash".to_string(), path.clone()],
                    Some(path),
                    Some(b64(script.as_bytes())),
                )
            }
            (None, Program::Code { source, extension }) => {
                let path = code_path(&plan.workdir, extension);
                (plan.argv(&path), Some(path), Some(b64(source.as_bytes())))
            }
            (None, Program::Command(_)) => (plan.argv(""), None, None),
        };
        let mut env = plan.runtime_env();
        env.extend(plan.env.clone());
        env.extend(plan.secrets.clone());
        // Files go in before the first program of the run: the setup script if there is one.
        let first = phase == StreamPhase::Setup || plan.setup_script.is_none();
        let files = if first {
            plan.files
                .iter()
                .map(|(path, content)| (path.as_str(), b64(content)))
                .collect()
        } else {
            BTreeMap::new()
        };
        let empty: Vec<String> = Vec::new();
        let stdin = match phase {
            StreamPhase::Code => plan.stdin.as_deref().map(b64),
            StreamPhase::Setup => None,
        };
        let output_paths = match phase {
            StreamPhase::Code => &plan.output_paths,
            StreamPhase::Setup => &empty,
        };
        let timeout_ms = plan.limits.timeout.as_millis() as u64;
        let request = match (&setup_script, &plan.program) {
            (None, Program::Code { source, .. }) if self.session => AgentRequest::Cell {
                runtime: plan.runtime.as_str(),
                code: b64(source.as_bytes()),
                stdin,
                env: &env,
                // The session keeps its own working directory unless the call names one.
                cwd: (plan.workdir != SANDBOX_DIR).then_some(plan.workdir.as_str()),
                files,
                output_paths,
                timeout_ms,
                max_output: plan.limits.max_output_bytes,
                max_file_bytes: plan.limits.max_file_bytes,
                max_files_total: plan.limits.max_output_files_bytes,
            },
            _ => AgentRequest::Run {
                argv: &argv,
                cwd: &plan.workdir,
                env: &env,
                stdin,
                files,
                code_path: code_path.as_deref(),
                code,
                output_paths,
                timeout_ms,
                max_output: plan.limits.max_output_bytes,
                max_file_bytes: plan.limits.max_file_bytes,
                max_files_total: plan.limits.max_output_files_bytes,
                live_stdin: plan.live_stdin && phase == StreamPhase::Code,
                // One-shot python programs hand matplotlib figures over (isol8's backend).
                display: phase == StreamPhase::Code
                    && has_display(plan.runtime)
                    && matches!(plan.program, Program::Code { .. }),
            },
        };
        let timeout = plan.limits.timeout;
        self.output_deadline = Deadline::now() + timeout;
        self.stalled = false;
        if let Err(err) = self.sandbox.send(&request).await {
            return Stop::Outcome(self.failed(phase, err.to_string()).await);
        }

        let masked = || self.plan.secrets.values().chain(&self.plan.masked);
        let mut stdout = OutputFilter::new(masked());
        let mut stderr = OutputFilter::new(masked());
        let backstop = tokio::time::sleep(timeout + BACKSTOP_GRACE);
        tokio::pin!(backstop);
        loop {
            let event = tokio::select! {
                event = self.sandbox.next_event() => event,
                control = self.control.recv(), if !self.control_closed => {
                    match control {
                        Some(control) => {
                            if let Err(err) = self.forward_control(control).await {
                                return Stop::Outcome(self.failed(phase, err.to_string()).await);
                            }
                        }
                        None => self.control_closed = true,
                    }
                    continue;
                }
                _ = self.tx.closed() => {
                    tracing::info!(container = %self.sandbox.short_id(), "client went away; cancelling the run");
                    return Stop::Cancelled;
                }
                _ = &mut backstop => {
                    let message = "the sandbox did not stop at its timeout; it is destroyed".to_string();
                    let mut outcome = self.failed(phase, message).await;
                    outcome.status = ExecutionStatus::Timeout;
                    outcome.exit_code = 137;
                    return Stop::Outcome(outcome);
                }
            };
            match event {
                Some(AgentEvent::Out { s, d }) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(d)
                        .unwrap_or_default();
                    let (filter, is_err) = if s == 2 {
                        (&mut stderr, true)
                    } else {
                        (&mut stdout, false)
                    };
                    let text = filter.push(&bytes);
                    if !text.is_empty()
                        && !self.emit_output(output_event(phase, is_err, text)).await
                    {
                        return Stop::Cancelled;
                    }
                }
                Some(AgentEvent::Done {
                    exit_code,
                    status,
                    truncated,
                    files,
                    error,
                    file_errors,
                    restarted,
                    prestarted,
                    usage,
                }) => {
                    if phase == StreamPhase::Code {
                        self.usage = usage;
                        self.prestarted = prestarted;
                    }
                    for (filter, is_err) in [(&mut stdout, false), (&mut stderr, true)] {
                        let text = filter.finish(truncated);
                        if !text.is_empty() {
                            self.emit(output_event(phase, is_err, text)).await;
                        }
                    }
                    match status {
                        ExecutionStatus::Timeout => {
                            self.emit(RunEvent::Error {
                                phase,
                                message: "EXECUTION TIMED OUT".into(),
                            })
                            .await;
                        }
                        ExecutionStatus::MemoryLimit => {
                            self.emit(RunEvent::Error {
                                phase,
                                message: "MEMORY LIMIT EXCEEDED".into(),
                            })
                            .await;
                        }
                        ExecutionStatus::OutputLimit => {
                            self.emit(RunEvent::Error {
                                phase,
                                message: format!(
                                    "OUTPUT LIMIT REACHED ({} bytes); further output was discarded",
                                    self.plan.limits.max_output_bytes
                                ),
                            })
                            .await;
                        }
                        _ => {}
                    }
                    if let Some(message) = &error {
                        self.emit(RunEvent::Error {
                            phase,
                            message: message.clone(),
                        })
                        .await;
                    }
                    if restarted {
                        self.emit(RunEvent::Error {
                            phase,
                            message: "the session's interpreter was restarted; state from earlier calls is gone".into(),
                        })
                        .await;
                    }
                    for message in file_errors {
                        self.emit(RunEvent::Error {
                            phase,
                            message: format!("outputPaths: {message}"),
                        })
                        .await;
                    }
                    self.emit(RunEvent::Exit {
                        phase,
                        code: exit_code,
                    })
                    .await;
                    return Stop::Outcome(PhaseOutcome {
                        exit_code,
                        status,
                        truncated,
                        files,
                        reusable: true,
                        error,
                        restarted,
                    });
                }
                Some(AgentEvent::Display { mut data }) => {
                    mask_bundle(&mut data, &self.plan.secrets);
                    if !self.emit(RunEvent::Display(data)).await {
                        return Stop::Cancelled;
                    }
                }
                Some(AgentEvent::Error { error, .. }) => {
                    return Stop::Outcome(self.failed(phase, error).await);
                }
                Some(AgentEvent::Ready | AgentEvent::Reset { .. } | AgentEvent::File { .. }) => {
                    continue
                }
                None => {
                    let oom = self.container_oom_killed().await;
                    let message = if oom {
                        "MEMORY LIMIT EXCEEDED (the sandbox was killed)".to_string()
                    } else {
                        "the sandbox container exited unexpectedly".to_string()
                    };
                    let mut outcome = self.failed(phase, message).await;
                    if oom {
                        outcome.status = ExecutionStatus::MemoryLimit;
                        outcome.exit_code = 137;
                    }
                    return Stop::Outcome(outcome);
                }
            }
        }
    }

    async fn failed(&mut self, phase: StreamPhase, message: String) -> PhaseOutcome {
        tracing::warn!(container = %self.sandbox.short_id(), %message, "run failed");
        self.emit(RunEvent::Error {
            phase,
            message: message.clone(),
        })
        .await;
        self.emit(RunEvent::Exit { phase, code: 1 }).await;
        PhaseOutcome {
            exit_code: 1,
            status: ExecutionStatus::Error,
            truncated: false,
            files: BTreeMap::new(),
            reusable: false,
            error: Some(message),
            restarted: false,
        }
    }

    async fn container_oom_killed(&mut self) -> bool {
        self.docker
            .inspect_container(&self.sandbox.id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false)
    }
}

fn output_event(phase: StreamPhase, is_err: bool, text: String) -> RunEvent {
    if is_err {
        RunEvent::Stderr { phase, text }
    } else {
        RunEvent::Stdout { phase, text }
    }
}

/// Masks secrets in a bundle's text values, as in stdout and stderr.
fn mask_bundle(bundle: &mut isol8_api::MimeBundle, secrets: &BTreeMap<String, String>) {
    if secrets.is_empty() {
        return;
    }
    for value in bundle.values_mut() {
        if let serde_json::Value::String(text) = value {
            *text = OutputFilter::mask_text(secrets.values(), text);
        }
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
