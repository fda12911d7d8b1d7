//! Local retention (issue "Partial data", point 1) and query completeness
//! (point 2), against a real ferry-server: pruning keeps pending data, moves
//! the horizon and the anchor, is never pushed as a delete, and a pruned row
//! does not come back through a pull; queries say whether they are complete on
//! each side of the horizon.

mod support;

use std::sync::Arc;

use ferry::clock::ManualClock;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{HttpTransport, StaticToken};
use ferry::{ChangeEvent, ChangeSource, Error, Filter, Query, Schema, Sort, Store, WriteOp};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::*;

/// The example schema, with `tasks` kept by `retention` (its `priority`
/// column stands for a time in ms).
fn schema_with(retention: Value) -> Schema {
    let mut s: Value = serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
    s["collections"][0]["retention"] = retention;
    Schema::from_json(&s.to_string()).unwrap()
}

fn task(id: &str, priority: i64) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": id, "priority": priority})),
    }
}

fn ids(store: &Store) -> Vec<String> {
    contents(store, "tasks").into_keys().collect()
}

fn cond(column: &str, op: &str, value: Value) -> Option<Filter> {
    Some(Filter::from_value(&json!({"column": column, "op": op, "value": value})).unwrap())
}

/// A server, and device `a` that pushed `ops` to it.
async fn seeded(ops: Vec<WriteOp>) -> (Server, Device) {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(ops, ferry::sync::WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    (server, a)
}

/// A device of the same user whose `tasks` are kept by `retention`.
fn retained(server: &Server, retention: Value) -> Device {
    device_with(
        &server.url(),
        Arc::new(StaticToken(ALICE.into())),
        schema_with(retention),
        SyncConfig::default(),
    )
}

/// Every event a store emits.
fn record_events(store: &Store) -> (Arc<Mutex<Vec<ChangeEvent>>>, ferry::ListenerHandle) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = store.add_change_listener(Arc::new(move |e: &ChangeEvent| s.lock().push(e.clone())));
    (seen, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_prunes_the_oldest_synced_rows_keeps_pending_ones_and_moves_the_horizon()
{
    let (server, a) = seeded((1..=10).map(|p| task(&format!("t{p:02}"), p)).collect()).await;
    let b = retained(&server, json!({"column": "priority", "max_rows": 4}));
    // Pending at the publish (pushed only after it): never pruned, though oldest.
    b.store
        .create("tasks", obj(json!({"id": "mine", "priority": 0})))
        .unwrap();
    let (events, _h) = record_events(&b.store);
    let report = b.client.sync().await.unwrap();
    assert_eq!(report.published.pruned.get("tasks"), Some(&7));
    assert_eq!(ids(&b.store), ["mine", "t08", "t09", "t10"]);
    let anchor = b.store.anchors().unwrap();
    let tasks = anchor.iter().find(|a| a.collection == "tasks").unwrap();
    assert_eq!(tasks.horizon, Some(json!(7)));
    assert_eq!(tasks.pruned, 7);
    assert_eq!(tasks.server_total, Some(10), "the total of the pull");
    assert_eq!(tasks.local_count, 4);
    b.store.flush_events();
    let pruned: Vec<String> = events
        .lock()
        .iter()
        .flat_map(|e| {
            e.collection("tasks")
                .map(|c| c.pruned.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        pruned.len(),
        7,
        "the app hears of every pruned row: {pruned:?}"
    );

    // Never pushed as deletes: the server still has every row.
    a.client.sync().await.unwrap();
    assert_eq!(ids(&a.store).len(), 11);

    // Completeness on both sides of the horizon (7).
    let complete = |q: Query| b.store.query_result("tasks", &q).unwrap().complete;
    assert!(
        !complete(Query::default()),
        "everything: rows may be missing"
    );
    assert!(complete(Query {
        filter: cond("priority", "gt", json!(7)),
        ..Query::default()
    }));
    assert!(complete(Query {
        filter: cond("priority", "gte", json!(8)),
        ..Query::default()
    }));
    assert!(!complete(Query {
        filter: cond("priority", "gte", json!(7)),
        ..Query::default()
    }));
    assert!(!complete(Query {
        filter: cond("priority", "lt", json!(3)),
        ..Query::default()
    }));
    let newest = |limit| Query {
        sort: vec![Sort {
            column: "priority".into(),
            desc: true,
        }],
        limit: Some(limit),
        ..Query::default()
    };
    let top2 = b.store.query_result("tasks", &newest(2)).unwrap();
    assert_eq!(top2.records.len(), 2);
    assert!(top2.complete, "the newest 2 are all above the horizon");
    assert!(!complete(newest(4)), "the 4th newest is below it");
    let count = b.store.count_result("tasks", &Query::default()).unwrap();
    assert_eq!(
        (count.local, count.server_total, count.complete),
        (4, Some(10), false)
    );

    // A pruned row changed on the server, still beyond the horizon, does not come
    // back; one whose column moved above it does (and the oldest synced row, now
    // `mine`, goes to keep 4).
    for (id, p) in [("t03", 3), ("t02", 20)] {
        a.store
            .update("tasks", id, obj(json!({"title": "edited", "priority": p})))
            .unwrap();
    }
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(ids(&b.store), ["t02", "t08", "t09", "t10"]);
    let tasks = b
        .store
        .anchors()
        .unwrap()
        .into_iter()
        .find(|a| a.collection == "tasks");
    let tasks = tasks.unwrap();
    assert_eq!((tasks.horizon, tasks.pruned), (Some(json!(7)), 8));
    assert!(b.store.outbox().unwrap().is_empty(), "nothing to push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_runs_on_the_store_clock_at_publish_and_on_demand() {
    let (server, _a) = seeded(vec![
        task("old", 1_000),
        task("older", 500),
        task("recent", 50_000),
    ])
    .await;

    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(100_000));
    let store = Store::open_with(
        &dir.path().join("b.db"),
        Some(schema_with(
            json!({"column": "priority", "max_age_ms": 60_000}),
        )),
        clock.clone(),
    )
    .unwrap();
    let client = SyncClient::new(
        store.clone(),
        Arc::new(HttpTransport::new(&server.url()).unwrap()),
        Arc::new(StaticToken(ALICE.into())),
        SyncConfig::default(),
    )
    .unwrap();
    client.sync().await.unwrap();
    assert_eq!(ids(&store), ["recent"], "older than 100,000 - 60,000 went");
    // Time passes with nothing to publish: the host runs retention itself.
    clock.advance(100_000);
    let (events, _h) = record_events(&store);
    let report = store.run_retention().unwrap();
    assert_eq!(report.pruned.get("tasks"), Some(&1));
    assert!(ids(&store).is_empty());
    store.flush_events();
    let events = events.lock();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, ChangeSource::Retention);
    assert_eq!(events[0].collection("tasks").unwrap().pruned, ["recent"]);
    let tasks = store
        .anchors()
        .unwrap()
        .into_iter()
        .find(|a| a.collection == "tasks");
    assert_eq!(tasks.unwrap().horizon, Some(json!(50_000)));
    // Nothing left to prune: no transaction's event at all.
    assert!(store.run_retention().unwrap().pruned.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_pruned_empty_is_built_again_without_the_rows_beyond_its_horizon() {
    let (server, a) = seeded((1..=3).map(|p| task(&format!("t{p}"), p)).collect()).await;
    let b = retained(&server, json!({"column": "priority", "max_rows": 0}));
    b.client.sync().await.unwrap();
    assert!(ids(&b.store).is_empty());
    // The empty collection is built from staging next time: rows beyond the
    // horizon (3) stay out of it too.
    a.store
        .update("tasks", "t1", obj(json!({"title": "edited"})))
        .unwrap();
    a.store
        .update("tasks", "t2", obj(json!({"priority": 9})))
        .unwrap();
    a.client.sync().await.unwrap();
    let report = b.client.sync().await.unwrap();
    assert_eq!(report.published.upserted.get("tasks"), Some(&1), "t2 only");
    assert!(ids(&b.store).is_empty(), "and it is pruned at once");
    let tasks = b
        .store
        .anchors()
        .unwrap()
        .into_iter()
        .find(|a| a.collection == "tasks");
    assert_eq!(tasks.unwrap().horizon, Some(json!(9)));
}

#[test]
fn a_retention_policy_is_checked_against_the_collection() {
    let bad = |collection: usize, retention: Value| {
        let mut s: Value =
            serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
        s["collections"][collection]["retention"] = retention;
        Schema::from_json(&s.to_string()).and_then(|s| s.validate().map(|_| s))
    };
    let msg = |r: Result<Schema, Error>| r.unwrap_err().to_string();
    assert!(matches!(
        bad(0, json!({"column": "nope", "max_rows": 1})),
        Err(Error::UnknownColumn { .. })
    ));
    assert!(msg(bad(0, json!({"column": "title", "max_rows": 1}))).contains("string column"));
    assert!(msg(bad(0, json!({"column": "priority"}))).contains("sets no limit"));
    assert!(msg(bad(0, json!({"column": "priority", "max_age_ms": 0}))).contains("out of range"));
    assert!(matches!(
        bad(0, json!({"column": "priority", "max_rows": 1, "keep": 2})),
        Err(Error::InvalidSchema(_))
    ));
    // drafts is local-only: pruned rows would be lost.
    assert!(msg(bad(2, json!({"column": "body", "max_rows": 1}))).contains("local-only"));
}
