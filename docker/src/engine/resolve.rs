//! Which image a run gets: the runtime images and custom images, building them, and the image a
//! request names checked against what isol8 built and the `allowedImages` patterns.

use std::collections::BTreeMap;

use isol8_api::{NetworkMode, Runtime};

use super::Engine;
use crate::custom::{default_custom_tag, PackageSet};
use crate::error::{Error, Result};
use crate::images::BuildProgress;
use crate::plan::RunPlan;
use crate::spec::{ContainerKind, ContainerSpec, LABEL_OWNER};

impl Engine {
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
            self.resolved.lock().remove(runtime);
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
            self.resolved.lock().insert(runtime, default_tag);
            self.refresh_warm_set().await;
        }
        Ok(tag)
    }

    pub(super) async fn refresh_warm_set(&self) {
        // No pool, nothing kept warm: resolving the images would only cost a cold start
        // (`isol8 run` without a server) its Docker round trips.
        if self.config.pool.size == 0 {
            return;
        }
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

    pub(super) async fn runtime_image(&self, runtime: Runtime) -> Result<String> {
        if let Some(tag) = self.resolved.lock().get(&runtime) {
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
        self.resolved.lock().insert(runtime, tag.clone());
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

    /// The image a request names (`options.image`), and whether it is foreign (not isol8's).
    ///
    /// One of isol8's images of `runtime` (a runtime image or one `isol8 build` made from it,
    /// checked as `ImageBuilder::verified_tag` does) always runs, as the tag isol8 computes for
    /// it. Any other image runs only when `allowedImages` matches its name: then a missing one is
    /// named as missing (isol8 never pulls). One the patterns do not match is refused with the
    /// same answer whether or not it exists, so requests cannot map the engine's images (the
    /// server's own, the Docker-in-Docker one, ...).
    async fn check_requested_image(&self, image: &str, runtime: Runtime) -> Result<(String, bool)> {
        let own = match self.images.verified_tag(image).await {
            Ok(own) => own,
            // Docker refuses a malformed name: the caller's error.
            Err(Error::Docker {
                source:
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 400,
                        message,
                    },
                ..
            }) => {
                return Err(Error::InvalidRequest(format!(
                    "options.image \"{image}\": {message}"
                )))
            }
            Err(err) => return Err(err),
        };
        let allowed = self.config.allowed_images.allows(image);
        match own {
            Some((built_for, tag)) if built_for == runtime => Ok((tag, false)),
            _ if allowed => match self.images.image_id(image).await {
                Ok(Some(_)) => Ok((image.to_string(), true)),
                Ok(None) => Err(Error::NotFound(format!(
                    "options.image \"{image}\" is not on this Docker engine; isol8 never pulls images: pull or build it there first"
                ))),
                Err(err) => Err(err),
            },
            Some((built_for, _)) => Err(Error::InvalidRequest(format!(
                "options.image \"{image}\" is a {built_for} image, not a {runtime} one"
            ))),
            None => Err(Error::NotAllowed(format!(
                "options.image \"{image}\" is not allowed on this server: it is not one of isol8's images (made by `isol8 setup` or `isol8 build`) and matches none of its allowedImages patterns"
            ))),
        }
    }

    /// The container `plan` needs, and the script installing its packages at the start of the run
    /// when no image holds them and `filtered` networking can reach their registry.
    pub(super) async fn container_plan(
        &self,
        plan: &RunPlan,
    ) -> Result<(ContainerSpec, Option<String>)> {
        let mut install = None;
        // Installing needs the registry: reachable through the filtered proxy, or the host network.
        let run_time_install = match plan.network {
            NetworkMode::Filtered | NetworkMode::Host => plan.packages.install_script(plan.runtime),
            NetworkMode::None => None,
        };
        let mut foreign = false;
        let image = match &plan.image {
            Some(image) => {
                let (image, is_foreign) = self.check_requested_image(image, plan.runtime).await?;
                foreign = is_foreign;
                image
            }
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
        spec.foreign_image = foreign;
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
}
