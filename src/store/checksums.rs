//! Integrity checks: what this device holds of a collection, as a checksum to
//! compare with the server's, and the state of a repair (docs/architecture.md,
//! "Integrity checks and repair").
//!
//! The synced view of a collection is every row the server last gave it: each
//! row with a server version (`_version`), pending local edits or not, since
//! those keep the version they are based on. Its checksum is the count of
//! those rows and the XOR of their [`record_digest`] (ferry-protocol's).

use ferry_protocol::{Checksum, record_digest};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::records::quote;
use super::staging::{removed_table, up_table};
use super::{Store, Writer, meta_get, meta_set};
use crate::error::Result;
use crate::schema::Collection;

/// Meta key: the repair a pull is making ([`Repairing`], as JSON), from its
/// first staged page until the publish that completes each collection.
const REPAIRING: &str = "repairing";
/// Meta key: when the checksums were last compared.
const CHECKED_AT: &str = "checksums_checked_at";
/// Meta key prefix: the server checksum a repair of `<collection>` did not
/// match, so that the same one is not repaired again and again.
const UNREPAIRED: &str = "unrepaired_";

/// A repair under way: the collections it brings again, and the published
/// cursor it started from. Should its staged pages be lost before any of
/// them was published (dropped, or discarded on open), the published cursor
/// is still that one, which never restarted them: the repair is then
/// abandoned, for the next check to find again, rather than replace a
/// collection with what an ordinary pull brings.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Repairing {
    collections: Vec<String>,
    from: Option<String>,
}

fn repairing(conn: &Connection) -> Result<Repairing> {
    Ok(match meta_get(conn, REPAIRING)? {
        Some(v) => serde_json::from_str(&v)?,
        None => Repairing::default(),
    })
}

fn set_repairing(conn: &Connection, r: &Repairing) -> Result<()> {
    if r.collections.is_empty() {
        conn.execute("DELETE FROM _ferry_meta WHERE key = ?1", [REPAIRING])?;
        Ok(())
    } else {
        meta_set(conn, REPAIRING, &serde_json::to_string(r)?)
    }
}

/// Whether a repair is under way.
pub(super) fn under_repair(conn: &Connection) -> Result<bool> {
    Ok(!repairing(conn)?.collections.is_empty())
}

/// At the start of a pull from the published cursor `published` (nothing
/// staged): whether a repair is under way, after abandoning one whose staged
/// pages were lost.
pub(super) fn repair_at_start(conn: &Connection, published: Option<&str>) -> Result<bool> {
    let r = repairing(conn)?;
    if r.collections.is_empty() {
        return Ok(false);
    }
    if r.from.as_deref() == published {
        tracing::warn!(collections = ?r.collections, "the repair's staged pages were lost; it is abandoned");
        set_repairing(conn, &Repairing::default())?;
        return Ok(false);
    }
    Ok(true)
}

impl Store {
    /// The checksum of `collection` as this device holds it (its synced view:
    /// every row with a server version), as a pull's `checksums` gives the
    /// server's; `None` when the two cannot be compared (see below).
    pub fn checksum(&self, collection: &str) -> Result<Option<Checksum>> {
        self.local_checksum(self.collection(collection)?)
    }

    /// The checksum of `c`'s synced view, or `None` when it cannot be compared
    /// with the server's: retention pruned part of it (a horizon), or a record
    /// has a pending update or delete (the server may hold a version this
    /// device has not heard of: a push whose answer was lost, or an eviction
    /// kept for its changes) or an unanswered push.
    pub(crate) fn local_checksum(&self, c: &Collection) -> Result<Option<Checksum>> {
        let t = quote(&c.name);
        self.read_snapshot(|conn| {
            let unsure: bool = conn.query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM _ferry_horizons WHERE collection = ?1)
                     OR EXISTS (SELECT 1 FROM {t} WHERE _status IN ('updated', 'deleted'))
                     OR EXISTS (SELECT 1 FROM _ferry_outbox WHERE collection = ?1 AND unanswered = 1)"
                ),
                [&c.name],
                |r| r.get(0),
            )?;
            if unsure {
                return Ok(None);
            }
            let mut stmt = conn.prepare(&format!(
                "SELECT id, _version FROM {t} WHERE _version IS NOT NULL"
            ))?;
            let mut rows = stmt.query([])?;
            let (mut count, mut digest) = (0u64, 0u64);
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                let version: i64 = r.get(1)?;
                count += 1;
                digest ^= record_digest(&id, version as u64);
            }
            Ok(Some(Checksum::new(count, digest)))
        })
    }

    /// When the checksums were last compared (ms), if ever.
    pub(crate) fn checksums_checked_at(&self) -> Result<Option<i64>> {
        self.read(|conn| Ok(meta_get(conn, CHECKED_AT)?.and_then(|v| v.parse().ok())))
    }

    /// The server checksum a repair of `collection` last failed to match.
    pub(crate) fn unrepaired(&self, collection: &str) -> Result<Option<String>> {
        self.read(|conn| meta_get(conn, &format!("{UNREPAIRED}{collection}")))
    }

    /// Records a comparison: when, and for each collection repaired in vain
    /// the server digest it did not match (`Some`) or that it matches now
    /// (`None`).
    pub(crate) fn checksums_checked(&self, unrepaired: &[(String, Option<String>)]) -> Result<()> {
        let now = self.clock().now_ms();
        let conn = self.inner.writer.lock();
        let tx = conn.unchecked_transaction()?;
        meta_set(&tx, CHECKED_AT, &now.to_string())?;
        for (c, digest) in unrepaired {
            let key = format!("{UNREPAIRED}{c}");
            match digest {
                Some(d) => meta_set(&tx, &key, d)?,
                None => {
                    tx.execute("DELETE FROM _ferry_meta WHERE key = ?1", [&key])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The collections a repair pull is bringing again.
    pub(crate) fn repairing(&self) -> Result<Vec<String>> {
        let conn = self.inner.writer.lock();
        Ok(repairing(&conn)?.collections)
    }
}

impl Writer<'_, '_> {
    /// A repair pull, which started from the published cursor `from`, staged
    /// its first page: until their publish, these collections are replaced by
    /// what it brings.
    pub(crate) fn set_repairing(&self, collections: &[String], from: Option<&str>) -> Result<()> {
        set_repairing(
            self.tx,
            &Repairing {
                collections: collections.to_vec(),
                from: from.map(String::from),
            },
        )
    }

    /// Whether the pull staging now repairs `c`.
    pub(crate) fn is_repairing(&self, c: &Collection) -> Result<bool> {
        Ok(repairing(self.tx)?.collections.contains(&c.name))
    }

    /// The publish that completes `c`'s repair, before it applies anything:
    /// every row of `c`'s synced view that the repair did not bring is staged
    /// as evicted (the server does not hold it in this view, or not any
    /// more), and `c` is no longer repairing after this publish.
    pub(crate) fn finish_repair(&self, c: &Collection) -> Result<()> {
        self.tx.execute(
            &format!(
                "INSERT OR IGNORE INTO {removed} (id, kind)
                 SELECT id, 'evict' FROM {t} WHERE _version IS NOT NULL
                 AND id NOT IN (SELECT id FROM {up})",
                removed = removed_table(c),
                t = quote(&c.name),
                up = up_table(c),
            ),
            [],
        )?;
        let mut left = repairing(self.tx)?;
        left.collections.retain(|n| *n != c.name);
        set_repairing(self.tx, &left)
    }
}
