//! isol8's objects on a Docker engine: listing them, removing them (`cleanup`), and the orphan
//! janitor that removes what dead instances left.

use std::collections::HashMap;

use bollard::container::ListContainersOptions;
use bollard::image::{ListImagesOptions, RemoveImageOptions};
use isol8_api::{CleanupCounts, CleanupResponse};

use bollard::Docker;

use super::Engine;
use crate::agent::remove;
use crate::agent_volume::{KIND_AGENT, KIND_AGENT_HELPER};
use crate::error::{is_not_found, Error, Result};
use crate::network::{KIND_NETWORK, KIND_PROXY, NETWORK_PREFIX};
use crate::spec::{ContainerKind, LABEL_INSTANCE, LABEL_KIND, LABEL_MANAGED};

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
    /// Names of the agent volumes (`agent_volume.rs`) no container uses, listed with the images.
    pub volumes: Vec<String>,
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

impl Engine {
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
            ..Managed::default()
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
            managed.volumes = self.unused_agent_volumes().await?;
        }
        Ok(managed)
    }

    /// The agent volumes (of any isol8 version) that no container mounts.
    async fn unused_agent_volumes(&self) -> Result<Vec<String>> {
        let filters = HashMap::from([
            (
                "label",
                vec![
                    format!("{LABEL_MANAGED}=true"),
                    format!("{LABEL_KIND}={KIND_AGENT}"),
                ],
            ),
            ("dangling", vec!["true".to_string()]),
        ]);
        let listed = self
            .docker
            .list_volumes(Some(bollard::volume::ListVolumesOptions {
                filters: filters
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }))
            .await
            .map_err(Error::docker("list volumes"))?;
        let mut names: Vec<String> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every container (any state) carrying all of `labels` (`key=value`).
    pub(crate) async fn containers_labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        containers_labelled(&self.docker, labels).await
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
            volumes: None,
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
            // Listed again now that the containers are gone: the ones they mounted are unused now.
            // A volume a container started to use since stays (409): in use is not a failure, and
            // not a removal either.
            let mut volumes = CleanupCounts::default();
            for name in &self.unused_agent_volumes().await? {
                match self.docker.remove_volume(name, None).await {
                    Err(err) if crate::error::status_of(&err) == Some(409) => {}
                    removal => volumes.count(name, removal),
                }
            }
            // This engine fills it again before its next container.
            self.pool.invalidate_agent_volume();
            self.resolved.lock().clear();
            self.refresh_warm_set().await;
            response.ok &= counts.failed == 0 && volumes.failed == 0;
            response.images = Some(counts);
            response.volumes = Some(volumes);
        }
        Ok(response)
    }
}

/// Every container (any state) carrying all of `labels` (`key=value`).
pub(crate) async fn containers_labelled(
    docker: &Docker,
    labels: Vec<String>,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let filters = HashMap::from([("label".to_string(), labels)]);
    docker
        .list_containers(Some(ListContainersOptions::<String> {
            all: true,
            filters,
            ..Default::default()
        }))
        .await
        .map_err(Error::docker("list containers"))
}

// The orphan janitor: what dead instances and abandoned filtered setups left behind. Run at
// start-up and every few minutes by the pool's replenisher.

/// Sandbox, proxy and server-session containers (the kinds orphan reclaim looks at), of
/// `instance` or of every instance.
pub(crate) async fn dies_with_instance(
    docker: &Docker,
    instance: Option<&str>,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let mut labels = vec![format!("{LABEL_MANAGED}=true")];
    if let Some(instance) = instance {
        labels.push(format!("{LABEL_INSTANCE}={instance}"));
    }
    let all = containers_labelled(docker, labels).await?;
    let dies_with_instance = |c: &bollard::models::ContainerSummary| {
        let kind = c.labels.as_ref().and_then(|l| l.get(LABEL_KIND));
        [
            ContainerKind::Sandbox.as_str(),
            ContainerKind::Session.as_str(),
            KIND_PROXY,
            KIND_AGENT_HELPER,
        ]
        .iter()
        .any(|k| kind.map(String::as_str) == Some(*k))
    };
    Ok(all.into_iter().filter(dies_with_instance).collect())
}

async fn remove_orphan_proxy(docker: &Docker, id: &str) -> usize {
    let Ok(inspect) = docker.inspect_container(id, None).await else {
        return 0;
    };
    let networks: Vec<String> = inspect
        .network_settings
        .and_then(|n| n.networks)
        .map(|n| {
            n.into_keys()
                .filter(|k| k.starts_with(NETWORK_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    for name in &networks {
        // An error means we cannot tell: leave it.
        let Ok(network) = docker.inspect_network::<String>(name, None).await else {
            return 0;
        };
        if network.containers.map_or(0, |c| c.len()) > 1 {
            return 0;
        }
    }
    remove(docker, id).await;
    for name in networks {
        let _ = docker.remove_network(&name).await;
    }
    1
}

/// Removes sandbox and session containers that no live instance holds: their connection closed
/// (the instance died), so they exited, and Docker did not get to remove them; or they were
/// created and never started. A live instance's containers are running: this is safe for several
/// servers sharing one engine, whatever machine or container they run in. Returns how many.
pub(crate) async fn reclaim_orphans(docker: &Docker) -> Result<usize> {
    let containers = dies_with_instance(docker, None).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut removed = 0;
    for container in containers {
        let state = container.state.as_deref().unwrap_or_default();
        let is_proxy = container
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_KIND))
            .is_some_and(|k| k == KIND_PROXY);
        // A filtered run's proxy outlives a crashed server: it is an orphan when no sandbox
        // shares its network any more.
        // (A young proxy may be waiting for its sandbox to be created: leave it.)
        let young = now - container.created.unwrap_or(now) < 60;
        if is_proxy && state == "running" && !young {
            if let Some(id) = container.id.as_deref() {
                removed += remove_orphan_proxy(docker, id).await;
            }
            continue;
        }
        if is_proxy && state == "running" {
            continue;
        }
        let stale_create = state == "created" && now - container.created.unwrap_or(now) > 60;
        if !(matches!(state, "exited" | "dead") || stale_create) {
            continue;
        }
        if let Some(id) = container.id {
            remove(docker, &id).await;
            removed += 1;
        }
    }
    remove_empty_networks(docker).await;
    Ok(removed)
}

/// Filtered-run networks left with no container (their run's teardown never came), older than a
/// minute so a run being set up right now keeps its own.
async fn remove_empty_networks(docker: &Docker) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_KIND}={KIND_NETWORK}")],
    )]);
    let options = bollard::network::ListNetworksOptions { filters };
    let Ok(networks) = docker.list_networks(Some(options)).await else {
        return;
    };
    let minute_ago = chrono::Utc::now() - chrono::Duration::seconds(60);
    for network in networks {
        let old = network
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .is_some_and(|c| c < minute_ago);
        let Some(name) = network.name else { continue };
        let Ok(detail) = docker.inspect_network::<String>(&name, None).await else {
            continue;
        };
        if old && detail.containers.is_none_or(|c| c.is_empty()) {
            let _ = docker.remove_network(&name).await;
        }
    }
}
