//! The layout of the internal tables (`_ferry_outbox`, `_ferry_shadow`,
//! `_ferry_meta`, `_ferry_anchors`, staging), versioned so that a database made
//! by an older Ferry is upgraded in place when it is opened.
//!
//! The layout's number is kept in `_ferry_meta` under `layout`; a database from
//! before it was numbered is layout 0. Opening runs `upgrade_from(n)` for every
//! layout from the stored one up to [`LAYOUT`], in the opening transaction, so a
//! failed upgrade leaves the file as it was. A database from a newer Ferry is
//! refused, never guessed at.

use rusqlite::Transaction;

use super::{meta_get, meta_set};
use crate::error::{Error, Result};

/// The layout this build writes.
pub(crate) const LAYOUT: u32 = 1;
const LAYOUT_KEY: &str = "layout";

/// The layout the database is at before opening: `None` for a new database
/// (its tables are then made at [`LAYOUT`] directly).
pub(crate) fn stored(tx: &Transaction<'_>) -> Result<Option<u32>> {
    if let Some(v) = meta_get(tx, LAYOUT_KEY)? {
        return v
            .parse()
            .map(Some)
            .map_err(|_| Error::Internal(format!("bad database layout `{v}`")));
    }
    let outbox: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_ferry_outbox')",
        [],
        |r| r.get(0),
    )?;
    Ok(outbox.then_some(0))
}

/// Brings the tables from layout `from` to [`LAYOUT`] (the tables of the
/// current layout must have been created, if missing, before).
pub(crate) fn upgrade(tx: &Transaction<'_>, from: Option<u32>) -> Result<()> {
    let from = from.unwrap_or(LAYOUT);
    if from > LAYOUT {
        return Err(Error::IncompatibleSchema(format!(
            "the database was written by a newer Ferry (internal layout {from}; this one knows up to {LAYOUT})"
        )));
    }
    for n in from..LAYOUT {
        upgrade_from(tx, n)?;
        tracing::info!(
            from = n,
            to = n + 1,
            "upgraded the database's internal layout"
        );
    }
    meta_set(tx, LAYOUT_KEY, &LAYOUT.to_string())
}

fn upgrade_from(tx: &Transaction<'_>, n: u32) -> Result<()> {
    match n {
        // 0 → 1: the outbox says which entries the server may hold (a send got
        // no answer). Layout 0 did not know; any entry sent before may be held.
        0 => tx.execute_batch(
            "ALTER TABLE _ferry_outbox ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0;
             UPDATE _ferry_outbox SET unanswered = 1 WHERE attempts > 0 AND state <> 'quarantined';",
        )?,
        _ => return Err(Error::Internal(format!("no upgrade from layout {n}"))),
    }
    Ok(())
}
