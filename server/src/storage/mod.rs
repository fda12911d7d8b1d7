//! The storage trait and the types that cross it; backends live in [`sqlite`] and
//! [`postgres`].
//!
//! A backend stores records as documents, keeps one change-index row per (scope,
//! collection, record) carrying the latest change's position and kind, keeps
//! per-(scope, collection) totals, and remembers mutation outcomes for idempotency,
//! all updated in the transaction that writes the record. It never decides what a
//! mutation means: [`crate::engine::decide`] does, so both backends behave alike.
//! A read must serve every scan from one snapshot and never return a change that a
//! still-running transaction could precede in commit order.

pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_protocol::{Fields, MutationOutcome, Op, RawFields};

use crate::auth::Caller;
use crate::config::ServerConfig;
use crate::cursor::{Position, StreamKey};
use crate::error::ServerError;

/// What the latest change of a record in a scope was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The record is synced in this scope: send its current row.
    Upsert,
    /// The record was deleted by a user: send a tombstone.
    Delete,
    /// The record left this scope or stopped matching the sync rules: evict it.
    Evict,
}

impl ChangeKind {
    pub fn code(self) -> i16 {
        match self {
            ChangeKind::Upsert => 0,
            ChangeKind::Delete => 1,
            ChangeKind::Evict => 2,
        }
    }
    pub fn from_code(code: i64) -> Result<ChangeKind, ServerError> {
        match code {
            0 => Ok(ChangeKind::Upsert),
            1 => Ok(ChangeKind::Delete),
            2 => Ok(ChangeKind::Evict),
            other => Err(ServerError::Corrupt(format!("unknown change kind {other}"))),
        }
    }
}

/// One range scan of a change stream: changes with `after < position <= upto`,
/// in position order, at most `limit` of them.
#[derive(Debug, Clone)]
pub struct Scan {
    pub key: StreamKey,
    pub after: Position,
    pub upto: Option<Position>,
    pub limit: usize,
}

/// A change-index row joined with the current record (for upserts only).
#[derive(Debug, Clone)]
pub struct ChangeRow {
    pub position: Position,
    pub record_id: String,
    pub kind: ChangeKind,
    /// Client that wrote the change, for echo suppression.
    pub client_id: Option<String>,
    pub record: Option<RecordData>,
}

#[derive(Debug, Clone)]
pub struct RecordData {
    pub version: u64,
    /// Major position of the record's creation (WatermelonDB `created` vs `updated`).
    pub created_at: i64,
    /// The stored JSON object, unparsed: a pull sends it as it is.
    pub fields: RawFields,
}

#[derive(Debug, Clone, Default)]
pub struct ReadRequest {
    pub scans: Vec<Scan>,
    /// Sum of synced rows per collection over these scopes.
    pub totals: Option<(Vec<String>, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Rows per scan, in request order.
    pub rows: Vec<Vec<ChangeRow>>,
    /// Every change below this position is committed and visible in this snapshot.
    pub watermark: Position,
    pub totals: BTreeMap<String, u64>,
    /// The XOR of the row digests per collection over the same scopes, beside
    /// `totals`; `None` for a collection whose digest some scope does not know
    /// (a total kept before digests were).
    pub digests: BTreeMap<String, Option<u64>>,
    /// Some scan stopped short of changes that are committed but at or above the
    /// watermark (PostgreSQL only: an older transaction is still running).
    pub withheld: bool,
    /// How long the oldest running transaction that can hold the watermark
    /// back (one with a transaction id, in this database) has been running,
    /// in seconds; `None` when there is none (and on SQLite).
    pub lag_seconds: Option<f64>,
}

/// The stored state of a record, as a write sees it (locked).
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentRow {
    pub scope: String,
    pub version: u64,
    pub deleted: bool,
    pub fields: Fields,
    /// Major position of the last write.
    pub changed_at: i64,
    pub created_at: i64,
}

/// What a mutation requires of the stored row before it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No check (Ferry mutation without `base_version`).
    None,
    /// The stored version must equal this.
    BaseVersion(u64),
    /// WatermelonDB: the row must not have changed at or after this major position.
    UnchangedSince(i64),
}

/// A mutation ready for storage, from either the Ferry or the WatermelonDB endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedMutation {
    /// Idempotency key; `None` for WatermelonDB pushes.
    pub mutation_id: Option<String>,
    pub collection: String,
    pub record_id: String,
    pub op: Op,
    pub fields: Fields,
    pub precondition: Precondition,
    /// WatermelonDB semantics: create of an existing id updates it, update of a
    /// missing id creates it, delete of a missing id is ignored.
    pub lenient: bool,
}

/// One write's change of a (scope, collection) total: the rows it adds (or,
/// negative, removes), and the XOR of their [`ferry_protocol::record_digest`]s
/// (a row's old version leaves the digest as its new one enters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalDelta {
    pub scope: String,
    pub count: i64,
    pub digest: u64,
}

/// A batch's changes of the totals, per (scope, collection): counts summed,
/// digests XOR-ed. Each backend writes them once per batch, not once per row.
#[derive(Debug, Default)]
pub(crate) struct TotalDeltas(BTreeMap<(String, String), (i64, u64)>);

impl TotalDeltas {
    /// Adds one write's changes of `collection`'s totals.
    pub fn add(&mut self, collection: &str, totals: Vec<TotalDelta>) {
        for t in totals {
            let e = self.0.entry((t.scope, collection.to_string())).or_default();
            e.0 += t.count;
            e.1 ^= t.digest;
        }
    }

    /// The changes that change something, as (scope, collection, count delta,
    /// digest XOR as stored: the same 64 bits as an `i64`), in key order.
    pub fn changed(&self) -> impl Iterator<Item = (&str, &str, i64, i64)> {
        self.0
            .iter()
            .filter(|(_, (n, d))| *n != 0 || *d != 0)
            .map(|((s, c), (n, d))| (s.as_str(), c.as_str(), *n, *d as i64))
    }
}

/// A push as storage sees it.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    pub caller: Caller,
    pub client_id: Option<String>,
    pub config: Arc<ServerConfig>,
    pub mutations: Vec<PlannedMutation>,
    /// WatermelonDB: any conflict rolls the whole batch back.
    pub abort_on_conflict: bool,
}

#[derive(Debug, Clone)]
pub struct WriteResult {
    /// One outcome per mutation, in order (empty when aborted).
    pub outcomes: Vec<MutationOutcome>,
    /// A position at or after every change of this batch, once committed.
    pub checkpoint: Position,
    /// The batch hit a conflict with `abort_on_conflict` and nothing was written.
    pub aborted: bool,
}

/// A storage backend. Both implementations pass the same suite (server/tests/storage.rs).
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Runs every scan and the totals query in one consistent snapshot.
    async fn read(&self, request: ReadRequest) -> Result<ReadResult, ServerError>;
    /// Applies a batch in one transaction: each mutation with its change rows,
    /// totals and idempotency record, or nothing at all.
    async fn write(&self, batch: WriteBatch) -> Result<WriteResult, ServerError>;
    /// A random secret created with the database, used to sign cursors.
    async fn secret(&self) -> Result<Vec<u8>, ServerError>;
    /// Cheap liveness probe.
    async fn ping(&self) -> Result<(), ServerError>;
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
}

/// Opens the backend named by a database URL: `postgres://`/`postgresql://` →
/// PostgreSQL; `sqlite:PATH` or a plain path → SQLite file.
pub async fn open(url: &str) -> Result<Arc<dyn Storage>, ServerError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStorage::connect(url).await?))
    } else {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() {
            return Err(ServerError::DatabaseUrl("empty SQLite path".into()));
        }
        Ok(Arc::new(sqlite::SqliteStorage::open(path.as_ref()).await?))
    }
}

/// Fresh random bytes for a new database's cursor secret.
pub(crate) fn new_secret() -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    bytes
}

/// Decodes a stored mutation outcome.
pub(crate) fn decode_outcome(json: &str) -> Result<MutationOutcome, ServerError> {
    serde_json::from_str(json).map_err(|e| ServerError::Corrupt(format!("stored outcome: {e}")))
}

pub(crate) fn encode_outcome(o: &MutationOutcome) -> String {
    serde_json::to_string(o).expect("outcome serializes")
}

/// Stored record JSON, checked to be an object but not parsed into a map.
pub(crate) fn raw_fields(json: String) -> Result<RawFields, ServerError> {
    let raw = serde_json::value::RawValue::from_string(json)
        .map_err(|e| ServerError::Corrupt(e.to_string()))?;
    if !raw.get().starts_with('{') {
        return Err(ServerError::Corrupt(format!(
            "record data is not an object: {}",
            raw.get()
        )));
    }
    Ok(raw)
}

pub(crate) fn decode_fields(json: serde_json::Value) -> Result<Fields, ServerError> {
    match json {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(ServerError::Corrupt(format!(
            "record data is not an object: {other}"
        ))),
    }
}
