//! Integrity checks with repair: a pull's last page carries the server's
//! checksum of each collection synced whole; a device whose rows differ
//! repairs that collection alone, by pulling it again, and says so.
//!
//! On the deterministic kit (an in-process server on SQLite, a manual
//! clock), except the last test, which runs over HTTP against the server of
//! the end-to-end suites (on PostgreSQL too, in that lane).

mod support;

use std::sync::Arc;

use ferry::events::{ChangeEvent, ChangeSource};
use ferry::sync::{Repair, SyncConfig, WriteMode};
use ferry::{ManualClock, WriteOp};
use parking_lot::Mutex;
use serde_json::json;
use support::kit::{InProcessServer, KitDevice};
use support::*;

const HOUR_MS: i64 = 3_600_000;

fn create(id: &str, title: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": title})),
    }
}

/// Changes the device's database behind the store's back, as a bad flash
/// page or a buggy migration would.
fn corrupt(device: &KitDevice, sql: &str) {
    corrupt_file(&device.db_path(), sql)
}

fn corrupt_file(db: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.execute_batch(sql).unwrap();
}

/// Each live task as (id → (version, title)).
fn tasks(store: &ferry::Store) -> std::collections::BTreeMap<String, (u64, String)> {
    store
        .query("tasks", &Default::default())
        .unwrap()
        .into_iter()
        .map(|r| {
            let title = r.fields["title"].as_str().unwrap().to_string();
            (r.id, (r.version.unwrap_or(0), title))
        })
        .collect()
}

/// What the server holds for alice, in the same shape.
async fn server_tasks(
    server: &InProcessServer,
) -> std::collections::BTreeMap<String, (u64, String)> {
    server
        .snapshot(ALICE, "tasks")
        .await
        .live
        .into_iter()
        .map(|(id, (v, f))| (id, (v, f["title"].as_str().unwrap().to_string())))
        .collect()
}

struct World {
    server: Arc<InProcessServer>,
    clock: Arc<ManualClock>,
    a: KitDevice,
    events: Arc<Mutex<Vec<ChangeEvent>>>,
    _listener: ferry::ListenerHandle,
}

/// Checks at every pull.
fn always() -> SyncConfig {
    SyncConfig {
        checksum_interval: Some(std::time::Duration::ZERO),
        ..SyncConfig::default()
    }
}

/// Alice's device with 20 tasks, synced.
async fn world(config: SyncConfig) -> World {
    let server = InProcessServer::start(ferry_server::ServerConfig::dev()).await;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let a = KitDevice::new(&server, &clock, ALICE, schema(), config);
    let ops = (0..20)
        .map(|i| create(&format!("t{i:02}"), &format!("task {i}")))
        .collect();
    a.client.write(ops, WriteMode::OfflineFirst).await.unwrap();
    for _ in 0..2 {
        // (The second pull takes the pages of the first one's echoes.)
        let report = a.client.sync().await.unwrap();
        assert!(report.repairs.is_empty(), "{:?}", report.repairs);
    }
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let _listener = a
        .store
        .add_change_listener(Arc::new(move |e: &ChangeEvent| seen.lock().push(e.clone())));
    World {
        server,
        clock,
        a,
        events,
        _listener,
    }
}

/// A changed row, a lost row and a stray row.
const DAMAGE: &str = "
    UPDATE tasks SET title = 'garbled', _version = _version + 7 WHERE id = 't03';
    DELETE FROM tasks WHERE id = 't05';
    INSERT INTO tasks (id, title, done, _status, _version, _created_at, _updated_at)
        VALUES ('ghost', 'never on the server', 0, 'synced', 1, 0, 0);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_a_lost_and_a_stray_row_are_repaired_and_a_pending_create_is_kept() {
    let w = world(always()).await;
    corrupt(&w.a, DAMAGE);
    // Written after the damage and not pushed yet: the repair keeps it.
    w.a.client
        .write(
            vec![create("fresh", "made offline")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();

    let report = w.a.client.sync().await.unwrap();
    assert_eq!(report.repairs.len(), 1, "{:?}", report.repairs);
    let Repair {
        collection,
        local_count,
        server_count,
        repaired,
        ..
    } = report.repairs[0].clone();
    assert_eq!(
        (collection.as_str(), local_count, server_count, repaired),
        ("tasks", 20, 20, true),
        "one lost and one stray: the same count, another digest"
    );
    assert_eq!(report.published.repaired, vec!["tasks".to_string()]);
    assert_eq!(
        w.a.client.status().last_repair,
        Some(report.repairs[0].clone())
    );

    let server = server_tasks(&w.server).await;
    assert_eq!(
        tasks(&w.a.store),
        server,
        "the device holds what the server holds"
    );
    assert_eq!(
        server["t03"].1, "task 3",
        "the changed row is the server's again"
    );
    assert!(server.contains_key("t05"), "the lost row is back");
    assert!(!server.contains_key("ghost"), "the stray row is gone");
    assert_eq!(
        server["fresh"].1, "made offline",
        "the pending create was pushed"
    );

    w.a.store.flush_events();
    let repair = w
        .events
        .lock()
        .iter()
        .find(|e| e.source == ChangeSource::Repair)
        .cloned()
        .expect("the repair's publish is an event of its own source");
    let change = &repair.changes[0];
    assert!(change.reload, "listeners re-read the repaired collection");
    assert_eq!(change.collection, "tasks");

    // Repaired: the next check finds nothing.
    let next = w.a.client.sync().await.unwrap();
    assert!(next.repairs.is_empty(), "{:?}", next.repairs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_runs_once_per_interval_and_a_match_costs_no_extra_pull() {
    let w = world(SyncConfig::default()).await;
    corrupt(&w.a, DAMAGE);
    w.clock.advance(HOUR_MS / 2);
    let early = w.a.client.sync().await.unwrap();
    assert!(early.repairs.is_empty(), "not due yet: {:?}", early.repairs);
    assert_eq!(early.pages, 1, "one pull of one page");
    assert!(w.a.store.get("tasks", "ghost").unwrap().is_some());

    w.clock.advance(HOUR_MS / 2);
    let due = w.a.client.sync().await.unwrap();
    assert_eq!(due.repairs.len(), 1, "{:?}", due.repairs);
    assert!(due.repairs[0].repaired);
    assert_eq!(tasks(&w.a.store), server_tasks(&w.server).await);

    w.clock.advance(HOUR_MS);
    let matched = w.a.client.sync().await.unwrap();
    assert!(matched.repairs.is_empty());
    assert_eq!(
        matched.pages, 1,
        "a check that matches needs no second pull"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_from_an_older_backup_the_device_holds_what_the_server_holds() {
    let w = world(always()).await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    w.server.backup(&backup);
    // Written after the backup: the restored server does not have them.
    w.a.client
        .write(
            vec![
                create("late1", "after the backup"),
                WriteOp::Update {
                    collection: "tasks".into(),
                    id: "t01".into(),
                    fields: obj(json!({"title": "edited after the backup"})),
                },
            ],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    w.a.client.sync().await.unwrap();
    assert_eq!(w.a.store.pending_counts().unwrap().0, 0);

    let restored =
        InProcessServer::start_from(Some(&backup), ferry_server::ServerConfig::dev()).await;
    let a = w.a.restart_on(&restored);
    // Another device writes to the restored server: its change positions are
    // ones the device's cursor has passed already.
    let b = KitDevice::new(&restored, &w.clock, ALICE, schema(), SyncConfig::default());
    b.client.sync().await.unwrap();
    b.client
        .write(
            vec![create("b1", "on the restored server")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    b.client.sync().await.unwrap();

    let report = a.client.sync().await.unwrap();
    assert_eq!(report.repairs.len(), 1, "{:?}", report.repairs);
    assert!(report.repairs[0].repaired);
    let server = server_tasks(&restored).await;
    assert_eq!(tasks(&a.store), server);
    assert_eq!(server["t01"].1, "task 1", "the restored server's row");
    assert!(
        server.contains_key("b1"),
        "a write the cursor had passed arrives"
    );
    assert!(!server.contains_key("late1"));
}

/// Alice's damaged device (pages of 5 rows: a repair of 20 takes four) syncs:
/// `passing` requests are answered, the next one's answer is lost, and the
/// sync fails with nothing of the repair published.
async fn cut_off_after(passing: usize) -> (Arc<InProcessServer>, Arc<ManualClock>, KitDevice) {
    let World {
        server, clock, a, ..
    } = world(SyncConfig {
        page_size: 5,
        ..always()
    })
    .await;
    corrupt(&a, DAMAGE);
    let mut plan = vec![support::kit::Fault::None; passing];
    plan.push(support::kit::Fault::DropAfter);
    a.net.then(plan);
    assert!(a.client.sync().await.is_err(), "cut off within the repair");
    assert!(
        a.store.get("tasks", "ghost").unwrap().is_some(),
        "nothing of the repair is published yet"
    );
    (server, clock, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_cut_off_midway_resumes_and_completes() {
    // The check's pull, its confirmation and two pages of the repair pass; the
    // answer to the third is lost, and the app is killed.
    let (_server, _clock, a) = cut_off_after(4).await;
    let a = a.restart();
    let report = a.client.sync().await.unwrap();
    assert_eq!(report.pages, 2, "the two pages left of the repair");
    assert!(
        report.repairs.is_empty(),
        "the resumed repair completes first, and then matches: {:?}",
        report.repairs
    );
    assert_eq!(report.published.repaired, vec!["tasks".to_string()]);
    assert!(a.store.get("tasks", "ghost").unwrap().is_none());
    assert_eq!(
        a.store.get("tasks", "t03").unwrap().unwrap().fields["title"],
        "task 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_whose_staged_pages_are_lost_is_abandoned_not_applied_to_an_ordinary_pull() {
    let (server, clock, a) = cut_off_after(3).await;
    // The app is down, and its staging file is lost with the repair's pages
    // (the next open finds none).
    let a = a.restart_with(|dir| {
        for file in ["device.db-ferry-stage", "device.db-ferry-stage-journal"] {
            let _ = std::fs::remove_file(dir.join(file));
        }
    });
    // Another device writes: the next pull is an ordinary one with a change
    // to publish, from the cursor the lost repair started at.
    let b = KitDevice::new(&server, &clock, ALICE, schema(), SyncConfig::default());
    b.client
        .write(vec![create("b1", "from b")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    b.client.sync().await.unwrap();
    let report = a.client.sync().await.unwrap();
    assert_eq!(
        report.published.removed.get("tasks").copied().unwrap_or(0),
        1,
        "only the stray row leaves: {report:?}"
    );
    assert_eq!(report.repairs.len(), 1, "found again and repaired");
    assert!(report.repairs[0].repaired);
    assert!(a.store.get("tasks", "ghost").unwrap().is_none());
    assert_eq!(tasks(&a.store), server_tasks(&server).await);
    assert_eq!(tasks(&a.store).len(), 21);
}

/// Over HTTP, against the end-to-end suites' server (PostgreSQL in that lane).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_damaged_collection_is_repaired_and_the_other_left_alone() {
    let server = start_server().await;
    let a = device_with(
        &server.url(),
        Arc::new(ferry::transport::StaticToken(ALICE.into())),
        schema(),
        always(),
    );
    let mut ops: Vec<WriteOp> = (0..20)
        .map(|i| create(&format!("t{i:02}"), &format!("task {i}")))
        .collect();
    ops.push(WriteOp::Create {
        collection: "projects".into(),
        fields: obj(json!({"id": "p1", "name": "home"})),
    });
    a.client.write(ops, WriteMode::OfflineFirst).await.unwrap();
    a.client.sync().await.unwrap();
    a.client.sync().await.unwrap();
    corrupt_file(&a.db_path(), DAMAGE);
    let report = a.client.sync().await.unwrap();
    assert_eq!(report.repairs.len(), 1, "{:?}", report.repairs);
    assert_eq!(report.repairs[0].collection, "tasks");
    assert!(report.repairs[0].repaired);
    assert_eq!(report.published.repaired, vec!["tasks".to_string()]);
    let fresh = device(&server.url(), ALICE);
    fresh.client.sync().await.unwrap();
    assert_eq!(
        tasks(&a.store),
        tasks(&fresh.store),
        "as a fresh device sees it"
    );
    assert_eq!(contents(&a.store, "projects").len(), 1);
}
