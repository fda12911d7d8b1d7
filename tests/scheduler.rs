//! Background scheduling: a debounced push after local writes, nothing while
//! idle, nothing while offline or in the background, a sync when the network
//! returns, and backoff after failures. Runs against an in-memory transport so
//! that only the scheduler's behaviour is under test, on the manual clock: the
//! test moves time and waits for the driver's decisions, it never sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry::sync::machine::Action;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{StaticToken, Transport, TransportError};
use ferry::{Fields, ManualClock, Schema, Store};
use ferry_protocol::{
    MutationOutcome, MutationResult, PullPage, PullRequest, PushRequest, PushResponse,
};
use parking_lot::Mutex;
use tokio::sync::watch;

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

const START: i64 = 1_800_000_000_000;
const DEBOUNCE: i64 = 150;

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    client: SyncClient,
    mem: Arc<Memory>,
    clock: Arc<ManualClock>,
    schedule: watch::Receiver<(u64, Action)>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::from_json(include_str!("../examples/tasks.schema.json")).unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let store = Store::open_with(&dir.path().join("s.db"), Some(schema), clock.clone()).unwrap();
    let mem = Arc::new(Memory::default());
    let config = SyncConfig {
        push_debounce: Duration::from_millis(DEBOUNCE as u64),
        seed: Some(11),
        ..SyncConfig::default()
    };
    let client = SyncClient::new(
        store.clone(),
        mem.clone(),
        Arc::new(StaticToken("t".into())),
        config,
    )
    .unwrap();
    let schedule = client.schedule();
    Setup {
        _dir: dir,
        store,
        client,
        mem,
        clock,
        schedule,
    }
}

impl Setup {
    /// Waits until the background machine has taken `steps` inputs in all, and
    /// returns what it decided last.
    async fn after_steps(&mut self, steps: u64) -> Action {
        self.schedule
            .wait_for(|(n, _)| *n >= steps)
            .await
            .expect("the driver runs")
            .1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_a_burst_are_pushed_once_after_the_debounce_then_nothing_while_idle() {
    let mut s = setup();
    s.client.start();
    for _ in 0..5 {
        s.store.create("tasks", Fields::new()).unwrap();
    }
    assert_eq!(
        s.after_steps(5).await,
        Action::WakeAt(START + DEBOUNCE),
        "one timer for the whole burst, from its first write"
    );
    assert!(
        s.mem.pushes.lock().is_empty(),
        "nothing before the debounce"
    );
    s.clock.advance(DEBOUNCE);
    // The timer fires (a sync), the sync finishes: idle, with no timer.
    assert_eq!(s.after_steps(7).await, Action::Idle);
    assert_eq!(
        *s.mem.pushes.lock(),
        vec![5],
        "one push carried the whole burst"
    );
    assert!(s.store.outbox().unwrap().is_empty());
    assert_eq!(s.mem.pulls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_and_background_hold_sync_until_the_host_says_otherwise() {
    let mut s = setup();
    s.client.start();
    s.client.set_online(false);
    s.store.create("tasks", Fields::new()).unwrap();
    assert_eq!(
        s.after_steps(2).await,
        Action::Idle,
        "no timer while offline"
    );
    s.client.set_foreground(false);
    s.client.set_online(true);
    assert_eq!(
        s.after_steps(4).await,
        Action::Idle,
        "nothing automatic in the background"
    );
    assert_eq!(s.mem.attempts.load(Ordering::SeqCst), 0);
    s.clock.advance(60_000);
    s.client.set_foreground(true);
    // The write has waited past its debounce: it syncs at once.
    assert_eq!(s.after_steps(6).await, Action::Idle);
    assert_eq!(*s.mem.pushes.lock(), vec![1]);
    assert!(s.store.outbox().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_longer_each_time_instead_of_spinning() {
    let mut s = setup();
    s.mem.fail.store(true, Ordering::SeqCst);
    s.client.start();
    s.store.create("tasks", Fields::new()).unwrap();
    let mut at = match s.after_steps(1).await {
        Action::WakeAt(at) => at,
        other => panic!("{other:?}"),
    };
    let mut steps = 1;
    let mut waits = Vec::new();
    for failure in 1..=4u32 {
        s.clock.set(at);
        steps += 2; // the timer fires (a sync), the sync fails
        let next = match s.after_steps(steps).await {
            Action::WakeAt(next) => next,
            other => panic!("failure {failure}: {other:?}"),
        };
        let ceiling = 1_000i64 << (failure - 1);
        let wait = next - at;
        assert!(
            (ceiling / 2..=ceiling).contains(&wait),
            "failure {failure} waits {wait} ms"
        );
        waits.push(wait);
        at = next;
    }
    assert_eq!(
        s.mem.attempts.load(Ordering::SeqCst),
        4,
        "one attempt per backoff, none in between"
    );
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
    s.mem.fail.store(false, Ordering::SeqCst);
    s.clock.set(at);
    assert_eq!(s.after_steps(steps + 2).await, Action::Idle);
    assert!(s.store.outbox().unwrap().is_empty());
}
