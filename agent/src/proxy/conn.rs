//! One client connection: read its request, decide, log, then refuse it, tunnel it (CONNECT) or
//! forward its one plain-HTTP request and the answer.

use std::net::Ipv4Addr;
use std::pin::pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::dns::Dns;
use super::http::{self, Body, BodyError, Head, HeadError, MAX_HEAD};
use super::log::{Action, Entry};
use super::relay::{self, Activity, BUFFER, IDLE};
use super::rules::Rules;

/// How long an upstream connection may take to open (proxy.py's `create_connection` timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client's leftover bytes are read after the proxy's last answer byte, so closing
/// does not reset the connection before the client has read that answer.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read and dropped while lingering.
const LINGER_BYTES: usize = 1024 * 1024;

/// The policy every connection of this proxy applies.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) rules: Rules,
    pub(crate) dns: Dns,
}

pub(crate) async fn handle(mut client: TcpStream, policy: &Policy) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    // The hop to the sandbox is a veth pair on one host, where a pacing congestion control (BBR,
    // a common host default) only adds timers: cubic costs the proxy about a tenth less CPU per
    // byte relayed. Best effort; the upstream side keeps the host's choice.
    let _ = rustix::net::sockopt::set_tcp_congestion(&client, "cubic");
    let mut buf = Vec::with_capacity(4096);
    let (head, head_len) = match http::read_head(&mut client, &mut buf, IDLE).await {
        Ok(found) => found,
        Err(HeadError::Closed | HeadError::Idle) => return,
        Err(HeadError::TooLarge) => {
            let why =
                format!("malformed request: the request head is larger than {MAX_HEAD} bytes");
            return refuse(&mut client, 431, &why).await;
        }
        Err(HeadError::Malformed(what)) => {
            return refuse(&mut client, 400, &format!("malformed request: {what}")).await
        }
    };
    let leftover = buf.split_off(head_len);
    let connect = head.method == "CONNECT";
    let (host, port, target) = if connect {
        let (host, port) = http::split_authority(&head.target);
        (http::normalize_host(host), port, None)
    } else {
        let target = http::split_target(&head.target);
        let host = http::normalize_host(target.host.clone());
        (host, target.port.clone(), Some(target))
    };
    let path = target.as_ref().map(|t| t.path.as_slice());
    let mut entry = Entry::new(started, head.method.as_bytes(), &host, path);
    let decided = decide(policy, &head, &host, port, connect).await;
    let (addresses, port, framing) = match decided {
        Ok(decided) => decided,
        Err((code, reason)) => {
            // Logged before the answer: a program that ends on it must not end its run before
            // the line is written (the run's network log is read as soon as the run ends).
            entry.log(Action::Block, Some(reason.clone()));
            return refuse(&mut client, code, &reason).await;
        }
    };
    let mut upstream = match open(&addresses, port).await {
        Ok(upstream) => upstream,
        Err(why) => {
            entry.log(Action::Allow, Some("unreachable".into()));
            return refuse(&mut client, 502, &format!("cannot connect: {why}")).await;
        }
    };
    // Logged when decided, so a long-lived tunnel shows up at once.
    entry.log(Action::Allow, None);
    let activity = Activity::new();
    match target {
        None => {
            let opened = client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            if opened.is_ok() && upstream.write_all(&leftover).await.is_ok() {
                relay::tunnel(&client, &upstream, &activity).await;
            }
        }
        Some(target) => {
            let request = http::upstream_head(&head, &target, &host, port);
            forward(
                &mut client,
                &mut upstream,
                &request,
                &leftover,
                framing,
                &activity,
            )
            .await;
        }
    }
}

/// Whether the request may go on: its addresses, port and body framing, or the answer's code
/// and why not. The order is proxy.py's: the host, then (new) the request's own form, then the
/// addresses it resolves to.
async fn decide(
    policy: &Policy,
    head: &Head,
    host: &[u8],
    port: Result<u16, String>,
    connect: bool,
) -> Result<(Vec<Ipv4Addr>, u16, Body), (u16, String)> {
    let not_plain = || (403, "not a plain hostname or IPv4 address".to_string());
    let host = std::str::from_utf8(host).map_err(|_| not_plain())?;
    policy
        .rules
        .check_host(host)
        .map_err(|reason| (403, reason.to_string()))?;
    let malformed = |what: String| (400, format!("malformed request: {what}"));
    let port = port.map_err(malformed)?;
    let framing = if connect {
        Body::None
    } else {
        http::body_framing(head).map_err(malformed)?
    };
    let addresses = policy.dns.addresses(host).await.map_err(|r| (403, r))?;
    policy
        .rules
        .check_addresses(&addresses)
        .map_err(|r| (403, r))?;
    Ok((addresses, port, framing))
}

/// A connection to the first of the checked addresses that answers: never a new lookup, so a
/// name cannot re-resolve between the check and the connection.
async fn open(addresses: &[Ipv4Addr], port: u16) -> Result<TcpStream, String> {
    let mut last = "no address".to_string();
    for &address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((address, port))).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
    }
    Err(last)
}

/// One plain-HTTP request: its head, exactly its one body, then nothing more from the client (a
/// pipelined request is read and dropped, never sent), while the answer is copied back until the
/// server ends it.
async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    request: &[u8],
    leftover: &[u8],
    framing: Body,
    activity: &Activity,
) {
    let (client_read, client_write) = client.split();
    let (upstream_read, mut upstream_write) = upstream.split();
    if upstream_write.write_all(request).await.is_err() {
        return;
    }
    let mut from_client = BufReader::with_capacity(BUFFER, leftover.chain(client_read));
    let sent = async {
        http::copy_body(&mut from_client, &mut upstream_write, framing, activity).await?;
        discard(&mut from_client, usize::MAX).await?;
        Ok::<(), BodyError>(())
    };
    let answer = relay::pump(upstream_read.as_ref(), client_write.as_ref(), activity);
    let (mut sent, mut answer) = (pin!(sent), pin!(answer));
    let mut client_done = false;
    loop {
        tokio::select! {
            result = &mut sent, if !client_done => match result {
                // The client ended its side after its request: the answer may still come.
                Ok(()) => client_done = true,
                // A broken or malformed body, or a failed connection: the request is abandoned.
                Err(_) => return,
            },
            _ = &mut answer => {
                if !client_done {
                    let _ = tokio::time::timeout(LINGER, &mut sent).await;
                }
                return;
            }
            () = activity.idle(IDLE) => return,
        }
    }
}

/// Reads and drops what the client sends until it ends (or `limit` bytes).
async fn discard<R: AsyncBufReadExt + Unpin>(reader: &mut R, limit: usize) -> std::io::Result<()> {
    let mut dropped = 0;
    while dropped < limit {
        let n = reader.fill_buf().await?.len();
        if n == 0 {
            break;
        }
        reader.consume(n);
        dropped += n;
    }
    Ok(())
}

/// proxy.py's refusal: the code, a one-line body saying why, and the end of the connection.
async fn refuse(client: &mut TcpStream, code: u16, reason: &str) {
    let status = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let body = format!("isol8 filtered network: {reason}\n");
    let answer = format!(
        "HTTP/1.1 {code} {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if client.write_all(answer.as_bytes()).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    // What the client still sends (a body) is drained for a moment: closing with unread bytes
    // would reset the connection, and the client could lose the answer.
    let mut rest = BufReader::new(client);
    let _ = tokio::time::timeout(LINGER, discard(&mut rest, LINGER_BYTES)).await;
}
