//! Anchors: per collection, the total the server last reported and the horizon
//! that retention moved (`_ferry_horizons`, written by `retention.rs`), to tell
//! what exists on the server beyond what this device holds.

use std::collections::BTreeMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Transaction};

use super::records::quote;
use super::{Anchor, Store, Writer};
use crate::error::Result;

const DDL: &str = "CREATE TABLE IF NOT EXISTS _ferry_anchors (
    collection TEXT PRIMARY KEY, server_total INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _ferry_horizons (
    collection TEXT PRIMARY KEY, column_name TEXT NOT NULL, horizon NOT NULL, pruned INTEGER NOT NULL,
    updated_at INTEGER NOT NULL);";

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
    /// Each collection's anchor, for the collections the server reported a
    /// total for or that retention pruned.
    pub fn anchors(&self) -> Result<Vec<Anchor>> {
        self.read_snapshot(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c, a.server_total, a.updated_at, h.horizon, h.pruned FROM
                   (SELECT collection AS c FROM _ferry_anchors UNION SELECT collection FROM _ferry_horizons)
                 LEFT JOIN _ferry_anchors a ON a.collection = c
                 LEFT JOIN _ferry_horizons h ON h.collection = c ORDER BY c",
            )?;
            type Row = (String, Option<i64>, Option<i64>, Option<SqlValue>, Option<i64>);
            let rows: Vec<Row> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::new();
            for (collection, total, at, horizon, pruned) in rows {
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
                    server_total: total.map(|t| t as u64),
                    local_count: local as u64,
                    updated_at: at,
                    horizon: horizon.as_ref().and_then(super::retention::json_number),
                    pruned: pruned.unwrap_or(0) as u64,
                });
            }
            Ok(out)
        })
    }
}
