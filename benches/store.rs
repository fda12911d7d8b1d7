//! Local store benchmarks (issue 2, point 11). Run with:
//!
//! ```text
//! cargo bench --bench store
//! ```
//!
//! Ids: random (UUID v4, what apps make) and time-ordered (v7), each measured.
//!
//! - `single_write/create`: one `Store::create` (the store makes the id) — a
//!   durable commit (WAL, synchronous=NORMAL) of the row (pending as an unsent
//!   create: no outbox row until it is first pushed), with the change event
//!   queued for the listeners; `single_write/create_v4_id`: the same with an id
//!   the app made (v4), into a table of 100k rows. Target < 100 µs.
//! - `batch_insert_100k_{v4,v7}/{store,raw}`: 100k rows through `Store::write`
//!   (one transaction, validation, one event) against a raw rusqlite insert of
//!   the same rows into the same table (the store's own: bookkeeping columns,
//!   the pending index, the rows pending as unsent creates): one transaction,
//!   one prepared statement, same PRAGMAs. Target: store ≥ 60% of raw. The ratio
//!   of the two medians is printed at the end of the run.
//! - `pending_query_1m/*`: `_status eq pending` on a 1M-row collection where 100
//!   rows are pending.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group};
use ferry::{Fields, Query, Schema, Store, WriteOp};
use rusqlite::params;
use serde_json::json;

const SCHEMA: &str = r#"{
  "version": 1,
  "collections": [{
    "name": "items",
    "columns": [
      { "name": "title", "type": "string" },
      { "name": "done", "type": "boolean", "default": false },
      { "name": "priority", "type": "integer", "nullable": true },
      { "name": "notes", "type": "string", "nullable": true }
    ],
    "sync": "synced"
  }]
}"#;

const BATCH: usize = 100_000;
const BIG: usize = 1_000_000;
const PENDING: usize = 100;

fn schema() -> Schema {
    Schema::from_json(SCHEMA).unwrap()
}

/// One benchmark row, shared by the store and the raw insert.
struct Row {
    id: String,
    title: String,
    done: bool,
    priority: i64,
    notes: Option<String>,
}

/// How ids are made.
#[derive(Clone, Copy)]
enum Ids {
    V4,
    V7,
}

impl Ids {
    fn name(self) -> &'static str {
        match self {
            Ids::V4 => "v4",
            Ids::V7 => "v7",
        }
    }
}

fn rows(n: usize, ids: Ids) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            id: match ids {
                Ids::V4 => uuid::Uuid::new_v4(),
                Ids::V7 => uuid::Uuid::now_v7(),
            }
            .to_string(),
            title: format!("task number {i}"),
            done: i % 3 == 0,
            priority: (i % 10) as i64,
            notes: (i % 2 == 0).then(|| format!("some notes about task {i}")),
        })
        .collect()
}

fn fields(r: &Row) -> Fields {
    let mut f = Fields::new();
    f.insert("id".into(), json!(r.id));
    f.insert("title".into(), json!(r.title));
    f.insert("done".into(), json!(r.done));
    f.insert("priority".into(), json!(r.priority));
    f.insert("notes".into(), json!(r.notes));
    f
}

fn ops(rows: &[Row]) -> Vec<WriteOp> {
    rows.iter()
        .map(|r| WriteOp::Create {
            collection: "items".into(),
            fields: fields(r),
        })
        .collect()
}

fn fresh_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("bench.db"), schema()).unwrap();
    (dir, store)
}

/// A raw connection to a fresh store's database (its tables and indexes),
/// with the store writer's PRAGMAs.
fn fresh_raw() -> (tempfile::TempDir, rusqlite::Connection) {
    let (dir, store) = fresh_store();
    let path = store.path().to_path_buf();
    drop(store);
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = FILE;",
    )
    .unwrap();
    (dir, conn)
}

fn raw_insert(conn: &mut rusqlite::Connection, rows: &[Row]) {
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO items (id, title, done, priority, notes, _status,
                    _changed, _version, _created_at, _updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'created', NULL, NULL, 1, 1)",
            )
            .unwrap();
        for r in rows {
            stmt.execute(params![r.id, r.title, r.done, r.priority, r.notes])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn single_write(c: &mut Criterion) {
    let (_dir, store) = fresh_store();
    store.write(ops(&rows(BATCH, Ids::V4))).unwrap();
    let template = fields(&rows(1, Ids::V4)[0]);
    let mut g = c.benchmark_group("single_write");
    g.throughput(Throughput::Elements(1));
    g.bench_function("create", |b| {
        b.iter_batched(
            || {
                let mut f = template.clone();
                f.remove("id");
                f
            },
            |f| store.create("items", f).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("create_v4_id", |b| {
        b.iter_batched(
            || {
                let mut f = template.clone();
                f.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
                f
            },
            |f| store.create("items", f).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn batch_insert(c: &mut Criterion) {
    for ids in [Ids::V4, Ids::V7] {
        let data = rows(BATCH, ids);
        let mut g = c.benchmark_group(format!("batch_insert_100k_{}", ids.name()));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(BATCH as u64));
        // Setup (fresh database, building the ops) and teardown are not timed.
        g.bench_function("raw", |b| {
            b.iter_batched(
                fresh_raw,
                |(dir, mut conn)| {
                    raw_insert(&mut conn, &data);
                    (dir, conn)
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function("store", |b| {
            b.iter_batched(
                || {
                    let (dir, store) = fresh_store();
                    (dir, store, ops(&data))
                },
                |(dir, store, ops)| {
                    let written = store.write(ops).unwrap();
                    assert_eq!(written.len(), BATCH);
                    (dir, store, written)
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

/// A 1M-row collection, all synced, then `PENDING` rows edited through the store.
fn big_store() -> (tempfile::TempDir, Store) {
    let (dir, store) = fresh_store();
    let path = store.path().to_path_buf();
    {
        // Bulk-load synced rows straight into the store's own table.
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO items (id, title, done, priority, notes,
                        _status, _changed, _version, _created_at, _updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'synced', NULL, 1, 0, 0)",
                )
                .unwrap();
            for _ in 0..BIG / BATCH {
                for r in rows(BATCH, Ids::V4) {
                    stmt.execute(params![r.id, r.title, r.done, r.priority, r.notes])
                        .unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    // Pick rows spread over the table and edit them the normal way.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM items) WHERE n % ?1 = 0 LIMIT ?2")
        .unwrap()
        .query_map(params![(BIG / PENDING) as i64, PENDING as i64], |r| {
            r.get(0)
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let edits = ids
        .into_iter()
        .map(|id| {
            let mut f = Fields::new();
            f.insert("title".into(), json!("edited offline"));
            WriteOp::Update {
                collection: "items".into(),
                id,
                fields: f,
            }
        })
        .collect();
    store.write(edits).unwrap();
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT * FROM items
             WHERE _status <> 'deleted' AND _status <> 'synced'",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    eprintln!("pending query plan: {}", plan.join("; "));
    (dir, store)
}

fn pending_query(c: &mut Criterion) {
    let (_dir, store) = big_store();
    let q =
        Query::from_json(r#"{"where":{"column":"_status","op":"eq","value":"pending"}}"#).unwrap();
    assert_eq!(store.count("items", &Query::default()).unwrap(), BIG as u64);
    assert_eq!(store.query("items", &q).unwrap().len(), PENDING);
    let mut g = c.benchmark_group("pending_query_1m");
    g.bench_function("query", |b| b.iter(|| store.query("items", &q).unwrap()));
    g.bench_function("count", |b| b.iter(|| store.count("items", &q).unwrap()));
    g.bench_function("outbox", |b| b.iter(|| store.outbox().unwrap()));
    g.finish();
}

criterion_group!(benches, single_write, batch_insert, pending_query);

/// Criterion's output directory: `<target>/criterion`, beside `<target>/release`.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(t).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median of a benchmark measured in this run (not a stale earlier one).
fn median_ns(dir: &Path, group: &str, bench: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(bench).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    let Some(dir) = criterion_dir() else { return };
    for ids in [Ids::V4, Ids::V7] {
        let group = format!("batch_insert_100k_{}", ids.name());
        if let (Some(store), Some(raw)) = (
            median_ns(&dir, &group, "store", started),
            median_ns(&dir, &group, "raw", started),
        ) {
            let rate = |ns: f64| BATCH as f64 / (ns / 1e9);
            println!(
                "{group}: store {:.0} rows/s, raw (same table) {:.0} rows/s, store/raw = {:.1}% (target >= 60%)",
                rate(store),
                rate(raw),
                100.0 * raw / store
            );
        }
    }
}
