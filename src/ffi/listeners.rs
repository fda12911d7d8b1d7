//! Foreign traits the host implements, their adapters to the core traits, and
//! [`ListenerHandle`].
//!
//! Listeners are called on the core's own threads (the event dispatcher, tokio
//! workers), never while a store lock is held. A listener that throws is caught:
//! an exception in a callback without an error type reaches Rust as a panic,
//! which the core catches and logs, and the store carries on. Callbacks that can
//! fail meaningfully (token provider, conflict resolver) return [`HostError`].

use std::sync::Arc;

use async_trait::async_trait;
use ferry_protocol::ServerRecord;
use parking_lot::Mutex;
use serde_json::Value;

use super::error::HostError;
use super::sync::SyncStatus;
use crate::events::ChangeEvent;
use crate::store::{Fields, Record};
use crate::transport::TransportError;

/// Receives every committed change, in bursts: one call per burst of commits (those
/// made while the previous burst was being delivered), as a JSON array of events
/// in commit order, one per transaction: `[{"source":"local"|"remote"|"rollback"|
/// "retention"|"subscriptions", "changes":[{"collection","upserted":[rows],
/// "deleted":[ids],"evicted"?:[ids],"pruned"?:[ids],"kept"?:[ids],"reload"?}]}, ...]`.
/// `evicted` ids left this device's view but still exist on the server; `kept`
/// ids left it too but have pending local changes, kept until their push is
/// answered. Called on the core's event thread, never under a store lock.
#[uniffi::export(with_foreign)]
pub trait ChangeListener: Send + Sync {
    fn on_changes(&self, events_json: String);
}

/// Receives the result of an observed query (a JSON array of rows): once at
/// once, then after each burst of commits touching its collection.
#[uniffi::export(with_foreign)]
pub trait QueryListener: Send + Sync {
    fn on_result(&self, rows_json: String);
}

/// Receives every sync status change.
#[uniffi::export(with_foreign)]
pub trait StatusListener: Send + Sync {
    fn on_status(&self, status: SyncStatus);
}

/// Supplies the bearer token. Async: Kotlin `suspend`, Swift `async`, JS a
/// Promise, so a refresh request never blocks a thread. `refresh` is true after the
/// server refused the last token. Throw `HostError.Offline` when the auth service
/// is unreachable and `HostError.Unauthorized` when there are no credentials
/// (background sync stops until the next explicit sync); anything else the
/// provider throws is retried with backoff and reported in the status
/// (`TokenUnavailable`). Local reads and writes never wait for it.
#[uniffi::export(with_foreign)]
#[async_trait]
pub trait TokenProvider: Send + Sync {
    async fn token(&self, refresh: bool) -> Result<String, HostError>;
}

/// Merges a record changed both locally and on the server. `local_json` is the
/// local row plus `_changed` (its pending columns); `server_json` is
/// `{"id","version","fields"}`. Returns the merged fields as a JSON object. If it
/// throws or returns something that is not an object (or fields that do not fit
/// the schema), the merge rule of the sync config is used and a warning is logged.
/// Never called under a store lock, so it may read or write the database.
#[uniffi::export(with_foreign)]
pub trait ConflictResolver: Send + Sync {
    fn resolve(
        &self,
        collection: String,
        local_json: String,
        server_json: String,
    ) -> Result<String, HostError>;
}

/// Keeps a listener registered. `cancel()` (or dropping / closing the handle)
/// unregisters it; later calls are no-ops. Keep a reference for as long as the
/// listener should run: a garbage-collected handle cancels.
#[derive(uniffi::Object)]
pub struct ListenerHandle {
    cancel: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ListenerHandle {
    pub(crate) fn new(cancel: impl FnOnce() + Send + 'static) -> Arc<Self> {
        Arc::new(ListenerHandle {
            cancel: Mutex::new(Some(Box::new(cancel))),
        })
    }

    /// A handle with nothing to cancel (`is_active` is false).
    pub(crate) fn inactive() -> Arc<Self> {
        Arc::new(ListenerHandle {
            cancel: Mutex::new(None),
        })
    }

    pub(crate) fn from_core(sub: crate::events::ListenerHandle) -> Arc<Self> {
        Self::new(move || drop(sub))
    }
}

#[uniffi::export]
impl ListenerHandle {
    pub fn cancel(&self) {
        let f = self.cancel.lock().take();
        if let Some(f) = f {
            f()
        }
    }

    pub fn is_active(&self) -> bool {
        self.cancel.lock().is_some()
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

// --- adapters to the core traits ---------------------------------------------------

pub(crate) struct Change(pub Arc<dyn ChangeListener>);

impl crate::events::ChangeListener for Change {
    fn on_change(&self, event: &ChangeEvent) {
        self.0.on_changes(super::to_json(&[event]))
    }

    fn on_changes(&self, events: &[Arc<ChangeEvent>]) {
        let events: Vec<&ChangeEvent> = events.iter().map(|e| e.as_ref()).collect();
        self.0.on_changes(super::to_json(&events))
    }
}

pub(crate) struct Query(pub Arc<dyn QueryListener>);

impl crate::events::QueryListener for Query {
    fn on_result(&self, rows: &[Value]) {
        self.0.on_result(super::to_json(rows))
    }
}

pub(crate) struct Status(pub Arc<dyn StatusListener>);

impl crate::sync::client::StatusListener for Status {
    fn on_status(&self, status: &crate::sync::SyncStatus) {
        self.0.on_status(status.clone())
    }
}

pub(crate) struct Tokens(pub Arc<dyn TokenProvider>);

#[async_trait]
impl crate::transport::TokenProvider for Tokens {
    async fn token(&self, refresh: bool) -> Result<String, TransportError> {
        self.0.token(refresh).await.map_err(|e| match e {
            HostError::Offline { reason } => TransportError::Offline(reason),
            HostError::Unauthorized { reason } => TransportError::Unauthorized(reason),
            HostError::Failed { reason } => TransportError::TokenUnavailable(reason),
        })
    }
}

pub(crate) struct Resolver(pub Arc<dyn ConflictResolver>);

impl crate::sync::ConflictResolver for Resolver {
    fn resolve(
        &self,
        collection: &str,
        local: &Record,
        server: &ServerRecord,
    ) -> Result<Fields, String> {
        let mut row = local.to_json();
        row["_changed"] = Value::from(local.changed.clone());
        let answer = self
            .0
            .resolve(collection.into(), row.to_string(), super::to_json(server))
            .map_err(|e| e.to_string())?;
        match serde_json::from_str::<Value>(&answer) {
            Ok(Value::Object(fields)) => Ok(fields),
            Ok(v) => Err(format!("not a JSON object: {v}")),
            Err(e) => Err(format!("malformed JSON: {e}")),
        }
    }
}
