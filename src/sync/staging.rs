//! Staging and publishing of pulled pages.
//!
//! Pulled pages land in per-collection staging tables (`_ferry_stage_<name>`, the
//! same typed columns as the collection) as they arrive, each page in one
//! transaction together with the cursor it reached. Nothing staged is visible to
//! the app. Only when the last page (`has_more == false`) is staged does
//! [`publish`] apply everything in one transaction: rebase pending local changes
//! over the server rows, apply upserts, deletes and evictions, advance the
//! published cursor and emit one event. An interrupted pull resumes from the
//! staged cursor. The published cursor never moves past what is published.

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

fn stage_table(c: &Collection) -> String {
    quote(&format!("_ferry_stage_{}", c.name))
}

/// Creates the staging tables; when the schema changed they are rebuilt and any
/// unpublished pull restarts from the published cursor.
pub(crate) fn prepare(tx: &Transaction<'_>, schema: &Schema, schema_changed: bool) -> Result<()> {
    tx.execute_batch(ANCHORS_DDL)?;
    if schema_changed {
        let old: Vec<String> = tx
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_ferry\\_stage\\_%' ESCAPE '\\'")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for t in old {
            tx.execute_batch(&format!("DROP TABLE {}", quote(&t)))?;
        }
        tx.execute(
            "DELETE FROM _ferry_meta WHERE key IN (?1, ?2)",
            [STAGED_CURSOR, STAGED_PAGES],
        )?;
    }
    for c in schema.collections.iter().filter(|c| c.is_synced()) {
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY NOT NULL",
            stage_table(c)
        );
        for col in &c.columns {
            sql.push_str(&format!(", {} {}", quote(&col.name), col.ty.sql_type()));
        }
        sql.push_str(", _version INTEGER, _kind TEXT NOT NULL) WITHOUT ROWID");
        tx.execute_batch(&sql)?;
    }
    Ok(())
}

/// Where the next pull request starts: the staged cursor when an earlier pull was
/// interrupted, else the published one.
pub(crate) fn resume_cursor(store: &Store) -> Result<Option<String>> {
    store.read(|c| Ok(meta_get(c, STAGED_CURSOR)?.or(meta_get(c, CURSOR)?)))
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
            let mut upsert = w.tx.prepare_cached(&stage_upsert_sql(c))?;
            for r in changes.upserts {
                let id = r.id.clone();
                match stage_upsert(&mut upsert, c, r) {
                    Ok(()) => report.rows += 1,
                    Err(e) => {
                        tracing::warn!(collection = %name, %id, error = %e, "pulled record does not fit the schema; skipped");
                        report.skipped += 1;
                    }
                }
            }
            for (kind, ids) in [("delete", &changes.deletes), ("evict", &changes.evictions)] {
                let sql = format!("INSERT OR REPLACE INTO {} (id, _kind) VALUES (?1, ?2)", stage_table(c));
                let mut stmt = w.tx.prepare_cached(&sql)?;
                for id in ids {
                    stmt.execute([id.as_str(), kind])?;
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
        "INSERT OR REPLACE INTO {} ({cols}, _version, _kind) VALUES ({marks}, ?, 'upsert')",
        stage_table(c)
    )
}

fn stage_upsert(stmt: &mut rusqlite::Statement<'_>, c: &Collection, r: ServerRecord) -> Result<()> {
    crate::schema::validate_id(&r.id)?;
    // Fields this app's schema does not know (a newer server) are ignored.
    let mut fields: Fields = r.fields;
    fields.retain(|k, _| c.column(k).is_some());
    check_fields(c, &fields)?;
    complete_for_create(c, &mut fields)?;
    normalise(c, &mut fields);
    let mut vals: Vec<SqlValue> = Vec::with_capacity(c.columns.len() + 2);
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
            collect_events(w, c)?;
            let stage = stage_table(c);
            let removed = w.tx.execute(
                &format!("DELETE FROM {} WHERE id IN (SELECT id FROM {stage} WHERE _kind <> 'upsert')", quote(&c.name)),
                [],
            )?;
            let cols: Vec<String> = c.columns.iter().map(|col| quote(&col.name)).collect();
            let sets: String = cols.iter().map(|q| format!("{q} = excluded.{q}, ")).collect();
            let upserted = w.tx.execute(
                &format!(
                    "INSERT INTO {t} (id{comma}{cols}, {BOOKKEEPING})
                     SELECT id{comma}{cols}, 'synced', NULL, _version, ?1, ?1 FROM {stage} WHERE _kind = 'upsert'
                     ON CONFLICT(id) DO UPDATE SET {sets}_version = excluded._version, _updated_at = excluded._updated_at
                     WHERE {t}._version IS NULL OR excluded._version > {t}._version",
                    t = quote(&c.name),
                    comma = if cols.is_empty() { "" } else { ", " },
                    cols = cols.join(", "),
                ),
                [w.now],
            )?;
            w.tx.execute(&format!("DELETE FROM {stage}"), [])?;
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

/// Staged row `id` of `c` as (kind, server record).
fn staged(w: &Writer<'_, '_>, c: &Collection, id: &str) -> Result<(String, Option<ServerRecord>)> {
    let sql = format!(
        "SELECT {}, _kind FROM {} WHERE id = ?1",
        stage_select(c, ""),
        stage_table(c)
    );
    let mut stmt = w.tx.prepare_cached(&sql)?;
    let mut rows = stmt.query([id])?;
    let row = rows
        .next()?
        .ok_or_else(|| crate::Error::Internal("staged row vanished".into()))?;
    let kind: String = row.get(c.columns.len() + 6)?;
    if kind != "upsert" {
        return Ok((kind, None));
    }
    let rec = records::read_record(c, row)?;
    Ok((
        kind,
        Some(ServerRecord {
            id: rec.id,
            version: rec.version.unwrap_or(0),
            fields: rec.fields,
        }),
    ))
}

/// A select list over a staging table shaped like [`records::select_list`].
fn stage_select(c: &Collection, prefix: &str) -> String {
    let mut s = format!("{prefix}id");
    for col in &c.columns {
        s.push_str(&format!(", {prefix}{}", quote(&col.name)));
    }
    s.push_str(&format!(", 'synced', NULL, {prefix}_version, 0, 0"));
    s
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
            "SELECT t.id FROM {t} t WHERE t._status <> 'synced' AND EXISTS (SELECT 1 FROM {s} s WHERE s.id = t.id)",
            t = quote(&c.name),
            s = stage_table(c)
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = 0;
    for id in &ids {
        let local = w.load(c, id)?.expect("selected above");
        let (kind, server) = staged(w, c, id)?;
        match (kind.as_str(), server) {
            ("upsert", Some(server)) => {
                if local.version.is_some_and(|v| v >= server.version) {
                    // Already based on this version (e.g. our own write's echo).
                } else {
                    rebase_over(w, c, local, &server, resolver)?;
                    n += 1;
                }
            }
            ("delete", _) if local.status != RecordStatus::Created => {
                // Deleted on the server: the server wins over local edits.
                super::push::forget_record(w, c, id)?;
                w.events.delete(&c.name, id);
            }
            // Created locally, or evicted: keep the local record; its push decides.
            _ => {}
        }
        w.tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", stage_table(c)))?
            .execute([id])?;
    }
    Ok(n)
}

/// Puts a pending local record on top of a newer server row.
pub(crate) fn rebase_over(
    w: &mut Writer<'_, '_>,
    c: &Collection,
    mut local: Record,
    server: &ServerRecord,
    resolver: &dyn ConflictResolver,
) -> Result<()> {
    local.version = Some(server.version);
    local.updated_at = w.now;
    if local.status == RecordStatus::Updated {
        let merged = resolved(c, &local, server, resolver);
        // What still differs from the server is what remains to push.
        let diff = differing(&merged, &server.fields);
        local.fields = merged;
        local.changed = diff.keys().cloned().collect();
        if !outbox::rewrite_updates(w.tx, &c.name, &local.id, &diff)? {
            local.status = RecordStatus::Synced;
            local.changed.clear();
        }
    } else if local.status == RecordStatus::Created {
        local.fields = resolved(c, &local, server, resolver);
    }
    w.replace_row(c, &local)?;
    shadow::set(
        w.tx,
        &c.name,
        &local.id,
        Some(server.version),
        &server.fields,
    )?;
    outbox::rebase(w.tx, &c.name, &local.id, server.version)?;
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

/// Adds the rows this publish will change to the event (or marks a reload).
fn collect_events(w: &mut Writer<'_, '_>, c: &Collection) -> Result<()> {
    let stage = stage_table(c);
    let t = quote(&c.name);
    let staged: i64 =
        w.tx.query_row(&format!("SELECT COUNT(*) FROM {stage}"), [], |r| r.get(0))?;
    if staged as usize > MAX_EVENT_ROWS || w.events.is_reload(&c.name) {
        if staged > 0 {
            w.events.reload(&c.name);
        }
        return Ok(());
    }
    let sql = format!(
        "SELECT {} FROM {stage} s LEFT JOIN {t} t ON t.id = s.id
         WHERE s._kind = 'upsert' AND (t.id IS NULL OR t._version IS NULL OR s._version > t._version)",
        stage_select(c, "s.")
    );
    let mut stmt = w.tx.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut ups = Vec::new();
    while let Some(row) = rows.next()? {
        let mut r = records::read_record(c, row)?;
        r.created_at = w.now;
        r.updated_at = w.now;
        ups.push(r);
    }
    drop(rows);
    drop(stmt);
    for r in ups {
        w.events.upsert(&c.name, &r.id, r.to_json());
    }
    let gone: Vec<String> =
        w.tx.prepare(&format!(
            // CROSS JOIN keeps staging (small) outside: without statistics SQLite
            // would otherwise scan the whole collection and probe staging.
            "SELECT s.id FROM {stage} s CROSS JOIN {t} t ON t.id = s.id WHERE s._kind <> 'upsert'"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in gone {
        w.events.delete(&c.name, &id);
    }
    Ok(())
}
