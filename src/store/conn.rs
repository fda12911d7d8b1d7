//! SQLite connection setup: one writer, a pool of readers, WAL.
//!
//! WAL lets readers run while the writer commits. `synchronous=NORMAL` in WAL mode
//! keeps every commit durable against an app crash or kill (the WAL is written
//! before the call returns) and atomic against power loss; only the last commits
//! before a power cut may roll back. Readers are `query_only` so no code path can
//! write outside the writer's transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::{Error, Result};

/// The key of an encrypted database (SQLCipher), given to every connection
/// before anything else; wiped from memory when the store is dropped.
pub(crate) type Key = Option<Arc<zeroize::Zeroizing<String>>>;

/// Gives `conn` its key, if any, and checks that it can read the file: a file
/// encrypted with another key (or not a database) is `InvalidInput`.
fn unlock(conn: &Connection, key: &Key) -> Result<()> {
    if let Some(key) = key {
        #[cfg(feature = "sqlcipher")]
        conn.pragma_update(None, "key", key.as_str())?;
        #[cfg(not(feature = "sqlcipher"))]
        {
            let _ = key;
            return Err(Error::InvalidInput(
                "this build of Ferry cannot encrypt: it lacks the `sqlcipher` feature".into(),
            ));
        }
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::NotADatabase => {
            Err(Error::InvalidInput(
                "the database file cannot be read: it is encrypted with another key (or none), or it is not a database"
                    .into(),
            ))
        }
        other => Ok(other?),
    }
}

const BUSY_TIMEOUT_MS: u32 = 5_000;
/// Page cache per connection, in KiB (negative = KiB in SQLite's pragma).
const CACHE_KIB: i64 = 16 * 1024;
/// The writer gets more: a large batch should not spill pages mid-transaction.
pub(super) const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// The writer's cache while a first sync builds a collection in key order.
pub(super) const BUILD_CACHE_KIB: i64 = 16 * 1024;

pub(crate) fn open_writer(path: &Path, key: &Key) -> Result<Connection> {
    let conn = Connection::open(path)?;
    unlock(&conn, key)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    configure(&conn)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    // With temporary storage in memory SQLite's sorter never spills: the sort of
    // a first sync's staged rows would hold them all in memory. On file, a sort
    // keeps at most the cache's size in memory.
    conn.pragma_update(None, "temp_store", "FILE")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    register_functions(&conn)?;
    Ok(conn)
}

/// SQL functions the writer's statements use (see `Writer::freeze_creates`).
fn register_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    // A new mutation id per row: deliberately not deterministic.
    conn.create_scalar_function("ferry_uuid7", 0, FunctionFlags::SQLITE_UTF8, |_| {
        Ok(uuid::Uuid::now_v7().to_string())
    })?;
    // A number as serde_json writes it: the shortest text that reads back as the
    // same f64 (SQLite's JSON functions keep only 15 digits).
    conn.create_scalar_function(
        "ferry_json_number",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let f = match ctx.get_raw(0) {
                ValueRef::Null => return Ok(None),
                ValueRef::Real(f) => f,
                ValueRef::Integer(i) => i as f64,
                other => {
                    return Err(rusqlite::Error::UserFunctionError(
                        format!("a number column holds {:?}", other.data_type()).into(),
                    ));
                }
            };
            Ok(Some(serde_json::Value::from(f).to_string()))
        },
    )?;
    Ok(())
}

fn configure(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "busy_timeout", BUSY_TIMEOUT_MS)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Reader connections, opened on demand and reused.
pub(crate) struct Readers {
    path: PathBuf,
    key: Key,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: &Path, key: Key) -> Self {
        Readers {
            path: path.to_path_buf(),
            key,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a reader connection.
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.idle.lock().pop() {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                unlock(&c, &self.key)?;
                configure(&c)?;
                c.pragma_update(None, "query_only", true)?;
                c
            }
        };
        let out = f(&conn);
        self.idle.lock().push(conn);
        out
    }
}
