//! The exported FFI facade: what Kotlin, Swift (and React Native) see.
//!
//! uniffi generates the bindings from the items in this module. It is a thin
//! layer: each exported method delegates to one core call and maps the core
//! [`crate::Error`] to the public [`FerryError`] at the boundary. It must never
//! hold logic of its own, and bulk data crosses in bulk: a batch of records is one
//! JSON string, never one call per row (see `docs/ffi.md` for the measurement
//! behind that choice).
//!
//! - [`database`]: [`FerryDatabase`], the local store.
//! - [`sync`]: [`FerrySyncClient`] and its records (config, status, write mode).
//! - [`listeners`]: the foreign traits the host implements, and the
//!   [`ListenerHandle`] that keeps a listener registered.
//! - [`logger`]: forwards the core's `tracing` output to a host [`Logger`].
//! - [`error`]: [`FerryError`] and the callback error [`HostError`].
//!
//! Async methods run on one shared tokio runtime owned here ([`runtime`]), so
//! they behave the same whichever executor the host polls them from.

pub mod database;
pub mod error;
pub mod listeners;
pub mod logger;
pub mod ops;
pub mod sync;

#[cfg(feature = "ffi-bench")]
pub mod bench;

use std::future::Future;
use std::sync::OnceLock;

pub use database::FerryDatabase;
pub use error::{FerryError, HostError};
pub use listeners::{
    ChangeListener, ConflictResolver, ListenerHandle, QueryListener, StatusListener, TokenProvider,
};
pub use logger::{LogLevel, Logger};
pub use sync::FerrySyncClient;

/// The runtime every async FFI call and the background scheduler run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-rt")
            .enable_all()
            .build()
            .expect("ferry: cannot start the tokio runtime")
    })
}

/// Runs `fut` on [`runtime`] and awaits it from whatever executor polls us.
pub(crate) async fn on_runtime<T: Send + 'static>(
    fut: impl Future<Output = crate::Result<T>> + Send + 'static,
) -> Result<T, FerryError> {
    runtime()
        .spawn(fut)
        .await
        .map_err(|e| FerryError::internal(format!("internal error: task failed: {e}")))?
        .map_err(FerryError::from)
}

/// Serialises a core value for the host (never fails for the core's types).
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("ferry values serialise")
}
