//! The outbox: the ordered list of local mutations still to push.
//!
//! Every local write to a synced collection appends here in the same transaction
//! as the record change. Edits of one record that have not been sent yet coalesce
//! (create+update → create, create+delete → nothing, update+delete → delete), so a
//! push carries the net change. An entry that has been sent at least once is never
//! rewritten: the server may have applied it under its mutation id, so later edits
//! go into a new entry behind it.
//!
//! A create that has not been sent has no outbox row at all: the record row
//! (`_status = 'created'`, found through the partial index on pending rows)
//! holds its fields, including later edits, so a local create costs what a plain
//! insert costs. Such an *unsent create* is listed like an entry (with an empty
//! mutation id) and becomes a real entry, with its fields frozen and a mutation
//! id, when it is first sent. Within a record it always comes first: later edits
//! of it need no entry, and deleting it leaves nothing to push.

use ferry_protocol::{Mutation, Op};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;
use serde_json::Value;

use super::records::Fields;
use crate::error::{Error, Result};
use crate::schema::Schema;

pub(crate) const DDL: &str = "
CREATE TABLE IF NOT EXISTS _ferry_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mutation_id TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    op TEXT NOT NULL,
    fields TEXT NOT NULL,
    base_version INTEGER,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS _ferry_outbox_record ON _ferry_outbox(collection, record_id, seq);
";

/// Where an outbox entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Waiting to be pushed (possibly after `next_attempt_at`).
    Pending,
    /// Sent; its result has not been applied yet.
    InFlight,
    /// Permanently rejected; kept until the app discards or retries it.
    Quarantined,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::InFlight => "in_flight",
            EntryState::Quarantined => "quarantined",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => EntryState::Pending,
            "in_flight" => EntryState::InFlight,
            "quarantined" => EntryState::Quarantined,
            other => return Err(Error::Internal(format!("bad outbox state `{other}`"))),
        })
    }
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxEntry {
    pub seq: i64,
    pub mutation_id: String,
    pub collection: String,
    pub record_id: String,
    pub op: Op,
    pub fields: Fields,
    pub base_version: Option<u64>,
    pub created_at: i64,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub state: EntryState,
    pub last_error: Option<String>,
}

impl OutboxEntry {
    pub fn to_mutation(&self) -> Mutation {
        Mutation {
            mutation_id: self.mutation_id.clone(),
            collection: self.collection.clone(),
            record_id: self.record_id.clone(),
            op: self.op,
            fields: self.fields.clone(),
            base_version: self.base_version,
        }
    }
}

pub(crate) const SELECT: &str = "SELECT seq, mutation_id, collection, record_id, op, fields, base_version, created_at, attempts, next_attempt_at, state, last_error FROM _ferry_outbox";

pub(crate) fn read_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let op: String = row.get(4)?;
    let fields: String = row.get(5)?;
    let state: String = row.get(10)?;
    let bad = |e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    };
    Ok(OutboxEntry {
        seq: row.get(0)?,
        mutation_id: row.get(1)?,
        collection: row.get(2)?,
        record_id: row.get(3)?,
        op: Op::parse(&op).ok_or_else(|| bad(format!("bad op {op}")))?,
        fields: serde_json::from_str(&fields).map_err(|e| bad(e.to_string()))?,
        base_version: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        created_at: row.get(7)?,
        attempts: row.get(8)?,
        next_attempt_at: row.get(9)?,
        state: EntryState::parse(&state).map_err(|e| bad(e.to_string()))?,
        last_error: row.get(11)?,
    })
}

/// What [`enqueue`] left in the outbox for the record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// An entry remains to be pushed.
    Queued,
    /// A create and a delete cancelled out: nothing is left to push.
    Cancelled,
}

/// Records a local mutation, coalescing it into the record's unsent entry if any.
/// `created` says the record is a local create (`_status = 'created'`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn enqueue(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    op: Op,
    fields: &Fields,
    base_version: Option<u64>,
    now: i64,
    created: bool,
) -> Result<Enqueued> {
    let latest: Option<(i64, String, String, i64, String)> = tx
        .prepare_cached(
            "SELECT seq, op, fields, attempts, state FROM _ferry_outbox
             WHERE collection = ?1 AND record_id = ?2 AND state <> 'quarantined'
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![collection, record_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    if latest.is_none() && created {
        // An unsent create: the row carries the edit; a delete leaves nothing.
        return Ok(if op == Op::Delete {
            Enqueued::Cancelled
        } else {
            Enqueued::Queued
        });
    }
    if let Some((seq, prev_op, prev_fields, 0, state)) = latest
        && state == "pending"
    {
        let prev_op = Op::parse(&prev_op).ok_or_else(|| Error::Internal("bad op".into()))?;
        let mut merged: Fields = serde_json::from_str(&prev_fields)?;
        let next = match (prev_op, op) {
            (Op::Create, Op::Update) | (Op::Update, Op::Update) => {
                merged.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                Some((prev_op, merged))
            }
            (Op::Create, Op::Delete) => None,
            (Op::Update, Op::Delete) => Some((Op::Delete, Fields::new())),
            _ => {
                return Err(Error::Internal(format!(
                    "cannot follow {} with {} on `{collection}/{record_id}`",
                    prev_op.as_str(),
                    op.as_str()
                )));
            }
        };
        return match next {
            None => {
                tx.prepare_cached("DELETE FROM _ferry_outbox WHERE seq = ?1")?
                    .execute([seq])?;
                Ok(Enqueued::Cancelled)
            }
            Some((op, f)) => {
                tx.prepare_cached("UPDATE _ferry_outbox SET op = ?2, fields = ?3 WHERE seq = ?1")?
                    .execute(params![seq, op.as_str(), Value::Object(f).to_string()])?;
                Ok(Enqueued::Queued)
            }
        };
    }
    append(tx, collection, record_id, op, fields, base_version, now)?;
    Ok(Enqueued::Queued)
}

/// Appends a new entry without coalescing; returns its seq and mutation id.
pub(crate) fn append(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    op: Op,
    fields: &Fields,
    base_version: Option<u64>,
    now: i64,
) -> Result<(i64, String)> {
    insert(
        tx,
        collection,
        record_id,
        op,
        fields,
        base_version,
        now,
        false,
    )
}

/// Appends an entry that is being sent right now (in flight, one attempt).
pub(crate) fn append_sent(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    op: Op,
    fields: &Fields,
    now: i64,
) -> Result<(i64, String)> {
    insert(tx, collection, record_id, op, fields, None, now, true)
}

#[allow(clippy::too_many_arguments)]
fn insert(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    op: Op,
    fields: &Fields,
    base_version: Option<u64>,
    now: i64,
    sent: bool,
) -> Result<(i64, String)> {
    let mutation_id = uuid::Uuid::now_v7().to_string();
    tx.prepare_cached(
        "INSERT OR FAIL INTO _ferry_outbox (mutation_id, collection, record_id, op, fields, base_version, created_at, state, attempts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        mutation_id,
        collection,
        record_id,
        op.as_str(),
        serde_json::to_string(fields)?,
        base_version.map(|v| v as i64),
        now,
        if sent { "in_flight" } else { "pending" },
        sent as i64
    ])?;
    Ok((tx.last_insert_rowid(), mutation_id))
}

/// All entries and unsent creates, oldest first.
pub(crate) fn list(conn: &rusqlite::Connection, schema: &Schema) -> Result<Vec<OutboxEntry>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY seq"))?;
    let rows = stmt.query_map([], read_entry)?;
    let mut entries: Vec<OutboxEntry> = rows.collect::<rusqlite::Result<_>>()?;
    for c in schema.collections.iter().filter(|c| c.is_synced()) {
        entries.extend(unsent_creates(conn, c, None, usize::MAX)?);
    }
    entries.sort_by_key(|e| (e.created_at, e.seq));
    Ok(entries)
}

/// Unsent creates of `c` (records created locally with no outbox entry), oldest
/// first, as entries with `seq` 0 and no mutation id yet.
pub(crate) fn unsent_creates(
    conn: &rusqlite::Connection,
    c: &crate::schema::Collection,
    only: Option<&std::collections::HashSet<(String, String)>>,
    max: usize,
) -> Result<Vec<OutboxEntry>> {
    // `_status <> 'synced'` is the partial index's predicate: only pending rows are
    // read, in index order (status, id) — no sort — and the scan stops at `max`.
    let sql = format!(
        "SELECT {} FROM {t} t WHERE _status <> 'synced' AND _status = 'created'
         AND NOT EXISTS (SELECT 1 FROM _ferry_outbox o WHERE o.collection = ?1
                         AND o.record_id = t.id AND o.state <> 'quarantined')
         ORDER BY _status, id LIMIT ?2",
        super::records::select_list(c),
        t = super::records::quote(&c.name)
    );
    let limit = if only.is_some() {
        -1
    } else {
        max.min(i64::MAX as usize) as i64
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params![&c.name, limit])?;
    let mut out = Vec::new();
    while out.len() < max
        && let Some(row) = rows.next()?
    {
        let r = super::records::read_record(c, row)?;
        if only.is_some_and(|o| !o.contains(&(c.name.clone(), r.id.clone()))) {
            continue;
        }
        out.push(OutboxEntry {
            seq: 0,
            mutation_id: String::new(),
            collection: c.name.clone(),
            record_id: r.id,
            op: Op::Create,
            fields: r.fields,
            base_version: None,
            created_at: r.created_at,
            attempts: 0,
            next_attempt_at: 0,
            state: EntryState::Pending,
            last_error: None,
        });
    }
    Ok(out)
}

/// Counts of records with changes the server has not confirmed (one each, however
/// many edits they carry: an index-only count of the pending rows) and of
/// quarantined mutations.
pub(crate) fn counts(conn: &rusqlite::Connection, schema: &Schema) -> Result<(u64, u64)> {
    let quarantined: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM _ferry_outbox WHERE state = 'quarantined'")?
        .query_row([], |r| r.get(0))?;
    let mut pending = 0;
    for c in schema.collections.iter().filter(|c| c.is_synced()) {
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE _status <> 'synced'",
            super::records::quote(&c.name)
        );
        let n: i64 = conn.prepare_cached(&sql)?.query_row([], |r| r.get(0))?;
        pending += n as u64;
    }
    Ok((pending, quarantined as u64))
}

/// After the record was rebased over server `version`, its unsent entries are
/// based on that version.
pub(crate) fn rebase(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    version: u64,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE _ferry_outbox SET base_version = ?3
         WHERE collection = ?1 AND record_id = ?2 AND state = 'pending'",
    )?
    .execute(params![collection, record_id, version as i64])?;
    Ok(())
}

/// After a rebase, the record's unsent updates carry exactly `diff` (what still
/// differs from the server); with nothing left they are dropped. Returns whether
/// any entry for the record remains.
pub(crate) fn rewrite_updates(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    diff: &Fields,
) -> Result<bool> {
    if diff.is_empty() {
        tx.prepare_cached(
            "DELETE FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND state = 'pending' AND op = 'update'",
        )?
        .execute(params![collection, record_id])?;
    } else {
        tx.prepare_cached(
            "UPDATE _ferry_outbox SET fields = ?3 WHERE collection = ?1 AND record_id = ?2 AND state = 'pending' AND op = 'update'",
        )?
        .execute(params![collection, record_id, serde_json::to_string(diff)?])?;
    }
    let left: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND state <> 'quarantined'")?
        .query_row(params![collection, record_id], |r| r.get(0))?;
    Ok(left > 0)
}
