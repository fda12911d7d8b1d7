//! Staging of pulled pages and the sync bookkeeping tables.
//!
//! Pulled pages land here as they arrive and become visible only when the whole
//! pull is published in one transaction. This module must never touch record
//! tables.

use rusqlite::Transaction;

use crate::error::Result;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS _ferry_staging (
    page INTEGER NOT NULL,
    collection TEXT NOT NULL,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version INTEGER,
    fields TEXT,
    PRIMARY KEY (page, collection, kind, record_id)
);
";

pub(crate) fn create_tables(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(DDL)?;
    Ok(())
}
