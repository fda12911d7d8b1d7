//! The staging area: pulled pages wait here, invisible to the app, until the
//! sync engine publishes them.
//!
//! Staging lives in a file of its own beside the database (`<db>-ferry-stage`,
//! attached to the writer as `ferry_stage`, with a rollback journal), so that a
//! page's rows are written once: appended pages are not journaled, and they do
//! not go through the database's WAL and its checkpoint.
//!
//! - Upserted rows are **appended** to `up_<name>` (a rowid table with no index:
//!   a page's commit writes only new pages, whatever the order of the ids). An id
//!   staged twice keeps both rows; the later one (higher `seq`) is its latest.
//! - Deleted or evicted ids go to `removed_<name>` (keyed by id). Staging an upsert
//!   drops the id from it, so `removed_<name>` holds exactly the ids whose latest staged
//!   entry is a removal, and the publish leaves out every upsert of those ids.
//! - Each page is staged in one transaction together with the cursor it reached
//!   (`cursor`, `pages` in the staging file's `meta`), so a pull resumes at a page
//!   boundary.
//!
//! The publish reads the staging file and writes only the database: upserts
//! are applied in one statement sorted by id (an empty collection is built in
//! key order into a new table that then becomes the collection, its indexes
//! made afterwards in one sorted pass each). The publish transaction records
//! the staging's `generation` as published; the staging file is then emptied
//! (deleted when large). Staged pages of a published generation, a staging file
//! made for another schema or one that cannot be read are discarded: staging is
//! only ever a cache of pages the server can send again from the published
//! cursor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_protocol::ServerRecord;
use rusqlite::types::Value as SqlValue;
use rusqlite::{CachedStatement, Connection, OptionalExtension, Transaction, params_from_iter};

use super::records::{self, BOOKKEEPING, Record, ToSql, quote};
use super::retention::{Horizon, horizon, number_literal};
use super::{Store, Writer, anchors, meta_get, meta_set};
use crate::error::{Error, Result};
use crate::schema::{Collection, Schema};

/// Meta key (database): the cursor everything published so far is complete up to.
const PUBLISHED_CURSOR: &str = "cursor";
/// Meta key prefix (database): when a publish last completed priority `<n>`.
const PRIORITY_SYNCED: &str = "priority_synced_";
/// Meta key (database): the staging generation the last publish applied.
const PUBLISHED_GENERATION: &str = "published_generation";

/// Layout of staging; older layouts are dropped on open and their pull restarts.
const STAGING_FORMAT: &str = "3";
const STAGING_FORMAT_KEY: &str = "staging_format";

/// The staging file's schema name on the writer connection.
const STAGE_DB: &str = "ferry_stage";
/// The staging file's name: the database's plus this.
const STAGE_SUFFIX: &str = "-ferry-stage";
/// A staging file of more pages than this is deleted after its publish, not
/// emptied row by row (which would journal every page it frees).
const RECREATE_PAGES: i64 = 1024;

/// The staging file of the database at `db`, and its journal: what a deletion
/// of the database must remove too.
pub(crate) fn files(db: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with(STAGE_SUFFIX), with(&format!("{STAGE_SUFFIX}-journal"))]
}

pub(super) fn up_table(c: &Collection) -> String {
    format!("{STAGE_DB}.{}", quote(&format!("up_{}", c.name)))
}

pub(super) fn removed_table(c: &Collection) -> String {
    format!("{STAGE_DB}.{}", quote(&format!("removed_{}", c.name)))
}

fn stage_meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM ferry_stage.meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn stage_meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO ferry_stage.meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

/// Attaches the staging file of the database at `db` to the writer `conn`
/// (before the database is prepared). A staging file that cannot be read, or
/// whose generation is published already, is replaced by an empty one.
pub(crate) fn attach(conn: &Connection, db: &Path) -> Result<()> {
    let stale = attach_file(conn, db).and_then(|()| {
        let generation = stage_generation(conn)?;
        if generation.is_none() {
            return Ok(false);
        }
        // Before the database is prepared: a new one has no `_ferry_meta` yet.
        let has_meta: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = '_ferry_meta')",
            [],
            |r| r.get(0),
        )?;
        Ok(has_meta && generation == published_generation(conn)?)
    });
    match stale {
        Ok(false) => Ok(()),
        Ok(true) => replace_file(conn, db),
        Err(e) => {
            tracing::warn!(error = %e, "the staging file cannot be read; starting it afresh");
            replace_file(conn, db)
        }
    }
}

fn attach_file(conn: &Connection, db: &Path) -> Result<()> {
    let [file, _] = files(db);
    let file = file.to_str().ok_or_else(|| {
        Error::InvalidInput(format!("the database path `{}` is not UTF-8", db.display()))
    })?;
    conn.execute("ATTACH DATABASE ?1 AS ferry_stage", [file])?;
    conn.pragma_update(Some(STAGE_DB), "journal_mode", "TRUNCATE")?;
    conn.pragma_update(Some(STAGE_DB), "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS ferry_stage.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    Ok(())
}

/// Detaches the staging file, deletes it and attaches an empty one (its
/// tables are made by [`prepare`] or [`create_tables`]).
fn replace_file(conn: &Connection, db: &Path) -> Result<()> {
    conn.flush_prepared_statement_cache();
    let attached: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_database_list WHERE name = 'ferry_stage')",
        [],
        |r| r.get(0),
    )?;
    if attached {
        conn.execute_batch("DETACH DATABASE ferry_stage")?;
    }
    for f in files(db) {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    attach_file(conn, db)
}

fn stage_generation(conn: &Connection) -> Result<Option<String>> {
    stage_meta_get(conn, "generation")
}

fn published_generation(conn: &Connection) -> Result<Option<String>> {
    meta_get(conn, PUBLISHED_GENERATION)
}

/// Makes the staging tables of `schema`. Staged pages of another schema (or of
/// an older staging layout, kept in the database itself) are dropped: the pull
/// restarts from the published cursor.
pub(super) fn prepare(tx: &Transaction<'_>, schema: &Schema) -> Result<()> {
    if meta_get(tx, STAGING_FORMAT_KEY)?.as_deref() != Some(STAGING_FORMAT) {
        drop_tables(
            tx,
            "main",
            "name LIKE '\\_ferry\\_stage\\_%' ESCAPE '\\' OR name LIKE '\\_ferry\\_gone\\_%' ESCAPE '\\'",
        )?;
        tx.execute(
            "DELETE FROM _ferry_meta WHERE key IN ('staged_cursor', 'staged_pages')",
            [],
        )?;
        meta_set(tx, STAGING_FORMAT_KEY, STAGING_FORMAT)?;
    }
    let json = schema.to_json();
    if stage_meta_get(tx, "schema")?.as_deref() != Some(json.as_str()) {
        drop_tables(tx, STAGE_DB, "name <> 'meta'")?;
        tx.execute("DELETE FROM ferry_stage.meta", [])?;
        stage_meta_set(tx, "schema", &json)?;
    }
    create_tables(tx, schema)
}

fn drop_tables(tx: &Transaction<'_>, db: &str, filter: &str) -> Result<()> {
    let old: Vec<String> = tx
        .prepare(&format!(
            "SELECT name FROM {db}.sqlite_master WHERE type = 'table' AND ({filter})"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for t in old {
        tx.execute_batch(&format!("DROP TABLE {db}.{}", quote(&t)))?;
    }
    Ok(())
}

fn create_tables(conn: &Connection, schema: &Schema) -> Result<()> {
    for c in schema.collections.iter().filter(|c| !c.is_local_only()) {
        let mut cols = String::new();
        for col in &c.columns {
            cols.push_str(&format!(", {} {}", quote(&col.name), col.ty.sql_type()));
        }
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (seq INTEGER PRIMARY KEY, id TEXT NOT NULL{cols}, _version INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL) WITHOUT ROWID;",
            up_table(c),
            removed_table(c)
        ))?;
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
    /// A repair pull is under way (its staged pages, or its published
    /// checkpoints, are in this pull's start).
    pub repairing: bool,
}

/// The cursor the staged pages reach, unless nothing is staged or what is
/// staged is published already.
fn staged_cursor(conn: &Connection) -> Result<Option<String>> {
    let generation = stage_generation(conn)?;
    if generation.is_none() || generation == published_generation(conn)? {
        return Ok(None);
    }
    stage_meta_get(conn, "cursor")
}

impl Store {
    /// When each priority (0 first, to 3) was last published complete: at a
    /// checkpoint of its own, or at the end of a pull (which completes them
    /// all). A priority never synced is absent: a first sync that published
    /// priority 0 and was then cut off has `{0: t}`.
    pub fn priorities_synced(&self) -> Result<BTreeMap<u8, i64>> {
        self.read_snapshot(|conn| {
            let mut out = BTreeMap::new();
            for p in 0..=ferry_protocol::LOWEST_PRIORITY {
                if let Some(t) =
                    meta_get(conn, &format!("{PRIORITY_SYNCED}{p}"))?.and_then(|t| t.parse().ok())
                {
                    out.insert(p, t);
                }
            }
            Ok(out)
        })
    }

    /// Where the next pull starts: the staged cursor, or the published one.
    pub(crate) fn pull_start(&self) -> Result<PullStart> {
        let conn = self.inner.writer.lock();
        let totals = anchors::server_totals(&conn)?;
        Ok(match staged_cursor(&conn)? {
            Some(staged) => PullStart {
                cursor: Some(staged),
                resumed: true,
                totals,
                repairing: super::checksums::under_repair(&conn)?,
            },
            None => {
                let cursor = meta_get(&conn, PUBLISHED_CURSOR)?;
                let repairing = super::checksums::repair_at_start(&conn, cursor.as_deref())?;
                PullStart {
                    cursor,
                    resumed: false,
                    totals,
                    repairing,
                }
            }
        })
    }

    /// Empties the staging file after a publish (deleting it when large). A
    /// failure leaves it to the next open, which discards a published generation.
    pub(crate) fn clear_staging(&self) -> Result<()> {
        let conn = self.inner.writer.lock();
        if staged_cursor(&conn)?.is_some() {
            return Ok(());
        }
        let pages: i64 = conn.query_row("PRAGMA ferry_stage.page_count", [], |r| r.get(0))?;
        if pages > RECREATE_PAGES {
            replace_file(&conn, &self.inner.path)?;
            let tx = conn.unchecked_transaction()?;
            stage_meta_set(&tx, "schema", &self.inner.schema.to_json())?;
            create_tables(&tx, &self.inner.schema)?;
            tx.commit()?;
        } else if stage_generation(&conn)?.is_some() {
            let tx = conn.unchecked_transaction()?;
            empty(&tx, &self.inner.schema)?;
            tx.commit()?;
        }
        Ok(())
    }
}

/// Deletes every staged page (the staging's tables stay).
fn empty(conn: &Connection, schema: &Schema) -> Result<()> {
    for c in schema.collections.iter().filter(|c| !c.is_local_only()) {
        conn.execute_batch(&format!(
            "DELETE FROM {}; DELETE FROM {};",
            up_table(c),
            removed_table(c)
        ))?;
    }
    conn.execute(
        "DELETE FROM ferry_stage.meta WHERE key IN ('generation', 'cursor', 'pages')
         OR key LIKE 'order\\_%' ESCAPE '\\'",
        [],
    )?;
    Ok(())
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
            other => Err(Error::Internal(format!("bad staged `kind` `{other}`"))),
        }
    }
}

/// What the pull staged for one id: its latest entry.
#[derive(Debug)]
pub(crate) enum Staged {
    /// The server row.
    Upsert(ServerRecord),
    /// Its delete or eviction.
    Removal(Removal),
}

/// The staging statements of one collection, held while a page is staged.
pub(crate) struct Stage<'t> {
    tx: &'t Transaction<'t>,
    c: &'t Collection,
    /// Whether every row staged so far came in increasing id order, and the
    /// last id: then the publish needs no sort.
    order: Order,
    /// Whether any removal is staged (else an upsert has none to unstage).
    any_removal: bool,
    upsert: CachedStatement<'t>,
    unmark: CachedStatement<'t>,
    remove: CachedStatement<'t>,
}

/// The order of a collection's staged rows so far (staging `meta`, key
/// `order_<collection>`: `ordered <last id>` or `unordered`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Order {
    /// Each row's id is greater than the one before; the last one.
    Ordered(Option<String>),
    Unordered,
}

impl Order {
    fn key(c: &Collection) -> String {
        format!("order_{}", c.name)
    }

    fn load(conn: &Connection, c: &Collection) -> Result<Order> {
        Ok(match stage_meta_get(conn, &Order::key(c))? {
            None => Order::Ordered(None),
            Some(v) => match v.strip_prefix("ordered ") {
                Some(last) => Order::Ordered(Some(last.to_string())),
                None => Order::Unordered,
            },
        })
    }

    fn store(&self, conn: &Connection, c: &Collection) -> Result<()> {
        let v = match self {
            Order::Ordered(None) => return Ok(()),
            Order::Ordered(Some(last)) => format!("ordered {last}"),
            Order::Unordered => "unordered".into(),
        };
        stage_meta_set(conn, &Order::key(c), &v)
    }

    /// After staging `id`. (SQLite compares text as Rust does: byte by byte.)
    fn push(&mut self, id: &str) {
        if let Order::Ordered(last) = self {
            match last {
                Some(l) if l.as_str() >= id => *self = Order::Unordered,
                _ => *last = Some(id.to_string()),
            }
        }
    }
}

impl Stage<'_> {
    /// Stages a server row (the fields this app's schema does not know, from a
    /// newer server, are left out). Fails, staging nothing, when the row does
    /// not fit the schema.
    pub fn upsert(&mut self, r: ServerRecord) -> Result<()> {
        let c = self.c;
        let fields = records::server_fields(c, &r.id, r.fields)?;
        let mut vals: Vec<SqlValue> = Vec::with_capacity(c.columns.len() + 2);
        self.order.push(&r.id);
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
        self.upsert.execute(params_from_iter(vals))?;
        Ok(())
    }

    /// Ends the page's staging of this collection: records the order of its rows.
    pub fn finish(self) -> Result<()> {
        self.order.store(self.tx, self.c)
    }

    /// After [`Self::upsert`] of `id`: an id staged as removed by an earlier page
    /// and upserted now keeps only its latest state.
    pub fn unstage_removal(&mut self, id: &str) -> Result<()> {
        if self.any_removal {
            self.unmark.execute([id])?;
        }
        Ok(())
    }

    /// Stages the removal of `id` (which supersedes any row staged for it earlier).
    pub fn remove(&mut self, id: &str, kind: Removal) -> Result<()> {
        self.remove.execute([id, kind.as_str()])?;
        self.any_removal = true;
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
        "INSERT INTO {} ({cols}, _version) VALUES ({marks}, ?)",
        up_table(c)
    )
}

/// The staged upserts of `c` that are the latest entry of their id, as records
/// of the collection's shape (synced, at the server's version, stamped `now`):
/// `SELECT {list} FROM {from} WHERE {live}` where `s` is the staged row.
struct Live {
    list: String,
    from: String,
    live: String,
}

///
/// Beyond the collection's horizon (at or below it), only rows held locally
/// are live: a pruned row does not come back through a pull.
fn live_upserts(c: &Collection, now: i64, horizon: Option<&Horizon>) -> Live {
    let mut list = String::from("s.id");
    for col in &c.columns {
        list.push_str(&format!(", s.{}", quote(&col.name)));
    }
    list.push_str(&format!(", 'synced', NULL, s._version, {now}, {now}"));
    let mut live = format!(
        "NOT EXISTS (SELECT 1 FROM {} g WHERE g.id = s.id)",
        removed_table(c)
    );
    if let Some((h, lit)) = horizon.and_then(|h| Some((h, number_literal(&h.value)?))) {
        live.push_str(&format!(
            " AND (s.{col} IS NULL OR s.{col} > {lit} OR EXISTS (SELECT 1 FROM main.{t} k WHERE k.id = s.id))",
            col = quote(&h.column),
            t = quote(&c.name)
        ));
    }
    Live {
        list,
        from: format!("{} s", up_table(c)),
        live,
    }
}

impl<'t> Writer<'t, '_> {
    /// Starts staging rows of `c` (one page's worth).
    pub(crate) fn stage(&self, c: &'t Collection) -> Result<Stage<'t>> {
        let tx: &'t Transaction<'_> = self.tx;
        let any_removal: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", removed_table(c)),
            [],
            |r| r.get(0),
        )?;
        let upsert = tx.prepare_cached(&stage_upsert_sql(c))?;
        let unmark =
            tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", removed_table(c)))?;
        let remove = tx.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {} (id, kind) VALUES (?1, ?2)",
            removed_table(c)
        ))?;
        Ok(Stage {
            tx,
            c,
            order: Order::load(tx, c)?,
            any_removal,
            upsert,
            unmark,
            remove,
        })
    }
}

impl Writer<'_, '_> {
    /// Records that a page was staged and the cursor it reached.
    pub(crate) fn staged_page(&self, cursor: &str) -> Result<()> {
        let tx = self.tx;
        if staged_cursor(tx)?.is_none() {
            // A new pull: its pages are a new generation (any rows left from a
            // published one are gone with `clear_staging`).
            stage_meta_set(tx, "generation", &uuid::Uuid::new_v4().to_string())?;
            stage_meta_set(tx, "pages", "0")?;
        }
        stage_meta_set(tx, "cursor", cursor)?;
        let pages: u64 = stage_meta_get(tx, "pages")?
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        stage_meta_set(tx, "pages", &(pages + 1).to_string())
    }

    /// Drops every staged page: the next pull starts from the published
    /// cursor. (Should the staging file's commit be lost in a crash, its
    /// generation counts as published, so the next open discards it too.)
    pub(crate) fn drop_staged(&self) -> Result<()> {
        if let Some(generation) = stage_generation(self.tx)? {
            meta_set(self.tx, PUBLISHED_GENERATION, &generation)?;
        }
        empty(self.tx, self.schema)
    }

    /// The cursor the staged pages reach, if any are staged and unpublished.
    pub(crate) fn staged_cursor(&self) -> Result<Option<String>> {
        staged_cursor(self.tx)
    }

    /// Everything staged is published up to `cursor`: it becomes the published
    /// cursor, and the staged generation counts as published.
    pub(crate) fn set_published_cursor(&self, cursor: &str) -> Result<()> {
        meta_set(self.tx, PUBLISHED_CURSOR, cursor)?;
        if let Some(generation) = stage_generation(self.tx)? {
            meta_set(self.tx, PUBLISHED_GENERATION, &generation)?;
        }
        Ok(())
    }

    /// A publish completed every priority up to `level` (0 first): each of
    /// them is synced as of now.
    pub(crate) fn set_priorities_synced(&self, level: u8) -> Result<()> {
        let now = self.now.to_string();
        for p in 0..=level {
            meta_set(self.tx, &format!("{PRIORITY_SYNCED}{p}"), &now)?;
        }
        Ok(())
    }

    /// What the pull staged for `c`'s pending (not synced) records, by id: the
    /// latest entry of each.
    pub(crate) fn pending_staged(&self, c: &Collection) -> Result<BTreeMap<String, Staged>> {
        let t = quote(&c.name);
        let mut out = BTreeMap::new();
        let any_pending: bool = self.tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE _status <> 'synced')"),
            [],
            |r| r.get(0),
        )?;
        if !any_pending {
            return Ok(out);
        }
        let Live { list, from, live } = live_upserts(c, self.now, horizon(self.tx, c)?.as_ref());
        let mut stmt = self.tx.prepare(&format!(
            "SELECT {list} FROM {from} WHERE {live}
             AND s.id IN (SELECT id FROM {t} WHERE _status <> 'synced') ORDER BY s.seq"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let rec = records::read_record(c, row)?;
            // Later rows of an id replace earlier ones.
            out.insert(
                rec.id.clone(),
                Staged::Upsert(ServerRecord {
                    id: rec.id,
                    version: rec.version.unwrap_or(0),
                    fields: rec.fields,
                }),
            );
        }
        let removed: Vec<(String, String)> = self
            .tx
            .prepare(&format!(
                "SELECT g.id, g.kind FROM {} g CROSS JOIN {t} t ON t.id = g.id WHERE t._status <> 'synced'",
                removed_table(c)
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, kind) in removed {
            out.insert(id, Staged::Removal(Removal::parse(&kind)?));
        }
        Ok(out)
    }

    /// How many rows and how many removals of `c` are staged (an id staged in
    /// several pages counts each time).
    pub(crate) fn staged_counts(&self, c: &Collection) -> Result<(usize, usize)> {
        let (upserts, removals): (i64, i64) = self.tx.query_row(
            &format!(
                "SELECT (SELECT COUNT(*) FROM {}), (SELECT COUNT(*) FROM {})",
                up_table(c),
                removed_table(c)
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((upserts as usize, removals as usize))
    }

    /// The staged rows of `c` that publishing will write, in staging order: new
    /// ones, and those newer than a synced local row.
    pub(crate) fn staged_upserts(&self, c: &Collection) -> Result<Vec<Record>> {
        let Live { list, from, live } = live_upserts(c, self.now, horizon(self.tx, c)?.as_ref());
        let sql = format!(
            "SELECT {list} FROM {from} LEFT JOIN {t} t ON t.id = s.id WHERE {live}
             AND (t.id IS NULL OR (t._status = 'synced' AND (t._version IS NULL OR s._version > t._version)))
             ORDER BY s.seq",
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

    /// The synced records of `c` staged as removed.
    pub(crate) fn staged_removals(&self, c: &Collection) -> Result<Vec<(String, Removal)>> {
        let rows: Vec<(String, String)> = self
            .tx
            .prepare(&format!(
                // CROSS JOIN keeps staging (small) outside: without statistics SQLite
                // would otherwise scan the whole collection and probe staging.
                "SELECT g.id, g.kind FROM {removed} g CROSS JOIN {t} t ON t.id = g.id WHERE t._status = 'synced'",
                removed = removed_table(c),
                t = quote(&c.name)
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, kind)| Ok((id, Removal::parse(&kind)?)))
            .collect()
    }

    /// Removes the synced records of `c` staged as removed (pending ones were
    /// rebased before); returns how many went.
    pub(crate) fn publish_removals(&self, c: &Collection) -> Result<usize> {
        Ok(self.tx.execute(
            &format!(
                "DELETE FROM {t} WHERE _status = 'synced' AND id IN (SELECT id FROM {removed})",
                t = quote(&c.name),
                removed = removed_table(c)
            ),
            [],
        )?)
    }

    /// Whether `c` is built from its staged rows rather than merged with them:
    /// rows are staged and the collection is empty (nothing local to merge with).
    pub(crate) fn can_build(&self, c: &Collection) -> Result<bool> {
        Ok(self.tx.query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {}) AND NOT EXISTS (SELECT 1 FROM {})",
                up_table(c),
                quote(&c.name)
            ),
            [],
            |r| r.get(0),
        )?)
    }

    /// Builds the (empty) collection `c` from its staged rows: they are written
    /// in key order into a new table, which replaces the collection; then its
    /// indexes are made, each in one sorted pass. Returns how many rows it holds.
    pub(crate) fn build(&self, c: &Collection) -> Result<usize> {
        // A smaller cache while building: the new table's pages are written once,
        // in order, so they need no cache, and SQLite's sorter takes the cache's
        // size as its memory budget.
        self.tx
            .pragma_update(None, "cache_size", -super::conn::BUILD_CACHE_KIB)?;
        let built = self.build_table(c);
        self.tx
            .pragma_update(None, "cache_size", -super::conn::WRITER_CACHE_KIB)?;
        built
    }

    fn build_table(&self, c: &Collection) -> Result<usize> {
        let build = format!("_ferry_build_{}", c.name);
        self.tx
            .execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&build)))?;
        super::ddl::create_table(self.tx, c, &build)?;
        let n = self.upsert_staged(c, &build, false)?;
        self.tx.execute_batch(&format!(
            "DROP TABLE {t}; ALTER TABLE {b} RENAME TO {t};",
            t = quote(&c.name),
            b = quote(&build)
        ))?;
        super::ddl::create_indexes(self.tx, c)?;
        Ok(n)
    }

    /// Writes the staged rows of `c` into the collection, in key order, each
    /// unless the local row is pending (rebased before) or, unless `replace`
    /// (a repair: the server's row is right whatever this device holds), at
    /// the same or a newer version; returns how many rows were written.
    pub(crate) fn publish_upserts(&self, c: &Collection, replace: bool) -> Result<usize> {
        self.upsert_staged(c, &c.name, replace)
    }

    fn upsert_staged(&self, c: &Collection, table: &str, replace: bool) -> Result<usize> {
        let t = quote(table);
        let sets: String = c
            .columns
            .iter()
            .map(|col| format!("{q} = excluded.{q}, ", q = quote(&col.name)))
            .collect();
        let mut cols = String::from("id");
        for col in &c.columns {
            cols.push_str(&format!(", {}", quote(&col.name)));
        }
        let Live { list, from, live } = live_upserts(c, self.now, horizon(self.tx, c)?.as_ref());
        // Rows staged in id order are read as they are. Else only the keys are
        // sorted (the rows are then read by `seq`), so that a large sort stays
        // small; `LIMIT -1` keeps the sorted subquery from being flattened into
        // the join, which would drop its order.
        let rows = if Order::load(self.tx, c)? == Order::Unordered {
            format!(
                "SELECT {list} FROM (SELECT s.seq AS k FROM {from} WHERE {live} ORDER BY s.id, s.seq LIMIT -1) o
                 CROSS JOIN {up} s ON s.seq = o.k WHERE true",
                up = up_table(c)
            )
        } else {
            format!("SELECT {list} FROM {from} WHERE {live} ORDER BY s.seq")
        };
        Ok(self.tx.execute(
            &format!(
                "INSERT INTO {t} ({cols}, {BOOKKEEPING})
                 {rows}
                 ON CONFLICT(id) DO UPDATE SET {sets}_version = excluded._version, _updated_at = excluded._updated_at
                 WHERE {t}._status = 'synced' AND ({replace} OR {t}._version IS NULL OR excluded._version > {t}._version)"
            ),
            [],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::Order;

    #[test]
    fn rows_stay_ordered_only_while_each_id_is_greater_than_the_last() {
        let mut o = Order::Ordered(None);
        for id in ["a", "b", "c"] {
            o.push(id);
        }
        assert_eq!(o, Order::Ordered(Some("c".into())));
        // An id staged again (a later version) needs the sort that keeps its latest.
        o.push("c");
        assert_eq!(o, Order::Unordered);
        let mut o = Order::Ordered(Some("m".into()));
        o.push("l");
        assert_eq!(o, Order::Unordered);
        o.push("z");
        assert_eq!(o, Order::Unordered, "once unordered, for the whole pull");
    }
}
