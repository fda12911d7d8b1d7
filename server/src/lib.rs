//! `ferry-server`: the reference Ferry sync backend.
//!
//! It serves the Ferry protocol (`/v1/pull`, `/v1/push`, see `docs/protocol.md`) and
//! WatermelonDB's sync protocol (`/watermelon/sync`) over one store: SQLite by
//! default, PostgreSQL at scale. [`start`] runs it in-process (tests, the CLI demo);
//! the `ferry-server` binary wraps it with flags and signal handling.
//!
//! Layers, each looking only down: [`http`] (axum) → [`service`] (protocol logic) →
//! [`engine`] (pure decisions) and [`storage`] (backends). [`config`] and [`auth`]
//! feed them.

pub mod auth;
pub mod config;
pub mod cursor;
pub mod engine;
pub mod error;
mod fetch;
pub mod http;
pub mod logging;
pub mod metrics;
mod serve;
pub mod service;
pub mod storage;
mod subscriptions;
pub mod testing;

use std::net::SocketAddr;

pub use config::ServerConfig;
pub use error::{ApiError, ServerError};
pub use service::SyncService;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `sqlite:PATH`, a plain file path, or `postgres://...`.
    pub database_url: String,
    pub config: ServerConfig,
}

/// A server running in a background tokio task.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    open: serve::OpenConnections,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections the server has accepted and not closed yet (at most
    /// `limits.max_connections`).
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// Opens storage, binds the listener and serves in the background.
pub async fn start(opts: ServerOptions) -> Result<RunningServer, ServerError> {
    let limits = opts.config.limits.clone();
    let service = SyncService::open(&opts.database_url, opts.config).await?;
    let app = http::router(service);
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    let (shutdown, rx) = oneshot::channel::<()>();
    let open = serve::OpenConnections::default();
    let task = tokio::spawn(serve::run(listener, app, limits, open.clone(), rx));
    tracing::info!(%addr, "ferry-server listening");
    Ok(RunningServer {
        addr,
        shutdown,
        task,
        open,
    })
}
