//! [`FerryDatabase`]: the local store, exported.
//!
//! Records cross as JSON: one string per batch in and out, never one call per
//! row. Rows look like `{"id":..,<columns>..,"_status":"pending"|"synced",
//! "_version":n|null}`. Queries are the core's JSON query (`crate::store::query`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::error::FerryError;
use super::listeners::{self, ChangeListener, ListenerHandle, QueryListener};
use super::ops;
use crate::schema::Schema;
use crate::store::{Query, Store};

type Result<T> = std::result::Result<T, FerryError>;

/// A local Ferry database (one SQLite file).
#[derive(uniffi::Object)]
pub struct FerryDatabase {
    /// The store until `close` (or a `logout`), then `None`: the host may hold
    /// this object long after, and it must not keep the file open.
    store: RwLock<Option<Store>>,
    client_id: String,
    schema_json: String,
    path: String,
}

/// A count and whether it is complete (see `FerryDatabase.count_result`).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CountResult {
    pub local: u64,
    /// The server's total, for a count of the whole collection.
    pub server_total: Option<u64>,
    pub complete: bool,
}

/// Counts of the local database.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct StoreStatus {
    pub schema_version: u32,
    pub client_id: String,
    /// Live records per collection.
    pub records: HashMap<String, u64>,
    /// Outbox entries waiting to be pushed.
    pub pending: u64,
    pub quarantined: u64,
}

/// What exists on the server beyond what this device holds, for one
/// collection: the server's total, and the horizon retention moved.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Anchor {
    pub collection: String,
    /// `None` until a pull reports it.
    pub server_total: Option<u64>,
    pub local_count: u64,
    pub updated_at: Option<i64>,
    /// Rows whose retention column is at or below it may be missing locally;
    /// `None`: nothing was pruned.
    pub horizon: Option<f64>,
    pub pruned: u64,
}

/// A sync subscription: the records of `collection`, in `scope` when it is
/// set, that match `filter_json` (a query's `where`, as JSON) when it is set.
/// With `ttl_ms`, it expires that long after it was last subscribed.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncSubscription {
    pub name: String,
    pub collection: String,
    pub scope: Option<String>,
    pub filter_json: Option<String>,
    pub ttl_ms: Option<u64>,
}

/// A live sync subscription, as stored.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ActiveSyncSubscription {
    pub subscription: SyncSubscription,
    /// When it expires (ms since the epoch); `None`: never.
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

#[uniffi::export]
impl FerryDatabase {
    /// Opens (creating or migrating) the database at `path` with a JSON schema.
    #[uniffi::constructor]
    pub fn open(path: String, schema_json: String) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::from(Store::open(
            path,
            Schema::from_json(&schema_json)?,
        )?)))
    }

    /// As `open`, for the app installation `installation_id`, an id the host
    /// keeps outside every backup: a database restored from a backup or copied
    /// from another device (last opened by another installation) takes a new
    /// client id, so that it still receives the first device's writes.
    #[uniffi::constructor]
    pub fn open_for_installation(
        path: String,
        schema_json: String,
        installation_id: String,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::from(Store::open_for_installation(
            path,
            Schema::from_json(&schema_json)?,
            &installation_id,
        )?)))
    }

    /// Opens an existing database with the schema stored in it.
    #[uniffi::constructor]
    pub fn open_existing(path: String) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::from(Store::open_existing(path)?)))
    }

    pub fn client_id(&self) -> String {
        self.client_id.clone()
    }

    /// The schema in use, as JSON.
    pub fn schema_json(&self) -> String {
        self.schema_json.clone()
    }

    /// A mixed batch (see `ops`): one transaction, one event. Returns the written
    /// rows as a JSON array (`null` for deletes).
    pub fn write(&self, ops_json: String) -> Result<String> {
        Ok(ops::written(self.store()?.write(ops::batch(&ops_json)?)?))
    }

    /// Creates records (a JSON array of objects, or one object); returns the rows.
    pub fn create(&self, collection: String, records_json: String) -> Result<String> {
        Ok(ops::written(
            self.store()?
                .write(ops::creates(&collection, &records_json)?)?,
        ))
    }

    /// Updates records; each object carries its `id` and the fields to change.
    pub fn update(&self, collection: String, records_json: String) -> Result<String> {
        Ok(ops::written(
            self.store()?
                .write(ops::updates(&collection, &records_json)?)?,
        ))
    }

    /// Creates or updates records by `id`; returns the rows.
    pub fn put(&self, collection: String, records_json: String) -> Result<String> {
        Ok(ops::written(
            self.store()?
                .write(ops::puts(&collection, &records_json)?)?,
        ))
    }

    /// Deletes records by id, in one transaction.
    pub fn delete(&self, collection: String, ids: Vec<String>) -> Result<()> {
        self.store()?
            .write(ops::deletes(&collection, ids))
            .map(drop)
            .map_err(Into::into)
    }

    /// The row with `id` as JSON, or null if absent or deleted.
    pub fn get(&self, collection: String, id: String) -> Result<Option<String>> {
        Ok(self
            .store()?
            .get(&collection, &id)?
            .map(|r| super::to_json(&r.to_json())))
    }

    /// The rows with these ids that exist, in the order asked, as a JSON array.
    pub fn get_many(&self, collection: String, ids: Vec<String>) -> Result<String> {
        Ok(ops::rows(&self.store()?.get_many(&collection, &ids)?))
    }

    /// Rows matching a JSON query, as a JSON array.
    pub fn query(&self, collection: String, query_json: String) -> Result<String> {
        Ok(ops::rows(
            &self
                .store()?
                .query(&collection, &Query::from_json(&query_json)?)?,
        ))
    }

    /// As `query`, saying whether the result is complete: `{"rows":[..],
    /// "complete":bool}`. Not complete: rows beyond the collection's horizon
    /// (pruned by retention) may match and are not here.
    pub fn query_result(&self, collection: String, query_json: String) -> Result<String> {
        let r = self
            .store()?
            .query_result(&collection, &Query::from_json(&query_json)?)?;
        let rows: Vec<serde_json::Value> = r.records.iter().map(crate::Record::to_json).collect();
        Ok(super::to_json(
            &serde_json::json!({"rows": rows, "complete": r.complete}),
        ))
    }

    /// As `count`, saying whether it is complete, with the server's total when
    /// the count is of the whole collection ("local n of server total m").
    pub fn count_result(&self, collection: String, query_json: String) -> Result<CountResult> {
        let r = self
            .store()?
            .count_result(&collection, &Query::from_json(&query_json)?)?;
        Ok(CountResult {
            local: r.local,
            server_total: r.server_total,
            complete: r.complete,
        })
    }

    /// Prunes every collection by its retention policy now (a sync does it in
    /// each publish); returns the rows pruned per collection.
    pub fn run_retention(&self) -> Result<HashMap<String, u64>> {
        Ok(self.store()?.run_retention()?.pruned.into_iter().collect())
    }

    /// Adds a sync subscription, or replaces the one of its name (renewing its
    /// TTL). From the first one on, the device syncs only what its
    /// subscriptions cover: rows this uncovers are evicted now (those with
    /// pending changes are kept until their push is answered, and listed as
    /// `kept` in the event), and the next sync backfills only what it adds.
    pub fn subscribe(&self, subscription: SyncSubscription) -> Result<ActiveSyncSubscription> {
        let filter = subscription
            .filter_json
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| {
                crate::Error::InvalidInput(format!("subscription: the filter is not JSON: {e}"))
            })?;
        let active = self.store()?.subscribe(crate::Subscription {
            name: subscription.name,
            collection: subscription.collection,
            scope: subscription.scope,
            filter,
            ttl_ms: subscription.ttl_ms,
        })?;
        Ok(active.into())
    }

    /// Removes the sync subscription `name`, evicting what only it covered;
    /// returns whether it existed.
    pub fn unsubscribe(&self, name: String) -> Result<bool> {
        Ok(self.store()?.unsubscribe(&name)?)
    }

    /// Removes every sync subscription: the device syncs every collection in
    /// full again (the next sync backfills what they left out).
    pub fn clear_subscriptions(&self) -> Result<()> {
        Ok(self.store()?.clear_subscriptions()?)
    }

    /// The live sync subscriptions by name; `None` while the device syncs
    /// every collection in full.
    pub fn subscriptions(&self) -> Result<Option<Vec<ActiveSyncSubscription>>> {
        Ok(self
            .store()?
            .subscriptions()?
            .map(|subs| subs.into_iter().map(Into::into).collect()))
    }

    /// When each priority (0 first, to 3) was last published complete (ms
    /// since the epoch): at its own checkpoint during a pull, or at the end of
    /// one. A priority never synced is absent, so an app can open once the
    /// priorities it needs are here, before the bulk has arrived.
    pub fn priorities_synced(&self) -> Result<HashMap<u8, i64>> {
        Ok(self.store()?.priorities_synced()?.into_iter().collect())
    }

    /// How many rows match a JSON query (ignoring its limit and offset).
    pub fn count(&self, collection: String, query_json: String) -> Result<u64> {
        Ok(self
            .store()?
            .count(&collection, &Query::from_json(&query_json)?)?)
    }

    /// Every outbox entry in push order, as a JSON array.
    pub fn outbox(&self) -> Result<String> {
        Ok(super::to_json(&self.store()?.outbox()?))
    }

    /// Quarantined mutations (permanently rejected), as a JSON array.
    pub fn quarantine(&self) -> Result<String> {
        Ok(super::to_json(&self.store()?.quarantine()?))
    }

    /// Forgets a quarantined mutation.
    pub fn discard_quarantined(&self, mutation_id: String) -> Result<()> {
        Ok(self.store()?.discard_quarantined(&mutation_id)?)
    }

    /// Applies a quarantined mutation again as a new local write; returns the row.
    pub fn retry_quarantined(&self, mutation_id: String) -> Result<Option<String>> {
        Ok(self
            .store()?
            .retry_quarantined(&mutation_id)?
            .map(|r| super::to_json(&r.to_json())))
    }

    pub fn anchors(&self) -> Result<Vec<Anchor>> {
        Ok(self
            .store()?
            .anchors()?
            .into_iter()
            .map(Anchor::from)
            .collect())
    }

    pub fn status(&self) -> Result<StoreStatus> {
        Ok(self.store()?.status()?.into())
    }

    /// Registers a listener for every committed change (one call per burst of
    /// commits, a JSON array of events, delivered on the core's event thread).
    pub fn add_change_listener(&self, listener: Arc<dyn ChangeListener>) -> Arc<ListenerHandle> {
        let Ok(store) = self.store() else {
            return ListenerHandle::inactive();
        };
        ListenerHandle::from_core(store.add_change_listener(Arc::new(listeners::Change(listener))))
    }

    /// Observes a JSON query: the listener gets the rows now, then again after
    /// each burst of commits that touch `collection`.
    pub fn observe(
        &self,
        collection: String,
        query_json: String,
        listener: Arc<dyn QueryListener>,
    ) -> Result<Arc<ListenerHandle>> {
        let sub = self.store()?.observe(
            &collection,
            Query::from_json(&query_json)?,
            Arc::new(listeners::Query(listener)),
        )?;
        Ok(ListenerHandle::from_core(sub))
    }

    /// Completes once every event committed before this call was delivered.
    /// Async, so that a host thread that listeners call back into (the JS thread)
    /// is never blocked waiting for them.
    pub async fn flush_events(&self) {
        let Ok(store) = self.store() else {
            return;
        };
        let (tx, rx) = futures::channel::oneshot::channel();
        store.when_events_delivered(move || {
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

/// Logout in one call: shuts `client` down (a running sync or push is
/// cancelled, and fails with `Closed`), closes `db` (every later call on it
/// fails with `Closed`, even while the host still holds it), waits for the
/// database work still running to let go of the file, and deletes it with
/// its WAL and staging files. Fails with `InvalidInput`, deleting nothing,
/// while another handle of the same file stays open (a second
/// `FerryDatabase` opened on it, say). Calling it again deletes what is left.
#[uniffi::export(async_runtime = "tokio")]
pub async fn logout(
    client: Option<Arc<super::sync::FerrySyncClient>>,
    db: Arc<FerryDatabase>,
) -> Result<()> {
    if let Some(c) = client {
        c.shutdown().await?;
    }
    let taken = db.store.write().take();
    let path = db.path.clone();
    super::on_runtime(async move {
        if let Some(store) = taken {
            let closed = store.when_closed();
            drop(store);
            // A call on the database made just before (on another thread)
            // may hold it a moment longer; a handle still open after that is
            // another one's, which the delete below reports.
            let _ = tokio::time::timeout(LOGOUT_WAIT, closed).await;
        }
        Store::delete_database(&path)
    })
    .await
}

/// How long a logout gives calls still running on the database.
const LOGOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Deletes a closed database file (and its WAL files): the last step of a logout,
/// after stopping the sync client and releasing every handle of the database.
/// `InvalidInput` while the file is still open in this process.
#[uniffi::export]
pub fn delete_database(path: String) -> Result<()> {
    Ok(Store::delete_database(path)?)
}

impl From<Store> for FerryDatabase {
    fn from(store: Store) -> Self {
        FerryDatabase {
            client_id: store.client_id().to_string(),
            schema_json: store.schema().to_json(),
            path: store.path().display().to_string(),
            store: RwLock::new(Some(store)),
        }
    }
}

impl FerryDatabase {
    /// The store, unless closed (`Closed`).
    pub(crate) fn store(&self) -> crate::Result<Store> {
        self.store.read().clone().ok_or(crate::Error::Closed)
    }
}

impl From<crate::store::StoreStatus> for StoreStatus {
    fn from(s: crate::store::StoreStatus) -> Self {
        StoreStatus {
            schema_version: s.schema_version,
            client_id: s.client_id,
            records: s.records.into_iter().collect(),
            pending: s.pending,
            quarantined: s.quarantined,
        }
    }
}

impl From<crate::store::Anchor> for Anchor {
    fn from(a: crate::store::Anchor) -> Self {
        Anchor {
            collection: a.collection,
            server_total: a.server_total,
            local_count: a.local_count,
            updated_at: a.updated_at,
            horizon: a.horizon.as_ref().and_then(serde_json::Value::as_f64),
            pruned: a.pruned,
        }
    }
}

impl From<crate::ActiveSubscription> for ActiveSyncSubscription {
    fn from(a: crate::ActiveSubscription) -> Self {
        let s = a.subscription;
        ActiveSyncSubscription {
            subscription: SyncSubscription {
                name: s.name,
                collection: s.collection,
                scope: s.scope,
                filter_json: s.filter.as_ref().map(serde_json::Value::to_string),
                ttl_ms: s.ttl_ms,
            },
            expires_at: a.expires_at,
            created_at: a.created_at,
        }
    }
}
