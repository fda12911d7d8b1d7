//! A push the server applied but whose answer the device never got must not
//! leave the device "synced" with data the server does not have.
//!
//! The scenario (found by a chaos run): device A changes a record and pushes;
//! the server applies it, the answer is lost. Device B changes the same record
//! and syncs. A then syncs: it pulls B's row, rebases its pending change over it,
//! and retries the sent mutation, which the server answers, by its mutation id,
//! with the old `applied` version. A must still converge with the server.
//!
//! Each way of losing the answer is driven on the deterministic kit: the
//! response dropped, the response cut off, and the app killed while waiting for
//! it (the process restarts with the entry still in flight).

mod support;

use std::sync::Arc;

use ferry::sync::{SyncConfig, WriteMode};
use ferry::{ManualClock, WriteOp};
use serde_json::json;
use support::kit::{Fault, InProcessServer, KitDevice};
use support::*;

#[derive(Debug, Clone, Copy)]
enum Loss {
    Dropped,
    CutOff,
    Killed,
}

const LOSSES: [Loss; 3] = [Loss::Dropped, Loss::CutOff, Loss::Killed];

struct World {
    a: KitDevice,
    b: KitDevice,
}

async fn world() -> World {
    let server = InProcessServer::start(ferry_server::ServerConfig::dev()).await;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let a = KitDevice::new(&server, &clock, ALICE, schema(), SyncConfig::default());
    let b = KitDevice::new(&server, &clock, ALICE, schema(), SyncConfig::default());
    World { a, b }
}

/// A pushes what it has; the server applies it and the answer is lost as `loss` says.
async fn push_and_lose_the_answer(a: KitDevice, loss: Loss) -> KitDevice {
    match loss {
        Loss::Dropped | Loss::CutOff => {
            // The pull passes; the push is applied and its answer lost.
            let fault = match loss {
                Loss::Dropped => Fault::DropAfter,
                _ => Fault::Truncated,
            };
            a.net.then([Fault::None, fault]);
            assert!(a.client.sync().await.is_err(), "the answer was lost");
            a
        }
        Loss::Killed => {
            a.net.then([Fault::None, Fault::Hang]);
            tokio::select! {
                r = a.client.sync() => panic!("the push never answers, yet sync returned {r:?}"),
                _ = a.net.hung.notified() => {}
            }
            let a = a.restart();
            // (A batch the killed process was still preparing may have been
            // marked sent too: attempts can be more than one.)
            let outbox = a.store.outbox().unwrap();
            assert!(
                !outbox.is_empty() && outbox.iter().all(|e| e.attempts >= 1),
                "the restarted device still holds the sent entry: {outbox:?}"
            );
            a
        }
    }
}

fn title(d: &KitDevice, id: &str) -> (serde_json::Value, Option<u64>) {
    let r = d.store.get("tasks", id).unwrap().expect("record exists");
    (r.fields["title"].clone(), r.version)
}

/// Both devices end with the same row at the same version, nothing pending.
async fn assert_converged(w: &World, id: &str) {
    w.a.settle(3).await.unwrap();
    w.b.settle(3).await.unwrap();
    w.a.settle(3).await.unwrap();
    assert!(
        w.a.store.outbox().unwrap().is_empty(),
        "A has nothing left to push"
    );
    assert!(
        w.b.store.outbox().unwrap().is_empty(),
        "B has nothing left to push"
    );
    let (a, b) = (
        w.a.store.get("tasks", id).unwrap(),
        w.b.store.get("tasks", id).unwrap(),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (&a.fields, a.version, a.status),
        (&b.fields, b.version, b.status),
        "A and B hold the server's row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_an_update_then_a_newer_server_row_still_converges() {
    for loss in LOSSES {
        let w = world().await;
        w.a.client
            .write(
                vec![WriteOp::Create {
                    collection: "tasks".into(),
                    fields: obj(json!({"id": "t", "title": "first"})),
                }],
                WriteMode::OfflineFirst,
            )
            .await
            .unwrap();
        w.a.settle(3).await.unwrap();
        w.b.settle(3).await.unwrap();

        w.a.store
            .update("tasks", "t", obj(json!({"title": "A1"})))
            .unwrap();
        let a = push_and_lose_the_answer(w.a, loss).await;
        let w = World { a, b: w.b };
        w.b.store
            .update("tasks", "t", obj(json!({"title": "B1"})))
            .unwrap();
        w.b.settle(3).await.unwrap();
        assert_eq!(title(&w.b, "t"), (json!("B1"), Some(3)), "{loss:?}");

        assert_converged(&w, "t").await;
        // A's pending change was rebased over B's and kept (local changes win).
        assert_eq!(title(&w.a, "t").0, json!("A1"), "{loss:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_create_then_a_newer_server_row_still_converges() {
    for loss in LOSSES {
        let w = world().await;
        w.a.store
            .create(
                "tasks",
                obj(json!({"id": "c", "title": "A0", "priority": 1})),
            )
            .unwrap();
        let a = push_and_lose_the_answer(w.a, loss).await;
        let w = World { a, b: w.b };
        w.b.settle(3).await.unwrap();
        assert_eq!(title(&w.b, "c"), (json!("A0"), Some(1)), "{loss:?}");
        w.b.store
            .update("tasks", "c", obj(json!({"title": "B1"})))
            .unwrap();
        w.b.settle(3).await.unwrap();

        assert_converged(&w, "c").await;
    }
}
