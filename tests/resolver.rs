//! The app's conflict resolver runs outside the writer lock, its answers are
//! re-checked in the transaction, and one rule covers its failures.
//!
//! A host resolver (a JS function under React Native) that ran inside the write
//! transaction would deadlock with a host thread waiting for the writer lock. So
//! these resolvers call back into the store, which would hang if the lock were
//! held: the sync runs under a generous deadlock guard (not a timing bound).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry::sync::{ConflictResolver, MAX_RESOLVE_ROUNDS, MergeRule, SyncConfig, WriteMode};
use ferry::transport::StaticToken;
use ferry::{Fields, Record, Store, WriteOp};
use ferry_protocol::ServerRecord;
use parking_lot::Mutex;
use serde_json::json;
use support::*;

/// Fails the test instead of hanging if a sync deadlocks: the future runs on a
/// runtime of its own, on a thread of its own that a deadlock leaves behind.
async fn guarded<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(f));
    });
    tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .expect("deadlock: the sync did not finish")
        .unwrap()
}

fn create(id: &str, title: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": title})),
    }
}

/// Two devices of one user with record `t` synced on both; then `a` changes the
/// title on the server and `b` changes it locally: `b`'s next sync must merge.
async fn conflict_on_b(server: &Server, config: SyncConfig) -> (Device, Device) {
    let a = device(&server.url(), ALICE);
    let b = device_with(
        &server.url(),
        Arc::new(StaticToken(ALICE.into())),
        schema(),
        config,
    );
    a.client
        .write(vec![create("t", "seed")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    a.store
        .update("tasks", "t", obj(json!({"title": "from a", "priority": 1})))
        .unwrap();
    a.client.sync().await.unwrap();
    b.store
        .update("tasks", "t", obj(json!({"title": "from b"})))
        .unwrap();
    (a, b)
}

/// Joins both titles; on its first call it also writes to the store it resolves
/// for, through the store's public API (which needs the writer lock).
struct Joining {
    store: Mutex<Option<Store>>,
    calls: AtomicUsize,
    /// Each call writes this record (a local write racing the resolution).
    touch: Option<&'static str>,
    /// How many calls touch it.
    touches: usize,
}

impl ConflictResolver for Joining {
    fn resolve(&self, _c: &str, local: &Record, server: &ServerRecord) -> Result<Fields, String> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let store = self.store.lock().clone().expect("store set");
        // Reading and writing the store from inside the resolver: it holds no lock.
        let other = store.get("tasks", "other").map_err(|e| e.to_string())?;
        if let (Some(id), true) = (self.touch, n <= self.touches) {
            store
                .update("tasks", id, obj(json!({"title": format!("local {n}")})))
                .map_err(|e| e.to_string())?;
        } else if other.is_none() {
            store
                .create(
                    "tasks",
                    obj(json!({"id": "other", "title": "written by the resolver"})),
                )
                .map_err(|e| e.to_string())?;
        }
        let mut merged = server.fields.clone();
        let joined = format!(
            "{}+{}",
            local.fields["title"].as_str().unwrap_or(""),
            server.fields["title"].as_str().unwrap_or("")
        );
        merged.insert("title".into(), joined.into());
        Ok(merged)
    }
}

fn joining(touch: Option<&'static str>, touches: usize) -> Arc<Joining> {
    Arc::new(Joining {
        store: Mutex::new(None),
        calls: AtomicUsize::new(0),
        touch,
        touches,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_writes_to_the_store_does_not_deadlock_a_publish() {
    let server = start_server().await;
    let (_a, b) = conflict_on_b(&server, SyncConfig::default()).await;
    let r = joining(None, 0);
    *r.store.lock() = Some(b.store.clone());
    b.client.set_resolver(r.clone());
    let c = b.client.clone();
    guarded(async move { c.sync().await }).await.unwrap();
    assert_eq!(r.calls.load(Ordering::SeqCst), 1);
    let t = b.store.get("tasks", "t").unwrap().unwrap();
    assert_eq!(t.fields["title"], "from b+from a");
    assert_eq!(
        t.fields["priority"], 1,
        "the server's other fields came along"
    );
    assert!(
        b.store.get("tasks", "other").unwrap().is_some(),
        "the resolver's own write committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_writes_to_the_store_does_not_deadlock_a_push_conflict() {
    let server = start_server().await;
    let (_a, b) = conflict_on_b(&server, SyncConfig::default()).await;
    let r = joining(None, 0);
    *r.store.lock() = Some(b.store.clone());
    b.client.set_resolver(r.clone());
    // A push without a pull first: the server answers `conflict` with its row.
    let c = b.client.clone();
    guarded(async move { c.push_all().await }).await.unwrap();
    assert_eq!(r.calls.load(Ordering::SeqCst), 1);
    let t = b.store.get("tasks", "t").unwrap().unwrap();
    assert_eq!(t.fields["title"], "from b+from a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_during_the_resolution_makes_it_run_again_on_the_new_state() {
    let server = start_server().await;
    let (_a, b) = conflict_on_b(&server, SyncConfig::default()).await;
    // The first call writes the record it resolves: its answer is stale.
    let r = joining(Some("t"), 1);
    *r.store.lock() = Some(b.store.clone());
    b.client.set_resolver(r.clone());
    let c = b.client.clone();
    guarded(async move { c.sync().await }).await.unwrap();
    assert_eq!(r.calls.load(Ordering::SeqCst), 2, "resolved again");
    let t = b.store.get("tasks", "t").unwrap().unwrap();
    assert_eq!(
        t.fields["title"], "local 1+from a",
        "the second answer, made from the racing write, was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_always_go_stale_end_in_the_merge_rule() {
    let server = start_server().await;
    let (_a, b) = conflict_on_b(&server, SyncConfig::default()).await;
    let r = joining(Some("t"), usize::MAX);
    *r.store.lock() = Some(b.store.clone());
    b.client.set_resolver(r.clone());
    let c = b.client.clone();
    guarded(async move { c.sync().await }).await.unwrap();
    assert_eq!(r.calls.load(Ordering::SeqCst), MAX_RESOLVE_ROUNDS);
    let t = b.store.get("tasks", "t").unwrap().unwrap();
    assert_eq!(
        t.fields["title"],
        format!("local {MAX_RESOLVE_ROUNDS}"),
        "local changes win: the latest local title, pending, over the server's"
    );
    assert_eq!(t.fields["priority"], 1);
}

struct Failing;

impl ConflictResolver for Failing {
    fn resolve(&self, _c: &str, _l: &Record, _s: &ServerRecord) -> Result<Fields, String> {
        Err("the host threw".into())
    }
}

/// Answers a value of the wrong type for `priority` (an integer column).
struct Misfit;

impl ConflictResolver for Misfit {
    fn resolve(&self, _c: &str, _l: &Record, s: &ServerRecord) -> Result<Fields, String> {
        let mut f = s.fields.clone();
        f.insert("priority".into(), json!("not a number"));
        Ok(f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_misfit_resolver_gives_way_to_the_configured_merge_rule() {
    let cases: [(Arc<dyn ConflictResolver>, MergeRule, &str); 4] = [
        (Arc::new(Failing), MergeRule::LocalChangesWin, "from b"),
        (Arc::new(Failing), MergeRule::ServerWins, "from a"),
        (Arc::new(Misfit), MergeRule::LocalChangesWin, "from b"),
        (Arc::new(Misfit), MergeRule::ServerWins, "from a"),
    ];
    for (resolver, rule, title) in cases {
        let server = start_server().await;
        let config = SyncConfig {
            merge_rule: rule,
            ..Default::default()
        };
        let (a, b) = conflict_on_b(&server, config).await;
        b.client.set_resolver(resolver);
        b.client.sync().await.unwrap();
        let t = b.store.get("tasks", "t").unwrap().unwrap();
        assert_eq!(t.fields["title"], title, "{rule:?}");
        assert_eq!(t.fields["priority"], 1, "{rule:?}");
        a.client.sync().await.unwrap();
        assert_eq!(
            contents(&a.store, "tasks"),
            contents(&b.store, "tasks"),
            "{rule:?}"
        );
    }
}
