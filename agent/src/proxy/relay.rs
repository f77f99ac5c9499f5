//! Moving bytes between the client and the server: the blind tunnel after CONNECT, the copy of an
//! answer, and the idle timeout they share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection on which nothing moved for this long ends (proxy.py's `select` timeout).
pub(crate) const IDLE: Duration = Duration::from_secs(300);
/// Each direction's buffer: large, so a fast download costs few system calls per megabyte.
pub(crate) const BUFFER: usize = 128 * 1024;

/// When bytes last moved on one connection, for its idle timeout. Written by the copies and read
/// by `idle`, all futures of the connection's one task; an atomic only because they share it
/// by reference.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    pub(crate) async fn idle(&self, limit: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s sending side (a half-close, so the
/// other direction can still finish).
pub(crate) async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    buf: &mut [u8],
    activity: &Activity,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let n = from.read(buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        activity.touch();
        to.write_all(&buf[..n]).await?;
        activity.touch();
    }
}

/// The blind tunnel after CONNECT: both directions until both ended, one failed, or the
/// connection was idle for `IDLE`.
pub(crate) async fn tunnel(client: &mut TcpStream, upstream: &mut TcpStream, activity: &Activity) {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let mut up = vec![0u8; BUFFER];
    let mut down = vec![0u8; BUFFER];
    let both = async {
        tokio::try_join!(
            pump(&mut client_read, &mut upstream_write, &mut up, activity),
            pump(&mut upstream_read, &mut client_write, &mut down, activity),
        )
    };
    tokio::select! {
        _ = both => {}
        () = activity.idle(IDLE) => {}
    }
}
