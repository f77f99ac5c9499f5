//! Moving bytes between the client and the server: the blind tunnel after CONNECT, the copy of an
//! answer, and the idle timeout they share. Bytes go socket to pipe to socket with `splice(2)`,
//! so they never enter the proxy's memory (a copy through a buffer costs about twice the CPU).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fd::{AsFd, OwnedFd};
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection on which nothing moved for this long ends (proxy.py's `select` timeout).
pub(crate) const IDLE: Duration = Duration::from_secs(300);
/// The buffer of a copy that cannot splice, and of a request body's reader.
pub(crate) const BUFFER: usize = 128 * 1024;
/// How much one splice moves at most, and the size a bulk transfer's pipe grows to where the
/// kernel allows it (`fs.pipe-max-size`, 1 MiB by default). Measured on a 50 MB download, a
/// 1 MiB pipe costs the proxy about a fifth less CPU per byte than a 256 KiB one: fewer, larger
/// splices and sends.
const PIPE: usize = 1024 * 1024;
/// A copy counts as a bulk transfer once it moved this much without a pause (see `BULK_WAIT`).
/// Its pipe then grows to `PIPE`: the kernel counts pipe pages per user (64 MiB before it refuses
/// to grow one), and every proxy of a host runs as one uid, so only bulk transfers take large
/// pipes.
const BULK_AFTER: usize = 1024 * 1024;
/// In a bulk transfer the proxy wakes once this much has arrived (`SO_RCVLOWAT`) instead of for
/// every segment: fewer wake-ups, splices and window updates per byte.
const BULK_WAKE: usize = 256 * 1024;
/// ... or once it has waited this long, so the end of a burst is held back no longer. A wait
/// that ends with nothing there ends the bulk transfer.
const BULK_WAIT: Duration = Duration::from_millis(1);

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
pub(crate) async fn pump(from: &TcpStream, to: &TcpStream, activity: &Activity) -> io::Result<()> {
    match pipe() {
        Ok(pipe) => splice_all(from, to, &pipe, activity).await?,
        // Out of descriptors for a pipe: the same through a buffer.
        Err(_) => copy_all(from, to, activity).await?,
    }
    rustix::net::shutdown(to, rustix::net::Shutdown::Write)?;
    Ok(())
}

/// A non-blocking pipe (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(Into::into)
}

async fn splice_all(
    from: &TcpStream,
    to: &TcpStream,
    (pipe_read, pipe_write): &(OwnedFd, OwnedFd),
    activity: &Activity,
) -> io::Result<()> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let splice_in = || rustix::pipe::splice(from, None, pipe_write, None, PIPE, flags);
    let (mut moved, mut grown, mut bulk) = (0usize, false, false);
    loop {
        if !bulk && moved >= BULK_AFTER {
            // Best effort (the pipe is empty here): the default size works too, with more calls.
            if !grown {
                let _ = rustix::pipe::fcntl_setpipe_size(pipe_write, PIPE);
                grown = true;
            }
            bulk = crate::sys::set_receive_low_water(from.as_fd(), BULK_WAKE).is_ok();
        }
        // The pipe is empty here: a would-block can only mean the socket has nothing yet.
        let filled = if bulk
            && tokio::time::timeout(BULK_WAIT, from.readable())
                .await
                .is_err()
        {
            // Less than BULK_WAKE came within BULK_WAIT, so the socket did not report it: take
            // what is there, and when nothing is, the burst is over.
            match splice_in() {
                Err(rustix::io::Errno::AGAIN) => {
                    crate::sys::set_receive_low_water(from.as_fd(), 1)?;
                    (moved, bulk) = (0, false);
                    continue;
                }
                other => other.map_err(io::Error::from),
            }
        } else {
            from.readable().await?;
            from.try_io(Interest::READABLE, || Ok(splice_in()?))
        };
        let mut left = match filled {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        moved = moved.saturating_add(left);
        activity.touch();
        while left > 0 {
            to.writable().await?;
            let drained = to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    pipe_read, None, to, None, left, flags,
                )?)
            });
            match drained {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        activity.touch();
    }
}

async fn copy_all(from: &TcpStream, to: &TcpStream, activity: &Activity) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.touch();
        let mut sent = 0;
        while sent < n {
            to.writable().await?;
            match to.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        activity.touch();
    }
}

/// The blind tunnel after CONNECT: both directions until both ended, one failed, or the
/// connection was idle for `IDLE`.
pub(crate) async fn tunnel(client: &TcpStream, upstream: &TcpStream, activity: &Activity) {
    let both = async {
        tokio::try_join!(
            pump(client, upstream, activity),
            pump(upstream, client, activity),
        )
    };
    tokio::select! {
        _ = both => {}
        () = activity.idle(IDLE) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets on loopback: (the one we hold, its peer).
    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let address = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(address), listener.accept());
        (ours.unwrap(), theirs.unwrap().0)
    }

    /// Sends 3 MB into `from`'s peer, copies `from` to `to` with `copy`, and reads what `to`'s
    /// peer got, to its end.
    async fn through(splice: bool) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (from, mut writer) = pair(&listener).await;
        let (to, mut reader) = pair(&listener).await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let activity = Activity::new();
        let send = async {
            writer.write_all(&payload).await.unwrap();
            writer.shutdown().await.unwrap();
        };
        let copy = async {
            if splice {
                pump(&from, &to, &activity).await.unwrap();
            } else {
                copy_all(&from, &to, &activity).await.unwrap();
                rustix::net::shutdown(&to, rustix::net::Shutdown::Write).unwrap();
            }
        };
        let mut got = Vec::new();
        let receive = reader.read_to_end(&mut got);
        let ((), (), received) = tokio::join!(send, copy, receive);
        received.unwrap();
        assert!(
            got == payload,
            "{} bytes arrived of {}",
            got.len(),
            payload.len()
        );
        got
    }

    #[test]
    fn splice_and_the_buffered_copy_move_every_byte_then_half_close() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(through(true).await.len(), 3_000_000);
            assert_eq!(through(false).await.len(), 3_000_000);
        });
    }

    /// After a bulk transfer (which wakes the copy only per `BULK_WAKE` bytes), a short tail on a
    /// connection that stays open still arrives, and so does a second burst after it.
    #[test]
    fn the_tail_of_a_bulk_transfer_is_not_held_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (from, mut writer) = pair(&listener).await;
            let (to, mut reader) = pair(&listener).await;
            let activity = Activity::new();
            let burst: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let talk = async {
                for _ in 0..2 {
                    writer.write_all(&burst).await.unwrap();
                    let mut got = vec![0; burst.len()];
                    reader.read_exact(&mut got).await.unwrap();
                    assert!(got == burst);
                    // Ten bytes, far fewer than BULK_WAKE, and the connection stays open.
                    writer.write_all(b"0123456789").await.unwrap();
                    let mut tail = [0; 10];
                    let read = reader.read_exact(&mut tail);
                    tokio::time::timeout(Duration::from_secs(5), read)
                        .await
                        .expect("the tail is held back")
                        .unwrap();
                    assert_eq!(&tail, b"0123456789");
                }
                writer.shutdown().await.unwrap();
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            };
            let both = async { tokio::join!(talk, pump(&from, &to, &activity)) };
            let ((), copied) = tokio::time::timeout(Duration::from_secs(60), both)
                .await
                .expect("the copy stalled");
            copied.unwrap();
        });
    }

    #[test]
    fn idle_resolves_only_after_a_quiet_spell() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let activity = Activity::new();
            let started = Instant::now();
            let idle = activity.idle(Duration::from_millis(300));
            let keep_busy = async {
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    activity.touch();
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = idle => {}
                () = keep_busy => {}
            }
            // The last touch was at about 400 ms: quiet from then on for 300 ms.
            assert!(
                started.elapsed() >= Duration::from_millis(690),
                "{:?}",
                started.elapsed()
            );
        });
    }
}
