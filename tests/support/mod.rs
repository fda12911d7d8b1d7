//! End-to-end test support: an in-process ferry-server, devices (a store and a
//! sync client each), and a transport wrapper that injects faults.
#![allow(dead_code)]

pub mod kit;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{HttpTransport, StaticToken, TokenProvider, Transport, TransportError};
use ferry::{Fields, Query, Schema, Store};
use ferry_protocol::{
    Mutation, MutationOutcome, MutationResult, PullPage, PullRequest, PushRequest, PushResponse,
    RawFields,
};
use parking_lot::Mutex;
use serde_json::Value;

pub const ALICE: &str = "alice-dev-token";
pub const BOB: &str = "bob-dev-token";

pub fn schema() -> Schema {
    Schema::from_json(include_str!("../../examples/tasks.schema.json")).unwrap()
}

pub struct Server {
    pub running: ferry_server::RunningServer,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn url(&self) -> String {
        self.running.url()
    }
}

/// Which server storage the end-to-end tests run on: `FERRY_E2E_BACKEND=postgres`
/// with `FERRY_TEST_PG_URL` selects PostgreSQL (a fresh database per server).
pub async fn start_server() -> Server {
    start_server_with(ferry_server::ServerConfig::dev()).await
}

pub async fn start_server_with(config: ferry_server::ServerConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match std::env::var("FERRY_E2E_BACKEND").as_deref() {
        Ok("postgres") => ferry_server::testing::fresh_pg_database()
            .await
            .expect("FERRY_E2E_BACKEND=postgres needs FERRY_TEST_PG_URL"),
        _ => format!("sqlite:{}", dir.path().join("server.db").display()),
    };
    let running = ferry_server::start(ferry_server::ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        config,
    })
    .await
    .expect("server starts");
    Server { running, _dir: dir }
}

/// A transport that forwards to the server but can drop pulls, lose push
/// responses, answer `retry` for chosen records, or be offline; and records
/// every mutation that reached the server.
pub struct Faulty {
    inner: HttpTransport,
    pub offline: AtomicBool,
    pub pulls: AtomicUsize,
    /// For each page served, the collections it had changes of.
    pub pages: Mutex<Vec<Vec<String>>>,
    /// Fail every pull once this many pages were served in this run.
    pub fail_pull_after: Mutex<Option<usize>>,
    pub lose_push_response: AtomicBool,
    pub pushes: AtomicUsize,
    /// Fail every push once this many push requests reached the server.
    pub fail_push_after: Mutex<Option<usize>>,
    pub retry_records: Mutex<HashSet<String>>,
    pub delivered: Mutex<Vec<Mutation>>,
}

impl Faulty {
    pub fn new(url: &str) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: HttpTransport::new(url).unwrap(),
            offline: AtomicBool::new(false),
            pulls: AtomicUsize::new(0),
            pages: Mutex::new(Vec::new()),
            fail_pull_after: Mutex::new(None),
            lose_push_response: AtomicBool::new(false),
            pushes: AtomicUsize::new(0),
            fail_push_after: Mutex::new(None),
            retry_records: Mutex::new(HashSet::new()),
            delivered: Mutex::new(Vec::new()),
        })
    }

    /// How many times a mutation for `record_id` reached the server.
    pub fn deliveries(&self, record_id: &str) -> usize {
        self.delivered
            .lock()
            .iter()
            .filter(|m| m.record_id == record_id)
            .count()
    }
}

#[async_trait]
impl Transport for Faulty {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(TransportError::Offline("test: offline".into()));
        }
        if let Some(n) = *self.fail_pull_after.lock()
            && self.pulls.load(Ordering::SeqCst) >= n
        {
            return Err(TransportError::Offline("test: connection dropped".into()));
        }
        let page = self.inner.pull(token, req).await?;
        self.pulls.fetch_add(1, Ordering::SeqCst);
        self.pages
            .lock()
            .push(page.changes.keys().cloned().collect());
        Ok(page)
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(TransportError::Offline("test: offline".into()));
        }
        if let Some(n) = *self.fail_push_after.lock()
            && self.pushes.load(Ordering::SeqCst) >= n
        {
            return Err(TransportError::Offline("test: connection dropped".into()));
        }
        self.pushes.fetch_add(1, Ordering::SeqCst);
        let retry = self.retry_records.lock().clone();
        let (held, sent): (Vec<_>, Vec<_>) = req
            .mutations
            .iter()
            .cloned()
            .partition(|m| retry.contains(&m.record_id));
        let mut resp = if sent.is_empty() {
            PushResponse {
                results: vec![],
                write_checkpoint: String::new(),
            }
        } else {
            let r = self
                .inner
                .push(
                    token,
                    &PushRequest {
                        client_id: req.client_id.clone(),
                        mutations: sent.clone(),
                    },
                )
                .await?;
            self.delivered.lock().extend(sent.into_iter().map(parsed));
            r
        };
        if self.lose_push_response.swap(false, Ordering::SeqCst) {
            return Err(TransportError::Offline("test: response lost".into()));
        }
        for m in held {
            resp.results.push(MutationResult {
                mutation_id: m.mutation_id,
                outcome: MutationOutcome::Retry {
                    retry_after_ms: 60_000,
                },
            });
        }
        Ok(resp)
    }

    async fn fetch(
        &self,
        token: &str,
        req: &ferry_protocol::FetchRequest,
    ) -> Result<ferry_protocol::FetchResponse, TransportError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(TransportError::Offline("test: offline".into()));
        }
        self.inner.fetch(token, req).await
    }

    fn bytes_received(&self) -> u64 {
        self.inner.bytes_received()
    }
}

pub struct Device {
    pub store: Store,
    pub client: SyncClient,
    pub transport: Arc<Faulty>,
    _dir: tempfile::TempDir,
}

impl Device {
    /// The device's database file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self._dir.path().join("device.db")
    }
}

pub fn device(url: &str, token: &str) -> Device {
    device_with(
        url,
        Arc::new(StaticToken(token.into())),
        schema(),
        SyncConfig::default(),
    )
}

pub fn device_with(
    url: &str,
    tokens: Arc<dyn TokenProvider>,
    schema: Schema,
    config: SyncConfig,
) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("device.db"), schema).unwrap();
    let transport = Faulty::new(url);
    let client = SyncClient::new(store.clone(), transport.clone(), tokens, config).unwrap();
    Device {
        store,
        client,
        transport,
        _dir: dir,
    }
}

pub fn obj(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Every live record of a collection as (id → fields), for convergence checks.
pub fn contents(store: &Store, collection: &str) -> std::collections::BTreeMap<String, Fields> {
    store
        .query(collection, &Query::default())
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect()
}

/// A mutation as sent, with its fields parsed.
pub fn parsed(m: Mutation<RawFields>) -> Mutation {
    Mutation {
        fields: serde_json::from_str(m.fields.get()).expect("sent fields are a JSON object"),
        mutation_id: m.mutation_id,
        collection: m.collection,
        record_id: m.record_id,
        op: m.op,
        base_version: m.base_version,
    }
}
