//! SQLite backend: the embedded default, one file, no setup.
//!
//! SQLite serializes writers, so a single integer counter (`meta.head`) taken inside
//! the write transaction is commit order: position `(n, 0)`. One writer connection
//! behind a mutex, readers from a small pool, WAL so reads never block the writer.
//! Blocking calls run on tokio's blocking pool and must never run on the async
//! workers. One process per database file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    ChangeRow, CurrentRow, ReadRequest, ReadResult, RecordData, Storage, TotalDeltas, WriteBatch,
    WriteResult, decode_fields, decode_outcome, encode_outcome, raw_fields,
};
use crate::cursor::Position;
use crate::engine::{Decision, decide};
use crate::error::ServerError;
use crate::storage::ChangeKind;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL, id TEXT NOT NULL, scope TEXT NOT NULL,
    version INTEGER NOT NULL, deleted INTEGER NOT NULL, data TEXT NOT NULL,
    changed_at INTEGER NOT NULL, created_at INTEGER NOT NULL,
    PRIMARY KEY (collection, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    scope TEXT NOT NULL, collection TEXT NOT NULL, record_id TEXT NOT NULL,
    pos INTEGER NOT NULL, kind INTEGER NOT NULL, client_id TEXT,
    PRIMARY KEY (scope, collection, record_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS changes_stream ON changes (scope, collection, pos);
CREATE TABLE IF NOT EXISTS totals (
    scope TEXT NOT NULL, collection TEXT NOT NULL, count INTEGER NOT NULL, digest INTEGER,
    PRIMARY KEY (scope, collection)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mutations (
    user_id TEXT NOT NULL, mutation_id TEXT NOT NULL, outcome TEXT NOT NULL,
    PRIMARY KEY (user_id, mutation_id)) WITHOUT ROWID;
PRAGMA user_version = 1;
";

const MAX_IDLE_READERS: usize = 8;

/// WAL pages after which a commit checkpoints by itself: only a fallback, the
/// checkpointer thread normally keeps the WAL well below it.
const FALLBACK_AUTOCHECKPOINT_PAGES: i64 = 20_000;

pub struct SqliteStorage {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Wakes the checkpointer after a commit; it stops when this is dropped.
    checkpoint: std::sync::mpsc::SyncSender<()>,
}

/// How long the checkpointer lets commits gather before it copies them back: a
/// page that several commits wrote (the top of a B-tree) is copied, and the
/// file synced, once for all of them.
const CHECKPOINT_GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies the WAL back into the database file after commits, on its own thread
/// and connection, so no request waits for it (a passive checkpoint never blocks
/// readers or the writer). Wake-ups that arrive while it gathers or works are
/// merged into one checkpoint.
fn start_checkpointer(path: &Path) -> Result<std::sync::mpsc::SyncSender<()>, ServerError> {
    let conn = connect(path)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("ferry-sqlite-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                std::thread::sleep(CHECKPOINT_GATHER);
                // Commits until now are in this checkpoint: their wake-up is spent.
                while rx.try_recv().is_ok() {}
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; the next commit retries");
                }
            }
        })?;
    Ok(tx)
}

fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating if needed) the database file and its schema.
    pub async fn open(path: &Path) -> Result<SqliteStorage, ServerError> {
        let path = path.to_path_buf();
        let p = path.clone();
        let (writer, checkpoint) = tokio::task::spawn_blocking(move || {
            let conn = connect(&p)?;
            conn.execute_batch(SCHEMA)?;
            // Totals kept before digests were: their digest is unknown (NULL)
            // and stays so, so a pull sends no checksum it cannot vouch for.
            let has_digest: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('totals') WHERE name = 'digest')",
                [],
                |r| r.get(0),
            )?;
            if !has_digest {
                conn.execute_batch("ALTER TABLE totals ADD COLUMN digest INTEGER")?;
            }
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('cursor_secret', ?1)",
                [super::new_secret()],
            )?;
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('head', 0)",
                [],
            )?;
            conn.pragma_update(None, "wal_autocheckpoint", FALLBACK_AUTOCHECKPOINT_PAGES)?;
            Ok::<_, ServerError>((conn, start_checkpointer(&p)?))
        })
        .await??;
        Ok(SqliteStorage {
            path,
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::default(),
            checkpoint,
        })
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ServerError> + Send + 'static,
    ) -> Result<T, ServerError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().expect("reader pool").pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => connect(&path)?,
            };
            let out = f(&mut conn);
            let mut pool = readers.lock().expect("reader pool");
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
            out
        })
        .await?
    }
}

fn head(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("SELECT value FROM meta WHERE key = 'head'", [], |r| {
        r.get(0)
    })
}

fn read_in(conn: &mut Connection, req: &ReadRequest) -> Result<ReadResult, ServerError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let watermark = Position(head(&tx)? + 1, 0);
    let mut rows = Vec::with_capacity(req.scans.len());
    {
        let mut stmt = tx.prepare_cached(
            "SELECT c.pos, c.record_id, c.kind, c.client_id, r.version, r.created_at, r.data
             FROM changes c LEFT JOIN records r
               ON c.kind = 0 AND r.collection = c.collection AND r.id = c.record_id
             WHERE c.scope = ?1 AND c.collection = ?2 AND c.pos > ?3 AND c.pos <= ?4
             ORDER BY c.pos LIMIT ?5",
        )?;
        for scan in &req.scans {
            // Positions here are (n, 0): compare the pair, not just n.
            let after = if scan.after.1 < 0 {
                scan.after.0 - 1
            } else {
                scan.after.0
            };
            let upto = scan
                .upto
                .map_or(i64::MAX, |p| if p.1 < 0 { p.0 - 1 } else { p.0 });
            let limit = i64::try_from(scan.limit).unwrap_or(i64::MAX);
            let mut out = Vec::new();
            let mut q = stmt.query(params![
                scan.key.scope,
                scan.key.collection,
                after,
                upto,
                limit
            ])?;
            while let Some(r) = q.next()? {
                let kind = ChangeKind::from_code(r.get(2)?)?;
                let record = match r.get::<_, Option<String>>(6)? {
                    Some(data) => Some(RecordData {
                        version: r.get::<_, i64>(4)? as u64,
                        created_at: r.get(5)?,
                        fields: raw_fields(data)?,
                    }),
                    None => None,
                };
                out.push(ChangeRow {
                    position: Position(r.get(0)?, 0),
                    record_id: r.get(1)?,
                    kind,
                    client_id: r.get(3)?,
                    record,
                });
            }
            rows.push(out);
        }
    }
    let mut totals = BTreeMap::new();
    let mut digests = BTreeMap::new();
    if let Some((scopes, collections)) = &req.totals {
        let mut stmt = tx.prepare_cached(
            "SELECT count, digest FROM totals WHERE scope = ?1 AND collection = ?2",
        )?;
        for c in collections {
            let mut sum = 0i64;
            let mut digest = Some(0u64);
            for s in scopes {
                let row = stmt
                    .query_row(params![s, c], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                    })
                    .optional()?;
                if let Some((n, d)) = row {
                    sum += n;
                    digest = digest.zip(d).map(|(a, b)| a ^ b as u64);
                }
            }
            totals.insert(c.clone(), sum.max(0) as u64);
            digests.insert(c.clone(), digest);
        }
    }
    tx.commit()?;
    Ok(ReadResult {
        rows,
        watermark,
        totals,
        digests,
        withheld: false,
        lag_seconds: None,
    })
}

fn load_current(
    stmt: &mut rusqlite::CachedStatement<'_>,
    collection: &str,
    id: &str,
) -> Result<Option<CurrentRow>, ServerError> {
    let row = stmt
        .query_row(params![collection, id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .optional()?;
    row.map(|(scope, version, deleted, data, changed_at, created_at)| {
        let fields = decode_fields(
            serde_json::from_str(&data).map_err(|e| ServerError::Corrupt(e.to_string()))?,
        )?;
        Ok(CurrentRow {
            scope,
            version: version as u64,
            deleted,
            fields,
            changed_at,
            created_at,
        })
    })
    .transpose()
}

/// The statements a push batch runs per mutation, prepared once per batch: a
/// statement-cache lookup per row hashes the SQL text each time.
struct WriteStatements<'t> {
    outcome: rusqlite::CachedStatement<'t>,
    current: rusqlite::CachedStatement<'t>,
    change: rusqlite::CachedStatement<'t>,
    record: rusqlite::CachedStatement<'t>,
    remember: rusqlite::CachedStatement<'t>,
}

impl<'t> WriteStatements<'t> {
    fn prepare(tx: &'t rusqlite::Transaction<'_>) -> Result<Self, rusqlite::Error> {
        Ok(WriteStatements {
            outcome: tx.prepare_cached(
                "SELECT outcome FROM mutations WHERE user_id = ?1 AND mutation_id = ?2",
            )?,
            current: tx.prepare_cached(
                "SELECT scope, version, deleted, data, changed_at, created_at FROM records
                 WHERE collection = ?1 AND id = ?2",
            )?,
            change: tx.prepare_cached(
                "INSERT OR FAIL INTO changes (scope, collection, record_id, pos, kind, client_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (scope, collection, record_id) DO UPDATE SET
                   pos = excluded.pos, kind = excluded.kind, client_id = excluded.client_id",
            )?,
            record: tx.prepare_cached(
                "INSERT OR FAIL INTO records (collection, id, scope, version, deleted, data, changed_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (collection, id) DO UPDATE SET scope = excluded.scope,
                   version = excluded.version, deleted = excluded.deleted, data = excluded.data,
                   changed_at = excluded.changed_at",
            )?,
            remember: tx.prepare_cached(
                "INSERT OR FAIL INTO mutations (user_id, mutation_id, outcome) VALUES (?1, ?2, ?3)",
            )?,
        })
    }
}

/// Every statement here writes one row. `OR FAIL` spares SQLite the statement
/// journal (a copy of each page a statement touches, kept to undo a half-done
/// multi-row statement); any error still rolls back the whole transaction.
fn write_in(conn: &mut Connection, batch: &WriteBatch) -> Result<WriteResult, ServerError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut pos = head(&tx)?;
    let mut outcomes = Vec::with_capacity(batch.mutations.len());
    let mut total_deltas = TotalDeltas::default();
    let user = &batch.caller.user_id;
    {
        let mut st = WriteStatements::prepare(&tx)?;
        for m in &batch.mutations {
            if let Some(mid) = &m.mutation_id {
                let stored: Option<String> = st
                    .outcome
                    .query_row(params![user, mid], |r| r.get(0))
                    .optional()?;
                if let Some(json) = stored {
                    outcomes.push(decode_outcome(&json)?);
                    continue;
                }
            }
            let current = load_current(&mut st.current, &m.collection, &m.record_id)?;
            let decision = decide(&batch.config, &batch.caller, m, current.as_ref());
            let remembered = decision.remembered();
            let outcome = match decision {
                Decision::Conflict { outcome } if batch.abort_on_conflict => {
                    return Ok(WriteResult {
                        outcomes: vec![outcome],
                        checkpoint: Position::ZERO,
                        aborted: true,
                    });
                }
                Decision::Conflict { outcome } | Decision::NoWrite { outcome } => outcome,
                Decision::Write {
                    row,
                    changes,
                    totals,
                    outcome,
                } => {
                    let first = pos + 1;
                    for (scope, kind) in &changes {
                        pos += 1;
                        st.change.execute(params![
                            scope,
                            m.collection,
                            m.record_id,
                            pos,
                            kind.code(),
                            batch.client_id
                        ])?;
                    }
                    let data = serde_json::Value::Object(row.fields).to_string();
                    st.record.execute(params![
                        m.collection,
                        m.record_id,
                        row.scope,
                        row.version as i64,
                        row.deleted,
                        data,
                        first
                    ])?;
                    total_deltas.add(&m.collection, totals);
                    outcome
                }
            };
            if let (Some(mid), true) = (&m.mutation_id, remembered) {
                st.remember
                    .execute(params![user, mid, encode_outcome(&outcome)])?;
            }
            outcomes.push(outcome);
        }
    }
    // Row counts change once per (scope, collection) per batch, not per row.
    // (SQLite has no XOR operator: a ^ b = (a & ~b) | (~a & b).)
    for (scope, collection, delta, digest) in total_deltas.changed() {
        tx.prepare_cached(
            "INSERT INTO totals (scope, collection, count, digest) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (scope, collection) DO UPDATE SET count = count + excluded.count,
               digest = (digest & ~excluded.digest) | (~digest & excluded.digest)",
        )?
        .execute(params![scope, collection, delta, digest])?;
    }
    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'head'", [pos])?;
    tx.commit()?;
    Ok(WriteResult {
        outcomes,
        checkpoint: Position(pos + 1, 0),
        aborted: false,
    })
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn read(&self, request: ReadRequest) -> Result<ReadResult, ServerError> {
        self.with_reader(move |conn| read_in(conn, &request)).await
    }

    async fn write(&self, batch: WriteBatch) -> Result<WriteResult, ServerError> {
        let writer = self.writer.clone();
        let result = tokio::task::spawn_blocking(move || {
            write_in(&mut writer.lock().expect("writer"), &batch)
        })
        .await?;
        // Full means a wake-up is already pending: that one covers this commit too.
        let _ = self.checkpoint.try_send(());
        result
    }

    async fn secret(&self) -> Result<Vec<u8>, ServerError> {
        self.with_reader(|conn| {
            Ok(conn.query_row(
                "SELECT value FROM meta WHERE key = 'cursor_secret'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn ping(&self) -> Result<(), ServerError> {
        self.with_reader(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
