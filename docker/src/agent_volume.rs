//! The agent volume: the static `isol8-agent` (built by `build.rs`) and the files it serves (the
//! session kernels, the display modules) in a Docker volume named by their content, mounted
//! read-only at [`AGENT_DIR`] into every sandbox and filtered-mode proxy. A volume rather than a
//! bind mount from the server's disk, so a remote Docker host gets it the same way; and rather
//! than files in the images, so any image can be a sandbox.
//!
//! An engine makes sure of it once: an existing volume of the same name, labelled as isol8's, is
//! reused as it is (the name is the content's hash), at the cost of one inspect, so a cold
//! `isol8 run` pays nothing more. Otherwise it creates the volume, creates a never-started helper
//! container with it mounted read-write, unpacks the content into it through the archive API and
//! removes the helper. A marker written last says the volume is complete: after a sandbox failed to
//! start, the engine looks inside (with a helper) and fills again what a fill cut short left.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, LazyLock};

use bollard::container::{
    Config, CreateContainerOptions, DownloadFromContainerOptions, UploadToContainerOptions,
};
use bollard::models::{HostConfig, Mount, MountTypeEnum, MountVolumeOptions};
use bollard::volume::CreateVolumeOptions;
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::agent::remove;
use crate::error::{is_not_found, Error, Result};
use crate::spec::{LABEL_INSTANCE, LABEL_KIND, LABEL_MANAGED};

/// The one spelling of the agent's directory, for the constants below.
macro_rules! agent_dir {
    () => {
        "/opt/isol8/agent"
    };
}

/// Where the agent volume is mounted (read-only) in every sandbox and proxy.
pub const AGENT_DIR: &str = agent_dir!();
/// The static agent executable.
pub const AGENT_BIN: &str = concat!(agent_dir!(), "/isol8-agent");
/// The session interpreters the agent keeps alive for persistent sessions.
pub const KERNEL_DIR: &str = concat!(agent_dir!(), "/kernels");
/// The python display channel and matplotlib backend (code-interpreter results).
pub const DISPLAY_DIR: &str = concat!(agent_dir!(), "/display");

/// What every sandbox container runs as its init: the compiled agent, from the volume.
pub(crate) const SANDBOX_ENTRYPOINT: &[&str] = &[AGENT_BIN];
/// What every filtered-mode proxy container runs: the same executable's proxy mode.
pub(crate) const PROXY_ENTRYPOINT: &[&str] = &[AGENT_BIN, "proxy"];

/// `isol8.kind` of the agent volume.
pub(crate) const KIND_AGENT: &str = "agent";
/// `isol8.kind` of the helper container that fills it (never started; removed at once).
pub(crate) const KIND_AGENT_HELPER: &str = "agent-helper";
/// Every agent volume's name is this plus the first 12 hex digits of its content's sha256.
pub(crate) const VOLUME_PREFIX: &str = "isol8-agent-";
/// Written last into the volume, holding the whole content hash: the volume is complete.
const MARKER: &str = ".isol8-content";

const AGENT_EXECUTABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isol8-agent"));

/// The volume's files: path inside it, mode, bytes.
const FILES: [(&str, u32, &[u8]); 7] = [
    ("isol8-agent", 0o555, AGENT_EXECUTABLE),
    (
        "kernels/python.py",
        0o444,
        include_bytes!("../agent/kernels/python.py"),
    ),
    (
        "kernels/js.mjs",
        0o444,
        include_bytes!("../agent/kernels/js.mjs"),
    ),
    (
        "kernels/bash.sh",
        0o444,
        include_bytes!("../agent/kernels/bash.sh"),
    ),
    (
        "prestart/bash.sh",
        0o444,
        include_bytes!("../agent/prestart/bash.sh"),
    ),
    (
        "display/isol8_display.py",
        0o444,
        include_bytes!("../agent/display/isol8_display.py"),
    ),
    (
        "display/isol8_mpl.py",
        0o444,
        include_bytes!("../agent/display/isol8_mpl.py"),
    ),
];

/// The volume's content and name.
struct Content {
    /// sha256 of every file's path, mode and bytes, in hex.
    hash: String,
    /// The prefix and the hash's first 12 hex digits: `isol8-agent-<12 hex>`.
    name: String,
    /// The tar the helper unpacks: the files, then the marker. No directory entries: Docker
    /// makes the parents of each file itself, which two fills at once cannot trip over (an
    /// explicit directory the other fill made a moment ago fails its `mkdir`).
    tar: Vec<u8>,
}

impl Content {
    fn new(prefix: &str) -> Content {
        let mut hasher = Sha256::new();
        for (path, mode, bytes) in FILES {
            for part in [path.as_bytes(), &mode.to_le_bytes(), bytes] {
                hasher.update((part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
        }
        let hash = hex::encode(hasher.finalize());
        let tar = pack(&hash).expect("packing in memory cannot fail");
        Content {
            name: format!("{prefix}{}", &hash[..12]),
            hash,
            tar,
        }
    }
}

/// This build's agent volume, packed once per process.
static CONTENT: LazyLock<Content> = LazyLock::new(|| Content::new(VOLUME_PREFIX));

fn pack(hash: &str) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut entry = |path: &str, mode: u32, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes)
    };
    for (path, mode, bytes) in FILES {
        entry(path, mode, bytes)?;
    }
    entry(MARKER, 0o444, hash.as_bytes())?;
    tar.into_inner()
}

/// The name of the agent volume this build of isol8 uses.
pub fn volume_name() -> &'static str {
    &CONTENT.name
}

/// The mount of the agent volume at [`AGENT_DIR`], read-only in every sandbox and proxy.
pub(crate) fn mount(read_only: bool) -> Mount {
    mount_named(volume_name(), read_only)
}

/// `no_copy`: Docker never copies what an image holds at the mount's path into the volume (an
/// image must not put files into every sandbox).
fn mount_named(name: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(AGENT_DIR.to_string()),
        source: Some(name.to_string()),
        typ: Some(MountTypeEnum::VOLUME),
        read_only: Some(read_only),
        volume_options: Some(MountVolumeOptions {
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One engine's agent volume: made sure of before its first sandbox or proxy is created.
#[derive(Debug, Default)]
pub(crate) struct AgentVolume {
    /// The current check. The cell lets one caller fill the volume while concurrent first callers
    /// wait for its answer; a failed fill leaves it empty, so the next caller tries again.
    /// `invalidate` swaps in a fresh cell (the volume was removed under a running server); the
    /// mutex guards only that swap and the clone of the `Arc`, never an `.await`.
    checked: parking_lot::Mutex<Arc<tokio::sync::OnceCell<()>>>,
    /// Set by `invalidate`: from then on an existing volume is trusted only when its marker says
    /// it is complete.
    distrust: std::sync::atomic::AtomicBool,
}

impl AgentVolume {
    /// The volume's name, once it holds this build's content. `image` (the one about to be used:
    /// any image works, as the helper never runs) makes the helper container.
    pub(crate) async fn ensure(
        &self,
        docker: &Docker,
        image: &str,
        instance: &str,
    ) -> Result<&'static str> {
        let checked = Arc::clone(&self.checked.lock());
        let trust = self.trusted();
        checked
            .get_or_try_init(|| fill(docker, image, instance, &CONTENT, trust))
            .await?;
        Ok(volume_name())
    }

    /// Whether the volume is trusted for existing, without a look inside yet.
    pub(crate) fn trusted(&self) -> bool {
        !self.distrust.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks the volume again before the next container (a sandbox failed to start: the volume
    /// may have been removed, and Docker made an empty one of the same name for the container).
    pub(crate) fn invalidate(&self) {
        self.distrust
            .store(true, std::sync::atomic::Ordering::Relaxed);
        *self.checked.lock() = Arc::default();
    }
}

/// Fills a volume named `prefix` plus the content hash with this build's agent, as every engine
/// does under [`VOLUME_PREFIX`], and returns its name: for tests of fills racing on a new volume
/// (the test removes it).
#[doc(hidden)]
pub async fn fill_volume_named(docker: &Docker, image: &str, prefix: &str) -> Result<String> {
    let content = Content::new(prefix);
    fill(docker, image, "test", &content, false).await?;
    Ok(content.name)
}

/// Creates the volume of `content` and fills it, unless it is there already: labelled as isol8's
/// (with `trust`), or complete by its marker.
async fn fill(
    docker: &Docker,
    image: &str,
    instance: &str,
    content: &Content,
    trust: bool,
) -> Result<()> {
    let labels = HashMap::from([(LABEL_MANAGED, "true"), (LABEL_KIND, KIND_AGENT)]);
    match docker.inspect_volume(&content.name).await {
        // One Docker made by itself (a container named it while it did not exist): not labelled,
        // so no cleanup would find it. Replaced when nothing uses it; otherwise filled as it is.
        Ok(volume) if volume.labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") => {
            let _ = docker.remove_volume(&content.name, None).await;
        }
        Ok(_) if trust => return Ok(()),
        Ok(_) => {}
        Err(err) if is_not_found(&err) => {}
        Err(err) => return Err(Error::docker("inspect the agent volume")(err)),
    }
    // Creating a volume that exists already (another server made it a moment ago) answers with
    // the existing one: both succeed.
    docker
        .create_volume(CreateVolumeOptions {
            name: content.name.as_str(),
            labels,
            ..Default::default()
        })
        .await
        .map_err(Error::docker("create the agent volume"))?;
    let helper = docker
        .create_container(
            None::<CreateContainerOptions<String>>,
            Config {
                image: Some(image.to_string()),
                // Never started: any image works, whatever it holds.
                entrypoint: Some(vec![AGENT_BIN.to_string()]),
                cmd: Some(vec![]),
                network_disabled: Some(true),
                labels: Some(HashMap::from([
                    (LABEL_MANAGED.to_string(), "true".to_string()),
                    (LABEL_INSTANCE.to_string(), instance.to_string()),
                    (LABEL_KIND.to_string(), KIND_AGENT_HELPER.to_string()),
                ])),
                host_config: Some(HostConfig {
                    network_mode: Some("none".to_string()),
                    mounts: Some(vec![mount_named(&content.name, false)]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .map_err(|err| match crate::error::status_of(&err) {
            Some(404) => Error::ImageMissing {
                image: image.to_string(),
            },
            _ => Error::docker("create the agent volume's helper container")(err),
        })?
        .id;
    let filled = put_content(docker, &helper, content).await;
    remove(docker, &helper).await;
    if filled.is_ok() {
        tracing::debug!(volume = %content.name, "agent volume ready");
    }
    filled
}

/// Unpacks the content into the volume mounted in `helper`, unless its marker says it is there.
/// Another server filling the same new volume at the same moment writes the same bytes; should
/// the two unpacks trip over each other, the one that failed finds the other's marker, or tries
/// once more.
async fn put_content(docker: &Docker, helper: &str, content: &Content) -> Result<()> {
    let mut tries = 0;
    loop {
        if marker(docker, helper).await?.as_deref() == Some(content.hash.as_str()) {
            return Ok(());
        }
        tracing::info!(volume = %content.name, "filling the agent volume");
        let upload = docker
            .upload_to_container(
                helper,
                Some(UploadToContainerOptions {
                    path: AGENT_DIR,
                    ..Default::default()
                }),
                content.tar.clone().into(),
            )
            .await;
        match upload {
            Ok(()) => return Ok(()),
            Err(err) if tries == 2 => return Err(Error::docker("fill the agent volume")(err)),
            Err(err) => {
                tracing::debug!(error = %err, "filling the agent volume failed; looking again");
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// The hash the volume's marker holds, or `None` when it has none.
async fn marker(docker: &Docker, helper: &str) -> Result<Option<String>> {
    let path = format!("{AGENT_DIR}/{MARKER}");
    let mut stream = docker.download_from_container(
        helper,
        Some(DownloadFromContainerOptions {
            path: path.as_str(),
        }),
    );
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => archive.extend_from_slice(&bytes),
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(Error::docker("read the agent volume")(err)),
        }
    }
    let mut tar = tar::Archive::new(archive.as_slice());
    let mut text = String::new();
    if let Some(Ok(mut entry)) = tar.entries().ok().and_then(|mut e| e.next()) {
        entry.read_to_string(&mut text).ok();
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_is_named_by_its_content_and_holds_a_static_agent() {
        let name = volume_name();
        assert!(name.starts_with(VOLUME_PREFIX), "{name}");
        assert_eq!(name.len(), VOLUME_PREFIX.len() + 12);
        assert!(CONTENT.hash.starts_with(&name[VOLUME_PREFIX.len()..]));
        assert!(AGENT_BIN.starts_with(AGENT_DIR) && KERNEL_DIR.starts_with(AGENT_DIR));
        assert_eq!(&AGENT_EXECUTABLE[..4], b"\x7fELF");
    }

    #[test]
    fn the_tar_ends_with_the_marker_and_keeps_modes() {
        let mut archive = tar::Archive::new(CONTENT.tar.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(entries.last().unwrap().0, MARKER);
        assert!(entries.contains(&("isol8-agent".into(), 0o555)));
        assert!(entries.contains(&("kernels/bash.sh".into(), 0o444)));
    }
}
