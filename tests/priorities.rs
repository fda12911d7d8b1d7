//! Priorities (issue "Partial data", point 5) against a real ferry-server: a
//! first sync publishes the high-priority collection as its own checkpoint,
//! so it is there even when the pull is cut off before the rest arrives.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry::events::ChangeEvent;
use ferry::sync::{NetworkHints, NetworkKind, SyncConfig, WriteMode};
use ferry::transport::StaticToken;
use ferry::{Schema, WriteOp};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::*;

fn projects_first() -> Schema {
    let mut s: Value = serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
    s["collections"][1]["priority"] = json!(0);
    Schema::from_json(&s.to_string()).unwrap()
}

fn create(collection: &str, id: &str) -> WriteOp {
    let fields = match collection {
        "projects" => json!({"id": id, "name": id}),
        _ => json!({"id": id, "title": id}),
    };
    WriteOp::Create {
        collection: collection.into(),
        fields: obj(fields),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_publishes_the_high_priority_first_as_its_own_checkpoint() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(
            vec![
                create("tasks", "t1"),
                create("projects", "p1"),
                create("tasks", "t2"),
                create("projects", "p2"),
                create("tasks", "t3"),
            ],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();

    let b = device_with(
        &server.url(),
        Arc::new(StaticToken(ALICE.into())),
        projects_first(),
        SyncConfig::default(),
    );
    let seen = Arc::new(Mutex::new(Vec::<ChangeEvent>::new()));
    let s = seen.clone();
    let _h = b
        .store
        .add_change_listener(Arc::new(move |e: &ChangeEvent| s.lock().push(e.clone())));
    // The connection drops after the first page: the projects' checkpoint.
    *b.transport.fail_pull_after.lock() = Some(1);
    assert!(b.client.sync().await.is_err());
    assert_eq!(
        b.client.status().completed_priority,
        Some(0),
        "the status says so"
    );
    b.store.flush_events();
    assert_eq!(contents(&b.store, "projects").len(), 2, "published at once");
    assert!(contents(&b.store, "tasks").is_empty(), "not yet");
    let synced = b.store.priorities_synced().unwrap();
    assert_eq!(synced.keys().copied().collect::<Vec<_>>(), [0]);
    assert_eq!(seen.lock().len(), 1);
    assert!(seen.lock()[0].collection("tasks").is_none());

    // The rest follows from the checkpoint: nothing is sent twice.
    *b.transport.fail_pull_after.lock() = None;
    let report = b.client.sync().await.unwrap();
    assert_eq!(report.pulled, 3, "the tasks only");
    assert_eq!(contents(&b.store, "tasks").len(), 3);
    let synced = b.store.priorities_synced().unwrap();
    assert_eq!(synced.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(b.client.status().completed_priority, Some(3));

    // Without priorities, a pull cut off after its first page publishes
    // nothing: all or nothing.
    let c = device_with(
        &server.url(),
        Arc::new(StaticToken(ALICE.into())),
        schema(),
        SyncConfig {
            page_size: 2,
            ..SyncConfig::default()
        },
    );
    *c.transport.fail_pull_after.lock() = Some(1);
    assert!(c.client.sync().await.is_err());
    assert!(contents(&c.store, "projects").is_empty() && contents(&c.store, "tasks").is_empty());
    assert!(c.store.priorities_synced().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_metered_network_a_pull_stops_at_the_cap_and_the_rest_follows_off_it() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(
            vec![
                create("tasks", "t1"),
                create("projects", "p1"),
                create("tasks", "t2"),
                create("projects", "p2"),
            ],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();

    let b = device_with(
        &server.url(),
        Arc::new(StaticToken(ALICE.into())),
        projects_first(),
        SyncConfig {
            metered_priority: Some(0),
            push_debounce: std::time::Duration::ZERO,
            ..SyncConfig::default()
        },
    );
    let cellular = NetworkHints {
        kind: NetworkKind::Cellular,
        metered: true,
        rtt_ms: Some(120),
    };
    b.client.set_network(cellular);
    assert_eq!(b.client.network(), cellular);

    // A first sync on cellular: the projects' checkpoint, and not one page more.
    let report = b.client.sync().await.unwrap();
    assert_eq!(report.deferred_after, Some(0));
    assert_eq!(b.client.status().completed_priority, Some(0));
    assert_eq!(report.pulled, 2);
    assert_eq!(b.transport.pulls.load(Ordering::SeqCst), 1);
    assert_eq!(contents(&b.store, "projects").len(), 2);
    assert!(contents(&b.store, "tasks").is_empty());

    // New projects still come on cellular (they are pulled first); the tasks
    // behind them wait.
    a.client
        .write(
            vec![create("projects", "p3"), create("tasks", "t3")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    let report = b.client.sync().await.unwrap();
    assert_eq!(report.deferred_after, Some(0));
    assert_eq!(contents(&b.store, "projects").len(), 3);
    assert!(contents(&b.store, "tasks").is_empty());
    // Nothing of priority 0 is new: the pull asks for priority 0 only
    // (`max_priority`), so the server does not even send the tasks.
    let report = b.client.sync().await.unwrap();
    assert_eq!((report.deferred_after, report.pulled), (Some(0), 0));
    assert!(contents(&b.store, "tasks").is_empty());
    let pages = b.transport.pages.lock().clone();
    assert!(
        pages.iter().all(|p| !p.iter().any(|c| c == "tasks")),
        "no page on cellular carried tasks: {pages:?}"
    );

    // Wifi: background sync brings the rest by itself.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _h = b
        .store
        .add_change_listener(Arc::new(move |e: &ChangeEvent| {
            if e.collection("tasks").is_some() {
                let _ = tx.send(());
            }
        }));
    b.client.start();
    b.client.set_network(NetworkHints {
        kind: NetworkKind::Wifi,
        metered: false,
        rtt_ms: Some(20),
    });
    rx.recv().await.unwrap();
    assert_eq!(contents(&b.store, "tasks").len(), 3);
    // (The first call may join the background sync, which pulled the tasks.)
    let report = b.client.sync().await.unwrap();
    assert_eq!(report.deferred_after, None);
    let report = b.client.sync().await.unwrap();
    assert_eq!((report.deferred_after, report.pulled), (None, 0));
}
