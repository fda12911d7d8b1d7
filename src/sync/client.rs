//! The sync client: drives pulls, publishes and pushes over a transport, runs
//! the three write modes, schedules background sync and reports status.
//!
//! All decisions are made by the sans-IO parts ([`super::staging`],
//! [`super::push`]); this module only moves their inputs and outputs across the
//! transport. One sync runs at a time: a second request joins the running one.
//! Database work runs on tokio's blocking pool so the async workers stay free.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use ferry_protocol::{PullPage, PullRequest, PushRequest, PushResponse, RawFields};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::integrity::{Pulled, Repair, Want};
use super::machine::{Action, Finished, Input, Machine};
use super::policy::{self, NetworkHints, NetworkKind, PageSizer, PageSizing};
use super::push::{self, PushReport};
use super::rebase::with_merges;
use super::resolver::{ConflictResolver, MergeRule};
use super::staging::{self, PublishReport};
use super::write_modes::{OnlineAnswer, Sent, online_answer, out_of_reach};
use crate::error::{Error, Result};
use crate::events::{ChangeEvent, ChangeSource, ListenerHandle};
use crate::store::outbox::Sending;
use crate::store::{OutboxEntry, Record, RecordStatus, Store, WriteOp};
use crate::transport::{TokenProvider, Transport, TransportError};

/// How a write reaches the server (docs/architecture.md, "The three write modes share one store").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Local transaction and event now; pushed soon after (debounced).
    #[default]
    OfflineFirst,
    /// Local transaction and event now, then an immediate push of this change;
    /// a rejection rolls it back with a rollback event. Offline: as offline-first.
    Optimistic,
    /// The server first; only a confirmed write is stored (as synced, never
    /// queued). Offline, as chosen.
    Online(OfflineBehavior),
}

/// What an online write does when the server cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineBehavior {
    /// Store it as an offline-first write.
    Queue,
    /// Fail with [`Error::Offline`] and change nothing.
    Fail,
}

/// Tuning of the client.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Rows asked per pull page.
    pub page_size: u32,
    /// Mutations per push request.
    pub push_batch: usize,
    /// Quiet time after a local write before the background push.
    pub push_debounce: Duration,
    /// Selective sync: only these collections (default: all synced ones).
    pub collections: Option<Vec<String>>,
    /// Push rounds per sync at most (a sync also pushes what conflicts re-queued).
    pub max_push_rounds: usize,
    /// Seed of the background schedule's jitter (tests fix it; `None`: random).
    pub seed: Option<u64>,
    /// The merge of a conflict when no resolver is set, and whenever the app's
    /// resolver fails or returns fields that do not fit the schema.
    pub merge_rule: MergeRule,
    /// Adaptive pull pages (`None`: every page asks for `page_size`): the size
    /// starts at `page_size` and follows the measured throughput
    /// ([`super::policy::PageSizer`]).
    pub page_sizing: Option<PageSizing>,
    /// Adaptive push batches (`None`: every batch holds up to `push_batch`):
    /// the same sizing, in mutations, starting at `push_batch`.
    pub push_sizing: Option<PageSizing>,
    /// On a metered network ([`NetworkHints::metered`]), a pull stops once
    /// everything of this priority and the higher ones is synced: at the
    /// priority checkpoint after which nothing within the cap is left, or at
    /// its first page of a collection past the cap, which it leaves unstaged
    /// (so a pull with nothing new within the cap still reads one page). The
    /// rest waits until the network is not metered (or an explicit
    /// [`SyncClient::sync`] on an unmetered one). `None`: metered or not, a
    /// pull runs to the end.
    pub metered_priority: Option<u8>,
    /// How often at most a pull checks the collections it syncs whole against
    /// the server's checksums, and repairs one that differs
    /// ([`super::integrity`]); the first check comes one interval after the
    /// device's first sync. `None`: never.
    pub checksum_interval: Option<Duration>,
}

/// How many times a pull starts over when the subscriptions change under it.
const PULL_RESTARTS: usize = 3;

/// Default [`SyncConfig::checksum_interval`].
pub const DEFAULT_CHECKSUM_INTERVAL: Duration = Duration::from_secs(3600);

/// Default [`SyncConfig::push_debounce`].
pub const DEFAULT_PUSH_DEBOUNCE: Duration = Duration::from_millis(300);

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            page_size: ferry_protocol::DEFAULT_MAX_PAGE_ROWS,
            push_batch: ferry_protocol::DEFAULT_PUSH_MUTATIONS,
            push_debounce: DEFAULT_PUSH_DEBOUNCE,
            collections: None,
            max_push_rounds: 1_000,
            seed: None,
            merge_rule: MergeRule::default(),
            page_sizing: None,
            push_sizing: None,
            metered_priority: None,
            checksum_interval: Some(DEFAULT_CHECKSUM_INTERVAL),
        }
    }
}

/// Feeds one request's outcome to an adaptive size, if there is one: the
/// entries it carried and whether it was full, or its error, and how long it
/// took. Only a missing answer (offline, a timeout) or a 5xx counts as a
/// failure; a refusal says nothing about the link.
fn measured(sizer: &Mutex<Option<PageSizer>>, outcome: Result<(u64, bool), &Error>, elapsed: i64) {
    let Some(sizer) = &mut *sizer.lock() else {
        return;
    };
    match outcome {
        Ok((entries, full)) => sizer.on_page(entries, elapsed, full),
        Err(Error::Offline(_)) => sizer.on_failure(),
        Err(Error::Server { status, .. }) if *status >= 500 => sizer.on_failure(),
        Err(_) => {}
    }
}

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[serde(rename_all = "snake_case")]
pub enum SyncPhase {
    #[default]
    Idle,
    Pulling,
    Publishing,
    Pushing,
    Offline,
    Error,
}

/// Status and progress, as events and through [`SyncClient::status`].
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct SyncStatus {
    pub phase: SyncPhase,
    pub pages_done: u64,
    pub records_done: u64,
    pub bytes_done: u64,
    /// Rows the server says exist in the pulled collections, when it tells.
    pub server_total: Option<u64>,
    /// Progress: how many rows this pull is expected to bring, when known. A
    /// first sync from scratch brings the server's total; a catch-up or a
    /// resumed pull cannot know (`None`): show `records_done` and `bytes_done`.
    pub records_expected: Option<u64>,
    /// The pull running (or last run) has published everything of this
    /// priority and the higher ones: set at each priority checkpoint, and to
    /// the lowest priority when a pull completes. `None` until then.
    /// `Store::priorities_synced` keeps the same across restarts.
    pub completed_priority: Option<u8>,
    /// Records with changes the server has not confirmed yet.
    pub pending: u64,
    /// Mutations parked after a permanent rejection.
    pub quarantined: u64,
    pub last_error: Option<String>,
    /// True after the server refused the token even after a refresh; sync stays
    /// stopped until the next explicit [`SyncClient::sync`].
    pub auth_failed: bool,
    pub last_sync_completed_at: Option<i64>,
    pub online: bool,
    /// The last collection found to differ from the server's checksum, and
    /// whether its repair made it match ([`super::integrity`]).
    pub last_repair: Option<Repair>,
}

/// Receives every status change.
pub trait StatusListener: Send + Sync {
    fn on_status(&self, status: &SyncStatus);
}

impl<F: Fn(&SyncStatus) + Send + Sync> StatusListener for F {
    fn on_status(&self, status: &SyncStatus) {
        self(status)
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    pub pages: u64,
    pub pulled: u64,
    pub skipped: u64,
    pub published: PublishReport,
    pub pushed: PushReport,
    /// The pull stopped once everything of this priority and the higher ones
    /// was synced, because the network is metered
    /// ([`SyncConfig::metered_priority`]); the rest follows on an unmetered
    /// network.
    pub deferred_after: Option<u8>,
    /// Collections whose checksum differed from the server's, each with
    /// whether its repair made it match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<Repair>,
}

impl SyncReport {
    /// Adds what another pull of the same sync did.
    pub(super) fn absorb(&mut self, o: &SyncReport) {
        self.pages += o.pages;
        self.pulled += o.pulled;
        self.skipped += o.skipped;
        self.published.add(&o.published);
        self.deferred_after = self.deferred_after.or(o.deferred_after);
    }
}

type SharedSync = Shared<BoxFuture<'static, Result<SyncReport>>>;

/// Puts every in-flight entry back in the outbox if a push is dropped before it
/// finished (its caller was cancelled, or the client closed): their answers will
/// never be applied, and an entry left in flight would never be sent again.
/// Under the same mutation ids, and still marked unanswered, so nothing applies
/// twice and nothing the server may hold is rewritten.
struct PutBackOnDrop(Option<Store>);

impl PutBackOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for PutBackOnDrop {
    fn drop(&mut self) {
        if let Some(store) = self.0.take()
            && let Err(e) = push::reset_in_flight(&store)
        {
            tracing::error!(error = %e, "could not return a cancelled push to the outbox; it is retried after a restart");
        }
    }
}

/// The registered status listeners, by id.
type StatusListeners = Vec<(u64, Arc<dyn StatusListener>)>;

struct Inner {
    store: Store,
    transport: Arc<dyn Transport>,
    tokens: Arc<dyn TokenProvider>,
    resolver: Mutex<Arc<dyn ConflictResolver>>,
    config: SyncConfig,
    status: Mutex<SyncStatus>,
    /// Shared with the deliveries queued on the event thread, which read it when
    /// they run: a listener removed before then is not called.
    status_listeners: Arc<Mutex<StatusListeners>>,
    next_listener: AtomicU32,
    /// The sync running now, if any: weak, so that a sync nobody awaits any
    /// more is dropped (and does not keep the client alive).
    running: Mutex<Option<WeakShared<BoxFuture<'static, Result<SyncReport>>>>>,
    online: AtomicBool,
    foreground: AtomicBool,
    /// Inputs to the background machine, once [`SyncClient::start`] ran.
    inputs: Mutex<Option<mpsc::UnboundedSender<Input>>>,
    /// What the background machine last decided, and how many steps it took.
    schedule: watch::Sender<(u64, Action)>,
    scheduler: Mutex<Option<tokio::task::JoinHandle<()>>>,
    _local_writes: Mutex<Option<ListenerHandle>>,
    /// Cancelled by [`SyncClient::shutdown`]: a sync or push running then ends
    /// with [`Error::Closed`], and no later one starts.
    closed: CancellationToken,
    /// The client's database work on tokio's blocking pool, which outlives a
    /// cancelled future: [`SyncClient::shutdown`] waits for it.
    work: TaskTracker,
    /// Held shared while a task is handed to `work`, and taken exclusively by
    /// [`SyncClient::shutdown`] once `closed` is cancelled: every task is
    /// either handed over before shutdown waits for `work`, or refused.
    work_gate: RwLock<()>,
    /// The adaptive page size, kept across syncs (see [`SyncConfig::page_sizing`]).
    page_sizer: Mutex<Option<PageSizer>>,
    push_sizer: Mutex<Option<PageSizer>>,
    /// What the host last said of the network ([`SyncClient::set_network`]),
    /// and the last kind it knew.
    network: Mutex<(NetworkHints, NetworkKind)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.scheduler.lock().take() {
            h.abort();
        }
    }
}

/// A pushed batch and the server's answer to it, not applied yet.
type Answered = (Arc<Vec<Sending>>, PushResponse);

/// Two-way sync of a [`Store`] with a backend.
#[derive(Clone)]
pub struct SyncClient {
    inner: Arc<Inner>,
}

/// See [`SyncClient::downgrade`].
#[derive(Clone)]
pub struct WeakSyncClient(std::sync::Weak<Inner>);

impl WeakSyncClient {
    /// The client, if some handle still holds it.
    pub fn upgrade(&self) -> Option<SyncClient> {
        self.0.upgrade().map(|inner| SyncClient { inner })
    }
}

impl SyncClient {
    /// A client with the default resolver; in-flight entries of a crashed run are
    /// put back in the outbox.
    pub fn new(
        store: Store,
        transport: Arc<dyn Transport>,
        tokens: Arc<dyn TokenProvider>,
        config: SyncConfig,
    ) -> Result<SyncClient> {
        push::reset_in_flight(&store)?;
        let sizer = config
            .page_sizing
            .map(|sizing| PageSizer::new(sizing, config.page_size));
        let push_sizer = config
            .push_sizing
            .map(|sizing| PageSizer::new(sizing, config.push_batch as u32));
        let client = SyncClient {
            inner: Arc::new(Inner {
                store,
                transport,
                tokens,
                resolver: Mutex::new(Arc::new(config.merge_rule)),
                config,
                status: Mutex::new(SyncStatus {
                    online: true,
                    ..Default::default()
                }),
                status_listeners: Arc::default(),
                next_listener: AtomicU32::new(0),
                running: Mutex::new(None),
                online: AtomicBool::new(true),
                foreground: AtomicBool::new(true),
                inputs: Mutex::new(None),
                schedule: watch::channel((0, Action::Idle)).0,
                scheduler: Mutex::new(None),
                _local_writes: Mutex::new(None),
                closed: CancellationToken::new(),
                work: TaskTracker::new(),
                work_gate: RwLock::new(()),
                page_sizer: Mutex::new(sizer),
                push_sizer: Mutex::new(push_sizer),
                network: Mutex::new((NetworkHints::default(), NetworkKind::Unknown)),
            }),
        };
        client.refresh_counts();
        Ok(client)
    }

    /// Runs `f` (database work) on tokio's blocking pool, tracked for
    /// [`Self::shutdown`].
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.spawn_work(f)?
            .await
            .map_err(|e| Error::Internal(format!("database task failed: {e}")))?
    }

    /// Hands `f` to tokio's blocking pool, tracked for [`Self::shutdown`];
    /// `Closed` (and `f`, with the store it holds, dropped here) once shutdown
    /// has begun. A cancelled sync can still reach this point after the
    /// shutdown's cancel: its task must not start after shutdown stopped waiting.
    fn spawn_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<tokio::task::JoinHandle<Result<T>>> {
        let _gate = self.inner.work_gate.read();
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        Ok(self.inner.work.spawn_blocking(f))
    }

    /// `fut`, unless [`Self::shutdown`] comes first: then `Closed`.
    async fn until_closed<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        tokio::select! {
            // Once shut down, the future is not polled again.
            biased;
            _ = self.inner.closed.cancelled() => Err(Error::Closed),
            r = fut => r,
        }
    }

    /// Replaces the conflict resolver.
    pub fn with_resolver(self, resolver: Arc<dyn ConflictResolver>) -> Result<SyncClient> {
        self.set_resolver(resolver);
        Ok(self)
    }

    /// Replaces the conflict resolver; used from the next publish or push on.
    pub fn set_resolver(&self, resolver: Arc<dyn ConflictResolver>) {
        *self.inner.resolver.lock() = resolver;
    }

    pub(super) fn config(&self) -> &SyncConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn status(&self) -> SyncStatus {
        self.inner.status.lock().clone()
    }

    /// Registers a status listener; returns an id for [`Self::remove_status_listener`].
    pub fn add_status_listener(&self, l: Arc<dyn StatusListener>) -> u64 {
        let id = self.inner.next_listener.fetch_add(1, Ordering::Relaxed) as u64;
        self.inner.status_listeners.lock().push((id, l));
        id
    }

    /// A reference that does not keep the client (nor its store) alive: for a
    /// handle that may outlive the client, such as a host's listener handle.
    pub fn downgrade(&self) -> WeakSyncClient {
        WeakSyncClient(Arc::downgrade(&self.inner))
    }

    pub fn remove_status_listener(&self, id: u64) {
        self.inner.status_listeners.lock().retain(|(i, _)| *i != id);
    }

    pub(super) fn update_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        let snapshot = {
            let mut s = self.inner.status.lock();
            f(&mut s);
            s.clone()
        };
        if self.inner.status_listeners.lock().is_empty() {
            return;
        }
        let listeners = self.inner.status_listeners.clone();
        // Delivered on the store's event thread, never on the caller's (a tokio
        // worker): a slow host listener cannot stall networking, and a burst of
        // changes reaches it as its latest status.
        self.inner
            .store
            .on_event_thread_latest("sync status", move || {
                let listeners: Vec<_> = listeners.lock().iter().map(|(_, l)| l.clone()).collect();
                for l in listeners {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        l.on_status(&snapshot)
                    }))
                    .is_err()
                    {
                        tracing::error!("a status listener panicked");
                    }
                }
            });
    }

    /// Outbox counts only: `Store::status` would also count every collection's
    /// rows, a full scan of each table on every sync, push batch and write.
    fn refresh_counts(&self) {
        self.set_counts(self.inner.store.pending_counts());
    }

    /// [`Self::refresh_counts`] off the async thread (it reads the database).
    async fn refresh_counts_blocking(&self) {
        let s = self.inner.store.clone();
        self.set_counts(self.blocking(move || s.pending_counts()).await);
    }

    fn set_counts(&self, counts: Result<(u64, u64)>) {
        if let Ok((pending, quarantined)) = counts {
            self.update_status(|st| {
                st.pending = pending;
                st.quarantined = quarantined;
            });
        }
    }

    /// The host says whether the network is reachable. Going online syncs.
    pub fn set_online(&self, online: bool) {
        self.inner.online.store(online, Ordering::SeqCst);
        self.update_status(|s| {
            s.online = online;
            if !online {
                s.phase = SyncPhase::Offline;
            } else if s.phase == SyncPhase::Offline {
                s.phase = SyncPhase::Idle;
            }
        });
        self.tell(Input::Network(online));
    }

    /// Passes an input to the background machine, if it runs.
    fn tell(&self, input: Input) {
        if let Some(tx) = &*self.inner.inputs.lock() {
            let _ = tx.send(input);
        }
    }

    /// What background sync will do next, and how many decisions it has made:
    /// for tests and diagnostics (`Idle` means no timer and no polling).
    pub fn schedule(&self) -> watch::Receiver<(u64, Action)> {
        self.inner.schedule.subscribe()
    }

    /// The host says what network the device is on. A kind other than the last
    /// known one (wifi to cellular, also through a spell of no network) starts
    /// the adaptive sizes over from their start; a reported round trip raises
    /// their time target to [`policy::RTTS_PER_PAGE`] round trips, and none
    /// keeps the one reported before on the same link; leaving a metered network syncs
    /// what [`SyncConfig::metered_priority`] deferred. Reachability stays
    /// [`Self::set_online`]'s.
    pub fn set_network(&self, hints: NetworkHints) {
        let (before, known) = {
            let mut n = self.inner.network.lock();
            let before = std::mem::replace(&mut n.0, hints);
            let known = n.1;
            if hints.kind != NetworkKind::Unknown {
                n.1 = hints.kind;
            }
            (before, known)
        };
        // Against the last known kind: wifi, then no network, then cellular
        // is another link.
        let other = NetworkHints {
            kind: known,
            ..before
        }
        .other_link(&hints);
        for sizer in [&self.inner.page_sizer, &self.inner.push_sizer] {
            if let Some(sizer) = &mut *sizer.lock() {
                if other {
                    sizer.restart();
                }
                // No round trip: the one reported on this link still holds.
                if other || hints.rtt_ms.is_some() {
                    sizer.set_rtt(hints.rtt_ms);
                }
            }
        }
        if before.metered && !hints.metered && self.inner.config.metered_priority.is_some() {
            self.tell(Input::Network(self.is_online()));
        }
    }

    /// What the host last said of the network.
    pub fn network(&self) -> NetworkHints {
        self.inner.network.lock().0
    }

    /// The host says whether the app is in the foreground. Background: no
    /// automatic sync (explicit [`Self::sync`] calls still run).
    pub fn set_foreground(&self, foreground: bool) {
        self.inner.foreground.store(foreground, Ordering::SeqCst);
        self.tell(Input::Foreground(foreground));
    }

    fn is_online(&self) -> bool {
        self.inner.online.load(Ordering::SeqCst)
    }

    /// Pull, publish, then push. Joins a sync that is already running. A
    /// successful one lets background sync run again after the server refused
    /// the credentials.
    pub async fn sync(&self) -> Result<SyncReport> {
        let result = self.sync_shared().await;
        if result.is_ok() {
            self.tell(Input::SyncFinished(Finished::Explicit));
        }
        result
    }

    async fn sync_shared(&self) -> Result<SyncReport> {
        let fut = {
            let mut slot = self.inner.running.lock();
            match slot.as_ref().and_then(WeakShared::upgrade) {
                Some(f) if f.peek().is_none() => f,
                _ => {
                    let this = self.clone();
                    let f: SharedSync = async move { this.run_sync().await }.boxed().shared();
                    *slot = f.downgrade();
                    f
                }
            }
        };
        self.until_closed(fut).await
    }

    async fn run_sync(&self) -> Result<SyncReport> {
        if !self.is_online() {
            return Err(Error::Offline("the host reported no network".into()));
        }
        self.update_status(|s| {
            s.auth_failed = false;
            s.last_error = None;
        });
        let result = async {
            let mut report = self.pull().await?;
            if self.inner.transport.repull_on_retry() {
                // What waited on a whole-push conflict is due again after this pull.
                let s = self.inner.store.clone();
                self.blocking(move || push::make_due(&s)).await?;
            }
            report.pushed = self.push_all().await?;
            // WatermelonDB-style backends fail a whole push on conflict: pull, push again.
            let mut rounds = 0;
            while report.pushed.retried > 0
                && self.inner.transport.repull_on_retry()
                && rounds < policy::MAX_REPULL_ROUNDS
            {
                rounds += 1;
                let s = self.inner.store.clone();
                self.blocking(move || push::make_due(&s)).await?;
                let again = self.pull().await?;
                report.absorb(&again);
                report.repairs.extend(again.repairs);
                report.pushed = self.push_all().await?;
            }
            Ok(report)
        }
        .await;
        let now = self.inner.store.clock().now_ms();
        match &result {
            Ok(_) => self.update_status(|s| {
                s.phase = SyncPhase::Idle;
                s.last_sync_completed_at = Some(now);
            }),
            Err(e) => {
                let offline = matches!(e, Error::Offline(_));
                let auth = matches!(e, Error::Unauthorized(_));
                let msg = e.to_string();
                self.update_status(|s| {
                    s.phase = if offline {
                        SyncPhase::Offline
                    } else {
                        SyncPhase::Error
                    };
                    s.last_error = Some(msg);
                    s.auth_failed = auth;
                });
            }
        }
        self.refresh_counts();
        result
    }

    /// Calls the server with a token; on a 401, refreshes once and retries.
    async fn authed<T>(
        &self,
        call: impl Fn(String) -> BoxFuture<'static, Result<T, TransportError>>,
    ) -> Result<T> {
        let token = self.inner.tokens.token(false).await?;
        match call(token).await {
            Err(TransportError::Unauthorized(_)) => {
                let token = self.inner.tokens.token(true).await?;
                Ok(call(token).await?)
            }
            other => Ok(other?),
        }
    }

    /// One pull to the end (what it staged is published), with what `want`
    /// asks for.
    pub(super) async fn pull_to_end(&self, want: &Want) -> Result<Pulled> {
        // A change of the subscriptions during a pull drops what it staged; it
        // starts over with the new set (a few times at most: the app is changing
        // them faster than a pull completes).
        for _ in 0..PULL_RESTARTS {
            if let Some(pulled) = self.pull_once(want).await? {
                return Ok(pulled);
            }
            tracing::info!("the sync subscriptions changed during the pull; it starts over");
        }
        Err(Error::Internal(format!(
            "the sync subscriptions changed during each of {PULL_RESTARTS} pulls in a row"
        )))
    }

    /// One pull; `None` when the subscriptions changed meanwhile.
    async fn pull_once(&self, want: &Want) -> Result<Option<Pulled>> {
        let store = self.inner.store.clone();
        let subs = {
            let s = store.clone();
            self.blocking(move || s.pull_subscriptions()).await?
        };
        let generation = subs.generation;
        let levels = self.levels(subs.subscriptions.as_deref());
        let priorities = levels
            .iter()
            .any(|(_, explicit)| explicit.is_some())
            .then(|| {
                levels
                    .iter()
                    .filter_map(|(c, explicit)| Some((c.clone(), (*explicit)?)))
                    .collect()
            });
        let start = {
            let s = store.clone();
            self.blocking(move || s.pull_start()).await?
        };
        let mut cursor = start.cursor.clone();
        // A repair must get this device's own writes too: they are part of
        // what it replaces the collection with.
        let client_id =
            (want.restart.is_none() && !start.repairing).then(|| store.client_id().to_string());
        let from = start.cursor.clone();
        self.update_status(|s| {
            s.phase = SyncPhase::Pulling;
            s.pages_done = 0;
            s.records_done = 0;
            s.bytes_done = 0;
            s.server_total = None;
            s.records_expected = None;
            s.completed_priority = None;
        });
        let from_scratch = start.cursor.is_none();
        let mut report = SyncReport::default();
        let mut checksums;
        let mut staging_task: Option<
            tokio::task::JoinHandle<Result<Option<staging::StageReport>>>,
        > = None;
        let bytes_at_start = self.inner.transport.bytes_received();
        let clock = store.clock().clone();
        // On a metered network: the priorities past the cap are not asked for.
        let mut cap;
        loop {
            cap = self.metered_cap();
            let limit = match &*self.inner.page_sizer.lock() {
                Some(sizer) => sizer.size(),
                None => self.inner.config.page_size,
            };
            let asked_at = clock.now_ms();
            // A repair's restart goes with the first request only.
            let restart = want.restart.clone().filter(|_| report.pages == 0);
            let req = PullRequest {
                subscriptions: subs.subscriptions.clone(),
                cursor: cursor.clone(),
                client_id: client_id.clone(),
                limit: Some(limit),
                // Subscriptions say which collections themselves.
                collections: match subs.subscriptions {
                    Some(_) => None,
                    None => self.inner.config.collections.clone(),
                },
                priorities: priorities.clone(),
                want_totals: cursor.is_none() || report.pages == 0,
                want_checksums: want.checksums,
                restart: restart.clone(),
                max_priority: cap,
            };
            let (transport, req) = (self.inner.transport.clone(), Arc::new(req));
            let fetched = self
                .authed(move |t| {
                    let (transport, req) = (transport.clone(), req.clone());
                    async move { transport.pull(&t, &req).await }.boxed()
                })
                .await;
            measured(
                &self.inner.page_sizer,
                fetched.as_ref().map(|page| {
                    let rows: u64 = page.changes.values().map(|c| c.len() as u64).sum();
                    // Full when it held what was asked: a short checkpoint
                    // page says nothing about a larger one.
                    (rows, rows >= limit as u64)
                }),
                clock.now_ms() - asked_at,
            );
            // The previous page is staged while this one downloads; stage in order.
            if !Self::staged(&mut staging_task, &mut report).await? {
                return Ok(None);
            }
            let mut page = fetched?;
            // (A repair that brings nothing still replaces the collection.)
            if report.pages == 0 && want.restart.is_none() && start.nothing_new(&page) {
                // Nothing to stage or publish: no transaction at all.
                report.pages = 1;
                self.ended_at(cap, &levels, &mut report);
                return Ok(Some(Pulled {
                    report,
                    checksums: page.checksums,
                }));
            }
            if let Some(cap) = self.beyond_metered_cap(&page, &levels) {
                // Everything within the cap is synced (pages come in priority
                // order); this page is left for an unmetered network.
                self.ended_at(Some(cap), &levels, &mut report);
                return Ok(Some(Pulled {
                    report,
                    checksums: None,
                }));
            }
            let has_more = page.has_more;
            checksums = page.checksums.take();
            let repair = restart.map(|r| (r, from.clone()));
            cursor = Some(page.cursor.clone());
            report.pages += 1;
            let rows: u64 = page.changes.values().map(|c| c.len() as u64).sum();
            let total = page.totals.as_ref().map(|t| t.values().sum::<u64>());
            let bytes = self
                .inner
                .transport
                .bytes_received()
                .saturating_sub(bytes_at_start);
            self.update_status(|s| {
                s.pages_done += 1;
                s.records_done += rows;
                s.bytes_done = bytes;
                if total.is_some() {
                    s.server_total = total;
                    if from_scratch {
                        s.records_expected = total;
                    }
                }
            });
            let checkpoint = page.complete_priority.filter(|_| has_more);
            let s = store.clone();
            staging_task =
                Some(self.spawn_work(move || staging::stage_page(&s, page, generation, repair))?);
            if let Some(level) = checkpoint {
                // What is staged is complete up to `level`: the app gets it now.
                if !Self::staged(&mut staging_task, &mut report).await? {
                    return Ok(None);
                }
                let Some(published) = self.publish_staged(generation, level).await? else {
                    return Ok(None);
                };
                report.published.add(&published);
                self.update_status(|s| s.completed_priority = Some(level));
                if let Some(cap) = self.defers_after(level, &levels) {
                    self.ended_at(Some(cap), &levels, &mut report);
                    return Ok(Some(Pulled {
                        report,
                        checksums: None,
                    }));
                }
                self.update_status(|s| s.phase = SyncPhase::Pulling);
            }
            if !has_more {
                break;
            }
        }
        if !Self::staged(&mut staging_task, &mut report).await? {
            return Ok(None);
        }
        let level = cap.unwrap_or(ferry_protocol::LOWEST_PRIORITY);
        let Some(published) = self.publish_staged(generation, level).await? else {
            return Ok(None);
        };
        report.published.add(&published);
        self.ended_at(cap, &levels, &mut report);
        Ok(Some(Pulled { report, checksums }))
    }

    /// A pull ends having synced the priorities up to `cap` (all when
    /// `None`): they are complete, and the rest, if any, is deferred.
    fn ended_at(&self, cap: Option<u8>, levels: &[(String, Option<u8>)], report: &mut SyncReport) {
        let level = cap.unwrap_or(ferry_protocol::LOWEST_PRIORITY);
        let beyond = levels
            .iter()
            .any(|(_, p)| p.unwrap_or(ferry_protocol::LOWEST_PRIORITY) > level);
        if beyond {
            tracing::info!(
                priority = level,
                "metered network: the rest of the pull waits"
            );
            report.deferred_after = Some(level);
        }
        self.update_status(|s| s.completed_priority = s.completed_priority.max(Some(level)));
    }

    /// The cap of [`SyncConfig::metered_priority`], while the network is
    /// metered.
    fn metered_cap(&self) -> Option<u8> {
        let cap = self.inner.config.metered_priority?;
        self.inner.network.lock().0.metered.then_some(cap)
    }

    /// The cap, if a pull that just completed priority `level` stops there:
    /// the network is metered and no collection the pull covers has a
    /// priority after `level` and within the cap.
    fn defers_after(&self, level: u8, levels: &[(String, Option<u8>)]) -> Option<u8> {
        let cap = self.metered_cap()?;
        let more = levels
            .iter()
            .map(|(_, p)| p.unwrap_or(ferry_protocol::LOWEST_PRIORITY))
            .any(|p| p > level && p <= cap);
        (!more).then_some(cap)
    }

    /// The cap, if `page` (of one priority) holds a collection of a priority
    /// past it on a metered network: a pull that resumes after its checkpoint,
    /// or one with nothing of a higher priority to bring.
    fn beyond_metered_cap<F>(
        &self,
        page: &PullPage<F>,
        levels: &[(String, Option<u8>)],
    ) -> Option<u8> {
        let cap = self.metered_cap()?;
        let beyond = levels.iter().any(|(c, p)| {
            p.unwrap_or(ferry_protocol::LOWEST_PRIORITY) > cap && page.changes.contains_key(c)
        });
        beyond.then_some(cap)
    }

    /// The collections this pull covers, each with its priority if the schema
    /// sets one.
    fn levels(
        &self,
        subscriptions: Option<&[ferry_protocol::Subscription]>,
    ) -> Vec<(String, Option<u8>)> {
        let named = |c: &str| match (subscriptions, &self.inner.config.collections) {
            (Some(subs), _) => subs.iter().any(|s| s.collection == c),
            (None, Some(list)) => list.iter().any(|n| n == c),
            (None, None) => true,
        };
        self.inner
            .store
            .schema()
            .collections
            .iter()
            .filter(|c| !c.is_local_only() && named(&c.name))
            .map(|c| (c.name.clone(), c.priority))
            .collect()
    }

    /// Waits for the page being staged, if any; false when the subscriptions
    /// changed under it.
    async fn staged(
        task: &mut Option<tokio::task::JoinHandle<Result<Option<staging::StageReport>>>>,
        report: &mut SyncReport,
    ) -> Result<bool> {
        let Some(t) = task.take() else {
            return Ok(true);
        };
        let Some(r) = t.await.map_err(|e| Error::Internal(e.to_string()))?? else {
            return Ok(false);
        };
        report.pulled += r.rows;
        report.skipped += r.skipped;
        Ok(true)
    }

    /// Publishes what is staged, complete up to priority `level`.
    async fn publish_staged(&self, generation: u64, level: u8) -> Result<Option<PublishReport>> {
        self.update_status(|s| s.phase = SyncPhase::Publishing);
        let (s, resolver) = (self.inner.store.clone(), self.inner.resolver.lock().clone());
        let rule = self.inner.config.merge_rule;
        self.blocking(move || {
            with_merges(&s, &resolver, rule, staging::publish_candidates, |m| {
                staging::publish(&s, m, generation, level)
            })
        })
        .await
    }

    /// Pushes ready outbox entries in batches until none is left.
    ///
    /// Requests go one at a time, in outbox order, but the client's work overlaps
    /// the server's: while batch N is on the wire, the results of batch N-1 are
    /// applied and batch N+1 is prepared. A batch never holds a record that an
    /// earlier batch still has in flight, so the overlap changes no outcome.
    pub async fn push_all(&self) -> Result<PushReport> {
        self.update_status(|s| s.phase = SyncPhase::Pushing);
        let guard = PutBackOnDrop(Some(self.inner.store.clone()));
        let result = self.until_closed(self.push_rounds()).await;
        if !matches!(result, Err(Error::Closed)) {
            // Cancelled by a shutdown, the guard puts the batch back.
            guard.disarm();
        }
        self.refresh_counts();
        result
    }

    async fn push_rounds(&self) -> Result<PushReport> {
        let mut total = PushReport::default();
        let mut next = self.prepare_batch(None).await?;
        let mut answered: Option<Answered> = None;
        let mut rounds = 0;
        loop {
            let Some((batch, req)) = next.take() else {
                // Nothing was ready while the last batch was out; its answer may
                // have re-queued something (a resolved conflict): look again.
                let Some(a) = answered.take() else { break };
                total.add(&self.apply_answer(a, false).await?.0);
                self.refresh_counts_blocking().await;
                if rounds < self.inner.config.max_push_rounds {
                    next = self.prepare_batch(None).await?;
                }
                continue;
            };
            rounds += 1;
            let more = rounds < self.inner.config.max_push_rounds;
            let previous = answered.take();
            let local = async {
                let (report, following) = match previous {
                    Some(a) => {
                        let (report, following) = self.apply_answer(a, more).await?;
                        (Some(report), following)
                    }
                    None if more => (None, self.prepare_batch(None).await?),
                    None => (None, None),
                };
                // Progress for the status, while the batch is still on the wire.
                self.refresh_counts_blocking().await;
                Ok::<_, Error>((report, following))
            };
            let (sent, local) = tokio::join!(self.send_push(req), local);
            let batch = Arc::new(batch);
            let (report, following) = match local {
                Ok(v) => v,
                Err(e) => {
                    // Nothing is lost: what was sent goes back to the outbox under
                    // the same mutation ids (the server deduplicates them).
                    self.put_back(&batch, false).await;
                    return Err(e);
                }
            };
            if let Some(r) = report {
                total.add(&r);
            }
            match sent {
                Ok(resp) => answered = Some((batch, resp)),
                Err(e) => {
                    let backoff = !matches!(e, Error::Unauthorized(_));
                    self.put_back(&batch, backoff).await;
                    if let Some((unsent, _)) = following {
                        self.put_back(&Arc::new(unsent), false).await;
                    }
                    return Err(e);
                }
            }
            next = following;
        }
        Ok(total)
    }

    /// Mutations the next push batch holds at most.
    fn push_size(&self) -> usize {
        match &*self.inner.push_sizer.lock() {
            Some(sizer) => sizer.size() as usize,
            None => self.inner.config.push_batch,
        }
    }

    /// Picks the next batch and marks it in flight.
    async fn prepare_batch(
        &self,
        only: Option<HashSet<(String, String)>>,
    ) -> Result<Option<push::Prepared>> {
        let s = self.inner.store.clone();
        let max = self.push_size();
        self.blocking(move || push::prepare(&s, s.client_id(), max, only.as_ref()))
            .await
    }

    /// Applies the server's per-item answer to a batch and, when `prepare_next`,
    /// prepares the next batch in the same transaction.
    async fn apply_answer(
        &self,
        (batch, resp): Answered,
        prepare_next: bool,
    ) -> Result<(PushReport, Option<push::Prepared>)> {
        let (s, resolver) = (self.inner.store.clone(), self.inner.resolver.lock().clone());
        let (max, rule) = (self.push_size(), self.inner.config.merge_rule);
        let done = {
            let b = batch.clone();
            self.blocking(move || {
                let next = prepare_next.then(|| (s.client_id(), max));
                with_merges(
                    &s,
                    &resolver,
                    rule,
                    |s| push::conflict_candidates(s, &b, &resp),
                    |m| push::apply_results(&s, &b, &resp, m, next),
                )
            })
            .await
        };
        if done.is_err() {
            self.put_back(&batch, false).await;
        }
        done
    }

    /// Returns in-flight entries to the outbox, backing them off or due now.
    async fn put_back(&self, batch: &Arc<Vec<Sending>>, backoff: bool) {
        let (s, b) = (self.inner.store.clone(), batch.clone());
        if let Err(e) = self
            .blocking(move || push::fail_batch(&s, &b, backoff))
            .await
        {
            tracing::error!(error = %e, "could not return a push batch to the outbox; it is retried after a restart");
        }
    }

    /// Sends one batch (restricted to `only` these records if given).
    async fn push_batch(
        &self,
        only: Option<HashSet<(String, String)>>,
    ) -> Result<Option<PushReport>> {
        let Some((batch, req)) = self.prepare_batch(only).await? else {
            return Ok(None);
        };
        let batch = Arc::new(batch);
        let guard = PutBackOnDrop(Some(self.inner.store.clone()));
        let sent = self.send_push(req).await;
        guard.disarm();
        match sent {
            Ok(resp) => Ok(Some(self.apply_answer((batch, resp), false).await?.0)),
            Err(e) => {
                self.put_back(&batch, !matches!(e, Error::Unauthorized(_)))
                    .await;
                Err(e)
            }
        }
    }

    async fn send_push(&self, req: PushRequest<RawFields>) -> Result<PushResponse> {
        let sent = req.mutations.len();
        let full = sent >= self.push_size();
        let (transport, req) = (self.inner.transport.clone(), Arc::new(req));
        let clock = self.inner.store.clock().clone();
        let asked_at = clock.now_ms();
        let resp = self
            .authed(move |t| {
                let (transport, req) = (transport.clone(), req.clone());
                async move { transport.push(&t, &req).await }.boxed()
            })
            .await;
        measured(
            &self.inner.push_sizer,
            resp.as_ref().map(|_| (sent as u64, full)),
            clock.now_ms() - asked_at,
        );
        let resp = resp?;
        // The server applied it and answered; nothing of the answer is applied here.
        crate::crash::point("push_answered");
        if resp.results.len() != sent {
            tracing::warn!(
                sent,
                got = resp.results.len(),
                "push answer has a different number of results"
            );
        }
        Ok(resp)
    }

    /// Read-through: the records of `collection` that match `query` (the
    /// filter language of [`crate::store::Query`], as JSON), read on the server,
    /// for rows this device does not hold (past a retention horizon, say). The
    /// query is checked against the local schema first, and may not name the
    /// local bookkeeping columns. A row with local changes not yet pushed shows
    /// its local state. With `cache`, the rows are also stored as synced rows
    /// (see [`Store::take_fetched`]); the horizon does not move.
    ///
    /// Offline (the host said so, or the server cannot be reached) it fails with
    /// [`Error::Offline`], so the app can say "not available offline".
    pub async fn fetch_remote(
        &self,
        collection: &str,
        query: serde_json::Value,
        cache: bool,
    ) -> Result<Vec<Record>> {
        let c = self.inner.store.collection(collection)?;
        let parsed = crate::store::Query::from_value(&query)?;
        crate::store::query::compile(c, &parsed)?;
        let local_only = ["_status", "_created_at", "_updated_at"];
        let named = parsed
            .filter
            .iter()
            .flat_map(|f| f.conditions())
            .map(|(column, _, _)| column)
            .chain(parsed.sort.iter().map(|s| s.column.as_str()));
        if let Some(column) = named.into_iter().find(|n| local_only.contains(n)) {
            return Err(Error::InvalidQuery(format!(
                "`{column}` is local bookkeeping: a remote query cannot name it"
            )));
        }
        if !self.is_online() {
            return Err(Error::Offline(
                "not available offline: the device is offline".into(),
            ));
        }
        let req = Arc::new(ferry_protocol::FetchRequest {
            collection: collection.to_string(),
            query,
        });
        let transport = self.inner.transport.clone();
        let resp = self
            .authed(move |token| {
                let (transport, req) = (transport.clone(), req.clone());
                Box::pin(async move { transport.fetch(&token, &req).await })
            })
            .await?;
        let (store, collection) = (self.inner.store.clone(), collection.to_string());
        self.blocking(move || store.take_fetched(&collection, resp.records, cache))
            .await
    }

    /// Writes in the chosen mode; see [`WriteMode`].
    pub async fn write(
        &self,
        mut ops: Vec<WriteOp>,
        mode: WriteMode,
    ) -> Result<Vec<Option<Record>>> {
        let targets: Vec<(String, String)> = ops.iter_mut().map(WriteOp::target).collect();
        match mode {
            WriteMode::OfflineFirst => self.write_local(ops).await,
            WriteMode::Optimistic if !self.is_online() => self.write_local(ops).await,
            WriteMode::Optimistic => self.write_optimistic(ops, &targets).await,
            WriteMode::Online(fallback) => self.write_online(ops, &targets, fallback).await,
        }
    }

    async fn write_local(&self, ops: Vec<WriteOp>) -> Result<Vec<Option<Record>>> {
        let s = self.inner.store.clone();
        let out = self.blocking(move || s.write(ops)).await?;
        self.refresh_counts();
        Ok(out)
    }

    async fn write_optimistic(
        &self,
        ops: Vec<WriteOp>,
        targets: &[(String, String)],
    ) -> Result<Vec<Option<Record>>> {
        let out = self.write_local(ops).await?;
        let keys: HashSet<(String, String)> = targets.iter().cloned().collect();
        let report = match self.push_batch(Some(keys)).await {
            // Unreachable or refused: it stays queued, as an offline-first write.
            Err(e) => {
                tracing::info!(error = %e, "optimistic push failed; the write stays queued");
                return Ok(out);
            }
            Ok(r) => r.unwrap_or_default(),
        };
        self.refresh_counts();
        if report.rejected > 0 {
            let q = self.inner.store.quarantine()?;
            let reason = q
                .last()
                .and_then(|e| e.last_error.clone())
                .unwrap_or_default();
            return Err(Error::Rejected {
                code: reason.split(':').next().unwrap_or("rejected").to_string(),
                message: format!("the write was rolled back: {reason}"),
            });
        }
        // Re-read: a conflict may have merged server columns in.
        let s = self.inner.store.clone();
        let targets = targets.to_vec();
        self.blocking(move || {
            targets
                .iter()
                .map(|(c, id)| s.get(c, id))
                .collect::<Result<Vec<_>>>()
        })
        .await
    }

    async fn write_online(
        &self,
        ops: Vec<WriteOp>,
        targets: &[(String, String)],
        fallback: OfflineBehavior,
    ) -> Result<Vec<Option<Record>>> {
        if !self.is_online() {
            return match fallback {
                OfflineBehavior::Queue => self.write_local(ops).await,
                OfflineBehavior::Fail => Err(Error::Offline("the host reported no network".into())),
            };
        }
        // Validate, and learn the mutations, without keeping anything.
        let (s, sim_ops, keys) = (self.inner.store.clone(), ops.clone(), targets.to_vec());
        let simulated: Option<Vec<OutboxEntry>> = self
            .blocking(move || {
                s.simulate(|w| {
                    let keyset: HashSet<_> = keys.iter().cloned().collect();
                    let before: i64 = w.count_entries(&keyset)?;
                    if before > 0 {
                        return Ok(None);
                    }
                    for op in sim_ops {
                        w.apply(op)?;
                    }
                    let all = w.outbox()?;
                    Ok(Some(
                        all.into_iter()
                            .filter(|e| {
                                keyset.contains(&(e.collection.clone(), e.record_id.clone()))
                            })
                            .collect(),
                    ))
                })
            })
            .await?;
        // A record with unsynced changes must keep its outbox order: push it all.
        let Some(entries) = simulated else {
            return self.write_optimistic(ops, targets).await;
        };
        if entries.is_empty() {
            return self.write_local(ops).await; // local-only collections, or no-op updates
        }
        let req = PushRequest {
            client_id: self.inner.store.client_id().to_string(),
            mutations: entries
                .iter()
                .map(|e| {
                    let mut m = e.to_mutation()?;
                    if m.mutation_id.is_empty() {
                        // An unsent create has no id until it is sent: this is its send.
                        m.mutation_id = uuid::Uuid::now_v7().to_string();
                    }
                    Ok(m)
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let sent: Vec<Sent> = req
            .mutations
            .iter()
            .map(|m| Sent {
                mutation_id: m.mutation_id.clone(),
                collection: m.collection.clone(),
                record_id: m.record_id.clone(),
            })
            .collect();
        let resp = match self.send_push(req).await {
            Ok(r) => r,
            Err(e) if out_of_reach(&e) => {
                return match fallback {
                    OfflineBehavior::Queue => self.write_local(ops).await,
                    OfflineBehavior::Fail => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let OnlineAnswer { versions, failure } = online_answer(&sent, &resp);
        // Store what the server confirmed, as synced: it never enters the outbox.
        let (confirmed, unconfirmed): (Vec<_>, Vec<_>) = ops
            .into_iter()
            .zip(targets)
            .partition(|(_, t)| versions.contains_key(*t));
        let s = self.inner.store.clone();
        let confirmed: Vec<WriteOp> = confirmed.into_iter().map(|(op, _)| op).collect();
        let out = self
            .blocking(move || confirm(&s, confirmed, &versions))
            .await?;
        match failure {
            // "Retry later" is the server being unavailable for these writes.
            Some(Error::Offline(_)) if fallback == OfflineBehavior::Queue => {
                let mut queued = self
                    .write_local(unconfirmed.into_iter().map(|(op, _)| op).collect())
                    .await?;
                let mut all = out;
                all.append(&mut queued);
                Ok(all)
            }
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Starts background sync on the current tokio runtime: the driver of the
    /// background [`Machine`]. It feeds the machine local writes, the host's
    /// network and foreground reports, timers (on the store's [`crate::Clock`])
    /// and sync results, and carries out what it decides; it decides nothing
    /// itself. Idle means no timers and no polling.
    pub fn start(&self) {
        if self.inner.closed.is_cancelled() {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let writes = tx.clone();
        let sub = self
            .inner
            .store
            .add_change_listener(Arc::new(move |e: &ChangeEvent| {
                if e.source == ChangeSource::Local {
                    let _ = writes.send(Input::LocalWrite);
                }
            }));
        *self.inner._local_writes.lock() = Some(sub);
        *self.inner.inputs.lock() = Some(tx);
        let clock = self.inner.store.clock().clone();
        let debounce = self.inner.config.push_debounce.as_millis() as i64;
        let seed = self.inner.config.seed.unwrap_or_else(|| fastrand::u64(..));
        let mut machine = Machine::new(debounce, seed);
        // The host's last reports: held, asking for nothing yet.
        machine.hold(
            self.is_online(),
            self.inner.foreground.load(Ordering::SeqCst),
        );
        let schedule = self.inner.schedule.clone();
        let weak = Arc::downgrade(&self.inner);
        let handle = tokio::spawn(async move {
            let mut action = Action::Idle;
            let mut steps = 0u64;
            loop {
                let input = match action {
                    Action::Sync => {
                        let Some(inner) = weak.upgrade() else { return };
                        let client = SyncClient { inner };
                        let finished = match client.sync_shared().await {
                            Ok(_) => Finished::Ok {
                                next_retry_at: client.next_retry_at(),
                            },
                            Err(e) => {
                                tracing::info!(error = %e, "background sync failed");
                                Finished::Failed {
                                    auth: matches!(e, Error::Unauthorized(_)),
                                }
                            }
                        };
                        Input::SyncFinished(finished)
                    }
                    Action::WakeAt(at) => tokio::select! {
                        input = rx.recv() => match input {
                            Some(input) => input,
                            None => return,
                        },
                        _ = clock.sleep_until(at) => Input::TimerFired,
                    },
                    Action::Idle => match rx.recv().await {
                        Some(input) => input,
                        None => return,
                    },
                };
                action = machine.step(clock.now_ms(), input);
                steps += 1;
                schedule.send_replace((steps, action));
            }
        });
        if let Some(old) = self.inner.scheduler.lock().replace(handle) {
            old.abort();
        }
    }

    /// Shuts the client down, the step before closing its store (a logout
    /// deletes the database next): stops background sync, cancels a sync or
    /// push running now (it ends with [`Error::Closed`], at a point where
    /// nothing is half-written: a staged page or a publish is one transaction),
    /// and returns once none of the client's database work is in flight. Later
    /// syncs and pushes fail with `Closed`; local reads and writes through the
    /// store are not affected.
    pub async fn shutdown(&self) {
        self.inner.closed.cancel();
        // Waits for a task being handed over now; later ones are refused.
        drop(self.inner.work_gate.write());
        let scheduler = self.inner.scheduler.lock().take();
        self.stop();
        if let Some(h) = scheduler {
            h.abort();
            let _ = h.await;
        }
        self.inner.work.close();
        self.inner.work.wait().await;
    }

    /// Stops background sync.
    pub fn stop(&self) {
        if let Some(h) = self.inner.scheduler.lock().take() {
            h.abort();
        }
        self.inner._local_writes.lock().take();
        self.inner.inputs.lock().take();
    }

    /// When an entry waiting for retry becomes due, if any (on the store's clock).
    fn next_retry_at(&self) -> Option<i64> {
        self.inner.store.next_attempt_at().ok().flatten()
    }
}

/// Applies server-confirmed writes locally as synced, without outbox entries.
fn confirm(
    store: &Store,
    ops: Vec<WriteOp>,
    versions: &HashMap<(String, String), u64>,
) -> Result<Vec<Option<Record>>> {
    if ops.is_empty() {
        return Ok(vec![]);
    }
    store.write_tx(ChangeSource::Local, |w| {
        let mut out = Vec::new();
        for mut op in ops {
            let key = op.target();
            if w.count_entries(&HashSet::from([key.clone()]))? > 0 {
                // Edited locally while the write was on its way: queue normally
                // behind that edit; its stale base version makes the server
                // answer a conflict, which resolves as any other.
                out.push(w.apply(op)?);
                continue;
            }
            let rec = w.apply(op)?;
            let c = w.schema().collection(&key.0)?;
            w.remove_all_entries(&key.0, &key.1)?;
            w.remove_shadow(&key.0, &key.1)?;
            match rec {
                Some(mut r) => {
                    r.status = RecordStatus::Synced;
                    r.changed.clear();
                    r.version = versions.get(&key).copied();
                    w.replace_row(c, &r)?;
                    w.events().upsert(&c.name, &r.id, r.to_json());
                    out.push(Some(r));
                }
                None => {
                    w.delete_row(c, &key.1)?;
                    out.push(None);
                }
            }
        }
        Ok(out)
    })
}
