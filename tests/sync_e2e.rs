//! End-to-end sync against an in-process ferry-server (SQLite, or PostgreSQL
//! with FERRY_E2E_BACKEND=postgres).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use ferry::sync::{OfflineBehavior, SyncConfig, SyncPhase, WriteMode};
use ferry::transport::{StaticToken, TokenProvider, TransportError};
use ferry::{ChangeEvent, ChangeSource, EntryState, Error, WriteOp};
use parking_lot::Mutex;
use rusqlite::OptionalExtension;
use serde_json::json;
use support::*;

/// The server refuses `tasks.notes` longer than 10 characters; the app does not know.
fn strict_notes() -> ferry_server::ServerConfig {
    let mut c = ferry_server::ServerConfig::dev();
    c.collections
        .get_mut("tasks")
        .unwrap()
        .fields
        .get_mut("notes")
        .unwrap()
        .max_length = Some(10);
    c
}

const TOO_LONG: &str = "far more than ten characters";

fn create(id: &str, title: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": title})),
    }
}

fn update(id: &str, fields: serde_json::Value) -> WriteOp {
    WriteOp::Update {
        collection: "tasks".into(),
        id: id.into(),
        fields: obj(fields),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_converge_with_per_column_merge_and_deletes() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    let b = device(&server.url(), ALICE);
    a.client
        .write(
            vec![create("t1", "buy milk"), create("t2", "call bob")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(contents(&b.store, "tasks"), contents(&a.store, "tasks"));
    // Offline edits of different columns of one record, and a delete.
    a.store
        .update("tasks", "t1", obj(json!({"title": "buy oat milk"})))
        .unwrap();
    b.store
        .update("tasks", "t1", obj(json!({"done": true})))
        .unwrap();
    b.store.delete("tasks", "t2").unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    a.client.sync().await.unwrap();
    let t1 = a.store.get("tasks", "t1").unwrap().unwrap();
    assert_eq!(t1.fields["title"], "buy oat milk");
    assert_eq!(t1.fields["done"], true);
    assert!(a.store.get("tasks", "t2").unwrap().is_none());
    assert_eq!(contents(&a.store, "tasks"), contents(&b.store, "tasks"));
    assert!(a.store.outbox().unwrap().is_empty() && b.store.outbox().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_conflict_is_resolved_and_requeued() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    let b = device(&server.url(), ALICE);
    a.client
        .write(vec![create("t", "v1")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    a.client
        .write(
            vec![update("t", json!({"title": "from a"}))],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    // B pushes without pulling first: its base version is stale → conflict.
    b.store
        .update("tasks", "t", obj(json!({"priority": 5})))
        .unwrap();
    let report = b.client.push_all().await.unwrap();
    assert_eq!(report.conflicts, 1, "{report:?}");
    assert_eq!(
        report.applied, 1,
        "re-queued under a new id and applied: {report:?}"
    );
    let t = b.store.get("tasks", "t").unwrap().unwrap();
    assert_eq!(
        (t.fields["title"].clone(), t.fields["priority"].clone()),
        (json!("from a"), json!(5))
    );
    a.client.sync().await.unwrap();
    assert_eq!(contents(&a.store, "tasks"), contents(&b.store, "tasks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_item_rolls_back_is_quarantined_and_does_not_block_the_rest() {
    let server = start_server_with(strict_notes()).await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(vec![create("ok1", "fine")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    let rollbacks: Arc<Mutex<Vec<ChangeEvent>>> = Arc::default();
    let sink = rollbacks.clone();
    let _sub = a
        .store
        .add_change_listener(Arc::new(move |e: &ChangeEvent| {
            if e.source == ChangeSource::Rollback {
                sink.lock().push(e.clone())
            }
        }));
    a.store
        .update(
            "tasks",
            "ok1",
            obj(json!({"notes": TOO_LONG, "title": "changed"})),
        )
        .unwrap();
    a.store
        .create("tasks", obj(json!({"id": "bad", "notes": TOO_LONG})))
        .unwrap();
    a.store
        .create("tasks", obj(json!({"id": "ok2", "title": "also fine"})))
        .unwrap();
    let report = a.client.sync().await.unwrap().pushed;
    assert_eq!((report.applied, report.rejected), (1, 2), "{report:?}");
    // ok1 is back at the server's state; `bad` never existed there; ok2 synced.
    let ok1 = a.store.get("tasks", "ok1").unwrap().unwrap();
    assert_eq!(ok1.fields["title"], "fine");
    assert_eq!(ok1.fields["notes"], serde_json::Value::Null);
    assert!(!ok1.status.is_pending());
    assert!(a.store.get("tasks", "bad").unwrap().is_none());
    assert!(
        !a.store
            .get("tasks", "ok2")
            .unwrap()
            .unwrap()
            .status
            .is_pending()
    );
    let q = a.store.quarantine().unwrap();
    assert_eq!(q.len(), 2);
    assert!(q.iter().all(|e| {
        e.state == EntryState::Quarantined
            && e.last_error
                .as_deref()
                .unwrap()
                .starts_with("invalid_record")
    }));
    a.store.flush_events();
    let rb = rollbacks.lock().clone();
    assert_eq!(rb.len(), 1, "one rollback event for the batch");
    let tasks = rb[0].collection("tasks").unwrap();
    assert_eq!(tasks.deleted, vec!["bad".to_string()]);
    assert_eq!(tasks.upserted[0]["id"], "ok1");
    assert_eq!(a.client.status().quarantined, 2);
    // The app discards one and retries the other (still rejected → back in quarantine).
    a.store.discard_quarantined(&q[0].mutation_id).unwrap();
    a.store.retry_quarantined(&q[1].mutation_id).unwrap();
    let report = a.client.sync().await.unwrap().pushed;
    assert_eq!(report.rejected, 1);
    assert_eq!(a.store.quarantine().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backs_off_one_item_while_the_others_sync() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.transport.retry_records.lock().insert("slow".into());
    a.client
        .write(
            vec![create("slow", "x"), create("fast", "y")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    let report = a.client.sync().await.unwrap().pushed;
    assert_eq!((report.applied, report.retried), (1, 1));
    let ob = a.store.outbox().unwrap();
    assert_eq!(ob.len(), 1);
    assert_eq!(ob[0].record_id, "slow");
    assert!(
        ob[0].next_attempt_at > a.store.clock().now_ms() + 30_000,
        "server's retry_after is honoured"
    );
    // Not due yet: a second sync does not resend it.
    a.transport.retry_records.lock().clear();
    assert_eq!(a.client.sync().await.unwrap().pushed.applied, 0);
    assert_eq!(a.transport.deliveries("slow"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_push_response_is_retried_without_applying_twice() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    let b = device(&server.url(), ALICE);
    a.client
        .write(vec![create("t", "once")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.transport.lose_push_response.store(true, Ordering::SeqCst);
    assert!(matches!(a.client.sync().await, Err(Error::Offline(_))));
    // Edits made meanwhile do not fold into the sent entry.
    a.store
        .update("tasks", "t", obj(json!({"priority": 1})))
        .unwrap();
    assert_eq!(a.store.outbox().unwrap().len(), 2);
    // The failed push backed both entries off: send them now.
    a.store.retry_now().unwrap();
    let report = a.client.sync().await.unwrap().pushed;
    assert_eq!(
        report.applied, 2,
        "the create (answered from its stored outcome), then the update"
    );
    assert!(a.store.outbox().unwrap().is_empty());
    b.client.sync().await.unwrap();
    let t = b.store.get("tasks", "t").unwrap().unwrap();
    assert_eq!(
        (t.fields["title"].clone(), t.fields["priority"].clone()),
        (json!("once"), json!(1))
    );
    assert_eq!(t.version, Some(2), "create applied once, update once");
}

/// Alice's device, pushing `n` mutations a request.
fn device_pushing_batches_of(url: &str, n: usize) -> Device {
    let config = SyncConfig {
        push_batch: n,
        ..SyncConfig::default()
    };
    device_with(url, Arc::new(StaticToken(ALICE.into())), schema(), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_cut_off_between_batches_loses_nothing_and_sends_nothing_twice() {
    let server = start_server().await;
    let a = device_pushing_batches_of(&server.url(), 3);
    let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let ops = ids.iter().map(|id| create(id, id)).collect();
    a.client.write(ops, WriteMode::OfflineFirst).await.unwrap();
    // Two requests get through; the third (sent while the fourth batch was being
    // prepared) fails.
    *a.transport.fail_push_after.lock() = Some(2);
    assert!(matches!(a.client.push_all().await, Err(Error::Offline(_))));
    let outbox = a.store.outbox().unwrap();
    assert!(
        outbox.iter().all(|e| e.state != EntryState::InFlight),
        "nothing is left in flight: {outbox:?}"
    );
    assert_eq!(
        a.client.status().pending,
        4,
        "two batches of 3 were applied"
    );
    assert_eq!(a.store.outbox().unwrap().len(), 4);
    *a.transport.fail_push_after.lock() = None;
    // The failed batch is backed off: send it now.
    a.store.retry_now().unwrap();
    a.client.push_all().await.unwrap();
    assert!(a.store.outbox().unwrap().is_empty());
    for id in &ids {
        assert_eq!(
            a.transport.deliveries(id),
            1,
            "{id} reached the server once"
        );
    }
    let b = device(&server.url(), ALICE);
    b.client.sync().await.unwrap();
    assert_eq!(contents(&a.store, "tasks"), contents(&b.store, "tasks"));
    assert_eq!(contents(&b.store, "tasks").len(), 10);
}

/// A push of several batches, each applied in the transaction that prepares the
/// next: rejections, a conflict and plain creates spread over the batches all
/// end where a one-batch push would leave them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_lands_when_batches_are_pipelined() {
    let server = start_server_with(strict_notes()).await;
    let a = device_pushing_batches_of(&server.url(), 2);
    let b = device(&server.url(), ALICE);
    a.client
        .write(vec![create("c", "v1")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    b.store
        .update("tasks", "c", obj(json!({"title": "from b"})))
        .unwrap();
    b.client.sync().await.unwrap();
    // A edits `c` on a stale base (a conflict in the first batch), then creates
    // seven tasks, two of which the server rejects (in the first and third batch).
    a.store
        .update("tasks", "c", obj(json!({"priority": 7})))
        .unwrap();
    for i in 0..7 {
        let mut fields = json!({"id": format!("n{i}"), "title": format!("new {i}")});
        if i == 0 || i == 4 {
            fields["notes"] = json!(TOO_LONG);
        }
        a.store.create("tasks", obj(fields)).unwrap();
    }
    let report = a.client.push_all().await.unwrap();
    assert_eq!(
        (report.applied, report.conflicts, report.rejected),
        (6, 1, 2),
        "five creates and the re-queued edit applied: {report:?}"
    );
    let outbox = a.store.outbox().unwrap();
    assert!(
        outbox.iter().all(|e| e.state == EntryState::Quarantined),
        "only the rejected are left: {outbox:?}"
    );
    assert_eq!(outbox.len(), 2);
    assert!(a.store.get("tasks", "n0").unwrap().is_none());
    assert!(a.store.get("tasks", "n4").unwrap().is_none());
    let c = a.store.get("tasks", "c").unwrap().unwrap();
    assert_eq!(
        (c.fields["title"].clone(), c.fields["priority"].clone()),
        (json!("from b"), json!(7))
    );
    assert_eq!(a.client.status().pending, 0);
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(contents(&a.store, "tasks"), contents(&b.store, "tasks"));
    assert_eq!(contents(&b.store, "tasks").len(), 6);
    for i in [1, 2, 3, 5, 6] {
        assert_eq!(
            a.transport.deliveries(&format!("n{i}")),
            1,
            "n{i} sent once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_resumes_at_every_page_boundary_and_publishes_all_or_nothing() {
    let server = start_server().await;
    let seeder = device(&server.url(), ALICE);
    let ops: Vec<WriteOp> = (0..50).map(|i| create(&format!("r{i:02}"), "x")).collect();
    seeder
        .client
        .write(ops, WriteMode::OfflineFirst)
        .await
        .unwrap();
    seeder.client.sync().await.unwrap();
    let config = SyncConfig {
        page_size: 10,
        ..SyncConfig::default()
    };
    for k in 0..5 {
        let d = device_with(
            &server.url(),
            Arc::new(StaticToken(ALICE.into())),
            schema(),
            config.clone(),
        );
        *d.transport.fail_pull_after.lock() = Some(k);
        assert!(
            matches!(d.client.sync().await, Err(Error::Offline(_))),
            "k={k}"
        );
        assert!(
            d.store
                .query("tasks", &Default::default())
                .unwrap()
                .is_empty(),
            "nothing visible before the pull completes (k={k})"
        );
        assert_eq!(d.client.status().phase, SyncPhase::Offline);
        *d.transport.fail_pull_after.lock() = None;
        d.transport.pulls.store(0, Ordering::SeqCst);
        let report = d.client.sync().await.unwrap();
        assert_eq!(
            report.pages as usize,
            d.transport.pulls.load(Ordering::SeqCst)
        );
        assert_eq!(
            report.pages,
            5 - k as u64,
            "resumed after the {k} pages staged: only the rest is fetched"
        );
        assert_eq!(
            d.store.query("tasks", &Default::default()).unwrap().len(),
            50,
            "k={k}"
        );
        if k == 0 {
            let st = d.client.status();
            assert_eq!(
                (st.phase, st.pages_done, st.records_done),
                (SyncPhase::Idle, 5, 50),
                "{st:?}"
            );
            assert_eq!(st.server_total, Some(50));
            assert!(st.bytes_done > 50 * 20, "{st:?}");
            assert!(st.last_sync_completed_at.is_some() && st.last_error.is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_do_not_come_back_as_remote_changes() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(
            vec![create("t1", "a"), create("t2", "b")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    a.store.flush_events();
    let events: Arc<Mutex<Vec<ChangeEvent>>> = Arc::default();
    let sink = events.clone();
    let _sub = a
        .store
        .add_change_listener(Arc::new(move |e: &ChangeEvent| sink.lock().push(e.clone())));
    let report = a.client.sync().await.unwrap();
    a.store.flush_events();
    assert_eq!(
        report.pulled, 0,
        "the server skipped our own writes: {report:?}"
    );
    assert!(events.lock().is_empty(), "{:?}", events.lock());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mode_ever_pushes_a_change_twice() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.client
        .write(vec![create("off", "1")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    a.client
        .write(vec![create("opt", "2")], WriteMode::Optimistic)
        .await
        .unwrap();
    assert_eq!(a.transport.deliveries("opt"), 1, "pushed at once");
    let r = a
        .client
        .write(
            vec![create("onl", "3")],
            WriteMode::Online(OfflineBehavior::Fail),
        )
        .await
        .unwrap();
    let onl = r[0].clone().unwrap();
    assert!(!onl.status.is_pending());
    assert_eq!(onl.version, Some(1));
    assert!(
        a.store.outbox().unwrap().is_empty(),
        "a confirmed write never enters the outbox"
    );
    a.client.sync().await.unwrap();
    a.client.sync().await.unwrap();
    for id in ["off", "opt", "onl"] {
        assert_eq!(a.transport.deliveries(id), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_mode_offline_fails_or_queues_as_asked() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    a.transport.offline.store(true, Ordering::SeqCst);
    let e = a
        .client
        .write(
            vec![create("x", "1")],
            WriteMode::Online(OfflineBehavior::Fail),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Offline(_)), "{e}");
    assert!(
        a.store.get("tasks", "x").unwrap().is_none(),
        "nothing changed"
    );
    a.client
        .write(
            vec![create("y", "1")],
            WriteMode::Online(OfflineBehavior::Queue),
        )
        .await
        .unwrap();
    assert!(
        a.store
            .get("tasks", "y")
            .unwrap()
            .unwrap()
            .status
            .is_pending()
    );
    // Optimistic writes while unreachable stay queued, then sync once.
    a.client
        .write(vec![create("z", "1")], WriteMode::Optimistic)
        .await
        .unwrap();
    a.transport.offline.store(false, Ordering::SeqCst);
    a.client.set_online(true);
    // Entries backed off after the failed optimistic push: send them now.
    a.store.retry_now().unwrap();
    a.client.sync().await.unwrap();
    assert!(a.store.outbox().unwrap().is_empty());
    assert_eq!(
        (a.transport.deliveries("y"), a.transport.deliveries("z")),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_write_rejected_changes_nothing_and_optimistic_rejection_rolls_back() {
    let server = start_server_with(strict_notes()).await;
    let a = device(&server.url(), ALICE);
    let bad = WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": "b1", "notes": TOO_LONG})),
    };
    let e = a
        .client
        .write(vec![bad], WriteMode::Online(OfflineBehavior::Fail))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Rejected { code, .. } if code == "invalid_record"),
        "{e}"
    );
    assert!(a.store.get("tasks", "b1").unwrap().is_none());
    assert!(a.store.outbox().unwrap().is_empty());
    let bad = WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": "b2", "notes": TOO_LONG})),
    };
    let e = a
        .client
        .write(vec![bad], WriteMode::Optimistic)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Rejected { .. }), "{e}");
    assert!(a.store.get("tasks", "b2").unwrap().is_none(), "rolled back");
}

struct RefreshingTokens {
    calls: AtomicUsize,
    refreshes: AtomicUsize,
    good_after_refresh: bool,
}

#[async_trait]
impl TokenProvider for RefreshingTokens {
    async fn token(&self, refresh: bool) -> Result<String, TransportError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if refresh {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
        }
        // As a real provider does, it keeps the token a refresh got.
        if self.good_after_refresh && self.refreshes.load(Ordering::SeqCst) > 0 {
            return Ok(ALICE.into());
        }
        Ok("expired-token".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_the_token_once_and_retries() {
    let server = start_server().await;
    let tokens = Arc::new(RefreshingTokens {
        calls: 0.into(),
        refreshes: 0.into(),
        good_after_refresh: true,
    });
    let a = device_with(
        &server.url(),
        tokens.clone(),
        schema(),
        SyncConfig::default(),
    );
    a.store.create("tasks", obj(json!({"id": "t"}))).unwrap();
    a.client.sync().await.unwrap();
    assert_eq!(
        tokens.refreshes.load(Ordering::SeqCst),
        1,
        "one refresh, then the new token serves the pull and the push"
    );
    assert!(a.store.outbox().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecoverable_auth_failure_stops_with_a_typed_status_and_keeps_data() {
    let server = start_server().await;
    let tokens = Arc::new(RefreshingTokens {
        calls: 0.into(),
        refreshes: 0.into(),
        good_after_refresh: false,
    });
    let a = device_with(
        &server.url(),
        tokens.clone(),
        schema(),
        SyncConfig::default(),
    );
    a.store
        .create("tasks", obj(json!({"id": "t", "title": "keep me"})))
        .unwrap();
    let e = a.client.sync().await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized(_)), "{e}");
    assert_eq!(
        tokens.refreshes.load(Ordering::SeqCst),
        1,
        "refreshed exactly once"
    );
    let st = a.client.status();
    assert!(st.auth_failed);
    assert_eq!(st.phase, SyncPhase::Error);
    assert_eq!(
        a.store.get("tasks", "t").unwrap().unwrap().fields["title"],
        "keep me"
    );
    assert_eq!(a.store.outbox().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sync_request_joins_the_running_one() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    let (r1, r2) = tokio::join!(a.client.sync(), a.client.sync());
    assert_eq!(r1.unwrap(), r2.unwrap());
    assert_eq!(
        a.transport.pulls.load(Ordering::SeqCst),
        1,
        "one pull served both"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_rows_leave_the_device_and_anchors_count_the_server() {
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    let b = device(&server.url(), ALICE);
    a.client
        .write(
            vec![create("keep", "k"), create("old", "o")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    assert_eq!(
        b.store
            .anchors()
            .unwrap()
            .iter()
            .find(|x| x.collection == "tasks")
            .unwrap()
            .server_total,
        Some(2)
    );
    a.client
        .write(
            vec![update("old", json!({"archived": true}))],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    let events = Arc::new(Mutex::new(Vec::<ChangeEvent>::new()));
    let sink = events.clone();
    let _sub = b
        .store
        .add_change_listener(Arc::new(move |e: &ChangeEvent| sink.lock().push(e.clone())));
    b.client.sync().await.unwrap();
    b.store.flush_events();
    assert!(
        b.store.get("tasks", "old").unwrap().is_none(),
        "archived rows are evicted"
    );
    let tasks: Vec<_> = events
        .lock()
        .iter()
        .filter_map(|e| e.collection("tasks").cloned())
        .collect();
    assert_eq!(tasks.len(), 1, "one event for the publish: {tasks:?}");
    assert_eq!(tasks[0].evicted, vec!["old".to_string()]);
    assert!(
        tasks[0].deleted.is_empty(),
        "an eviction is reported apart from deletes"
    );
    assert!(
        b.store.outbox().unwrap().is_empty(),
        "an eviction is not a user delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_resolver_decides_rebased_conflicts() {
    struct KeepLongerTitle;
    impl ferry::sync::ConflictResolver for KeepLongerTitle {
        fn resolve(
            &self,
            _c: &str,
            local: &ferry::Record,
            server: &ferry_protocol::ServerRecord,
        ) -> Result<ferry::Fields, String> {
            let mut merged = server.fields.clone();
            let (l, s) = (
                local.fields["title"].as_str().unwrap_or(""),
                server.fields["title"].as_str().unwrap_or(""),
            );
            if l.len() > s.len() {
                merged.insert("title".into(), local.fields["title"].clone());
            }
            Ok(merged)
        }
    }
    let server = start_server().await;
    let a = device(&server.url(), ALICE);
    let b = device(&server.url(), ALICE);
    b.client.set_resolver(Arc::new(KeepLongerTitle));
    a.client
        .write(vec![create("t", "seed")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    a.store
        .update("tasks", "t", obj(json!({"title": "a much longer title"})))
        .unwrap();
    b.store
        .update("tasks", "t", obj(json!({"title": "short", "priority": 9})))
        .unwrap();
    a.client.sync().await.unwrap();
    b.client.sync().await.unwrap();
    let t = b.store.get("tasks", "t").unwrap().unwrap();
    assert_eq!(
        t.fields["title"], "a much longer title",
        "the resolver kept the server's longer title"
    );
    assert_eq!(
        t.fields["priority"],
        serde_json::Value::Null,
        "this resolver drops other local columns too"
    );
    assert!(
        b.store.outbox().unwrap().is_empty(),
        "nothing differs from the server: nothing to push"
    );
    a.client.sync().await.unwrap();
    assert_eq!(contents(&a.store, "tasks"), contents(&b.store, "tasks"));
}

/// Names of the indexes of `table` in the database file of `store`.
fn index_names(store: &ferry::Store, table: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 ORDER BY name",
        )
        .unwrap();
    stmt.query_map([table], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A device of alice that created tasks `t0`… and pushed them.
async fn device_with_synced_tasks(url: &str, n: usize) -> Device {
    let a = device(url, ALICE);
    let ops = (0..n).map(|i| create(&format!("t{i}"), "from a")).collect();
    a.client.write(ops, WriteMode::OfflineFirst).await.unwrap();
    a.client.sync().await.unwrap();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_into_an_empty_collection_builds_it_then_later_syncs_merge() {
    let server = start_server().await;
    let a = device_with_synced_tasks(&server.url(), 30).await;

    let b = device(&server.url(), ALICE);
    b.client.sync().await.unwrap();
    assert_eq!(contents(&b.store, "tasks"), contents(&a.store, "tasks"));
    // `tasks` was built from the staged rows, its indexes made afterwards under
    // their declared names, and they serve queries as before.
    let names = index_names(&b.store, "tasks");
    assert_eq!(
        names,
        [
            "_ferry_tasks_pending",
            "idx_tasks_done_priority",
            "idx_tasks_project"
        ]
    );
    assert!(index_names(&b.store, "_ferry_build_tasks").is_empty());
    // The staging file is emptied once published.
    let mut stage = b.store.path().as_os_str().to_owned();
    stage.push("-ferry-stage");
    let staged: i64 = rusqlite::Connection::open(&stage)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM up_tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(staged, 0);
    let synced = ferry::Query::from_value(
        &json!({"where": {"column": "_status", "op": "eq", "value": "synced"}}),
    )
    .unwrap();
    assert_eq!(b.store.count("tasks", &synced).unwrap(), 30);
    let project =
        ferry::Query::from_value(&json!({"where": {"column": "project", "op": "is_null"}}))
            .unwrap();
    assert_eq!(b.store.count("tasks", &project).unwrap(), 30);

    // Later changes go through the ordinary merge.
    a.client
        .write(
            vec![create("late", "later"), update("t1", json!({"done": true}))],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    a.client.sync().await.unwrap();
    b.client
        .write(vec![create("mine", "from b")], WriteMode::OfflineFirst)
        .await
        .unwrap();
    b.client.sync().await.unwrap();
    a.client.sync().await.unwrap();
    assert_eq!(contents(&b.store, "tasks"), contents(&a.store, "tasks"));
    assert_eq!(contents(&b.store, "tasks").len(), 32);
    assert_eq!(index_names(&b.store, "tasks"), names);
}

fn stage_file(store: &ferry::Store) -> std::path::PathBuf {
    let mut stage = store.path().as_os_str().to_owned();
    stage.push("-ferry-stage");
    stage.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_file_that_cannot_be_read_or_is_published_already_is_discarded_at_open() {
    let server = start_server().await;
    let _a = device_with_synced_tasks(&server.url(), 5).await;
    let b = device(&server.url(), ALICE);
    b.client.sync().await.unwrap();
    let (path, stage) = (b.store.path().to_path_buf(), stage_file(&b.store));
    // Emptied after the publish: no rows, and no key but the schema (not even
    // the order of the published pull's rows).
    let conn = rusqlite::Connection::open(&stage).unwrap();
    let keys: Vec<String> = conn
        .prepare("SELECT key FROM meta ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(keys, ["schema"]);
    // A crash between the publish's commit and the emptying: the staged pages
    // of the published generation are still there.
    let published: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT value FROM _ferry_meta WHERE key = 'published_generation'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO meta VALUES ('generation', '{published}'), ('cursor', 'bogus'), ('pages', '1');
         INSERT INTO up_tasks (id, title, done, _version) VALUES ('ghost', 'published already', 0, 9);"
    ))
    .unwrap();
    drop(conn);
    b.client.stop();
    let store = ferry::Store::open(&path, schema()).unwrap();
    let staged: i64 = rusqlite::Connection::open(&stage)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM up_tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(staged, 0, "the published generation was discarded");
    drop(store);
    // A staging file that is not a database at all.
    std::fs::write(&stage, b"not a database, half written by a dying disk").unwrap();
    let store = ferry::Store::open(&path, schema()).unwrap();
    let client = ferry::sync::SyncClient::new(
        store.clone(),
        Arc::new(ferry::transport::HttpTransport::new(&server.url()).unwrap()),
        Arc::new(ferry::transport::StaticToken(ALICE.into())),
        ferry::sync::SyncConfig::default(),
    )
    .unwrap();
    let report = client.sync().await.unwrap();
    assert_eq!(report.pulled, 0, "nothing new since the published cursor");
    assert_eq!(contents(&store, "tasks").len(), 5);
    assert!(store.get("tasks", "ghost").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_with_local_records_merges_instead_of_swapping() {
    let server = start_server().await;
    let a = device_with_synced_tasks(&server.url(), 10).await;

    let b = device(&server.url(), ALICE);
    b.client
        .write(
            vec![create("offline", "made before the first sync")],
            WriteMode::OfflineFirst,
        )
        .await
        .unwrap();
    b.client.sync().await.unwrap();
    a.client.sync().await.unwrap();
    assert_eq!(contents(&b.store, "tasks").len(), 11);
    assert_eq!(contents(&b.store, "tasks"), contents(&a.store, "tasks"));
    assert_eq!(
        index_names(&b.store, "tasks"),
        [
            "_ferry_tasks_pending",
            "idx_tasks_done_priority",
            "idx_tasks_project"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_drops_an_index_of_a_collection_swapped_in_by_an_older_ferry() {
    let server = start_server().await;
    let _a = device_with_synced_tasks(&server.url(), 2).await;
    let b = device(&server.url(), ALICE);
    b.client.sync().await.unwrap();
    let path = b.store.path().to_path_buf();
    b.client.stop();
    // Before staging format 3 a first sync swapped the staging table in, whose
    // indexes carry a `#…` suffix.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            r#"DROP INDEX idx_tasks_project; CREATE INDEX "idx_tasks_project#1a2b3c" ON tasks(project);"#,
        )
        .unwrap();

    let mut v2: serde_json::Value =
        serde_json::from_str(include_str!("../examples/tasks.schema.json")).unwrap();
    v2["version"] = json!(2);
    v2["collections"][0]["indexes"] = json!([{ "columns": ["done", "priority"] }]);
    let store =
        ferry::Store::open(&path, ferry::Schema::from_json(&v2.to_string()).unwrap()).unwrap();
    let names = index_names(&store, "tasks");
    assert!(
        !names.iter().any(|n| n.starts_with("idx_tasks_project")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("idx_tasks_done_priority")),
        "{names:?}"
    );
    assert_eq!(
        store.get("tasks", "t1").unwrap().unwrap().fields["title"],
        "from a"
    );
}

#[test]
fn staging_tables_of_an_older_layout_are_dropped_and_their_pull_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    drop(ferry::Store::open(&path, schema()).unwrap());
    {
        // What staging format 2 left behind in the database: staging tables and
        // an unpublished pull.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE _ferry_stage_tasks (id TEXT PRIMARY KEY NOT NULL, title TEXT,
               _version INTEGER, _status TEXT) WITHOUT ROWID;
             CREATE TABLE _ferry_gone_tasks (id TEXT PRIMARY KEY NOT NULL, _kind TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO _ferry_stage_tasks VALUES ('x', 'staged', 1, 'synced');
             UPDATE _ferry_meta SET value = '2' WHERE key = 'staging_format';
             INSERT OR REPLACE INTO _ferry_meta (key, value) VALUES ('staged_cursor', 'c1');",
        )
        .unwrap();
    }
    let store = ferry::Store::open(&path, schema()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let left: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE name LIKE '_ferry_stage%' OR name LIKE '_ferry_gone%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let staged: Option<String> = conn
        .query_row(
            "SELECT value FROM _ferry_meta WHERE key = 'staged_cursor'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
    assert_eq!(
        staged, None,
        "the interrupted pull restarts from the published cursor"
    );
    assert!(store.get("tasks", "x").unwrap().is_none());
}
