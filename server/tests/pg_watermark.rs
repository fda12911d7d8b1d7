//! PostgreSQL: a transaction left open holds the visibility watermark back
//! (the reliability issue, point 6). While it runs, pulls answer with what was
//! committed before it, and withhold what committed after it; once it ends,
//! the withheld changes arrive from the same cursor, nothing skipped. The lag
//! is a metric: `ferry_pull_watermark_lag_seconds` and
//! `ferry_pull_withheld_total`.
//!
//! The test holds the transaction for as long as it takes, not for 60 s: what
//! the watermark does depends on the transaction being open, not on its age,
//! and the age is only reported.

mod common;

use std::sync::Arc;

use common::*;
use ferry_protocol::{Mutation, Op, PullRequest, PushRequest};
use ferry_server::SyncService;
use ferry_server::cursor::{Position, StreamKey};
use ferry_server::storage::postgres::PgStorage;
use ferry_server::storage::{ReadRequest, Scan, Storage};
use serde_json::json;
use tokio_postgres::NoTls;

fn create(id: &str) -> Mutation {
    Mutation {
        mutation_id: format!("m-{id}"),
        collection: "tasks".into(),
        record_id: id.into(),
        op: Op::Create,
        fields: fields(json!({"title": id, "done": false})),
        base_version: None,
    }
}

async fn push(svc: &SyncService, id: &str) {
    svc.push(
        &alice(),
        PushRequest {
            client_id: "w".into(),
            mutations: vec![create(id)],
        },
    )
    .await
    .unwrap();
}

fn pull(cursor: Option<String>) -> PullRequest {
    PullRequest {
        subscriptions: None,
        cursor,
        client_id: None,
        limit: None,
        collections: None,
        want_totals: false,
        want_checksums: false,
        restart: None,
        max_priority: None,
        priorities: None,
    }
}

fn ids(page: &ferry_protocol::PullPage<ferry_protocol::RawFields>) -> Vec<String> {
    page.changes
        .get("tasks")
        .map(|c| c.upserts.iter().map(|r| r.id.clone()).collect())
        .unwrap_or_default()
}

fn metric(name: &str) -> f64 {
    let text = ferry_server::metrics::handle().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_holds_back_what_committed_after_it_and_skips_nothing() {
    let Some(db) = pg_db().await else { return };
    // Installs the recorder before anything is counted.
    ferry_server::metrics::handle();
    let pg = Arc::new(PgStorage::connect(&db.url).await.unwrap());
    let svc = SyncService::new(pg.clone(), test_config()).await.unwrap();
    push(&svc, "before").await;

    // Another session opens a transaction that has a transaction id, and keeps
    // it open.
    let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("BEGIN").await.unwrap();
    client
        .query_one("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    push(&svc, "after").await;

    let page = svc.pull(&alice(), &pull(None)).await.unwrap();
    assert_eq!(
        ids(&page),
        ["before"],
        "what committed after it is withheld"
    );
    let read = pg
        .read(ReadRequest {
            scans: vec![Scan {
                key: StreamKey {
                    scope: "user:alice".into(),
                    collection: "tasks".into(),
                    filter: String::new(),
                },
                after: Position::ZERO,
                upto: None,
                limit: 100,
            }],
            totals: None,
        })
        .await
        .unwrap();
    assert!(read.withheld);
    assert!(
        read.lag_seconds.is_some_and(|s| s >= 0.0),
        "{:?}",
        read.lag_seconds
    );
    assert!(metric("ferry_pull_withheld_total") >= 1.0);
    assert!(metric("ferry_pull_watermark_lag_seconds") >= 0.0);

    client.batch_execute("COMMIT").await.unwrap();
    let next = svc.pull(&alice(), &pull(Some(page.cursor))).await.unwrap();
    assert_eq!(
        ids(&next),
        ["after"],
        "and arrives once it ends, from the same cursor"
    );
    assert_eq!(
        metric("ferry_pull_watermark_lag_seconds"),
        0.0,
        "no lag once nothing is withheld"
    );
}
