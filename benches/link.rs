//! A first sync and a large push over emulated links, on the manual clock:
//! fixed pull page sizes and push batches against adaptive ones
//! (`SyncConfig.page_sizing`, `push_sizing`, and the RTT network hint).
//!
//! The links are models, and their time is virtual, so the figures do not
//! depend on the machine. A request costs a round trip plus its bytes at the
//! link's rate: its gzip size (ferry-server compresses answers, the core
//! compresses request bodies of 1 KiB or more). A dropped request costs
//! the time to where it was cut plus the time to notice (a reconnect, or a
//! timeout); the client tries again (a failed pull resumes from its staged
//! pages, a push whose answer was lost resends under the same mutation ids
//! after its backoff, which is waited out on the virtual clock). Requests
//! travel for real, through HTTP, to an in-process ferry-server.
//!
//! The bound of a run is its payload at the link's rate (the smallest payload
//! any run on that link moved, so the bound is the same for every row): no
//! sizing can beat it, and the round trips, drops and waits are what a sizing
//! adds to it.
//!
//!   cargo bench --bench link            # 20,000 tasks, 5 seeds
//!   cargo bench --bench link -- --quick # 4,000 tasks, 3 seeds

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use ferry::clock::ManualClock;
use ferry::sync::{NetworkHints, PageSizing, SyncClient, SyncConfig};
use ferry::transport::{
    COMPRESS_FROM_BYTES, HttpTransport, StaticToken, Transport, TransportError,
};
use ferry::{Schema, Store, WriteOp};
use ferry_protocol::{PullPage, PullRequest, PushRequest, PushResponse, RawFields};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

/// How a link drops requests, and what a drop costs.
#[derive(Clone, Copy)]
enum Drops {
    /// Each request is cut with this probability, at a uniform point of its
    /// transfer, and the client notices after `notice_ms` (a reset, then a
    /// reconnect).
    PerRequest { p: f64, notice_ms: f64 },
    /// The link goes away on average once every `mean_ms` of transfer (so a
    /// longer request is likelier to be cut), and the client notices only
    /// when its request times out, `timeout_ms` after it was sent.
    PerSecond { mean_ms: f64, timeout_ms: f64 },
}

#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    bits_per_s: f64,
    rtt_ms: f64,
    drops: Drops,
}

const PROFILES: [Profile; 3] = [
    Profile {
        name: "1 Mbit/s, 300 ms RTT, 2% of requests dropped, 5 s to reconnect",
        bits_per_s: 1_000_000.0,
        rtt_ms: 300.0,
        drops: Drops::PerRequest {
            p: 0.02,
            notice_ms: 5_000.0,
        },
    },
    Profile {
        name: "1 Mbit/s, 300 ms RTT, a cut every 60 s of transfer on average, noticed by a 30 s timeout",
        bits_per_s: 1_000_000.0,
        rtt_ms: 300.0,
        drops: Drops::PerSecond {
            mean_ms: 60_000.0,
            timeout_ms: 30_000.0,
        },
    },
    Profile {
        name: "20 Mbit/s, 50 ms RTT, 2% of requests dropped, 5 s to reconnect",
        bits_per_s: 20_000_000.0,
        rtt_ms: 50.0,
        drops: Drops::PerRequest {
            p: 0.02,
            notice_ms: 5_000.0,
        },
    },
];

/// What one run moved and lost.
#[derive(Default, Clone, Copy)]
struct Tally {
    requests: u64,
    drops: u64,
    /// Bytes of requests that were cut: sent (or received) and thrown away.
    lost_bytes: f64,
    /// Bytes of requests that arrived.
    payload: f64,
}

struct Link {
    inner: HttpTransport,
    clock: Arc<ManualClock>,
    profile: Profile,
    rng: Mutex<StdRng>,
    tally: Mutex<Tally>,
}

impl Link {
    /// Charges one request of `bytes` to the clock; `Some(at)` (the share of
    /// the transfer done when it was cut) if the link dropped it.
    fn carry(&self, bytes: f64) -> Option<f64> {
        let p = self.profile;
        let transfer_ms = bytes * 8.0 / p.bits_per_s * 1_000.0;
        let (roll, at) = {
            let mut rng = self.rng.lock();
            (rng.random::<f64>(), rng.random::<f64>())
        };
        let (dropped, cost_ms) = match p.drops {
            Drops::PerRequest {
                p: chance,
                notice_ms,
            } => (roll < chance, p.rtt_ms + at * transfer_ms + notice_ms),
            Drops::PerSecond {
                mean_ms,
                timeout_ms,
            } => {
                let busy = p.rtt_ms + transfer_ms;
                (
                    roll < 1.0 - (-busy / mean_ms).exp(),
                    timeout_ms.max(busy * at),
                )
            }
        };
        let mut t = self.tally.lock();
        t.requests += 1;
        if dropped {
            t.drops += 1;
            t.lost_bytes += at * bytes;
            self.clock.advance(cost_ms as i64);
            Some(at)
        } else {
            t.payload += bytes;
            self.clock.advance((p.rtt_ms + transfer_ms) as i64);
            None
        }
    }
}

fn gzip_len(bytes: &[u8]) -> f64 {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap().len() as f64
}

#[async_trait]
impl Transport for Link {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        let page = self.inner.pull(token, req).await?;
        match self.carry(gzip_len(&serde_json::to_vec(&page).unwrap())) {
            Some(_) => Err(TransportError::Offline("the link dropped the page".into())),
            None => Ok(page),
        }
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        // The transport gzips a body from COMPRESS_FROM_BYTES on.
        let json = serde_json::to_vec(req).unwrap();
        let bytes = if json.len() >= COMPRESS_FROM_BYTES {
            gzip_len(&json)
        } else {
            json.len() as f64
        };
        match self.carry(bytes) {
            // Cut in its first half: the server never saw it.
            Some(at) if at < 0.5 => {
                Err(TransportError::Offline("the link dropped the push".into()))
            }
            // Cut later: the server applied it, and its answer was lost.
            Some(_) => {
                self.inner.push(token, req).await?;
                Err(TransportError::Offline("the link lost the answer".into()))
            }
            None => self.inner.push(token, req).await,
        }
    }
}

struct Run {
    virtual_s: f64,
    tally: Tally,
}

enum Job {
    /// A first sync of everything on the server.
    Pull,
    /// A push of this many offline creates (the pull before it is empty).
    Push(usize),
}

async fn start_server(dir: &std::path::Path) -> ferry_server::RunningServer {
    ferry_server::start(ferry_server::ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite:{}", dir.join("server.db").display()),
        config: ferry_server::ServerConfig::dev(),
    })
    .await
    .expect("server starts")
}

/// One job over the link. A pull reads the seeded server at `url`; a push
/// writes to a server of its own, so that its pull is empty.
async fn run(
    url: &str,
    schema: &Schema,
    sizing: &Sizing,
    profile: Profile,
    seed: u64,
    n: usize,
    job: &Job,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let own = match job {
        Job::Pull => None,
        Job::Push(_) => Some(start_server(dir.path()).await),
    };
    let url = own.as_ref().map_or(url.to_string(), |s| s.url());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Store::open_with(
        &dir.path().join("d.db"),
        Some(schema.clone()),
        clock.clone(),
    )
    .unwrap();
    let link = Arc::new(Link {
        inner: HttpTransport::new(&url).unwrap(),
        clock: clock.clone(),
        profile,
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        tally: Mutex::default(),
    });
    let client = SyncClient::new(
        store.clone(),
        link.clone(),
        Arc::new(StaticToken("alice-dev-token".into())),
        sizing.config.clone(),
    )
    .unwrap();
    if sizing.rtt_hint {
        client.set_network(NetworkHints {
            rtt_ms: Some(profile.rtt_ms as u32),
            ..NetworkHints::default()
        });
    }
    if let Job::Push(count) = job {
        for chunk in tasks(*count, seed).chunks(1_000) {
            store.write(chunk.to_vec()).unwrap();
        }
    }
    let start = ferry::Clock::now_ms(&*clock);
    loop {
        let _ = client.sync().await;
        let pending = store.pending_counts().unwrap().0;
        let done = match job {
            Job::Pull => store.count("tasks", &ferry::Query::default()).unwrap() as usize == n,
            Job::Push(_) => pending == 0,
        };
        if done {
            break;
        }
        // What waits for its backoff is due then: background sync would wake
        // at that time, so the wait is part of the run.
        if let Some(at) = store.next_attempt_at().unwrap() {
            let now = ferry::Clock::now_ms(&*clock);
            clock.advance((at - now).max(0));
        }
    }
    let tally = *link.tally.lock();
    if let Some(s) = own {
        s.shutdown().await;
    }
    Run {
        virtual_s: (ferry::Clock::now_ms(&*clock) - start) as f64 / 1_000.0,
        tally,
    }
}

/// `n` tasks with random ids and notes of 20 to 40 words from a vocabulary
/// of 2,000 made-up words (text that gzip shrinks about as much as prose).
fn tasks(n: usize, seed: u64) -> Vec<WriteOp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocabulary: Vec<String> = (0..2_000)
        .map(|_| {
            let len = rng.random_range(2..10);
            (0..len).map(|_| rng.random_range('a'..='z')).collect()
        })
        .collect();
    (0..n)
        .map(|i| {
            let words = rng.random_range(20..40);
            let notes: Vec<&str> = (0..words)
                .map(|_| vocabulary[rng.random_range(0..vocabulary.len())].as_str())
                .collect();
            WriteOp::Create {
                collection: "tasks".into(),
                fields: serde_json::from_value(json!({
                    "id": uuid::Uuid::new_v4().to_string(),
                    "title": format!("task {i}"),
                    "priority": i % 5,
                    "notes": notes.join(" "),
                }))
                .unwrap(),
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Sizing {
    name: String,
    config: SyncConfig,
    rtt_hint: bool,
    fixed: bool,
}

fn fixed(name: String, config: SyncConfig) -> Sizing {
    Sizing {
        name,
        config,
        rtt_hint: false,
        fixed: true,
    }
}

fn adaptive(name: String, config: SyncConfig, rtt_hint: bool) -> Sizing {
    Sizing {
        name,
        config,
        rtt_hint,
        fixed: false,
    }
}

fn pull_sizings() -> Vec<Sizing> {
    let mut out: Vec<Sizing> = [100u32, 1_000, 5_000]
        .into_iter()
        .map(|size| {
            fixed(
                format!("fixed {size}"),
                SyncConfig {
                    page_size: size,
                    ..SyncConfig::default()
                },
            )
        })
        .collect();
    for (target_s, hint) in [(2, false), (2, true), (8, false)] {
        out.push(adaptive(
            format!(
                "adaptive from 1000 (target {target_s} s, 100..5000){}",
                if hint { ", RTT hint" } else { "" }
            ),
            SyncConfig {
                page_size: 1_000,
                page_sizing: Some(PageSizing {
                    target_ms: target_s * 1_000,
                    min_rows: 100,
                    max_rows: 5_000,
                }),
                ..SyncConfig::default()
            },
            hint,
        ));
    }
    out
}

fn push_sizings() -> Vec<Sizing> {
    let mut out: Vec<Sizing> = [100usize, 1_000, 5_000]
        .into_iter()
        .map(|size| {
            fixed(
                format!("fixed {size}"),
                SyncConfig {
                    push_batch: size,
                    ..SyncConfig::default()
                },
            )
        })
        .collect();
    for (target_s, hint) in [(2, false), (2, true), (8, false)] {
        out.push(adaptive(
            format!(
                "adaptive from 1000 (target {target_s} s, 100..10000){}",
                if hint { ", RTT hint" } else { "" }
            ),
            SyncConfig {
                push_batch: 1_000,
                push_sizing: Some(PageSizing {
                    target_ms: target_s * 1_000,
                    min_rows: 100,
                    max_rows: 10_000,
                }),
                ..SyncConfig::default()
            },
            hint,
        ));
    }
    out
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
    let server = rt.block_on(start_server(dir.path()));
    let url = server.url();
    rt.block_on(async {
        let sdir = tempfile::tempdir().unwrap();
        let store = Store::open(sdir.path().join("seed.db"), schema.clone()).unwrap();
        for chunk in tasks(n, 0).chunks(1_000) {
            store.write(chunk.to_vec()).unwrap();
        }
        let client = SyncClient::new(
            store,
            Arc::new(HttpTransport::new(&url).unwrap()),
            Arc::new(StaticToken("alice-dev-token".into())),
            SyncConfig::default(),
        )
        .unwrap();
        client.sync().await.unwrap();
    });
    eprintln!("link bench: {n} tasks, {seeds} seeds per row (virtual time)");
    for (what, job, sizings) in [
        ("first sync (pull)", Job::Pull, pull_sizings()),
        ("push of offline creates", Job::Push(n), push_sizings()),
    ] {
        for profile in PROFILES {
            println!("\n#### {what}: {}\n", profile.name);
            let rows: Vec<(&Sizing, Vec<Run>)> = sizings
                .iter()
                .map(|s| {
                    let runs = (0..seeds)
                        .map(|seed| rt.block_on(run(&url, &schema, s, profile, seed, n, &job)))
                        .collect();
                    (s, runs)
                })
                .collect();
            let payload = rows
                .iter()
                .flat_map(|(_, runs)| runs.iter().map(|r| r.tally.payload))
                .fold(f64::INFINITY, f64::min);
            let bound_s = payload * 8.0 / profile.bits_per_s;
            let secs: Vec<f64> = rows
                .iter()
                .map(|(_, runs)| median(runs.iter().map(|r| r.virtual_s).collect()))
                .collect();
            let best_fixed = rows
                .iter()
                .zip(&secs)
                .filter(|((s, _), _)| s.fixed)
                .map(|(_, t)| *t)
                .fold(f64::INFINITY, f64::min);
            println!(
                "bound: {:.0} kB at the link's rate = {bound_s:.1} s\n",
                payload / 1_000.0
            );
            println!(
                "| sizing | time (virtual s, median) | / bound | / best fixed | requests | drops | bytes lost (kB) |"
            );
            println!("|---|---|---|---|---|---|---|");
            for ((s, runs), t) in rows.iter().zip(&secs) {
                let m = |f: fn(&Tally) -> f64| median(runs.iter().map(|r| f(&r.tally)).collect());
                println!(
                    "| {} | {t:.1} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
                    s.name,
                    t / bound_s,
                    t / best_fixed,
                    m(|t| t.requests as f64),
                    m(|t| t.drops as f64),
                    m(|t| t.lost_bytes) / 1_000.0,
                );
            }
        }
    }
    rt.block_on(server.shutdown());
}
