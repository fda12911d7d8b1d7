//! Conflict resolution: merging a pending local record with a newer server row.
//!
//! The default is per column: the columns changed locally and not yet pushed keep
//! their local value, every other column takes the server's. An app can register
//! its own [`ConflictResolver`]; whatever it returns is validated like any write.

use ferry_protocol::ServerRecord;

use crate::store::{Fields, Record, RecordStatus};

/// Decides the fields of a record that changed both locally and on the server.
pub trait ConflictResolver: Send + Sync {
    /// `local` carries its pending columns in `local.changed` (all columns for a
    /// record created locally). The returned fields become the local record; those
    /// that differ from the server's are pushed.
    fn resolve(&self, collection: &str, local: &Record, server: &ServerRecord) -> Fields;
}

/// Pending local columns win; everything else comes from the server.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalChangesWin;

impl ConflictResolver for LocalChangesWin {
    fn resolve(&self, _collection: &str, local: &Record, server: &ServerRecord) -> Fields {
        let mut merged = local.fields.clone();
        for (k, v) in &server.fields {
            let local_pending = local.status == RecordStatus::Created || local.changed.contains(k);
            if !local_pending && merged.contains_key(k) {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged
    }
}

/// The server's row wins outright.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerWins;

impl ConflictResolver for ServerWins {
    fn resolve(&self, _collection: &str, local: &Record, server: &ServerRecord) -> Fields {
        let mut merged = local.fields.clone();
        for (k, v) in &server.fields {
            if merged.contains_key(k) {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged
    }
}
