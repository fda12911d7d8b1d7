//! A first sync over an emulated slow link, on the manual clock: fixed pull
//! page sizes against adaptive ones (`SyncConfig.page_sizing`).
//!
//! The link is a model, and its time is virtual, so the figures do not depend
//! on the machine: each pull request costs a round trip plus its JSON bytes at
//! the link's rate; a request dropped (at random, seeded) costs the time to a
//! uniform point of its transfer plus a reconnect, and the client tries again
//! (a sync that fails resumes from its staged pages). Pages travel for real,
//! through HTTP, to an in-process ferry-server.
//!
//!   cargo bench --bench link            # 20,000 tasks, 5 seeds
//!   cargo bench --bench link -- --quick # 4,000 tasks, 3 seeds

use std::sync::Arc;

use async_trait::async_trait;
use ferry::clock::ManualClock;
use ferry::sync::{PageSizing, SyncClient, SyncConfig, WriteMode};
use ferry::transport::{HttpTransport, StaticToken, Transport, TransportError};
use ferry::{Schema, Store, WriteOp};
use ferry_protocol::{PullPage, PullRequest, PushRequest, PushResponse, RawFields};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

/// 1 Mbit/s, 300 ms round trip, 2% of requests dropped, 5 s to notice a drop
/// and reconnect.
const BITS_PER_S: f64 = 1_000_000.0;
const RTT_MS: f64 = 300.0;
const DROP: f64 = 0.02;
const RECONNECT_MS: f64 = 5_000.0;

struct Link {
    inner: HttpTransport,
    clock: Arc<ManualClock>,
    rng: Mutex<StdRng>,
    requests: Mutex<(u64, u64)>,
}

#[async_trait]
impl Transport for Link {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        let page = self.inner.pull(token, req).await?;
        let bytes = serde_json::to_vec(&page).unwrap().len() as f64;
        let transfer_ms = bytes * 8.0 / BITS_PER_S * 1_000.0;
        let (dropped, at) = {
            let mut rng = self.rng.lock();
            (rng.random_bool(DROP), rng.random::<f64>())
        };
        let mut n = self.requests.lock();
        n.0 += 1;
        if dropped {
            n.1 += 1;
            self.clock
                .advance((RTT_MS + at * transfer_ms + RECONNECT_MS) as i64);
            return Err(TransportError::Offline("the link dropped".into()));
        }
        self.clock.advance((RTT_MS + transfer_ms) as i64);
        Ok(page)
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        self.inner.push(token, req).await
    }
}

struct Run {
    virtual_s: f64,
    requests: u64,
    drops: u64,
}

/// One first sync of everything on the server, over the link.
async fn first_sync(url: &str, schema: &Schema, config: SyncConfig, seed: u64, n: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Store::open_with(
        &dir.path().join("d.db"),
        Some(schema.clone()),
        clock.clone(),
    )
    .unwrap();
    let link = Arc::new(Link {
        inner: HttpTransport::new(url).unwrap(),
        clock: clock.clone(),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        requests: Mutex::new((0, 0)),
    });
    let client = SyncClient::new(
        store.clone(),
        link.clone(),
        Arc::new(StaticToken("alice-dev-token".into())),
        config,
    )
    .unwrap();
    let start = ferry::Clock::now_ms(&*clock);
    while client.sync().await.is_err() {}
    let held = store.count("tasks", &ferry::Query::default()).unwrap() as usize;
    assert_eq!(held, n, "every row arrived");
    let (requests, drops) = *link.requests.lock();
    Run {
        virtual_s: (ferry::Clock::now_ms(&*clock) - start) as f64 / 1_000.0,
        requests,
        drops,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, seeds) = if quick { (4_000, 3) } else { (20_000, 5) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::from_json(include_str!("../examples/tasks.schema.json")).unwrap();
    let server = rt.block_on(async {
        ferry_server::start(ferry_server::ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite:{}", dir.path().join("server.db").display()),
            config: ferry_server::ServerConfig::dev(),
        })
        .await
        .expect("server starts")
    });
    let url = server.url();
    rt.block_on(async {
        let sdir = tempfile::tempdir().unwrap();
        let store = Store::open(sdir.path().join("seed.db"), schema.clone()).unwrap();
        let client = SyncClient::new(
            store,
            Arc::new(HttpTransport::new(&url).unwrap()),
            Arc::new(StaticToken("alice-dev-token".into())),
            SyncConfig::default(),
        )
        .unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
            let ops = chunk
                .iter()
                .map(|i| WriteOp::Create {
                    collection: "tasks".into(),
                    fields: serde_json::from_value(json!({
                        "id": uuid::Uuid::new_v4().to_string(),
                        "title": format!("task {i} of the emulated-link bench"),
                        "priority": i % 5,
                    }))
                    .unwrap(),
                })
                .collect();
            client.write(ops, WriteMode::OfflineFirst).await.unwrap();
        }
        client.sync().await.unwrap();
    });
    eprintln!(
        "link bench: {n} tasks, {seeds} seeds; link {} Mbit/s, RTT {RTT_MS} ms, {}% of requests dropped, {RECONNECT_MS} ms to reconnect (virtual time)",
        BITS_PER_S / 1e6,
        DROP * 100.0
    );
    let mut configs: Vec<(String, SyncConfig)> = [100u32, 1_000, 5_000]
        .into_iter()
        .map(|size| {
            (
                format!("fixed {size}"),
                SyncConfig {
                    page_size: size,
                    ..SyncConfig::default()
                },
            )
        })
        .collect();
    for target_s in [2, 8] {
        configs.push((
            format!("adaptive from 1000 (target {target_s} s, 100..5000)"),
            SyncConfig {
                page_size: 1_000,
                page_sizing: Some(PageSizing {
                    target_ms: target_s * 1_000,
                    min_rows: 100,
                    max_rows: 5_000,
                }),
                ..SyncConfig::default()
            },
        ));
    }
    let mut results = Vec::new();
    for (name, config) in &configs {
        let runs: Vec<Run> = (0..seeds)
            .map(|seed| rt.block_on(first_sync(&url, &schema, config.clone(), seed, n)))
            .collect();
        let secs = median(runs.iter().map(|r| r.virtual_s).collect());
        let requests = median(runs.iter().map(|r| r.requests as f64).collect());
        let drops = median(runs.iter().map(|r| r.drops as f64).collect());
        results.push((name.clone(), secs, requests, drops));
    }
    let best_fixed = results[..3]
        .iter()
        .map(|r| r.1)
        .fold(f64::INFINITY, f64::min);
    println!("| pages | first sync (virtual s, median) | requests | dropped | time / best fixed |");
    println!("|---|---|---|---|---|");
    for (name, secs, requests, drops) in results {
        println!(
            "| {name} | {secs:.1} | {requests:.0} | {drops:.0} | {:.2} |",
            secs / best_fixed
        );
    }
    rt.block_on(server.shutdown());
}
