//! Read-through (issue "Partial data", point 3): `SyncClient::fetch_remote`
//! reads past the horizon from a real ferry-server, with the same filter
//! language, auth and sync rules; it can cache what it fetched without moving
//! the horizon, a later retention run prunes it again, and offline it fails
//! with a typed `Offline` error.

mod support;

use std::sync::Arc;

use ferry::sync::SyncConfig;
use ferry::transport::StaticToken;
use ferry::{Error, Query, Record, Schema, WriteOp};
use serde_json::{Value, json};
use support::*;

fn retained_schema() -> Schema {
    let mut s: Value = serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
    s["collections"][0]["retention"] = json!({"column": "priority", "max_rows": 4});
    Schema::from_json(&s.to_string()).unwrap()
}

fn task(id: &str, priority: i64, extra: Value) -> WriteOp {
    let mut fields = obj(json!({"id": id, "title": id, "priority": priority}));
    fields.extend(obj(extra));
    WriteOp::Create {
        collection: "tasks".into(),
        fields,
    }
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn local_ids(d: &Device) -> Vec<String> {
    contents(&d.store, "tasks").into_keys().collect()
}

/// Alice's device `a` pushed t01..t10 (priority 1..10) and an archived t99;
/// her device `b` keeps the 4 newest by priority.
async fn setup() -> (Server, Device, Device) {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    let mut ops: Vec<WriteOp> = (1..=10)
        .map(|p| task(&format!("t{p:02}"), p, json!({})))
        .collect();
    ops.push(task("t99", 1, json!({"archived": true})));
    a.client
        .write(ops, ferry::sync::WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    let b = device_with(
        &server.url(),
        Arc::new(StaticToken(ALICE.into())),
        retained_schema(),
        SyncConfig::default(),
    );
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b), ["t07", "t08", "t09", "t10"]);
    (server, a, b)
}

fn old_ones() -> Value {
    json!({"where": {"column": "priority", "op": "lte", "value": 6}, "sort": [{"column": "priority"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_remote_reads_past_the_horizon_and_a_cache_is_pruned_again() {
    let (_server, _a, b) = setup().await;
    let q = Query::from_value(&old_ones()).unwrap();
    let local = b.store.query_result("tasks", &q).unwrap();
    assert!(
        local.records.is_empty() && !local.complete,
        "the local answer says it is incomplete"
    );

    let fetched = b
        .client
        .fetch_remote("tasks", old_ones(), false)
        .await
        .unwrap();
    assert_eq!(ids(&fetched), ["t01", "t02", "t03", "t04", "t05", "t06"]);
    assert_eq!(fetched[0].fields["title"], "t01");
    assert_eq!(fetched[0].version, Some(1));
    assert_eq!(local_ids(&b).len(), 4, "not cached unless asked");

    let horizon = b.store.anchors().unwrap()[0].horizon.clone();
    let cached = b
        .client
        .fetch_remote("tasks", old_ones(), true)
        .await
        .unwrap();
    assert_eq!(ids(&cached), ids(&fetched));
    assert_eq!(local_ids(&b).len(), 10, "cached as synced rows");
    assert_eq!(
        b.store.get("tasks", "t03").unwrap().unwrap().fields["title"],
        "t03"
    );
    assert_eq!(
        b.store.anchors().unwrap()[0].horizon,
        horizon,
        "the horizon does not move"
    );
    assert!(!b.store.query_result("tasks", &q).unwrap().complete);

    b.store.run_retention().unwrap();
    assert_eq!(
        local_ids(&b),
        ["t07", "t08", "t09", "t10"],
        "pruned again by retention"
    );
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b).len(), 4, "and not pulled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pending_edit_wins_over_the_fetched_row() {
    let (_server, _a, b) = setup().await;
    b.store
        .update("tasks", "t08", obj(json!({"title": "mine"})))
        .unwrap();
    b.store.delete("tasks", "t09").unwrap();
    let q = json!({"where": {"column": "priority", "op": "gte", "value": 8}, "sort": [{"column": "priority"}]});
    let got = b.client.fetch_remote("tasks", q, true).await.unwrap();
    assert_eq!(
        ids(&got),
        ["t08", "t10"],
        "a row deleted locally is not shown"
    );
    assert_eq!(got[0].fields["title"], "mine");
    let t08 = b.store.get("tasks", "t08").unwrap().unwrap();
    assert_eq!(
        (t08.fields["title"].clone(), t08.changed.clone()),
        (json!("mine"), vec!["title".to_string()])
    );
    assert_eq!(
        b.store.status().unwrap().pending,
        2,
        "the outbox is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_remote_follows_auth_and_sync_rules_for_two_users() {
    let (server, _a, b) = setup().await;
    let all = json!({"sort": [{"column": "id"}]});
    let got = b
        .client
        .fetch_remote("tasks", all.clone(), false)
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
    assert!(
        !ids(&got).contains(&"t99"),
        "an archived row never reaches a client"
    );
    let archived = json!({"where": {"column": "archived", "op": "eq", "value": true}});
    assert!(
        b.client
            .fetch_remote("tasks", archived, true)
            .await
            .unwrap()
            .is_empty()
    );
    let bob = device(&server.url(), BOB);
    assert!(
        bob.client
            .fetch_remote("tasks", all, true)
            .await
            .unwrap()
            .is_empty(),
        "not bob's"
    );
    assert!(local_ids(&bob).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_a_fetch_is_a_typed_offline_error_and_bad_queries_fail_first() {
    let (server, _a, b) = setup().await;
    b.client.set_online(false);
    let err = b
        .client
        .fetch_remote("tasks", old_ones(), true)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Offline(_)), "{err:?}");
    b.client.set_online(true);
    b.transport
        .offline
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = b
        .client
        .fetch_remote("tasks", old_ones(), true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Offline(_)),
        "an unreachable server too: {err:?}"
    );
    assert_eq!(local_ids(&b).len(), 4, "nothing half-written");
    // Checked locally before any network: these fail the same offline.
    for (q, what) in [
        (
            json!({"where": {"column": "nope", "op": "eq", "value": 1}}),
            "unknown column",
        ),
        (
            json!({"where": {"column": "_status", "op": "eq", "value": "pending"}}),
            "local bookkeeping",
        ),
        (
            json!({"where": {"column": "priority", "op": "eq", "value": "x"}}),
            "wrong type",
        ),
        (json!({"limit": "x"}), "bad limit"),
    ] {
        let err = b.client.fetch_remote("tasks", q, false).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownColumn { .. } | Error::InvalidQuery(_) | Error::WrongType { .. }
            ),
            "{what}: {err:?}"
        );
    }
    assert!(matches!(
        b.client
            .fetch_remote("nope", json!({}), false)
            .await
            .unwrap_err(),
        Error::UnknownCollection(_)
    ));
    drop(server);
}
