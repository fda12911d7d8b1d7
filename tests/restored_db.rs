//! A restored or cloned database (Android Auto Backup, an iCloud restore, a
//! copy to a second device) carries the first device's client id. Opened for
//! another installation, it takes a new one: otherwise the server takes the
//! first device's writes for the copy's echoes and never sends them to it.

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry::sync::{SyncClient, SyncConfig, WriteMode};
use ferry::transport::{HttpTransport, StaticToken};
use ferry::{Error, Store, WriteOp};
use serde_json::json;
use support::*;

fn client(store: &Store, url: &str) -> SyncClient {
    SyncClient::new(
        store.clone(),
        Arc::new(HttpTransport::new(url).unwrap()),
        Arc::new(StaticToken(ALICE.into())),
        SyncConfig::default(),
    )
    .unwrap()
}

fn create(id: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": id})),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_opened_by_another_installation_gets_a_new_client_id_and_pulls_the_first_devices_writes()
 {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("phone1.db");
    let copy = dir.path().join("phone2.db");

    let a = Store::open_for_installation(&first, schema(), "install-1").unwrap();
    let original_id = a.client_id().to_string();
    client(&a, &server.url())
        .write(vec![create("t1")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    client(&a, &server.url()).sync().await.unwrap();
    drop(a);
    // The backup: the closed file, as it is.
    std::fs::copy(&first, &copy).unwrap();

    let a = Store::open_for_installation(&first, schema(), "install-1").unwrap();
    assert_eq!(
        a.client_id(),
        original_id,
        "the same installation keeps its id"
    );
    let b = Store::open_for_installation(&copy, schema(), "install-2").unwrap();
    assert_ne!(b.client_id(), original_id, "the copy took a new client id");
    assert_eq!(
        contents(&b, "tasks").len(),
        1,
        "with the data it was restored with"
    );

    // The first device writes on: the copy receives it, not as its own echo.
    let ca = client(&a, &server.url());
    ca.write(vec![create("t2")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    ca.sync().await.unwrap();
    client(&b, &server.url()).sync().await.unwrap();
    assert!(
        b.get("tasks", "t2").unwrap().is_some(),
        "t2 reached the copy"
    );

    // Reopened by its own installation, the copy keeps its new id.
    let id2 = b.client_id().to_string();
    drop(b);
    let b = Store::open_for_installation(&copy, schema(), "install-2").unwrap();
    assert_eq!(b.client_id(), id2);
    // Opened without an installation id (as before), nothing changes.
    drop(b);
    let b = Store::open(&copy, schema()).unwrap();
    assert_eq!(b.client_id(), id2);
}

#[test]
fn an_empty_installation_id_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    assert!(matches!(
        Store::open_for_installation(&path, schema(), ""),
        Err(Error::InvalidInput(_))
    ));
    assert!(!Path::new(&path).exists());
}
