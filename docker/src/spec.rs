//! The hardened container: every setting that locks a sandbox down, and the labels that mark it as ours.

use std::collections::HashMap;

use bollard::container::Config;
use bollard::models::{HostConfig, HostConfigLogConfig, ResourcesUlimits};
use isol8_api::NetworkMode;

use crate::agent_volume::{self, SANDBOX_ENTRYPOINT};
use crate::limits::Limits;

/// Label on every container and image isol8 creates; cleanup touches nothing without it.
pub const LABEL_MANAGED: &str = "isol8.managed";
/// Label naming the engine instance that created a container (see `engine::reclaim_orphans`).
pub const LABEL_INSTANCE: &str = "isol8.instance";
pub const LABEL_RUNTIME: &str = "isol8.runtime";
pub const LABEL_KIND: &str = "isol8.kind";
/// Label naming the session a session container serves.
pub(crate) const LABEL_SESSION: &str = "isol8.session";
/// Label holding the identity (hash) of the API key a session belongs to.
pub(crate) const LABEL_OWNER: &str = "isol8.owner";
/// Label naming the server identity (`serverId`) a server session belongs to: a server restarted
/// with the same identity adopts the sessions carrying it (the instance label is per process).
pub const LABEL_SERVER: &str = "isol8.server";

/// What a container is for; decides who may remove it and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    /// A pooled or one-off sandbox: removed by its instance's shutdown, or by orphan reclaim.
    Sandbox,
    /// Kept after its run for inspection (`persist`): only `cleanup` removes it.
    Kept,
    /// A server session's container: outlives the server process (its stdin stays open when the
    /// attach closes), so a server restarted with the same identity adopts it; removed by the
    /// session's end, idle expiry, the server's `/cleanup` or `isol8 cleanup`.
    Session,
    /// A CLI session: outlives the process that made it, so later `isol8 run --session-id` calls
    /// continue it; removed by `isol8 session stop`, idle expiry or `cleanup`.
    LocalSession,
}

impl ContainerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerKind::Sandbox => "sandbox",
            ContainerKind::Kept => "kept",
            ContainerKind::Session => "session",
            ContainerKind::LocalSession => "local-session",
        }
    }
}

/// isol8's seccomp profile (`docker/seccomp.json`): what Docker's default allows a container without
/// capabilities, minus ptrace, process_vm_*, io_uring, modify_ldt, prlimit64 on other processes and
/// 32-bit ABIs. Built into the binary so no deployment can run a sandbox without it.
pub(crate) const SECCOMP_PROFILE: &str = include_str!("../seccomp.json");

/// The `security_opt` of every container isol8 runs code in (sandboxes and filtered-mode proxies).
pub(crate) fn security_options() -> Vec<String> {
    vec![
        "no-new-privileges:true".to_string(),
        format!("seccomp={SECCOMP_PROFILE}"),
    ]
}

/// Per-socket TCP buffer bounds (min, default, max bytes) inside a sandbox's network namespace:
/// 256 KiB at most instead of the kernel's 6 MiB. Public for the benchmark, whose baseline
/// download without the proxy runs under the same bounds.
pub fn socket_buffer_caps() -> HashMap<String, String> {
    ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]
        .into_iter()
        .map(|name| (name.to_string(), "4096 65536 262144".to_string()))
        .collect()
}

/// The container-level settings of a sandbox. Two runs can share a pooled container only when their
/// specs are equal; per-run limits (timeout, output cap) are enforced by the agent instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerSpec {
    pub image: String,
    pub runtime_label: String,
    pub memory_bytes: u64,
    pub nano_cpus: i64,
    pub pids: i64,
    pub sandbox_bytes: u64,
    pub tmp_bytes: u64,
    pub network: NetworkMode,
    pub kind: ContainerKind,
    /// `filtered` mode: the run's internal network, where the only other member is its proxy.
    /// Without one a filtered container gets no network at all (fail closed).
    pub filtered_network: Option<String>,
    /// Extra labels (a session's id and owner).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The image is not one of isol8's (a request named it, `allowedImages` let it): the same
    /// hardening, but no pre-started interpreter (its loader is in isol8's images only).
    pub foreign_image: bool,
}

impl ContainerSpec {
    pub fn new(image: String, runtime_label: &str, limits: &Limits, network: NetworkMode) -> Self {
        ContainerSpec {
            image,
            runtime_label: runtime_label.to_string(),
            memory_bytes: limits.memory_bytes,
            nano_cpus: (limits.cpus * 1e9) as i64,
            pids: limits.pids as i64,
            sandbox_bytes: limits.sandbox_bytes,
            tmp_bytes: limits.tmp_bytes,
            network,
            kind: ContainerKind::Sandbox,
            filtered_network: None,
            labels: Default::default(),
            foreign_image: false,
        }
    }

    /// Containers that die with their instance also die with their connection: when the process
    /// holding the attach goes away (exit, crash, or the engine done with it), stdin closes, the
    /// agent exits and Docker removes the container. Kept containers and sessions must outlive
    /// the process.
    pub(crate) fn ends_with_connection(&self) -> bool {
        self.kind == ContainerKind::Sandbox
    }

    /// The Docker create body: read-only root, tmpfs work dirs, unprivileged user (`uid`, the
    /// sandbox's own: see `uids.rs`), no capabilities, no-new-privileges, isol8's seccomp profile,
    /// pids/memory (no swap)/CPU limits, no network; the agent volume (`agent_volume.rs`) mounted
    /// read-only.
    pub fn to_config(&self, instance: &str, oci_runtime: Option<&str>, uid: u32) -> Config<String> {
        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_RUNTIME.to_string(), self.runtime_label.clone()),
            (LABEL_KIND.to_string(), self.kind.as_str().to_string()),
        ]);
        labels.extend(self.labels.clone());
        let tmpfs = HashMap::from([
            (
                "/sandbox".to_string(),
                format!(
                    "rw,exec,nosuid,nodev,size={},uid={uid},gid={uid},mode=0755",
                    self.sandbox_bytes
                ),
            ),
            (
                "/tmp".to_string(),
                format!("rw,exec,nosuid,nodev,size={},mode=1777", self.tmp_bytes),
            ),
        ]);
        let network_mode = match (self.network, &self.filtered_network) {
            (NetworkMode::None, _) | (NetworkMode::Filtered, None) => "none",
            (NetworkMode::Host, _) => "host",
            (NetworkMode::Filtered, Some(name)) => name.as_str(),
        };
        let memory = i64::try_from(self.memory_bytes).unwrap_or(i64::MAX);
        let ends_with_connection = self.ends_with_connection();
        let host_config = HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            memory_swappiness: Some(0),
            nano_cpus: Some(self.nano_cpus),
            pids_limit: Some(self.pids),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            mounts: Some(vec![agent_volume::mount(true)]),
            shm_size: Some(64 * 1024 * 1024),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(security_options()),
            network_mode: Some(network_mode.to_string()),
            // Filtered: names resolve nowhere (Docker's resolver forwards to this dead address), so
            // DNS cannot carry data out; the proxy resolves for the program.
            dns: (self.network == NetworkMode::Filtered).then(|| vec!["127.0.0.1".to_string()]),
            // …and fail fast instead of retrying for ten seconds.
            dns_options: (self.network == NetworkMode::Filtered)
                .then(|| vec!["timeout:1".to_string(), "attempts:1".to_string()]),
            ipc_mode: Some("private".to_string()),
            ulimits: Some(vec![
                ResourcesUlimits {
                    name: Some("core".into()),
                    soft: Some(0),
                    hard: Some(0),
                },
                ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(1024),
                    hard: Some(4096),
                },
            ]),
            // Nothing a sandbox writes lands on the host's disk: the agent's stdout (programs'
            // output before masking) is read over the attach stream, never logged.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_string()),
                config: None,
            }),
            // Socket buffers are kernel memory the memory limit does not count on cgroup v1
            // hosts: cap each TCP socket's (the container's own network namespace).
            sysctls: (self.network != NetworkMode::Host).then(socket_buffer_caps),
            runtime: oci_runtime.map(str::to_string),
            init: Some(false),
            auto_remove: Some(ends_with_connection),
            privileged: Some(false),
            ..Default::default()
        };
        Config {
            image: Some(self.image.clone()),
            entrypoint: Some(SANDBOX_ENTRYPOINT.iter().map(|s| s.to_string()).collect()),
            cmd: Some(vec![]),
            user: Some(format!("{uid}:{uid}")),
            // The uid has no passwd entry; programs asking who they are by name get this. HOME
            // is the writable work dir whatever the image says (often /root, read-only here).
            env: Some(vec![
                "USER=sandbox".to_string(),
                "LOGNAME=sandbox".to_string(),
                "HOME=/sandbox".to_string(),
            ]),
            working_dir: Some("/sandbox".to_string()),
            hostname: Some("sandbox".to_string()),
            network_disabled: Some(self.network == NetworkMode::None),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(ends_with_connection),
            tty: Some(false),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}
