//! Many clients at once against ferry-server on PostgreSQL, over HTTP: each
//! pushes creates and updates (of its own tasks, and of docs in a scope shared
//! by ten users) and pulls, round after round. Nothing may fail, and at the end
//! every client's copy must match the server's checksum of its view (pull rule
//! 13) and hold every write any client of its view was told was applied.
//!
//! `FERRY_LOAD_CLIENTS` (default 100), `FERRY_LOAD_ROUNDS` (default 3) and
//! `FERRY_LOAD_USERS` (default 50) size it; `scripts/soak.sh` and
//! docs/benchmarks.md run it with 1,000 clients. It prints the latencies it
//! saw (medians and 99th percentiles); nothing here is timed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ferry_protocol::{
    Checksum, Mutation, MutationOutcome, Op, PullPage, PullRequest, PushRequest, PushResponse,
    record_digest,
};
use ferry_server::config::UserConfig;
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one client holds: collection → id → version.
type View = BTreeMap<String, BTreeMap<String, u64>>;

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    client_id: String,
    cursor: Option<String>,
    view: View,
    /// Its own tasks and the docs it wrote, with the version it last knows.
    mine: Vec<(String, String, u64)>,
}

#[derive(Default)]
struct Seen {
    push_ms: Vec<f64>,
    pull_ms: Vec<f64>,
    /// Every (collection, id, version) the server said it applied, per user.
    applied: BTreeMap<String, BTreeSet<(String, String, u64)>>,
}

impl Client {
    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> T {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("the server answers");
        let status = resp.status();
        let text = resp.text().await.expect("a body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).expect("protocol JSON")
    }

    /// Pulls to the end; returns the last page's checksums, when asked.
    async fn pull(
        &mut self,
        checksums: bool,
        seen: &Mutex<Seen>,
    ) -> Option<BTreeMap<String, Checksum>> {
        loop {
            let req = PullRequest {
                cursor: self.cursor.clone(),
                client_id: Some(self.client_id.clone()),
                limit: Some(200),
                collections: Some(vec!["tasks".into(), "docs".into()]),
                want_totals: false,
                want_checksums: checksums,
                restart: None,
                max_priority: None,
                subscriptions: None,
                priorities: None,
            };
            let t = Instant::now();
            let page: PullPage = self.post(ferry_protocol::PULL_PATH, &req).await;
            seen.lock()
                .unwrap()
                .pull_ms
                .push(t.elapsed().as_secs_f64() * 1e3);
            for (c, ch) in &page.changes {
                let view = self.view.entry(c.clone()).or_default();
                for r in &ch.upserts {
                    view.insert(r.id.clone(), r.version);
                }
                for id in ch.deletes.iter().chain(&ch.evictions) {
                    view.remove(id);
                }
            }
            self.cursor = Some(page.cursor);
            if !page.has_more {
                return page.checksums;
            }
        }
    }

    /// Pushes `creates` new records and updates of some of its own.
    async fn push(&mut self, user: &str, team: &str, round: usize, seen: &Mutex<Seen>) {
        let mut mutations = Vec::new();
        for k in 0..4 {
            let id = format!("{}-r{round}-{k}", self.client_id);
            let (collection, body) = if k % 2 == 0 {
                ("tasks", json!({"title": id, "done": false}))
            } else {
                ("docs", json!({"title": "shared", "space": team}))
            };
            mutations.push(Mutation {
                mutation_id: format!("{id}-c"),
                collection: collection.into(),
                record_id: id,
                op: Op::Create,
                fields: fields(body),
                base_version: None,
            });
        }
        for (collection, id, version) in self.mine.iter().rev().take(2) {
            mutations.push(Mutation {
                mutation_id: format!("{id}-u{round}"),
                collection: collection.clone(),
                record_id: id.clone(),
                op: Op::Update,
                fields: fields(json!({"title": format!("r{round}")})),
                base_version: Some(*version),
            });
        }
        let req = PushRequest {
            client_id: self.client_id.clone(),
            mutations: mutations.clone(),
        };
        let t = Instant::now();
        let resp: PushResponse = self.post(ferry_protocol::PUSH_PATH, &req).await;
        let mut seen = seen.lock().unwrap();
        seen.push_ms.push(t.elapsed().as_secs_f64() * 1e3);
        for (m, r) in mutations.iter().zip(&resp.results) {
            let MutationOutcome::Applied { version } = r.outcome else {
                panic!("{} not applied: {:?}", m.record_id, r.outcome);
            };
            // Its own writes are not echoed: the copy takes the answer.
            self.view
                .entry(m.collection.clone())
                .or_default()
                .insert(m.record_id.clone(), version);
            match self.mine.iter_mut().find(|(_, id, _)| *id == m.record_id) {
                Some(e) => e.2 = version,
                None => self
                    .mine
                    .push((m.collection.clone(), m.record_id.clone(), version)),
            }
            seen.applied.entry(user.to_string()).or_default().insert((
                m.collection.clone(),
                m.record_id.clone(),
                version,
            ));
        }
    }
}

fn checksum_of(view: &BTreeMap<String, u64>) -> Checksum {
    let digest = view.iter().fold(0, |d, (id, v)| d ^ record_digest(id, *v));
    Checksum::new(view.len() as u64, digest)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_push_and_pull_at_once_and_every_copy_matches_its_checksum() {
    let Some(db) = pg_db().await else { return };
    let (clients, rounds, users) = (
        env("FERRY_LOAD_CLIENTS", 100),
        env("FERRY_LOAD_ROUNDS", 3),
        env("FERRY_LOAD_USERS", 50).max(1),
    );
    let mut config = test_config();
    // One connection per client, all at once: past the default cap of 512,
    // 1,000 clients in one process ran out of file descriptors (see
    // docs/benchmarks.md, "Load and scale-out").
    config.limits.max_connections = 4096;
    config.users = (0..users)
        .map(|u| UserConfig {
            id: format!("u{u}"),
            token: format!("token-{u}"),
            scopes: vec![format!("team-{}", u / 10)],
        })
        .collect();
    let server = ferry_server::start(ferry_server::ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        config,
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let u = i % users;
            let mut c = Client {
                http: http.clone(),
                base: format!("http://{}", server.addr()),
                token: format!("token-{u}"),
                client_id: format!("c{i}"),
                cursor: None,
                view: View::new(),
                mine: Vec::new(),
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let (user, team) = (format!("u{u}"), format!("team-{}", u / 10));
                for round in 0..rounds {
                    c.pull(false, &seen).await;
                    c.push(&user, &team, round, &seen).await;
                }
                (u, c)
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("no client failed"));
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Every client catches up and checks its copy against the server's.
    for (u, c) in &mut done {
        let sums = c
            .pull(true, &seen)
            .await
            .expect("checksums on the last page");
        for collection in ["tasks", "docs"] {
            let view = c.view.get(collection).cloned().unwrap_or_default();
            assert_eq!(
                sums[collection],
                checksum_of(&view),
                "client {} (user u{u}): {collection} differs from the server's",
                c.client_id
            );
        }
    }
    // Nothing acknowledged is missing: each user's own tasks, at the last
    // version a push was told, are in the copy of every client of that user.
    let (mut push, mut pull, writes) = {
        let seen = seen.lock().unwrap();
        let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (user, applied) in &seen.applied {
            for (collection, id, version) in applied {
                if collection == "tasks" {
                    let v = last.entry((user.as_str(), id.as_str())).or_default();
                    *v = (*v).max(*version);
                }
            }
        }
        for (u, c) in &done {
            let user = format!("u{u}");
            for ((_, id), version) in last.iter().filter(|((who, _), _)| *who == user) {
                assert_eq!(
                    c.view["tasks"].get(*id),
                    Some(version),
                    "{id} in {}",
                    c.client_id
                );
            }
        }
        let writes: usize = seen.applied.values().map(BTreeSet::len).sum();
        (seen.push_ms.clone(), seen.pull_ms.clone(), writes)
    };
    println!(
        "load: {clients} clients of {users} users, {rounds} rounds in {elapsed:.1} s: \
         {} pushes ({writes} writes, {:.0}/s), {} pulls; push p50 {:.1} ms p99 {:.1} ms; \
         pull p50 {:.1} ms p99 {:.1} ms",
        push.len(),
        writes as f64 / elapsed,
        pull.len(),
        percentile(&mut push, 0.5),
        percentile(&mut push, 0.99),
        percentile(&mut pull, 0.5),
        percentile(&mut pull, 0.99),
    );
    server.shutdown().await;
}
