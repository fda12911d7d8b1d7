//! The sync engine.
//!
//! The logic is sans-IO: [`staging`] and [`push`] take local state and server
//! responses and decide what happens, in SQLite transactions; they never call the
//! network. [`client::SyncClient`] drives them through an injected
//! [`crate::transport::Transport`], [`crate::transport::TokenProvider`] and
//! [`crate::Clock`], so every interleaving of faults can be tested deterministically.

pub mod client;
pub mod integrity;
pub mod machine;
pub mod policy;
pub mod push;
mod rebase;
pub mod resolver;
pub mod staging;
mod write_modes;

pub use client::{
    OfflineBehavior, SyncClient, SyncConfig, SyncPhase, SyncReport, SyncStatus, WeakSyncClient,
    WriteMode,
};
pub use integrity::Repair;
pub use policy::{NetworkHints, NetworkKind, PageSizer, PageSizing};
pub use push::PushReport;
pub use rebase::MAX_RESOLVE_ROUNDS;
pub use resolver::{ConflictResolver, MergeRule};
pub use staging::{PublishReport, StageReport};
