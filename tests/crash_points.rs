//! Kill -9 of the app at named places, through real processes (feature
//! `crash-points`: `cargo test --features crash-points --test crash_points`).
//!
//! The parent runs a ferry-server over HTTP. It re-executes this test binary
//! as the child (`crash_child`, ignored in normal runs) with
//! `FERRY_CRASH_AT=<point>`: the child's core stops inside the transaction of
//! that point (`src/crash.rs`) and says so on stdout, and the parent sends
//! SIGKILL right then, so the kill is known to land inside it, not before or
//! after. Then, for each point: `PRAGMA integrity_check` is ok, every local
//! write the app was told had succeeded is still there, and the next sync
//! converges with the server, each local write applied once.

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{HttpTransport, StaticToken};
use ferry::{Schema, Store, WriteOp};
use ferry_fault_proxy::helper::Helper;
use serde_json::json;
use support::*;

const URL_ENV: &str = "FERRY_CRASH_CHILD_URL";
const DB_ENV: &str = "FERRY_CRASH_CHILD_DB";
const MODE_ENV: &str = "FERRY_CRASH_CHILD_MODE";
/// Tasks on the server before the child's first sync: pages of 500.
const SERVER_TASKS: usize = 2_000;
/// Local creates the child makes before it syncs: batches of 100.
const LOCAL: usize = 250;

fn config() -> SyncConfig {
    SyncConfig {
        page_size: 500,
        push_batch: 100,
        ..SyncConfig::default()
    }
}

fn client(url: &str, store: &Store) -> SyncClient {
    SyncClient::new(
        store.clone(),
        Arc::new(HttpTransport::new(url).unwrap()),
        Arc::new(StaticToken(ALICE.into())),
        config(),
    )
    .unwrap()
}

fn local_id(i: usize) -> String {
    format!("local-{i:03}")
}

/// `tasks` with one more column, at schema version 2.
fn schema_v2() -> Schema {
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
    v["version"] = json!(2);
    v["collections"][0]["columns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "estimate", "type": "integer", "nullable": true}));
    Schema::from_json(&v.to_string()).unwrap()
}

#[test]
#[ignore = "run by the kill tests below as their child"]
fn crash_child() {
    let (Ok(db), Ok(mode)) = (std::env::var(DB_ENV), std::env::var(MODE_ENV)) else {
        return;
    };
    if mode == "migrate" {
        // Reaches the point inside the migration's transaction.
        let _ = Store::open(&db, schema_v2());
        println!("DONE");
        return;
    }
    let url = std::env::var(URL_ENV).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(&db, schema()).unwrap();
        let ops = (0..LOCAL)
            .map(|i| WriteOp::Create {
                collection: "tasks".into(),
                fields: obj(json!({"id": local_id(i), "title": "written offline"})),
            })
            .collect();
        store.write(ops).unwrap();
        // The app was told these writes succeeded.
        println!("ACKED");
        client(&url, &store).sync().await.unwrap();
        println!("DONE");
    });
}

/// Runs the child until it stops at `point`, then kills it with SIGKILL.
fn kill_at(point: &str, mode: &str, url: &str, db: &Path) {
    let db = db.display().to_string();
    let env = [
        ("FERRY_CRASH_AT", point),
        (URL_ENV, url),
        (DB_ENV, db.as_str()),
        (MODE_ENV, mode),
    ];
    let marker = format!("FERRY_CRASH_POINT {point}");
    let (mut child, lines) = Helper::start("crash_child", &env, &marker)
        .unwrap_or_else(|lines| panic!("the child never stopped at {point}: {lines:?}"));
    child.kill();
    if mode == "sync" {
        assert!(
            lines.iter().any(|l| l.ends_with("ACKED")),
            "the local writes were acknowledged before the kill: {lines:?}"
        );
    }
}

fn integrity_ok(db: &Path) {
    let integrity: String = rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

async fn killed_while_syncing_at(point: &str) {
    let server = start_server().await;
    // Alice's other device wrote them.
    let alice_seed = device(&server.url(), ALICE);
    let ops = (0..SERVER_TASKS)
        .map(|i| WriteOp::Create {
            collection: "tasks".into(),
            fields: obj(json!({"title": format!("alice task {i}")})),
        })
        .collect();
    alice_seed.store.write(ops).unwrap();
    alice_seed.client.sync().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("child.db");
    kill_at(point, "sync", &server.url(), &db);
    integrity_ok(&db);

    let store = Store::open(&db, schema()).unwrap();
    // The kill landed inside the point's transaction: nothing of it was
    // committed (a point after the commit would leave it applied).
    let held = contents(&store, "tasks").len();
    let pending = store.pending_counts().unwrap().0 as usize;
    match point {
        "stage" | "publish" => assert_eq!(held, LOCAL, "nothing of the pull published"),
        _ => {
            assert_eq!(held, LOCAL + SERVER_TASKS, "the pull was published");
            assert_eq!(pending, LOCAL, "no push answer applied");
        }
    }
    for i in 0..LOCAL {
        assert!(
            store.get("tasks", &local_id(i)).unwrap().is_some(),
            "acknowledged local write {} lost after a kill at {point}",
            local_id(i)
        );
    }
    let client = client(&server.url(), &store);
    client.sync().await.unwrap();
    client.sync().await.unwrap();
    assert!(store.outbox().unwrap().is_empty(), "everything pushed");

    // Converged: a fresh device of alice's sees what this one holds.
    let fresh = device(&server.url(), ALICE);
    fresh.client.sync().await.unwrap();
    assert_eq!(contents(&store, "tasks"), contents(&fresh.store, "tasks"));
    for i in 0..LOCAL {
        let r = fresh.store.get("tasks", &local_id(i)).unwrap().unwrap();
        assert_eq!(r.version, Some(1), "{} applied once", local_id(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_staging_a_pulled_page() {
    killed_while_syncing_at("stage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_the_publish_transaction() {
    killed_while_syncing_at("publish").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_server_applied_a_push_and_before_its_answer_is_applied() {
    killed_while_syncing_at("push_answered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_the_transaction_that_applies_a_push_answer() {
    killed_while_syncing_at("apply").await;
}

#[test]
fn kill_9_inside_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("child.db");
    {
        let store = Store::open(&db, schema()).unwrap();
        let ops = (0..10)
            .map(|i| WriteOp::Create {
                collection: "tasks".into(),
                fields: obj(json!({"id": local_id(i), "title": "before the upgrade"})),
            })
            .collect();
        store.write(ops).unwrap();
    }
    kill_at("migrate", "migrate", "", &db);
    integrity_ok(&db);
    // Nothing of the migration was committed: the stored schema is still v1.
    let store = Store::open_existing(&db).unwrap();
    assert_eq!(store.schema().version, 1);
    assert_eq!(contents(&store, "tasks").len(), 10);
    drop(store);
    // The upgrade runs again, whole.
    let store = Store::open(&db, schema_v2()).unwrap();
    assert_eq!(store.schema().version, 2);
    let rows = contents(&store, "tasks");
    assert_eq!(rows.len(), 10);
    assert!(rows.values().all(|f| f["estimate"].is_null()));
}
