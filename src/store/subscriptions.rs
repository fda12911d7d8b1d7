//! Sync subscriptions: what this device syncs, when the app narrows it to
//! collections, scopes and filters (docs/architecture.md, "Sync
//! subscriptions").
//!
//! Subscriptions live in `_ferry_subscriptions`, by name. Until the first
//! [`Store::subscribe`], the device syncs every collection in full (the
//! `collections` of its sync config); from then on it syncs the union of its
//! live subscriptions, and nothing when none is left, until
//! [`Store::clear_subscriptions`].
//!
//! The rule the store keeps: in that mode, a *synced* row that no live
//! subscription covers is not held. Every change of the set (a subscribe
//! that narrows, an unsubscribe, an expiry) evicts the rows it uncovered in
//! the same transaction; a row that still has outbox entries (pending or
//! quarantined) is **kept** with them and listed as `kept` in the event, and
//! goes once its push is answered if it is still uncovered then
//! ([`Writer::evict_uncovered`] after each push answer). A change of the set
//! also bumps its generation and drops what a pull staged under the old set:
//! a pull that started before the change starts over.

use rusqlite::types::Value as SqlValue;
use serde::Serialize;
use serde_json::Value;

use super::query::{Filter, Query, compile};
use super::records::quote;
use super::{Store, Writer, meta_get, meta_set};
use crate::error::{Error, Result};
use crate::events::ChangeSource;
use crate::schema::Collection;

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS _ferry_subscriptions (
    name TEXT PRIMARY KEY NOT NULL, collection TEXT NOT NULL, scope TEXT, filter TEXT,
    ttl_ms INTEGER, expires_at INTEGER, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);";

/// Meta key: `on` once the device syncs its subscriptions rather than everything.
const MODE_KEY: &str = "subscriptions";
/// Meta key: bumped by every change of the subscription set.
const GENERATION_KEY: &str = "subscriptions_generation";

/// The most subscriptions a device may hold.
pub const MAX_SUBSCRIPTIONS: usize = 256;
const MAX_NAME_CHARS: usize = 200;

/// What the app asks to sync: the records of `collection`, in `scope` when it
/// is set, that match `filter` (a query's `where`) when it is set. With
/// `ttl_ms`, it expires that long after it was last subscribed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subscription {
    pub name: String,
    pub collection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A live subscription, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveSubscription {
    #[serde(flatten)]
    pub subscription: Subscription,
    /// When it expires (ms, the store's clock); none: never.
    pub expires_at: Option<i64>,
    /// When it was first subscribed.
    pub created_at: i64,
}

/// What a pull asks for: the subscriptions (none: every collection) and the
/// generation of the set they are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PullSubscriptions {
    pub subscriptions: Option<Vec<ferry_protocol::Subscription>>,
    pub generation: u64,
}

fn invalid(msg: String) -> Error {
    Error::InvalidInput(format!("subscription: {msg}"))
}

/// Checks `s` against the schema; returns its filter, parsed.
fn check(c: &Collection, s: &Subscription) -> Result<Option<Filter>> {
    if s.name.is_empty() || s.name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "a name has 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if c.is_local_only() {
        return Err(invalid(format!(
            "`{}` is local-only: it is never synced",
            c.name
        )));
    }
    if s.scope.is_some() && c.scope_column.is_none() {
        return Err(invalid(format!(
            "a subscription to a scope of `{}` needs the collection's `scope_column` in the schema",
            c.name
        )));
    }
    if s.scope.as_deref() == Some("") {
        return Err(invalid("an empty scope".into()));
    }
    if s.ttl_ms == Some(0) || s.ttl_ms.is_some_and(|t| t > i64::MAX as u64) {
        return Err(invalid("`ttl_ms` is out of range (1 to 2^63-1)".into()));
    }
    let filter = s.filter.as_ref().map(Filter::from_value).transpose()?;
    if let Some(f) = &filter {
        // Compiles it as a local query would: unknown columns and wrong types fail here.
        compile(c, &filter_query(f.clone()))?;
        if f.conditions()
            .iter()
            .any(|(col, _, _)| col.starts_with('_'))
        {
            return Err(invalid(
                "a filter names the record's fields and `id`, not local bookkeeping".into(),
            ));
        }
    }
    Ok(filter)
}

fn filter_query(f: Filter) -> Query {
    Query {
        filter: Some(f),
        ..Query::default()
    }
}

/// SQL true for a row of `c` that one of `subs` (all of `c`) covers, and its parameters.
fn cover_sql(c: &Collection, subs: &[ActiveSubscription]) -> Result<(String, Vec<SqlValue>)> {
    let mut params = Vec::new();
    let mut terms = Vec::new();
    for s in subs {
        let mut parts = Vec::new();
        if let Some(f) = &s.subscription.filter {
            let compiled = compile(c, &filter_query(Filter::from_value(f)?))?;
            parts.push(compiled.where_sql);
            params.extend(compiled.params);
        }
        if let (Some(scope), Some(col)) = (&s.subscription.scope, &c.scope_column) {
            let col = quote(col);
            // A null scope value is the owner's scope, which only the owner syncs.
            parts.push(if scope.starts_with("user:") {
                format!("({col} IS NULL OR {col} = ?)")
            } else {
                format!("{col} = ?")
            });
            params.push(SqlValue::Text(scope.clone()));
        }
        terms.push(if parts.is_empty() {
            "1".to_string()
        } else {
            format!("({})", parts.join(" AND "))
        });
    }
    Ok(if terms.is_empty() {
        ("0".into(), params)
    } else {
        (format!("({})", terms.join(" OR ")), params)
    })
}

fn load(conn: &rusqlite::Connection, now: i64) -> Result<Vec<ActiveSubscription>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, collection, scope, filter, ttl_ms, expires_at, created_at
         FROM _ferry_subscriptions WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY name",
    )?;
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
    );
    let rows: Vec<Row> = stmt
        .query_map([now], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(
            |(name, collection, scope, filter, ttl, expires_at, created_at)| {
                let filter = filter
                    .map(|f| serde_json::from_str(&f))
                    .transpose()
                    .map_err(|e| Error::Internal(format!("stored subscription filter: {e}")))?;
                Ok(ActiveSubscription {
                    subscription: Subscription {
                        name,
                        collection,
                        scope,
                        filter,
                        ttl_ms: ttl.map(|t| t as u64),
                    },
                    expires_at,
                    created_at,
                })
            },
        )
        .collect()
}

fn subscribed(conn: &rusqlite::Connection) -> Result<bool> {
    Ok(meta_get(conn, MODE_KEY)?.as_deref() == Some("on"))
}

fn generation(conn: &rusqlite::Connection) -> Result<u64> {
    Ok(meta_get(conn, GENERATION_KEY)?
        .and_then(|g| g.parse().ok())
        .unwrap_or(0))
}

impl Writer<'_, '_> {
    /// The generation of the subscription set.
    pub(crate) fn subscriptions_generation(&self) -> Result<u64> {
        generation(self.tx)
    }

    /// After a change of the set: a new generation, staged pages of the old
    /// one dropped, and every collection's uncovered rows evicted.
    fn subscriptions_changed(&mut self) -> Result<()> {
        let next = generation(self.tx)? + 1;
        meta_set(self.tx, GENERATION_KEY, &next.to_string())?;
        self.drop_staged()?;
        for c in self.schema().collections.iter() {
            if !c.is_local_only() {
                self.evict_uncovered(c, None)?;
            }
        }
        Ok(())
    }

    /// Evicts `c`'s synced rows (those of `ids` only, when given) that no live
    /// subscription covers, when the device syncs its subscriptions; lists the
    /// uncovered rows that have outbox entries as `kept`. Returns how many went.
    pub(crate) fn evict_uncovered(&mut self, c: &Collection, ids: Option<&[&str]>) -> Result<u64> {
        if !subscribed(self.tx)? {
            return Ok(0);
        }
        let subs: Vec<ActiveSubscription> = load(self.tx, self.now)?
            .into_iter()
            .filter(|s| s.subscription.collection == c.name)
            .collect();
        let (cover, cover_params) = cover_sql(c, &subs)?;
        let t = quote(&c.name);
        // In statement order: the outbox's collection, the cover, the ids.
        let mut params = vec![SqlValue::Text(c.name.clone())];
        params.extend(cover_params);
        let mut only = String::new();
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(0);
            }
            only = format!(" AND id IN ({})", vec!["?"; ids.len()].join(", "));
            params.extend(ids.iter().map(|id| SqlValue::Text(id.to_string())));
        }
        let outbox = format!(
            "EXISTS (SELECT 1 FROM _ferry_outbox o WHERE o.collection = ? AND o.record_id = {t}.id)"
        );
        let evicted: Vec<String> = self
            .tx
            .prepare(&format!(
                "DELETE FROM {t} WHERE _status = 'synced' AND NOT {outbox} AND NOT {cover}{only} RETURNING id"
            ))?
            .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in &evicted {
            self.events().evict(&c.name, id);
        }
        // Only on a change of the set: after a push answer, a kept row still
        // pending stays kept, and says nothing new.
        if ids.is_none() {
            let kept: Vec<String> = self
                .tx
                .prepare(&format!(
                    "SELECT id FROM {t} WHERE _status <> 'deleted' AND {outbox} AND NOT {cover}"
                ))?
                .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &kept {
                self.events().keep(&c.name, id);
            }
        }
        Ok(evicted.len() as u64)
    }
}

impl Store {
    /// Adds the subscription `s`, or replaces the one of its name (renewing its
    /// TTL). From the first one on, the device syncs only what its
    /// subscriptions cover: rows this uncovers are evicted now (those with
    /// pending changes are kept until their push is answered), and the next
    /// sync backfills only what it adds.
    pub fn subscribe(&self, s: Subscription) -> Result<ActiveSubscription> {
        let c = self.collection(&s.collection)?;
        check(c, &s)?;
        self.write_tx(ChangeSource::Subscriptions, |w| {
            let old = load(w.tx, w.now)?
                .into_iter()
                .find(|a| a.subscription.name == s.name);
            let count: i64 =
                w.tx.query_row("SELECT COUNT(*) FROM _ferry_subscriptions", [], |r| {
                    r.get(0)
                })?;
            if old.is_none() && count as usize >= MAX_SUBSCRIPTIONS {
                return Err(Error::TooLarge {
                    what: "the subscriptions".into(),
                    size: count as usize + 1,
                    limit: MAX_SUBSCRIPTIONS,
                });
            }
            let expires_at = s.ttl_ms.map(|t| w.now.saturating_add(t as i64));
            let created_at = old.as_ref().map_or(w.now, |o| o.created_at);
            let filter = s.filter.as_ref().map(Value::to_string);
            w.tx.execute(
                "INSERT INTO _ferry_subscriptions
                   (name, collection, scope, filter, ttl_ms, expires_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(name) DO UPDATE SET collection = excluded.collection,
                   scope = excluded.scope, filter = excluded.filter, ttl_ms = excluded.ttl_ms,
                   expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                rusqlite::params![
                    s.name,
                    s.collection,
                    s.scope,
                    filter,
                    s.ttl_ms.map(|t| t as i64),
                    expires_at,
                    created_at,
                    w.now
                ],
            )?;
            let same = old.as_ref().is_some_and(|o| {
                o.subscription.collection == s.collection
                    && o.subscription.scope == s.scope
                    && o.subscription.filter == s.filter
            });
            let was_on = subscribed(w.tx)?;
            meta_set(w.tx, MODE_KEY, "on")?;
            // A renewal changes nothing the server or the rows see.
            if !same || !was_on {
                w.subscriptions_changed()?;
            }
            Ok(ActiveSubscription {
                subscription: s,
                expires_at,
                created_at,
            })
        })
    }

    /// Removes the subscription `name`; evicts the rows only it covered (those
    /// with pending changes are kept until their push is answered). Returns
    /// whether it existed.
    pub fn unsubscribe(&self, name: &str) -> Result<bool> {
        self.write_tx(ChangeSource::Subscriptions, |w| {
            let n =
                w.tx.execute("DELETE FROM _ferry_subscriptions WHERE name = ?1", [name])?;
            if n > 0 {
                w.subscriptions_changed()?;
            }
            Ok(n > 0)
        })
    }

    /// Removes every subscription and goes back to syncing every collection in
    /// full (the next sync backfills what the subscriptions left out).
    pub fn clear_subscriptions(&self) -> Result<()> {
        self.write_tx(ChangeSource::Subscriptions, |w| {
            let n = w.tx.execute("DELETE FROM _ferry_subscriptions", [])?;
            let was_on = subscribed(w.tx)?;
            w.tx.execute("DELETE FROM _ferry_meta WHERE key = ?1", [MODE_KEY])?;
            if n > 0 || was_on {
                w.subscriptions_changed()?;
            }
            Ok(())
        })
    }

    /// The live subscriptions, by name; `None` while the device syncs
    /// everything (no subscribe since it was opened or cleared).
    pub fn subscriptions(&self) -> Result<Option<Vec<ActiveSubscription>>> {
        let now = self.clock().now_ms();
        self.read_snapshot(|conn| {
            if !subscribed(conn)? {
                return Ok(None);
            }
            load(conn, now).map(Some)
        })
    }

    /// Drops the subscriptions that expired (evicting what only they covered),
    /// and returns what the next pull asks for.
    pub(crate) fn pull_subscriptions(&self) -> Result<PullSubscriptions> {
        self.write_tx(ChangeSource::Subscriptions, |w| {
            if !subscribed(w.tx)? {
                return Ok(PullSubscriptions {
                    subscriptions: None,
                    generation: generation(w.tx)?,
                });
            }
            let expired = w.tx.execute(
                "DELETE FROM _ferry_subscriptions WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                [w.now],
            )?;
            if expired > 0 {
                tracing::info!(expired, "sync subscriptions expired");
                w.subscriptions_changed()?;
            }
            let subscriptions = load(w.tx, w.now)?
                .into_iter()
                .map(|a| ferry_protocol::Subscription {
                    collection: a.subscription.collection,
                    scope: a.subscription.scope,
                    filter: a.subscription.filter,
                })
                .collect();
            Ok(PullSubscriptions {
                subscriptions: Some(subscriptions),
                generation: generation(w.tx)?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;
    use crate::clock::ManualClock;
    use crate::events::ChangeEvent;
    use crate::schema::Schema;
    use crate::store::tests::{mark_synced, obj};

    /// The example schema, with a `team` scope column on `projects`.
    fn scoped_schema() -> Schema {
        let mut s: Value =
            serde_json::from_str(include_str!("../../examples/tasks.schema.json")).unwrap();
        s["collections"][1]["columns"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "team", "type": "string", "nullable": true}));
        s["collections"][1]["scope_column"] = json!("team");
        Schema::from_json(&s.to_string()).unwrap()
    }

    fn open(clock: Arc<ManualClock>) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open_with(&dir.path().join("t.db"), Some(scoped_schema()), clock).unwrap();
        (dir, store)
    }

    fn sub(name: &str, collection: &str, filter: Option<Value>) -> Subscription {
        Subscription {
            name: name.into(),
            collection: collection.into(),
            scope: None,
            filter,
            ttl_ms: None,
        }
    }

    fn project_is(p: &str) -> Option<Value> {
        Some(json!({"column": "project", "op": "eq", "value": p}))
    }

    /// Synced tasks s1 (p1), s2 (p2), s3 (p3), and task w (p2) with a pending edit.
    fn seeded(store: &Store) {
        for (id, p) in [("s1", "p1"), ("s2", "p2"), ("s3", "p3"), ("w", "p2")] {
            store
                .create("tasks", obj(json!({"id": id, "project": p})))
                .unwrap();
            mark_synced(store, "tasks", id, 1);
        }
        store
            .update("tasks", "w", obj(json!({"title": "edited"})))
            .unwrap();
    }

    fn ids(store: &Store, collection: &str) -> Vec<String> {
        store
            .query(collection, &Query::default())
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    fn events(store: &Store) -> Arc<Mutex<Vec<ChangeEvent>>> {
        store.flush_events();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::mem::forget(
            store.add_change_listener(Arc::new(move |e: &ChangeEvent| s.lock().push(e.clone()))),
        );
        seen
    }

    #[test]
    fn bad_subscriptions_are_typed_errors_and_change_nothing() {
        let (_d, s) = open(Arc::new(ManualClock::new(0)));
        seeded(&s);
        let bad = [
            (sub("x", "nope", None), "unknown collection"),
            (sub("x", "drafts", None), "local-only"),
            (sub("", "tasks", None), "name"),
            (
                sub(
                    "x",
                    "tasks",
                    Some(json!({"column": "nope", "op": "eq", "value": 1})),
                ),
                "unknown column",
            ),
            (
                sub(
                    "x",
                    "tasks",
                    Some(json!({"column": "done", "op": "eq", "value": "yes"})),
                ),
                "wrong type",
            ),
            (
                sub(
                    "x",
                    "tasks",
                    Some(json!({"column": "_status", "op": "eq", "value": "synced"})),
                ),
                "bookkeeping",
            ),
            (
                sub("x", "tasks", Some(json!({"op": "eq"}))),
                "malformed filter",
            ),
            (
                Subscription {
                    scope: Some("team".into()),
                    ..sub("x", "tasks", None)
                },
                "scope without a scope column",
            ),
            (
                Subscription {
                    ttl_ms: Some(0),
                    ..sub("x", "tasks", None)
                },
                "ttl 0",
            ),
        ];
        for (s_, why) in bad {
            let e = s.subscribe(s_).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidInput(_)
                        | Error::InvalidQuery(_)
                        | Error::UnknownCollection(_)
                        | Error::UnknownColumn { .. }
                        | Error::WrongType { .. }
                ),
                "{why}: {e:?}"
            );
        }
        assert_eq!(s.subscriptions().unwrap(), None, "still syncing everything");
        assert_eq!(ids(&s, "tasks").len(), 4, "nothing evicted");
    }

    #[test]
    fn narrowing_evicts_uncovered_synced_rows_and_keeps_pending_ones() {
        let (_d, s) = open(Arc::new(ManualClock::new(0)));
        seeded(&s);
        let seen = events(&s);
        s.subscribe(sub("p1", "tasks", project_is("p1"))).unwrap();
        s.subscribe(sub("p3", "tasks", project_is("p3"))).unwrap();
        s.flush_events();
        // s3 comes back by the next pull's backfill, not from here.
        assert_eq!(ids(&s, "tasks"), ["s1", "w"]);
        let first = seen.lock()[0].clone();
        assert_eq!(first.source, ChangeSource::Subscriptions);
        let tasks = first.collection("tasks").unwrap();
        assert_eq!(tasks.evicted, ["s2", "s3"], "s3 was uncovered until p3");
        assert_eq!(tasks.kept, ["w"], "pending: kept, and said so");
        assert!(tasks.deleted.is_empty(), "an eviction is not a delete");
        assert!(s.outbox().unwrap().iter().any(|e| e.record_id == "w"));
        assert!(s.outbox().unwrap().iter().all(|e| e.record_id == "w"));

        // Its push is answered: synced now and still uncovered, it goes.
        s.write_tx(ChangeSource::Remote, |w| {
            let c = w.schema().collection("tasks")?;
            let mut r = w.load(c, "w")?.unwrap();
            r.status = crate::store::RecordStatus::Synced;
            r.changed.clear();
            w.replace_row(c, &r)?;
            w.tx.execute("DELETE FROM _ferry_outbox", [])?;
            w.evict_uncovered(c, Some(&["w", "s1"]))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(ids(&s, "tasks"), ["s1"]);
        // Untouched collections with no subscription are not held either.
        assert!(ids(&s, "projects").is_empty());
    }

    #[test]
    fn a_scope_subscription_covers_its_scope_and_null_is_the_owner_scope() {
        let (_d, s) = open(Arc::new(ManualClock::new(0)));
        for (id, team) in [
            ("shared", json!("team")),
            ("mine", Value::Null),
            ("other", json!("x")),
        ] {
            s.create("projects", obj(json!({"id": id, "name": id, "team": team})))
                .unwrap();
            mark_synced(&s, "projects", id, 1);
        }
        let scoped = |name: &str, scope: &str| Subscription {
            scope: Some(scope.into()),
            ..sub(name, "projects", None)
        };
        s.subscribe(scoped("t", "team")).unwrap();
        s.subscribe(scoped("me", "user:alice")).unwrap();
        assert_eq!(ids(&s, "projects"), ["mine", "shared"]);
        assert!(s.unsubscribe("t").unwrap());
        assert!(!s.unsubscribe("t").unwrap(), "gone already");
        assert_eq!(ids(&s, "projects"), ["mine"]);
    }

    #[test]
    fn subscriptions_persist_expire_on_the_clock_and_renew() {
        let clock = Arc::new(ManualClock::new(1_000));
        let (d, s) = open(clock.clone());
        let short = Subscription {
            ttl_ms: Some(500),
            ..sub("p1", "tasks", project_is("p1"))
        };
        s.subscribe(sub("p3", "tasks", project_is("p3"))).unwrap();
        let a = s.subscribe(short.clone()).unwrap();
        assert_eq!(a.expires_at, Some(1_500));
        seeded(&s);
        drop(s);
        let s =
            Store::open_with(&d.path().join("t.db"), Some(scoped_schema()), clock.clone()).unwrap();
        let names = |s: &Store| -> Vec<String> {
            s.subscriptions()
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|a| a.subscription.name)
                .collect()
        };
        assert_eq!(names(&s), ["p1", "p3"], "persisted");

        clock.advance(400);
        let renewed = s.subscribe(short).unwrap();
        assert_eq!(
            (renewed.expires_at, renewed.created_at),
            (Some(1_900), 1_000)
        );
        clock.advance(499);
        let pull = s.pull_subscriptions().unwrap();
        assert_eq!(pull.subscriptions.unwrap().len(), 2, "not expired yet");
        // Written after the subscribes (as a test seed): nothing evicted them yet.
        assert_eq!(ids(&s, "tasks"), ["s1", "s2", "s3", "w"]);

        clock.advance(1);
        let generation = pull.generation;
        let pull = s.pull_subscriptions().unwrap();
        assert_eq!(
            pull.subscriptions.unwrap(),
            [ferry_protocol::Subscription {
                collection: "tasks".into(),
                scope: None,
                filter: project_is("p3"),
            }]
        );
        assert!(pull.generation > generation, "a new set");
        assert_eq!(names(&s), ["p3"]);
        assert_eq!(
            ids(&s, "tasks"),
            ["s3", "w"],
            "what p3 does not cover went, but the pending w"
        );

        s.clear_subscriptions().unwrap();
        assert_eq!(s.subscriptions().unwrap(), None);
        assert_eq!(s.pull_subscriptions().unwrap().subscriptions, None);
    }
}
