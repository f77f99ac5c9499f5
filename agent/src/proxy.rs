//! `isol8-agent proxy`: the filtered-mode egress proxy, the only thing a filtered sandbox can
//! reach. It runs in its own container, on the sandbox's internal network and on one with a way
//! out. A request passes when its hostname fully matches an allow pattern and no deny pattern
//! (deny wins; no allow patterns means nothing passes), and when every address the name resolves
//! to is public, unless an allow pattern names that exact address. Plain HTTP is forwarded, one
//! request per connection; HTTPS goes through CONNECT (the hostname is checked, the bytes are
//! not inspected). Each request is logged as one JSON line on stdout.
//!
//! Config (env `ISOL8_PROXY_RULES`): `{"allow": [regex], "deny": [regex], "never": [ip],
//! "neverNets": [cidr], "listenSubnet": cidr}`.

mod conn;
mod dns;
mod http;
mod log;
mod relay;
mod rules;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::net::TcpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

const PORT: u16 = 3128;
/// Connections served at once; more wait in the kernel's backlog. Each costs up to two relay
/// buffers, so this bounds the proxy's memory (its container has 128 MiB).
const MAX_CONNECTIONS: usize = 256;

pub(crate) fn main() -> ExitCode {
    let rules = match rules::Rules::from_json(std::env::var("ISOL8_PROXY_RULES").ok().as_deref()) {
        Ok(rules) => rules,
        Err(why) => {
            eprintln!("isol8-agent proxy: {why}");
            return ExitCode::from(2);
        }
    };
    // One thread: a proxy serves one sandbox, and relaying is bounded by the network, not the CPU.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("isol8-agent proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(rules)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("isol8-agent proxy: {why}");
            ExitCode::from(1)
        }
    }
}

async fn serve(rules: rules::Rules) -> Result<(), String> {
    let address = match rules.listen_subnet {
        Some(subnet) => listen_address(subnet)?,
        None => Ipv4Addr::UNSPECIFIED,
    };
    let socket = TcpSocket::new_v4().map_err(|e| format!("cannot open a socket: {e}"))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| format!("cannot set SO_REUSEADDR: {e}"))?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(address), PORT))
        .map_err(|e| format!("cannot listen on {address}:{PORT}: {e}"))?;
    let listener = socket
        .listen(1024)
        .map_err(|e| format!("cannot listen on {address}:{PORT}: {e}"))?;
    let policy = Arc::new(conn::Policy {
        rules,
        dns: dns::Dns::from_system()?,
    });
    // The engine asks for the end of a run's log with SIGUSR1 (log::END); the handler is in place
    // before the engine can know the proxy is ready.
    let mut end_requests =
        signal(SignalKind::user_defined1()).map_err(|e| format!("cannot handle SIGUSR1: {e}"))?;
    tokio::spawn(async move {
        while end_requests.recv().await.is_some() {
            log::end();
        }
    });
    // Only once it listens: the sandbox may connect right away.
    log::line(&serde_json::json!({"ready": true}));
    // Permits for MAX_CONNECTIONS: one is taken before each accept and released when its
    // connection's task ends.
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .map_err(|_| "the connection slots closed".to_string())?;
        match listener.accept().await {
            // One task per connection; it owns its socket and its slot.
            Ok((client, _)) => {
                let policy = Arc::clone(&policy);
                tokio::spawn(async move {
                    conn::handle(client, &policy).await;
                    drop(slot);
                });
            }
            // Out of descriptors, or a connection reset before it was taken: wait, go on.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// This proxy's address on its run's network (the subnet the engine names): the only place it
/// listens, so no other run's sandbox or proxy, which reach it only over Docker's bridge, can use
/// it. The kernel's route to the subnet picks the address; no packet is sent.
fn listen_address(subnet: Ipv4Net) -> Result<Ipv4Addr, String> {
    let probe_to = Ipv4Addr::from(u32::from(subnet.broadcast()).wrapping_sub(1));
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|probe| probe.connect((probe_to, 9)).map(|()| probe))
        .and_then(|probe| probe.local_addr())
        .map_err(|e| format!("cannot find this container's address in {subnet}: {e}"))?;
    match probe.ip() {
        IpAddr::V4(address) => Ok(address),
        IpAddr::V6(address) => Err(format!("the route to {subnet} picked {address}")),
    }
}
