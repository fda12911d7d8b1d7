//! A database written by an older Ferry is upgraded when it is opened, and
//! syncs afterwards; one from a newer Ferry is refused.

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry::{Error, ManualClock, RecordStatus};
use serde_json::json;
use support::ALICE;
use support::kit::{InProcessServer, KitDevice};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/layout0")
        .join(name)
}

fn meta(path: &Path, key: &str) -> Option<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("SELECT value FROM _ferry_meta WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_0_database_is_upgraded_on_open_and_then_syncs() {
    let server = InProcessServer::start_from(
        Some(&fixture("server.db")),
        ferry_server::ServerConfig::dev(),
    )
    .await;
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    assert_eq!(
        meta(&fixture("client.db"), "layout"),
        None,
        "the fixture is layout 0"
    );
    let a = KitDevice::from_file(&fixture("client.db"), &server, &clock, ALICE).unwrap();
    assert_eq!(meta(&a.db_path(), "layout").as_deref(), Some("1"));
    // The entry that was sent once may be held by the server: marked so.
    let unanswered: Vec<(String, bool)> = rusqlite::Connection::open(a.db_path())
        .unwrap()
        .prepare("SELECT record_id, unanswered FROM _ferry_outbox ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        unanswered,
        vec![("t1".to_string(), true), ("t2".to_string(), false)]
    );
    // Everything local survived the upgrade.
    let t1 = a.store.get("tasks", "t1").unwrap().unwrap();
    assert_eq!(
        (t1.fields["title"].clone(), t1.status),
        (json!("edited offline"), RecordStatus::Updated)
    );
    assert!(a.store.get("drafts", "d1").unwrap().is_some());

    a.settle(3).await.unwrap();
    assert!(a.store.outbox().unwrap().is_empty());
    let b = KitDevice::new(
        &server,
        &clock,
        ALICE,
        a.store.schema().clone(),
        Default::default(),
    );
    b.settle(1).await.unwrap();
    let t1 = b.store.get("tasks", "t1").unwrap().unwrap();
    assert_eq!(
        (
            t1.fields["title"].clone(),
            t1.fields["done"].clone(),
            t1.version
        ),
        (json!("edited offline"), json!(true), Some(2))
    );
    assert!(
        b.store.get("tasks", "t2").unwrap().is_none(),
        "the delete went through"
    );
    assert!(
        b.store.get("tasks", "t3").unwrap().is_some(),
        "the offline create too"
    );
    assert!(b.store.get("projects", "p1").unwrap().is_some());
    assert!(
        b.store.get("drafts", "d1").unwrap().is_none(),
        "local-only stays local"
    );
}

#[test]
fn a_database_from_a_newer_ferry_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    std::fs::copy(fixture("client.db"), &path).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO _ferry_meta (key, value) VALUES ('layout', '99')",
            [],
        )
        .unwrap();
    let err = ferry::Store::open_existing(&path).expect_err("refused");
    assert!(
        matches!(&err, Error::IncompatibleSchema(m) if m.contains("newer Ferry")),
        "{err}"
    );
    assert_eq!(meta(&path, "layout").as_deref(), Some("99"));
    let cols: Vec<String> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT name FROM pragma_table_info('_ferry_outbox')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        !cols.contains(&"unanswered".to_string()),
        "nothing was changed"
    );
}
