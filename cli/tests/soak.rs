//! Five `ferry` CLI devices of two users sync through the fault proxy to a
//! ferry-server process, with kill -9 of CLI syncs and of the server (feature
//! `crash-points`: `cargo test -p ferry-cli --features crash-points --test soak`).
//!
//! Each round, each device makes random offline edits with `ferry put` and
//! `ferry delete` (real processes), then runs `ferry sync` through the proxy,
//! which cuts, resets, duplicates, trickles and answers 5xx at random. Some
//! syncs run with `FERRY_CRASH_AT=<point>` (src/crash.rs) and are killed with
//! SIGKILL once they stop there; sometimes the server process is killed too,
//! and started again on the same database. The oracle:
//! - **freshness**: after each sync that succeeded, no record synced on the
//!   device is older than the server's version at the start of that sync;
//! - at the end, faults off: every outbox empties; **convergence**: every
//!   device of a user holds exactly the records, at the versions, that the
//!   server holds for that user; **no lost write**: the server holds every
//!   record a device was told it created, unless one was told it deleted it;
//!   **isolation**: no device holds a record of the other user.
//!
//! `FERRY_SOAK_SEED` (default 1) and `FERRY_SOAK_ROUNDS` (default 4);
//! scripts/soak.sh runs long ones.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry::Store;
use ferry_fault_proxy::helper::Helper;
use ferry_fault_proxy::{FaultProxy, Random};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

const CHILD_ENV: &str = "FERRY_SOAK_SERVER";
const USERS: [(&str, &str); 2] = [("alice", "alice-dev-token"), ("bob", "bob-dev-token")];
const POINTS: [&str; 4] = ["stage", "publish", "push_answered", "apply"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server process: ferry-server on `<port>` over `<db>`, until killed.
#[test]
#[ignore = "run by the soak test as its server process"]
fn server_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (port, db) = spec.split_once(' ').unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _server = ferry_server::start(ferry_server::ServerOptions {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            database_url: format!("sqlite:{db}"),
            config: ferry_server::ServerConfig::dev(),
        })
        .await
        .unwrap();
        println!("LISTENING");
        std::future::pending::<()>().await;
    });
}

/// The server process on `port` over `db`; killed (SIGKILL) on drop.
fn start_server(port: u16, db: &Path) -> Helper {
    let spec = format!("{port} {}", db.display());
    Helper::start("server_child", &[(CHILD_ENV, &spec)], "LISTENING")
        .map(|(h, _)| h)
        .expect("the server process started")
}

struct Device {
    db: PathBuf,
    user: usize,
}

fn ferry(db: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.arg("--db").arg(db).env_remove("FERRY_CRASH_AT");
    c
}

/// The user's records on the server now, id → version: what a fresh device
/// pulls, straight from the server.
fn server_view(direct: &str, token: &str, schema: &Path) -> BTreeMap<String, u64> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let init = ferry(&db)
        .arg("init")
        .arg("--schema")
        .arg(schema)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let pulled = ferry(&db)
        .args([
            "sync",
            "--server",
            direct,
            "--token",
            token,
            "--progress",
            "none",
        ])
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{pulled:?}");
    local(&db)
        .into_iter()
        .map(|(id, (v, _))| (id, v.expect("a pulled record has a version")))
        .collect()
}

/// The device's tasks: id → (version, synced).
fn local(db: &Path) -> BTreeMap<String, (Option<u64>, bool)> {
    let store = Store::open_existing(db).unwrap();
    store
        .query("tasks", &Default::default())
        .unwrap()
        .into_iter()
        .map(|r| {
            let synced = r.status == ferry::RecordStatus::Synced;
            (r.id, (r.version, synced))
        })
        .collect()
}

/// Runs `ferry sync` (with `--retry-now` when `now`), killed at `point` if it
/// stops there; whether it succeeded (a killed or failed sync did not).
fn sync(dev: &Device, url: &str, point: Option<&str>, now: bool) -> bool {
    let mut cmd = ferry(&dev.db);
    cmd.args([
        "sync",
        "--server",
        url,
        "--token",
        USERS[dev.user].1,
        "--page-size",
        "4",
        "--progress",
        "none",
    ]);
    if now {
        cmd.arg("--retry-now");
    }
    let Some(point) = point else {
        return cmd.output().unwrap().status.success();
    };
    let mut child = cmd
        .env("FERRY_CRASH_AT", point)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stopped = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l.ends_with(&format!("FERRY_CRASH_POINT {point}")));
    let _ = child.kill();
    let status = child.wait().unwrap();
    !stopped && status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_devices_through_faults_and_kills_keep_every_promise() {
    let seed = env_or("FERRY_SOAK_SEED", 1);
    let rounds = env_or("FERRY_SOAK_ROUNDS", 4);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let server_db = dir.path().join("server.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Some(start_server(port, &server_db));
    let direct = format!("http://127.0.0.1:{port}");
    let plan = Random::new(seed, 0.15, Random::all_faults(Duration::from_millis(20)), 2);
    let proxy = FaultProxy::start(format!("127.0.0.1:{port}").parse().unwrap(), plan.clone())
        .await
        .unwrap();
    let url = proxy.url();

    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks.schema.json");
    let devices: Vec<Device> = (0..5)
        .map(|i| {
            let db = dir.path().join(format!("device{i}.db"));
            let out = ferry(&db)
                .arg("init")
                .arg("--schema")
                .arg(&schema)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            Device { db, user: i % 2 }
        })
        .collect();
    let mut created: [BTreeSet<String>; 2] = Default::default();
    let mut deleted: [BTreeSet<String>; 2] = Default::default();
    let (mut kills, mut server_kills, mut fresh_checks) = (0, 0, 0);
    let mut next_id = 0;
    for round in 0..rounds {
        for (d, dev) in devices.iter().enumerate() {
            // Offline edits: creates, updates and deletes of what it holds.
            let mut held: Vec<String> = local(&dev.db).into_keys().collect();
            for _ in 0..rng.random_range(1..=3) {
                let (user, _) = USERS[dev.user];
                let out = match (rng.random_range(0..4), held.is_empty()) {
                    (0 | 1, _) | (_, true) => {
                        next_id += 1;
                        let id = format!("{user}-{next_id}");
                        let o = ferry(&dev.db)
                            .args([
                                "put",
                                "tasks",
                                &json!({"id": id, "title": "new"}).to_string(),
                            ])
                            .output()
                            .unwrap();
                        if o.status.success() {
                            created[dev.user].insert(id);
                        }
                        o
                    }
                    (2, false) => {
                        let id = &held[rng.random_range(0..held.len())];
                        ferry(&dev.db)
                            .args([
                                "put",
                                "tasks",
                                &json!({"id": id, "title": format!("r{round} d{d}")}).to_string(),
                            ])
                            .output()
                            .unwrap()
                    }
                    _ => {
                        let id = held.swap_remove(rng.random_range(0..held.len()));
                        let o = ferry(&dev.db)
                            .args(["delete", "tasks", &id])
                            .output()
                            .unwrap();
                        if o.status.success() {
                            deleted[dev.user].insert(id);
                        }
                        o
                    }
                };
                assert!(out.status.success(), "a local edit failed: {out:?}");
            }
            let token = USERS[dev.user].1;
            let before = server_view(&direct, token, &schema);
            let point = rng
                .random_bool(0.3)
                .then(|| POINTS[rng.random_range(0..POINTS.len())]);
            if point.is_some() {
                kills += 1;
            }
            let ok = sync(dev, &url, point, false);
            if rng.random_bool(0.15) {
                // kill -9 of the server, and a restart on the same database.
                drop(server.take());
                server = Some(start_server(port, &server_db));
                server_kills += 1;
            }
            if ok {
                fresh_checks += 1;
                for (id, (version, synced)) in local(&dev.db) {
                    if let (true, Some(v), Some(was)) = (synced, version, before.get(&id)) {
                        assert!(
                            v >= *was,
                            "seed {seed}: {id} synced at version {v} on device {d}, older than the server's {was} at the start of the sync"
                        );
                    }
                }
            }
        }
    }

    // Faults off: every device settles.
    plan.set_rate(0.0);
    for dev in &devices {
        for _ in 0..4 {
            // (A push that failed under faults waits out its backoff, on the
            // wall clock: the user's "retry now" sends it.)
            if sync(dev, &url, None, true)
                && Store::open_existing(&dev.db)
                    .unwrap()
                    .pending_counts()
                    .unwrap()
                    .0
                    == 0
            {
                break;
            }
        }
        let pending = Store::open_existing(&dev.db)
            .unwrap()
            .pending_counts()
            .unwrap()
            .0;
        assert_eq!(pending, 0, "seed {seed}: an outbox did not empty");
    }
    // A last pull for each, now that every push is in.
    for dev in &devices {
        assert!(
            sync(dev, &url, None, false),
            "seed {seed}: a sync without faults failed"
        );
    }
    for (u, (user, token)) in USERS.iter().enumerate() {
        let server: BTreeMap<String, Option<u64>> = server_view(&direct, token, &schema)
            .into_iter()
            .map(|(id, v)| (id, Some(v)))
            .collect();
        let expected: BTreeSet<String> = created[u].difference(&deleted[u]).cloned().collect();
        let held: BTreeSet<String> = server.keys().cloned().collect();
        assert_eq!(
            held, expected,
            "seed {seed}: {user}'s records on the server"
        );
        for (d, dev) in devices.iter().enumerate().filter(|(_, dev)| dev.user == u) {
            let mine: BTreeMap<String, Option<u64>> = local(&dev.db)
                .into_iter()
                .map(|(id, (v, _))| (id, v))
                .collect();
            assert_eq!(mine, server, "seed {seed}: device {d} of {user} converged");
            let other = USERS[1 - u].0;
            assert!(
                mine.keys().all(|id| !id.starts_with(other)),
                "seed {seed}: device {d} of {user} holds {other}'s records"
            );
        }
    }
    let stats = proxy.stats();
    println!(
        "soak seed {seed}: {rounds} rounds of 5 devices; {kills} CLI syncs killed at a crash point, {server_kills} server kills, {fresh_checks} freshness checks; proxy: {stats:?}"
    );
    assert!(
        kills > 0 && server_kills > 0,
        "the seed made kills of both kinds"
    );
    drop(server);
}
