//! The deterministic test kit: an in-process transport that calls ferry-server's
//! service directly (no TCP), and a fault-plan transport that injects the faults
//! a real network has, each at a chosen request.
//!
//! Nothing here sleeps or reads the wall clock: "slow" advances a
//! [`ManualClock`], and every fault is decided by the plan, so a run is a pure
//! function of its inputs.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use ferry::ManualClock;
use ferry::transport::{Transport, TransportError};
use ferry_protocol::{PullPage, PullRequest, PushRequest, PushResponse, RawFields};
use ferry_server::auth::Authenticator;
use ferry_server::{ApiError, ServerConfig, SyncService};
use parking_lot::Mutex;

/// A ferry-server without HTTP: its service over a SQLite file.
pub struct InProcessServer {
    pub service: SyncService,
    auth: Authenticator,
    /// Every `applied` answer the server gave, whether the client got it or not.
    pub applied: Mutex<Vec<Applied>>,
    _dir: tempfile::TempDir,
}

/// What the server holds for a user at one moment, read as a fresh client would.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Live records of a collection: id → (version, fields).
    pub live: std::collections::BTreeMap<String, (u64, ferry::Fields)>,
    /// Ids with a tombstone.
    pub deleted: std::collections::BTreeSet<String>,
}

impl InProcessServer {
    pub async fn start(config: ServerConfig) -> Arc<InProcessServer> {
        Self::start_from(None, config).await
    }

    /// A server on a copy of the database file `from` (a fixture), or on a new one.
    pub async fn start_from(
        from: Option<&std::path::Path>,
        config: ServerConfig,
    ) -> Arc<InProcessServer> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        if let Some(from) = from {
            std::fs::copy(from, &path).unwrap();
        }
        let url = format!("sqlite:{}", path.display());
        let auth = Authenticator::new(&config);
        let service = SyncService::open(&url, config).await.expect("server opens");
        Arc::new(InProcessServer {
            service,
            auth,
            applied: Mutex::new(Vec::new()),
            _dir: dir,
        })
    }

    /// `collection` as the server holds it now for the user of `token`.
    pub async fn snapshot(&self, token: &str, collection: &str) -> Snapshot {
        let caller = self
            .auth
            .authenticate(Some(&format!("Bearer {token}")))
            .unwrap();
        let mut snap = Snapshot::default();
        let mut cursor = None;
        loop {
            let req = PullRequest {
                priorities: None,
                subscriptions: None,
                cursor: cursor.take(),
                client_id: None,
                limit: Some(1_000),
                collections: Some(vec![collection.to_string()]),
                want_totals: false,
                want_checksums: false,
                restart: None,
                max_priority: None,
            };
            let page: PullPage = reencode(&self.service.pull(&caller, &req).await.unwrap());
            for (_, changes) in page.changes {
                for r in changes.upserts {
                    snap.deleted.remove(&r.id);
                    snap.live.insert(r.id, (r.version, r.fields));
                }
                for id in changes.deletes.into_iter().chain(changes.evictions) {
                    snap.live.remove(&id);
                    snap.deleted.insert(id);
                }
            }
            if !page.has_more {
                return snap;
            }
            cursor = Some(page.cursor);
        }
    }

    /// A consistent copy of the server's database file, as a backup takes
    /// it; [`Self::start_from`] restores it.
    pub fn backup(&self, to: &std::path::Path) {
        let conn = rusqlite::Connection::open(self._dir.path().join("server.db")).unwrap();
        conn.execute("VACUUM INTO ?1", [to.to_str().unwrap()])
            .unwrap();
    }

    /// A transport to this server.
    pub fn transport(self: &Arc<Self>) -> Arc<InProcess> {
        Arc::new(InProcess {
            server: self.clone(),
        })
    }
}

fn transport_error(e: ApiError) -> TransportError {
    match e.status.as_u16() {
        401 => TransportError::Unauthorized(e.message),
        status => TransportError::Server {
            status,
            code: e.code.to_string(),
            message: e.message,
        },
    }
}

/// Requests go straight to [`SyncService`], through the same JSON a wire would
/// carry (pages and pushes are re-encoded), so nothing is shared by reference.
pub struct InProcess {
    server: Arc<InProcessServer>,
}

impl InProcess {
    fn caller(&self, token: &str) -> Result<ferry_server::auth::Caller, TransportError> {
        self.server
            .auth
            .authenticate(Some(&format!("Bearer {token}")))
            .map_err(transport_error)
    }
}

fn reencode<T: serde::Serialize, U: serde::de::DeserializeOwned>(v: &T) -> U {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

#[async_trait]
impl Transport for InProcess {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        let caller = self.caller(token)?;
        let page = self
            .server
            .service
            .pull(&caller, req)
            .await
            .map_err(transport_error)?;
        Ok(reencode(&page))
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        let caller = self.caller(token)?;
        let resp = self
            .server
            .service
            .push(&caller, reencode(req))
            .await
            .map_err(transport_error)?;
        let mut applied = self.server.applied.lock();
        for (m, r) in req.mutations.iter().zip(&resp.results) {
            if let ferry_protocol::MutationOutcome::Applied { version } = r.outcome {
                applied.push(Applied {
                    mutation_id: m.mutation_id.clone(),
                    record_id: m.record_id.clone(),
                    fields: serde_json::from_str(m.fields.get()).unwrap_or_default(),
                    version,
                });
            }
        }
        Ok(resp)
    }
}

/// One fault, applied to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request is answered normally.
    None,
    /// Lost before the server saw it.
    DropBefore,
    /// The server applied it; the answer is lost (a dropped, truncated or reset
    /// response: the client sees a failed request either way).
    DropAfter,
    /// The server applied it, and then a copy of it arrives again (a retransmit).
    Duplicate,
    /// Held in the network: the client sees a failure now, and the server gets
    /// the request later, just before the next request through this transport
    /// (answers arrive out of order).
    Late,
    /// `401` without reaching the server.
    Unauthorized,
    /// A 5xx without reaching the server.
    ServerError(u16),
    /// A pull page cut off mid-body: the server built it, the client cannot read it.
    Truncated,
    /// Answered normally, after this many milliseconds of the manual clock.
    Slow(i64),
    /// The server applied it and the answer never comes: the client waits
    /// forever (a test then drops it, as a kill -9 would end it).
    Hang,
}

/// An `applied` answer, as the server gave it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub mutation_id: String,
    pub record_id: String,
    pub fields: ferry::Fields,
    pub version: u64,
}

/// A request the network is holding (see [`Fault::Late`]).
enum Held {
    Pull(String, PullRequest),
    Push(String, PushRequest<RawFields>),
}

/// A transport that applies a plan of faults, one per request in order; once
/// the plan runs out, requests pass. Counts what reached the server.
pub struct FaultPlan<T> {
    inner: T,
    clock: Arc<ManualClock>,
    plan: Mutex<VecDeque<Fault>>,
    held: Mutex<Vec<Held>>,
    /// Push requests the server received (duplicates and late ones included).
    pub pushes_delivered: Mutex<usize>,
    /// Notified when a request reached the server under [`Fault::Hang`].
    pub hung: tokio::sync::Notify,
}

impl<T: Transport> FaultPlan<T> {
    pub fn new(inner: T, clock: Arc<ManualClock>) -> FaultPlan<T> {
        FaultPlan {
            inner,
            clock,
            plan: Mutex::new(VecDeque::new()),
            held: Mutex::new(Vec::new()),
            pushes_delivered: Mutex::new(0),
            hung: tokio::sync::Notify::new(),
        }
    }

    /// Queues faults for the next requests, in order.
    pub fn then(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan.lock().extend(faults);
    }

    fn next_fault(&self) -> Fault {
        self.plan.lock().pop_front().unwrap_or(Fault::None)
    }

    /// Delivers what the network held back, oldest first; their answers are lost.
    pub async fn release_held(&self) {
        let held: Vec<Held> = std::mem::take(&mut *self.held.lock());
        for h in held {
            match h {
                Held::Pull(token, req) => {
                    let _ = self.inner.pull(&token, &req).await;
                }
                Held::Push(token, req) => {
                    let _ = self.deliver_push(&token, &req).await;
                }
            }
        }
    }

    async fn deliver_push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        *self.pushes_delivered.lock() += 1;
        self.inner.push(token, req).await
    }

    /// Drops the faults still planned.
    pub fn clear_plan(&self) {
        self.plan.lock().clear();
    }
}

fn lost(what: &str) -> TransportError {
    TransportError::Offline(format!("fault plan: {what}"))
}

fn server_error(status: u16) -> TransportError {
    TransportError::Server {
        status,
        code: "unavailable".into(),
        message: "fault plan: server error".into(),
    }
}

#[async_trait]
impl<T: Transport> Transport for FaultPlan<T> {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        self.release_held().await;
        match self.next_fault() {
            Fault::None => self.inner.pull(token, req).await,
            Fault::Slow(ms) => {
                self.clock.advance(ms);
                self.inner.pull(token, req).await
            }
            Fault::DropBefore => Err(lost("request dropped")),
            Fault::DropAfter | Fault::Truncated => {
                let _ = self.inner.pull(token, req).await?;
                Err(lost("response cut off"))
            }
            Fault::Duplicate => {
                let _ = self.inner.pull(token, req).await;
                self.inner.pull(token, req).await
            }
            Fault::Late => {
                self.held
                    .lock()
                    .push(Held::Pull(token.to_string(), req.clone()));
                Err(lost("request held"))
            }
            Fault::Unauthorized => Err(TransportError::Unauthorized("fault plan: 401".into())),
            Fault::ServerError(status) => Err(server_error(status)),
            Fault::Hang => {
                let _ = self.inner.pull(token, req).await;
                self.hung.notify_one();
                std::future::pending().await
            }
        }
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        self.release_held().await;
        match self.next_fault() {
            Fault::None => self.deliver_push(token, req).await,
            Fault::Slow(ms) => {
                self.clock.advance(ms);
                self.deliver_push(token, req).await
            }
            Fault::DropBefore => Err(lost("request dropped")),
            Fault::DropAfter | Fault::Truncated => {
                let _ = self.deliver_push(token, req).await?;
                Err(lost("response cut off"))
            }
            Fault::Duplicate => {
                let first = self.deliver_push(token, req).await;
                let _ = self.deliver_push(token, req).await;
                first
            }
            Fault::Late => {
                self.held
                    .lock()
                    .push(Held::Push(token.to_string(), req.clone()));
                Err(lost("request held"))
            }
            Fault::Unauthorized => Err(TransportError::Unauthorized("fault plan: 401".into())),
            Fault::ServerError(status) => Err(server_error(status)),
            Fault::Hang => {
                let _ = self.deliver_push(token, req).await;
                self.hung.notify_one();
                std::future::pending().await
            }
        }
    }
}

/// Puts a new, empty database for `schema` at `path`: a copy of one made once
/// per schema (creating the tables is most of a device's start-up, and the
/// model test starts thousands); it makes a client id of its own when opened.
fn fresh_database(schema: &ferry::Schema, path: &std::path::Path) {
    static TEMPLATES: std::sync::OnceLock<
        Mutex<(
            tempfile::TempDir,
            std::collections::HashMap<String, std::path::PathBuf>,
        )>,
    > = std::sync::OnceLock::new();
    let templates =
        TEMPLATES.get_or_init(|| Mutex::new((tempfile::tempdir().unwrap(), Default::default())));
    let template = {
        let mut t = templates.lock();
        let key = schema.to_json();
        let n = t.1.len();
        let file = t.0.path().join(format!("template-{n}.db"));
        t.1.entry(key)
            .or_insert_with(|| {
                drop(ferry::Store::open(&file, schema.clone()).unwrap());
                // Without a client id: each copy makes its own when it opens.
                rusqlite::Connection::open(&file)
                    .unwrap()
                    .execute("DELETE FROM _ferry_meta WHERE key = 'client_id'", [])
                    .unwrap();
                file
            })
            .clone()
    };
    std::fs::copy(template, path).unwrap();
}

/// A device on the kit: its own database file, a sync client over a fault plan
/// to an in-process server, and the shared manual clock.
pub struct KitDevice {
    pub store: ferry::Store,
    pub client: ferry::sync::SyncClient,
    pub net: Arc<FaultPlan<InProcess>>,
    pub clock: Arc<ManualClock>,
    server: Arc<InProcessServer>,
    token: String,
    config: ferry::sync::SyncConfig,
    dir: tempfile::TempDir,
}

impl KitDevice {
    pub fn new(
        server: &Arc<InProcessServer>,
        clock: &Arc<ManualClock>,
        token: &str,
        schema: ferry::Schema,
        config: ferry::sync::SyncConfig,
    ) -> KitDevice {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        fresh_database(&schema, &path);
        let store = ferry::Store::open_with(&path, Some(schema), clock.clone()).unwrap();
        Self::connect(store, server, clock, token, config, dir)
    }

    /// A device on a copy of the database file `from` (a fixture), opened with
    /// the schema stored in it.
    pub fn from_file(
        from: &std::path::Path,
        server: &Arc<InProcessServer>,
        clock: &Arc<ManualClock>,
        token: &str,
    ) -> ferry::Result<KitDevice> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        std::fs::copy(from, &path).unwrap();
        let store = ferry::Store::open_with(&path, None, clock.clone())?;
        Ok(Self::connect(
            store,
            server,
            clock,
            token,
            ferry::sync::SyncConfig::default(),
            dir,
        ))
    }

    /// The device's database file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("device.db")
    }

    fn connect(
        store: ferry::Store,
        server: &Arc<InProcessServer>,
        clock: &Arc<ManualClock>,
        token: &str,
        config: ferry::sync::SyncConfig,
        dir: tempfile::TempDir,
    ) -> KitDevice {
        let net = Arc::new(FaultPlan::new(
            InProcess {
                server: server.clone(),
            },
            clock.clone(),
        ));
        let client = ferry::sync::SyncClient::new(
            store.clone(),
            net.clone(),
            Arc::new(ferry::transport::StaticToken(token.to_string())),
            config.clone(),
        )
        .unwrap();
        KitDevice {
            store,
            client,
            net,
            clock: clock.clone(),
            server: server.clone(),
            token: token.to_string(),
            config,
            dir,
        }
    }

    /// The app process dies (whatever it was doing is dropped mid-way, as a kill
    /// -9 would stop it) and starts again on the same database file.
    pub fn restart(self) -> KitDevice {
        self.restart_with(|_| {})
    }

    /// [`Self::restart`], against another server (one restored from a backup).
    pub fn restart_on(self, server: &Arc<InProcessServer>) -> KitDevice {
        self.restart_in(server, |_| {})
    }

    /// [`Self::restart`], doing `while_down` to the database's directory while
    /// the app is not running.
    pub fn restart_with(self, while_down: impl FnOnce(&std::path::Path)) -> KitDevice {
        let server = self.server.clone();
        self.restart_in(&server, while_down)
    }

    fn restart_in(
        self,
        server: &Arc<InProcessServer>,
        while_down: impl FnOnce(&std::path::Path),
    ) -> KitDevice {
        let KitDevice {
            store,
            client,
            clock,
            token,
            config,
            dir,
            ..
        } = self;
        // Work the client had handed to the blocking pool still runs: a killed
        // process would have stopped it at some point, so wait until it has
        // (the kill then lands after it) and the database is closed.
        let closed = store.downgrade();
        drop(client);
        drop(store);
        while closed.upgrade().is_some() {
            std::thread::yield_now();
        }
        while_down(dir.path());
        let store =
            ferry::Store::open_with(&dir.path().join("device.db"), None, clock.clone()).unwrap();
        Self::connect(store, server, &clock, &token, config, dir)
    }

    /// Syncs until the device reports success with nothing left to push,
    /// advancing the manual clock past any backoff; at most `rounds` tries.
    pub async fn settle(&self, rounds: usize) -> ferry::Result<()> {
        let mut last = Ok(());
        for _ in 0..rounds {
            self.clock.advance(600_000);
            last = self.client.sync().await.map(|_| ());
            if last.is_ok() && self.store.pending_counts()?.0 == 0 {
                return Ok(());
            }
        }
        last
    }
}
