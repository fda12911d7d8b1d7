//! Staging and publishing of pulled pages.
//!
//! Pulled pages are staged as they arrive, each page in one transaction
//! together with the cursor it reached (the store's staging file,
//! `store/staging.rs`: upserted rows appended, and deleted or evicted ids). Nothing
//! staged is visible to the app. Only when the last page (`has_more == false`)
//! is staged does [`publish`] apply everything in one transaction: rebase
//! pending local changes over the server rows, apply upserts, deletes and
//! evictions, advance the published cursor and emit one event. An interrupted
//! pull resumes from the staged cursor. The published cursor never moves past
//! what is published.
//!
//! First sync: a collection still empty at publish is *built* from its staged
//! rows, written in key order into a new table that becomes the collection,
//! and its indexes made afterwards, each in one sorted pass. Whatever the order
//! of the ids, each page of the collection is then written once.

use std::collections::BTreeMap;

use ferry_protocol::PullPage;
use serde::Serialize;

use super::rebase::{Candidate, Merger, needs_merge, rebase_over};
use crate::error::Result;
use crate::events::{ChangeSource, MAX_EVENT_ROWS};
use crate::schema::Collection;
use crate::store::records::RecordStatus;
use crate::store::staging::{PullStart, Removal, Staged};
use crate::store::{Store, Writer};

impl PullStart {
    /// Whether the first page of this pull brings nothing: no changes, the same
    /// cursor back, totals as last received, and nothing staged before waiting
    /// to be published. Then the pull is done without a transaction (and an
    /// anchor's `updated_at` stays when its total last changed).
    pub(crate) fn nothing_new(&self, page: &PullPage) -> bool {
        !self.resumed
            && !page.has_more
            && page.changes.values().all(|c| c.is_empty())
            && page.totals.as_ref().is_none_or(|t| {
                t.iter()
                    .all(|(name, total)| self.totals.get(name) == Some(total))
            })
            && self.cursor.as_deref() == Some(page.cursor.as_str())
    }
}

/// What staging a page did.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct StageReport {
    pub rows: u64,
    /// Rows the server sent that do not fit this app's schema (logged, not applied).
    pub skipped: u64,
}

/// Stages one page and records the cursor it reached, in one transaction;
/// `None` when the subscriptions changed since the pull, of generation
/// `generation`, started (it stages nothing and must start over). `repair`:
/// the first page of a repair pull, which brings these collections again,
/// from the published cursor it started at.
pub(crate) fn stage_page(
    store: &Store,
    page: PullPage,
    generation: u64,
    repair: Option<(Vec<String>, Option<String>)>,
) -> Result<Option<StageReport>> {
    store.write_tx(ChangeSource::Remote, |w| {
        if w.subscriptions_generation()? != generation {
            return Ok(None);
        }
        if let Some((collections, from)) = &repair {
            w.set_repairing(collections, from.as_deref())?;
        }
        let mut report = StageReport::default();
        for (name, changes) in page.changes {
            let Ok(c) = w.schema().collection(&name) else {
                tracing::warn!(collection = %name, "pulled changes for a collection this app does not know; skipped");
                report.skipped += changes.len() as u64;
                continue;
            };
            if c.is_local_only() {
                report.skipped += changes.len() as u64;
                continue;
            }
            let mut stage = w.stage(c)?;
            for r in changes.upserts {
                let id = r.id.clone();
                match stage.upsert(r) {
                    Ok(()) => {
                        stage.unstage_removal(&id)?;
                        report.rows += 1
                    }
                    Err(e) => {
                        tracing::warn!(collection = %name, %id, error = %e, "pulled record does not fit the schema; skipped");
                        report.skipped += 1;
                    }
                }
            }
            let removals = [
                (Removal::Delete, &changes.deletes),
                (Removal::Eviction, &changes.evictions),
            ];
            for (kind, ids) in removals {
                for id in ids {
                    stage.remove(id, kind)?;
                    report.rows += 1;
                }
            }
            stage.finish()?;
        }
        if let Some(totals) = &page.totals {
            w.set_server_totals(totals)?;
        }
        w.staged_page(&page.cursor)?;
        crate::crash::point("stage");
        Ok(Some(report))
    })
}

/// What a publish applied, per collection.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct PublishReport {
    pub upserted: BTreeMap<String, u64>,
    pub removed: BTreeMap<String, u64>,
    /// Pending local records rebased over a newer server row.
    pub rebased: u64,
    /// Synced rows pruned by the collection's retention, in the same transaction.
    pub pruned: BTreeMap<String, u64>,
    /// Collections a repair replaced with what the server holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
}

impl PublishReport {
    /// Adds what another publish of the same pull applied.
    pub fn add(&mut self, o: &PublishReport) {
        for (mine, theirs) in [
            (&mut self.upserted, &o.upserted),
            (&mut self.removed, &o.removed),
            (&mut self.pruned, &o.pruned),
        ] {
            for (c, n) in theirs {
                *mine.entry(c.clone()).or_default() += n;
            }
        }
        self.rebased += o.rebased;
        self.repaired.extend(o.repaired.iter().cloned());
    }
}

/// Applies everything staged in one transaction, prunes by each collection's
/// retention and advances the cursor; then empties the staging file. The
/// priorities up to `level` are complete with it (a checkpoint's, or all at
/// the end of a pull). `None` when the subscriptions changed since the pull,
/// of generation `generation`, started (what it staged is dropped already).
pub(crate) fn publish(
    store: &Store,
    merger: &Merger,
    generation: u64,
    level: u8,
) -> Result<Option<PublishReport>> {
    let source = match store.repairing()?.is_empty() {
        true => ChangeSource::Remote,
        false => ChangeSource::Repair,
    };
    let report = store.write_tx(source, |w| {
        if w.subscriptions_generation()? != generation {
            return Ok(None);
        }
        let mut report = PublishReport::default();
        let Some(cursor) = w.staged_cursor()? else {
            return Ok(Some(report));
        };
        let schema = w.schema();
        for c in schema.collections.iter().filter(|c| !c.is_local_only()) {
            // A repair replaces the collection once all of it is staged.
            let repair = w.is_repairing(c)?
                && c.priority.unwrap_or(ferry_protocol::LOWEST_PRIORITY) <= level;
            if repair {
                w.finish_repair(c)?;
                w.events().reload(&c.name);
                report.repaired.push(c.name.clone());
            }
            report.rebased += rebase_pending(w, c, merger)?;
            collect_events(w, c)?;
            let removed = w.publish_removals(c)?;
            let upserted = if w.can_build(c)? {
                w.build(c)?
            } else {
                w.publish_upserts(c, repair)?
            };
            if upserted > 0 {
                report.upserted.insert(c.name.clone(), upserted as u64);
            }
            if removed > 0 {
                report.removed.insert(c.name.clone(), removed as u64);
            }
            let pruned = w.apply_retention(c)?;
            if pruned > 0 {
                report.pruned.insert(c.name.clone(), pruned);
            }
        }
        crate::crash::point("publish");
        w.set_published_cursor(&cursor)?;
        w.set_priorities_synced(level)?;
        Ok(Some(report))
    })?;
    if let Err(e) = store.clear_staging() {
        // Published already: the next open discards the staged pages.
        tracing::warn!(error = %e, "could not empty the staging file after a publish");
    }
    Ok(report)
}

/// The pending records that the next publish will merge with a staged row: what
/// a host resolver must answer for before it (see [`super::rebase`]).
pub(crate) fn publish_candidates(store: &Store) -> Result<Vec<Candidate>> {
    store.simulate(|w| {
        let mut out = Vec::new();
        for c in w.schema().collections.iter().filter(|c| !c.is_local_only()) {
            for (id, staged) in w.pending_staged(c)? {
                let (Some(local), Staged::Upsert(server)) = (w.load(c, &id)?, staged) else {
                    continue;
                };
                if needs_merge(&local, &server) {
                    out.push(Candidate {
                        collection: c.name.clone(),
                        local,
                        server,
                    });
                }
            }
        }
        Ok(out)
    })
}

/// Rebases pending local records that the pull also touched; the bulk
/// statements that follow leave pending records alone.
fn rebase_pending(w: &mut Writer<'_, '_>, c: &Collection, merger: &Merger) -> Result<u64> {
    let mut n = 0;
    for (id, staged) in w.pending_staged(c)? {
        let id = &id;
        let local = w.load(c, id)?.expect("selected as pending");
        match staged {
            Staged::Upsert(server) => {
                if local.version.is_some_and(|v| v >= server.version) {
                    // Already based on this version (e.g. our own write's echo).
                } else {
                    rebase_over(w, c, local, &server, merger)?;
                    n += 1;
                }
            }
            // Deleted on the server: the server wins over local edits, and over
            // a local create it may hold (sent, unanswered): it then applied it
            // and the record was deleted since.
            Staged::Removal(Removal::Delete)
                if local.status != RecordStatus::Created || w.has_entries(&c.name, id)? =>
            {
                super::push::forget_record(w, c, id)?;
                w.events().delete(&c.name, id);
            }
            // Created here and never sent (another device's record of that id
            // was deleted): keep it, its push decides; but the server holds no
            // row to roll back to any more (a rejection removes the record).
            Staged::Removal(Removal::Delete) => w.remove_shadow(&c.name, id)?,
            // Evicted: keep the local record with its changes, and say so; its
            // push goes ahead, and its answer evicts it if still uncovered.
            Staged::Removal(Removal::Eviction) => w.events().keep(&c.name, id),
        }
    }
    Ok(n)
}

/// Adds the rows this publish will change to the event (or marks a reload).
fn collect_events(w: &mut Writer<'_, '_>, c: &Collection) -> Result<()> {
    let (upserts, removals) = w.staged_counts(c)?;
    let staged = upserts + removals;
    if staged > MAX_EVENT_ROWS || w.events().is_reload(&c.name) {
        if staged > 0 {
            w.events().reload(&c.name);
        }
        return Ok(());
    }
    for r in w.staged_upserts(c)? {
        let id = r.id.clone();
        w.events().upsert(&c.name, &id, r.into_json());
    }
    for (id, kind) in w.staged_removals(c)? {
        match kind {
            Removal::Delete => w.events().delete(&c.name, &id),
            Removal::Eviction => w.events().evict(&c.name, &id),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::tests::obj;

    #[test]
    fn a_change_of_the_set_drops_staged_pages_and_stops_a_running_pull() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("t.db"), crate::store::tests::schema()).unwrap();
        let generation = s.pull_subscriptions().unwrap().generation;
        let page = |cursor: &str| ferry_protocol::PullPage {
            cursor: cursor.into(),
            has_more: true,
            changes: [(
                "tasks".to_string(),
                ferry_protocol::CollectionChanges {
                    upserts: vec![ferry_protocol::ServerRecord {
                        id: cursor.into(),
                        version: 1,
                        fields: obj(json!({"title": "x", "done": false})),
                    }],
                    ..Default::default()
                },
            )]
            .into(),
            totals: None,
            complete_priority: None,
            checksums: None,
        };
        let staged = stage_page(&s, page("c1"), generation, None).unwrap();
        assert!(staged.is_some());
        assert_eq!(s.pull_start().unwrap().cursor.as_deref(), Some("c1"));

        s.subscribe(crate::store::Subscription {
            name: "p1".into(),
            collection: "tasks".into(),
            scope: None,
            filter: Some(json!({"column": "project", "op": "eq", "value": "p1"})),
            ttl_ms: None,
        })
        .unwrap();
        let start = s.pull_start().unwrap();
        assert!(!start.resumed && start.cursor.is_none(), "staging dropped");
        assert!(
            stage_page(&s, page("c2"), generation, None)
                .unwrap()
                .is_none(),
            "a page of the old set is refused"
        );
        assert!(
            s.query("tasks", &crate::store::Query::default())
                .unwrap()
                .is_empty(),
            "nothing of the old set published"
        );
    }
}
