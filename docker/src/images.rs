//! Runtime images: recipes under `docker/images/`, a content-hashed build chain (rootfs → base → runtime),
//! bootstrapping the Debian root when no registry can be reached, and progress reporting.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::image::{BuildImageOptions, CreateImageOptions, TagImageOptions};
use bollard::Docker;
use futures::StreamExt;
use isol8_api::Runtime;
use sha2::{Digest, Sha256};

use crate::build_output;
use crate::error::{is_not_found, Error, Result};
use crate::spec::{LABEL_KIND, LABEL_MANAGED, LABEL_RUNTIME};

/// Label holding the content hash of the recipe an image was built from.
pub const LABEL_RECIPE: &str = "isol8.recipe-hash";

const BASE_DOCKERFILE: &str = include_str!("../images/base/Dockerfile");
const FETCH_WHEEL_PY: &str = include_str!("../images/base/fetch-wheel.py");
/// The loaders of pre-started interpreters (see `agent/src/agent/waiting.rs`).
const PRESTART: [(&str, &str); 3] = [
    (
        "prestart/python.py",
        include_str!("../agent/prestart/python.py"),
    ),
    (
        "prestart/00-isol8-prestart.pth",
        include_str!("../agent/prestart/00-isol8-prestart.pth"),
    ),
    (
        "prestart/node.cjs",
        include_str!("../agent/prestart/node.cjs"),
    ),
];

fn runtime_dockerfile(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Python => include_str!("../images/python/Dockerfile"),
        Runtime::Node => include_str!("../images/node/Dockerfile"),
        Runtime::Bun => include_str!("../images/bun/Dockerfile"),
        Runtime::Deno => include_str!("../images/deno/Dockerfile"),
        Runtime::Bash => include_str!("../images/bash/Dockerfile"),
    }
}

/// Where images come from and what goes into them.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The host's CA bundle, trusted in every image built and every sandbox run (found at the
    /// usual paths, [`HOST_CA_BUNDLES`], unless `ISOL8_HOST_CA_CERTS` names another or `none`).
    pub host_ca_bundle: Option<PathBuf>,
    /// PEM files of extra CA certificates trusted besides it (corporate or TLS-inspecting proxies).
    pub extra_ca_certs: Vec<PathBuf>,
    /// Debian mirror for bootstrapping the root filesystem.
    pub debian_mirror: String,
    pub debian_suite: String,
    /// Where custom-image builds get packages (a mirror or private index), as build variables:
    /// `PIP_INDEX_URL`, `PIP_TRUSTED_HOST`, `npm_config_registry`. Empty: the public registries.
    pub package_index: BTreeMap<String, String>,
}

/// Build variables naming package indexes, read from the environment by [`ImageConfig::default`].
pub(crate) const PACKAGE_INDEX_VARS: [&str; 3] =
    ["PIP_INDEX_URL", "PIP_TRUSTED_HOST", "npm_config_registry"];

/// Environment variable listing extra CA certificate files (separated by `,` or `:`).
pub const EXTRA_CA_ENV: &str = "ISOL8_EXTRA_CA_CERTS";

/// Environment variable naming the host CA bundle to trust instead of the first of
/// [`HOST_CA_BUNDLES`] found, or `none` to trust none of the host's.
pub const HOST_CA_ENV: &str = "ISOL8_HOST_CA_CERTS";

/// Where Linux distributions keep the system CA bundle; the first that exists is trusted.
pub const HOST_CA_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL, CentOS
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // RHEL, CentOS 7+
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/pki/tls/cacert.pem",            // OpenELEC
    "/etc/ssl/cert.pem",                  // Alpine, macOS
];

impl Default for ImageConfig {
    /// Debian bookworm from deb.debian.org, the host's CA bundle and the extra CA files of
    /// `ISOL8_EXTRA_CA_CERTS`, the package index variables: what `isol8 serve`, `isol8 run` and
    /// `isol8 setup` all resolve, so they build and look for the same images.
    fn default() -> Self {
        ImageConfig::from_env(|name| std::env::var(name).ok(), |path| path.is_file())
    }
}

impl ImageConfig {
    /// The configuration `lookup` (an environment) gives, with `exists` telling which host CA
    /// bundle paths are there.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        exists: impl Fn(&Path) -> bool,
    ) -> Self {
        let host_ca_bundle = match lookup(HOST_CA_ENV).as_deref().map(str::trim) {
            Some("none") => None,
            Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => HOST_CA_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| exists(p)),
        };
        let extra_ca_certs = lookup(EXTRA_CA_ENV)
            .unwrap_or_default()
            .split([',', ':'])
            .filter(|p| !p.trim().is_empty())
            .map(|p| PathBuf::from(p.trim()))
            .collect();
        let package_index = PACKAGE_INDEX_VARS
            .iter()
            .filter_map(|name| Some((name.to_string(), lookup(name)?)))
            .collect();
        ImageConfig {
            package_index,
            host_ca_bundle,
            extra_ca_certs,
            debian_mirror: "http://deb.debian.org/debian".into(),
            debian_suite: "bookworm".into(),
        }
    }

    /// Every CA file images trust: the host bundle, then the extra files, each once (naming the
    /// host bundle in `ISOL8_EXTRA_CA_CERTS` too changes nothing, not even an image's hash).
    pub fn ca_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = Vec::new();
        let mut seen = Vec::new();
        for path in self.host_ca_bundle.iter().chain(&self.extra_ca_certs) {
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            if !seen.contains(&real) {
                seen.push(real);
                files.push(path.clone());
            }
        }
        files
    }
}

/// What a build is doing, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProgress {
    /// `image` is already built from this exact recipe.
    UpToDate { image: String },
    /// Building `image` started.
    Started { image: String },
    /// One step (a Dockerfile instruction or bootstrap phase) of `image` began.
    Step { image: String, step: String },
    /// Building `image` finished.
    Finished { image: String },
}

/// Builds and finds isol8's images.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    docker: Docker,
    config: ImageConfig,
}

type Progress<'a> = &'a (dyn Fn(BuildProgress) + Send + Sync);

impl ImageBuilder {
    pub fn new(docker: Docker, config: ImageConfig) -> Self {
        ImageBuilder { docker, config }
    }

    /// The runtime's image tag when it is built from the current recipes, else `None`. Builds nothing.
    pub async fn find_runtime(&self, runtime: Runtime) -> Result<Option<String>> {
        Ok(self.find_runtimes(&[runtime]).await?.remove(&runtime))
    }

    /// The image tags of `runtimes` that are built from the current recipes (the root and base are
    /// looked up once for all of them). Builds nothing.
    pub async fn find_runtimes(&self, runtimes: &[Runtime]) -> Result<BTreeMap<Runtime, String>> {
        let mut found = BTreeMap::new();
        let Some(rootfs_id) = self.image_id(&self.rootfs_tag()).await? else {
            return Ok(found);
        };
        let base_tag = self.base_tag(&rootfs_id)?;
        let Some(base_id) = self.image_id(&base_tag).await? else {
            return Ok(found);
        };
        for runtime in runtimes {
            let tag = runtime_tag(*runtime, &base_id);
            if self.image_id(&tag).await?.is_some() {
                found.insert(*runtime, tag);
            }
        }
        Ok(found)
    }

    /// Builds what is missing (or everything, with `force`) and returns the runtime's image tag.
    pub async fn ensure_runtime(
        &self,
        runtime: Runtime,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<String> {
        let rootfs_tag = self.rootfs_tag();
        let rootfs_id = match self.image_id(&rootfs_tag).await? {
            Some(id) => {
                progress(BuildProgress::UpToDate {
                    image: rootfs_tag.clone(),
                });
                id
            }
            None => self.bootstrap_rootfs(&rootfs_tag, progress).await?,
        };

        let base_tag = self.base_tag(&rootfs_id)?;
        let base_id = match self.image_id(&base_tag).await? {
            Some(id) if !force => {
                progress(BuildProgress::UpToDate {
                    image: base_tag.clone(),
                });
                id
            }
            _ => {
                let files = self.base_context_files()?;
                self.build(
                    &base_tag,
                    &files,
                    HashMap::from([("ROOTFS", rootfs_tag.as_str())]),
                    HashMap::from([(LABEL_KIND, "base")]),
                    force,
                    progress,
                )
                .await?
            }
        };

        let tag = runtime_tag(runtime, &base_id);
        if !force && self.image_id(&tag).await?.is_some() {
            progress(BuildProgress::UpToDate { image: tag.clone() });
        } else {
            let files = vec![(
                "Dockerfile".to_string(),
                runtime_dockerfile(runtime).as_bytes().to_vec(),
            )];
            self.build(
                &tag,
                &files,
                HashMap::from([("BASE", base_tag.as_str())]),
                HashMap::from([(LABEL_KIND, "runtime"), (LABEL_RUNTIME, runtime.as_str())]),
                force,
                progress,
            )
            .await?;
        }
        // A stable alias for people (`docker run isol8-python:latest`); the engine uses the hashed
        // tag. Tagging is a write on the engine: skipped when the alias is there already.
        let alias = format!("isol8-{runtime}:latest");
        let aliased = match self.docker.inspect_image(&tag).await {
            Ok(image) => image.repo_tags.is_some_and(|tags| tags.contains(&alias)),
            Err(_) => false,
        };
        if !aliased {
            self.tag(&tag, &alias).await?;
        }
        Ok(tag)
    }

    /// Gives image `source` the extra name `alias` (`repo` or `repo:tag`).
    pub(crate) async fn tag(&self, source: &str, alias: &str) -> Result<()> {
        let (repo, version) = match alias.rsplit_once(':') {
            Some((repo, version)) if !version.contains('/') => (repo, version),
            _ => (alias, "latest"),
        };
        self.docker
            .tag_image(
                source,
                Some(TagImageOptions {
                    repo: repo.to_string(),
                    tag: version.to_string(),
                }),
            )
            .await
            .map_err(Error::docker("tag image"))
    }

    /// The tag of the bootstrapped Debian root every isol8 image is built on (by its recipe:
    /// packages, suite, mirror), whether or not it is built yet.
    pub fn rootfs_tag(&self) -> String {
        let recipe = format!(
            "debootstrap --variant=minbase --include={} {} {}",
            ROOTFS_PACKAGES, self.config.debian_suite, self.config.debian_mirror
        );
        format!("isol8-rootfs:{}", short_hash([recipe.as_bytes()]))
    }

    fn base_tag(&self, rootfs_id: &str) -> Result<String> {
        let files = self.base_context_files()?;
        let mut parts: Vec<&[u8]> = vec![rootfs_id.as_bytes()];
        for (name, content) in &files {
            parts.push(name.as_bytes());
            parts.push(content);
        }
        Ok(format!("isol8-base:{}", short_hash(parts)))
    }

    fn base_context_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut ca = Vec::new();
        for path in self.config.ca_files() {
            let pem = std::fs::read(&path).map_err(Error::io(format!(
                "reading CA certificates {} (ISOL8_HOST_CA_CERTS / ISOL8_EXTRA_CA_CERTS)",
                path.display()
            )))?;
            ca.extend_from_slice(&pem);
            if !ca.ends_with(b"\n") {
                ca.push(b'\n');
            }
        }
        let mut files = vec![
            ("Dockerfile".into(), BASE_DOCKERFILE.as_bytes().to_vec()),
            ("fetch-wheel.py".into(), FETCH_WHEEL_PY.as_bytes().to_vec()),
            ("extra-ca.crt".into(), ca),
        ];
        // The agent, kernels and display modules are not here: they come from the agent volume
        // (`agent_volume.rs`). The pre-start loaders stay, as the python image compiles its own.
        files.extend(
            PRESTART
                .iter()
                .map(|(name, text)| (name.to_string(), text.as_bytes().to_vec())),
        );
        Ok(files)
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    pub(crate) fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The labels of image `tag`, or `None` when there is no such image.
    pub(crate) async fn image_labels(&self, tag: &str) -> Result<Option<HashMap<String, String>>> {
        match self.docker.inspect_image(tag).await {
            Ok(image) => Ok(Some(
                image.config.and_then(|c| c.labels).unwrap_or_default(),
            )),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(Error::docker("inspect image")(err)),
        }
    }

    pub(crate) async fn image_id(&self, tag: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(tag).await {
            Ok(image) => Ok(image.id),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(Error::Docker {
                action: "inspect image",
                source: err,
            }),
        }
    }

    /// Makes the Debian root filesystem with debootstrap on this host and imports it as an image.
    async fn bootstrap_rootfs(&self, tag: &str, progress: Progress<'_>) -> Result<String> {
        progress(BuildProgress::Started { image: tag.into() });
        let step = |s: &str| {
            progress(BuildProgress::Step {
                image: tag.into(),
                step: s.into(),
            })
        };
        if which("debootstrap").is_none() {
            return Err(Error::ImageBuild {
                image: tag.into(),
                step: "find debootstrap".into(),
                message:
                    "no base image can be pulled here, and debootstrap is not installed to make one"
                        .into(),
                output: String::new(),
                hint: Some(
                    "install it (Debian/Ubuntu: apt-get install -y debootstrap) and run as root"
                        .into(),
                ),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("isol8-rootfs-")
            .tempdir()
            .map_err(Error::io("creating a folder for the root filesystem"))?;
        let root = dir.path().join("root");
        step(&format!(
            "debootstrap {} from {}",
            self.config.debian_suite, self.config.debian_mirror
        ));
        let out = tokio::process::Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={ROOTFS_PACKAGES}"))
            .arg(&self.config.debian_suite)
            .arg(&root)
            .arg(&self.config.debian_mirror)
            .output()
            .await
            .map_err(Error::io("running debootstrap"))?;
        if !out.status.success() {
            let output = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return Err(self.failure(
                tag,
                "debootstrap",
                &format!("debootstrap exited with {}", out.status),
                &output,
            ));
        }
        step("pack the root filesystem");
        let tarball = tokio::process::Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args([
                "--numeric-owner",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
            ])
            .args(["--exclude=./var/cache/apt/archives/*.deb", "-cf", "-", "."])
            .output()
            .await
            .map_err(Error::io("packing the root filesystem with tar"))?;
        if !tarball.status.success() {
            return Err(self.failure(
                tag,
                "pack the root filesystem",
                &format!("tar exited with {}", tarball.status),
                &String::from_utf8_lossy(&tarball.stderr),
            ));
        }
        step("import into Docker");
        let (repo, version) = tag.split_once(':').unwrap_or((tag, "latest"));
        let label_managed = format!("LABEL {LABEL_MANAGED}=true");
        let label_kind = format!("LABEL {LABEL_KIND}=rootfs");
        let mut import = self.docker.create_image(
            Some(CreateImageOptions {
                from_src: "-",
                repo,
                tag: version,
                changes: vec![label_managed.as_str(), label_kind.as_str()],
                ..Default::default()
            }),
            Some(tarball.stdout.into()),
            None,
        );
        while let Some(item) = import.next().await {
            let info = item.map_err(Error::docker("import image"))?;
            if let Some(err) = info.error {
                return Err(self.failure(tag, "import into Docker", &err, ""));
            }
        }
        drop(dir);
        let id = self.image_id(tag).await?.ok_or_else(|| {
            self.failure(
                tag,
                "import into Docker",
                "the imported image is not there",
                "",
            )
        })?;
        progress(BuildProgress::Finished { image: tag.into() });
        Ok(id)
    }

    /// The error of a failed step: Docker's message without the command repeated, the output's
    /// last lines without escapes, and a hint where the cause is known.
    fn failure(&self, tag: &str, step: &str, message: &str, output: &str) -> Error {
        let trusted: Vec<String> = self
            .config
            .ca_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Error::ImageBuild {
            image: tag.into(),
            step: step.into(),
            message: build_output::failure_message(message),
            output: build_output::tail(output, build_output::TAIL_LINES),
            hint: build_output::hint(message, output, &trusted),
        }
    }

    pub(crate) async fn build(
        &self,
        tag: &str,
        files: &[(String, Vec<u8>)],
        args: HashMap<&str, &str>,
        labels: HashMap<&str, &str>,
        no_cache: bool,
        progress: Progress<'_>,
    ) -> Result<String> {
        progress(BuildProgress::Started { image: tag.into() });
        let context = tar_context(files).map_err(Error::io("packing the build context"))?;
        let recipe_hash = tag.rsplit(':').next().unwrap_or_default().to_string();
        let mut all_labels: HashMap<String, String> = labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all_labels.insert(LABEL_MANAGED.into(), "true".into());
        all_labels.insert(LABEL_RECIPE.into(), recipe_hash);
        let options = BuildImageOptions::<String> {
            dockerfile: "Dockerfile".into(),
            t: tag.into(),
            rm: true,
            forcerm: true,
            pull: false,
            nocache: no_cache,
            buildargs: args
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: all_labels,
            ..Default::default()
        };
        let mut stream = self.docker.build_image(options, None, Some(context.into()));
        let mut step = String::from("start");
        let mut output = String::new();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(self.failure(tag, &step, &error, &output))
                }
                Err(err) => return Err(Error::docker("build image")(err)),
            };
            if let Some(text) = info.stream {
                for line in build_output::output_lines(&text) {
                    if line.starts_with("Step ") {
                        step = build_output::step_label(&line);
                        output.clear();
                        progress(BuildProgress::Step {
                            image: tag.into(),
                            step: step.clone(),
                        });
                    } else {
                        output.push_str(&line);
                        output.push('\n');
                    }
                }
            }
            if let Some(err) = info.error {
                return Err(self.failure(tag, &step, &err, &output));
            }
        }
        let id = self
            .image_id(tag)
            .await?
            .ok_or_else(|| self.failure(tag, &step, "the build ended without an image", &output))?;
        progress(BuildProgress::Finished { image: tag.into() });
        Ok(id)
    }
}

const ROOTFS_PACKAGES: &str = "python3,bash,ca-certificates,passwd";

fn runtime_tag(runtime: Runtime, base_id: &str) -> String {
    format!(
        "isol8-{runtime}:{}",
        short_hash([base_id.as_bytes(), runtime_dockerfile(runtime).as_bytes()])
    )
}

pub(crate) fn short_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())[..16].to_string()
}

fn tar_context(files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, content.as_slice())?;
    }
    builder.into_inner()
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_change_with_content_and_are_stable() {
        let a = short_hash([b"x".as_slice(), b"y".as_slice()]);
        assert_eq!(a, short_hash([b"x".as_slice(), b"y".as_slice()]));
        assert_ne!(a, short_hash([b"xy".as_slice()]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn the_host_bundle_is_trusted_by_default_and_extras_add_to_it_once() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let fedora = |p: &Path| p == Path::new("/etc/pki/tls/certs/ca-bundle.crt");
        let config = ImageConfig::from_env(env(&[]), fedora);
        assert_eq!(
            config.ca_files(),
            [PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt")]
        );
        let config = ImageConfig::from_env(
            env(&[(
                EXTRA_CA_ENV,
                "/x/proxy.pem:/etc/pki/tls/certs/ca-bundle.crt",
            )]),
            fedora,
        );
        assert_eq!(
            config.ca_files(),
            [
                PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt"),
                PathBuf::from("/x/proxy.pem")
            ]
        );
        let config = ImageConfig::from_env(
            env(&[(HOST_CA_ENV, "none"), (EXTRA_CA_ENV, "/x/proxy.pem")]),
            fedora,
        );
        assert_eq!(config.ca_files(), [PathBuf::from("/x/proxy.pem")]);
        let config = ImageConfig::from_env(env(&[(HOST_CA_ENV, "/mine.pem")]), fedora);
        assert_eq!(config.ca_files(), [PathBuf::from("/mine.pem")]);
        assert!(ImageConfig::from_env(env(&[]), |_| false)
            .ca_files()
            .is_empty());
    }

    #[test]
    fn runtime_tags_differ_per_runtime_and_base() {
        assert_ne!(
            runtime_tag(Runtime::Python, "sha256:a"),
            runtime_tag(Runtime::Python, "sha256:b")
        );
        assert!(runtime_tag(Runtime::Node, "sha256:a").starts_with("isol8-node:"));
    }
}
