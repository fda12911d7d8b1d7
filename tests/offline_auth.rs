//! Auth that survives a long time offline (the reliability issue, point 5).
//!
//! A device's token expires while it is offline for three weeks (on the
//! manual clock), and it cannot refresh it: the provider's refresh fails as a
//! refresh does without a network. Throughout:
//! - local reads and writes work;
//! - no outbox entry uses up its retry budget or is quarantined (no push is
//!   attempted: the sync stops at the pull, which never had a token or a
//!   network);
//! - background sync does not give up: `auth_failed` stays false, each failure
//!   backs off and tries again.
//!
//! Back online with the token still expired, the syncs fail the same way. Once
//! the provider has a token again, background sync delivers every write by
//! itself, at its next retry, with nothing sent twice.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry::clock::ManualClock;
use ferry::sync::machine::Action;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{TokenProvider, TransportError};
use ferry::{Query, Store, WriteOp};
use serde_json::json;
use support::*;
use tokio::sync::watch;

const DAY: i64 = 86_400_000;

/// Alice's token while `fresh`; else an expired one, which the server refuses,
/// and a refresh that fails for want of a network.
struct Expiring {
    fresh: AtomicBool,
}

#[async_trait]
impl TokenProvider for Expiring {
    async fn token(&self, refresh: bool) -> Result<String, TransportError> {
        match (self.fresh.load(Ordering::SeqCst), refresh) {
            (true, _) => Ok(ALICE.into()),
            (false, false) => Ok("expired-token".into()),
            (false, true) => Err(TransportError::TokenUnavailable(
                "cannot refresh: the identity provider is unreachable".into(),
            )),
        }
    }
}

/// Waits for the background machine's next decision after `*steps`.
async fn next_decision(rx: &mut watch::Receiver<(u64, Action)>, steps: &mut u64) -> Action {
    let seen = *steps;
    let (n, action) = *rx
        .wait_for(|(n, _)| *n > seen)
        .await
        .expect("the driver runs");
    *steps = n;
    action
}

fn task(id: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: obj(json!({"id": id, "title": id})),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_offline_for_weeks_loses_nothing_and_sync_resumes_by_itself() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let store = Store::open_with(&dir.path().join("d.db"), Some(schema()), clock.clone()).unwrap();
    let transport = Faulty::new(&server.url());
    let tokens = Arc::new(Expiring {
        fresh: AtomicBool::new(true),
    });
    let client = SyncClient::new(
        store.clone(),
        transport.clone(),
        tokens.clone(),
        SyncConfig {
            push_debounce: Duration::from_millis(100),
            seed: Some(5),
            ..SyncConfig::default()
        },
    )
    .unwrap();
    store.write(vec![task("before")]).unwrap();
    client.sync().await.unwrap();

    // The token expires, and the device goes offline for three weeks.
    tokens.fresh.store(false, Ordering::SeqCst);
    transport.offline.store(true, Ordering::SeqCst);
    client.set_online(false);
    let mut rx = client.schedule();
    let mut steps = rx.borrow().0;
    client.start();
    let mut written = vec!["before".to_string()];
    for day in 0..21 {
        clock.advance(DAY);
        let id = format!("day-{day}");
        store.write(vec![task(&id)]).unwrap();
        store
            .write(vec![WriteOp::Update {
                collection: "tasks".into(),
                id: "before".into(),
                fields: obj(json!({"title": format!("edited on day {day}")})),
            }])
            .unwrap();
        written.push(id);
        assert_eq!(
            store.count("tasks", &Query::default()).unwrap() as usize,
            written.len(),
            "day {day}: reads work"
        );
        // An explicit sync fails as offline, and uses up nothing.
        assert!(matches!(client.sync().await, Err(ferry::Error::Offline(_))));
    }
    // Background sync heard each of the 42 writes, and held: offline.
    let held = *rx
        .wait_for(|(n, _)| *n >= steps + 42)
        .await
        .expect("the driver runs");
    assert_eq!(held.1, Action::Idle, "nothing runs while offline");
    steps = held.0;
    let outbox = store.outbox().unwrap();
    assert!(!outbox.is_empty());
    assert!(
        outbox.iter().all(|e| e.attempts == 0),
        "no retry was spent offline"
    );
    assert_eq!(store.pending_counts().unwrap().1, 0, "nothing quarantined");

    // Online, the token still expired: each background sync fails at the
    // token, backs off and tries again; nothing is spent or quarantined.
    transport.offline.store(false, Ordering::SeqCst);
    client.set_online(true);
    let mut failures = 0;
    while failures < 5 {
        match next_decision(&mut rx, &mut steps).await {
            Action::WakeAt(at) => clock.set(at),
            Action::Sync => failures += 1,
            Action::Idle => panic!("background sync stopped after {failures} failures"),
        }
    }
    // The fifth failed sync ends in a retry timer.
    let retry_at = loop {
        if let Action::WakeAt(at) = next_decision(&mut rx, &mut steps).await {
            break at;
        }
    };
    let st = client.status();
    assert!(!st.auth_failed, "background sync has not given up");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot refresh"),
        "{st:?}"
    );
    assert!(store.outbox().unwrap().iter().all(|e| e.attempts == 0));
    assert_eq!(store.pending_counts().unwrap().1, 0);

    // A token arrives: at its next retry, background sync delivers everything.
    tokens.fresh.store(true, Ordering::SeqCst);
    clock.set(retry_at);
    while !store.outbox().unwrap().is_empty() {
        match next_decision(&mut rx, &mut steps).await {
            Action::WakeAt(at) => clock.set(at),
            Action::Sync => {}
            Action::Idle => assert!(
                store.outbox().unwrap().is_empty(),
                "background sync went idle with writes left"
            ),
        }
    }
    let other = device(&server.url(), ALICE);
    other.client.sync().await.unwrap();
    let there = contents(&other.store, "tasks");
    for id in &written {
        assert!(there.contains_key(id), "{id} reached the server");
    }
    assert_eq!(there["before"]["title"], "edited on day 20");
    for id in &written {
        assert_eq!(
            transport.deliveries(id),
            if id == "before" { 2 } else { 1 },
            "{id}: sent once after the weeks offline (before: its create, then the edits folded into one update)"
        );
    }
}
