//! Conflict resolution: merging a pending local record with a newer server row.
//!
//! The default is per column: the columns changed locally and not yet pushed keep
//! their local value, every other column takes the server's. An app can register
//! its own [`ConflictResolver`]; whatever it returns is validated like any write.
//!
//! One rule for failure: when the app's resolver fails, or returns fields that do
//! not fit the schema, the merge of [`crate::sync::SyncConfig::merge_rule`] is
//! used instead ([`MergeRule::LocalChangesWin`] by default), and a warning is
//! logged. The app's resolver never runs under the writer lock (see
//! [`super::rebase`]), so it may call back into the store.

use ferry_protocol::ServerRecord;

use crate::store::{Fields, Record, RecordStatus};

/// Decides the fields of a record that changed both locally and on the server.
pub trait ConflictResolver: Send + Sync {
    /// `local` carries its pending columns in `local.changed` (all columns for a
    /// record created locally). The returned fields become the local record; those
    /// that differ from the server's are pushed. An `Err` (its reason is logged)
    /// falls back to the configured [`MergeRule`].
    fn resolve(
        &self,
        collection: &str,
        local: &Record,
        server: &ServerRecord,
    ) -> Result<Fields, String>;

    /// The built-in rule this resolver is, if it is one. Built-in rules are pure
    /// functions and run inside the transaction; any other resolver runs before
    /// it, outside the writer lock.
    fn as_rule(&self) -> Option<MergeRule> {
        None
    }
}

/// A built-in merge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum MergeRule {
    /// Pending local columns win; everything else comes from the server.
    #[default]
    LocalChangesWin,
    /// The server's row wins outright.
    ServerWins,
}

impl MergeRule {
    pub fn merge(self, local: &Record, server: &ServerRecord) -> Fields {
        let mut merged = local.fields.clone();
        for (k, v) in &server.fields {
            let local_pending = self == MergeRule::LocalChangesWin
                && (local.status == RecordStatus::Created || local.changed.contains(k));
            if !local_pending && merged.contains_key(k) {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged
    }
}

impl ConflictResolver for MergeRule {
    fn resolve(&self, _c: &str, local: &Record, server: &ServerRecord) -> Result<Fields, String> {
        Ok(self.merge(local, server))
    }

    fn as_rule(&self) -> Option<MergeRule> {
        Some(*self)
    }
}
