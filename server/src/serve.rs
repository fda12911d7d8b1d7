//! The connection layer: accepts TCP connections and serves HTTP/1.1 on them with
//! hyper, within the limits `limits.max_connections` and
//! `limits.header_read_timeout_ms`.
//!
//! It exists because `axum::serve` has neither: a socket that sent half a request
//! head stayed open for ever, and sockets were accepted without bound (the request
//! timeout only starts once the head has arrived). Here a connection is accepted
//! only while fewer than `max_connections` are open; past that, new connections
//! wait in the listener's accept queue (in the kernel) until one closes. hyper
//! closes a connection whose request head has not fully arrived within the header
//! read timeout, counted from when it starts waiting for a head: a new connection,
//! or an idle keep-alive one after its last answer.
//!
//! HTTP/2 is not served (it was not before either: axum's `http2` feature is off).
//! hyper-util's version-detecting builder reads the HTTP/2 preface with no timeout,
//! and HTTP/2 has no header read timeout, so adding it needs limits of its own.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::config::Limits;

/// How many connections are open now; shared with [`crate::RunningServer`].
#[derive(Clone, Default)]
pub(crate) struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn open(&self) -> OpenGuard {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!("ferry_http_open_connections").set(n as f64);
        OpenGuard(self.clone())
    }
}

/// One open connection; closing it (dropping this) counts it out.
struct OpenGuard(OpenConnections);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let n = (self.0).0.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("ferry_http_open_connections").set(n as f64);
    }
}

/// Serves `app` on `listener` until `shutdown` fires, then stops accepting, lets
/// the open connections finish their requests (idle ones close at once) and returns.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    open: OpenConnections,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        // A slot first, then a connection: past the cap, connections stay in the
        // accept queue instead of being accepted and left unserved.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let guard = open.open();
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // A header read timeout, a reset, a malformed request head.
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            drop(guard);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// What `axum::serve` (and hyper 0.14's server before it) does on an accept error:
/// a connection that failed before it was accepted is skipped; anything else (out
/// of file descriptors) is logged and accepting pauses for a second.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
