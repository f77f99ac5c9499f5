//! What the sandbox settings depend on about the Docker host (user-namespace remapping, the cgroup
//! version), read once from `docker info`.

use bollard::models::SystemInfoCgroupVersionEnum;
use bollard::Docker;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DockerHost {
    /// Containers run in a user namespace (userns-remap, rootless Docker): they see only the
    /// uids mapped to them.
    pub remapped_users: bool,
    /// cgroup v1: socket buffers are not charged to a container's memory limit unless a TCP
    /// kernel-memory limit is set (cgroup v2 charges them always).
    pub cgroup_v1: bool,
}

impl DockerHost {
    /// Asks Docker. When it cannot be asked, the safe reading for each fact: no remapping (uids
    /// outside 65536 then fail the create loudly rather than share a uid) and cgroup v2 (no
    /// setting Docker could refuse).
    pub(crate) async fn read(docker: &Docker) -> DockerHost {
        match docker.info().await {
            Ok(info) => {
                DockerHost {
                    remapped_users: info.security_options.unwrap_or_default().iter().any(
                        |option| {
                            option
                                .split(',')
                                .any(|part| part == "name=userns" || part == "name=rootless")
                        },
                    ),
                    cgroup_v1: info.cgroup_version == Some(SystemInfoCgroupVersionEnum::_1),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "docker info failed; assuming cgroup v2 without user namespaces");
                DockerHost::default()
            }
        }
    }
}

/// What all of a sandbox's TCP sockets may hold in buffers on a cgroup v1 host: a quarter of its
/// memory limit, at least 16 MiB (a few busy connections need a few MiB).
pub(crate) fn socket_memory_cap(memory_bytes: u64) -> u64 {
    (memory_bytes / 4).max(16 * 1024 * 1024)
}

/// Bounds the TCP buffers of a started container's sockets together, on a cgroup v1 Docker host
/// this process can see. cgroup v1 accounts socket memory only under a TCP kernel-memory limit,
/// and runc (1.1 and later) ignores Docker's `KernelMemoryTCP`, so isol8 writes the limit itself
/// into the container's memory cgroup (the cgroupfs or the systemd driver's default place).
/// Sockets opened before it is set are not counted: call it before the sandbox runs anything.
pub(crate) fn limit_socket_memory(container_id: &str, bytes: u64) -> Result<(), String> {
    let root = std::path::Path::new("/sys/fs/cgroup/memory");
    let candidates = [
        root.join("docker").join(container_id),
        root.join("system.slice")
            .join(format!("docker-{container_id}.scope")),
    ];
    let Some(dir) = candidates.iter().find(|dir| dir.is_dir()) else {
        return Err("its memory cgroup is not visible from this process".into());
    };
    std::fs::write(
        dir.join("memory.kmem.tcp.limit_in_bytes"),
        bytes.to_string(),
    )
    .map_err(|e| format!("writing {}: {e}", dir.display()))
}
