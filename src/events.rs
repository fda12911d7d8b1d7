//! Change events and their delivery.
//!
//! Every committed transaction yields exactly one [`ChangeEvent`]: per collection,
//! the upserted rows, the deleted ids and the evicted ids (left this device's view
//! but still on the server), plus where the change came from. Events
//! are queued while the writer still holds its lock (so their order is commit
//! order) but are delivered on a dedicated dispatcher thread, never while a store
//! lock is held. A slow listener delays only later deliveries, never a write; a
//! panicking listener is caught and logged. Observed queries re-run on that thread,
//! once per burst of events however many touched their collection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use indexmap::IndexMap;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// A local write by the app.
    Local,
    /// Published from the server by a pull, or confirmed by a push.
    Remote,
    /// An optimistic or rejected change undone.
    Rollback,
    /// Local retention pruned rows (they stay on the server).
    Retention,
    /// The app changed its sync subscriptions: rows they no longer cover were
    /// evicted (or kept, with pending changes).
    Subscriptions,
    /// A repair: a collection whose checksum did not match the server's was
    /// replaced by what the server holds (a `reload`); rows the server does
    /// not hold in this device's view were evicted.
    Repair,
}

/// The changes of one collection within an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionChange {
    pub collection: String,
    /// Rows as apps see them ([`crate::Record::to_json`]).
    pub upserted: Vec<Value>,
    /// Gone everywhere: deleted here, or on the server.
    pub deleted: Vec<String>,
    /// Gone from this device only: the record left what this device syncs (a sync
    /// rule, a scope change) but still exists on the server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<String>,
    /// Gone from this device only, by its own retention policy: the record is
    /// still on the server and in this device's view, beyond the horizon.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// Still here although it left what this device syncs (a server eviction,
    /// or a narrowed subscription): it has pending or quarantined local changes,
    /// kept with them. Its push goes ahead; once answered, the record is evicted
    /// if it is still outside what the device syncs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// Too many rows changed to list (more than [`MAX_EVENT_ROWS`]): `upserted`,
    /// `deleted`, `evicted` and `pruned` are empty and listeners should re-read the collection.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reload: bool,
}

/// Most rows one event lists per collection; past it the event says `reload`, so a
/// 1M-row initial sync never builds a 1M-row event in memory.
pub const MAX_EVENT_ROWS: usize = 10_000;

/// One committed transaction's changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeEvent {
    pub source: ChangeSource,
    pub changes: Vec<CollectionChange>,
}

impl ChangeEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("event serializes")
    }

    pub fn collection(&self, name: &str) -> Option<&CollectionChange> {
        self.changes.iter().find(|c| c.collection == name)
    }
}

/// Collects the changes of one transaction, keeping the last state of each record.
#[derive(Default)]
pub(crate) struct EventBuilder {
    collections: BTreeMap<String, PendingChanges>,
}

/// Rows by id in first-touch order; one hash per touch (a 100k-row write touches
/// 10,001 before it turns into a reload), with a fast, randomly seeded hasher.
type RowsById = IndexMap<String, Slot, foldhash::fast::RandomState>;

/// The last state of one record within a transaction.
enum Slot {
    Upserted(Value),
    Deleted,
    Evicted,
    Pruned,
    Kept,
}

#[derive(Default)]
struct PendingChanges {
    rows: RowsById,
    reload: bool,
}

impl EventBuilder {
    pub fn upsert(&mut self, collection: &str, id: &str, row: Value) {
        self.put(collection, id, Slot::Upserted(row));
    }

    /// Like [`Self::upsert`], building the row only if the event will list it.
    pub fn upsert_with(&mut self, collection: &str, id: &str, row: impl FnOnce() -> Value) {
        if !self.is_reload(collection) {
            self.put(collection, id, Slot::Upserted(row()));
        }
    }

    pub fn delete(&mut self, collection: &str, id: &str) {
        self.put(collection, id, Slot::Deleted);
    }

    pub fn evict(&mut self, collection: &str, id: &str) {
        self.put(collection, id, Slot::Evicted);
    }

    pub fn prune(&mut self, collection: &str, id: &str) {
        self.put(collection, id, Slot::Pruned);
    }

    pub fn keep(&mut self, collection: &str, id: &str) {
        self.put(collection, id, Slot::Kept);
    }

    fn put(&mut self, collection: &str, id: &str, row: Slot) {
        let c = self.collections.entry(collection.to_string()).or_default();
        if c.reload {
            return;
        }
        match c.rows.get_mut(id) {
            Some(slot) => *slot = row,
            None => {
                c.rows.insert(id.to_string(), row);
                if c.rows.len() > MAX_EVENT_ROWS {
                    self.reload(collection);
                }
            }
        }
    }

    /// Marks `collection` as changed in bulk: the event lists no rows for it.
    pub fn reload(&mut self, collection: &str) {
        let c = self.collections.entry(collection.to_string()).or_default();
        c.reload = true;
        c.rows = RowsById::default();
    }

    /// Whether a collection already overflowed into a reload.
    pub fn is_reload(&self, collection: &str) -> bool {
        self.collections.get(collection).is_some_and(|c| c.reload)
    }

    pub fn is_empty(&self) -> bool {
        self.collections.is_empty()
    }

    pub fn build(self, source: ChangeSource) -> ChangeEvent {
        let changes = self
            .collections
            .into_iter()
            .map(|(collection, p)| {
                let mut change = CollectionChange {
                    collection,
                    upserted: Vec::new(),
                    deleted: Vec::new(),
                    evicted: Vec::new(),
                    pruned: Vec::new(),
                    kept: Vec::new(),
                    reload: p.reload,
                };
                for (id, row) in p.rows {
                    match row {
                        Slot::Upserted(row) => change.upserted.push(row),
                        Slot::Deleted => change.deleted.push(id),
                        Slot::Evicted => change.evicted.push(id),
                        Slot::Pruned => change.pruned.push(id),
                        Slot::Kept => change.kept.push(id),
                    }
                }
                change
            })
            .collect();
        ChangeEvent { source, changes }
    }
}

/// Receives every committed change event.
pub trait ChangeListener: Send + Sync {
    fn on_change(&self, event: &ChangeEvent);

    /// The events of one burst (commits made while the previous burst was being
    /// delivered), in commit order: one call per burst. By default one
    /// [`Self::on_change`] per event; a host adapter overrides it to cross the
    /// FFI once per burst.
    fn on_changes(&self, events: &[Arc<ChangeEvent>]) {
        for e in events {
            self.on_change(e)
        }
    }
}

/// Receives the new result of an observed query.
pub trait QueryListener: Send + Sync {
    fn on_result(&self, rows: &[Value]);
}

impl<F: Fn(&ChangeEvent) + Send + Sync> ChangeListener for F {
    fn on_change(&self, event: &ChangeEvent) {
        self(event)
    }
}

impl<F: Fn(&[Value]) + Send + Sync> QueryListener for F {
    fn on_result(&self, rows: &[Value]) {
        self(rows)
    }
}

/// Runs an observed query; provided by the store.
pub(crate) type QueryRunner = Arc<dyn Fn() -> Result<Vec<Value>> + Send + Sync>;

struct Observer {
    collection: String,
    run: QueryRunner,
    listener: Arc<dyn QueryListener>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    change: HashMap<u64, Arc<dyn ChangeListener>>,
    observers: HashMap<u64, Arc<Observer>>,
}

/// Work run on the dispatcher thread.
type Job = Box<dyn FnOnce() + Send>;

enum Msg {
    Event(Arc<ChangeEvent>),
    Observe(u64),
    /// Runs once everything queued before it has been delivered.
    Flush(Job),
    /// Runs on the dispatcher thread; of the jobs of one key queued in one burst
    /// only the last runs (a status listener sees the latest status, not each one).
    Latest(&'static str, Job),
}

/// Owns the dispatcher thread and the listener registry.
pub(crate) struct Dispatcher {
    tx: Mutex<Option<Sender<Msg>>>,
    registry: Arc<Mutex<Registry>>,
}

impl Dispatcher {
    pub fn start() -> Arc<Dispatcher> {
        let (tx, rx) = channel();
        let registry = Arc::new(Mutex::new(Registry::default()));
        let reg = registry.clone();
        std::thread::Builder::new()
            .name("ferry-events".into())
            .spawn(move || run(rx, reg))
            .expect("spawn event thread");
        Arc::new(Dispatcher {
            tx: Mutex::new(Some(tx)),
            registry,
        })
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = self.tx.lock().as_ref() {
            let _ = tx.send(msg);
        }
    }

    /// Queues an event; call while still holding the writer lock.
    pub fn emit(&self, event: ChangeEvent) {
        self.send(Msg::Event(Arc::new(event)));
    }

    pub fn add_change_listener(
        self: &Arc<Self>,
        listener: Arc<dyn ChangeListener>,
    ) -> ListenerHandle {
        let mut r = self.registry.lock();
        r.next_id += 1;
        let id = r.next_id;
        r.change.insert(id, listener);
        ListenerHandle::new(self, id)
    }

    pub fn observe(
        self: &Arc<Self>,
        collection: &str,
        run: QueryRunner,
        listener: Arc<dyn QueryListener>,
    ) -> ListenerHandle {
        let id = {
            let mut r = self.registry.lock();
            r.next_id += 1;
            let id = r.next_id;
            r.observers.insert(
                id,
                Arc::new(Observer {
                    collection: collection.to_string(),
                    run,
                    listener,
                }),
            );
            id
        };
        self.send(Msg::Observe(id));
        ListenerHandle::new(self, id)
    }

    fn remove(&self, id: u64) {
        let mut r = self.registry.lock();
        r.change.remove(&id);
        r.observers.remove(&id);
    }

    /// Blocks until every event queued before this call has been delivered.
    /// Never call it from a thread that a listener waits for (a host's UI thread
    /// under React Native): use [`Self::after_delivery`] there.
    pub fn flush(&self) {
        let (tx, rx) = channel();
        self.after_delivery(Box::new(move || {
            let _ = tx.send(());
        }));
        let _ = rx.recv();
    }

    /// Runs `done` on the dispatcher once every event queued before this call has
    /// been delivered; returns at once. (Runs it now if the dispatcher stopped.)
    pub fn after_delivery(&self, done: Job) {
        match self.tx.lock().as_ref() {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(Msg::Flush(done))) = tx.send(Msg::Flush(done))
                {
                    done()
                }
            }
            None => done(),
        }
    }

    /// Runs `job` on the dispatcher thread, in order with the events; a later job
    /// of the same `key` queued before this one ran replaces it.
    pub fn run_latest(&self, key: &'static str, job: Job) {
        self.send(Msg::Latest(key, job));
    }

    /// Stops the thread after it has delivered what is queued. It does not wait
    /// for the thread: a listener may be blocked on a host thread that is the
    /// one closing the store.
    pub fn shutdown(&self) {
        self.tx.lock().take();
    }
}

fn run(rx: Receiver<Msg>, registry: Arc<Mutex<Registry>>) {
    while let Ok(first) = rx.recv() {
        // Drain the burst: change listeners get it in one call, observed queries
        // re-run once for all of it, and each key's latest job runs once.
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let mut events = Vec::new();
        let mut fresh: Vec<u64> = Vec::new();
        let mut latest: IndexMap<&'static str, Job> = IndexMap::new();
        let mut flushes = Vec::new();
        for msg in batch {
            match msg {
                Msg::Event(ev) => events.push(ev),
                Msg::Observe(id) => fresh.push(id),
                Msg::Latest(key, job) => {
                    latest.shift_remove(key);
                    latest.insert(key, job);
                }
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !events.is_empty() {
            let listeners: Vec<_> = registry.lock().change.values().cloned().collect();
            for l in listeners {
                guarded("change listener", || l.on_changes(&events));
            }
        }
        for (_, job) in latest {
            guarded("dispatcher job", job);
        }
        let touched: HashSet<&str> = events
            .iter()
            .flat_map(|e| e.changes.iter().map(|c| c.collection.as_str()))
            .collect();
        let observers: Vec<(u64, Arc<Observer>)> = registry
            .lock()
            .observers
            .iter()
            .filter(|(id, o)| touched.contains(o.collection.as_str()) || fresh.contains(id))
            .map(|(id, o)| (*id, o.clone()))
            .collect();
        for (_, o) in observers {
            match (o.run)() {
                Ok(rows) => guarded("query listener", || o.listener.on_result(&rows)),
                Err(e) => {
                    tracing::warn!(collection = %o.collection, error = %e, "observed query failed")
                }
            }
        }
        for done in flushes {
            guarded("flush callback", done);
        }
    }
}

fn guarded(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("a {what} panicked; the event was still delivered to the others");
    }
}

/// Keeps a listener registered; dropping it (or [`ListenerHandle::cancel`]) unsubscribes.
pub struct ListenerHandle {
    dispatcher: std::sync::Weak<Dispatcher>,
    id: u64,
}

impl ListenerHandle {
    fn new(d: &Arc<Dispatcher>, id: u64) -> Self {
        ListenerHandle {
            dispatcher: Arc::downgrade(d),
            id,
        }
    }

    pub fn cancel(&self) {
        if let Some(d) = self.dispatcher.upgrade() {
            d.remove(self.id);
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
