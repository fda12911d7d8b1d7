//! Property: devices that make random offline edits, and sync through a network
//! that drops, duplicates, delays and cuts off requests, and that are killed
//! mid-sync, keep Ferry's promises. Checked against a model after every step:
//!
//! - **freshness**: after every successful sync, no record the device calls
//!   synced is older than the server's version when that sync started (nor
//!   differs from it at the same version, nor was deleted on the server by then);
//! - **convergence**: once the network heals, every device holds exactly the
//!   server's rows, with nothing left to push but its quarantine;
//! - **nothing acknowledged is lost**: each device's last acknowledged value of
//!   each field reached the server, unless the record was deleted there or the
//!   device quarantined a mutation of it;
//! - **no mutation applies twice**: the server never gives two versions for one
//!   mutation id.
//!
//! Everything runs in process on the deterministic kit: the manual clock, a
//! fault plan per device, a current-thread runtime. Each test thread keeps one
//! server; each case is a user of its own on it (a JWT), with record ids of its
//! own, so cases cannot see each other. `FERRY_MODEL_CASES` sets the
//! number of cases in all (default 2,000, half with two devices and half with
//! three); `scripts/soak.sh` runs many more.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ferry::sync::SyncConfig;
use ferry::{EntryState, Fields, ManualClock, Query, RecordStatus, WriteOp};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::kit::{Fault, InProcessServer, KitDevice, Snapshot};
use support::{obj, schema};

const COLLECTION: &str = "tasks";
const IDS: u8 = 4;
/// The fields edits write; every write gives its field a value no other write uses.
const FIELDS: [&str; 3] = ["title", "priority", "project"];

#[derive(Debug, Clone)]
enum Edit {
    Create,
    Update(usize),
    Delete,
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        dev: usize,
        id: u8,
        edit: Edit,
    },
    /// A sync through these faults (one per request, in order).
    Sync {
        dev: usize,
        faults: Vec<Fault>,
    },
    /// A sync whose request number `at` reaches the server and is never
    /// answered; the app is then killed and started again.
    Kill {
        dev: usize,
        at: usize,
    },
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        2 => Just(Fault::DropBefore),
        3 => Just(Fault::DropAfter),
        1 => Just(Fault::Truncated),
        2 => Just(Fault::Duplicate),
        2 => Just(Fault::Late),
        1 => Just(Fault::Unauthorized),
        1 => Just(Fault::ServerError(503)),
        1 => Just(Fault::Slow(2_000)),
    ]
}

fn step(devices: usize) -> impl Strategy<Value = Step> {
    let edit = prop_oneof![
        2 => Just(Edit::Create),
        5 => (0..FIELDS.len()).prop_map(Edit::Update),
        1 => Just(Edit::Delete),
    ];
    prop_oneof![
        5 => (0..devices, 0..IDS, edit).prop_map(|(dev, id, edit)| Step::Write { dev, id, edit }),
        4 => (0..devices, prop::collection::vec(fault(), 0..4))
            .prop_map(|(dev, faults)| Step::Sync { dev, faults }),
        1 => (0..devices, 0usize..4).prop_map(|(dev, at)| Step::Kill { dev, at }),
    ]
}

/// A value no other write uses.
fn value(field: &str, step: usize) -> Value {
    match field {
        "priority" => json!(step),
        f => json!(format!("{f}-{step}")),
    }
}

fn write_op(id: &str, edit: &Edit, step: usize) -> (WriteOp, Vec<(&'static str, Value)>) {
    match edit {
        Edit::Create => {
            let acked = vec![
                ("title", value("title", step)),
                ("priority", value("priority", step)),
            ];
            let mut fields = obj(json!({"id": id}));
            fields.extend(acked.iter().map(|(k, v)| (k.to_string(), v.clone())));
            let op = WriteOp::Create {
                collection: COLLECTION.into(),
                fields,
            };
            (op, acked)
        }
        Edit::Update(f) => {
            let field = FIELDS[*f];
            let v = value(field, step);
            let op = WriteOp::Update {
                collection: COLLECTION.into(),
                id: id.into(),
                fields: obj(json!({ field: v.clone() })),
            };
            (op, vec![(field, v)])
        }
        Edit::Delete => (
            WriteOp::Delete {
                collection: COLLECTION.into(),
                id: id.into(),
            },
            vec![],
        ),
    }
}

/// A write the store acknowledged: `field` of record `id` set to `value`, or
/// (no field) the record deleted.
#[derive(Debug)]
struct Ack {
    dev: usize,
    id: String,
    field: Option<&'static str>,
    value: Value,
}

/// The record's fields that the schema knows, as the server holds them.
fn known(fields: &Fields) -> Fields {
    let c = schema();
    let c = c.collection(COLLECTION).unwrap();
    fields
        .iter()
        .filter(|(k, _)| c.column(k).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn rows(d: &KitDevice) -> Vec<ferry::Record> {
    d.store.query(COLLECTION, &Query::default()).unwrap()
}

fn check_fresh(d: &KitDevice, dev: usize, before: &Snapshot) -> Result<(), TestCaseError> {
    for r in rows(d).iter().filter(|r| r.status == RecordStatus::Synced) {
        prop_assert!(
            !before.deleted.contains(&r.id),
            "device {dev} calls {} synced, but the server had deleted it before the sync",
            r.id
        );
        if let Some((version, fields)) = before.live.get(&r.id) {
            let local = r.version.unwrap_or(0);
            prop_assert!(
                local >= *version,
                "device {dev} calls {} synced at v{local}, older than the server's v{version} when the sync started",
                r.id
            );
            if local == *version {
                prop_assert_eq!(
                    &r.fields,
                    &known(fields),
                    "device {} holds {} at the server's version with other fields",
                    dev,
                    &r.id
                );
            }
        }
    }
    Ok(())
}

const JWT_SECRET: &str = "sync-model-secret";

/// A user of its own for one case: its bearer token and its record id prefix.
fn case_user() -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let user = format!(
        "m{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let claims = json!({"sub": user, "exp": 4_102_444_800u64});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    (token, user)
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    static SERVER: std::cell::OnceCell<Arc<InProcessServer>> = const { std::cell::OnceCell::new() };
}

async fn server() -> Arc<InProcessServer> {
    if let Some(s) = SERVER.with(|s| s.get().cloned()) {
        return s;
    }
    let mut config = ferry_server::ServerConfig::dev();
    config.jwt = Some(ferry_server::config::JwtConfig {
        hs256_secret: JWT_SECRET.into(),
        issuer: None,
    });
    let s = InProcessServer::start(config).await;
    SERVER.with(|cell| cell.get_or_init(|| s).clone())
}

async fn run(devices: usize, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let server = server().await;
    server.applied.lock().clear();
    let (token, user) = case_user();
    let token = token.as_str();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let config = SyncConfig {
        push_batch: 2,
        page_size: 2,
        ..SyncConfig::default()
    };
    let mut devs: Vec<KitDevice> = (0..devices)
        .map(|_| KitDevice::new(&server, &clock, token, schema(), config.clone()))
        .collect();
    let mut acks: Vec<Ack> = Vec::new();

    for (i, s) in steps.iter().enumerate() {
        clock.advance(1_000);
        match s {
            Step::Write { dev, id, edit } => {
                let id = format!("{user}-r{id}");
                let (op, values) = write_op(&id, edit, i);
                if devs[*dev].store.write(vec![op]).is_ok() {
                    if values.is_empty() {
                        acks.push(Ack {
                            dev: *dev,
                            id: id.clone(),
                            field: None,
                            value: Value::Null,
                        });
                    }
                    for (field, value) in values {
                        acks.push(Ack {
                            dev: *dev,
                            id: id.clone(),
                            field: Some(field),
                            value,
                        });
                    }
                }
            }
            Step::Sync { dev, faults } => {
                let d = &devs[*dev];
                let before = server.snapshot(token, COLLECTION).await;
                d.net.then(faults.iter().copied());
                let ok = d.client.sync().await.is_ok();
                d.net.clear_plan();
                if ok {
                    check_fresh(d, *dev, &before)?;
                }
            }
            Step::Kill { dev, at } => {
                let d = &devs[*dev];
                d.net
                    .then(std::iter::repeat_n(Fault::None, *at).chain([Fault::Hang]));
                let killed = tokio::select! {
                    _ = d.client.sync() => false,
                    _ = d.net.hung.notified() => true,
                };
                d.net.clear_plan();
                if killed {
                    let d = devs.remove(*dev);
                    devs.insert(*dev, d.restart());
                }
            }
        }
    }

    // The network heals: every device syncs until it has nothing left to push
    // (the first round pushes everything, the second pulls all of it).
    for _ in 0..2 {
        for (i, d) in devs.iter().enumerate() {
            d.net.release_held().await;
            let before = server.snapshot(token, COLLECTION).await;
            d.settle(4)
                .await
                .map_err(|e| TestCaseError::fail(format!("device {i} cannot settle: {e}")))?;
            check_fresh(d, i, &before)?;
        }
    }
    let server_now = server.snapshot(token, COLLECTION).await;
    let want: BTreeMap<String, (u64, Fields)> = server_now
        .live
        .iter()
        .map(|(id, (v, f))| (id.clone(), (*v, known(f))))
        .collect();
    let mut quarantined: Vec<HashSet<String>> = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        let got: BTreeMap<String, (u64, Fields)> = rows(d)
            .into_iter()
            .map(|r| (r.id, (r.version.unwrap_or(0), r.fields)))
            .collect();
        prop_assert_eq!(&got, &want, "device {} differs from the server", i);
        let outbox = d.store.outbox().unwrap();
        prop_assert!(
            outbox.iter().all(|e| e.state == EntryState::Quarantined),
            "device {} has unsent changes: {:?}",
            i,
            outbox
        );
        quarantined.push(outbox.into_iter().map(|e| e.record_id).collect());
    }

    // No mutation applied twice.
    let applied = server.applied.lock();
    let mut versions: HashMap<&str, HashSet<u64>> = HashMap::new();
    for a in applied.iter() {
        versions
            .entry(&a.mutation_id)
            .or_default()
            .insert(a.version);
    }
    for (m, v) in &versions {
        prop_assert!(v.len() == 1, "mutation {} applied as versions {:?}", m, v);
    }

    // Each device's last acknowledged value of each field reached the server.
    let mut last: BTreeMap<(usize, &str, &str), usize> = BTreeMap::new();
    for (n, a) in acks.iter().enumerate() {
        last.insert((a.dev, &a.id, a.field.unwrap_or("")), n);
    }
    for &n in last.values() {
        let a = &acks[n];
        let Some(field) = a.field else { continue };
        let deleted_later = acks[n + 1..]
            .iter()
            .any(|b| b.dev == a.dev && b.id == a.id && b.field.is_none());
        if server_now.deleted.contains(&a.id) || quarantined[a.dev].contains(&a.id) || deleted_later
        {
            continue;
        }
        let reached = applied
            .iter()
            .any(|m| m.record_id == a.id && m.fields.get(field) == Some(&a.value));
        prop_assert!(
            reached,
            "device {}'s write {}.{} = {} never reached the server",
            a.dev,
            a.id,
            field,
            a.value
        );
    }
    Ok(())
}

/// Cases per test function; the two functions below run in parallel.
fn cases() -> u32 {
    std::env::var("FERRY_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(2_000)
        .div_ceil(2)
}

fn check(devices: usize, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let steps: Vec<Step> = steps
        .into_iter()
        .map(|s| match s {
            Step::Write { dev, id, edit } => Step::Write {
                dev: dev % devices,
                id,
                edit,
            },
            Step::Sync { dev, faults } => Step::Sync {
                dev: dev % devices,
                faults,
            },
            Step::Kill { dev, at } => Step::Kill {
                dev: dev % devices,
                at,
            },
        })
        .collect();
    RUNTIME.with(|rt| rt.block_on(run(devices, steps)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn two_devices_under_faults_and_kills_keep_every_promise(
        steps in prop::collection::vec(step(2), 1..16),
    ) {
        check(2, steps)?;
    }

    #[test]
    fn three_devices_under_faults_and_kills_keep_every_promise(
        steps in prop::collection::vec(step(3), 1..16),
    ) {
        check(3, steps)?;
    }
}
