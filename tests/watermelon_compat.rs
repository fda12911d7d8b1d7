//! The core in WatermelonDB compat mode, against ferry-server's WatermelonDB
//! endpoint: pull with last_pulled_at, push created/updated/deleted, a conflict
//! fails the whole push so the client pulls again and retries, and
//! experimentalRejectedIds become per-item rejections.

mod support;

use std::sync::Arc;

use ferry::sync::{SyncClient, SyncConfig, WriteMode};
use ferry::transport::{StaticToken, WatermelonTransport};
use ferry::{Store, WriteOp};
use serde_json::json;
use support::*;

struct WmDevice {
    store: Store,
    client: SyncClient,
    _dir: tempfile::TempDir,
}

fn wm_device(base: &str) -> WmDevice {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("wm.db"), schema()).unwrap();
    let transport = WatermelonTransport::new(&format!("{base}/watermelon/sync"), 1).unwrap();
    let client = SyncClient::new(
        store.clone(),
        Arc::new(transport),
        Arc::new(StaticToken(ALICE.into())),
        SyncConfig::default(),
    )
    .unwrap();
    WmDevice {
        store,
        client,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_mode_syncs_resolves_whole_push_conflicts_and_reports_rejections() {
    let mut config = ferry_server::ServerConfig::dev();
    config
        .collections
        .get_mut("tasks")
        .unwrap()
        .fields
        .get_mut("notes")
        .unwrap()
        .max_length = Some(10);
    let server = start_server_with(config).await;
    let a = wm_device(&server.url());
    let b = wm_device(&server.url());
    a.client
        .write(
            vec![WriteOp::Create {
                collection: "tasks".into(),
                fields: obj(json!({"id": "t", "title": "one"})),
            }],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(
        b.store.get("tasks", "t").unwrap().unwrap().fields["title"],
        "one"
    );

    // Both edit offline; A pushes first, so B's push (on its old last_pulled_at)
    // conflicts as a whole and nothing of it is applied.
    a.store
        .update("tasks", "t", obj(json!({"title": "from a"})))
        .unwrap();
    b.store
        .update("tasks", "t", obj(json!({"done": true})))
        .unwrap();
    b.store
        .create("tasks", obj(json!({"id": "other", "title": "new"})))
        .unwrap();
    a.client.sync().await.unwrap();
    let pushed = b.client.push_all().await.unwrap();
    assert_eq!((pushed.retried, pushed.applied), (2, 0), "{pushed:?}");
    // The next sync pulls first (rebasing B's edit over A's), then pushes again.
    let report = b.client.sync().await.unwrap();
    assert_eq!(report.pushed.applied, 2, "{report:?}");
    a.client.sync().await.unwrap();
    let (ta, tb) = (
        a.store.get("tasks", "t").unwrap().unwrap(),
        b.store.get("tasks", "t").unwrap().unwrap(),
    );
    assert_eq!(ta.fields, tb.fields);
    assert_eq!(
        (ta.fields["title"].clone(), ta.fields["done"].clone()),
        (json!("from a"), json!(true))
    );

    // A record the backend refuses comes back in experimentalRejectedIds.
    b.store
        .create(
            "tasks",
            obj(json!({"id": "bad", "notes": "much longer than ten"})),
        )
        .unwrap();
    b.store.create("tasks", obj(json!({"id": "good"}))).unwrap();
    let report = b.client.sync().await.unwrap();
    assert_eq!(
        (report.pushed.applied, report.pushed.rejected),
        (1, 1),
        "{report:?}"
    );
    assert!(
        b.store.get("tasks", "bad").unwrap().is_none(),
        "rolled back"
    );
    assert_eq!(b.store.quarantine().unwrap().len(), 1);

    // Deletes travel too.
    a.client.sync().await.unwrap();
    a.store.delete("tasks", "good").unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    assert!(b.store.get("tasks", "good").unwrap().is_none());
}
