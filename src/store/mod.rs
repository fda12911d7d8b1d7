//! The local store: records, outbox and metadata in one SQLite database.
//!
//! The store is the source of truth for the UI. Every write runs in one
//! transaction on the single writer connection: the record rows, their outbox
//! entries and the queued change event commit together or not at all, and the
//! event is delivered only after the commit (see [`crate::events`]). Reads use
//! separate reader connections and never wait for the writer. Nothing in here
//! talks to the network.
//!
//! The store owns every table (the collections, outbox, shadows, staging,
//! anchors, meta) and all of their SQL. The sync engine decides; it acts through
//! `Writer`'s typed methods inside a write transaction and `Store`'s reads,
//! and never sees a statement.

mod anchors;
mod checksums;
mod conn;
mod ddl;
mod fetched;
mod layout;
pub mod outbox;
pub mod query;
pub mod records;
mod retention;
mod shadow;
pub(crate) mod staging;
mod subscriptions;
#[cfg(test)]
pub(crate) mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_protocol::Op;
use parking_lot::Mutex;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{
    CachedStatement, Connection, OptionalExtension, Transaction, TransactionBehavior,
    params_from_iter,
};
use serde::Serialize;
use serde_json::Value;

pub use outbox::{EntryState, OutboxEntry};
pub use query::{Filter, Query, Sort};
pub use records::{Fields, Record, RecordStatus};
pub use retention::{CountResult, QueryResult, RetentionReport};
pub use subscriptions::{ActiveSubscription, MAX_SUBSCRIPTIONS, Subscription};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::events::{
    ChangeListener, ChangeSource, Dispatcher, EventBuilder, ListenerHandle, QueryListener,
};
use crate::schema::{Collection, MAX_INPUT_BYTES, Schema, validate_id};
use conn::Readers;
use outbox::Enqueued;
use records::{check_fields, complete_for_create, normalise, quote, read_record};

/// Most operations accepted in one batch write.
pub const MAX_BATCH_OPS: usize = 200_000;

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum WriteOp {
    /// Create a record; `fields` may carry an `id`, else a UUID v7 is made.
    Create {
        collection: String,
        fields: Fields,
    },
    /// Change some fields of an existing record.
    Update {
        collection: String,
        id: String,
        fields: Fields,
    },
    /// Update the record with `fields["id"]` if it exists, else create it.
    Put {
        collection: String,
        fields: Fields,
    },
    Delete {
        collection: String,
        id: String,
    },
}

impl WriteOp {
    /// The collection and record id this write touches, giving a new record its
    /// UUID v7 now (so a write that is validated, pushed and then applied keeps
    /// one id throughout).
    pub fn target(&mut self) -> (String, String) {
        match self {
            WriteOp::Create { collection, fields } | WriteOp::Put { collection, fields } => {
                let id = match fields.get("id") {
                    Some(Value::String(id)) => id.clone(),
                    Some(_) => String::new(), // invalid; the write itself reports it
                    None => {
                        let id = uuid::Uuid::now_v7().to_string();
                        fields.insert("id".into(), Value::String(id.clone()));
                        id
                    }
                };
                (collection.clone(), id)
            }
            WriteOp::Update { collection, id, .. } | WriteOp::Delete { collection, id } => {
                (collection.clone(), id.clone())
            }
        }
    }

    /// Parses a `put` document: one object, or an array of objects (a batch).
    pub fn puts_from_json(collection: &str, json: &str) -> Result<Vec<WriteOp>> {
        Ok(records_from_json(json)?
            .into_iter()
            .map(|fields| WriteOp::Put {
                collection: collection.to_string(),
                fields,
            })
            .collect())
    }

    /// Parses a mixed batch: a JSON array of
    /// `{"op":"create"|"put","collection":C,"fields":{..}}`,
    /// `{"op":"update","collection":C,"id":ID,"fields":{..}}` and
    /// `{"op":"delete","collection":C,"id":ID}`.
    pub fn batch_from_json(json: &str) -> Result<Vec<WriteOp>> {
        check_input_size(json.len())?;
        Ok(serde_json::from_str(json)?)
    }
}

/// Records of one collection as JSON: an array of objects, or one object.
pub(crate) fn records_from_json(json: &str) -> Result<Vec<Fields>> {
    check_input_size(json.len())?;
    let items = match serde_json::from_str::<Value>(json)? {
        Value::Array(items) => items,
        other => vec![other],
    };
    items
        .into_iter()
        .map(|item| records::into_object(item, "a record"))
        .collect()
}

pub(crate) fn check_input_size(len: usize) -> Result<()> {
    if len > MAX_INPUT_BYTES {
        return Err(Error::TooLarge {
            what: "the JSON input".into(),
            size: len,
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok(())
}

/// A collection's anchor: what this device knows exists on the server beyond
/// what it holds. The server's total against the local count, and the horizon
/// that retention moved (docs/architecture.md, "Retention and the horizon").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anchor {
    pub collection: String,
    /// Rows in this device's view on the server, at the last pull that reported
    /// it (`None`: no pull reported it yet).
    pub server_total: Option<u64>,
    /// Live local rows.
    pub local_count: u64,
    /// When `server_total` was received (ms, the store's clock).
    pub updated_at: Option<i64>,
    /// The horizon: rows whose retention column is at or below it may be
    /// missing locally (pruned). `None`: nothing was ever pruned, the local
    /// data is complete.
    pub horizon: Option<Value>,
    /// Rows pruned so far.
    pub pruned: u64,
}

/// Counts the `status` command and the sync status report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    pub schema_version: u32,
    pub client_id: String,
    pub records: std::collections::BTreeMap<String, u64>,
    pub pending: u64,
    pub quarantined: u64,
}

/// Per-collection row statements, built once at open (a bulk write runs them
/// per row).
/// Prebuilt single-row statements of a collection. They say `OR FAIL`: a
/// statement that writes one row needs no statement journal (SQLite's copy of
/// every page it touches, kept to undo a half-done multi-row statement), and a
/// failure still rolls back the whole write transaction.
struct RowSql {
    insert: String,
    replace: String,
    select: String,
    mark_synced: String,
    mark_synced_many: String,
}

impl RowSql {
    fn new(c: &Collection) -> RowSql {
        let mut cols = String::from("id");
        let mut marks = String::from("?");
        let mut sets = String::new();
        for col in &c.columns {
            cols.push_str(", ");
            cols.push_str(&quote(&col.name));
            marks.push_str(", ?");
            sets.push_str(&quote(&col.name));
            sets.push_str(" = ?, ");
        }
        RowSql {
            insert: format!(
                "INSERT OR FAIL INTO {} ({cols}, {}) VALUES ({marks}, ?, ?, ?, ?, ?)",
                quote(&c.name),
                records::BOOKKEEPING
            ),
            replace: format!(
                "UPDATE OR FAIL {} SET {sets}_status = ?, _changed = ?, _version = ?, _updated_at = ? WHERE id = ?",
                quote(&c.name)
            ),
            select: select_by_id(c),
            mark_synced: format!(
                "UPDATE OR FAIL {} SET _status = 'synced', _changed = NULL, _version = MAX(COALESCE(_version, 0), ?2) WHERE id = ?1 RETURNING {}",
                quote(&c.name),
                records::select_list(c)
            ),
            mark_synced_many: format!(
                "UPDATE OR FAIL {t} SET _status = 'synced', _changed = NULL, _version = MAX(COALESCE(_version, 0), j.value ->> 1)
                 FROM json_each(?1) AS j WHERE {t}.id = j.value ->> 0 RETURNING {}",
                records::select_list(c),
                t = quote(&c.name),
            ),
        }
    }
}

struct Inner {
    path: PathBuf,
    /// The absolute path, for [`OPEN`].
    key: PathBuf,
    schema: Arc<Schema>,
    sql: HashMap<String, RowSql>,
    writer: Mutex<Connection>,
    readers: Arc<Readers>,
    dispatcher: Arc<Dispatcher>,
    clock: Arc<dyn Clock>,
    client_id: String,
    /// Told when the last handle is gone ([`Store::when_closed`]).
    closed: Mutex<Vec<futures::channel::oneshot::Sender<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.dispatcher.shutdown();
        let mut open = OPEN.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
        drop(open);
        for tx in self.closed.get_mut().drain(..) {
            let _ = tx.send(());
        }
    }
}

/// How many stores of this process have each database file open (by absolute
/// path): [`Store::delete_database`] refuses a file that is still open.
static OPEN: Mutex<std::collections::BTreeMap<PathBuf, usize>> =
    Mutex::new(std::collections::BTreeMap::new());

fn open_key(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A handle to a local database. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// See [`Store::downgrade`].
#[derive(Clone)]
pub struct WeakStore(std::sync::Weak<Inner>);

impl WeakStore {
    /// The store, if some handle still keeps it open.
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Store {
    /// Opens (creating or migrating) the database at `path` with `schema`.
    pub fn open(path: impl AsRef<Path>, schema: Schema) -> Result<Store> {
        Self::open_with(path.as_ref(), Some(schema), Arc::new(SystemClock))
    }

    /// Opens an existing database with the schema stored in it.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(path.as_ref(), None, Arc::new(SystemClock))
    }

    /// Opens with an explicit schema (or the stored one) and clock.
    pub fn open_with(path: &Path, schema: Option<Schema>, clock: Arc<dyn Clock>) -> Result<Store> {
        Self::open_full(path, schema, clock, None)
    }

    /// As [`Store::open`], for the app installation `installation_id`: an id the
    /// host keeps outside every backup (Android: a file in `noBackupFilesDir`;
    /// iOS: a file excluded from backup, or `identifierForVendor`). A database
    /// last opened by another installation (restored by Android Auto Backup or
    /// an iCloud restore, or copied to a second device) takes a new client id:
    /// with the first device's id, the server would take that device's writes
    /// for this one's echoes and never send them here.
    pub fn open_for_installation(
        path: impl AsRef<Path>,
        schema: Schema,
        installation_id: &str,
    ) -> Result<Store> {
        Self::open_full(
            path.as_ref(),
            Some(schema),
            Arc::new(SystemClock),
            Some(installation_id),
        )
    }

    /// Opens with every option: schema (or the stored one), clock, and the
    /// installation id (see [`Store::open_for_installation`]).
    pub fn open_full(
        path: &Path,
        schema: Option<Schema>,
        clock: Arc<dyn Clock>,
        installation_id: Option<&str>,
    ) -> Result<Store> {
        Self::open_keyed(path, schema, clock, installation_id, None)
    }

    /// As [`Store::open`], encrypted at rest with `key` (SQLCipher; the build
    /// needs the feature `sqlcipher`): the database, its WAL and its staging
    /// file are unreadable without it. A passphrase, or a raw 256-bit key
    /// written `x'<64 hex digits>'`. A new file is encrypted from the start; a
    /// file encrypted with another key, or not encrypted, fails with
    /// `InvalidInput` and is left as it is. Without the feature, `InvalidInput`.
    pub fn open_encrypted(path: impl AsRef<Path>, schema: Schema, key: &str) -> Result<Store> {
        if key.is_empty() {
            return Err(Error::InvalidInput("the encryption key is empty".into()));
        }
        let key = Some(Arc::new(zeroize::Zeroizing::new(key.to_string())));
        Self::open_keyed(
            path.as_ref(),
            Some(schema),
            Arc::new(SystemClock),
            None,
            key,
        )
    }

    fn open_keyed(
        path: &Path,
        schema: Option<Schema>,
        clock: Arc<dyn Clock>,
        installation_id: Option<&str>,
        key: conn::Key,
    ) -> Result<Store> {
        if let Some(s) = &schema {
            s.validate()?;
        }
        if installation_id.is_some_and(str::is_empty) {
            return Err(Error::InvalidInput("the installation id is empty".into()));
        }
        let mut writer = conn::open_writer(path, &key)?;
        staging::attach(&writer, path)?;
        let (schema, client_id) = ddl::prepare(&mut writer, schema, installation_id)?;
        let open = open_key(path);
        *OPEN.lock().entry(open.clone()).or_default() += 1;
        Ok(Store {
            inner: Arc::new(Inner {
                key: open,
                sql: schema
                    .collections
                    .iter()
                    .map(|c| (c.name.clone(), RowSql::new(c)))
                    .collect(),
                path: path.to_path_buf(),
                schema: Arc::new(schema),
                writer: Mutex::new(writer),
                readers: Arc::new(Readers::new(path, key)),
                dispatcher: Dispatcher::start(),
                clock,
                client_id,
                closed: Mutex::default(),
            }),
        })
    }

    /// Deletes the database file at `path`, its WAL and shared-memory files and
    /// its staging file:
    /// the last step of a logout (stop the sync client, drop every handle, then
    /// this). Fails with `InvalidInput`, deleting nothing, while a store of this
    /// process still has the file open. A missing file is not an error.
    pub fn delete_database(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let open = OPEN.lock();
        if open.contains_key(&open_key(path)) {
            return Err(Error::InvalidInput(format!(
                "the database `{}` is still open: stop its sync client and close every handle first",
                path.display()
            )));
        }
        let mut files: Vec<PathBuf> = ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                PathBuf::from(file)
            })
            .collect();
        files.extend(staging::files(path));
        for file in files {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// A handle that does not keep the database open: it tells when every
    /// [`Store`] handle (the app's, a sync client's, a background task's) is gone
    /// and the database is closed.
    pub fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.inner))
    }

    /// Resolves once every handle of this store is gone (this one included)
    /// and its database is closed.
    pub(crate) fn when_closed(&self) -> impl std::future::Future<Output = ()> + use<> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.inner.closed.lock().push(tx);
        async move {
            let _ = rx.await;
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stable id of this installation, sent to the server with every sync.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn collection(&self, name: &str) -> Result<&Collection> {
        self.inner.schema.collection(name)
    }

    fn writer<'t, 'c>(&'t self, tx: &'t Transaction<'c>) -> Writer<'t, 'c> {
        Writer {
            tx,
            schema: &self.inner.schema,
            sql: &self.inner.sql,
            events: EventBuilder::default(),
            now: self.inner.clock.now_ms(),
            inserts: RefCell::default(),
        }
    }

    /// Runs `f` in one immediate write transaction; emits its event after commit.
    pub(crate) fn write_tx<T>(
        &self,
        source: ChangeSource,
        f: impl FnOnce(&mut Writer<'_, '_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut w = self.writer(&tx);
        let out = f(&mut w)?;
        let events = std::mem::take(&mut w.events);
        drop(w);
        tx.commit()?;
        if !events.is_empty() {
            // Queued under the writer lock so events keep commit order; delivered
            // later on the dispatcher thread.
            self.inner.dispatcher.emit(events.build(source));
        }
        Ok(out)
    }

    /// Applies a batch of writes in one transaction: all of them or none.
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<Option<Record>>> {
        if ops.len() > MAX_BATCH_OPS {
            return Err(Error::TooLarge {
                what: format!("a batch of {} writes", ops.len()),
                size: ops.len(),
                limit: MAX_BATCH_OPS,
            });
        }
        self.write_tx(ChangeSource::Local, |w| {
            ops.into_iter().map(|op| w.apply(op)).collect()
        })
    }

    /// Runs `f` in a write transaction that is always rolled back: validates a
    /// change and shows what it would queue, without keeping or announcing it.
    pub(crate) fn simulate<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_, '_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut w = self.writer(&tx);
        f(&mut w)
        // `tx` drops here: rolled back.
    }

    /// Makes every queued mutation due now, whatever its backoff after failed
    /// pushes: for a user who asks to retry now (the next push sends them).
    pub fn retry_now(&self) -> Result<()> {
        self.write_tx(ChangeSource::Local, |w| w.make_due())
    }

    /// Mutations parked after a permanent rejection, oldest first.
    pub fn quarantine(&self) -> Result<Vec<OutboxEntry>> {
        Ok(self
            .outbox()?
            .into_iter()
            .filter(|e| e.state == EntryState::Quarantined)
            .collect())
    }

    /// Forgets a quarantined mutation (its record already shows the server state).
    pub fn discard_quarantined(&self, mutation_id: &str) -> Result<()> {
        self.write_tx(ChangeSource::Local, |w| {
            if !w.remove_quarantined(mutation_id)? {
                return Err(Error::NotFound {
                    collection: "quarantine".into(),
                    id: mutation_id.into(),
                });
            }
            Ok(())
        })
    }

    /// Applies a quarantined mutation again as a new local write (validated as
    /// any write), and removes it from the quarantine.
    pub fn retry_quarantined(&self, mutation_id: &str) -> Result<Option<Record>> {
        let entry = self
            .quarantine()?
            .into_iter()
            .find(|e| e.mutation_id == mutation_id)
            .ok_or_else(|| Error::NotFound {
                collection: "quarantine".into(),
                id: mutation_id.into(),
            })?;
        self.write_tx(ChangeSource::Local, |w| {
            w.remove_entry(entry.seq)?;
            let mut fields = entry.fields.clone();
            let c = w.schema.collection(&entry.collection)?;
            let exists = w
                .load(c, &entry.record_id)?
                .is_some_and(|r| r.status != RecordStatus::Deleted);
            let op = match entry.op {
                Op::Delete if exists => WriteOp::Delete {
                    collection: entry.collection.clone(),
                    id: entry.record_id.clone(),
                },
                Op::Delete => return Ok(None),
                _ if exists => WriteOp::Update {
                    collection: entry.collection.clone(),
                    id: entry.record_id.clone(),
                    fields,
                },
                _ => {
                    fields.insert("id".into(), Value::String(entry.record_id.clone()));
                    WriteOp::Create {
                        collection: entry.collection.clone(),
                        fields,
                    }
                }
            };
            w.apply(op)
        })
    }

    pub fn create(&self, collection: &str, fields: Fields) -> Result<Record> {
        self.write_tx(ChangeSource::Local, |w| w.create(collection, fields))
    }

    pub fn update(&self, collection: &str, id: &str, fields: Fields) -> Result<Record> {
        self.write_tx(ChangeSource::Local, |w| w.update(collection, id, fields))
    }

    pub fn put(&self, collection: &str, fields: Fields) -> Result<Record> {
        self.write_tx(ChangeSource::Local, |w| w.put(collection, fields))
    }

    pub fn delete(&self, collection: &str, id: &str) -> Result<()> {
        self.write_tx(ChangeSource::Local, |w| w.delete(collection, id))
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.inner.readers.with(f)
    }

    /// Like [`Self::read`], but every statement of `f` sees the same committed
    /// state (one read transaction), for reads made of several statements.
    pub(crate) fn read_snapshot<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.inner.readers.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// The record with `id`, unless absent or deleted.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        let c = self.collection(collection)?;
        self.read(|conn| load(conn, c, id))
            .map(|r| r.filter(|r| r.status != RecordStatus::Deleted))
    }

    /// The records with these ids that exist, in the order asked.
    pub fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Record>> {
        let c = self.collection(collection)?;
        let mut found: HashMap<String, Record> = HashMap::with_capacity(ids.len());
        self.read_snapshot(|conn| {
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let sql = format!(
                    "SELECT {} FROM {} WHERE id IN ({marks}) AND _status <> 'deleted'",
                    records::select_list(c),
                    quote(&c.name)
                );
                let mut stmt = conn.prepare(&sql)?;
                let mut rows = stmt.query(params_from_iter(chunk.iter()))?;
                while let Some(row) = rows.next()? {
                    let r = read_record(c, row)?;
                    found.insert(r.id.clone(), r);
                }
            }
            Ok(())
        })?;
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// Records matching `q`.
    pub fn query(&self, collection: &str, q: &Query) -> Result<Vec<Record>> {
        let c = self.collection(collection)?;
        self.read(|conn| run_query(conn, c, q))
    }

    /// How many records match `q` (ignoring its limit and offset).
    pub fn count(&self, collection: &str, q: &Query) -> Result<u64> {
        let c = self.collection(collection)?;
        let unpaged = Query {
            limit: None,
            offset: None,
            sort: vec![],
            ..q.clone()
        };
        let compiled = query::compile(c, &unpaged)?;
        self.read(|conn| {
            let sql = format!(
                "SELECT COUNT(*) FROM {} WHERE {}",
                quote(&c.name),
                compiled.where_sql
            );
            let n: i64 = conn
                .prepare_cached(&sql)?
                .query_row(params_from_iter(compiled.params.iter()), |r| r.get(0))?;
            Ok(n as u64)
        })
    }

    /// Pending and quarantined mutation counts (cheap: pending rows only).
    pub fn pending_counts(&self) -> Result<(u64, u64)> {
        self.read_snapshot(|conn| outbox::counts(conn, &self.inner.schema))
    }

    /// Every outbox entry and unsent create, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        // One snapshot: an unsent create that becomes an entry between two
        // statements would otherwise be listed in neither.
        self.read_snapshot(|conn| outbox::list(conn, &self.inner.schema))
    }

    pub fn status(&self) -> Result<StoreStatus> {
        self.read_snapshot(|conn| {
            let mut records = std::collections::BTreeMap::new();
            for c in &self.inner.schema.collections {
                let n: i64 = conn.query_row(
                    &format!(
                        "SELECT COUNT(*) FROM {} WHERE _status <> 'deleted'",
                        quote(&c.name)
                    ),
                    [],
                    |r| r.get(0),
                )?;
                records.insert(c.name.clone(), n as u64);
            }
            let (pending, quarantined) = outbox::counts(conn, &self.inner.schema)?;
            Ok(StoreStatus {
                schema_version: self.inner.schema.version,
                client_id: self.inner.client_id.clone(),
                records,
                pending,
                quarantined,
            })
        })
    }

    /// Registers a listener for every committed change.
    pub fn add_change_listener(&self, listener: Arc<dyn ChangeListener>) -> ListenerHandle {
        self.inner.dispatcher.add_change_listener(listener)
    }

    /// Observes a query: the listener gets the current result now, then the new
    /// result after each burst of commits that touch `collection`.
    pub fn observe(
        &self,
        collection: &str,
        q: Query,
        listener: Arc<dyn QueryListener>,
    ) -> Result<ListenerHandle> {
        let c = self.collection(collection)?.clone();
        query::compile(&c, &q)?;
        let readers = self.inner.readers.clone();
        let run = Arc::new(move || {
            readers.with(|conn| {
                Ok(run_query(conn, &c, &q)?
                    .iter()
                    .map(Record::to_json)
                    .collect())
            })
        });
        Ok(self.inner.dispatcher.observe(collection, run, listener))
    }

    /// Blocks until every event committed before this call was delivered. Not
    /// from a thread a listener may wait for (see [`Self::when_events_delivered`]).
    pub fn flush_events(&self) {
        self.inner.dispatcher.flush();
    }

    /// Calls `done` (on the event thread) once every event committed before this
    /// call was delivered; returns at once. The non-blocking flush.
    pub fn when_events_delivered(&self, done: impl FnOnce() + Send + 'static) {
        self.inner.dispatcher.after_delivery(Box::new(done));
    }

    /// Runs `job` on the event thread, in order with the events; of the jobs of
    /// one `key` queued within one burst only the last runs.
    pub(crate) fn on_event_thread_latest(
        &self,
        key: &'static str,
        job: impl FnOnce() + Send + 'static,
    ) {
        self.inner.dispatcher.run_latest(key, Box::new(job));
    }
}

fn run_query(conn: &Connection, c: &Collection, q: &Query) -> Result<Vec<Record>> {
    let compiled = query::compile(c, q)?;
    let sql = format!(
        "SELECT {} FROM {} WHERE {}{}",
        records::select_list(c),
        quote(&c.name),
        compiled.where_sql,
        compiled.tail_sql
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(compiled.params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read_record(c, row)?);
    }
    Ok(out)
}

/// Loads a record, tombstones included.
fn select_by_id(c: &Collection) -> String {
    format!(
        "SELECT {} FROM {} WHERE id = ?1",
        records::select_list(c),
        quote(&c.name)
    )
}

pub(crate) fn load(conn: &Connection, c: &Collection, id: &str) -> Result<Option<Record>> {
    load_with(conn, c, &select_by_id(c), rusqlite::params![id])
}

/// Runs a statement yielding at most one row of `c` (a select or a `RETURNING`).
fn load_with(
    conn: &Connection,
    c: &Collection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<Record>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(read_record(c, row)?)),
        None => Ok(None),
    }
}

/// The inside of a write transaction: record changes plus their outbox entries
/// and event. Used by local writes and by the sync engine.
pub(crate) struct Writer<'t, 'c> {
    tx: &'t Transaction<'c>,
    schema: &'t Schema,
    sql: &'t HashMap<String, RowSql>,
    events: EventBuilder,
    now: i64,
    /// Each collection's row insert, held for the whole transaction: a batch of
    /// creates takes it from SQLite's statement cache once, not once per row.
    inserts: RefCell<HashMap<&'t str, CachedStatement<'t>>>,
}

impl<'t> Writer<'t, '_> {
    /// The schema in force.
    pub(crate) fn schema(&self) -> &'t Schema {
        self.schema
    }

    /// The transaction's time (ms): every row it writes is stamped with it.
    pub(crate) fn now(&self) -> i64 {
        self.now
    }

    /// The event this transaction will emit after it commits.
    pub(crate) fn events(&mut self) -> &mut EventBuilder {
        &mut self.events
    }
}

impl Writer<'_, '_> {
    pub fn apply(&mut self, op: WriteOp) -> Result<Option<Record>> {
        match op {
            WriteOp::Create { collection, fields } => self.create(&collection, fields).map(Some),
            WriteOp::Update {
                collection,
                id,
                fields,
            } => self.update(&collection, &id, fields).map(Some),
            WriteOp::Put { collection, fields } => self.put(&collection, fields).map(Some),
            WriteOp::Delete { collection, id } => self.delete(&collection, &id).map(|_| None),
        }
    }

    pub fn create(&mut self, collection: &str, mut fields: Fields) -> Result<Record> {
        let c = self.schema.collection(collection)?;
        let id = match fields.remove("id") {
            None => uuid::Uuid::now_v7().to_string(),
            Some(Value::String(id)) => {
                validate_id(&id)?;
                id
            }
            Some(other) => {
                return Err(Error::InvalidInput(format!(
                    "`id` must be a string, got {}",
                    crate::error::JsonKind(&other)
                )));
            }
        };
        check_fields(c, &fields)?;
        complete_for_create(c, &mut fields)?;
        normalise(c, &mut fields);
        let status = if !c.is_local_only() {
            RecordStatus::Created
        } else {
            RecordStatus::Synced
        };
        let rec = Record {
            id,
            fields,
            status,
            changed: Vec::new(),
            version: None,
            created_at: self.now,
            updated_at: self.now,
        };
        self.insert_row(c, &rec).map_err(|e| match e {
            Error::Database(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::AlreadyExists {
                    collection: c.name.clone(),
                    id: rec.id.clone(),
                }
            }
            e => e,
        })?;
        // A synced create needs no outbox row: the row itself is the unsent create.
        self.events.upsert_with(&c.name, &rec.id, || rec.to_json());
        Ok(rec)
    }

    pub(crate) fn insert_row(&self, c: &Collection, rec: &Record) -> Result<()> {
        let mut vals: Vec<ToSqlOutput<'_>> = Vec::with_capacity(c.columns.len() + 6);
        vals.push(ToSqlOutput::Borrowed(ValueRef::Text(rec.id.as_bytes())));
        for col in &c.columns {
            vals.push(records::bind(rec.fields.get(&col.name), col.ty));
        }
        push_bookkeeping(&mut vals, rec);
        vals.push(ToSqlOutput::Owned(SqlValue::Integer(rec.created_at)));
        vals.push(ToSqlOutput::Owned(SqlValue::Integer(rec.updated_at)));
        let (name, sql) = self
            .sql
            .get_key_value(&c.name)
            .ok_or_else(|| Error::Internal(format!("no statements for `{}`", c.name)))?;
        let mut inserts = self.inserts.borrow_mut();
        let stmt = match inserts.entry(name.as_str()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(self.tx.prepare_cached(&sql.insert)?)
            }
        };
        stmt.execute(params_from_iter(vals))?;
        Ok(())
    }

    /// Rewrites every column and bookkeeping field of an existing row.
    pub(crate) fn replace_row(&self, c: &Collection, rec: &Record) -> Result<()> {
        let mut vals: Vec<ToSqlOutput<'_>> = Vec::with_capacity(c.columns.len() + 5);
        for col in &c.columns {
            vals.push(records::bind(rec.fields.get(&col.name), col.ty));
        }
        push_bookkeeping(&mut vals, rec);
        vals.push(ToSqlOutput::Owned(SqlValue::Integer(rec.updated_at)));
        vals.push(ToSqlOutput::Borrowed(ValueRef::Text(rec.id.as_bytes())));
        self.tx
            .prepare_cached(&self.sql[&c.name].replace)?
            .execute(params_from_iter(vals))?;
        Ok(())
    }

    pub(crate) fn delete_row(&self, c: &Collection, id: &str) -> Result<()> {
        self.tx
            .prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", quote(&c.name)))?
            .execute([id])?;
        Ok(())
    }

    pub(crate) fn load(&self, c: &Collection, id: &str) -> Result<Option<Record>> {
        load_with(self.tx, c, &self.sql[&c.name].select, [id])
    }

    /// Marks records synced, each at its version, in one statement. Returns the
    /// rows when `rows` (for the event).
    pub(crate) fn mark_synced_many(
        &self,
        c: &Collection,
        ids_versions: &[(&str, u64)],
        rows: bool,
    ) -> Result<Vec<Record>> {
        // A JSON array of `[id, version]` pairs.
        let pairs = serde_json::to_string(ids_versions)?;
        let mut stmt = self
            .tx
            .prepare_cached(&self.sql[&c.name].mark_synced_many)?;
        let mut returned = stmt.query([pairs])?;
        let mut out = Vec::new();
        // Stepped to the end whatever `rows` says: that is what runs the update.
        while let Some(row) = returned.next()? {
            if rows {
                out.push(read_record(c, row)?);
            }
        }
        Ok(out)
    }

    /// Marks a record synced at `version`; returns the row (for the event).
    pub(crate) fn mark_synced(
        &self,
        c: &Collection,
        id: &str,
        version: u64,
    ) -> Result<Option<Record>> {
        load_with(
            self.tx,
            c,
            &self.sql[&c.name].mark_synced,
            rusqlite::params![id, version as i64],
        )
    }

    fn load_live(&self, c: &Collection, id: &str) -> Result<Record> {
        self.load(c, id)?
            .filter(|r| r.status != RecordStatus::Deleted)
            .ok_or_else(|| Error::NotFound {
                collection: c.name.clone(),
                id: id.to_string(),
            })
    }

    pub fn update(&mut self, collection: &str, id: &str, mut fields: Fields) -> Result<Record> {
        let c = self.schema.collection(collection)?;
        match fields.remove("id") {
            None => {}
            Some(Value::String(s)) if s == id => {}
            Some(_) => {
                return Err(Error::InvalidInput(format!(
                    "cannot change the id of `{collection}/{id}`"
                )));
            }
        }
        check_fields(c, &fields)?;
        normalise(c, &mut fields);
        let mut rec = self.load_live(c, id)?;
        fields.retain(|k, v| rec.fields.get(k) != Some(v));
        if fields.is_empty() {
            return Ok(rec);
        }
        if !c.is_local_only() && rec.status == RecordStatus::Synced {
            self.save_shadow_if_absent(&c.name, id, rec.version, &rec.fields)?;
        }
        for (k, v) in &fields {
            rec.fields.insert(k.clone(), v.clone());
            if !c.is_local_only() && !rec.changed.contains(k) {
                rec.changed.push(k.clone());
            }
        }
        if !c.is_local_only() && rec.status == RecordStatus::Synced {
            rec.status = RecordStatus::Updated;
        }
        rec.updated_at = self.now;
        self.replace_row(c, &rec)?;
        if !c.is_local_only() {
            self.enqueue(
                &c.name,
                id,
                Op::Update,
                &fields,
                rec.version,
                rec.status == RecordStatus::Created,
            )?;
        }
        self.events.upsert(&c.name, id, rec.to_json());
        Ok(rec)
    }

    pub fn put(&mut self, collection: &str, fields: Fields) -> Result<Record> {
        let c = self.schema.collection(collection)?;
        if let Some(Value::String(id)) = fields.get("id")
            && let Some(existing) = self.load(c, id)?
            && existing.status != RecordStatus::Deleted
        {
            let id = id.clone();
            return self.update(collection, &id, fields);
        }
        self.create(collection, fields)
    }

    pub fn delete(&mut self, collection: &str, id: &str) -> Result<()> {
        let c = self.schema.collection(collection)?;
        let mut rec = self.load_live(c, id)?;
        if !c.is_local_only() && rec.status == RecordStatus::Synced {
            self.save_shadow_if_absent(&c.name, id, rec.version, &rec.fields)?;
        }
        let queued = if !c.is_local_only() {
            self.enqueue(
                &c.name,
                id,
                Op::Delete,
                &Fields::new(),
                rec.version,
                rec.status == RecordStatus::Created,
            )?
        } else {
            Enqueued::Cancelled
        };
        if queued == Enqueued::Cancelled {
            self.delete_row(c, id)?;
            self.remove_shadow(&c.name, id)?;
        } else {
            rec.status = RecordStatus::Deleted;
            rec.updated_at = self.now;
            self.replace_row(c, &rec)?;
        }
        self.events.delete(&c.name, id);
        Ok(())
    }
}

/// The bookkeeping columns' values, in [`records::BOOKKEEPING`] order (without the
/// timestamps).
fn push_bookkeeping<'a>(vals: &mut Vec<ToSqlOutput<'a>>, rec: &'a Record) {
    vals.push(ToSqlOutput::Borrowed(ValueRef::Text(
        rec.status.as_str().as_bytes(),
    )));
    vals.push(if rec.changed.is_empty() {
        ToSqlOutput::Borrowed(ValueRef::Null)
    } else {
        ToSqlOutput::Owned(SqlValue::Text(
            serde_json::to_string(&rec.changed).expect("strings serialize"),
        ))
    });
    vals.push(match rec.version {
        Some(v) => ToSqlOutput::Owned(SqlValue::Integer(v as i64)),
        None => ToSqlOutput::Borrowed(ValueRef::Null),
    });
}

/// Reads a metadata value.
fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM _ferry_meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Writes a metadata value.
fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO _ferry_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}
