//! Sync benchmarks (issues 4 and 10). Run with:
//!
//! ```text
//! cargo bench --bench sync
//! ```
//!
//! Environment: `FERRY_BENCH_SYNC_N` (records, default 1,000,000),
//! `FERRY_BENCH_SYNC_REPS` (repetitions of the 1M runs, default 3),
//! `FERRY_BENCH_SYNC_INCR` (incremental syncs, default 20),
//! `FERRY_BENCH_SYNC_PUSH_REPS` (10k-push repetitions, default 5),
//! `FERRY_BENCH_SYNC_CATCHUP` (server changes of the catch-up, default 100,000),
//! `FERRY_BENCH_SYNC_IDS` (id kinds, default `v4,v7`: random UUIDs, as apps make
//! them, and time-ordered ones). Without `--bench` (as under
//! `cargo test --all-targets`) it runs a small smoke version.
//!
//! For each id kind the parent process runs an in-process ferry-server on SQLite,
//! seeds it through `/v1/push` (batches of 5,000, in the order the ids were
//! drawn) and runs the raw baselines. Every client measurement runs in a child
//! process (this binary re-executed with `--ferry-sync-child`), so the server's
//! memory and writes are not counted in the client's peak RSS (`VmHWM`) or bytes
//! written (`/proc/self/io`: `write_bytes`, what the process sent to storage, and
//! `cancelled_write_bytes`, the part of it that was deleted before it reached the
//! disk, such as a sort's temporary file). Measured, each as a median:
//!
//! 1. **initial**: a first `SyncClient::sync()` of N tasks into a fresh client DB
//!    over loopback HTTP (gzip, as deployed), against a raw rusqlite insert of the
//!    same rows in the same order into the same table (created by `Store::open`
//!    with the same schema, so the same columns and indexes): one transaction, one
//!    prepared statement, WAL, synchronous=NORMAL, the store writer's 64 MiB
//!    cache. Targets: ≥ 80% of raw, bytes written ≤ 3× the final DB size.
//!    Also a *pull-only* run (the same pages fetched and decoded, not stored).
//! 2. **peak RSS** of the client process during that sync. Target < 100 MB.
//! 3. **incremental**: one record changed on the server by another device, then
//!    `sync()` on the N-row client; baseline: `sync()` with nothing to pull.
//!    Target < 10 ms.
//! 4. **catch-up**: the N-row client DB of the last initial sync, after another
//!    device made `FERRY_BENCH_SYNC_CATCHUP` changes on the server (60% updates
//!    of existing records, 30% creates, 10% deletes, shuffled): one `sync()`,
//!    against a raw upsert of the same rows (`INSERT … ON CONFLICT DO UPDATE`,
//!    `DELETE`) in the same order into a copy of the same DB, in one
//!    transaction. Targets: ≥ 70% of raw, bytes ≤ 3× the raw upsert's.
//! 5. **push**: 10k local creates, then `push_all()` (default batch of 1,000);
//!    baseline: the same number of mutations pushed straight through the
//!    transport (no client store). Target ≥ 90% of the transport.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry::sync::{SyncClient, SyncConfig, SyncPhase, SyncStatus};
use ferry::transport::{HttpTransport, StaticToken, Transport, TransportError};
use ferry::{Fields, Schema, Store, WriteOp};
use ferry_protocol::{Mutation, Op, PullPage, PullRequest, PushRequest, PushResponse, RawFields};
use parking_lot::Mutex;
use serde_json::{Value, json};

const TOKEN: &str = "alice-dev-token";
const SCHEMA: &str = include_str!("../examples/tasks.schema.json");
const CHILD_FLAG: &str = "--ferry-sync-child";
const RESULT_PREFIX: &str = "FERRY_SYNC_BENCH ";
const SEED_BATCH: usize = 5_000;

struct Params {
    n: usize,
    reps: usize,
    incr: usize,
    push: usize,
    push_reps: usize,
    catchup: usize,
    ids: Vec<IdKind>,
}

/// How record ids are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    /// Random (UUID v4): what apps make.
    V4,
    /// Time-ordered (UUID v7).
    V7,
}

impl IdKind {
    fn parse(s: &str) -> IdKind {
        match s.trim() {
            "v4" => IdKind::V4,
            "v7" => IdKind::V7,
            other => panic!("unknown id kind `{other}` (v4 or v7)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            IdKind::V4 => "v4",
            IdKind::V7 => "v7",
        }
    }

    fn new_id(self) -> String {
        match self {
            IdKind::V4 => uuid::Uuid::new_v4(),
            IdKind::V7 => uuid::Uuid::now_v7(),
        }
        .to_string()
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn params(bench: bool) -> Params {
    if bench {
        Params {
            n: env_or("FERRY_BENCH_SYNC_N", 1_000_000),
            reps: env_or("FERRY_BENCH_SYNC_REPS", 3),
            incr: env_or("FERRY_BENCH_SYNC_INCR", 20),
            push: 10_000,
            push_reps: env_or("FERRY_BENCH_SYNC_PUSH_REPS", 5),
            catchup: env_or("FERRY_BENCH_SYNC_CATCHUP", 100_000),
            ids: std::env::var("FERRY_BENCH_SYNC_IDS")
                .unwrap_or_else(|_| "v4,v7".into())
                .split(',')
                .map(IdKind::parse)
                .collect(),
        }
    } else {
        Params {
            n: 3_000,
            reps: 1,
            incr: 2,
            push: 500,
            push_reps: 1,
            catchup: 300,
            ids: vec![IdKind::V4, IdKind::V7],
        }
    }
}

fn schema() -> Schema {
    Schema::from_json(SCHEMA).unwrap()
}

/// One task, as pushed to the server and as inserted by the raw baseline.
struct Row {
    id: String,
    title: String,
    done: bool,
    priority: i64,
    notes: Option<String>,
    project: Option<String>,
}

fn rows(n: usize, ids: IdKind) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            id: ids.new_id(),
            title: format!("task number {i} with a typical title"),
            done: i % 3 == 0,
            priority: (i % 5) as i64,
            notes: (i % 2 == 0).then(|| format!("notes for task {i}: remember the details")),
            project: (i % 4 != 0).then(|| format!("project-{}", i % 50)),
        })
        .collect()
}

fn row_fields(r: &Row) -> Fields {
    let Value::Object(m) = json!({
        "title": r.title,
        "done": r.done,
        "priority": r.priority,
        "notes": r.notes,
        "archived": false,
        "project": r.project,
    }) else {
        unreachable!()
    };
    m
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == CHILD_FLAG) {
        child(&args[i + 1..]);
        return;
    }
    let bench = args.iter().any(|a| a == "--bench");
    parent(params(bench));
}

// ---------------------------------------------------------------- parent

fn parent(p: Params) {
    eprintln!(
        "sync bench: N = {}, reps = {}, incremental runs = {}, push = {} x {}, catch-up = {}, ids = {:?}",
        p.n, p.reps, p.incr, p.push, p.push_reps, p.catchup, p.ids
    );
    for &ids in &p.ids {
        run_kind(&p, ids);
    }
}

/// Every measurement for one kind of id, against a server of its own.
fn run_kind(p: &Params, ids: IdKind) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
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
    eprintln!("ids {}:", ids.name());

    let data = rows(p.n, ids);
    let t = Instant::now();
    rt.block_on(seed(&url, &data));
    let seed_s = secs(t.elapsed());
    eprintln!(
        "seeded {} tasks through /v1/push in {:.1} s ({:.0}/s)",
        p.n,
        seed_s,
        p.n as f64 / seed_s
    );

    // 1-3: raw insert and initial sync, interleaved; the last child also runs
    // the incremental syncs, and its DB is kept for the catch-up.
    let mut raw = Vec::new();
    let mut initial = Vec::new();
    let mut pull_only = Vec::new();
    let client_db = dir.path().join("client.db");
    for rep in 0..p.reps {
        let db = dir.path().join(format!("raw-{rep}.db"));
        let r = raw_insert(&db, &data);
        eprintln!("rep {rep}: raw insert {r}");
        raw.push(r);
        remove_db(&db);

        let last = rep + 1 == p.reps;
        let db = if last {
            client_db.clone()
        } else {
            dir.path().join(format!("client-{rep}.db"))
        };
        let incr = if last { p.incr } else { 0 };
        let out = run_child(&[
            "initial",
            &url,
            &db.display().to_string(),
            &incr.to_string(),
        ]);
        assert_eq!(out["pulled"].as_u64().unwrap() as usize, p.n, "{out}");
        eprintln!("rep {rep}: initial sync {out}");
        initial.push(out);
        if !last {
            remove_db(&db);
        }

        let out = run_child(&["pull-only", &url]);
        eprintln!("rep {rep}: pull only {out}");
        pull_only.push(out);
    }

    // 4: catch-up, against a raw upsert into a copy of the same DB.
    let raw_db = dir.path().join("raw-catchup.db");
    std::fs::copy(&client_db, &raw_db).unwrap();
    let changes = catchup_changes(&data, p.catchup, ids);
    rt.block_on(push_changes(&url, &changes));
    let raw_catchup = raw_upsert(&raw_db, &changes);
    eprintln!("raw upsert {raw_catchup}");
    remove_db(&raw_db);
    let catchup = run_child(&["catchup", &url, &client_db.display().to_string()]);
    eprintln!("catch-up {catchup}");
    remove_db(&client_db);

    // 5: push.
    let mut push_raw = Vec::new();
    for _ in 0..p.push_reps {
        push_raw.push(rt.block_on(raw_push(&url, p.push, ids)));
    }
    let db = dir.path().join("push.db");
    let push_out = run_child(&[
        "push",
        &url,
        &db.display().to_string(),
        &p.push.to_string(),
        &p.push_reps.to_string(),
        ids.name(),
    ]);
    eprintln!("push {push_out}");

    rt.block_on(server.shutdown());
    report(
        p,
        ids,
        seed_s,
        &Runs {
            raw: &raw,
            initial: &initial,
            pull_only: &pull_only,
            raw_catchup: &raw_catchup,
            catchup: &catchup,
            push_raw: &push_raw,
            push: &push_out,
        },
    );
}

/// Deletes a closed DB and every file beside it (WAL, staging file).
fn remove_db(db: &Path) {
    Store::delete_database(db).unwrap();
}

async fn seed(url: &str, data: &[Row]) {
    let t = HttpTransport::new(url).unwrap();
    for chunk in data.chunks(SEED_BATCH) {
        let req = PushRequest {
            client_id: "bench-seeder".into(),
            mutations: chunk
                .iter()
                .map(|r| Mutation {
                    mutation_id: uuid::Uuid::new_v4().to_string(),
                    collection: "tasks".into(),
                    record_id: r.id.clone(),
                    op: Op::Create,
                    fields: serde_json::value::to_raw_value(&row_fields(r)).unwrap(),
                    base_version: None,
                })
                .collect(),
        };
        let resp = t.push(TOKEN, &req).await.expect("seed push");
        assert_eq!(resp.results.len(), chunk.len());
    }
}

/// This process's `/proc/self/io` counters.
#[derive(Debug, Clone, Copy, Default)]
struct Io {
    write_bytes: u64,
    cancelled: u64,
    wchar: u64,
}

impl Io {
    fn now() -> Io {
        let s = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Io {
            write_bytes: get("write_bytes"),
            cancelled: get("cancelled_write_bytes"),
            wchar: get("wchar"),
        }
    }

    /// What was written since `before`, as JSON fields, with `db_bytes` the
    /// final database's size.
    fn since(before: Io, db_bytes: u64) -> Value {
        let now = Io::now();
        json!({
            "write_bytes": now.write_bytes - before.write_bytes,
            "cancelled_write_bytes": now.cancelled - before.cancelled,
            "wchar": now.wchar - before.wchar,
            "db_bytes": db_bytes,
        })
    }
}

/// The size of the database at `p` (its pages, counting those still in the WAL).
fn db_size(p: &Path) -> u64 {
    let conn = rusqlite::Connection::open(p).unwrap();
    let pages: u64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let size: u64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    pages * size
}

fn raw_conn(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "cache_size", -64 * 1024).unwrap();
    conn
}

const RAW_INSERT: &str = "INSERT INTO tasks (id, title, done, priority, notes, archived, project,
     _status, _changed, _version, _created_at, _updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'synced', NULL, ?8, ?9, ?9)";
const RAW_UPSERT: &str = "INSERT INTO tasks (id, title, done, priority, notes, archived, project,
     _status, _changed, _version, _created_at, _updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'synced', NULL, ?8, ?9, ?9)
     ON CONFLICT(id) DO UPDATE SET title = excluded.title, done = excluded.done,
     priority = excluded.priority, notes = excluded.notes, archived = excluded.archived,
     project = excluded.project, _version = excluded._version, _updated_at = excluded._updated_at";

fn raw_row(stmt: &mut rusqlite::CachedStatement<'_>, r: &Row, version: i64) {
    let now = 1_700_000_000_000i64;
    stmt.execute(rusqlite::params![
        r.id, r.title, r.done, r.priority, r.notes, false, r.project, version, now
    ])
    .unwrap();
}

/// Inserts `data` into a fresh copy of the client's `tasks` table: seconds and
/// bytes written (up to the commit, as for a sync).
fn raw_insert(db: &Path, data: &[Row]) -> Value {
    // Same table, columns and indexes as the client DB.
    drop(Store::open(db, schema()).unwrap());
    let mut conn = raw_conn(db);
    let io = Io::now();
    let t = Instant::now();
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx.prepare_cached(RAW_INSERT).unwrap();
        for r in data {
            raw_row(&mut stmt, r, 1);
        }
    }
    tx.commit().unwrap();
    let mut out = Io::since(io, db_size(db));
    out["total_s"] = json!(secs(t.elapsed()));
    out
}

/// One change another device makes during the catch-up.
enum Change {
    Upsert(Row),
    Delete(String),
}

/// `n` changes to the records of `data`: 60% updates of existing records, 30%
/// creates, 10% deletes, each record at most once, shuffled.
fn catchup_changes(data: &[Row], n: usize, ids: IdKind) -> Vec<Change> {
    use rand::seq::{IndexedRandom, SliceRandom};
    let mut rng = rand::rng();
    let (updates, deletes) = (n * 6 / 10, n / 10);
    let creates = n - updates - deletes;
    let touched: Vec<&Row> = data.choose_multiple(&mut rng, updates + deletes).collect();
    let mut out: Vec<Change> = touched[..updates]
        .iter()
        .map(|r| {
            Change::Upsert(Row {
                id: r.id.clone(),
                title: format!("{} (changed)", r.title),
                done: !r.done,
                priority: r.priority,
                notes: r.notes.clone(),
                project: r.project.clone(),
            })
        })
        .collect();
    out.extend(
        touched[updates..]
            .iter()
            .map(|r| Change::Delete(r.id.clone())),
    );
    out.extend(rows(creates, ids).into_iter().map(Change::Upsert));
    out.shuffle(&mut rng);
    out
}

/// Pushes `changes` from another device (updates carry the whole row).
async fn push_changes(url: &str, changes: &[Change]) {
    let t = HttpTransport::new(url).unwrap();
    for chunk in changes.chunks(SEED_BATCH) {
        let req = PushRequest {
            client_id: "bench-other-device".into(),
            mutations: chunk
                .iter()
                .map(|c| match c {
                    Change::Upsert(r) => Mutation {
                        mutation_id: uuid::Uuid::new_v4().to_string(),
                        collection: "tasks".into(),
                        record_id: r.id.clone(),
                        // An update of an existing record or a create: `put`
                        // semantics are not in the protocol, so updates go as
                        // updates (the title says which).
                        op: if r.title.ends_with("(changed)") {
                            Op::Update
                        } else {
                            Op::Create
                        },
                        fields: serde_json::value::to_raw_value(&row_fields(r)).unwrap(),
                        base_version: None,
                    },
                    Change::Delete(id) => Mutation {
                        mutation_id: uuid::Uuid::new_v4().to_string(),
                        collection: "tasks".into(),
                        record_id: id.clone(),
                        op: Op::Delete,
                        fields: serde_json::value::to_raw_value(&json!({})).unwrap(),
                        base_version: None,
                    },
                })
                .collect(),
        };
        let resp = t.push(TOKEN, &req).await.expect("catch-up push");
        assert!(
            resp.results
                .iter()
                .all(|r| matches!(r.outcome, ferry_protocol::MutationOutcome::Applied { .. })),
            "{:?}",
            resp.results.first()
        );
    }
}

/// Applies `changes` to the DB at `db` in one transaction, as a raw upsert:
/// seconds and bytes written.
fn raw_upsert(db: &Path, changes: &[Change]) -> Value {
    let mut conn = raw_conn(db);
    let io = Io::now();
    let t = Instant::now();
    let tx = conn.transaction().unwrap();
    {
        let mut upsert = tx.prepare_cached(RAW_UPSERT).unwrap();
        let mut delete = tx
            .prepare_cached("DELETE FROM tasks WHERE id = ?1")
            .unwrap();
        for c in changes {
            match c {
                Change::Upsert(r) => raw_row(&mut upsert, r, 2),
                Change::Delete(id) => {
                    delete.execute([id]).unwrap();
                }
            }
        }
    }
    tx.commit().unwrap();
    let mut out = Io::since(io, db_size(db));
    out["total_s"] = json!(secs(t.elapsed()));
    out
}

/// Seconds to push `n` creates straight through the transport, 1,000 a request.
async fn raw_push(url: &str, n: usize, ids: IdKind) -> f64 {
    let t = HttpTransport::new(url).unwrap();
    let batches: Vec<PushRequest<RawFields>> = rows(n, ids)
        .chunks(SyncConfig::default().push_batch)
        .map(|c| PushRequest {
            client_id: "bench-raw-pusher".into(),
            mutations: c
                .iter()
                .map(|r| Mutation {
                    mutation_id: uuid::Uuid::now_v7().to_string(),
                    collection: "tasks".into(),
                    record_id: r.id.clone(),
                    op: Op::Create,
                    fields: serde_json::value::to_raw_value(&row_fields(r)).unwrap(),
                    base_version: None,
                })
                .collect(),
        })
        .collect();
    let start = Instant::now();
    for req in &batches {
        t.push(TOKEN, req).await.unwrap();
    }
    secs(start.elapsed())
}

fn run_child(args: &[&str]) -> Value {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg(CHILD_FLAG)
        .args(args)
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "child {args:?} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .expect("child printed a result");
    serde_json::from_str(line).unwrap()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn arr(v: &Value, k: &str) -> Vec<f64> {
    v[k].as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn med_of(v: &[Value], k: &str) -> f64 {
    median(&v.iter().map(|x| f(x, k)).collect::<Vec<_>>())
}

/// The runs of one id kind.
struct Runs<'a> {
    raw: &'a [Value],
    initial: &'a [Value],
    pull_only: &'a [Value],
    raw_catchup: &'a Value,
    catchup: &'a Value,
    push_raw: &'a [f64],
    push: &'a Value,
}

/// `write_bytes` as a multiple of the final DB, and net of cancelled writes.
fn bytes(v: &Value) -> String {
    let (w, c, db) = (
        f(v, "write_bytes"),
        f(v, "cancelled_write_bytes"),
        f(v, "db_bytes"),
    );
    format!(
        "{:.0} MB = {:.2}× the {:.0} MB DB ({:.2}× net of {:.0} MB cancelled)",
        w / 1e6,
        w / db,
        db / 1e6,
        (w - c) / db,
        c / 1e6
    )
}

fn report(p: &Params, ids: IdKind, seed_s: f64, r: &Runs<'_>) {
    let n = p.n as f64;
    let raw_s = med_of(r.raw, "total_s");
    let raw_rate = n / raw_s;
    let sync_s = med_of(r.initial, "total_s");
    let sync_rate = n / sync_s;
    let pull_rate = n / med_of(r.pull_only, "total_s");
    let hwm = med_of(r.initial, "vm_hwm_kb") / 1024.0;
    let last = r.initial.last().unwrap();
    let incr = arr(last, "incremental_ms");
    let empty = arr(last, "empty_ms");
    let push_times = arr(r.push, "push_s");
    let push_rate = p.push as f64 / median(&push_times);
    let push_raw_rate = p.push as f64 / median(r.push_raw);
    let median_run = |runs: &[Value]| -> Value {
        let mut v = runs.to_vec();
        v.sort_by(|a, b| f(a, "total_s").partial_cmp(&f(b, "total_s")).unwrap());
        v[v.len() / 2].clone()
    };
    let (raw_mid, sync_mid) = (median_run(r.raw), median_run(r.initial));
    let (cu_s, cu_raw_s) = (f(r.catchup, "total_s"), f(r.raw_catchup, "total_s"));

    println!();
    println!("## Sync results (N = {}, ids {})", p.n, ids.name());
    println!();
    println!("| metric | target | measured (median) | baseline (median) | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| initial sync, {} records | ≥ 80% of raw | {:.0} rec/s ({:.2} s) | raw insert {:.0} rec/s ({:.2} s) | {:.0}% |",
        p.n,
        sync_rate,
        sync_s,
        raw_rate,
        raw_s,
        100.0 * sync_rate / raw_rate
    );
    println!(
        "| bytes written by the initial sync (median run) | ≤ 3× DB | {} | raw insert {} | {:.2}× |",
        bytes(&sync_mid),
        bytes(&raw_mid),
        f(&sync_mid, "write_bytes") / f(&raw_mid, "write_bytes")
    );
    println!("| peak client RSS (VmHWM) | < 100 MB | {hwm:.0} MB | – | – |");
    println!(
        "| incremental sync, 1 change at {} rows | < 10 ms | {:.2} ms | sync with nothing to pull {:.2} ms | {:.2}x |",
        p.n,
        median(&incr),
        median(&empty),
        median(&incr) / median(&empty)
    );
    let checksum_ms = median(&arr(last, "checksum_ms"));
    println!(
        "| checksum of the {} synced rows (an integrity check) | – | {:.0} ms | initial sync {:.2} s | {:.1}% |",
        p.n,
        checksum_ms,
        sync_s,
        100.0 * checksum_ms / 1e3 / sync_s
    );
    println!(
        "| catch-up, {} changes into {} rows | ≥ 70% of raw | {:.2} s | raw upsert {:.2} s | {:.0}% |",
        p.catchup,
        p.n,
        cu_s,
        cu_raw_s,
        100.0 * cu_raw_s / cu_s
    );
    println!(
        "| bytes written by the catch-up | ≤ 3× raw | {} | raw upsert {} | {:.2}× |",
        bytes(r.catchup),
        bytes(r.raw_catchup),
        f(r.catchup, "write_bytes") / f(r.raw_catchup, "write_bytes")
    );
    println!(
        "| push of {} mutations | ≥ 90% of transport | {:.0} mut/s ({:.0} ms) | transport only {:.0} mut/s | {:.0}% |",
        p.push,
        push_rate,
        1e3 * median(&push_times),
        push_raw_rate,
        100.0 * push_rate / push_raw_rate
    );
    println!();
    println!("Where the initial sync's time goes (medians, seconds):");
    for k in [
        "pull_phase_s",
        "publish_s",
        "push_phase_s",
        "fetch_s",
        "stage_wait_s",
        "pages",
    ] {
        println!("  {k:>14}: {:.2}", med_of(r.initial, k));
    }
    println!(
        "  pull only (fetch + decode, nothing stored): {:.2} s = {:.0} rec/s; of which HTTP {:.2} s, JSON decode {:.2} s",
        med_of(r.pull_only, "total_s"),
        pull_rate,
        med_of(r.pull_only, "http_s"),
        med_of(r.pull_only, "decode_s")
    );
    println!("  seeding: {seed_s:.1} s");
    let runs = |v: &[Value]| {
        v.iter()
            .map(|x| (f(x, "total_s") * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    };
    println!("  raw insert runs (s): {:?}", runs(r.raw));
    println!("  initial sync runs (s): {:?}", runs(r.initial));
    println!("  incremental runs (ms): {incr:.2?}");
    println!(
        "  of an incremental sync, the pull request (server + HTTP + decode): median {:.2} ms",
        median(&arr(last, "incremental_fetch_ms"))
    );
    println!(
        "  catch-up: pull phase {:.2} s, publish {:.2} s, peak RSS {:.0} MB",
        f(r.catchup, "pull_phase_s"),
        f(r.catchup, "publish_s"),
        f(r.catchup, "vm_hwm_kb") / 1024.0
    );
    println!(
        "  push runs (s): {push_times:.3?}; transport-only runs (s): {:.3?}",
        r.push_raw
    );
    println!(
        "  {} local creates before each push (Store::write): median {:.3} s",
        p.push,
        median(&arr(r.push, "create_s"))
    );
}

// ---------------------------------------------------------------- child

fn child(args: &[String]) {
    let rt = runtime();
    let out = match args[0].as_str() {
        "initial" => rt.block_on(child_initial(
            &args[1],
            Path::new(&args[2]),
            args[3].parse().unwrap(),
        )),
        "pull-only" => rt.block_on(child_pull_only(&args[1])),
        "catchup" => rt.block_on(child_catchup(&args[1], Path::new(&args[2]))),
        "push" => rt.block_on(child_push(
            &args[1],
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            IdKind::parse(&args[5]),
        )),
        other => panic!("unknown child mode {other}"),
    };
    println!("{RESULT_PREFIX}{out}");
}

/// `VmHWM` (peak resident set) of this process, in KiB.
fn vm_hwm_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The HTTP transport, timing each pull call and the gaps between calls.
struct Timed {
    inner: HttpTransport,
    fetch_ns: AtomicU64,
    gap_ns: AtomicU64,
    last_end: Mutex<Option<Instant>>,
}

impl Timed {
    fn new(url: &str) -> Timed {
        Timed {
            inner: HttpTransport::new(url).unwrap(),
            fetch_ns: AtomicU64::new(0),
            gap_ns: AtomicU64::new(0),
            last_end: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Transport for Timed {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        let start = Instant::now();
        if let Some(end) = *self.last_end.lock() {
            self.gap_ns
                .fetch_add((start - end).as_nanos() as u64, Ordering::Relaxed);
        }
        let out = self.inner.pull(token, req).await;
        let end = Instant::now();
        self.fetch_ns
            .fetch_add((end - start).as_nanos() as u64, Ordering::Relaxed);
        *self.last_end.lock() = Some(end);
        out
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        self.inner.push(token, req).await
    }
}

/// A client of the DB at `db`, and one `sync()` of it measured: time, phases,
/// bytes written, peak RSS.
async fn measured_sync(url: &str, db: &Path) -> (SyncClient, Arc<Timed>, Value) {
    let store = Store::open(db, schema()).unwrap();
    let transport = Arc::new(Timed::new(url));
    let client = SyncClient::new(
        store.clone(),
        transport.clone(),
        Arc::new(StaticToken(TOKEN.into())),
        SyncConfig::default(),
    )
    .unwrap();
    let phases: Arc<Mutex<Vec<(SyncPhase, Instant)>>> = Arc::default();
    let ph = phases.clone();
    client.add_status_listener(Arc::new(move |s: &SyncStatus| {
        let mut v = ph.lock();
        if v.last().is_none_or(|(p, _)| *p != s.phase) {
            v.push((s.phase, Instant::now()));
        }
    }));

    let io = Io::now();
    let start = Instant::now();
    let report = client.sync().await.unwrap();
    let end = Instant::now();
    let mut out = Io::since(io, db_size(db));
    let at = |phase: SyncPhase| {
        phases
            .lock()
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, t)| *t)
    };
    let publishing = at(SyncPhase::Publishing).unwrap_or(end);
    let pushing = at(SyncPhase::Pushing).unwrap_or(end);
    for (k, v) in [
        ("total_s", json!(secs(end - start))),
        ("pulled", json!(report.pulled)),
        ("pages", json!(report.pages)),
        ("pull_phase_s", json!(secs(publishing - start))),
        ("publish_s", json!(secs(pushing - publishing))),
        ("push_phase_s", json!(secs(end - pushing))),
        (
            "fetch_s",
            json!(transport.fetch_ns.load(Ordering::Relaxed) as f64 / 1e9),
        ),
        (
            "stage_wait_s",
            json!(transport.gap_ns.load(Ordering::Relaxed) as f64 / 1e9),
        ),
        ("vm_hwm_kb", json!(vm_hwm_kb())),
    ] {
        out[k] = v;
    }
    (client, transport, out)
}

/// A sync of a populated DB after another device's changes.
async fn child_catchup(url: &str, db: &Path) -> Value {
    measured_sync(url, db).await.2
}

async fn child_initial(url: &str, db: &Path, incremental: usize) -> Value {
    let (client, transport, mut out) = measured_sync(url, db).await;

    // An integrity check's local side: the checksum of the N synced rows.
    let mut checksum_ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let sum = client
            .store()
            .checksum("tasks")
            .unwrap()
            .expect("comparable");
        checksum_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(sum.count, out["pulled"].as_u64().unwrap(), "{sum:?}");
    }
    out["checksum_ms"] = json!(checksum_ms);

    // Incremental: another device changes one record, then this client syncs.
    let other = HttpTransport::new(url).unwrap();
    let ids: Vec<String> = {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut stmt = conn
            .prepare("SELECT id FROM tasks ORDER BY id LIMIT ?1")
            .unwrap();
        stmt.query_map([incremental as i64 + 2], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let mut incr_ms = Vec::new();
    let mut empty_ms = Vec::new();
    let mut incr_fetch_ms = Vec::new();
    let runs = if incremental == 0 { 0 } else { incremental + 2 };
    for (k, id) in ids.iter().enumerate().take(runs) {
        let req = PushRequest {
            client_id: "bench-other-device".into(),
            mutations: vec![Mutation {
                mutation_id: uuid::Uuid::now_v7().to_string(),
                collection: "tasks".into(),
                record_id: id.clone(),
                op: Op::Update,
                fields: serde_json::from_value(json!({"title": format!("changed {k}")})).unwrap(),
                base_version: None,
            }],
        };
        other.push(TOKEN, &req).await.unwrap();
        let fetched = transport.fetch_ns.load(Ordering::Relaxed);
        let t = Instant::now();
        let r = client.sync().await.unwrap();
        let d = t.elapsed();
        let fetch = transport.fetch_ns.load(Ordering::Relaxed) - fetched;
        assert_eq!(r.pulled, 1, "{r:?}");
        let t = Instant::now();
        let r = client.sync().await.unwrap();
        let e = t.elapsed();
        assert_eq!(r.pulled, 0, "{r:?}");
        if k >= 2 {
            // The first two are warm-up.
            incr_ms.push(d.as_secs_f64() * 1e3);
            empty_ms.push(e.as_secs_f64() * 1e3);
            incr_fetch_ms.push(fetch as f64 / 1e6);
        }
    }
    out["incremental_ms"] = json!(incr_ms);
    out["empty_ms"] = json!(empty_ms);
    out["incremental_fetch_ms"] = json!(incr_fetch_ms);
    out
}

/// Fetches and decodes every page of a first pull, storing nothing; splits the
/// time into HTTP (server, loopback, gzip) and JSON decoding.
async fn child_pull_only(url: &str) -> Value {
    let http = reqwest::Client::builder().gzip(true).build().unwrap();
    let mut cursor: Option<String> = None;
    let (mut http_s, mut decode_s, mut rows) = (0.0, 0.0, 0u64);
    let start = Instant::now();
    loop {
        let req = PullRequest {
            priorities: None,
            subscriptions: None,
            cursor: cursor.clone(),
            client_id: Some("bench-pull-only".into()),
            limit: Some(SyncConfig::default().page_size),
            collections: None,
            want_totals: cursor.is_none(),
            want_checksums: false,
            restart: None,
            max_priority: None,
        };
        let t = Instant::now();
        let bytes = http
            .post(format!("{url}{}", ferry_protocol::PULL_PATH))
            .bearer_auth(TOKEN)
            .header(
                ferry_protocol::PROTOCOL_HEADER,
                ferry_protocol::PROTOCOL_VERSION.to_string(),
            )
            .json(&req)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let t2 = Instant::now();
        let page: PullPage = serde_json::from_slice(&bytes).unwrap();
        decode_s += secs(t2.elapsed());
        http_s += secs(t2 - t);
        rows += page.changes.values().map(|c| c.len() as u64).sum::<u64>();
        cursor = Some(page.cursor);
        if !page.has_more {
            break;
        }
    }
    json!({
        "total_s": secs(start.elapsed()),
        "http_s": http_s,
        "decode_s": decode_s,
        "rows": rows,
        "vm_hwm_kb": vm_hwm_kb(),
    })
}

async fn child_push(url: &str, db: &Path, n: usize, reps: usize, ids: IdKind) -> Value {
    let store = Store::open(db, schema()).unwrap();
    let client = SyncClient::new(
        store.clone(),
        Arc::new(HttpTransport::new(url).unwrap()),
        Arc::new(StaticToken(TOKEN.into())),
        SyncConfig::default(),
    )
    .unwrap();
    let (mut push_s, mut create_s) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let ops: Vec<WriteOp> = rows(n, ids)
            .iter()
            .map(|r| {
                let mut fields = row_fields(r);
                fields.insert("id".into(), Value::String(r.id.clone()));
                WriteOp::Create {
                    collection: "tasks".into(),
                    fields,
                }
            })
            .collect();
        let t = Instant::now();
        store.write(ops).unwrap();
        create_s.push(secs(t.elapsed()));
        let t = Instant::now();
        let report = client.push_all().await.unwrap();
        push_s.push(secs(t.elapsed()));
        assert_eq!(report.applied as usize, n, "{report:?}");
    }
    json!({ "push_s": push_s, "create_s": create_s, "vm_hwm_kb": vm_hwm_kb() })
}
