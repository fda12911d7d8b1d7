//! Staging and publishing of pulled pages.
//!
//! Pulled pages land in per-collection staging tables as they arrive, each page in
//! one transaction together with the cursor it reached: upserted rows in
//! `_ferry_stage_<name>`, a table shaped like the collection (same columns,
//! bookkeeping and non-unique indexes, under suffixed index names), and deleted or
//! evicted ids in `_ferry_gone_<name>`. Nothing staged is visible to
//! the app. Only when the last page (`has_more == false`) is staged does
//! [`publish`] apply everything in one transaction: rebase pending local changes
//! over the server rows, apply upserts, deletes and evictions, advance the
//! published cursor and emit one event. An interrupted pull resumes from the
//! staged cursor. The published cursor never moves past what is published.
//!
//! First sync fast path: when a collection is still empty at publish (and has no
//! unique index), its staging table *becomes* the collection (`DROP` + `RENAME`
//! in the publish transaction) instead of being copied row by row, so each pulled
//! row is written once. A fresh staging table is made for the next pull.

use std::collections::BTreeMap;

use ferry_protocol::{PullPage, ServerRecord};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Transaction, params_from_iter};
use serde::Serialize;

use super::resolver::ConflictResolver;
use crate::error::Result;
use crate::events::{ChangeSource, MAX_EVENT_ROWS};
use crate::schema::{Collection, Schema};
use crate::store::records::{
    self, BOOKKEEPING, Fields, Record, RecordStatus, ToSql, check_fields, complete_for_create,
    normalise, quote,
};
use crate::store::{Store, Writer, meta_get, meta_set, outbox, shadow};

/// Meta key: the cursor everything published so far is complete up to.
pub(crate) const CURSOR: &str = "cursor";
/// Meta key: the cursor the staged (unpublished) pages reach.
pub(crate) const STAGED_CURSOR: &str = "staged_cursor";
const STAGED_PAGES: &str = "staged_pages";

const ANCHORS_DDL: &str = "CREATE TABLE IF NOT EXISTS _ferry_anchors (
    collection TEXT PRIMARY KEY, server_total INTEGER NOT NULL, updated_at INTEGER NOT NULL);";

/// Layout of the staging tables; older layouts are rebuilt on open.
const STAGING_FORMAT: &str = "2";
const STAGING_FORMAT_KEY: &str = "staging_format";

fn stage_name(c: &Collection) -> String {
    format!("_ferry_stage_{}", c.name)
}

fn stage_table(c: &Collection) -> String {
    quote(&stage_name(c))
}

fn gone_table(c: &Collection) -> String {
    quote(&format!("_ferry_gone_{}", c.name))
}

/// Creates the staging tables; when the schema (or the staging layout) changed
/// they are rebuilt and any unpublished pull restarts from the published cursor.
pub(crate) fn prepare(tx: &Transaction<'_>, schema: &Schema, schema_changed: bool) -> Result<()> {
    tx.execute_batch(ANCHORS_DDL)?;
    let format_changed = meta_get(tx, STAGING_FORMAT_KEY)?.as_deref() != Some(STAGING_FORMAT);
    if schema_changed || format_changed {
        let old: Vec<String> = tx
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND (name LIKE '\\_ferry\\_stage\\_%' ESCAPE '\\' OR name LIKE '\\_ferry\\_gone\\_%' ESCAPE '\\')",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for t in old {
            tx.execute_batch(&format!("DROP TABLE {}", quote(&t)))?;
        }
        tx.execute(
            "DELETE FROM _ferry_meta WHERE key IN (?1, ?2)",
            [STAGED_CURSOR, STAGED_PAGES],
        )?;
        meta_set(tx, STAGING_FORMAT_KEY, STAGING_FORMAT)?;
    }
    for c in schema.collections.iter().filter(|c| c.is_synced()) {
        create_stage(tx, c)?;
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY NOT NULL, _kind TEXT NOT NULL) WITHOUT ROWID",
            gone_table(c)
        ))?;
    }
    Ok(())
}

/// Creates `c`'s staging table unless it exists, with index names of its own.
fn create_stage(tx: &Transaction<'_>, c: &Collection) -> Result<()> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [stage_name(c)],
        |r| r.get(0),
    )?;
    if !exists {
        let generation = uuid::Uuid::new_v4().simple().to_string();
        crate::store::create_collection_table(
            tx,
            c,
            &stage_name(c),
            &format!("#{}", &generation[..12]),
            false,
        )?;
    }
    Ok(())
}

/// Where the next pull starts.
#[derive(Debug, Default)]
pub(crate) struct PullStart {
    /// The staged cursor when an earlier pull was interrupted, else the published one.
    pub cursor: Option<String>,
    /// Whether pages are staged and still to be published.
    pub resumed: bool,
    /// The server totals last received, per collection.
    pub totals: BTreeMap<String, u64>,
}

pub(crate) fn pull_start(store: &Store) -> Result<PullStart> {
    store.read(|c| {
        let totals = c
            .prepare_cached("SELECT collection, server_total FROM _ferry_anchors")?
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(match meta_get(c, STAGED_CURSOR)? {
            Some(staged) => PullStart {
                cursor: Some(staged),
                resumed: true,
                totals,
            },
            None => PullStart {
                cursor: meta_get(c, CURSOR)?,
                resumed: false,
                totals,
            },
        })
    })
}

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

/// Stages one page and records the cursor it reached, in one transaction.
pub(crate) fn stage_page(store: &Store, page: PullPage) -> Result<StageReport> {
    store.write_tx(ChangeSource::Remote, |w| {
        let mut report = StageReport::default();
        for (name, changes) in page.changes {
            let Ok(c) = w.schema.collection(&name) else {
                tracing::warn!(collection = %name, "pulled changes for a collection this app does not know; skipped");
                report.skipped += changes.len() as u64;
                continue;
            };
            if !c.is_synced() {
                report.skipped += changes.len() as u64;
                continue;
            }
            // An id staged as gone by an earlier page and upserted now (or the
            // reverse) keeps only its latest state.
            let any_gone: bool = w.tx.query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", gone_table(c)),
                [],
                |r| r.get(0),
            )?;
            let mut upsert = w.tx.prepare_cached(&stage_upsert_sql(c))?;
            let mut unmark = w
                .tx
                .prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", gone_table(c)))?;
            for r in changes.upserts {
                let id = r.id.clone();
                match stage_upsert(&mut upsert, c, r, w.now) {
                    Ok(()) => {
                        if any_gone {
                            unmark.execute([&id])?;
                        }
                        report.rows += 1
                    }
                    Err(e) => {
                        tracing::warn!(collection = %name, %id, error = %e, "pulled record does not fit the schema; skipped");
                        report.skipped += 1;
                    }
                }
            }
            let mut gone = w.tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO {} (id, _kind) VALUES (?1, ?2)",
                gone_table(c)
            ))?;
            let mut unstage = w
                .tx
                .prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", stage_table(c)))?;
            for (kind, ids) in [("delete", &changes.deletes), ("evict", &changes.evictions)] {
                for id in ids {
                    gone.execute([id.as_str(), kind])?;
                    unstage.execute([id.as_str()])?;
                    report.rows += 1;
                }
            }
        }
        if let Some(totals) = &page.totals {
            let mut stmt = w.tx.prepare_cached(
                "INSERT OR REPLACE INTO _ferry_anchors (collection, server_total, updated_at) VALUES (?1, ?2, ?3)",
            )?;
            for (name, total) in totals {
                stmt.execute(rusqlite::params![name, *total as i64, w.now])?;
            }
        }
        meta_set(w.tx, STAGED_CURSOR, &page.cursor)?;
        let pages: u64 = meta_get(w.tx, STAGED_PAGES)?.and_then(|p| p.parse().ok()).unwrap_or(0);
        meta_set(w.tx, STAGED_PAGES, &(pages + 1).to_string())?;
        Ok(report)
    })
}

/// The statement staging one upserted row of `c` (built once per page).
fn stage_upsert_sql(c: &Collection) -> String {
    let mut cols = String::from("id");
    let mut marks = String::from("?");
    for col in &c.columns {
        cols.push_str(", ");
        cols.push_str(&quote(&col.name));
        marks.push_str(", ?");
    }
    format!(
        "INSERT OR REPLACE INTO {} ({cols}, {BOOKKEEPING}) VALUES ({marks}, 'synced', NULL, ?, ?, ?)",
        stage_table(c)
    )
}

fn stage_upsert(
    stmt: &mut rusqlite::Statement<'_>,
    c: &Collection,
    r: ServerRecord,
    now: i64,
) -> Result<()> {
    crate::schema::validate_id(&r.id)?;
    // Fields this app's schema does not know (a newer server) are ignored.
    let mut fields: Fields = r.fields;
    fields.retain(|k, _| c.column(k).is_some());
    check_fields(c, &fields)?;
    complete_for_create(c, &mut fields)?;
    normalise(c, &mut fields);
    let mut vals: Vec<SqlValue> = Vec::with_capacity(c.columns.len() + 4);
    vals.push(SqlValue::Text(r.id));
    for col in &c.columns {
        vals.push(
            fields
                .get(&col.name)
                .map(|v| v.to_sql(col.ty))
                .unwrap_or(SqlValue::Null),
        );
    }
    vals.push(SqlValue::Integer(r.version as i64));
    vals.push(SqlValue::Integer(now));
    vals.push(SqlValue::Integer(now));
    stmt.execute(params_from_iter(vals))?;
    Ok(())
}

/// What a publish applied, per collection.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct PublishReport {
    pub upserted: BTreeMap<String, u64>,
    pub removed: BTreeMap<String, u64>,
    /// Pending local records rebased over a newer server row.
    pub rebased: u64,
}

/// Applies everything staged in one transaction and advances the cursor.
pub(crate) fn publish(store: &Store, resolver: &dyn ConflictResolver) -> Result<PublishReport> {
    store.write_tx(ChangeSource::Remote, |w| {
        let mut report = PublishReport::default();
        let Some(cursor) = meta_get(w.tx, STAGED_CURSOR)? else {
            return Ok(report);
        };
        let schema = w.schema;
        for c in schema.collections.iter().filter(|c| c.is_synced()) {
            report.rebased += rebase_pending(w, c, resolver)?;
            let staged_rows = collect_events(w, c)?;
            let (t, stage, gone) = (quote(&c.name), stage_table(c), gone_table(c));
            let removed = w.tx.execute(
                &format!("DELETE FROM {t} WHERE id IN (SELECT id FROM {gone})"),
                [],
            )?;
            w.tx.execute(&format!("DELETE FROM {gone}"), [])?;
            let upserted = if swappable(w, c)? {
                // First sync: the staged rows become the collection as they are.
                w.tx.execute_batch(&format!("DROP TABLE {t}; ALTER TABLE {stage} RENAME TO {t};"))?;
                create_stage(w.tx, c)?;
                staged_rows
            } else {
                let cols: Vec<String> = c.columns.iter().map(|col| quote(&col.name)).collect();
                let sets: String = cols.iter().map(|q| format!("{q} = excluded.{q}, ")).collect();
                let n = w.tx.execute(
                    &format!(
                        "INSERT INTO {t} (id{comma}{cols}, {BOOKKEEPING})
                         SELECT id{comma}{cols}, {BOOKKEEPING} FROM {stage} WHERE true
                         ON CONFLICT(id) DO UPDATE SET {sets}_version = excluded._version, _updated_at = excluded._updated_at
                         WHERE {t}._version IS NULL OR excluded._version > {t}._version",
                        comma = if cols.is_empty() { "" } else { ", " },
                        cols = cols.join(", "),
                    ),
                    [],
                )?;
                w.tx.execute(&format!("DELETE FROM {stage}"), [])?;
                n
            };
            if upserted > 0 {
                report.upserted.insert(c.name.clone(), upserted as u64);
            }
            if removed > 0 {
                report.removed.insert(c.name.clone(), removed as u64);
            }
        }
        meta_set(w.tx, CURSOR, &cursor)?;
        w.tx.execute("DELETE FROM _ferry_meta WHERE key IN (?1, ?2)", [STAGED_CURSOR, STAGED_PAGES])?;
        Ok(report)
    })
}

/// Whether publishing `c` can swap its staging table in: rows are staged, the
/// collection is empty (nothing local to merge with) and has no unique index (the
/// staging table has none, so it has not checked them).
fn swappable(w: &Writer<'_, '_>, c: &Collection) -> Result<bool> {
    if c.indexes.iter().any(|i| i.unique) {
        return Ok(false);
    }
    Ok(w.tx.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {}) AND NOT EXISTS (SELECT 1 FROM {})",
            stage_table(c),
            quote(&c.name)
        ),
        [],
        |r| r.get(0),
    )?)
}

/// What the pull staged for `id` of `c`: its server row, or how it went away
/// (`delete` or `evict`).
fn staged(
    w: &Writer<'_, '_>,
    c: &Collection,
    id: &str,
) -> Result<std::result::Result<ServerRecord, String>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE id = ?1",
        records::select_list(c),
        stage_table(c)
    );
    if let Some(rec) = crate::store::load_with(w.tx, c, &sql, [id])? {
        return Ok(Ok(ServerRecord {
            id: rec.id,
            version: rec.version.unwrap_or(0),
            fields: rec.fields,
        }));
    }
    let kind: String =
        w.tx.prepare_cached(&format!(
            "SELECT _kind FROM {} WHERE id = ?1",
            gone_table(c)
        ))?
        .query_row([id], |r| r.get(0))?;
    Ok(Err(kind))
}

/// Rebases pending local records that the pull also touched, then drops them
/// from staging so the bulk statements only meet synced rows.
fn rebase_pending(
    w: &mut Writer<'_, '_>,
    c: &Collection,
    resolver: &dyn ConflictResolver,
) -> Result<u64> {
    let ids: Vec<String> = w
        .tx
        .prepare(&format!(
            "SELECT t.id FROM {t} t WHERE t._status <> 'synced'
             AND (EXISTS (SELECT 1 FROM {s} s WHERE s.id = t.id) OR EXISTS (SELECT 1 FROM {g} g WHERE g.id = t.id))",
            t = quote(&c.name),
            s = stage_table(c),
            g = gone_table(c)
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = 0;
    for id in &ids {
        let local = w.load(c, id)?.expect("selected above");
        match staged(w, c, id)? {
            Ok(server) => {
                if local.version.is_some_and(|v| v >= server.version) {
                    // Already based on this version (e.g. our own write's echo).
                } else {
                    rebase_over(w, c, local, &server, resolver)?;
                    n += 1;
                }
            }
            // Deleted on the server: the server wins over local edits, and over
            // a local create it may hold (sent, unanswered): it then applied it
            // and the record was deleted since.
            Err(kind)
                if kind == "delete"
                    && (local.status != RecordStatus::Created
                        || outbox::has_entries(w.tx, &c.name, id)?) =>
            {
                super::push::forget_record(w, c, id)?;
                w.events.delete(&c.name, id);
            }
            // Created here and never sent (another device's record of that id
            // was deleted): keep it, its push decides; but the server holds no
            // row to roll back to any more (a rejection removes the record).
            Err(kind) if kind == "delete" => shadow::remove(w.tx, &c.name, id)?,
            // Evicted: keep the local record; its push decides.
            _ => {}
        }
        for table in [stage_table(c), gone_table(c)] {
            w.tx.prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))?
                .execute([id])?;
        }
    }
    Ok(n)
}

/// Puts a pending local record on top of a newer server row.
///
/// What then differs from the server is what remains to push. A sent entry is
/// never rewritten (see [`outbox::rebase_onto`]); the difference queues behind
/// it. A local create that was already sent is now known to the server (the
/// pull just brought its row, whether our create made it or not), so it goes on
/// as an update of that row.
pub(crate) fn rebase_over(
    w: &mut Writer<'_, '_>,
    c: &Collection,
    mut local: Record,
    server: &ServerRecord,
    resolver: &dyn ConflictResolver,
) -> Result<()> {
    local.version = Some(server.version);
    local.updated_at = w.now;
    let sent_create =
        local.status == RecordStatus::Created && outbox::has_entries(w.tx, &c.name, &local.id)?;
    if local.status == RecordStatus::Updated || sent_create {
        let merged = resolved(c, &local, server, resolver);
        let diff = differing(&merged, &server.fields);
        local.fields = merged;
        local.status = RecordStatus::Updated;
        local.changed = diff.keys().cloned().collect();
        if !outbox::rebase_onto(w.tx, &c.name, &local.id, &diff, server.version, w.now)? {
            local.status = RecordStatus::Synced;
            local.changed.clear();
        }
    } else {
        if local.status == RecordStatus::Created {
            local.fields = resolved(c, &local, server, resolver);
        }
        outbox::rebase(w.tx, &c.name, &local.id, server.version)?;
    }
    w.replace_row(c, &local)?;
    shadow::set(
        w.tx,
        &c.name,
        &local.id,
        Some(server.version),
        &server.fields,
    )?;
    if local.status == RecordStatus::Synced {
        shadow::remove(w.tx, &c.name, &local.id)?;
    }
    if local.status != RecordStatus::Deleted {
        w.events.upsert(&c.name, &local.id, local.to_json());
    }
    Ok(())
}

/// The fields of `merged` whose value differs from the server's: what is left to push.
pub(crate) fn differing(merged: &Fields, server: &Fields) -> Fields {
    merged
        .iter()
        .filter(|(k, v)| server.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The resolver's merge, validated like any write; a merge that does not fit the
/// schema is logged and the server row is taken instead.
pub(crate) fn resolved(
    c: &Collection,
    local: &Record,
    server: &ServerRecord,
    resolver: &dyn ConflictResolver,
) -> Fields {
    let mut merged: Fields = resolver
        .resolve(&c.name, local, server)
        .into_iter()
        .filter(|(k, _)| c.column(k).is_some())
        .collect();
    for (k, v) in &local.fields {
        merged
            .entry(k.clone())
            .or_insert_with(|| server.fields.get(k).unwrap_or(v).clone());
    }
    normalise(c, &mut merged);
    match check_fields(c, &merged) {
        Ok(()) => merged,
        Err(e) => {
            tracing::warn!(collection = %c.name, id = %local.id, error = %e, "conflict resolver returned invalid fields; taking the server's row");
            let mut f = server.fields.clone();
            normalise(c, &mut f);
            f
        }
    }
}

/// Adds the rows this publish will change to the event (or marks a reload);
/// returns how many upserted rows are staged.
fn collect_events(w: &mut Writer<'_, '_>, c: &Collection) -> Result<usize> {
    let (stage, gone, t) = (stage_table(c), gone_table(c), quote(&c.name));
    let (upserts, gone_rows): (i64, i64) = w.tx.query_row(
        &format!("SELECT (SELECT COUNT(*) FROM {stage}), (SELECT COUNT(*) FROM {gone})"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let upserts = upserts as usize;
    let staged = upserts + gone_rows as usize;
    if staged > MAX_EVENT_ROWS || w.events.is_reload(&c.name) {
        if staged > 0 {
            w.events.reload(&c.name);
        }
        return Ok(upserts);
    }
    let sql = format!(
        "SELECT {} FROM {stage} s LEFT JOIN {t} t ON t.id = s.id
         WHERE t.id IS NULL OR t._version IS NULL OR s._version > t._version",
        records::select_list_of(c, "s.")
    );
    let mut stmt = w.tx.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut ups = Vec::new();
    while let Some(row) = rows.next()? {
        ups.push(records::read_record(c, row)?);
    }
    drop(rows);
    drop(stmt);
    for r in ups {
        let id = r.id.clone();
        w.events.upsert(&c.name, &id, r.into_json());
    }
    let gone: Vec<String> =
        w.tx.prepare(&format!(
            // CROSS JOIN keeps staging (small) outside: without statistics SQLite
            // would otherwise scan the whole collection and probe staging.
            "SELECT g.id FROM {gone} g CROSS JOIN {t} t ON t.id = g.id"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in gone {
        w.events.delete(&c.name, &id);
    }
    Ok(upserts)
}
