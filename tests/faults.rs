//! Devices of two users sync through the fault proxy (`ferry-fault-proxy`),
//! which cuts requests and responses, resets, duplicates requests, answers
//! bursts of 500/502/503 and trickles responses, at random (seeded). Each
//! round, each device makes random offline edits (creates, updates, deletes)
//! and syncs once, whatever the faults do to that sync. Pages and push
//! batches are small, so a sync is many requests and faults land mid-sync.
//!
//! The oracle:
//! - **freshness**: after every sync that succeeded, no record that is synced
//!   on the device (no pending change) is older than the server's version at
//!   the start of that sync;
//! - at the end, with the faults off: every outbox is empty; **convergence**:
//!   every device of a user holds exactly what a fresh device of that user
//!   pulls; **no lost write**: every record created and never deleted is
//!   there; **isolation**: no device holds a record of the other user;
//! - over all seeds, the proxy injected every kind of fault at least once.
//!
//! `FERRY_FAULT_SEEDS` seeds (default 2) from `FERRY_FAULT_FIRST_SEED` (default
//! 1), `FERRY_FAULT_ROUNDS` rounds each (default 12); a failure names its seed.
//! scripts/soak.sh runs long ones.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry::clock::ManualClock;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{HttpTransport, StaticToken, Transport};
use ferry::{Store, WriteOp};
use ferry_fault_proxy::{Fault, FaultProxy, Random};
use ferry_protocol::PullRequest;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use support::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The user's records on the server now, id → version: a full pull from
/// scratch, straight to the server.
async fn server_view(url: &str, token: &str) -> BTreeMap<String, u64> {
    let t = HttpTransport::new(url).unwrap();
    let mut view = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let req: PullRequest =
            serde_json::from_value(json!({"cursor": cursor, "limit": 5000})).unwrap();
        let page = t.pull(token, &req).await.unwrap();
        for c in page.changes.values() {
            for r in &c.upserts {
                view.insert(r.id.clone(), r.version);
            }
            for id in c.deletes.iter().chain(&c.evictions) {
                view.remove(id);
            }
        }
        cursor = Some(page.cursor);
        if !page.has_more {
            return view;
        }
    }
}

/// A device on the shared manual clock, syncing through `url`.
struct Dev {
    store: Store,
    client: SyncClient,
    _dir: tempfile::TempDir,
}

fn dev(url: &str, token: &str, clock: &Arc<ManualClock>, config: SyncConfig) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(&dir.path().join("d.db"), Some(schema()), clock.clone()).unwrap();
    let client = SyncClient::new(
        store.clone(),
        Arc::new(HttpTransport::new(url).unwrap()),
        Arc::new(StaticToken(token.into())),
        config,
    )
    .unwrap();
    Dev {
        store,
        client,
        _dir: dir,
    }
}

fn pending_ids(store: &Store) -> BTreeSet<String> {
    store
        .outbox()
        .unwrap()
        .into_iter()
        .map(|e| e.record_id)
        .collect()
}

/// Random offline edits of one device: creates of new ids, and updates and
/// deletes of what it holds. Returns the ids it created and deleted.
fn edit(d: &Dev, rng: &mut StdRng, prefix: &str, next: &mut u64) -> (Vec<String>, Vec<String>) {
    let held: Vec<String> = contents(&d.store, "tasks").into_keys().collect();
    let (mut created, mut deleted, mut ops) = (Vec::new(), Vec::new(), Vec::new());
    let mut touched = BTreeSet::new();
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..10) {
            0..5 => {
                *next += 1;
                let id = format!("{prefix}-{next}");
                ops.push(WriteOp::Create {
                    collection: "tasks".into(),
                    fields: obj(json!({"id": id, "title": format!("t{next}"), "priority": rng.random_range(0..5)})),
                });
                created.push(id.clone());
                touched.insert(id);
            }
            k if !held.is_empty() => {
                let id = held[rng.random_range(0..held.len())].clone();
                if !touched.insert(id.clone()) {
                    continue;
                }
                if k < 8 {
                    ops.push(WriteOp::Update {
                        collection: "tasks".into(),
                        id,
                        fields: obj(json!({"title": format!("edit {}", rng.random::<u32>())})),
                    });
                } else {
                    ops.push(WriteOp::Delete {
                        collection: "tasks".into(),
                        id: id.clone(),
                    });
                    deleted.push(id);
                }
            }
            _ => {}
        }
    }
    d.store.write(ops).unwrap();
    (created, deleted)
}

async fn run(seed: u64, rounds: u64) -> ferry_fault_proxy::Stats {
    let server = start_server().await;
    let plan = Random::new(
        seed,
        0.12,
        // No delays: the test does not wait on the wall clock; a trickle
        // still splits every answer into 512-byte writes.
        Random::all_faults(Duration::ZERO)
            .into_iter()
            .filter(|f| !matches!(f, Fault::Delay(_)))
            .collect(),
        2,
    );
    let proxy = FaultProxy::start(server.running.addr(), plan.clone())
        .await
        .unwrap();
    let config = SyncConfig {
        page_size: 4,
        push_batch: 3,
        ..SyncConfig::default()
    };
    let users = [("alice", ALICE), ("bob", BOB)];
    // Retries wait out their backoff on this clock, which the rounds move.
    let clock = Arc::new(ManualClock::new(1_000_000));
    // Three devices of alice's, two of bob's.
    let devices: Vec<(usize, Dev)> = [0, 0, 0, 1, 1]
        .into_iter()
        .map(|u| (u, dev(&proxy.url(), users[u].1, &clock, config.clone())))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 0u64;
    let (mut created, mut deleted) = (BTreeSet::new(), BTreeSet::new());
    let mut synced = 0;
    for round in 0..rounds {
        // A minute between rounds: most retries are due again.
        clock.advance(60_000);
        for (i, (u, d)) in devices.iter().enumerate() {
            let (c, del) = edit(d, &mut rng, &format!("{}{i}", users[*u].0), &mut next);
            created.extend(c);
            deleted.extend(del);
            let before = server_view(&server.url(), users[*u].1).await;
            if d.client.sync().await.is_err() {
                continue;
            }
            synced += 1;
            // Freshness: nothing synced here is older than the server was.
            let pending = pending_ids(&d.store);
            let now = server_view(&server.url(), users[*u].1).await;
            for (id, version) in &before {
                if pending.contains(id) || !now.contains_key(id) {
                    continue;
                }
                let local = d.store.get("tasks", id).unwrap();
                let held = local.as_ref().and_then(|r| r.version);
                assert!(
                    held.is_some_and(|v| v >= *version),
                    "seed {seed} round {round} device {i}: {id} is at {held:?} after a sync that started at {version}"
                );
            }
        }
    }
    // The faults stop; every device syncs until its outbox is empty.
    plan.set_rate(0.0);
    clock.advance(3_600_000);
    for (_, d) in &devices {
        d.client.sync().await.unwrap();
        d.client.sync().await.unwrap();
        assert!(
            d.store.outbox().unwrap().is_empty(),
            "seed {seed}: all pushed"
        );
    }
    for (u, (name, token)) in users.iter().enumerate() {
        let fresh = device(&server.url(), token);
        fresh.client.sync().await.unwrap();
        let truth = contents(&fresh.store, "tasks");
        for (i, (_, d)) in devices.iter().enumerate().filter(|(_, (du, _))| *du == u) {
            // A device's own pulls are the same rows; its last pull may be
            // older than another device's last push: one more to be current.
            d.client.sync().await.unwrap();
            assert_eq!(
                contents(&d.store, "tasks"),
                truth,
                "seed {seed}: device {i} of {name} converged"
            );
        }
        for id in created.iter().filter(|id| id.starts_with(name)) {
            if !deleted.contains(id) {
                assert!(truth.contains_key(id), "seed {seed}: {id} was lost");
            }
        }
        assert!(
            truth.keys().all(|id| id.starts_with(name)),
            "seed {seed}: {name} sees only its own records"
        );
    }
    let stats = proxy.stats();
    eprintln!(
        "fault seed {seed}: {rounds} rounds, {synced} of {} syncs succeeded, {} records created; requests by fault {stats:?}",
        rounds * devices.len() as u64,
        created.len()
    );
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_two_users_converge_through_a_faulty_network() {
    let (first, seeds) = (
        env_or("FERRY_FAULT_FIRST_SEED", 1),
        env_or("FERRY_FAULT_SEEDS", 2),
    );
    let rounds = env_or("FERRY_FAULT_ROUNDS", 12);
    let mut all = ferry_fault_proxy::Stats::new();
    for seed in first..first + seeds {
        for (kind, n) in run(seed, rounds).await {
            *all.entry(kind).or_default() += n;
        }
    }
    for kind in [
        "cut_request",
        "cut_response",
        "reset",
        "duplicate",
        "status",
        "trickle",
    ] {
        assert!(
            all.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} was injected: {all:?}"
        );
    }
}
