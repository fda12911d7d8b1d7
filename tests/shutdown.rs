//! `SyncClient::shutdown`: the step of a logout before the database is closed
//! and deleted. It cancels a running sync, and returns only once none of the
//! client's database work is in flight, so the delete that follows never finds
//! the file still open (a JS app could only poll for that before).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use ferry::sync::{ConflictResolver, SyncClient, SyncConfig, WriteMode};
use ferry::transport::{HttpTransport, StaticToken};
use ferry::{Error, Fields, Record, Store, WriteOp};
use ferry_protocol::ServerRecord;
use parking_lot::Mutex;
use serde_json::json;
use support::*;

/// A resolver that says when it is called, then waits to be released.
struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    returned: Arc<AtomicBool>,
}

impl ConflictResolver for Gate {
    fn resolve(&self, _c: &str, _l: &Record, server: &ServerRecord) -> Result<Fields, String> {
        self.entered.lock().send(()).unwrap();
        self.release.lock().recv().unwrap();
        self.returned.store(true, Ordering::SeqCst);
        Ok(server.fields.clone())
    }
}

fn create(id: &str, title: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": title})),
    }
}

/// A server holding one task `t` from device `a`, and a second database (not
/// synced yet) in `dir`.
async fn seeded() -> (Server, Device, tempfile::TempDir, std::path::PathBuf, Store) {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(vec![create("t", "seed")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let store = Store::open(&path, schema()).unwrap();
    (server, a, dir, path, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_the_sync_waits_for_its_database_work_then_the_database_can_be_deleted() {
    let (server, a, _dir, path, store) = seeded().await;
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let returned = Arc::new(AtomicBool::new(false));
    let client = SyncClient::new(
        store.clone(),
        Arc::new(HttpTransport::new(&server.url()).unwrap()),
        Arc::new(StaticToken(ALICE.into())),
        SyncConfig::default(),
    )
    .unwrap()
    .with_resolver(Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
        returned: returned.clone(),
    }))
    .unwrap();
    client.sync().await.unwrap();
    // A conflict on `t`: the next sync calls the resolver, on the blocking pool.
    a.store
        .update("tasks", "t", obj(json!({"title": "from a"})))
        .unwrap();
    a.client.sync().await.unwrap();
    store
        .update("tasks", "t", obj(json!({"title": "from b"})))
        .unwrap();

    let sync = tokio::spawn({
        let client = client.clone();
        async move { client.sync().await }
    });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    let shutdown = tokio::spawn({
        let (client, returned) = (client.clone(), returned.clone());
        async move {
            client.shutdown().await;
            // What shutdown saw when it returned.
            returned.load(Ordering::SeqCst)
        }
    });
    // The sync ends at once, cancelled, though the resolver still blocks...
    assert!(matches!(sync.await.unwrap(), Err(Error::Closed)));
    // ... and shutdown waits for the resolver's database work.
    assert!(!shutdown.is_finished());
    release.send(()).unwrap();
    assert!(
        shutdown.await.unwrap(),
        "shutdown returned while the resolution was still running"
    );

    // Nothing of the client runs any more: later syncs fail, and once the handles
    // are dropped the database can be deleted.
    assert!(matches!(client.sync().await, Err(Error::Closed)));
    assert!(matches!(client.push_all().await, Err(Error::Closed)));
    // Local writes are not the client's: they still work.
    store
        .create("tasks", obj(json!({"title": "local"})))
        .unwrap();
    drop(client);
    drop(store);
    Store::delete_database(&path).unwrap();
    assert!(!path.exists());
    let stage = format!("{}-ferry-stage", path.display());
    assert!(!std::path::Path::new(&stage).exists());
}

/// A transport whose pull answers only after it has shut its client down and
/// that shutdown has returned: the sync then goes on to stage the page, after
/// the shutdown's cancel (the caller is in the middle of polling the sync).
struct ShutsDownDuringPull {
    inner: HttpTransport,
    client: std::sync::OnceLock<ferry::sync::WeakSyncClient>,
    /// Told once the shutdown task has ended and let go of its client handle.
    done: parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

#[async_trait::async_trait]
impl ferry::transport::Transport for ShutsDownDuringPull {
    async fn pull(
        &self,
        token: &str,
        req: &ferry_protocol::PullRequest,
    ) -> Result<ferry_protocol::PullPage, ferry::transport::TransportError> {
        let page = self.inner.pull(token, req).await?;
        let client = self.client.get().unwrap().upgrade().unwrap();
        let done = self.done.lock().take();
        // On another task: this one is inside the sync that shutdown cancels.
        tokio::spawn(async move {
            client.shutdown().await;
            drop(client);
            if let Some(done) = done {
                let _ = done.send(());
            }
        })
        .await
        .unwrap();
        Ok(page)
    }

    async fn push(
        &self,
        token: &str,
        req: &ferry_protocol::PushRequest<ferry_protocol::RawFields>,
    ) -> Result<ferry_protocol::PushResponse, ferry::transport::TransportError> {
        self.inner.push(token, req).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_cancelled_by_shutdown_starts_no_database_work_after_it() {
    let (server, _a, _dir, path, store) = seeded().await;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let transport = Arc::new(ShutsDownDuringPull {
        inner: HttpTransport::new(&server.url()).unwrap(),
        client: Default::default(),
        done: parking_lot::Mutex::new(Some(done_tx)),
    });
    let client = SyncClient::new(
        store.clone(),
        transport.clone(),
        Arc::new(StaticToken(ALICE.into())),
        SyncConfig::default(),
    )
    .unwrap();
    let _ = transport.client.set(client.downgrade());
    assert!(matches!(client.sync().await, Err(Error::Closed)));
    // The sync ends as soon as the shutdown cancels it, which may be before
    // the shutdown returns: wait for the task that called it (and holds a
    // client handle) to end, as a host awaits its own shutdown call.
    done_rx.await.unwrap();
    // The page was never staged: no task of the client holds the store, and
    // the database can be deleted at once.
    drop(client);
    drop(store);
    Store::delete_database(&path).unwrap();
}
