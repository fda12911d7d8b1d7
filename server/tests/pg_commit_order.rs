//! PostgreSQL: writers whose transactions take positions in one order and commit in
//! the reverse order, while a puller pulls in a loop. Every committed row must reach
//! the puller (sequence order is not commit order; the watermark must cover it).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_protocol::{MutationOutcome, Op, PullRequest};
use ferry_server::SyncService;
use ferry_server::storage::postgres::PgStorage;
use ferry_server::storage::{PlannedMutation, Precondition, WriteBatch};
use serde_json::json;
use tokio::sync::{Barrier, oneshot};

const WRITERS: usize = 6;
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_committed_out_of_order_all_reach_the_puller() {
    let Some(db) = pg_db().await else { return };
    let pg = Arc::new(PgStorage::connect(&db.url).await.unwrap());
    let svc = SyncService::new(pg.clone(), test_config()).await.unwrap();
    let config = Arc::new(test_config());

    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let puller = {
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut cursor = None;
            let mut pulls = 0u64;
            // Latched: a oneshot gives its value once, and the pull that sees
            // it may still have more pages to read.
            let mut stopping = false;
            loop {
                stopping = stopping || stop_rx.try_recv().is_ok();
                let req = PullRequest {
                    priorities: None,
                    subscriptions: None,
                    cursor: cursor.clone(),
                    client_id: None,
                    limit: Some(3),
                    collections: None,
                    want_totals: false,
                    want_checksums: false,
                    restart: None,
                    max_priority: None,
                };
                let page = svc.pull(&alice(), &req).await.unwrap();
                pulls += 1;
                for c in page.changes.values() {
                    // Only the updated versions count: they are what commits out of order.
                    seen.extend(
                        c.upserts
                            .iter()
                            .filter(|r| r.version == 2)
                            .map(|r| r.id.clone()),
                    );
                }
                cursor = Some(page.cursor);
                if stopping && !page.has_more {
                    return (seen, pulls);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut committed = BTreeSet::new();
    for round in 0..ROUNDS {
        // One stream (alice's tasks): updates that keep a row synced leave the totals
        // row alone, so these writers do not serialize on it and can commit in any order.
        let creates = (0..WRITERS)
            .map(|w| {
                let id = format!("r{round}w{w}");
                ferry_protocol::Mutation {
                    mutation_id: id.clone(),
                    collection: "tasks".into(),
                    record_id: id.clone(),
                    op: Op::Create,
                    fields: fields(json!({"title": id, "done": false})),
                    base_version: None,
                }
            })
            .collect();
        svc.push(
            &alice(),
            ferry_protocol::PushRequest {
                client_id: "seed".into(),
                mutations: creates,
            },
        )
        .await
        .unwrap();
        // Every writer opens its transaction and writes (taking txid and seq) in
        // order 0..WRITERS, then they commit in reverse order with pauses between,
        // so the puller runs while later positions are committed and earlier ones are not.
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut gates = Vec::new();
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let (go_tx, go_rx) = oneshot::channel::<()>();
            let (written_tx, written_rx) = oneshot::channel::<()>();
            gates.push((go_tx, written_rx));
            let pg = pg.clone();
            let barrier = barrier.clone();
            let config = config.clone();
            let id = format!("r{round}w{w}");
            handles.push(tokio::spawn(async move {
                let mut client = pg.pool().get().await.unwrap();
                let tx = client.transaction().await.unwrap();
                let batch = WriteBatch {
                    caller: alice(),
                    client_id: Some(format!("writer{w}")),
                    config,
                    mutations: vec![PlannedMutation {
                        mutation_id: Some(format!("{id}-update")),
                        collection: "tasks".into(),
                        record_id: id.clone(),
                        op: Op::Update,
                        fields: fields(json!({"done": true})),
                        precondition: Precondition::None,
                        lenient: false,
                    }],
                    abort_on_conflict: false,
                };
                let out = PgStorage::write_in(&tx, &batch).await.unwrap().unwrap();
                assert_eq!(out, vec![MutationOutcome::Applied { version: 2 }]);
                written_tx.send(()).unwrap();
                barrier.wait().await;
                go_rx.await.unwrap();
                tx.commit().await.unwrap();
                id
            }));
            // Open the transactions one after the other so txids and seqs ascend with w.
            let (_, written_rx) = gates.last_mut().unwrap();
            written_rx.await.unwrap();
        }
        for ((go, _), handle) in gates.into_iter().zip(handles).rev() {
            tokio::time::sleep(Duration::from_millis(15)).await;
            go.send(()).unwrap();
            committed.insert(handle.await.unwrap());
        }
    }
    // Let the puller drain, then stop it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_tx.send(()).unwrap();
    let started = Instant::now();
    let (seen, pulls) = tokio::time::timeout(Duration::from_secs(30), puller)
        .await
        .expect("puller finished")
        .unwrap();
    assert!(
        pulls >= ROUNDS as u64,
        "the puller pulled while writers were open ({pulls} pulls)"
    );
    let missing: Vec<_> = committed.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "rows never reached the puller: {missing:?} (after {:?})",
        started.elapsed()
    );
    assert_eq!(seen.len(), ROUNDS * WRITERS);
}

/// A batch reads its rows before it writes them. A create of an id that another
/// push creates and commits in between fails at the insert. The whole batch is
/// then tried again, and the create is rejected as a duplicate; nothing is lost and
/// nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_that_loses_a_race_for_its_id_is_retried_and_rejected() {
    use ferry_protocol::RejectCode;
    use ferry_server::storage::Storage;

    let Some(db) = pg_db().await else { return };
    let pg = Arc::new(PgStorage::connect(&db.url).await.unwrap());
    let svc = SyncService::new(pg.clone(), test_config()).await.unwrap();
    let config = Arc::new(test_config());
    let create = |mid: &str, title: &str| WriteBatch {
        caller: alice(),
        client_id: Some(mid.into()),
        config: config.clone(),
        mutations: vec![PlannedMutation {
            mutation_id: Some(mid.into()),
            collection: "tasks".into(),
            record_id: "raced".into(),
            op: Op::Create,
            fields: fields(json!({"title": title, "done": false})),
            precondition: Precondition::None,
            lenient: false,
        }],
        abort_on_conflict: false,
    };
    let mut client = pg.pool().get().await.unwrap();
    let first = client.transaction().await.unwrap();
    let out = PgStorage::write_in(&first, &create("first", "first"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, vec![MutationOutcome::Applied { version: 1 }]);
    // The second push reads no row, decides to create, and waits at the insert.
    let second = {
        let pg = pg.clone();
        let batch = create("second", "second");
        tokio::spawn(async move { pg.write(batch).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "the second insert waits for the first"
    );
    first.commit().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second push finishes")
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            &result.outcomes[..],
            [MutationOutcome::Rejected {
                code: RejectCode::AlreadyExists,
                ..
            }]
        ),
        "{:?}",
        result.outcomes
    );
    let page = svc
        .pull(
            &alice(),
            &PullRequest {
                subscriptions: None,
                cursor: None,
                client_id: None,
                limit: None,
                collections: None,
                want_totals: true,
                want_checksums: false,
                restart: None,
                max_priority: None,
                priorities: None,
            },
        )
        .await
        .unwrap();
    let tasks = &page.changes["tasks"];
    assert_eq!(tasks.upserts.len(), 1);
    let stored: serde_json::Value = serde_json::from_str(tasks.upserts[0].fields.get()).unwrap();
    assert_eq!(stored["title"], "first");
    assert_eq!(page.totals.unwrap()["tasks"], 1, "counted once");
}
