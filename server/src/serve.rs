//! Serving the application: the accept loop with its per-connection limits, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::app::app;
use crate::state::AppState;

/// An in-process server on a free loopback port, the one way the CLI's local runs, the tests and
/// the benchmark start one: its base URL, and the task serving it until `shutdown`.
pub async fn serve_loopback(
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = listen("127.0.0.1", 0, state.config.max_connections).await?;
    let base = format!("http://{}", listener.local_addr()?);
    Ok((base, tokio::spawn(serve(state, listener, shutdown))))
}

/// The shortest listen backlog `listen` asks for, whatever `maxConnections` says.
const MIN_LISTEN_BACKLOG: usize = 4096;

/// Binds `address:port` (the first of its addresses that binds) with a listen backlog of
/// `max_connections`, `MIN_LISTEN_BACKLOG` at least: clients past the connection cap wait there, and a burst the
/// accept loop has not caught up with yet must fit. An overflowing backlog drops handshakes: a
/// client whose last ACK was dropped believes it is connected, and if it stays silent it waits
/// for a server that never heard of it (Tokio's default of 1024 overflowed in the hostile-clients
/// test's burst of 1350). The kernel caps the backlog at `net.core.somaxconn`.
pub(crate) async fn listen(
    address: &str,
    port: u16,
    max_connections: usize,
) -> std::io::Result<TcpListener> {
    let backlog = u32::try_from(max_connections.max(MIN_LISTEN_BACKLOG)).unwrap_or(u32::MAX);
    let mut last_error = None;
    for addr in tokio::net::lookup_host((address, port)).await? {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As `TcpListener::bind` does: a restarted server binds its port despite TIME_WAIT sockets.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting, gives running
/// executions `shutdownGraceMs` to finish, kills the rest and removes every container it created.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let engine = state.engine.clone();
    let grace = Duration::from_millis(state.config.shutdown_grace_ms);
    // Signalled once when shutdown begins; the grace timer waits on it.
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<()>();
    let reaper_engine = engine.clone();
    // Background task: after the grace period, kill what still runs so open streams end.
    let reaper = tokio::spawn(async move {
        if begun_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
            tracing::info!("grace period over; stopping remaining executions");
            reaper_engine.shutdown().await;
        }
    });
    let sessions = Arc::clone(&state.sessions);
    // Before the first request: the sessions an earlier process of this server left.
    match sessions.adopt(&engine).await {
        Ok(done) if done == Default::default() => {}
        Ok(done) => tracing::info!(
            adopted = done.adopted,
            expired = done.expired,
            removed = done.removed,
            "sessions of an earlier process of this server"
        ),
        Err(error) => tracing::warn!(%error, "could not look for this server's earlier sessions"),
    }
    // Background task: expires idle sessions and freezes quiet ones; aborted at shutdown.
    let expiry = tokio::spawn(Arc::clone(&sessions).expire_idle(engine.clone()));
    // Background task: removes kept (`persist`) containers past their `persist.maxAgeMs`.
    let kept_expiry = tokio::spawn(crate::persist::expire_forever(
        engine.clone(),
        state.config.persist.clone(),
    ));
    // Background task: deletes long-expired keys and audit rows past their retention.
    let sweeper = state
        .database
        .clone()
        .map(|db| tokio::spawn(db.sweep_forever()));
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(state.config.request_read_timeout_ms),
        max_connections: state.config.max_connections,
    };
    serve_connections(listener, app(state), limits, async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        let _ = begun_tx.send(());
    })
    .await;
    reaper.abort();
    expiry.abort();
    kept_expiry.abort();
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    sessions.close_all(&engine).await;
    engine.shutdown().await;
}

/// What one client may hold: a slow or silent client is cut off after `header_read_timeout`, and
/// at most `max_connections` are served at once.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    max_connections: usize,
}

/// The accept loop (`axum::serve` gives hyper no timer, so it has no header-read timeout and any
/// number of idle connections stay open forever). Each connection is its own task; on `shutdown`
/// the listener closes, idle connections are closed, and this returns once in-flight requests end.
async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Every connection task, so shutdown can wait for them; `stop` asks each to finish its
    // in-flight request and close (hyper's graceful shutdown of one connection).
    let connections_running = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Waiting for a free connection slot before accepting leaves further clients in the
        // kernel's backlog rather than serving them with no bound.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request(
            |request: Request<hyper::body::Incoming>| request.map(axum::body::Body::new),
        ));
        // With upgrades: `GET /execute/ws` switches the connection to the WebSocket protocol.
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        connections_running.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    connections_running.close();
    connections_running.wait().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Tokio's `TcpListener::bind` listens with a backlog of 1024: in a burst, the handshakes past
    /// it are dropped until the server accepts. Ours holds 1500 clients nobody accepted yet.
    #[tokio::test]
    async fn a_burst_past_tokios_default_backlog_waits_to_be_accepted() {
        const CLIENTS: usize = 1500;
        rlimit::increase_nofile_limit(CLIENTS as u64 * 2 + 256).unwrap();
        let listener = super::listen("127.0.0.1", 0, 1).await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for n in 0..CLIENTS {
            let connect = tokio::net::TcpStream::connect(address);
            let client = tokio::time::timeout(Duration::from_secs(1), connect)
                .await
                .unwrap_or_else(|_| panic!("client {n}'s handshake was not answered within 1 s"))
                .unwrap();
            clients.push(client);
        }
        for n in 0..CLIENTS {
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .unwrap_or_else(|_| panic!("only {n} of {CLIENTS} clients could be accepted"))
                .unwrap();
        }
    }
}
