//! Background scheduling: a debounced push after local writes, nothing while
//! idle, nothing while offline or in the background, a sync when the network
//! returns, and backoff after failures. Runs against an in-memory transport so
//! that only the scheduler's behaviour is under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{StaticToken, Transport, TransportError};
use ferry::{Fields, Schema, Store};
use ferry_protocol::{
    MutationOutcome, MutationResult, PullPage, PullRequest, PushRequest, PushResponse,
};
use parking_lot::Mutex;

#[derive(Default)]
struct Memory {
    fail: AtomicBool,
    pulls: AtomicUsize,
    pushes: Mutex<Vec<usize>>,
    attempts: AtomicUsize,
}

#[async_trait]
impl Transport for Memory {
    async fn pull(&self, _t: &str, _r: &PullRequest) -> Result<PullPage, TransportError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(TransportError::Offline("down".into()));
        }
        self.pulls.fetch_add(1, Ordering::SeqCst);
        Ok(PullPage {
            cursor: "c".into(),
            has_more: false,
            ..Default::default()
        })
    }

    async fn push(
        &self,
        _t: &str,
        r: &PushRequest<ferry_protocol::RawFields>,
    ) -> Result<PushResponse, TransportError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(TransportError::Offline("down".into()));
        }
        self.pushes.lock().push(r.mutations.len());
        Ok(PushResponse {
            results: r
                .mutations
                .iter()
                .map(|m| MutationResult {
                    mutation_id: m.mutation_id.clone(),
                    outcome: MutationOutcome::Applied { version: 1 },
                })
                .collect(),
            write_checkpoint: "c".into(),
        })
    }
}

fn setup() -> (tempfile::TempDir, Store, SyncClient, Arc<Memory>) {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::from_json(include_str!("../examples/tasks.schema.json")).unwrap();
    let store = Store::open(dir.path().join("s.db"), schema).unwrap();
    let mem = Arc::new(Memory::default());
    let config = SyncConfig {
        push_debounce: Duration::from_millis(150),
        ..SyncConfig::default()
    };
    let client = SyncClient::new(
        store.clone(),
        mem.clone(),
        Arc::new(StaticToken("t".into())),
        config,
    )
    .unwrap();
    (dir, store, client, mem)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_a_burst_are_pushed_once_after_the_debounce_then_nothing_while_idle() {
    let (_d, store, client, mem) = setup();
    client.start();
    for _ in 0..5 {
        store.create("tasks", Fields::new()).unwrap();
    }
    until("the outbox drains", || store.outbox().unwrap().is_empty()).await;
    assert_eq!(
        *mem.pushes.lock(),
        vec![5],
        "one push carried the whole burst"
    );
    let pulls = mem.pulls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        mem.pulls.load(Ordering::SeqCst),
        pulls,
        "no polling while idle"
    );
    assert_eq!(mem.pushes.lock().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_and_background_hold_sync_until_the_host_says_otherwise() {
    let (_d, store, client, mem) = setup();
    client.start();
    client.set_online(false);
    store.create("tasks", Fields::new()).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        mem.attempts.load(Ordering::SeqCst),
        0,
        "nothing while offline"
    );
    client.set_foreground(false);
    client.set_online(true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        mem.attempts.load(Ordering::SeqCst),
        0,
        "nothing automatic in the background"
    );
    client.set_foreground(true);
    until("the write is pushed on return to the foreground", || {
        store.outbox().unwrap().is_empty()
    })
    .await;
    assert_eq!(*mem.pushes.lock(), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_instead_of_spinning() {
    let (_d, store, client, mem) = setup();
    mem.fail.store(true, Ordering::SeqCst);
    client.start();
    store.create("tasks", Fields::new()).unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let attempts = mem.attempts.load(Ordering::SeqCst);
    // Backoff of 0.5–1 s, then 1–2 s, then 2–4 s: a handful, not hundreds.
    assert!((2..=5).contains(&attempts), "{attempts} attempts in 3 s");
    mem.fail.store(false, Ordering::SeqCst);
    client.sync().await.unwrap();
    assert!(store.outbox().unwrap().is_empty() || store.outbox().unwrap()[0].next_attempt_at > 0);
}
