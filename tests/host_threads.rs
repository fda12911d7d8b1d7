//! What a host whose callbacks run on one thread (the JS thread under React
//! Native) needs from the core: listeners get bursts from one dispatcher, status
//! never runs on a tokio worker, flush and close never wait for a listener, a
//! failing token provider is retried and reported, and the FFI keeps typed error
//! fields. Each listener here blocks the dispatcher on purpose, as a busy JS
//! thread would; a deadlock guard (not a timing bound) turns a hang into a failure.

mod support;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use async_trait::async_trait;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{HttpTransport, TokenProvider, TransportError};
use ferry::{ChangeEvent, ChangeListener, Store};
use parking_lot::Mutex;
use serde_json::json;
use support::*;

const GUARD: Duration = Duration::from_secs(60);

/// A change listener whose first call blocks until the test releases it.
struct Gate {
    entered: Sender<()>,
    release: Mutex<Receiver<()>>,
    /// Sent when the first call returns: true if the test released it, false
    /// if the guard ran out (something waited for the listener).
    left: Sender<bool>,
    calls: Mutex<Vec<usize>>,
}

impl ChangeListener for Gate {
    fn on_change(&self, _: &ChangeEvent) {
        unreachable!("the dispatcher delivers bursts")
    }

    fn on_changes(&self, events: &[Arc<ChangeEvent>]) {
        let first = {
            let mut calls = self.calls.lock();
            calls.push(events.len());
            calls.len() == 1
        };
        if first {
            self.entered.send(()).unwrap();
            let released = self.release.lock().recv_timeout(GUARD).is_ok();
            self.left.send(released).unwrap();
        }
    }
}

struct Gated {
    gate: Arc<Gate>,
    entered: Receiver<()>,
    release: Sender<()>,
    left: Receiver<bool>,
    handle: ferry::ListenerHandle,
}

fn gated(store: &Store) -> Gated {
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let (left_tx, left) = channel();
    let gate = Arc::new(Gate {
        entered: entered_tx,
        release: Mutex::new(release_rx),
        left: left_tx,
        calls: Mutex::new(Vec::new()),
    });
    let handle = store.add_change_listener(gate.clone());
    Gated {
        gate,
        entered,
        release,
        left,
        handle,
    }
}

fn put(store: &Store, id: &str) {
    store
        .put("tasks", obj(json!({"id": id, "title": id})))
        .unwrap();
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("host.db"), schema()).unwrap();
    (dir, store)
}

#[test]
fn commits_made_while_a_listener_is_busy_arrive_as_one_burst() {
    let (_dir, store) = store();
    let g = gated(&store);
    put(&store, "a");
    g.entered.recv_timeout(GUARD).unwrap();
    // The listener is busy with the first burst: these three queue up.
    for id in ["b", "c", "d"] {
        put(&store, id);
    }
    g.release.send(()).unwrap();
    store.flush_events();
    assert!(g.left.recv().unwrap());
    assert_eq!(
        *g.gate.calls.lock(),
        vec![1, 3],
        "one call for the three commits"
    );
}

#[test]
fn the_non_blocking_flush_returns_at_once_and_fires_after_delivery() {
    let (_dir, store) = store();
    let g = gated(&store);
    put(&store, "a");
    g.entered.recv_timeout(GUARD).unwrap();
    put(&store, "b");
    let (done_tx, done) = channel();
    // Returns while the listener is still blocked (a blocking flush would wait
    // for the listener, and the listener for the test).
    store.when_events_delivered(move || done_tx.send(()).unwrap());
    assert!(
        done.try_recv().is_err(),
        "not before the events were delivered"
    );
    g.release.send(()).unwrap();
    assert!(
        g.left.recv().unwrap(),
        "released by the test, not by the guard"
    );
    done.recv_timeout(GUARD).expect("fired after delivery");
    assert_eq!(*g.gate.calls.lock(), vec![1, 1]);
}

#[test]
fn closing_the_store_does_not_wait_for_a_busy_listener() {
    let (_dir, store) = store();
    let g = gated(&store);
    put(&store, "a");
    g.entered.recv_timeout(GUARD).unwrap();
    let weak = store.downgrade();
    // The last handles go while the listener is blocked: dropping must not join
    // the event thread (under React Native the listener waits for this thread).
    drop(g.handle);
    drop(store);
    assert!(weak.upgrade().is_none(), "the store closed");
    g.release.send(()).unwrap();
    assert!(
        g.left.recv().unwrap(),
        "the close did not wait for the listener"
    );
    assert_eq!(g.gate.calls.lock().len(), 1);
}

#[test]
fn a_database_is_deleted_only_once_every_handle_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logout.db");
    let store = Store::open(&path, schema()).unwrap();
    put(&store, "secret");
    let again = Store::open_existing(&path).unwrap();
    drop(store);
    let e = Store::delete_database(&path).unwrap_err();
    assert!(matches!(e, ferry::Error::InvalidInput(_)), "{e:?}");
    assert!(path.exists(), "nothing deleted while open");
    drop(again);
    Store::delete_database(&path).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let f = format!("{}{suffix}", path.display());
        assert!(!std::path::Path::new(&f).exists(), "{f}");
    }
    let fresh = Store::open(&path, schema()).unwrap();
    assert!(
        fresh.get("tasks", "secret").unwrap().is_none(),
        "a new, empty database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_listeners_run_on_the_event_thread_never_on_a_tokio_worker() {
    let server = start_server().await;
    let d = device(&server.url(), ALICE);
    let threads: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let (sink, last) = (threads.clone(), Arc::new(Mutex::new(None)));
    let last_seen = last.clone();
    d.client
        .add_status_listener(Arc::new(move |s: &ferry::sync::SyncStatus| {
            sink.lock()
                .push(std::thread::current().name().map(String::from));
            *last_seen.lock() = Some(s.clone());
        }));
    put(&d.store, "s1");
    d.client.sync().await.unwrap();
    d.store.flush_events();
    let names = threads.lock().clone();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.as_deref() == Some("ferry-events")),
        "{names:?}"
    );
    assert_eq!(
        last.lock().clone().unwrap(),
        d.client.status(),
        "the latest status was delivered last"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_listener_removed_before_its_delivery_runs_is_not_called() {
    let server = start_server().await;
    let d = device(&server.url(), ALICE);
    let calls = Arc::new(Mutex::new(0usize));
    let seen = calls.clone();
    let id = d
        .client
        .add_status_listener(Arc::new(move |_: &ferry::sync::SyncStatus| {
            *seen.lock() += 1;
        }));
    // The event thread is busy with a change listener, so the status queued
    // next waits behind it.
    let g = gated(&d.store);
    put(&d.store, "busy");
    g.entered.recv_timeout(GUARD).unwrap();
    d.client.set_online(false);
    d.client.remove_status_listener(id);
    g.release.send(()).unwrap();
    assert!(g.left.recv_timeout(GUARD).unwrap());
    d.store.flush_events();
    assert_eq!(*calls.lock(), 0, "called after it was removed");
    drop(g.handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_queued_behind_a_busy_listener_are_coalesced_into_the_latest() {
    let server = start_server().await;
    let d = device(&server.url(), ALICE);
    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    let sink = seen.clone();
    let id = d
        .client
        .add_status_listener(Arc::new(move |s: &ferry::sync::SyncStatus| {
            sink.lock().push(s.online)
        }));
    // The event thread is busy; 50 status changes queue behind it.
    let g = gated(&d.store);
    put(&d.store, "busy");
    g.entered.recv_timeout(GUARD).unwrap();
    for i in 0..50 {
        d.client.set_online(i % 2 == 0);
    }
    g.release.send(()).unwrap();
    assert!(g.left.recv_timeout(GUARD).unwrap());
    d.store.flush_events();
    let delivered = seen.lock().clone();
    assert_eq!(
        delivered,
        [false],
        "one delivery, the latest status (offline after the 50th)"
    );
    d.client.remove_status_listener(id);
    drop(g.handle);
}

/// A token provider that fails like a locked keychain.
struct Locked;

#[async_trait]
impl TokenProvider for Locked {
    async fn token(&self, _refresh: bool) -> Result<String, TransportError> {
        Err(TransportError::TokenUnavailable("keychain locked".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_failure_is_reported_and_retried_and_local_writes_go_on() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("t.db"), schema()).unwrap();
    let client = SyncClient::new(
        store.clone(),
        Arc::new(HttpTransport::new(&server.url()).unwrap()),
        Arc::new(Locked),
        SyncConfig::default(),
    )
    .unwrap();
    put(&store, "local");
    let e = client.sync().await.unwrap_err();
    assert!(matches!(e, ferry::Error::TokenUnavailable(_)), "{e:?}");
    let st = client.status();
    assert!(
        !st.auth_failed,
        "a token failure does not stop background sync"
    );
    assert!(st.last_error.unwrap().contains("keychain locked"));
    put(&store, "still-writable");
    assert_eq!(
        store.outbox().unwrap().len(),
        2,
        "both writes wait to be pushed"
    );
}

#[cfg(feature = "ffi")]
mod ffi {
    use super::*;
    use ferry::ffi::{self, FerryDatabase, FerryError, LogLevel};

    const SCHEMA: &str = include_str!("../examples/tasks.schema.json");

    struct Bursts(Mutex<Vec<String>>);

    impl ffi::ChangeListener for Bursts {
        fn on_changes(&self, events_json: String) {
            self.0.lock().push(events_json);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_crosses_the_ffi_once_as_a_json_array_and_flush_is_async() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db").display().to_string();
        let db = FerryDatabase::open(path, SCHEMA.into()).unwrap();
        let bursts = Arc::new(Bursts(Mutex::default()));
        let _h = db.add_change_listener(bursts.clone());
        db.put("tasks".into(), r#"[{"id":"a"},{"id":"b"}]"#.into())
            .unwrap();
        tokio::time::timeout(GUARD, db.flush_events())
            .await
            .expect("flushed");
        let seen = bursts.0.lock().clone();
        assert_eq!(seen.len(), 1);
        let events: serde_json::Value = serde_json::from_str(&seen[0]).unwrap();
        assert_eq!(events.as_array().unwrap().len(), 1, "one transaction");
        assert_eq!(events[0]["source"], "local");
    }

    #[test]
    fn errors_keep_their_typed_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db").display().to_string();
        let db = FerryDatabase::open(path, SCHEMA.into()).unwrap();
        match db.put("nope".into(), "{}".into()) {
            Err(FerryError::UnknownCollection { collection, detail }) => {
                assert_eq!(collection, "nope");
                assert!(detail.contains("nope"));
            }
            other => panic!("{other:?}"),
        }
        match db.put("tasks".into(), r#"{"id":"x","colour":"red"}"#.into()) {
            Err(FerryError::UnknownColumn {
                collection, column, ..
            }) => assert_eq!((collection.as_str(), column.as_str()), ("tasks", "colour")),
            other => panic!("{other:?}"),
        }
        let core = ferry::Error::Rejected {
            code: "forbidden".into(),
            message: "not yours".into(),
        };
        assert!(
            matches!(FerryError::from(core), FerryError::Rejected { code, .. } if code == "forbidden")
        );
        let core = ferry::Error::Conflict {
            collection: "tasks".into(),
            id: "t".into(),
        };
        assert!(matches!(FerryError::from(core),
            FerryError::Conflict { collection, id, .. } if collection == "tasks" && id == "t"));
        let core = ferry::Error::Server {
            status: 503,
            code: "unavailable".into(),
            message: "later".into(),
        };
        assert!(matches!(FerryError::from(core),
            FerryError::Server { status: 503, code, .. } if code == "unavailable"));
    }

    struct Token;

    #[async_trait]
    impl ffi::TokenProvider for Token {
        async fn token(&self, _refresh: bool) -> Result<String, ffi::HostError> {
            Ok(ALICE.into())
        }
    }

    struct NoStatus;

    impl ffi::StatusListener for NoStatus {
        fn on_status(&self, _status: ferry::sync::SyncStatus) {}
    }

    /// A server, a database file `name` in a directory of its own, and an FFI
    /// sync client of it with the default config.
    async fn ffi_client(
        name: &str,
    ) -> (
        Server,
        tempfile::TempDir,
        String,
        Arc<FerryDatabase>,
        Arc<ffi::FerrySyncClient>,
    ) {
        let server = start_server().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name).display().to_string();
        let db = FerryDatabase::open(path.clone(), SCHEMA.into()).unwrap();
        let client = ffi::FerrySyncClient::new(
            db.clone(),
            server.url(),
            Arc::new(Token),
            ffi::sync::default_sync_config(),
        )
        .unwrap();
        (server, dir, path, db, client)
    }

    /// A JS host holds a call's future until its event loop gets to it, and may
    /// hold a listener handle it never cancelled: once `shutdown` resolves,
    /// neither keeps the database open, so the logout's delete succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_shutdown_the_client_holds_no_handle_of_the_database() {
        let (_server, _dir, path, db, client) = ffi_client("s.db").await;
        let _held = client.add_status_listener(Arc::new(NoStatus));
        let mut syncing = Box::pin({
            let client = client.clone();
            async move { client.sync().await }
        });
        // Started, and then not polled again until after the delete.
        let _ = futures::poll!(&mut syncing);
        tokio::time::timeout(GUARD, client.shutdown())
            .await
            .expect("shut down")
            .unwrap();
        assert!(matches!(
            client.push_all().await,
            Err(FerryError::Closed { .. })
        ));
        drop(client);
        drop(db);
        ffi::database::delete_database(path.clone()).unwrap();
        assert!(!std::path::Path::new(&path).exists());
        match syncing.await {
            Ok(_) | Err(FerryError::Closed { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    /// A Kotlin or Swift app holds its database object after a logout: the one
    /// call shuts the client down, closes the database from inside and deletes
    /// the file; every later call on the object fails with `Closed`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_logout_call_stops_the_client_closes_the_database_and_deletes_it() {
        let (_server, _dir, path, db, client) = ffi_client("l.db").await;
        db.create("tasks".into(), r#"[{"id":"t1","title":"x"}]"#.into())
            .unwrap();
        client.sync().await.unwrap();
        // Another open of the same file: the logout deletes nothing.
        let other = FerryDatabase::open(path.clone(), SCHEMA.into()).unwrap();
        let refused = tokio::time::timeout(
            GUARD,
            ffi::database::logout(Some(client.clone()), db.clone()),
        )
        .await
        .expect("answers");
        assert!(
            matches!(refused, Err(FerryError::InvalidInput { .. })),
            "{refused:?}"
        );
        assert!(std::path::Path::new(&path).exists());
        drop(other);
        tokio::time::timeout(
            GUARD,
            ffi::database::logout(Some(client.clone()), db.clone()),
        )
        .await
        .expect("answers")
        .unwrap();
        assert!(!std::path::Path::new(&path).exists(), "deleted");
        assert!(!std::path::Path::new(&format!("{path}-wal")).exists());
        // The host still holds both objects.
        assert!(matches!(
            db.get("tasks".into(), "t1".into()),
            Err(FerryError::Closed { .. })
        ));
        assert!(matches!(
            client.sync().await,
            Err(FerryError::Closed { .. })
        ));
        assert!(
            !db.add_change_listener(Arc::new(Bursts(Mutex::default())))
                .is_active()
        );
        db.flush_events().await;
        assert_eq!(db.client_id().len(), 36, "what needs no file still answers");
    }

    struct Lines(Mutex<Vec<String>>);

    impl ffi::Logger for Lines {
        fn log(&self, _level: LogLevel, _target: String, message: String) {
            self.0.lock().push(message);
        }
    }

    #[test]
    fn the_logger_can_be_unset_and_is_released() {
        let lines = Arc::new(Lines(Mutex::default()));
        ffi::logger::set_logger(lines.clone(), LogLevel::Info).unwrap();
        assert_eq!(Arc::strong_count(&lines), 2, "held by the core");
        ffi::logger::unset_logger();
        assert_eq!(Arc::strong_count(&lines), 1, "released");
        tracing::error!("after unset");
        assert!(lines.0.lock().iter().all(|l| !l.contains("after unset")));
    }
}
