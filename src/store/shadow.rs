//! Shadows: the last server state of records with unsynced local changes.
//!
//! When a synced record is first changed locally, its server state is saved here,
//! so that a permanent rejection (or a failed optimistic write) can roll the record
//! back to exactly what the server holds. A record with no pending change has no
//! shadow.

use rusqlite::{OptionalExtension, params};

use super::Writer;
use super::records::Fields;
use crate::error::Result;

pub(crate) const DDL: &str = "
CREATE TABLE IF NOT EXISTS _ferry_shadow (
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version INTEGER,
    fields TEXT NOT NULL,
    PRIMARY KEY (collection, record_id)
);
";

impl Writer<'_, '_> {
    /// Saves the server state unless one is saved already.
    pub(crate) fn save_shadow_if_absent(
        &self,
        collection: &str,
        id: &str,
        version: Option<u64>,
        fields: &Fields,
    ) -> Result<()> {
        self.write_shadow("INSERT OR IGNORE", collection, id, version, fields)
    }

    /// Replaces the saved server state.
    pub(crate) fn set_shadow(
        &self,
        collection: &str,
        id: &str,
        version: Option<u64>,
        fields: &Fields,
    ) -> Result<()> {
        self.write_shadow("INSERT OR REPLACE", collection, id, version, fields)
    }

    fn write_shadow(
        &self,
        insert: &str,
        collection: &str,
        id: &str,
        version: Option<u64>,
        fields: &Fields,
    ) -> Result<()> {
        self.tx
            .prepare_cached(&format!(
                "{insert} INTO _ferry_shadow (collection, record_id, version, fields) VALUES (?1, ?2, ?3, ?4)"
            ))?
            .execute(params![
                collection,
                id,
                version.map(|v| v as i64),
                serde_json::to_string(fields)?
            ])?;
        Ok(())
    }

    /// The saved server state: its version and fields.
    pub(crate) fn shadow(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<(Option<u64>, Fields)>> {
        let row: Option<(Option<i64>, String)> = self
            .tx
            .prepare_cached(
                "SELECT version, fields FROM _ferry_shadow WHERE collection = ?1 AND record_id = ?2",
            )?
            .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            None => Ok(None),
            Some((v, f)) => Ok(Some((v.map(|v| v as u64), serde_json::from_str(&f)?))),
        }
    }

    pub(crate) fn remove_shadow(&self, collection: &str, id: &str) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM _ferry_shadow WHERE collection = ?1 AND record_id = ?2")?
            .execute(params![collection, id])?;
        Ok(())
    }

    /// Removes the saved states of these records of `collection`, in one statement.
    pub(crate) fn remove_shadows(&self, collection: &str, ids: &[&str]) -> Result<()> {
        self.tx
            .prepare_cached(
                "DELETE FROM _ferry_shadow WHERE collection = ?1 AND record_id IN (SELECT value FROM json_each(?2))",
            )?
            .execute(params![collection, serde_json::to_string(ids)?])?;
        Ok(())
    }
}
