//! [`FerrySyncClient`]: two-way sync of a [`FerryDatabase`] with a Ferry backend
//! over HTTP, exported with its records.
//!
//! `sync()` and `write()` are async (`suspend` in Kotlin, `async` in Swift) and run
//! on the FFI runtime. Background sync (`start`) runs there too; the host drives
//! it with `set_online` and `set_foreground`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use tokio_util::task::TaskTracker;

use super::database::FerryDatabase;
use super::error::FerryError;
use super::listeners::{self, ConflictResolver, ListenerHandle, StatusListener, TokenProvider};
use super::{on_runtime, ops, runtime};
use crate::sync::{OfflineBehavior as CoreOffline, SyncClient, WriteMode as CoreMode};
use crate::transport::HttpTransport;

type Result<T> = std::result::Result<T, FerryError>;

// uniffi takes only literals as defaults (they are written into the generated
// Kotlin and Swift); these keep the literals below equal to the core's defaults.
const _: () = assert!(ferry_protocol::DEFAULT_MAX_PAGE_ROWS == 5000);
const _: () = assert!(ferry_protocol::DEFAULT_PUSH_MUTATIONS == 1000);
const _: () = assert!(crate::sync::client::DEFAULT_PUSH_DEBOUNCE.as_millis() == 300);
const _: () = assert!(crate::sync::policy::DEFAULT_PAGE_TARGET_MS == 2000);
const _: () = assert!(crate::sync::policy::DEFAULT_MIN_PAGE_ROWS == 100);
const _: () = assert!(crate::sync::client::DEFAULT_CHECKSUM_INTERVAL.as_millis() == 3_600_000);

/// Tuning of the sync client; every field has a default.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncConfig {
    /// Rows asked per pull page.
    #[uniffi(default = 5000)]
    pub page_size: u32,
    /// Mutations per push request.
    #[uniffi(default = 1000)]
    pub push_batch: u32,
    /// Quiet time after a local write before the background push.
    #[uniffi(default = 300)]
    pub push_debounce_ms: u64,
    /// Selective sync: only these collections (null: every synced one).
    #[uniffi(default = None)]
    pub collections: Option<Vec<String>>,
    /// Adaptive pull pages: the size starts at `page_size` and follows the
    /// measured throughput so that a page takes about `target_ms` (null: fixed).
    #[uniffi(default = None)]
    pub page_sizing: Option<PageSizing>,
    /// Adaptive push batches: the same sizing in mutations, starting at
    /// `push_batch` (null: fixed).
    #[uniffi(default = None)]
    pub push_sizing: Option<PageSizing>,
    /// On a metered network (`set_network`), a pull stops at the priority
    /// checkpoint after which nothing of this priority or a higher one is
    /// left; the rest follows on an unmetered network (null: no cap).
    #[uniffi(default = None)]
    pub metered_priority: Option<u8>,
    /// Check the collections synced whole against the server's checksums,
    /// and repair one that differs (`SyncReport.repairs`, `SyncStatus.last_repair`).
    #[uniffi(default = true)]
    pub checksums: bool,
    /// How often at most a pull checks (0: every pull); the first check comes
    /// one interval after the device's first sync.
    #[uniffi(default = 3600000)]
    pub checksum_interval_ms: u64,
}

/// Bounds and time target of adaptive pull pages (rows) or push batches
/// (mutations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct PageSizing {
    #[uniffi(default = 2000)]
    pub target_ms: u64,
    #[uniffi(default = 100)]
    pub min_rows: u32,
    #[uniffi(default = 5000)]
    pub max_rows: u32,
}

/// How a write reaches the server (docs/architecture.md, "The three write modes share one store").
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum WriteMode {
    /// Local transaction and event now; pushed soon after.
    OfflineFirst,
    /// Local now, then an immediate push; a rejection rolls back (rollback event)
    /// and fails the call with `Rejected`. Offline: as offline-first.
    Optimistic,
    /// The server first; only a confirmed write is stored. When offline, as chosen.
    Online { when_offline: OfflineBehavior },
}

/// What an online write does when the server cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum OfflineBehavior {
    /// Store it as an offline-first write.
    Queue,
    /// Fail with `Offline` and change nothing.
    Fail,
}

// The status types are the core's own, exported as they are.
pub use crate::sync::{NetworkHints, NetworkKind, Repair, SyncPhase, SyncStatus};

/// What one sync did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncReport {
    pub pages: u64,
    pub pulled: u64,
    pub skipped: u64,
    pub pushed_applied: u64,
    pub pushed_conflicts: u64,
    pub pushed_rejected: u64,
    pub pushed_retried: u64,
    /// The pull stopped after this priority's checkpoint on a metered network.
    pub deferred_after: Option<u8>,
    /// Collections whose checksum differed from the server's, each with
    /// whether its repair made it match.
    pub repairs: Vec<Repair>,
    /// The full report (publish counts per collection included) as JSON.
    pub detail_json: String,
}

/// Syncs one database with a Ferry backend.
#[derive(uniffi::Object)]
pub struct FerrySyncClient {
    /// The client until `shutdown`, then its last status. A host may hold this
    /// object long after (a JS runtime keeps a call's future until its event
    /// loop gets to it, and collects when it likes): once shut down it holds no
    /// handle of the database, so a logout's delete never finds the file open.
    client: RwLock<Slot>,
    /// The calls running on the runtime (each holds the client): `shutdown`
    /// waits for them.
    calls: TaskTracker,
}

enum Slot {
    Open(SyncClient),
    Closed(SyncStatus),
}

impl FerrySyncClient {
    fn of(client: SyncClient) -> Arc<Self> {
        Arc::new(Self {
            client: RwLock::new(Slot::Open(client)),
            calls: TaskTracker::new(),
        })
    }

    /// The client, unless it was shut down.
    fn open(&self) -> Option<SyncClient> {
        match &*self.client.read() {
            Slot::Open(c) => Some(c.clone()),
            Slot::Closed(_) => None,
        }
    }

    /// Runs a call on the runtime, tracked for `shutdown`; `Closed` after it.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(SyncClient) -> BoxFuture<'static, crate::Result<T>>,
    ) -> Result<T> {
        let client = self.open().ok_or(crate::Error::Closed)?;
        let fut = f(client);
        self.calls
            .spawn_on(fut, runtime().handle())
            .await
            .map_err(|e| FerryError::internal(format!("internal error: task failed: {e}")))?
            .map_err(FerryError::from)
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl FerrySyncClient {
    /// A client for `db` talking HTTP to `server_url`, with the default conflict
    /// resolution (pending local columns win).
    #[uniffi::constructor]
    pub fn new(
        db: Arc<FerryDatabase>,
        server_url: String,
        token_provider: Arc<dyn TokenProvider>,
        config: SyncConfig,
    ) -> Result<Arc<Self>> {
        Ok(Self::of(client(&db, &server_url, token_provider, config)?))
    }

    /// As `new`, with a host conflict resolver.
    #[uniffi::constructor]
    pub fn with_resolver(
        db: Arc<FerryDatabase>,
        server_url: String,
        token_provider: Arc<dyn TokenProvider>,
        config: SyncConfig,
        resolver: Arc<dyn ConflictResolver>,
    ) -> Result<Arc<Self>> {
        let client = client(&db, &server_url, token_provider, config)?
            .with_resolver(Arc::new(listeners::Resolver(resolver)))?;
        Ok(Self::of(client))
    }

    /// Pull, publish, then push. Joins a sync that is already running.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.call(|c| async move { c.sync().await }.boxed())
            .await
            .map(Into::into)
    }

    /// Writes a mixed batch (the `FerryDatabase.write` JSON) in `mode`; returns
    /// the written rows as a JSON array.
    pub async fn write(&self, ops_json: String, mode: WriteMode) -> Result<String> {
        let ops = ops::batch(&ops_json)?;
        self.call(|c| async move { c.write(ops, mode.into()).await }.boxed())
            .await
            .map(ops::written)
    }

    /// Pushes every ready outbox entry; returns how many the server applied.
    pub async fn push_all(&self) -> Result<u64> {
        self.call(|c| async move { c.push_all().await }.boxed())
            .await
            .map(|r| r.applied)
    }

    /// Reads `query_json` (the `FerryDatabase.query` language) from the server,
    /// past the local horizon, under the same auth and sync rules as a pull;
    /// returns the rows as a JSON array, local pending edits laid over them.
    /// With `cache`, the rows are stored as synced without moving the horizon
    /// (the next retention run prunes them again). Offline, or with the server
    /// unreachable, it fails with `Offline`: "not available offline".
    pub async fn fetch_remote(
        &self,
        collection: String,
        query_json: String,
        cache: bool,
    ) -> Result<String> {
        let query: serde_json::Value =
            serde_json::from_str(&query_json).map_err(crate::Error::from)?;
        self.call(move |c| async move { c.fetch_remote(&collection, query, cache).await }.boxed())
            .await
            .map(|rows| ops::rows(&rows))
    }

    pub fn status(&self) -> SyncStatus {
        match &*self.client.read() {
            Slot::Open(c) => c.status(),
            Slot::Closed(last) => last.clone(),
        }
    }

    /// Registers a status listener until the handle is cancelled or dropped.
    /// After `shutdown` the listener is never called, and the handle is inactive.
    pub fn add_status_listener(&self, listener: Arc<dyn StatusListener>) -> Arc<ListenerHandle> {
        let Some(c) = self.open() else {
            return ListenerHandle::inactive();
        };
        let id = c.add_status_listener(Arc::new(listeners::Status(listener)));
        let c = c.downgrade();
        ListenerHandle::new(move || {
            if let Some(c) = c.upgrade() {
                c.remove_status_listener(id)
            }
        })
    }

    /// The host says whether the network is reachable. Going online syncs.
    pub fn set_online(&self, online: bool) {
        if let Some(c) = self.open() {
            c.set_online(online)
        }
    }

    /// The host says what network the device is on: its kind, whether it is
    /// metered, its round trip. A change of kind starts adaptive sizes over, a
    /// round trip raises their time target, and leaving a metered network
    /// syncs what `metered_priority` deferred.
    pub fn set_network(&self, hints: NetworkHints) {
        if let Some(c) = self.open() {
            c.set_network(hints)
        }
    }

    /// What the host last said of the network (the default after `shutdown`).
    pub fn network(&self) -> NetworkHints {
        self.open().map(|c| c.network()).unwrap_or_default()
    }

    /// The host says whether the app is in the foreground (no background sync
    /// in the background; explicit `sync()` still runs).
    pub fn set_foreground(&self, foreground: bool) {
        if let Some(c) = self.open() {
            c.set_foreground(foreground)
        }
    }

    /// Starts background sync: a debounced push after local writes, a sync when
    /// the network returns or the app comes to the foreground, retries with backoff.
    pub fn start(&self) {
        if let Some(c) = self.open() {
            let _rt = runtime().enter();
            c.start()
        }
    }

    pub fn stop(&self) {
        if let Some(c) = self.open() {
            c.stop()
        }
    }

    /// Shuts the client down, the step before closing its database (a logout
    /// deletes it next): stops background sync, cancels a sync or push running
    /// now (it fails with `Closed`; nothing is half-written), and resolves once
    /// none of the client's calls and database work is in flight. Later syncs
    /// and pushes fail with `Closed`.
    pub async fn shutdown(&self) -> Result<()> {
        let Some(c) = self.open() else {
            // Shut down already, or shutting down: wait for its calls too.
            self.calls.wait().await;
            return Ok(());
        };
        {
            let c = c.clone();
            on_runtime(async move {
                c.shutdown().await;
                Ok(())
            })
            .await?;
        }
        self.calls.close();
        self.calls.wait().await;
        *self.client.write() = Slot::Closed(c.status());
        Ok(())
    }
}

/// The default config.
#[uniffi::export]
pub fn default_sync_config() -> SyncConfig {
    SyncConfig::from(&crate::sync::SyncConfig::default())
}

fn client(
    db: &FerryDatabase,
    url: &str,
    tokens: Arc<dyn TokenProvider>,
    config: SyncConfig,
) -> crate::Result<SyncClient> {
    let transport = HttpTransport::new(url)?;
    SyncClient::new(
        db.store()?,
        Arc::new(transport),
        Arc::new(listeners::Tokens(tokens)),
        config.into(),
    )
}

impl From<SyncConfig> for crate::sync::SyncConfig {
    fn from(c: SyncConfig) -> Self {
        crate::sync::SyncConfig {
            page_size: c.page_size,
            push_batch: c.push_batch as usize,
            push_debounce: Duration::from_millis(c.push_debounce_ms),
            collections: c.collections,
            page_sizing: c.page_sizing.map(Into::into),
            push_sizing: c.push_sizing.map(Into::into),
            metered_priority: c.metered_priority,
            checksum_interval: c
                .checksums
                .then(|| Duration::from_millis(c.checksum_interval_ms)),
            ..Default::default()
        }
    }
}

impl From<&crate::sync::SyncConfig> for SyncConfig {
    fn from(c: &crate::sync::SyncConfig) -> Self {
        SyncConfig {
            page_size: c.page_size,
            push_batch: c.push_batch as u32,
            push_debounce_ms: c.push_debounce.as_millis() as u64,
            collections: c.collections.clone(),
            page_sizing: c.page_sizing.map(Into::into),
            push_sizing: c.push_sizing.map(Into::into),
            metered_priority: c.metered_priority,
            checksums: c.checksum_interval.is_some(),
            checksum_interval_ms: c
                .checksum_interval
                .unwrap_or(crate::sync::client::DEFAULT_CHECKSUM_INTERVAL)
                .as_millis() as u64,
        }
    }
}

impl From<PageSizing> for crate::sync::PageSizing {
    fn from(p: PageSizing) -> Self {
        crate::sync::PageSizing {
            target_ms: p.target_ms,
            min_rows: p.min_rows,
            max_rows: p.max_rows,
        }
    }
}

impl From<crate::sync::PageSizing> for PageSizing {
    fn from(p: crate::sync::PageSizing) -> Self {
        PageSizing {
            target_ms: p.target_ms,
            min_rows: p.min_rows,
            max_rows: p.max_rows,
        }
    }
}

impl From<WriteMode> for CoreMode {
    fn from(m: WriteMode) -> Self {
        match m {
            WriteMode::OfflineFirst => CoreMode::OfflineFirst,
            WriteMode::Optimistic => CoreMode::Optimistic,
            WriteMode::Online {
                when_offline: OfflineBehavior::Queue,
            } => CoreMode::Online(CoreOffline::Queue),
            WriteMode::Online {
                when_offline: OfflineBehavior::Fail,
            } => CoreMode::Online(CoreOffline::Fail),
        }
    }
}

impl From<crate::sync::SyncReport> for SyncReport {
    fn from(r: crate::sync::SyncReport) -> Self {
        SyncReport {
            pages: r.pages,
            pulled: r.pulled,
            skipped: r.skipped,
            pushed_applied: r.pushed.applied,
            pushed_conflicts: r.pushed.conflicts,
            pushed_rejected: r.pushed.rejected,
            pushed_retried: r.pushed.retried,
            deferred_after: r.deferred_after,
            detail_json: super::to_json(&r),
            repairs: r.repairs,
        }
    }
}
