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
use crate::sync::resolver::LocalChangesWin;
use crate::transport::TransportError;

/// Receives every committed change: one call per transaction, the event as one
/// JSON string `{"source":"local"|"remote"|"rollback","changes":[{"collection",
/// "upserted":[rows],"deleted":[ids],"evicted"?:[ids],"reload"?}]}`;
/// `evicted` ids left this device's view but still exist on the server.
#[uniffi::export(with_foreign)]
pub trait ChangeListener: Send + Sync {
    fn on_change(&self, event_json: String);
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

/// Supplies the bearer token. Called on a blocking thread, so it may block (for
/// example on a refresh request). `refresh` is true after the server refused the
/// last token.
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    fn token(&self, refresh: bool) -> Result<String, HostError>;
}

/// Merges a record changed both locally and on the server. `local_json` is the
/// local row plus `_changed` (its pending columns); `server_json` is
/// `{"id","version","fields"}`. Returns the merged fields as a JSON object. If it
/// throws or returns something that is not an object, the default merge (pending
/// local columns win) is used and a warning is logged.
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
        self.0.on_change(event.to_json())
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
        let host = self.0.clone();
        let answer = tokio::task::spawn_blocking(move || host.token(refresh))
            .await
            .map_err(|e| TransportError::Unauthorized(format!("token provider failed: {e}")))?;
        answer.map_err(|e| match e {
            HostError::Offline { reason } => TransportError::Offline(reason),
            HostError::Unauthorized { reason } => TransportError::Unauthorized(reason),
            HostError::Failed { reason } => {
                TransportError::Unauthorized(format!("token provider failed: {reason}"))
            }
        })
    }
}

pub(crate) struct Resolver(pub Arc<dyn ConflictResolver>);

impl crate::sync::ConflictResolver for Resolver {
    fn resolve(&self, collection: &str, local: &Record, server: &ServerRecord) -> Fields {
        let mut row = local.to_json();
        row["_changed"] = Value::from(local.changed.clone());
        let answer = self
            .0
            .resolve(collection.into(), row.to_string(), super::to_json(server));
        match answer.map(|s| serde_json::from_str::<Value>(&s)) {
            Ok(Ok(Value::Object(fields))) => fields,
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(Err(e)) => format!("malformed JSON: {e}"),
                    Ok(Ok(v)) => format!("not a JSON object: {v}"),
                };
                tracing::warn!(collection, id = %local.id, error = %why,
                    "conflict resolver failed; pending local columns win");
                crate::sync::ConflictResolver::resolve(&LocalChangesWin, collection, local, server)
            }
        }
    }
}
