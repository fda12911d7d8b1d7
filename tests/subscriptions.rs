//! Sync subscriptions (issue "Partial data", point 4) against a real
//! ferry-server: narrowing evicts locally, widening backfills only what it
//! adds, a row that stops matching leaves as an eviction, and a row evicted
//! while it has pending local edits is kept, its edit reaches the server, and
//! it goes after.

mod support;

use std::sync::Arc;

use ferry::events::{ChangeEvent, ChangeSource};
use ferry::sync::{SyncConfig, WriteMode};
use ferry::transport::StaticToken;
use ferry::{Schema, Subscription, WriteOp};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::*;

fn task(id: &str, project: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": id, "project": project})),
    }
}

fn in_project(name: &str, project: &str) -> Subscription {
    Subscription {
        name: name.into(),
        collection: "tasks".into(),
        scope: None,
        filter: Some(json!({"column": "project", "op": "eq", "value": project})),
        ttl_ms: None,
    }
}

fn local_ids(d: &Device, collection: &str) -> Vec<String> {
    contents(&d.store, collection).into_keys().collect()
}

fn recorder(d: &Device) -> Arc<Mutex<Vec<ChangeEvent>>> {
    d.store.flush_events();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::mem::forget(
        d.store
            .add_change_listener(Arc::new(move |e: &ChangeEvent| s.lock().push(e.clone()))),
    );
    seen
}

/// Every id the recorded events list under `field` for `tasks`.
fn listed(seen: &Mutex<Vec<ChangeEvent>>, field: &str) -> Vec<String> {
    let mut out: Vec<String> = seen
        .lock()
        .iter()
        .filter_map(|e| e.collection("tasks"))
        .flat_map(|c| match field {
            "evicted" => c.evicted.clone(),
            "deleted" => c.deleted.clone(),
            "kept" => c.kept.clone(),
            other => panic!("no field {other}"),
        })
        .collect();
    out.sort();
    out
}

/// Alice's device `a` pushed a1, a2 (project p1), b1, b2 (p2) and c1 (p3);
/// her device `b` exists but has not synced.
async fn setup() -> (Server, Device, Device) {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(
            vec![
                task("a1", "p1"),
                task("a2", "p1"),
                task("b1", "p2"),
                task("b2", "p2"),
                task("c1", "p3"),
            ],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    let b = device(&server.url(), ALICE);
    (server, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_backfills_only_what_it_adds_and_narrowing_evicts_locally() {
    let (_server, a, b) = setup().await;
    b.store.subscribe(in_project("p1", "p1")).unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "tasks"), ["a1", "a2"]);
    assert!(local_ids(&b, "projects").is_empty(), "not subscribed");

    // Rows written long before the subscription arrive when it is added, and
    // only they: the p1 rows are not sent again.
    b.store.subscribe(in_project("p2", "p2")).unwrap();
    let report = b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "tasks"), ["a1", "a2", "b1", "b2"]);
    assert_eq!(report.pulled, 2, "a backfill of p2, not a resync");

    let seen = recorder(&b);
    assert!(b.store.unsubscribe("p1").unwrap());
    b.store.flush_events();
    assert_eq!(local_ids(&b, "tasks"), ["b1", "b2"], "evicted at once");
    assert_eq!(listed(&seen, "evicted"), ["a1", "a2"]);
    assert!(listed(&seen, "deleted").is_empty());
    assert_eq!(seen.lock()[0].source, ChangeSource::Subscriptions);
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "tasks"), ["b1", "b2"], "and not pulled back");
    assert_eq!(
        local_ids(&a, "tasks").len(),
        5,
        "an eviction is not a delete"
    );
    a.client.sync().await.unwrap();
    assert_eq!(local_ids(&a, "tasks").len(), 5);

    // No subscription left: nothing syncs, and nothing is held.
    assert!(b.store.unsubscribe("p2").unwrap());
    assert!(local_ids(&b, "tasks").is_empty());
    b.client.sync().await.unwrap();
    assert!(local_ids(&b, "tasks").is_empty());
    assert_eq!(b.store.subscriptions().unwrap(), Some(vec![]));

    // Back to everything: what the subscriptions left out is backfilled.
    b.store.clear_subscriptions().unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "tasks"), ["a1", "a2", "b1", "b2", "c1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_starts_or_stops_matching_arrives_or_leaves_as_an_eviction() {
    let (_server, a, b) = setup().await;
    b.store.subscribe(in_project("p1", "p1")).unwrap();
    b.client.sync().await.unwrap();
    let seen = recorder(&b);
    let moved = |id: &str, project: &str| WriteOp::Update {
        collection: "tasks".into(),
        id: id.into(),
        fields: obj(json!({"project": project})),
    };
    a.client
        .write(
            vec![moved("a1", "p3"), moved("c1", "p1")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    b.store.flush_events();
    assert_eq!(local_ids(&b, "tasks"), ["a2", "c1"]);
    assert_eq!(listed(&seen, "evicted"), ["a1"]);
    assert!(listed(&seen, "deleted").is_empty(), "not a delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_evicted_with_a_pending_edit_is_kept_until_its_push_is_answered() {
    let (_server, a, b) = setup().await;
    b.store.subscribe(in_project("p1", "p1")).unwrap();
    b.client.sync().await.unwrap();
    // b edits a1 while a moves it out of p1.
    b.store
        .update("tasks", "a1", obj(json!({"title": "edited on b"})))
        .unwrap();
    a.client
        .write(
            vec![WriteOp::Update {
                collection: "tasks".into(),
                id: "a1".into(),
                fields: obj(json!({"project": "p3"})),
            }],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();

    let seen = recorder(&b);
    // The pull brings the eviction before the push sends the edit: kept, and
    // said so. The push then conflicts with a's move, merges, and goes again;
    // once it is answered, the record (now in p3) is evicted.
    b.client.sync().await.unwrap();
    b.store.flush_events();
    let order: Vec<(&str, bool)> = seen
        .lock()
        .iter()
        .filter_map(|e| e.collection("tasks"))
        .flat_map(|c| {
            let kept = c.kept.iter().map(|id| (id.as_str() == "a1", true));
            let evicted = c.evicted.iter().map(|id| (id.as_str() == "a1", false));
            kept.chain(evicted).collect::<Vec<_>>()
        })
        .map(|(a1, kept)| (if a1 { "a1" } else { "other" }, kept))
        .collect();
    assert_eq!(order, [("a1", true), ("a1", false)], "kept, then evicted");
    assert_eq!(local_ids(&b, "tasks"), ["a2"]);
    assert!(
        b.store.outbox().unwrap().is_empty(),
        "its push was answered"
    );
    a.client.sync().await.unwrap();
    let there = a.store.get("tasks", "a1").unwrap().unwrap();
    assert_eq!(
        (&there.fields["title"], &there.fields["project"]),
        (&json!("edited on b"), &json!("p3")),
        "b's edit reached the server, on top of a's move"
    );
}

/// The dev server, with `projects` scoped by its `team` field.
fn scoped_server() -> ferry_server::ServerConfig {
    let mut config = ferry_server::ServerConfig::dev();
    let projects = config.collections.get_mut("projects").unwrap();
    projects.fields.insert(
        "team".into(),
        serde_json::from_value(json!({"type": "string", "nullable": true})).unwrap(),
    );
    projects.scope_field = Some("team".into());
    config
}

fn scoped_schema() -> Schema {
    let mut s: Value = serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
    s["collections"][1]["columns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "team", "type": "string", "nullable": true}));
    s["collections"][1]["scope_column"] = json!("team");
    Schema::from_json(&s.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_subscription_syncs_that_scope_and_narrows_locally() {
    let server = start_server_with(scoped_server()).await;
    let open = || {
        device_with(
            &server.url(),
            Arc::new(StaticToken(ALICE.into())),
            scoped_schema(),
            SyncConfig::default(),
        )
    };
    let a = open();
    let project = |id: &str, team: Value| WriteOp::Create {
        collection: "projects".into(),
        fields: obj(json!({"id": id, "name": id, "team": team})),
    };
    a.client
        .write(
            vec![
                project("shared", json!("team")),
                project("mine", Value::Null),
            ],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();

    let b = open();
    let scoped = |name: &str, scope: &str| Subscription {
        name: name.into(),
        collection: "projects".into(),
        scope: Some(scope.into()),
        filter: None,
        ttl_ms: None,
    };
    b.store.subscribe(scoped("team", "team")).unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "projects"), ["shared"]);
    b.store.subscribe(scoped("mine", "user:alice")).unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "projects"), ["mine", "shared"]);
    b.store.unsubscribe("team").unwrap();
    assert_eq!(local_ids(&b, "projects"), ["mine"]);
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "projects"), ["mine"]);

    // A scope the caller does not hold gives nothing, and is no error.
    b.store.subscribe(scoped("theirs", "team:other")).unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "projects"), ["mine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_server_refuses_is_a_typed_error_and_changes_nothing() {
    let (server, _a, _) = setup().await;
    // This app knows a synced collection the server does not.
    let mut s: Value = serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
    s["collections"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "labels", "columns": [{"name": "name", "type": "string"}]}));
    let b = device_with(
        &server.url(),
        Arc::new(StaticToken(ALICE.into())),
        Schema::from_json(&s.to_string()).unwrap(),
        SyncConfig::default(),
    );
    b.store.subscribe(in_project("p1", "p1")).unwrap();
    b.client.sync().await.unwrap();
    b.store
        .subscribe(Subscription {
            name: "labels".into(),
            collection: "labels".into(),
            scope: None,
            filter: None,
            ttl_ms: None,
        })
        .unwrap();
    match b.client.sync().await.unwrap_err() {
        ferry::Error::Server { status, code, .. } => {
            assert_eq!((status, code.as_str()), (400, "unknown_collection"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(local_ids(&b, "tasks"), ["a1", "a2"], "nothing half-written");
    b.store.unsubscribe("labels").unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(local_ids(&b, "tasks"), ["a1", "a2"]);
}
