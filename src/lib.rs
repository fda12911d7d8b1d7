//! # Ferry core
//!
//! An offline-first sync engine for mobile apps. The core owns the app's local
//! SQLite database ([`Store`]), keeps an outbox of local mutations, emits one
//! batched [`ChangeEvent`] per committed transaction, and (in [`sync`]) syncs with a
//! Ferry backend. See `docs/architecture.md` for the data flow.

pub mod clock;
mod crash;
pub mod error;
pub mod events;
#[cfg(feature = "ffi")]
pub mod ffi;
pub mod schema;
pub mod store;
pub mod sync;
pub mod transport;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use events::{
    ChangeEvent, ChangeListener, ChangeSource, CollectionChange, ListenerHandle, QueryListener,
};
pub use schema::{Collection, Column, ColumnType, Retention, Schema, SyncMode};
pub use store::{
    ActiveSubscription, Anchor, CountResult, EntryState, Fields, Filter, OutboxEntry, Query,
    QueryResult, Record, RecordStatus, RetentionReport, Sort, Store, StoreStatus, Subscription,
    WeakStore, WriteOp,
};

#[cfg(feature = "ffi")]
uniffi::setup_scaffolding!();
