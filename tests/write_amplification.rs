//! The guard on a first sync's write amplification (issue 10): bytes are
//! counted, not timed, so it holds on a noisy machine.
//!
//! The parent runs an in-process ferry-server holding 50k tasks with random
//! (v4) ids, and re-executes this test binary as the child (`first_sync_child`,
//! ignored in normal runs), which syncs them into a fresh database and prints
//! what the process wrote to storage (`write_bytes` of `/proc/self/io`) during
//! the sync, and the bytes it passed to `write(2)` (`wchar`, which the page
//! cache cannot hide). The parent asserts both stay under 4× the database's size.
//!
//! Before staging format 3 (a staging table keyed by id, committed page by
//! page, at 5eb889b) the same sync wrote 10.6× its database and this test
//! failed; it writes 2.6× since.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;

use ferry::Store;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{HttpTransport, StaticToken, Transport};
use ferry_protocol::{Mutation, Op, PushRequest};
use serde_json::json;
use support::*;

const URL_ENV: &str = "FERRY_WA_CHILD_URL";
const DB_ENV: &str = "FERRY_WA_CHILD_DB";
const RECORDS: usize = 50_000;
const RESULT: &str = "WROTE ";

/// A counter of this process's `/proc/self/io` (Linux task I/O accounting).
fn io(key: &str) -> u64 {
    let io = std::fs::read_to_string("/proc/self/io")
        .expect("/proc/self/io (task I/O accounting) is needed to count bytes written");
    io.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/self/io"))
}

#[test]
#[ignore = "run by a_first_sync_with_random_ids_writes_under_4x_its_database as its child"]
fn first_sync_child() {
    let (Ok(url), Ok(db)) = (std::env::var(URL_ENV), std::env::var(DB_ENV)) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(&db, schema()).unwrap();
        let client = SyncClient::new(
            store.clone(),
            Arc::new(HttpTransport::new(&url).unwrap()),
            Arc::new(StaticToken(ALICE.into())),
            SyncConfig {
                page_size: 5_000,
                ..SyncConfig::default()
            },
        )
        .unwrap();
        let before = (io("write_bytes"), io("wchar"));
        let report = client.sync().await.unwrap();
        client.stop();
        drop(client);
        drop(store);
        assert_eq!(report.pulled as usize, RECORDS, "{report:?}");
        // After the store is closed: its last checkpoint counts too.
        println!(
            "{RESULT}{} {}",
            io("write_bytes") - before.0,
            io("wchar") - before.1
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_with_random_ids_writes_under_4x_its_database() {
    let server = start_server().await;
    // Pushed straight through the transport, in the order the ids were drawn:
    // a device's outbox would push them sorted, and the server's change order
    // (the pull's) would then be the ids' order.
    let seeder = HttpTransport::new(&server.url()).unwrap();
    for chunk in 0..(RECORDS / 5_000) {
        let req = PushRequest {
            client_id: "seeder".into(),
            mutations: (0..5_000)
                .map(|i| Mutation {
                    mutation_id: uuid::Uuid::new_v4().to_string(),
                    collection: "tasks".into(),
                    record_id: uuid::Uuid::new_v4().to_string(),
                    op: Op::Create,
                    fields: serde_json::value::to_raw_value(&json!({
                        "title": format!("task {} with a typical title", chunk * 5_000 + i),
                        "done": i % 3 == 0,
                        "priority": i % 5,
                        "notes": "notes: remember the details",
                        "project": format!("project-{}", i % 50),
                    }))
                    .unwrap(),
                    base_version: None,
                })
                .collect(),
        };
        let resp = seeder.push(ALICE, &req).await.unwrap();
        assert!(
            resp.results
                .iter()
                .all(|r| matches!(r.outcome, ferry_protocol::MutationOutcome::Applied { .. })),
            "{:?}",
            resp.results.first()
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("child.db");
    let out = tokio::task::spawn_blocking({
        let (url, db) = (server.url(), db.clone());
        move || {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "first_sync_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(URL_ENV, url)
                .env(DB_ENV, db)
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the child failed: {stdout}");
    let (wrote, passed): (u64, u64) = stdout
        .lines()
        .find_map(|l| {
            let (_, v) = l.split_once(RESULT)?;
            let (w, c) = v.trim().split_once(' ')?;
            Some((w.parse().ok()?, c.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no `{RESULT}` line from the child: {stdout}"));
    let size = std::fs::metadata(&db).unwrap().len();
    let n: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as usize, RECORDS);
    let (ratio, passed_ratio) = (wrote as f64 / size as f64, passed as f64 / size as f64);
    println!(
        "first sync of {RECORDS} random-id records into a {size}-byte database: \
         write_bytes {wrote} ({ratio:.2}x), wchar {passed} ({passed_ratio:.2}x)"
    );
    assert!(
        ratio < 4.0,
        "a first sync sent {ratio:.2}x its database to storage ({wrote} bytes for {size})"
    );
    assert!(
        passed_ratio < 4.0,
        "a first sync wrote {passed_ratio:.2}x its database ({passed} bytes for {size})"
    );
}
