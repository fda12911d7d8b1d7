//! Pushing the outbox, and applying per-item results.
//!
//! A batch holds at most one entry per record, in outbox order, and never an
//! entry whose record has an earlier entry still in flight or waiting to retry.
//! Each result decides its own entry: `applied` makes the record synced with the
//! server version; `conflict` resolves and re-queues under a new mutation id;
//! `rejected` rolls the record back to its shadow (the last server state), emits a
//! rollback event and quarantines the mutation; `retry` backs off that entry
//! alone. One bad item never holds up the others.

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_protocol::{MutationOutcome, Op, PushRequest, PushResponse, RawFields, ServerRecord};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use super::resolver::ConflictResolver;
use crate::error::Result;
use crate::events::ChangeSource;
use crate::schema::Collection;
use crate::store::outbox::Sending;
use crate::store::{Record, RecordStatus, Store, Writer, outbox, shadow};

/// Backoff of one entry after `attempts` sends ([`super::policy::backoff_ms`]).
pub fn backoff_ms(attempts: u32) -> i64 {
    super::policy::backoff_ms(attempts, fastrand::f64())
}

/// What a push did, item by item.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct PushReport {
    pub applied: u64,
    pub conflicts: u64,
    pub rejected: u64,
    pub retried: u64,
}

impl PushReport {
    pub fn add(&mut self, o: &PushReport) {
        self.applied += o.applied;
        self.conflicts += o.conflicts;
        self.rejected += o.rejected;
        self.retried += o.retried;
    }
}

/// A batch marked in flight, and the request that sends it.
pub(crate) type Prepared = (Vec<Sending>, PushRequest<RawFields>);

/// Picks the next batch, marks it in flight, and returns it with the request.
pub(crate) fn prepare(
    store: &Store,
    client_id: &str,
    max: usize,
    only: Option<&HashSet<(String, String)>>,
) -> Result<Option<Prepared>> {
    // Nothing to send is the common case of a sync: no write transaction for it.
    if !store.read(|c| outbox::anything_to_send(c, store.schema()))? {
        return Ok(None);
    }
    store.write_tx(ChangeSource::Remote, |w| {
        prepare_in(w, client_id, max, only)
    })
}

fn prepare_in(
    w: &mut Writer<'_, '_>,
    client_id: &str,
    max: usize,
    only: Option<&HashSet<(String, String)>>,
) -> Result<Option<Prepared>> {
    let mut chosen = Vec::new();
    {
        // Keys only: the entries already in flight are many (a pipelined push
        // has the previous batch out) and only block their records.
        let mut scan = w.tx.prepare_cached(
            "SELECT seq, collection, record_id, state = 'pending' AND next_attempt_at <= ?1
                 FROM _ferry_outbox WHERE state IN ('pending','in_flight') ORDER BY seq",
        )?;
        let mut load =
            w.tx.prepare_cached(&format!("{} WHERE seq = ?1", outbox::SELECT_SENDING))?;
        let mut rows = scan.query([w.now])?;
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        while let Some(row) = rows.next()? {
            let key: (String, String) = (row.get(1)?, row.get(2)?);
            let due: bool = row.get(3)?;
            let wanted = due && only.is_none_or(|o| o.contains(&key));
            if !blocked.insert(key) || !wanted {
                continue;
            }
            chosen.push(load.query_row([row.get::<_, i64>(0)?], outbox::read_sending)?);
            if chosen.len() >= max {
                break;
            }
        }
    }
    let mut mark = w.tx.prepare_cached(
        "UPDATE _ferry_outbox SET state = 'in_flight', attempts = attempts + 1, unanswered = 1 WHERE seq = ?1",
    )?;
    for e in chosen.iter_mut() {
        mark.execute([e.seq])?;
        e.attempts += 1;
    }
    // Unsent creates are sent for the first time: frozen into entries now.
    for c in w.schema.collections.iter().filter(|c| c.is_synced()) {
        if chosen.len() >= max {
            break;
        }
        let ids: Option<Vec<&str>> = only.map(|o| {
            o.iter()
                .filter(|(name, _)| *name == c.name)
                .map(|(_, id)| id.as_str())
                .collect()
        });
        if ids.as_ref().is_some_and(|ids| ids.is_empty()) {
            continue;
        }
        chosen.extend(outbox::freeze_creates(
            w.tx,
            c,
            ids.as_deref(),
            max - chosen.len(),
        )?);
    }
    if chosen.is_empty() {
        return Ok(None);
    }
    let req = PushRequest {
        client_id: client_id.to_string(),
        mutations: chosen.iter().map(Sending::to_mutation).collect(),
    };
    Ok(Some((chosen, req)))
}

/// Puts every in-flight entry back to pending (on start-up: a crash mid-push).
pub(crate) fn reset_in_flight(store: &Store) -> Result<()> {
    store.write_tx(ChangeSource::Remote, |w| {
        w.tx.execute(
            "UPDATE _ferry_outbox SET state = 'pending' WHERE state = 'in_flight'",
            [],
        )?;
        Ok(())
    })
}

/// Makes every waiting entry due now (after a re-pull resolved what blocked it).
pub(crate) fn make_due(store: &Store) -> Result<()> {
    store.write_tx(ChangeSource::Remote, |w| {
        w.tx.execute(
            "UPDATE _ferry_outbox SET next_attempt_at = 0 WHERE state = 'pending'",
            [],
        )?;
        Ok(())
    })
}

/// The whole request failed (network, 5xx, auth): back off every entry of it.
pub(crate) fn fail_batch(store: &Store, batch: &[Sending], backoff: bool) -> Result<()> {
    store.write_tx(ChangeSource::Remote, |w| {
        let mut stmt = w.tx.prepare_cached(
            "UPDATE _ferry_outbox SET state = 'pending', next_attempt_at = ?2 WHERE seq = ?1 AND state = 'in_flight'",
        )?;
        for e in batch {
            let next = if backoff { w.now + backoff_ms(e.attempts) } else { 0 };
            stmt.execute(params![e.seq, next])?;
        }
        Ok(())
    })
}

/// Applies the per-item results of a push and, given `next` (a client id and a
/// batch size), prepares the next batch in the same transaction: one commit per
/// round of a pipelined push. (Rejected entries stay in flight until they are
/// quarantined just after, so the next batch skips their records.)
pub(crate) fn apply_results(
    store: &Store,
    batch: &[Sending],
    resp: &PushResponse,
    resolver: &dyn ConflictResolver,
    next: Option<(&str, usize)>,
) -> Result<(PushReport, Option<Prepared>)> {
    let mut applying = Applying::new(batch, resp);
    let prepared = store.write_tx(ChangeSource::Remote, |w| {
        applying.apply_in(w, resolver)?;
        match next {
            Some((client_id, max)) => prepare_in(w, client_id, max, None),
            None => Ok(None),
        }
    })?;
    match applying.quarantine(store) {
        Ok(report) => Ok((report, prepared)),
        Err(e) => {
            // The next batch was marked in flight but is not sent: it goes back.
            if let Some((entries, _)) = &prepared {
                fail_batch(store, entries, false)?;
            }
            Err(e)
        }
    }
}

/// One batch's results on their way into the store.
struct Applying<'a> {
    batch: &'a [Sending],
    by_id: HashMap<&'a str, &'a MutationOutcome>,
    report: PushReport,
    rejected: Vec<(&'a Sending, String)>,
}

impl<'a> Applying<'a> {
    fn new(batch: &'a [Sending], resp: &'a PushResponse) -> Self {
        Applying {
            batch,
            by_id: resp
                .results
                .iter()
                .map(|r| (r.mutation_id.as_str(), &r.outcome))
                .collect(),
            report: PushReport::default(),
            rejected: Vec::new(),
        }
    }

    /// Everything but the rejections, which roll back in their own transaction.
    fn apply_in(&mut self, w: &mut Writer<'_, '_>, resolver: &dyn ConflictResolver) -> Result<()> {
        let (batch, by_id, report) = (self.batch, &self.by_id, &mut self.report);
        let done = applied_in_bulk(w, batch, by_id)?;
        for e in batch {
            if done.contains(&e.seq) {
                report.applied += 1;
                continue;
            }
            let c = w.schema.collection(&e.collection)?;
            match by_id.get(e.mutation_id.as_str()) {
                Some(MutationOutcome::Applied { version }) => {
                    applied(w, c, e, *version)?;
                    report.applied += 1;
                }
                Some(MutationOutcome::Conflict { server_record, .. }) => {
                    conflict(w, c, e, server_record.as_ref(), resolver)?;
                    report.conflicts += 1;
                }
                Some(MutationOutcome::Rejected { code, message }) => {
                    self.rejected
                        .push((e, format!("{}: {message}", code.as_str())));
                }
                Some(MutationOutcome::Retry { retry_after_ms }) => {
                    let next = w.now + (*retry_after_ms as i64).max(backoff_ms(e.attempts));
                    retry_at(w, e, next, Answer::NotApplied)?;
                    report.retried += 1;
                }
                None => {
                    tracing::warn!(mutation_id = %e.mutation_id, "the server gave no result for a mutation; retrying it later");
                    retry_at(w, e, w.now + backoff_ms(e.attempts), Answer::None)?;
                    report.retried += 1;
                }
            }
        }
        Ok(())
    }

    /// Rolls back and quarantines the rejected entries; returns the report.
    fn quarantine(mut self, store: &Store) -> Result<PushReport> {
        if !self.rejected.is_empty() {
            self.report.rejected = self.rejected.len() as u64;
            store.write_tx(ChangeSource::Rollback, |w| {
                for (e, reason) in &self.rejected {
                    let c = w.schema.collection(&e.collection)?;
                    quarantine(w, c, e, reason)?;
                }
                Ok(())
            })?;
        }
        Ok(self.report)
    }
}

/// The common outcome of a push, set-based: applied creates and updates whose
/// record has no other entry become synced (a few statements per collection, not
/// a few per record). Returns the seqs it handled; every other entry, including
/// an applied one whose record was edited again meanwhile, goes through
/// [`applied`] and its siblings one by one.
fn applied_in_bulk(
    w: &mut Writer<'_, '_>,
    batch: &[Sending],
    by_id: &HashMap<&str, &MutationOutcome>,
) -> Result<HashSet<i64>> {
    let mut by_collection: BTreeMap<&str, Vec<(&Sending, u64)>> = BTreeMap::new();
    for e in batch.iter().filter(|e| e.op != Op::Delete) {
        if let Some(MutationOutcome::Applied { version }) = by_id.get(e.mutation_id.as_str()) {
            by_collection
                .entry(&e.collection)
                .or_default()
                .push((e, *version));
        }
    }
    let mut done = HashSet::new();
    for (name, entries) in by_collection {
        let c = w.schema.collection(name)?;
        let seqs = json!(entries.iter().map(|(e, _)| e.seq).collect::<Vec<_>>()).to_string();
        w.tx.prepare_cached(
            "DELETE FROM _ferry_outbox WHERE seq IN (SELECT value FROM json_each(?1))",
        )?
        .execute([&seqs])?;
        let ids = json!(
            entries
                .iter()
                .map(|(e, _)| &e.record_id)
                .collect::<Vec<_>>()
        )
        .to_string();
        let busy: HashSet<String> = w
            .tx
            .prepare_cached(
                "SELECT record_id FROM _ferry_outbox WHERE collection = ?1 AND state <> 'quarantined'
                 AND record_id IN (SELECT value FROM json_each(?2))",
            )?
            .query_map(params![name, ids], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let clean: Vec<&(&Sending, u64)> = entries
            .iter()
            .filter(|(e, _)| !busy.contains(&e.record_id))
            .collect();
        // A change of a synced record saved a shadow, and so did the rebase of
        // a sent create over the server's row.
        let updated: Vec<&String> = clean.iter().map(|(e, _)| &e.record_id).collect();
        if !updated.is_empty() {
            w.tx.prepare_cached(
                "DELETE FROM _ferry_shadow WHERE collection = ?1 AND record_id IN (SELECT value FROM json_each(?2))",
            )?
            .execute(params![name, json!(updated).to_string()])?;
        }
        let pairs = json!(
            clean
                .iter()
                .map(|(e, v)| json!([e.record_id, v]))
                .collect::<Vec<_>>()
        );
        let rows = !w.events.is_reload(name);
        for rec in w.mark_synced_many(c, &pairs.to_string(), rows)? {
            let id = rec.id.clone();
            w.events.upsert(&c.name, &id, rec.into_json());
        }
        done.extend(clean.iter().map(|(e, _)| e.seq));
    }
    Ok(done)
}

/// What the server said of an entry it is asked to send again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// It did not apply it (`retry`): it holds nothing under its mutation id.
    NotApplied,
    /// Nothing: it may have applied it.
    None,
}

fn retry_at(w: &Writer<'_, '_>, e: &Sending, next: i64, answer: Answer) -> Result<()> {
    w.tx.prepare_cached(
        "UPDATE _ferry_outbox SET state = 'pending', next_attempt_at = ?2,
         unanswered = unanswered AND ?3 WHERE seq = ?1",
    )?
    .execute(params![e.seq, next, answer == Answer::None])?;
    Ok(())
}

fn remove_entry(w: &Writer<'_, '_>, e: &Sending) -> Result<()> {
    w.tx.prepare_cached("DELETE FROM _ferry_outbox WHERE seq = ?1")?
        .execute([e.seq])?;
    Ok(())
}

fn other_entries(w: &Writer<'_, '_>, e: &Sending) -> Result<i64> {
    Ok(w.tx
        .prepare_cached(
            "SELECT COUNT(*) FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2
             AND seq <> ?3 AND state <> 'quarantined'",
        )?
        .query_row(params![e.collection, e.record_id, e.seq], |r| r.get(0))?)
}

fn applied(w: &mut Writer<'_, '_>, c: &Collection, e: &Sending, version: u64) -> Result<()> {
    remove_entry(w, e)?;
    if let Some(rec) = w.load(c, &e.record_id)?
        && rec.version.is_some_and(|v| v >= version)
    {
        return superseded(w, c, rec, e);
    }
    if other_entries(w, e)? == 0 {
        // The common case, kept to narrow statements: a push applies thousands.
        shadow::remove(w.tx, &c.name, &e.record_id)?;
        if e.op == Op::Delete {
            w.delete_row(c, &e.record_id)?;
            return Ok(());
        }
        if let Some(rec) = w.mark_synced(c, &e.record_id, version)? {
            w.events.upsert_with(&c.name, &rec.id, || rec.to_json());
        }
        return Ok(());
    }
    let Some(mut rec) = w.load(c, &e.record_id)? else {
        return Ok(());
    };
    {
        // Edited again while in flight: the server now holds shadow + what we sent.
        let mut server = match e.op {
            Op::Create => Default::default(),
            _ => shadow::get(w.tx, &c.name, &rec.id)?
                .map(|s| s.1)
                .unwrap_or_default(),
        };
        server.extend(e.parsed_fields()?);
        shadow::set(w.tx, &c.name, &rec.id, Some(version), &server)?;
        rec.version = Some(version);
        if rec.status == RecordStatus::Created {
            rec.status = RecordStatus::Updated;
        }
        w.replace_row(c, &rec)?;
        outbox::rebase(w.tx, &c.name, &rec.id, version)?;
    }
    Ok(())
}

/// The answer is older than the server row the record was since rebased over
/// (the answer to a retried mutation, replayed by the server from its mutation
/// id): that row already holds what the mutation did, and what the rebase left
/// to push is queued behind it. The record is synced once nothing is left.
fn superseded(w: &mut Writer<'_, '_>, c: &Collection, mut rec: Record, e: &Sending) -> Result<()> {
    if rec.status == RecordStatus::Synced || other_entries(w, e)? > 0 {
        return Ok(());
    }
    shadow::remove(w.tx, &c.name, &rec.id)?;
    if rec.status == RecordStatus::Deleted {
        w.delete_row(c, &rec.id)?;
        return Ok(());
    }
    rec.status = RecordStatus::Synced;
    rec.changed.clear();
    w.replace_row(c, &rec)?;
    w.events.upsert(&c.name, &rec.id, rec.to_json());
    Ok(())
}

fn conflict(
    w: &mut Writer<'_, '_>,
    c: &Collection,
    e: &Sending,
    server: Option<&ServerRecord>,
    resolver: &dyn ConflictResolver,
) -> Result<()> {
    remove_entry(w, e)?;
    let Some(server) = server else {
        // Deleted on the server: it wins over our change.
        forget_record(w, c, &e.record_id)?;
        w.events.delete(&c.name, &e.record_id);
        return Ok(());
    };
    let Some(mut local) = w.load(c, &e.record_id)? else {
        return Ok(());
    };
    shadow::set(
        w.tx,
        &c.name,
        &local.id,
        Some(server.version),
        &server.fields,
    )?;
    if e.op == Op::Delete || local.status == RecordStatus::Deleted {
        local.version = Some(server.version);
        w.replace_row(c, &local)?;
        requeue(w, e, Op::Delete, Default::default(), server.version)?;
        return Ok(());
    }
    let merged = super::staging::resolved(c, &local, server, resolver);
    let diff = super::staging::differing(&merged, &server.fields);
    local.fields = merged;
    local.version = Some(server.version);
    local.updated_at = w.now;
    if diff.is_empty() && other_entries(w, e)? == 0 {
        local.status = RecordStatus::Synced;
        local.changed.clear();
        shadow::remove(w.tx, &c.name, &local.id)?;
    } else {
        local.status = RecordStatus::Updated;
        local.changed = diff.keys().cloned().collect();
        if !diff.is_empty() {
            requeue(w, e, Op::Update, diff, server.version)?;
        }
        outbox::rebase(w.tx, &c.name, &local.id, server.version)?;
    }
    w.replace_row(c, &local)?;
    w.events.upsert(&c.name, &local.id, local.to_json());
    Ok(())
}

/// Re-queues a resolved change under a new mutation id, folding it under any
/// later unsent edit of the same record (the later edit's values win).
fn requeue(
    w: &Writer<'_, '_>,
    e: &Sending,
    op: Op,
    fields: crate::store::Fields,
    base: u64,
) -> Result<()> {
    let later: Option<(i64, String, String)> =
        w.tx.prepare_cached(
            "SELECT seq, op, fields FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2
             AND state = 'pending' AND attempts = 0 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![e.collection, e.record_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    match later {
        Some((_, later_op, _)) if later_op == "delete" => Ok(()),
        Some((seq, _, later_fields)) => {
            let mut merged = fields;
            let later: crate::store::Fields = serde_json::from_str(&later_fields)?;
            merged.extend(later);
            w.tx.prepare_cached(
                "UPDATE _ferry_outbox SET fields = ?2, base_version = ?3 WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                serde_json::Value::Object(merged).to_string(),
                base as i64
            ])?;
            Ok(())
        }
        None => outbox::append(
            w.tx,
            &e.collection,
            &e.record_id,
            op,
            &fields,
            Some(base),
            w.now,
        )
        .map(|_| ()),
    }
}

/// Drops a record and its unsent entries (the server deleted it).
pub(crate) fn forget_record(w: &Writer<'_, '_>, c: &Collection, id: &str) -> Result<()> {
    w.delete_row(c, id)?;
    shadow::remove(w.tx, &c.name, id)?;
    w.tx.prepare_cached(
        "DELETE FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND state = 'pending'",
    )?
    .execute(params![c.name, id])?;
    Ok(())
}

/// Rolls the record back to its last server state and quarantines the mutation.
fn quarantine(w: &mut Writer<'_, '_>, c: &Collection, e: &Sending, reason: &str) -> Result<()> {
    w.tx.prepare_cached(
        "UPDATE _ferry_outbox SET state = 'quarantined', last_error = ?2 WHERE seq = ?1",
    )?
    .execute(params![e.seq, reason])?;
    // Later unsent edits of the record stood on the rejected one: they go too.
    w.tx.prepare_cached(
        "DELETE FROM _ferry_outbox WHERE collection = ?1 AND record_id = ?2 AND state = 'pending'",
    )?
    .execute(params![e.collection, e.record_id])?;
    match shadow::get(w.tx, &c.name, &e.record_id)? {
        Some((version, fields)) => {
            let now = w.now;
            let existing = w.load(c, &e.record_id)?;
            let rec = Record {
                id: e.record_id.clone(),
                fields,
                status: RecordStatus::Synced,
                changed: vec![],
                version,
                created_at: existing.as_ref().map(|r| r.created_at).unwrap_or(now),
                updated_at: now,
            };
            if existing.is_some() {
                w.replace_row(c, &rec)?;
            } else {
                w.insert_row(c, &rec)?;
            }
            shadow::remove(w.tx, &c.name, &e.record_id)?;
            w.events.upsert(&c.name, &rec.id, rec.to_json());
        }
        None => {
            // Never on the server (a rejected create): the record goes.
            if w.load(c, &e.record_id)?.is_some() {
                w.delete_row(c, &e.record_id)?;
                w.events.delete(&c.name, &e.record_id);
            }
        }
    }
    Ok(())
}
