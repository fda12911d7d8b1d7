//! kill -9 of the ferry-server process in the middle of a push, on SQLite and
//! on PostgreSQL (the reliability issue, point 1).
//!
//! A client pushes batches of creates and updates over HTTP and remembers
//! every result the server acknowledged. Then it writes a large batch straight
//! onto a socket and SIGKILLs the server: in even rounds as soon as the bytes
//! are out, so the kill lands while the server reads or applies it; in odd
//! rounds once the first byte of the answer arrives, so it lands after the
//! commit and the answer is lost. After each restart on the same database:
//! - every acknowledged write is there, at its acknowledged version;
//! - the batch in flight is all there or not there at all (one transaction);
//! - retrying it under the same mutation ids applies it exactly once: its
//!   creates are at version 1, its updates one past what they were based on,
//!   whether the first try committed or not; retrying an acknowledged batch
//!   changes nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "alice-dev-token";
/// Kills per backend: `FERRY_SERVER_KILLS` (default 6; scripts/soak.sh: 200).
fn kills() -> usize {
    std::env::var("FERRY_SERVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}
const BATCH: usize = 1_500;

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    /// A failing test must not leave the server running (it holds the test's
    /// output pipe open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a free port; its URL from the line it prints.
fn spawn(database_url: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ferry-server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("ferry-server printed its address")
            .unwrap();
        if let Some(url) = line.strip_prefix("ferry-server listening on ") {
            break url.trim().to_string();
        }
    };
    // Keep reading its stdout, so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

/// A push of `n` creates (`<tag>-<i>`) and updates of `updates` (id → the
/// version to base them on).
fn batch(tag: &str, n: usize, updates: &BTreeMap<String, u64>) -> Value {
    let mut mutations: Vec<Value> = (0..n)
        .map(|i| {
            json!({"mutation_id": format!("m-{tag}-{i}"), "collection": "tasks", "record_id": format!("{tag}-{i}"),
                   "op": "create", "fields": {"title": format!("{tag} {i}"), "done": false}})
        })
        .collect();
    for (id, base) in updates {
        mutations.push(json!({"mutation_id": format!("m-{tag}-u-{id}"), "collection": "tasks", "record_id": id,
                              "op": "update", "fields": {"title": format!("{tag} edit")}, "base_version": base}));
    }
    json!({"client_id": "killer", "mutations": mutations})
}

async fn push(url: &str, body: &Value) -> Vec<(String, u64)> {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/push"))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let mutations = body["mutations"].as_array().unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(mutations)
        .map(|(r, m)| {
            assert_eq!(r["status"], "applied", "{r}");
            (
                m["record_id"].as_str().unwrap().to_string(),
                r["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Every record on the server: id → version.
async fn everything(url: &str) -> BTreeMap<String, u64> {
    let http = reqwest::Client::new();
    let (mut out, mut cursor) = (BTreeMap::new(), Value::Null);
    loop {
        let page: Value = http
            .post(format!("{url}/v1/pull"))
            .bearer_auth(TOKEN)
            .json(&json!({"cursor": cursor, "limit": 5000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for r in page["changes"]["tasks"]["upserts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.insert(
                r["id"].as_str().unwrap().to_string(),
                r["version"].as_u64().unwrap(),
            );
        }
        cursor = page["cursor"].clone();
        if page["has_more"] != true {
            return out;
        }
    }
}

/// Writes the push onto a socket, and kills the server once it is sent, or
/// once the first byte of its answer arrived (it committed; the answer is
/// lost).
async fn push_and_kill(server: &mut Server, body: &Value, after_answer: bool) {
    let addr = server.url.trim_start_matches("http://").to_string();
    let json = body.to_string();
    let request = format!(
        "POST /v1/push HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    );
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    if after_answer {
        use tokio::io::AsyncReadExt;
        let mut first = [0u8; 1];
        assert_eq!(socket.read(&mut first).await.unwrap(), 1);
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
}

async fn kills_mid_push(database_url: &str) {
    let mut server = spawn(database_url);
    // id → the version the server acknowledged.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_acked_batch = json!(null);
    let (mut committed, mut lost) = (0, 0);
    let kills = kills();
    for round in 0..kills {
        for k in 0..2 {
            let updates: BTreeMap<String, u64> = acked
                .iter()
                .step_by(7)
                .take(20)
                .map(|(id, v)| (id.clone(), *v))
                .collect();
            let body = batch(&format!("r{round}k{k}"), 50, &updates);
            acked.extend(push(&server.url, &body).await);
            last_acked_batch = body;
        }
        let updates: BTreeMap<String, u64> = acked
            .iter()
            .step_by(3)
            .take(100)
            .map(|(id, v)| (id.clone(), *v))
            .collect();
        let tag = format!("r{round}kill");
        let in_flight = batch(&tag, BATCH, &updates);
        // Odd rounds kill once the answer starts: after the commit.
        let after_answer = round % 2 == 1;
        push_and_kill(&mut server, &in_flight, after_answer).await;

        server = spawn(database_url);
        let seen = everything(&server.url).await;
        let created = (0..BATCH)
            .filter(|i| seen.contains_key(&format!("{tag}-{i}")))
            .count();
        let updated = updates
            .iter()
            .filter(|(id, base)| seen[*id] == **base + 1)
            .count();
        assert!(
            (created, updated) == (0, 0) || (created, updated) == (BATCH, updates.len()),
            "round {round}: the batch in flight is partly there: {created} of {BATCH} creates, {updated} of {} updates",
            updates.len()
        );
        if after_answer {
            assert_eq!(
                created, BATCH,
                "round {round}: it answered, so it had committed"
            );
        }
        if created == BATCH {
            committed += 1;
        } else {
            lost += 1;
            for (id, version) in &acked {
                assert_eq!(
                    seen.get(id),
                    Some(version),
                    "round {round}: {id} as acknowledged"
                );
            }
        }
        // The retry applies it once, committed before the kill or not.
        acked.extend(push(&server.url, &in_flight).await);
        let seen = everything(&server.url).await;
        for i in 0..BATCH {
            assert_eq!(
                seen[&format!("{tag}-{i}")],
                1,
                "round {round}: created once"
            );
        }
        for (id, base) in &updates {
            assert_eq!(seen[id], base + 1, "round {round}: {id} updated once");
        }
        assert_eq!(
            seen, acked,
            "round {round}: every acknowledged write, as acknowledged"
        );
        // An acknowledged batch again: its remembered results, nothing changes.
        push(&server.url, &last_acked_batch).await;
        assert_eq!(everything(&server.url).await, acked);
    }
    eprintln!(
        "kill -9 mid-push on {}: {kills} kills; the batch in flight had committed at {committed} of them (the answer lost) and was not kept at {lost}",
        database_url.split(':').next().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_push_keeps_what_it_acknowledged_on_sqlite() {
    let db = sqlite_db();
    kills_mid_push(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_push_keeps_what_it_acknowledged_on_postgres() {
    let Some(db) = pg_db().await else { return };
    kills_mid_push(&db.url).await;
}
