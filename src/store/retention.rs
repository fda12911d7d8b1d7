//! Retention: pruning a collection's synced rows by its policy
//! ([`crate::schema::Retention`]), and the horizon that pruning moves.
//!
//! A prune deletes rows outright: no outbox entry, no tombstone, so a pruned row
//! is never pushed as a delete. Only rows that are synced and have no outbox
//! entry at all (pending or quarantined) are candidates. The collection's
//! horizon becomes the highest retention-column value pruned so far: below or
//! at it, local data may be incomplete. A publish then skips staged rows at or
//! below the horizon that are not held locally, so a pruned row does not come
//! back through a pull (a row whose column moved above the horizon does).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::query::{Filter, Op, Query};
use super::records::quote;
use super::{Record, Store, Writer};
use crate::error::Result;
use crate::events::ChangeSource;
use crate::schema::Collection;

/// What one retention run pruned, per collection.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct RetentionReport {
    pub pruned: BTreeMap<String, u64>,
}

/// A query's result with whether it is complete: whether everything it could
/// match lies above the collection's horizon (else rows may be missing
/// locally, and `fetch_remote` can read them from the server).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub records: Vec<Record>,
    pub complete: bool,
}

/// A count, beside the server's total when it is comparable (an unfiltered
/// count: "local n of server total m").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountResult {
    pub local: u64,
    pub server_total: Option<u64>,
    pub complete: bool,
}

/// A horizon as JSON (it is a number column's value).
pub(super) fn json_number(v: &SqlValue) -> Option<Value> {
    match v {
        SqlValue::Integer(i) => Some(Value::from(*i)),
        SqlValue::Real(f) => serde_json::Number::from_f64(*f).map(Value::Number),
        _ => None,
    }
}

fn as_f64(v: &SqlValue) -> Option<f64> {
    match v {
        SqlValue::Integer(i) => Some(*i as f64),
        SqlValue::Real(f) => Some(*f),
        _ => None,
    }
}

fn higher(a: SqlValue, b: SqlValue) -> SqlValue {
    match as_f64(&a)
        .zip(as_f64(&b))
        .and_then(|(x, y)| x.partial_cmp(&y))
    {
        Some(Ordering::Less) => b,
        _ => a,
    }
}

/// `v` as an SQL literal (the horizon is put in a publish statement that binds
/// nothing): only numbers, which print exactly.
pub(super) fn number_literal(v: &SqlValue) -> Option<String> {
    match v {
        SqlValue::Integer(i) => Some(i.to_string()),
        SqlValue::Real(f) if f.is_finite() => Some(format!("{f:?}")),
        _ => None,
    }
}

/// A collection's horizon: the retention column it is a value of, and the value.
pub(super) struct Horizon {
    pub column: String,
    pub value: SqlValue,
}

/// The horizon of `c`, if something was pruned and its column still exists
/// (the horizon outlives a change of policy: the rows pruned stay missing).
pub(super) fn horizon(conn: &Connection, c: &Collection) -> Result<Option<Horizon>> {
    let h = conn
        .prepare_cached("SELECT column_name, horizon FROM _ferry_horizons WHERE collection = ?1")?
        .query_row([&c.name], |r| {
            Ok(Horizon {
                column: r.get(0)?,
                value: r.get(1)?,
            })
        })
        .optional()?;
    Ok(h.filter(|h| c.column(&h.column).is_some()))
}

/// Whether every row `filter` matches has `column` strictly above `h`.
fn above(filter: &Filter, column: &str, h: f64) -> bool {
    let over = |v: &Value, strict: bool| {
        v.as_f64()
            .is_some_and(|x| if strict { x > h } else { x >= h })
    };
    match filter {
        Filter::And(fs) => fs.iter().any(|f| above(f, column, h)),
        Filter::Or(fs) => !fs.is_empty() && fs.iter().all(|f| above(f, column, h)),
        Filter::Cond {
            column: c,
            op,
            value,
        } if c == column => match op {
            // `gt v` with v ≥ h: every match is above h.
            Op::Gt => over(value, false),
            Op::Gte | Op::Eq => over(value, true),
            Op::In => value
                .as_array()
                .is_some_and(|vs| vs.iter().all(|v| over(v, true))),
            _ => false,
        },
        Filter::Cond { .. } => false,
    }
}

/// Whether `records`, the result of `q`, is complete given the horizon.
fn complete(horizon: Option<&Horizon>, q: &Query, records: &[Record]) -> bool {
    let Some((column, h)) = horizon.and_then(|h| Some((h.column.as_str(), as_f64(&h.value)?)))
    else {
        return true;
    };
    if q.filter.as_ref().is_some_and(|f| above(f, column, h)) {
        return true;
    }
    // Newest first by the column, with a limit, and the limit reached with
    // rows above the horizon: every row it skipped is newer still.
    let newest_first = q.sort.first().is_some_and(|s| s.column == column && s.desc);
    if newest_first
        && let Some(limit) = q.limit
        && limit > 0
        && records.len() as u64 == limit
    {
        let last = records.last().and_then(|rec| rec.fields.get(column));
        return last.and_then(Value::as_f64).is_some_and(|x| x > h);
    }
    false
}

impl Writer<'_, '_> {
    /// Runs a `DELETE … RETURNING id, column` bound to (`collection`, `n`).
    fn delete_returning(
        &self,
        sql: &str,
        collection: &str,
        n: i64,
    ) -> Result<Vec<(String, SqlValue)>> {
        let mut stmt = self.tx.prepare(sql)?;
        let rows = stmt.query_map(rusqlite::params![collection, n], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Prunes `c` by its retention policy (none: nothing); returns how many
    /// rows went. Their ids reach listeners as `pruned`.
    pub(crate) fn apply_retention(&mut self, c: &Collection) -> Result<u64> {
        let Some(r) = &c.retention else {
            return Ok(0);
        };
        let t = quote(&c.name);
        let col = quote(&r.column);
        let prunable = format!(
            "_status = 'synced' AND {col} IS NOT NULL AND NOT EXISTS
               (SELECT 1 FROM _ferry_outbox o WHERE o.collection = ?1 AND o.record_id = {t}.id)"
        );
        let mut pruned: Vec<(String, SqlValue)> = Vec::new();
        if let Some(age) = r.max_age_ms {
            let cutoff = self.now.saturating_sub(age as i64);
            let sql =
                format!("DELETE FROM {t} WHERE {prunable} AND {col} < ?2 RETURNING id, {col}");
            pruned.extend(self.delete_returning(&sql, &c.name, cutoff)?);
        }
        if let Some(max) = r.max_rows {
            let live: i64 = self.tx.query_row(
                &format!("SELECT COUNT(*) FROM {t} WHERE _status <> 'deleted'"),
                [],
                |row| row.get(0),
            )?;
            let excess = live - max as i64;
            if excess > 0 {
                let sql = format!(
                    "DELETE FROM {t} WHERE id IN
                       (SELECT id FROM {t} WHERE {prunable} ORDER BY {col}, id LIMIT ?2)
                     RETURNING id, {col}"
                );
                pruned.extend(self.delete_returning(&sql, &c.name, excess)?);
            }
        }
        let Some(top) = pruned.iter().map(|(_, v)| v.clone()).reduce(higher) else {
            return Ok(0);
        };
        // A horizon on another column (the policy changed) is replaced: the
        // rows it stood for stay missing, which this one cannot express.
        let top = match horizon(self.tx, c)? {
            Some(old) if old.column == r.column => higher(old.value, top),
            _ => top,
        };
        self.tx.execute(
            "INSERT INTO _ferry_horizons (collection, column_name, horizon, pruned, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(collection) DO UPDATE SET column_name = excluded.column_name,
               horizon = excluded.horizon, pruned = pruned + excluded.pruned,
               updated_at = excluded.updated_at",
            rusqlite::params![c.name, r.column, top, pruned.len() as i64, self.now],
        )?;
        for (id, _) in &pruned {
            self.events().prune(&c.name, id);
        }
        Ok(pruned.len() as u64)
    }
}

impl Store {
    /// Prunes every collection by its retention policy, in one transaction
    /// (a sync also does it in each publish). For a host that wants it at
    /// start, or after changing the policy.
    pub fn run_retention(&self) -> Result<RetentionReport> {
        self.write_tx(ChangeSource::Retention, |w| {
            let mut report = RetentionReport::default();
            for c in &w.schema().collections {
                let n = w.apply_retention(c)?;
                if n > 0 {
                    report.pruned.insert(c.name.clone(), n);
                }
            }
            Ok(report)
        })
    }

    /// [`Store::query`], saying whether the result is complete.
    pub fn query_result(&self, collection: &str, q: &Query) -> Result<QueryResult> {
        let c = self.collection(collection)?;
        self.read_snapshot(|conn| {
            let records = super::run_query(conn, c, q)?;
            let complete = complete(horizon(conn, c)?.as_ref(), q, &records);
            Ok(QueryResult { records, complete })
        })
    }

    /// [`Store::count`], saying whether it is complete, with the server's
    /// total beside it when the count is of the whole collection.
    pub fn count_result(&self, collection: &str, q: &Query) -> Result<CountResult> {
        let c = self.collection(collection)?;
        let local = self.count(collection, q)?;
        let unpaged = Query {
            limit: None,
            offset: None,
            ..q.clone()
        };
        self.read_snapshot(|conn| {
            let complete = complete(horizon(conn, c)?.as_ref(), &unpaged, &[]);
            let server_total = match q.filter {
                Some(_) => None,
                None => conn
                    .prepare_cached(
                        "SELECT server_total FROM _ferry_anchors WHERE collection = ?1",
                    )?
                    .query_row([&c.name], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(|t| t as u64),
            };
            Ok(CountResult {
                local,
                server_total,
                complete,
            })
        })
    }
}
