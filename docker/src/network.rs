//! `filtered` networking: a per-run internal Docker network whose only other member is a proxy
//! container (`isol8-agent proxy`, agent/src/proxy/) that applies the allow/deny rules. The sandbox has no route
//! anywhere else and no working DNS, so the rules cannot be walked around with a raw socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::{Config, CreateContainerOptions, KillContainerOptions, LogsOptions};
use bollard::models::HostConfig;
use bollard::network::{ConnectNetworkOptions, CreateNetworkOptions};
use bollard::Docker;
use futures::StreamExt;
use isol8_api::NetworkLogEntry;
use parking_lot::Mutex;
use tokio_util::task::AbortOnDropHandle;

use crate::agent::remove;
use crate::agent_volume::{self, PROXY_ENTRYPOINT};
use crate::error::{Error, Result};
use crate::spec::{LABEL_INSTANCE, LABEL_KIND, LABEL_MANAGED};

pub(crate) const PROXY_PORT: u16 = 3128;
/// Every filtered run's network is named this plus a random suffix.
pub(crate) const NETWORK_PREFIX: &str = "isol8-net-";
/// `isol8.kind` of a filtered run's network, of its proxy and of the host-address probe.
pub(crate) const KIND_NETWORK: &str = "filtered-network";
pub(crate) const KIND_PROXY: &str = "proxy";
const KIND_PROBE: &str = "probe";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The MTU of a filtered run's network (between its sandbox and its proxy only).
const RUN_NETWORK_MTU: &str = "65520";
/// The proxy's line that ends a run's log (agent/src/proxy/log.rs, `END`).
const LOG_END: &str = r#"{"end":true}"#;
/// How long the end of a run's network log may take to come through Docker's log.
const LOG_END_WITHIN: Duration = Duration::from_secs(3);

/// One run's network and proxy; `teardown` removes both.
#[derive(Debug)]
pub(crate) struct FilteredNetwork {
    pub name: String,
    proxy_id: String,
    /// The proxy's address on the internal network, for the program's `HTTP(S)_PROXY`.
    pub proxy_ip: String,
}

impl FilteredNetwork {
    /// Creates the internal network and starts the proxy with `allow`/`deny` on it. Any failure
    /// removes what was made and refuses the run: never a weaker policy.
    pub(crate) async fn create(
        docker: &Docker,
        instance: &str,
        image: &str,
        allow: &[String],
        deny: &[String],
        never_nets: &[String],
        service_uid: u32,
    ) -> Result<FilteredNetwork> {
        let name = format!(
            "{NETWORK_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let labels = HashMap::from([
            (LABEL_MANAGED, "true"),
            (LABEL_INSTANCE, instance),
            (LABEL_KIND, KIND_NETWORK),
        ]);
        // No address for the host on this bridge: the proxy is the only thing the sandbox can reach.
        // Its MTU is loopback's: the two ends share the host's memory, and a packet per 64 KiB
        // rather than per 1.5 KiB halves the sandbox's acknowledgements, which cost the proxy about
        // a sixth of its CPU per byte relayed.
        let options = HashMap::from([
            ("com.docker.network.bridge.inhibit_ipv4", "true"),
            ("com.docker.network.driver.mtu", RUN_NETWORK_MTU),
        ]);
        docker
            .create_network(CreateNetworkOptions {
                name: name.as_str(),
                internal: true,
                enable_ipv6: false,
                labels,
                options,
                ..Default::default()
            })
            .await
            .map_err(refused("create the run's internal network"))?;
        let proxy = Self::start_proxy(
            docker,
            instance,
            image,
            &name,
            (allow, deny, never_nets),
            service_uid,
        );
        match proxy.await {
            Ok((proxy_id, proxy_ip)) => Ok(FilteredNetwork {
                name,
                proxy_id,
                proxy_ip,
            }),
            Err(err) => {
                let _ = docker.remove_network(&name).await;
                Err(err)
            }
        }
    }

    async fn start_proxy(
        docker: &Docker,
        instance: &str,
        image: &str,
        network: &str,
        (allow, deny, never_nets): (&[String], &[String], &[String]),
        service_uid: u32,
    ) -> Result<(String, String)> {
        // Never a target, whatever the rules: the host's addresses on Docker's networks (the
        // gateways) and on every interface of the Docker host.
        let networks = docker
            .list_networks::<String>(None)
            .await
            .map_err(refused("list Docker's networks"))?;
        let mut never = Vec::new();
        let mut listen_subnet = None;
        for network_info in networks {
            let is_ours = network_info.name.as_deref() == Some(network);
            for config in network_info
                .ipam
                .and_then(|i| i.config)
                .into_iter()
                .flatten()
            {
                never.extend(config.gateway);
                if is_ours {
                    listen_subnet = config.subnet;
                }
            }
        }
        // The proxy listens only on the run's own network: reachable from its sandbox alone.
        let listen_subnet = listen_subnet.ok_or_else(|| {
            Error::NetworkSetup("the run's network has no subnet; refusing the run".into())
        })?;
        let rules = serde_json::json!({"allow": allow, "deny": deny, "never": never,
            "neverNets": never_nets, "listenSubnet": listen_subnet})
        .to_string();
        let config = Config {
            image: Some(image.to_string()),
            entrypoint: Some(PROXY_ENTRYPOINT.iter().map(|s| s.to_string()).collect()),
            cmd: Some(vec![]),
            env: Some(vec![format!("ISOL8_PROXY_RULES={rules}")]),
            user: Some(format!("{service_uid}:{service_uid}")),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_INSTANCE.to_string(), instance.to_string()),
                (LABEL_KIND.to_string(), KIND_PROXY.to_string()),
            ])),
            host_config: Some(HostConfig {
                // The way out: Docker's default bridge. The sandbox's side is connected below.
                network_mode: Some("bridge".into()),
                readonly_rootfs: Some(true),
                mounts: Some(vec![agent_volume::mount(true)]),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(crate::spec::security_options()),
                memory: Some(128 * 1024 * 1024),
                pids_limit: Some(128),
                // Its log is the run's network log: bounded (the proxy logs at most 1000
                // requests) and rotated, so it cannot fill the host's disk.
                log_config: Some(bollard::models::HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([("max-size".into(), "2m".into())])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = docker
            .create_container(None::<CreateContainerOptions<String>>, config)
            .await
            .map_err(refused("create the network proxy"))?
            .id;
        let started = async {
            docker
                .connect_network(
                    network,
                    ConnectNetworkOptions {
                        container: id.as_str(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(refused("connect the proxy to the run's network"))?;
            docker
                .start_container::<String>(&id, None)
                .await
                .map_err(refused("start the network proxy"))?;
            wait_ready(docker, &id).await?;
            let inspect = docker
                .inspect_container(&id, None)
                .await
                .map_err(refused("inspect the network proxy"))?;
            inspect
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(network))
                .and_then(|n| n.ip_address)
                .filter(|ip| !ip.is_empty())
                .ok_or_else(|| {
                    Error::NetworkSetup("the network proxy got no address; refusing the run".into())
                })
        };
        match started.await {
            Ok(ip) => Ok((id, ip)),
            Err(err) => {
                remove(docker, &id).await;
                Err(err)
            }
        }
    }

    /// The environment that sends the program's HTTP and HTTPS through the proxy.
    pub(crate) fn proxy_env(&self) -> Vec<(String, String)> {
        let url = format!("http://{}:{PROXY_PORT}", self.proxy_ip);
        [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .into_iter()
        .map(|k| (k.to_string(), url.clone()))
        .chain([
            ("NO_PROXY".into(), String::new()),
            ("no_proxy".into(), String::new()),
        ])
        .collect()
    }

    /// Follows the proxy's log from its start: each request it logs is sent as a run event as it
    /// comes, and kept for `NetworkLog::finish`.
    pub(crate) fn follow(
        &self,
        docker: Docker,
        tx: tokio::sync::mpsc::Sender<crate::RunEvent>,
        masked: Vec<String>,
    ) -> NetworkLog {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(follow_logs(
            docker,
            self.proxy_id.clone(),
            tx,
            masked,
            Arc::clone(&entries),
        ));
        NetworkLog {
            proxy: self.proxy_id.clone(),
            task: AbortOnDropHandle::new(task),
            entries,
        }
    }

    /// Removes the proxy and the network (call after the sandbox is gone).
    pub(crate) async fn teardown(self, docker: &Docker) {
        remove(docker, &self.proxy_id).await;
        if let Err(err) = docker.remove_network(&self.name).await {
            tracing::warn!(network = %self.name, error = %err, "could not remove the run's network");
        }
    }
}

/// A run's network log, followed from the run's start until `finish` (dropped, it stops).
pub(crate) struct NetworkLog {
    proxy: String,
    task: AbortOnDropHandle<()>,
    /// Pushed to by the follower task, taken by `finish`; never held across an `.await`.
    entries: Arc<Mutex<Vec<NetworkLogEntry>>>,
}

impl NetworkLog {
    /// Every request the proxy logged until now. Docker copies a container's output to its log
    /// on its own time, so a line the proxy wrote before the run ended may not be readable yet:
    /// the proxy is asked (SIGUSR1) to write its end line, and the log is read up to it, for at
    /// most `LOG_END_WITHIN`.
    pub(crate) async fn finish(mut self, docker: &Docker) -> Vec<NetworkLogEntry> {
        let options = KillContainerOptions { signal: "SIGUSR1" };
        match docker.kill_container(&self.proxy, Some(options)).await {
            Ok(()) => {
                if tokio::time::timeout(LOG_END_WITHIN, &mut self.task)
                    .await
                    .is_err()
                {
                    tracing::warn!(proxy = %self.proxy, "the network log did not come to its end; returning what was read");
                }
            }
            // A proxy that is gone has no more to write; what was read is the log.
            Err(err) => {
                tracing::warn!(proxy = %self.proxy, error = %err, "could not ask the proxy to end its log")
            }
        }
        std::mem::take(&mut *self.entries.lock())
    }
}

/// Reads the proxy's log from its start until `LOG_END`, sending each request line as a run event
/// and keeping it in `entries`.
async fn follow_logs(
    docker: Docker,
    proxy: String,
    tx: tokio::sync::mpsc::Sender<crate::RunEvent>,
    masked: Vec<String>,
    entries: Arc<Mutex<Vec<NetworkLogEntry>>>,
) {
    let mut stream = docker.logs::<String>(
        &proxy,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            since: 0,
            ..Default::default()
        }),
    );
    let mut pending = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if line.trim_end() == LOG_END {
                return;
            }
            if let Ok(entry) = serde_json::from_str::<NetworkLogEntry>(&line) {
                let entry = mask_entry(entry, &masked);
                entries.lock().push(entry.clone());
                if tx.send(crate::RunEvent::Network(entry)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A log entry with the run's secrets masked: a program may put one in a hostname or a path.
fn mask_entry(mut entry: NetworkLogEntry, masked: &[String]) -> NetworkLogEntry {
    if !masked.is_empty() {
        entry.host = crate::OutputFilter::mask_text(masked, &entry.host);
        entry.path = entry
            .path
            .map(|p| crate::OutputFilter::mask_text(masked, &p));
    }
    entry
}

async fn wait_ready(docker: &Docker, id: &str) -> Result<()> {
    let mut stream = docker.logs::<String>(
        id,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    let ready = async {
        let mut seen = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if seen.contains("\"ready\"") {
                return Ok(());
            }
        }
        Err(Error::NetworkSetup(format!(
            "the network proxy did not start; refusing the run: {}",
            seen.trim()
        )))
    };
    tokio::time::timeout(READY_TIMEOUT, ready)
        .await
        .unwrap_or(Err(Error::Timeout {
            what: "network proxy start",
            after: READY_TIMEOUT,
        }))
}

/// A failure to set up the policy refuses the run and says why.
fn refused(action: &'static str) -> impl FnOnce(bollard::errors::Error) -> Error {
    move |err| {
        Error::NetworkSetup(format!(
            "could not {action} for filtered networking, so the run is refused: {err}"
        ))
    }
}

/// The Docker host's own addresses (IPv4, every interface, as `/32` networks), learned once in a
/// while from a short-lived container on the host's network, so a remote Docker host is covered
/// too. The proxy refuses them all, whatever a run's rules say.
#[derive(Debug, Default)]
pub(crate) struct HostAddresses {
    /// When they were last read, and what; a mutex held only to copy or store.
    cached: parking_lot::Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

/// How long the host's addresses are trusted before they are read again.
const HOST_ADDRESSES_TTL: Duration = Duration::from_secs(30);

impl HostAddresses {
    pub(crate) async fn get(
        &self,
        docker: &Docker,
        image: &str,
        instance: &str,
        service_uid: u32,
    ) -> Result<Vec<String>> {
        let fresh = |c: &Option<(std::time::Instant, Vec<String>)>| {
            c.as_ref()
                .filter(|(at, _)| at.elapsed() < HOST_ADDRESSES_TTL)
                .map(|(_, a)| a.clone())
        };
        if let Some(found) = fresh(&self.cached.lock()) {
            return Ok(found);
        }
        let found = read_host_addresses(docker, image, instance, service_uid).await?;
        *self.cached.lock() = Some((std::time::Instant::now(), found.clone()));
        Ok(found)
    }
}

async fn read_host_addresses(
    docker: &Docker,
    image: &str,
    instance: &str,
    service_uid: u32,
) -> Result<Vec<String>> {
    let config = Config {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["cat".into(), "/proc/net/fib_trie".into()]),
        cmd: Some(vec![]),
        user: Some(format!("{service_uid}:{service_uid}")),
        labels: Some(HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_KIND.to_string(), KIND_PROBE.to_string()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(crate::spec::security_options()),
            memory: Some(32 * 1024 * 1024),
            pids_limit: Some(8),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(None::<CreateContainerOptions<String>>, config)
        .await
        .map_err(refused("create the host-address probe"))?
        .id;
    let read = async {
        docker
            .start_container::<String>(&id, None)
            .await
            .map_err(refused("start the host-address probe"))?;
        let mut wait = docker.wait_container::<String>(&id, None);
        while let Some(step) = wait.next().await {
            step.map_err(refused("run the host-address probe"))?;
        }
        let mut logs = docker.logs::<String>(
            &id,
            Some(LogsOptions {
                stdout: true,
                ..Default::default()
            }),
        );
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.extend_from_slice(&chunk.into_bytes());
        }
        Ok(local_addresses(&String::from_utf8_lossy(&text)))
    };
    let found = read.await;
    remove(docker, &id).await;
    found
}

/// The `/32 host LOCAL` entries of `/proc/net/fib_trie`: every IPv4 address of the host.
fn local_addresses(fib_trie: &str) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut last = None;
    for line in fib_trie.lines() {
        let line = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if line.parse::<std::net::Ipv4Addr>().is_ok() {
            last = Some(line.to_string());
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = last.take() {
                found.insert(format!("{address}/32"));
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::local_addresses;

    #[test]
    fn every_local_address_of_the_fib_trie_is_found() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 10.0.2.0/24 2 0 2\n        |-- 10.0.2.15\n           /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 198.51.100.1\n        /32 host LOCAL\n";
        assert_eq!(
            local_addresses(trie),
            ["10.0.2.15/32", "127.0.0.1/32", "198.51.100.1/32"]
        );
    }
}
