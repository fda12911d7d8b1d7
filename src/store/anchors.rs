//! Anchors: the per-collection totals the server last reported, to tell what
//! exists on the server beyond the local horizon.

use std::collections::BTreeMap;

use rusqlite::{Connection, Transaction};

use super::records::quote;
use super::{Anchor, Store, Writer};
use crate::error::Result;

const DDL: &str = "CREATE TABLE IF NOT EXISTS _ferry_anchors (
    collection TEXT PRIMARY KEY, server_total INTEGER NOT NULL, updated_at INTEGER NOT NULL);";

/// Creates the table unless it exists.
pub(super) fn create(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(DDL)?;
    Ok(())
}

/// The server totals last received, per collection.
pub(super) fn server_totals(conn: &Connection) -> Result<BTreeMap<String, u64>> {
    Ok(conn
        .prepare_cached("SELECT collection, server_total FROM _ferry_anchors")?
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<rusqlite::Result<_>>()?)
}

impl Writer<'_, '_> {
    /// Records the totals a pulled page reported, as of now.
    pub(crate) fn set_server_totals(&self, totals: &BTreeMap<String, u64>) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT OR REPLACE INTO _ferry_anchors (collection, server_total, updated_at) VALUES (?1, ?2, ?3)",
        )?;
        for (name, total) in totals {
            stmt.execute(rusqlite::params![name, *total as i64, self.now])?;
        }
        Ok(())
    }
}

impl Store {
    /// What exists on the server beyond the local horizon, per collection.
    pub fn anchors(&self) -> Result<Vec<Anchor>> {
        self.read_snapshot(|conn| {
            let mut out = Vec::new();
            let mut stmt = conn.prepare_cached(
                "SELECT collection, server_total, updated_at FROM _ferry_anchors ORDER BY collection",
            )?;
            let rows: Vec<(String, i64, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (collection, total, at) in rows {
                let Ok(c) = self.collection(&collection) else {
                    continue;
                };
                let local: i64 = conn.query_row(
                    &format!(
                        "SELECT COUNT(*) FROM {} WHERE _status <> 'deleted'",
                        quote(&c.name)
                    ),
                    [],
                    |r| r.get(0),
                )?;
                out.push(Anchor {
                    collection,
                    server_total: total as u64,
                    local_count: local as u64,
                    updated_at: at,
                });
            }
            Ok(out)
        })
    }
}
