//! Encryption at rest (feature `sqlcipher`: `cargo test --features sqlcipher
//! --test encryption`): the database, its WAL and its staging file are
//! unreadable without the key, a wrong key or none is a typed error that
//! leaves the file as it is, and an encrypted store syncs as any other.

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::StaticToken;
use ferry::{Error, Store, WriteOp};
use serde_json::json;
use support::*;

const KEY: &str = "correct horse battery staple";

/// Whether `needle` appears in any of the database's files, as bytes.
fn plaintext_in(db: &Path, needle: &str) -> Vec<String> {
    ["", "-wal", "-ferry-stage", "-ferry-stage-journal"]
        .iter()
        .filter_map(|suffix| {
            let mut file = db.as_os_str().to_owned();
            file.push(suffix);
            let bytes = std::fs::read(&file).ok()?;
            bytes
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
                .then(|| suffix.to_string())
        })
        .collect()
}

fn create(id: &str, title: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": title})),
    }
}

fn refused(r: ferry::Result<Store>) -> String {
    match r {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn without_its_key_an_encrypted_database_cannot_be_read_nor_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secret.db");
    {
        let store = Store::open_encrypted(&db, schema(), KEY).unwrap();
        store
            .write(vec![create("t1", "plaintext-marker-1")])
            .unwrap();
        assert!(
            plaintext_in(&db, "plaintext-marker-1").is_empty(),
            "written, and in no file as plain text (WAL included)"
        );
    }
    let m = refused(Store::open(&db, schema()));
    assert!(m.contains("encrypted"), "{m}");
    refused(Store::open_encrypted(&db, schema(), "the wrong key"));
    refused(Store::open_encrypted(&db, schema(), ""));
    let store = Store::open_encrypted(&db, schema(), KEY).unwrap();
    assert_eq!(
        store.get("tasks", "t1").unwrap().unwrap().fields["title"],
        "plaintext-marker-1",
        "the refused opens left it as it was"
    );
    drop(store);

    // A plain database opened with a key is refused and left readable.
    let plain = dir.path().join("plain.db");
    Store::open(&plain, schema())
        .unwrap()
        .write(vec![create("p1", "open")])
        .unwrap();
    refused(Store::open_encrypted(&plain, schema(), KEY));
    assert!(
        Store::open(&plain, schema())
            .unwrap()
            .get("tasks", "p1")
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_syncs_and_stages_pulled_pages_encrypted() {
    let server = start_server().await;
    let other = device(&server.url(), ALICE);
    let ops = (0..30)
        .map(|i| create(&format!("s{i:02}"), &format!("pulled-marker-{i:02}")))
        .collect();
    other.store.write(ops).unwrap();
    other.client.sync().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secret.db");
    let store = Store::open_encrypted(&db, schema(), KEY).unwrap();
    store.write(vec![create("mine", "pushed-marker")]).unwrap();
    let transport = Faulty::new(&server.url());
    let client = SyncClient::new(
        store.clone(),
        transport.clone(),
        Arc::new(StaticToken(ALICE.into())),
        SyncConfig {
            page_size: 10,
            ..SyncConfig::default()
        },
    )
    .unwrap();
    // Cut off after two pages: they wait in the staging file.
    *transport.fail_pull_after.lock() = Some(2);
    assert!(client.sync().await.is_err());
    assert!(
        store.get("tasks", "s00").unwrap().is_none(),
        "staged, not published"
    );
    let found: Vec<String> = (0..20)
        .flat_map(|i| plaintext_in(&db, &format!("pulled-marker-{i:02}")))
        .collect();
    assert!(found.is_empty(), "pulled rows in plain text in {found:?}");

    *transport.fail_pull_after.lock() = None;
    client.sync().await.unwrap();
    assert_eq!(contents(&store, "tasks").len(), 31);
    other.client.sync().await.unwrap();
    assert!(
        other.store.get("tasks", "mine").unwrap().is_some(),
        "pushed"
    );
    assert!(plaintext_in(&db, "pulled-marker-05").is_empty());
}
