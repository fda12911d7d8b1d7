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

use std::collections::HashSet;

use ferry_protocol::{Mutation, Op, RawFields};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::records::Fields;
use super::{Store, Writer};
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
    last_error TEXT,
    unanswered INTEGER NOT NULL DEFAULT 0
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
    /// The entry as it goes on the wire.
    pub fn to_mutation(&self) -> Result<Mutation<RawFields>> {
        Ok(Mutation {
            mutation_id: self.mutation_id.clone(),
            collection: self.collection.clone(),
            record_id: self.record_id.clone(),
            op: self.op,
            fields: serde_json::value::to_raw_value(&self.fields)?,
            base_version: self.base_version,
        })
    }
}

/// An entry on its way to the server, as a push batch holds it: its fields stay
/// the JSON text the outbox froze, sent without being parsed again.
#[derive(Debug, Clone)]
pub(crate) struct Sending {
    pub seq: i64,
    pub mutation_id: String,
    pub collection: String,
    pub record_id: String,
    pub op: Op,
    pub fields: RawFields,
    pub base_version: Option<u64>,
    pub attempts: u32,
}

impl Sending {
    pub fn to_mutation(&self) -> Mutation<RawFields> {
        Mutation {
            mutation_id: self.mutation_id.clone(),
            collection: self.collection.clone(),
            record_id: self.record_id.clone(),
            op: self.op,
            fields: self.fields.clone(),
            base_version: self.base_version,
        }
    }

    /// The fields, parsed (for the rare outcomes that merge them).
    pub fn parsed_fields(&self) -> Result<Fields> {
        Ok(serde_json::from_str(self.fields.get())?)
    }
}

/// Columns read by [`read_sending`].
const SELECT_SENDING: &str = "SELECT seq, mutation_id, collection, record_id, op, fields, base_version, attempts FROM _ferry_outbox";

fn conversion_error(e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
}

/// Frozen fields: the stored text, checked to be JSON.
fn raw_fields(text: String) -> rusqlite::Result<RawFields> {
    serde_json::value::RawValue::from_string(text).map_err(|e| conversion_error(e.to_string()))
}

/// Reads a row selected with [`SELECT_SENDING`].
fn read_sending(row: &rusqlite::Row<'_>) -> rusqlite::Result<Sending> {
    let op: String = row.get(4)?;
    Ok(Sending {
        seq: row.get(0)?,
        mutation_id: row.get(1)?,
        collection: row.get(2)?,
        record_id: row.get(3)?,
        op: Op::parse(&op).ok_or_else(|| conversion_error(format!("bad op {op}")))?,
        fields: raw_fields(row.get(5)?)?,
        base_version: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        attempts: row.get(7)?,
    })
}

const SELECT: &str = "SELECT seq, mutation_id, collection, record_id, op, fields, base_version, created_at, attempts, next_attempt_at, state, last_error FROM _ferry_outbox";

fn read_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let op: String = row.get(4)?;
    let fields: String = row.get(5)?;
    let state: String = row.get(10)?;
    Ok(OutboxEntry {
        seq: row.get(0)?,
        mutation_id: row.get(1)?,
        collection: row.get(2)?,
        record_id: row.get(3)?,
        op: Op::parse(&op).ok_or_else(|| conversion_error(format!("bad op {op}")))?,
        fields: serde_json::from_str(&fields).map_err(|e| conversion_error(e.to_string()))?,
        base_version: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        created_at: row.get(7)?,
        attempts: row.get(8)?,
        next_attempt_at: row.get(9)?,
        state: EntryState::parse(&state).map_err(|e| conversion_error(e.to_string()))?,
        last_error: row.get(11)?,
    })
}

/// All entries and unsent creates, oldest first.
pub(super) fn list(conn: &rusqlite::Connection, schema: &Schema) -> Result<Vec<OutboxEntry>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY seq"))?;
    let rows = stmt.query_map([], read_entry)?;
    let mut entries: Vec<OutboxEntry> = rows.collect::<rusqlite::Result<_>>()?;
    for c in schema.collections.iter().filter(|c| !c.is_local_only()) {
        entries.extend(unsent_creates(conn, c)?);
    }
    entries.sort_by_key(|e| (e.created_at, e.seq));
    Ok(entries)
}

/// Unsent creates of `c` (records created locally with no outbox entry), as
/// entries with `seq` 0 and no mutation id yet.
fn unsent_creates(
    conn: &rusqlite::Connection,
    c: &crate::schema::Collection,
) -> Result<Vec<OutboxEntry>> {
    let sql = format!(
        "SELECT {} FROM {t} t WHERE {UNSENT_CREATE}",
        super::records::select_list(c),
        t = super::records::quote(&c.name)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([&c.name])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let r = super::records::read_record(c, row)?;
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

/// The rows of a collection `t` that are unsent creates (`?1` is the
/// collection's name). `_status <> 'synced'` is the partial index's predicate:
/// only pending rows are read, in index order (status, id).
const UNSENT_CREATE: &str = "t._status <> 'synced' AND t._status = 'created'
    AND NOT EXISTS (SELECT 1 FROM _ferry_outbox o WHERE o.collection = ?1
                    AND o.record_id = t.id AND o.state <> 'quarantined')";

/// Whether a push may find something to send: a pending entry, or a record with
/// unconfirmed changes (an unsent create has no entry). Index-only reads.
pub(super) fn anything_to_send(conn: &rusqlite::Connection, schema: &Schema) -> Result<bool> {
    let entries: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM _ferry_outbox WHERE state = 'pending')")?
        .query_row([], |r| r.get(0))?;
    if entries {
        return Ok(true);
    }
    for c in schema.collections.iter().filter(|c| !c.is_local_only()) {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE _status <> 'synced')",
            super::records::quote(&c.name)
        );
        if conn.prepare_cached(&sql)?.query_row([], |r| r.get(0))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Counts of records with changes the server has not confirmed (one each, however
/// many edits they carry: an index-only count of the pending rows) and of
/// quarantined mutations.
pub(super) fn counts(conn: &rusqlite::Connection, schema: &Schema) -> Result<(u64, u64)> {
    let quarantined: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM _ferry_outbox WHERE state = 'quarantined'")?
        .query_row([], |r| r.get(0))?;
    let mut pending = 0;
    for c in schema.collections.iter().filter(|c| !c.is_local_only()) {
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE _status <> 'synced'",
            super::records::quote(&c.name)
        );
        let n: i64 = conn.prepare_cached(&sql)?.query_row([], |r| r.get(0))?;
        pending += n as u64;
    }
    Ok((pending, quarantined as u64))
}

impl Store {
    /// Whether a push may find something to send (see [`anything_to_send`]).
    pub(crate) fn anything_to_send(&self) -> Result<bool> {
        self.read(|c| anything_to_send(c, self.schema()))
    }

    /// When the first entry waiting to be retried becomes due, if any.
    pub fn next_attempt_at(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MIN(next_attempt_at) FROM _ferry_outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
    }
}

/// What [`Writer::enqueue`] left in the outbox for the record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// An entry remains to be pushed.
    Queued,
    /// A create and a delete cancelled out: nothing is left to push.
    Cancelled,
}

/// Local writes.
impl Writer<'_, '_> {
    /// Records a local mutation, coalescing it into the record's unsent entry if any.
    /// `created` says the record is a local create (`_status = 'created'`).
    pub(crate) fn enqueue(
        &self,
        collection: &str,
        record_id: &str,
        op: Op,
        fields: &Fields,
        base_version: Option<u64>,
        created: bool,
    ) -> Result<Enqueued> {
        let latest: Option<(i64, String, String, i64, String)> = self
            .tx
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
                    self.remove_entry(seq)?;
                    Ok(Enqueued::Cancelled)
                }
                Some((op, f)) => {
                    self.tx
                        .prepare_cached(
                            "UPDATE _ferry_outbox SET op = ?2, fields = ?3 WHERE seq = ?1",
                        )?
                        .execute(params![seq, op.as_str(), Value::Object(f).to_string()])?;
                    Ok(Enqueued::Queued)
                }
            };
        }
        self.append_entry(collection, record_id, op, fields, base_version)?;
        Ok(Enqueued::Queued)
    }

    /// Appends a new pending entry without coalescing.
    pub(crate) fn append_entry(
        &self,
        collection: &str,
        record_id: &str,
        op: Op,
        fields: &Fields,
        base_version: Option<u64>,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR FAIL INTO _ferry_outbox (mutation_id, collection, record_id, op, fields, base_version, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                uuid::Uuid::now_v7().to_string(),
                collection,
                record_id,
                op.as_str(),
                serde_json::to_string(fields)?,
                base_version.map(|v| v as i64),
                self.now,
            ])?;
        Ok(())
    }

    /// Every entry and unsent create, oldest first, as this transaction sees them.
    pub(crate) fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        list(self.tx, self.schema)
    }
}

/// Whether [`Writer::pick_sendable`] takes an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Leave it.
    Skip,
    /// Take it, and look at the next.
    Take,
    /// Take it, and stop.
    TakeLast,
}

/// Sending: choosing a batch, and returning it when it is not sent.
impl Writer<'_, '_> {
    /// Walks the entries queued or in flight in outbox order, keys only (the
    /// entries already in flight are many: a pipelined push has the previous
    /// batch out), and loads those `pick` takes. `pick` gets each entry's
    /// record (collection, id) and whether it is queued and due now.
    pub(crate) fn pick_sendable(
        &self,
        mut pick: impl FnMut((String, String), bool) -> Pick,
    ) -> Result<Vec<Sending>> {
        let mut scan = self.tx.prepare_cached(
            "SELECT seq, collection, record_id, state = 'pending' AND next_attempt_at <= ?1
                 FROM _ferry_outbox WHERE state IN ('pending','in_flight') ORDER BY seq",
        )?;
        let mut load = self
            .tx
            .prepare_cached(&format!("{SELECT_SENDING} WHERE seq = ?1"))?;
        let mut rows = scan.query([self.now])?;
        let mut chosen = Vec::new();
        while let Some(row) = rows.next()? {
            let key: (String, String) = (row.get(1)?, row.get(2)?);
            let due: bool = row.get(3)?;
            let step = pick(key, due);
            if step == Pick::Skip {
                continue;
            }
            chosen.push(load.query_row([row.get::<_, i64>(0)?], read_sending)?);
            if step == Pick::TakeLast {
                break;
            }
        }
        Ok(chosen)
    }

    /// Marks entries in flight: one more attempt each, and unanswered until an
    /// answer comes.
    pub(crate) fn mark_in_flight(&self, entries: &mut [Sending]) -> Result<()> {
        let mut mark = self.tx.prepare_cached(
            "UPDATE _ferry_outbox SET state = 'in_flight', attempts = attempts + 1, unanswered = 1 WHERE seq = ?1",
        )?;
        for e in entries {
            mark.execute([e.seq])?;
            e.attempts += 1;
        }
        Ok(())
    }

    /// Sends unsent creates of `c` for the first time, in one statement: each
    /// becomes an in-flight entry, with a new mutation id and its fields frozen as
    /// JSON built by SQLite from the row. At most `max`, in id order; only those
    /// in `ids` if given. Returns them in seq order.
    pub(crate) fn freeze_creates(
        &self,
        c: &crate::schema::Collection,
        ids: Option<&[&str]>,
        max: usize,
    ) -> Result<Vec<Sending>> {
        let sql = format!(
            "INSERT INTO _ferry_outbox (mutation_id, collection, record_id, op, fields, created_at, state, attempts, unanswered)
         SELECT ferry_uuid7(), ?1, t.id, 'create', {}, t._created_at, 'in_flight', 1, 1
         FROM {} t WHERE {UNSENT_CREATE}
           AND (?3 IS NULL OR t.id IN (SELECT value FROM json_each(?3)))
         ORDER BY t._status, t.id LIMIT ?2
         RETURNING seq, mutation_id, record_id, fields",
            super::records::json_object_sql(c, "t."),
            super::records::quote(&c.name)
        );
        let ids = ids.map(serde_json::to_string).transpose()?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![&c.name, limit, ids])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Sending {
                seq: row.get(0)?,
                mutation_id: row.get(1)?,
                collection: c.name.clone(),
                record_id: row.get(2)?,
                op: Op::Create,
                fields: raw_fields(row.get(3)?)?,
                base_version: None,
                attempts: 1,
            });
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Queues in-flight entries again, each `(seq, next_attempt_at)`;
    /// an entry no longer in flight is left as it is.
    pub(crate) fn put_back(&self, entries: impl IntoIterator<Item = (i64, i64)>) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "UPDATE _ferry_outbox SET state = 'pending', next_attempt_at = ?2 WHERE seq = ?1 AND state = 'in_flight'",
        )?;
        for (seq, next) in entries {
            stmt.execute(params![seq, next])?;
        }
        Ok(())
    }

    /// Queues every in-flight entry again.
    pub(crate) fn reset_in_flight(&self) -> Result<()> {
        self.tx.execute(
            "UPDATE _ferry_outbox SET state = 'pending' WHERE state = 'in_flight'",
            [],
        )?;
        Ok(())
    }

    /// Makes every queued entry due now.
    pub(crate) fn make_due(&self) -> Result<()> {
        self.tx.execute(
            "UPDATE _ferry_outbox SET next_attempt_at = 0 WHERE state = 'pending'",
            [],
        )?;
        Ok(())
    }
}

/// A queued entry that was never sent (see [`Writer::latest_unsent_entry`]).
#[derive(Debug)]
pub(crate) struct UnsentEntry {
    pub seq: i64,
    pub op: Op,
    pub fields: Fields,
}

/// Applying the answers to a batch.
impl Writer<'_, '_> {
    /// The entry waits again, until `next_attempt_at`. It stays unanswered only
    /// if it was and `unanswered` says the send got no answer again (a `retry`
    /// answer says the server holds nothing under its mutation id).
    pub(crate) fn retry_entry(
        &self,
        seq: i64,
        next_attempt_at: i64,
        unanswered: bool,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE _ferry_outbox SET state = 'pending', next_attempt_at = ?2,
         unanswered = unanswered AND ?3 WHERE seq = ?1",
            )?
            .execute(params![seq, next_attempt_at, unanswered])?;
        Ok(())
    }

    /// Removes one entry.
    pub(crate) fn remove_entry(&self, seq: i64) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM _ferry_outbox WHERE seq = ?1")?
            .execute([seq])?;
        Ok(())
    }

    /// Removes these entries, in one statement.
    pub(crate) fn remove_entries(&self, seqs: &[i64]) -> Result<()> {
        self.tx
            .prepare_cached(
                "DELETE FROM _ferry_outbox WHERE seq IN (SELECT value FROM json_each(?1))",
            )?
            .execute([&serde_json::to_string(seqs)?])?;
        Ok(())
    }

    /// Removes every entry of the record, quarantined ones included.
    pub(crate) fn remove_all_entries(&self, collection: &str, record_id: &str) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2")?
            .execute([collection, record_id])?;
        Ok(())
    }

    /// Removes the record's queued entries.
    pub(crate) fn remove_queued_entries(&self, collection: &str, record_id: &str) -> Result<()> {
        self.tx
            .prepare_cached(
                "DELETE FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND state = 'pending'",
            )?
            .execute(params![collection, record_id])?;
        Ok(())
    }

    /// How many entries of the record, besides `seq`, are not quarantined.
    pub(crate) fn other_entries(&self, collection: &str, record_id: &str, seq: i64) -> Result<i64> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT COUNT(*) FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2
             AND seq <> ?3 AND state <> 'quarantined'",
            )?
            .query_row(params![collection, record_id, seq], |r| r.get(0))?)
    }

    /// How many entries, quarantined ones included, these records have.
    pub(crate) fn count_entries<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k (String, String)>,
    ) -> Result<i64> {
        let mut n = 0;
        let mut stmt = self.tx.prepare_cached(
            "SELECT COUNT(*) FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2",
        )?;
        for (c, id) in keys {
            n += stmt.query_row([c, id], |r| r.get::<_, i64>(0))?;
        }
        Ok(n)
    }

    /// Which of these records of `collection` have an entry that is not
    /// quarantined, in one statement.
    pub(crate) fn with_entries(
        &self,
        collection: &str,
        record_ids: &[&str],
    ) -> Result<HashSet<String>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT record_id FROM _ferry_outbox WHERE collection = ?1 AND state <> 'quarantined'
                 AND record_id IN (SELECT value FROM json_each(?2))",
            )?
            .query_map(
                params![collection, serde_json::to_string(record_ids)?],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The record's latest queued entry that was never sent, if any.
    pub(crate) fn latest_unsent_entry(
        &self,
        collection: &str,
        record_id: &str,
    ) -> Result<Option<UnsentEntry>> {
        let row: Option<(i64, String, String)> = self
            .tx
            .prepare_cached(
                "SELECT seq, op, fields FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2
             AND state = 'pending' AND attempts = 0 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![collection, record_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        row.map(|(seq, op, fields)| {
            Ok(UnsentEntry {
                seq,
                op: Op::parse(&op).ok_or_else(|| Error::Internal(format!("bad op {op}")))?,
                fields: serde_json::from_str(&fields)?,
            })
        })
        .transpose()
    }

    /// Rewrites an unsent entry's fields and base version.
    pub(crate) fn rewrite_entry(&self, seq: i64, fields: Fields, base_version: u64) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE _ferry_outbox SET fields = ?2, base_version = ?3 WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                Value::Object(fields).to_string(),
                base_version as i64
            ])?;
        Ok(())
    }

    /// Parks a permanently rejected entry in the quarantine.
    pub(crate) fn quarantine_entry(&self, seq: i64, reason: &str) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE _ferry_outbox SET state = 'quarantined', last_error = ?2 WHERE seq = ?1",
            )?
            .execute(params![seq, reason])?;
        Ok(())
    }

    /// Forgets a quarantined entry; says whether there was one.
    pub(crate) fn remove_quarantined(&self, mutation_id: &str) -> Result<bool> {
        let n = self.tx.execute(
            "DELETE FROM _ferry_outbox WHERE mutation_id = ?1 AND state = 'quarantined'",
            [mutation_id],
        )?;
        Ok(n > 0)
    }
}

/// Whether an entry may be rewritten: it waits to be sent, and the server does
/// not hold its mutation id (it was never sent, or the server answered that it
/// did not apply it). An entry whose send got no answer (`unanswered`) may be
/// held, and a retry of it is answered from what the server held then, whatever
/// the entry says now.
const REWRITABLE: &str = "state = 'pending' AND unanswered = 0";

/// Rebasing over a newer server row.
impl Writer<'_, '_> {
    /// After the record was rebased over server `version`, its rewritable entries
    /// are based on that version.
    pub(crate) fn rebase_entries(
        &self,
        collection: &str,
        record_id: &str,
        version: u64,
    ) -> Result<()> {
        self.tx
            .prepare_cached(&format!(
                "UPDATE _ferry_outbox SET base_version = ?3
         WHERE collection = ?1 AND record_id = ?2 AND {REWRITABLE}"
            ))?
            .execute(params![collection, record_id, version as i64])?;
        Ok(())
    }

    /// After a rebase over server `version`, what remains to push of the record is
    /// exactly `diff` (what still differs from the server). Rewritable updates are
    /// rewritten to carry it (or dropped when it is empty); an entry the server may
    /// hold is left as it is, and when nothing rewritable is left to carry `diff`,
    /// it is queued behind as a new update based on `version`. Returns whether
    /// any entry for the record remains.
    pub(crate) fn rebase_entries_onto(
        &self,
        collection: &str,
        record_id: &str,
        diff: &Fields,
        version: u64,
    ) -> Result<bool> {
        if diff.is_empty() {
            self.tx
                .prepare_cached(&format!(
                    "DELETE FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND {REWRITABLE} AND op = 'update'"
                ))?
                .execute(params![collection, record_id])?;
        } else {
            self.tx
                .prepare_cached(&format!(
                    "UPDATE _ferry_outbox SET fields = ?3 WHERE collection = ?1 AND record_id = ?2 AND {REWRITABLE} AND op = 'update'"
                ))?
                .execute(params![collection, record_id, serde_json::to_string(diff)?])?;
        }
        self.rebase_entries(collection, record_id, version)?;
        let (held, rewritable): (i64, i64) = self
            .tx
            .prepare_cached(&format!(
                "SELECT COUNT(*) FILTER (WHERE NOT ({REWRITABLE})), COUNT(*) FILTER (WHERE {REWRITABLE})
             FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND state <> 'quarantined'"
            ))?
            .query_row(params![collection, record_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        if rewritable == 0 && held > 0 && !diff.is_empty() {
            self.append_entry(collection, record_id, Op::Update, diff, Some(version))?;
            return Ok(true);
        }
        Ok(held + rewritable > 0)
    }

    /// Whether the record has an entry that is not quarantined.
    pub(crate) fn has_entries(&self, collection: &str, record_id: &str) -> Result<bool> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND state <> 'quarantined')",
            )?
            .query_row(params![collection, record_id], |r| r.get(0))?)
    }
}
