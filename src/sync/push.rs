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
use serde::Serialize;

use super::rebase::{Candidate, Merger, differing};
use crate::error::Result;
use crate::events::ChangeSource;
use crate::schema::Collection;
use crate::store::outbox::{Pick, Sending};
use crate::store::{Record, RecordStatus, Store, Writer};

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
    if !store.anything_to_send()? {
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
    // Every entry queued or in flight, in outbox order: the first of each
    // record is taken if it is due (and wanted); any later one waits behind it,
    // and so do the records of the entries in flight.
    let mut blocked: HashSet<(String, String)> = HashSet::new();
    let mut taken = 0;
    let mut chosen = w.pick_sendable(|key, due| {
        let wanted = due && only.is_none_or(|o| o.contains(&key));
        if !blocked.insert(key) || !wanted {
            return Pick::Skip;
        }
        taken += 1;
        if taken >= max {
            Pick::TakeLast
        } else {
            Pick::Take
        }
    })?;
    w.mark_in_flight(&mut chosen)?;
    // Unsent creates are sent for the first time: frozen into entries now.
    for c in w.schema().collections.iter().filter(|c| !c.is_local_only()) {
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
        chosen.extend(w.freeze_creates(c, ids.as_deref(), max - chosen.len())?);
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
    store.write_tx(ChangeSource::Remote, |w| w.reset_in_flight())
}

/// Makes every waiting entry due now (after a re-pull resolved what blocked it).
pub(crate) fn make_due(store: &Store) -> Result<()> {
    store.write_tx(ChangeSource::Remote, |w| w.make_due())
}

/// The whole request failed (network, 5xx, auth): back off every entry of it.
pub(crate) fn fail_batch(store: &Store, batch: &[Sending], backoff: bool) -> Result<()> {
    store.write_tx(ChangeSource::Remote, |w| {
        let now = w.now();
        w.put_back(batch.iter().map(|e| {
            let next = if backoff {
                now + backoff_ms(e.attempts)
            } else {
                0
            };
            (e.seq, next)
        }))
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
    merger: &Merger,
    next: Option<(&str, usize)>,
) -> Result<(PushReport, Option<Prepared>)> {
    let mut applying = Applying::new(batch, resp);
    let prepared = store.write_tx(ChangeSource::Remote, |w| {
        applying.apply_in(w, merger)?;
        crate::crash::point("apply");
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

/// Each result of a push answer by its mutation id (answers are matched by id,
/// never by position).
pub(crate) fn outcomes_by_id(resp: &PushResponse) -> HashMap<&str, &MutationOutcome> {
    resp.results
        .iter()
        .map(|r| (r.mutation_id.as_str(), &r.outcome))
        .collect()
}

/// The records that `conflict` answers of `resp` will merge: what a host
/// resolver must answer for before they are applied (see [`super::rebase`]).
pub(crate) fn conflict_candidates(
    store: &Store,
    batch: &[Sending],
    resp: &PushResponse,
) -> Result<Vec<Candidate>> {
    let by_id = outcomes_by_id(resp);
    let mut out = Vec::new();
    for e in batch.iter().filter(|e| e.op != Op::Delete) {
        let Some(MutationOutcome::Conflict {
            server_record: Some(server),
            ..
        }) = by_id.get(e.mutation_id.as_str())
        else {
            continue;
        };
        match store.get(&e.collection, &e.record_id)? {
            Some(local) if local.status != RecordStatus::Deleted => out.push(Candidate {
                collection: e.collection.clone(),
                local,
                server: server.clone(),
            }),
            _ => {}
        }
    }
    Ok(out)
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
            by_id: outcomes_by_id(resp),
            report: PushReport::default(),
            rejected: Vec::new(),
        }
    }

    /// Everything but the rejections, which roll back in their own transaction.
    fn apply_in(&mut self, w: &mut Writer<'_, '_>, merger: &Merger) -> Result<()> {
        let (batch, by_id, report) = (self.batch, &self.by_id, &mut self.report);
        let done = applied_in_bulk(w, batch, by_id)?;
        for e in batch {
            if done.contains(&e.seq) {
                report.applied += 1;
                continue;
            }
            let c = w.schema().collection(&e.collection)?;
            match by_id.get(e.mutation_id.as_str()) {
                Some(MutationOutcome::Applied { version }) => {
                    applied(w, c, e, *version)?;
                    report.applied += 1;
                }
                Some(MutationOutcome::Conflict { server_record, .. }) => {
                    conflict(w, c, e, server_record.as_ref(), merger)?;
                    report.conflicts += 1;
                }
                Some(MutationOutcome::Rejected { code, message }) => {
                    self.rejected
                        .push((e, format!("{}: {message}", code.as_str())));
                }
                Some(MutationOutcome::Retry { retry_after_ms }) => {
                    let next = w.now() + (*retry_after_ms as i64).max(backoff_ms(e.attempts));
                    retry_at(w, e, next, Answer::NotApplied)?;
                    report.retried += 1;
                }
                None => {
                    tracing::warn!(mutation_id = %e.mutation_id, "the server gave no result for a mutation; retrying it later");
                    retry_at(w, e, w.now() + backoff_ms(e.attempts), Answer::None)?;
                    report.retried += 1;
                }
            }
        }
        // A record synced now that the subscriptions do not cover (kept while it
        // was pending, or written outside them) is not held.
        let mut by_collection: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in batch {
            by_collection
                .entry(&e.collection)
                .or_default()
                .push(&e.record_id);
        }
        for (name, ids) in by_collection {
            let c = w.schema().collection(name)?;
            w.evict_uncovered(c, Some(&ids))?;
        }
        Ok(())
    }

    /// Rolls back and quarantines the rejected entries; returns the report.
    fn quarantine(mut self, store: &Store) -> Result<PushReport> {
        if !self.rejected.is_empty() {
            self.report.rejected = self.rejected.len() as u64;
            store.write_tx(ChangeSource::Rollback, |w| {
                for (e, reason) in &self.rejected {
                    let c = w.schema().collection(&e.collection)?;
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
        let c = w.schema().collection(name)?;
        let seqs: Vec<i64> = entries.iter().map(|(e, _)| e.seq).collect();
        w.remove_entries(&seqs)?;
        let ids: Vec<&str> = entries.iter().map(|(e, _)| e.record_id.as_str()).collect();
        let busy = w.with_entries(name, &ids)?;
        let clean: Vec<&(&Sending, u64)> = entries
            .iter()
            .filter(|(e, _)| !busy.contains(&e.record_id))
            .collect();
        // A change of a synced record saved a shadow, and so did the rebase of
        // a sent create over the server's row.
        let updated: Vec<&str> = clean.iter().map(|(e, _)| e.record_id.as_str()).collect();
        if !updated.is_empty() {
            w.remove_shadows(name, &updated)?;
        }
        let pairs: Vec<(&str, u64)> = clean
            .iter()
            .map(|(e, v)| (e.record_id.as_str(), *v))
            .collect();
        let rows = !w.events().is_reload(name);
        for rec in w.mark_synced_many(c, &pairs, rows)? {
            let id = rec.id.clone();
            w.events().upsert(&c.name, &id, rec.into_json());
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
    w.retry_entry(e.seq, next, answer == Answer::None)
}

/// How many entries of the record, besides `e`, are not quarantined.
fn other_entries(w: &Writer<'_, '_>, e: &Sending) -> Result<i64> {
    w.other_entries(&e.collection, &e.record_id, e.seq)
}

fn applied(w: &mut Writer<'_, '_>, c: &Collection, e: &Sending, version: u64) -> Result<()> {
    w.remove_entry(e.seq)?;
    let mut rec = w.load(c, &e.record_id)?;
    let others = other_entries(w, e)?;
    if let Some(rec) = rec.take_if(|r| r.version.is_some_and(|v| v >= version)) {
        return superseded(w, c, rec, others);
    }
    if others == 0 {
        // The common case, kept to narrow statements: a push applies thousands.
        w.remove_shadow(&c.name, &e.record_id)?;
        if e.op == Op::Delete {
            w.delete_row(c, &e.record_id)?;
            return Ok(());
        }
        if let Some(rec) = w.mark_synced(c, &e.record_id, version)? {
            w.events().upsert_with(&c.name, &rec.id, || rec.to_json());
        }
        return Ok(());
    }
    let Some(mut rec) = rec else {
        return Ok(());
    };
    {
        // Edited again while in flight: the server now holds shadow + what we sent.
        let mut server = match e.op {
            Op::Create => Default::default(),
            _ => w.shadow(&c.name, &rec.id)?.map(|s| s.1).unwrap_or_default(),
        };
        server.extend(e.parsed_fields()?);
        w.set_shadow(&c.name, &rec.id, Some(version), &server)?;
        rec.version = Some(version);
        if rec.status == RecordStatus::Created {
            rec.status = RecordStatus::Updated;
        }
        w.replace_row(c, &rec)?;
        w.rebase_entries(&c.name, &rec.id, version)?;
    }
    Ok(())
}

/// The answer is older than the server row the record was since rebased over
/// (the answer to a retried mutation, replayed by the server from its mutation
/// id): that row already holds what the mutation did, and what the rebase left
/// to push is queued behind it. The record is synced once nothing is left.
/// `others`: the record's entries left besides the answered one.
fn superseded(w: &mut Writer<'_, '_>, c: &Collection, mut rec: Record, others: i64) -> Result<()> {
    if rec.status == RecordStatus::Synced || others > 0 {
        return Ok(());
    }
    w.remove_shadow(&c.name, &rec.id)?;
    if rec.status == RecordStatus::Deleted {
        w.delete_row(c, &rec.id)?;
        return Ok(());
    }
    rec.status = RecordStatus::Synced;
    rec.changed.clear();
    w.replace_row(c, &rec)?;
    w.events().upsert(&c.name, &rec.id, rec.to_json());
    Ok(())
}

fn conflict(
    w: &mut Writer<'_, '_>,
    c: &Collection,
    e: &Sending,
    server: Option<&ServerRecord>,
    merger: &Merger,
) -> Result<()> {
    w.remove_entry(e.seq)?;
    let Some(server) = server else {
        // Deleted on the server: it wins over our change.
        forget_record(w, c, &e.record_id)?;
        w.events().delete(&c.name, &e.record_id);
        return Ok(());
    };
    let Some(mut local) = w.load(c, &e.record_id)? else {
        return Ok(());
    };
    w.set_shadow(&c.name, &local.id, Some(server.version), &server.fields)?;
    if e.op == Op::Delete || local.status == RecordStatus::Deleted {
        local.version = Some(server.version);
        w.replace_row(c, &local)?;
        requeue(w, e, Op::Delete, Default::default(), server.version)?;
        return Ok(());
    }
    let merged = merger.resolved(c, &local, server)?;
    let diff = differing(&merged, &server.fields);
    local.fields = merged;
    local.version = Some(server.version);
    local.updated_at = w.now();
    if diff.is_empty() && other_entries(w, e)? == 0 {
        local.status = RecordStatus::Synced;
        local.changed.clear();
        w.remove_shadow(&c.name, &local.id)?;
    } else {
        local.status = RecordStatus::Updated;
        local.changed = diff.keys().cloned().collect();
        if !diff.is_empty() {
            requeue(w, e, Op::Update, diff, server.version)?;
        }
        w.rebase_entries(&c.name, &local.id, server.version)?;
    }
    w.replace_row(c, &local)?;
    w.events().upsert(&c.name, &local.id, local.to_json());
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
    match w.latest_unsent_entry(&e.collection, &e.record_id)? {
        Some(later) if later.op == Op::Delete => Ok(()),
        Some(later) => {
            let mut merged = fields;
            merged.extend(later.fields);
            w.rewrite_entry(later.seq, merged, base)
        }
        None => w.append_entry(&e.collection, &e.record_id, op, &fields, Some(base)),
    }
}

/// Drops a record and its unsent entries (the server deleted it).
pub(crate) fn forget_record(w: &Writer<'_, '_>, c: &Collection, id: &str) -> Result<()> {
    w.delete_row(c, id)?;
    w.remove_shadow(&c.name, id)?;
    w.remove_queued_entries(&c.name, id)
}

/// Rolls the record back to its last server state and quarantines the mutation.
fn quarantine(w: &mut Writer<'_, '_>, c: &Collection, e: &Sending, reason: &str) -> Result<()> {
    w.quarantine_entry(e.seq, reason)?;
    // Later unsent edits of the record stood on the rejected one: they go too.
    w.remove_queued_entries(&e.collection, &e.record_id)?;
    match w.shadow(&c.name, &e.record_id)? {
        Some((version, fields)) => {
            let now = w.now();
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
            w.remove_shadow(&c.name, &e.record_id)?;
            w.events().upsert(&c.name, &rec.id, rec.to_json());
        }
        None => {
            // Never on the server (a rejected create): the record goes.
            if w.load(c, &e.record_id)?.is_some() {
                w.delete_row(c, &e.record_id)?;
                w.events().delete(&c.name, &e.record_id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ferry_protocol::Op;
    use serde_json::json;

    use crate::schema::Schema;
    use crate::store::tests::{obj, open};
    use crate::store::{Fields, Store};

    /// A create's first send freezes its fields as JSON that SQLite builds from the
    /// row; it must say exactly what the record reads back, for every column type.
    #[test]
    fn frozen_create_fields_are_the_record_as_read() {
        let schema = Schema::from_json(
            r#"{"version": 1, "collections": [{"name": "every", "sync": "synced", "columns": [
                {"name": "s", "type": "string", "nullable": true},
                {"name": "i", "type": "integer", "nullable": true},
                {"name": "n", "type": "number", "nullable": true},
                {"name": "b", "type": "boolean", "nullable": true},
                {"name": "j", "type": "json", "nullable": true}]}]}"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("t.db"), schema).unwrap();
        let rows = [
            json!({"id": "a", "s": "quote \" and \\ and ünïcödé 🚀", "i": i64::MAX,
                   "n": 0.1 + 0.2, "b": true, "j": {"nested": [1, 2.5, null, "x"]}}),
            json!({"id": "b", "s": "", "i": -1, "n": 3, "b": false, "j": "just a string"}),
            json!({"id": "c", "n": 1e300, "j": [true]}),
            json!({"id": "d", "n": -2.5e-300}),
        ];
        for r in &rows {
            s.create("every", obj(r.clone())).unwrap();
        }
        let (sent, req) = crate::sync::push::prepare(&s, "client", 10, None)
            .unwrap()
            .unwrap();
        assert_eq!(sent.len(), rows.len());
        for (e, m) in sent.iter().zip(&req.mutations) {
            let stored = s.get("every", &e.record_id).unwrap().unwrap();
            let wire: Fields = serde_json::from_str(m.fields.get()).unwrap();
            assert_eq!(wire, stored.fields, "record {}", e.record_id);
            assert_eq!(e.parsed_fields().unwrap(), stored.fields);
        }
        // Bit for bit: 0.1 + 0.2 is not 0.3, though SQLite's own JSON would say so.
        let a = sent.iter().find(|e| e.record_id == "a").unwrap();
        assert_eq!(a.parsed_fields().unwrap()["n"].as_f64(), Some(0.1 + 0.2));
    }

    #[test]
    fn a_sent_entry_is_never_rewritten() {
        let (_d, s) = open();
        s.create("tasks", obj(json!({"id": "t", "title": "a"})))
            .unwrap();
        // Sending freezes the create's fields into the entry.
        let (sent, _) = crate::sync::push::prepare(&s, "client", 10, None)
            .unwrap()
            .unwrap();
        assert_eq!(sent[0].parsed_fields().unwrap()["title"], "a");
        s.update("tasks", "t", obj(json!({"title": "b"}))).unwrap();
        let ob = s.outbox().unwrap();
        assert_eq!(ob.len(), 2);
        assert_eq!(ob[0].fields["title"], "a");
        assert_eq!(
            (ob[1].op, ob[1].fields["title"].clone()),
            (Op::Update, json!("b"))
        );
    }
}
