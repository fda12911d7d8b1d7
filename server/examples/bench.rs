//! `cargo run --release -p ferry-server --example bench`: pull-page latency against table size, push throughput, and
//! concurrent clients over loopback HTTP. Figures go to docs/benchmarks.md.
//!
//! Flags: `-- [--rows N] [--database-url URL] [--clients C]`
//! (defaults: 1,000,000 rows, a temporary SQLite file, 200 clients). Only talks to
//! 127.0.0.1; every loop is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_protocol::{Mutation, Op, PullRequest, PushRequest};
use ferry_server::auth::Caller;
use ferry_server::config::ServerConfig;
use ferry_server::{ServerOptions, SyncService};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Reuse a database seeded by an earlier run (with the same --rows).
    #[arg(long)]
    skip_seed: bool,
    /// PostgreSQL only: seed with one set-based SQL statement per table (records,
    /// changes, totals) instead of pushes, so 10M rows take minutes, not hours. The
    /// rows are the ones the push seed would write (alice's `tasks`, ids t00000000…).
    #[arg(long)]
    bulk_seed: bool,
}

/// Writes what `rows` seed pushes would, straight into the PostgreSQL tables.
async fn bulk_seed_pg(url: &str, rows: usize) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let n = rows as i64 - 1;
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO records (collection, id, scope, version, deleted, data, changed_at, created_at)
               SELECT 'tasks', 't' || lpad(i::text, 8, '0'), 'user:alice', 1, false,
                      jsonb_build_object('title', 'task t' || lpad(i::text, 8, '0'), 'done', false), 0, 0
               FROM generate_series(0, {n}) i;
             INSERT INTO changes (scope, collection, record_id, txid, seq, kind, client_id)
               SELECT 'user:alice', 'tasks', 't' || lpad(i::text, 8, '0'),
                      pg_current_xact_id()::text::bigint, nextval('change_seq'), 0, 'seed'
               FROM generate_series(0, {n}) i;
             INSERT INTO totals (scope, collection, count) VALUES ('user:alice', 'tasks', {rows})
               ON CONFLICT (scope, collection) DO UPDATE SET count = totals.count + excluded.count;
             COMMIT;
             ANALYZE records; ANALYZE changes;"
        ))
        .await
        .expect("bulk seed");
}

fn task(mid: String, id: String, op: Op, base: Option<u64>) -> Mutation {
    let mut fields = ferry_protocol::Fields::new();
    fields.insert("title".into(), format!("task {id}").into());
    fields.insert("done".into(), false.into());
    Mutation {
        mutation_id: mid,
        collection: "tasks".into(),
        record_id: id,
        op,
        fields,
        base_version: base,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", dir.path().join("bench.db").display()));
    let mut config = ServerConfig::dev();
    config.limits.max_push_mutations = 20_000;
    let svc = SyncService::open(&url, config.clone()).await.unwrap();
    let alice = Caller::new("alice", ["team".to_string()]);
    // Mutation ids unique per run: a rerun on a seeded database must not be replays.
    let run = uuid::Uuid::new_v4().simple().to_string();
    println!("backend {} rows {}", svc.storage().backend(), args.rows);

    // Seed: rows owned by alice, in pushes of 10k (this is also push throughput).
    let batch = 10_000;
    let start = Instant::now();
    let mut done = 0;
    if args.skip_seed {
        done = args.rows;
    }
    if args.bulk_seed {
        assert!(url.starts_with("postgres"), "--bulk-seed is for PostgreSQL");
        bulk_seed_pg(&url, args.rows).await;
        println!(
            "seed/sql: {} rows in {:.1}s (one INSERT … SELECT per table)",
            args.rows,
            start.elapsed().as_secs_f64()
        );
        done = args.rows;
    }
    while done < args.rows {
        let n = batch.min(args.rows - done);
        let ms = (done..done + n)
            .map(|i| task(format!("seed{i}"), format!("t{i:08}"), Op::Create, None))
            .collect();
        svc.push(
            &alice,
            PushRequest {
                client_id: "seed".into(),
                mutations: ms,
            },
        )
        .await
        .unwrap();
        done += n;
    }
    let secs = start.elapsed().as_secs_f64();
    if !args.skip_seed && !args.bulk_seed {
        println!(
            "seed/push: {} creates in {:.1}s = {:.0} mutations/s (batches of {batch})",
            args.rows,
            secs,
            args.rows as f64 / secs
        );
    }

    // Cursor at head.
    let mut req = PullRequest {
        priorities: None,
        subscriptions: None,
        cursor: None,
        client_id: None,
        limit: Some(5000),
        collections: None,
        want_totals: false,
        want_checksums: false,
        restart: None,
        max_priority: None,
    };
    let first = Instant::now();
    let page = svc.pull(&alice, &req).await.unwrap();
    println!(
        "first page (5000 rows) of a full pull: {:?}",
        first.elapsed()
    );
    req.cursor = Some(page.cursor);
    loop {
        let p = svc.pull(&alice, &req).await.unwrap();
        req.cursor = Some(p.cursor);
        if !p.has_more {
            break;
        }
    }
    // Incremental: one changed row after the cursor, measured 50 times.
    let mut times = Vec::new();
    for i in 0..50 {
        let id = format!("t{:08}", i);
        svc.push(
            &alice,
            PushRequest {
                client_id: "other".into(),
                mutations: vec![task(format!("{run}u{i}"), id, Op::Update, None)],
            },
        )
        .await
        .unwrap();
        let t = Instant::now();
        let p = svc.pull(&alice, &req).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(p.changes["tasks"].upserts.len(), 1);
        req.cursor = Some(p.cursor);
    }
    println!(
        "incremental pull (1 changed row, {} rows in table): median {:?}",
        args.rows,
        median(times)
    );

    // Push throughput on an existing table: 10k updates in one push.
    let ms: Vec<Mutation> = (0..10_000)
        .map(|i| {
            task(
                format!("p{i}"),
                format!("t{:08}", i + 100),
                Op::Update,
                None,
            )
        })
        .collect();
    let t = Instant::now();
    svc.push(
        &alice,
        PushRequest {
            client_id: "bulk".into(),
            mutations: ms,
        },
    )
    .await
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "push: 10000 updates in one push: {:.0} mutations/s",
        10_000.0 / secs
    );

    // Concurrent clients over loopback HTTP: each pulls (incremental) and pushes one update.
    let server = ferry_server::start(ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url.clone(),
        config,
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()
        .unwrap();
    let base = server.url();
    let cursor = Arc::new(req.cursor.clone().unwrap());
    let rounds = 5;
    let t = Instant::now();
    let mut handles = Vec::new();
    for c in 0..args.clients {
        let (http, base, cursor, run) = (http.clone(), base.clone(), cursor.clone(), run.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for r in 0..rounds {
                let t = Instant::now();
                let pull = serde_json::json!({"cursor": *cursor, "client_id": format!("c{c}"), "limit": 100});
                let resp = http.post(format!("{base}/v1/pull")).bearer_auth("alice-dev-token").json(&pull).send().await.unwrap();
                let ok_pull = resp.status().is_success();
                resp.bytes().await.unwrap();
                let m = task(format!("{run}c{c}r{r}"), format!("t{:08}", 20_000 + c * rounds + r), Op::Update, None);
                let push = PushRequest { client_id: format!("c{c}"), mutations: vec![m] };
                let resp = http.post(format!("{base}/v1/push")).bearer_auth("alice-dev-token").json(&push).send().await.unwrap();
                let ok = ok_pull && resp.status().is_success();
                resp.bytes().await.unwrap();
                lat.push((t.elapsed(), ok));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let failed = all.iter().filter(|(_, ok)| !ok).count();
    let mut lat: Vec<Duration> = all.into_iter().map(|(d, _)| d).collect();
    let wall = t.elapsed().as_secs_f64();
    println!(
        "{} concurrent clients x {rounds} syncs (pull + push one row): p50 {:?} p99 {:?}, {:.0} syncs/s, {failed} failed",
        args.clients,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        lat.len() as f64 / wall
    );
    server.shutdown().await;
}
