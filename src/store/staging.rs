//! The staging tables: pulled pages wait here, invisible to the app, until the
//! sync engine publishes them.
//!
//! Upserted rows go to `_ferry_stage_<name>`, a table shaped like the
//! collection (same columns, bookkeeping and non-unique indexes, under index
//! names suffixed `#<generation>`), and deleted or evicted ids to
//! `_ferry_gone_<name>`. Each page is staged in one transaction together with
//! the cursor it reached (`staged_cursor`, and the count `staged_pages`, in
//! `_ferry_meta`); the publish applies them with a few set-based statements and
//! moves the published `cursor`.
//!
//! First sync fast path: a collection that is still empty at publish (and has no
//! unique index) takes its staging table as it is (`DROP` + `RENAME` in the
//! publish transaction), so each pulled row is written once; a fresh staging
//! table is made for the next pull.

use std::collections::BTreeMap;

use ferry_protocol::ServerRecord;
use rusqlite::types::Value as SqlValue;
use rusqlite::{CachedStatement, Transaction, params_from_iter};

use super::records::{
    self, BOOKKEEPING, Fields, Record, ToSql, check_fields, complete_for_create, normalise, quote,
};
use super::{Store, Writer, anchors, load_with, meta_get, meta_set};
use crate::error::{Error, Result};
use crate::schema::{Collection, Schema};

/// Meta key: the cursor everything published so far is complete up to.
const CURSOR: &str = "cursor";
/// Meta key: the cursor the staged (unpublished) pages reach.
const STAGED_CURSOR: &str = "staged_cursor";
const STAGED_PAGES: &str = "staged_pages";

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
pub(super) fn prepare(tx: &Transaction<'_>, schema: &Schema, schema_changed: bool) -> Result<()> {
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
    for c in schema.collections.iter().filter(|c| !c.is_local_only()) {
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
        super::ddl::create_collection_table(
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

impl Store {
    /// Where the next pull starts: the staged cursor, or the published one.
    pub(crate) fn pull_start(&self) -> Result<PullStart> {
        self.read(|c| {
            let totals = anchors::server_totals(c)?;
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
}

/// A staged removal: a delete or an eviction (stored as `delete` / `evict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    Delete,
    Eviction,
}

impl Removal {
    fn as_str(self) -> &'static str {
        match self {
            Removal::Delete => "delete",
            Removal::Eviction => "evict",
        }
    }

    fn parse(s: &str) -> Result<Removal> {
        match s {
            "delete" => Ok(Removal::Delete),
            "evict" => Ok(Removal::Eviction),
            other => Err(Error::Internal(format!("bad staged `_kind` `{other}`"))),
        }
    }
}

/// What the pull staged for one id.
#[derive(Debug)]
pub(crate) enum Staged {
    /// The server row.
    Upsert(ServerRecord),
    /// Its delete or eviction.
    Removal(Removal),
}

/// The staging statements of one collection, held while a page is staged.
pub(crate) struct Stage<'t> {
    c: &'t Collection,
    now: i64,
    /// Whether any removal is staged (else an upsert has none to unstage).
    any_removal: bool,
    upsert: CachedStatement<'t>,
    unmark: CachedStatement<'t>,
    gone: CachedStatement<'t>,
    unstage: CachedStatement<'t>,
}

impl Stage<'_> {
    /// Stages a server row (the fields this app's schema does not know, from a
    /// newer server, are left out). Fails, staging nothing, when the row does
    /// not fit the schema.
    pub fn upsert(&mut self, r: ServerRecord) -> Result<()> {
        let c = self.c;
        crate::schema::validate_id(&r.id)?;
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
        vals.push(SqlValue::Integer(self.now));
        vals.push(SqlValue::Integer(self.now));
        self.upsert.execute(params_from_iter(vals))?;
        Ok(())
    }

    /// After [`Self::upsert`] of `id`: an id staged as removed by an earlier page
    /// and upserted now keeps only its latest state.
    pub fn unstage_removal(&mut self, id: &str) -> Result<()> {
        if self.any_removal {
            self.unmark.execute([id])?;
        }
        Ok(())
    }

    /// Stages the removal of `id` (and drops a row staged for it earlier).
    pub fn remove(&mut self, id: &str, kind: Removal) -> Result<()> {
        self.gone.execute([id, kind.as_str()])?;
        self.unstage.execute([id])?;
        Ok(())
    }
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

impl<'t> Writer<'t, '_> {
    /// Starts staging rows of `c` (one page's worth).
    pub(crate) fn stage(&self, c: &'t Collection) -> Result<Stage<'t>> {
        let tx: &'t Transaction<'_> = self.tx;
        let any_removal: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", gone_table(c)),
            [],
            |r| r.get(0),
        )?;
        let upsert = tx.prepare_cached(&stage_upsert_sql(c))?;
        let unmark = tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", gone_table(c)))?;
        let gone = tx.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {} (id, _kind) VALUES (?1, ?2)",
            gone_table(c)
        ))?;
        let unstage =
            tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", stage_table(c)))?;
        Ok(Stage {
            c,
            now: self.now,
            any_removal,
            upsert,
            unmark,
            gone,
            unstage,
        })
    }
}

impl Writer<'_, '_> {
    /// Records that a page was staged and the cursor it reached.
    pub(crate) fn staged_page(&self, cursor: &str) -> Result<()> {
        meta_set(self.tx, STAGED_CURSOR, cursor)?;
        let pages: u64 = meta_get(self.tx, STAGED_PAGES)?
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        meta_set(self.tx, STAGED_PAGES, &(pages + 1).to_string())
    }

    /// The cursor the staged pages reach, if any are staged.
    pub(crate) fn staged_cursor(&self) -> Result<Option<String>> {
        meta_get(self.tx, STAGED_CURSOR)
    }

    /// Everything staged is published up to `cursor`: it becomes the published
    /// cursor, and nothing is staged any more.
    pub(crate) fn set_published_cursor(&self, cursor: &str) -> Result<()> {
        meta_set(self.tx, CURSOR, cursor)?;
        self.tx.execute(
            "DELETE FROM _ferry_meta WHERE key IN (?1, ?2)",
            [STAGED_CURSOR, STAGED_PAGES],
        )?;
        Ok(())
    }

    /// Ids of `c`'s pending (not synced) records that the pull staged a row or
    /// a removal for.
    pub(crate) fn pending_staged_ids(&self, c: &Collection) -> Result<Vec<String>> {
        Ok(self
            .tx
            .prepare(&format!(
                "SELECT t.id FROM {t} t WHERE t._status <> 'synced'
                 AND (EXISTS (SELECT 1 FROM {s} s WHERE s.id = t.id) OR EXISTS (SELECT 1 FROM {g} g WHERE g.id = t.id))",
                t = quote(&c.name),
                s = stage_table(c),
                g = gone_table(c)
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// What the pull staged for `id` of `c` (which it staged something for).
    pub(crate) fn staged(&self, c: &Collection, id: &str) -> Result<Staged> {
        let sql = format!(
            "SELECT {} FROM {} WHERE id = ?1",
            records::select_list(c),
            stage_table(c)
        );
        if let Some(rec) = load_with(self.tx, c, &sql, [id])? {
            return Ok(Staged::Upsert(ServerRecord {
                id: rec.id,
                version: rec.version.unwrap_or(0),
                fields: rec.fields,
            }));
        }
        let kind: String = self
            .tx
            .prepare_cached(&format!(
                "SELECT _kind FROM {} WHERE id = ?1",
                gone_table(c)
            ))?
            .query_row([id], |r| r.get(0))?;
        Ok(Staged::Removal(Removal::parse(&kind)?))
    }

    /// Drops what is staged for `id` of `c`.
    pub(crate) fn unstage(&self, c: &Collection, id: &str) -> Result<()> {
        for table in [stage_table(c), gone_table(c)] {
            self.tx
                .prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))?
                .execute([id])?;
        }
        Ok(())
    }

    /// How many rows and how many removals of `c` are staged.
    pub(crate) fn staged_counts(&self, c: &Collection) -> Result<(usize, usize)> {
        let (upserts, gone): (i64, i64) = self.tx.query_row(
            &format!(
                "SELECT (SELECT COUNT(*) FROM {}), (SELECT COUNT(*) FROM {})",
                stage_table(c),
                gone_table(c)
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((upserts as usize, gone as usize))
    }

    /// The staged rows of `c` that publishing will write: new ones, and those
    /// newer than the local row.
    pub(crate) fn staged_upserts(&self, c: &Collection) -> Result<Vec<Record>> {
        let sql = format!(
            "SELECT {} FROM {stage} s LEFT JOIN {t} t ON t.id = s.id
             WHERE t.id IS NULL OR t._version IS NULL OR s._version > t._version",
            records::select_list_of(c, "s."),
            stage = stage_table(c),
            t = quote(&c.name)
        );
        let mut stmt = self.tx.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut ups = Vec::new();
        while let Some(row) = rows.next()? {
            ups.push(records::read_record(c, row)?);
        }
        Ok(ups)
    }

    /// The ids of `c` staged as removed that exist locally.
    pub(crate) fn staged_removals(&self, c: &Collection) -> Result<Vec<(String, Removal)>> {
        let rows: Vec<(String, String)> = self
            .tx
            .prepare(&format!(
                // CROSS JOIN keeps staging (small) outside: without statistics SQLite
                // would otherwise scan the whole collection and probe staging.
                "SELECT g.id, g._kind FROM {gone} g CROSS JOIN {t} t ON t.id = g.id",
                gone = gone_table(c),
                t = quote(&c.name)
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, kind)| Ok((id, Removal::parse(&kind)?)))
            .collect()
    }

    /// Removes the records of `c` staged as removed, and empties the gone table;
    /// returns how many records went.
    pub(crate) fn publish_removals(&self, c: &Collection) -> Result<usize> {
        let (t, gone) = (quote(&c.name), gone_table(c));
        let removed = self.tx.execute(
            &format!("DELETE FROM {t} WHERE id IN (SELECT id FROM {gone})"),
            [],
        )?;
        self.tx.execute(&format!("DELETE FROM {gone}"), [])?;
        Ok(removed)
    }

    /// Whether `c`'s staging table can become the collection: rows are staged,
    /// the collection is empty (nothing local to merge with) and has no unique
    /// index (the staging table has none, so it has not checked them).
    pub(crate) fn can_swap_in(&self, c: &Collection) -> Result<bool> {
        if c.indexes.iter().any(|i| i.unique) {
            return Ok(false);
        }
        Ok(self.tx.query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {}) AND NOT EXISTS (SELECT 1 FROM {})",
                stage_table(c),
                quote(&c.name)
            ),
            [],
            |r| r.get(0),
        )?)
    }

    /// The staged rows become the collection as they are (see
    /// [`Self::can_swap_in`]); a fresh staging table is made for the next pull.
    pub(crate) fn swap_in(&self, c: &Collection) -> Result<()> {
        let (t, stage) = (quote(&c.name), stage_table(c));
        self.tx.execute_batch(&format!(
            "DROP TABLE {t}; ALTER TABLE {stage} RENAME TO {t};"
        ))?;
        create_stage(self.tx, c)
    }

    /// Writes the staged rows of `c` into the collection, each unless the local
    /// row is at the same or a newer version, and empties the staging table;
    /// returns how many rows were written.
    pub(crate) fn publish_upserts(&self, c: &Collection) -> Result<usize> {
        let (t, stage) = (quote(&c.name), stage_table(c));
        let cols: Vec<String> = c.columns.iter().map(|col| quote(&col.name)).collect();
        let sets: String = cols
            .iter()
            .map(|q| format!("{q} = excluded.{q}, "))
            .collect();
        let n = self.tx.execute(
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
        self.tx.execute(&format!("DELETE FROM {stage}"), [])?;
        Ok(n)
    }
}
