//! Wire types of the Ferry sync protocol (version 1).
//!
//! These types are the contract between the core (client) and any backend; the
//! prose version is `docs/protocol.md`. Nothing here does I/O. Field names are the
//! JSON names on the wire; adding an optional field is a compatible change, renaming
//! or removing one needs a new protocol version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod limits;
pub mod object;
pub mod query;

/// A JSON value's type, as named in error messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value::*;
    match v {
        Null => "null",
        Bool(_) => "boolean",
        Number(n) if n.is_i64() || n.is_u64() => "integer",
        Number(_) => "number",
        String(_) => "string",
        Array(_) => "array",
        Object(_) => "object",
    }
}

pub use limits::{
    ClientIdError, DEFAULT_MAX_PAGE_ROWS, DEFAULT_MAX_PUSH_MUTATIONS, DEFAULT_PAGE_ROWS,
    DEFAULT_PUSH_MUTATIONS, MAX_CLIENT_ID_BYTES, MAX_RECORD_ID_BYTES, RECORD_ID_FORBIDDEN_CHARS,
    RecordIdError, validate_client_id, validate_record_id,
};

/// The protocol version this crate speaks. Sent as the `Ferry-Protocol` header.
pub const PROTOCOL_VERSION: u32 = 1;
/// Header carrying [`PROTOCOL_VERSION`].
pub const PROTOCOL_HEADER: &str = "ferry-protocol";

/// Path of the pull endpoint (POST, body [`PullRequest`], answer [`PullPage`]).
pub const PULL_PATH: &str = "/v1/pull";
/// Path of the push endpoint (POST, body [`PushRequest`], answer [`PushResponse`]).
pub const PUSH_PATH: &str = "/v1/push";

/// A record's fields as JSON: column name to value. The record id, version and
/// bookkeeping are never inside it.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// A record's fields as the JSON text of an object, sent as is (see [`PullPage`]).
pub type RawFields = Box<serde_json::value::RawValue>;

/// Ask for the next page of changes after `cursor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Opaque cursor from the previous page; `None` for a first sync.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Stable id of the client installation; used to skip echoes of its own writes.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Upper bound on rows in the page; the server clamps it to its own maximum.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Selective sync: only these collections. `None` means every synced collection.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Ask for per-collection totals (anchors) in the page.
    #[serde(default)]
    pub want_totals: bool,
    /// Sync subscriptions: what this client syncs, as a union of these. `None`
    /// means every record of the pulled collections. When present it names the
    /// pulled collections itself, and `collections` must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<Subscription>>,
    /// Priorities per collection, 0 (first) to [`LOWEST_PRIORITY`] (the default
    /// for a collection left out): the pull sends the changes of a higher
    /// priority first, and says when they are complete (`complete_priority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priorities: Option<BTreeMap<String, u8>>,
    /// Ask for the [`Checksum`] of each collection this pull syncs whole on its
    /// last page (`checksums`), for the client to check what it holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_checksums: bool,
    /// Only the changes of this priority and the higher ones (0 first): the
    /// streams of lower priorities are not read and keep their positions, so
    /// the page with `has_more == false` ends what was asked, not everything
    /// (a metered network). `None`: every priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_priority: Option<u8>,
    /// A repair: the streams of these collections start over from the beginning,
    /// as in a first sync, while the others go on from `cursor`. The pull then
    /// sends every row of them the caller can see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Vec<String>>,
}

/// The lowest priority, and every collection's unless the pull says otherwise.
pub const LOWEST_PRIORITY: u8 = 3;

/// One sync subscription: the records of `collection`, in `scope` when it is
/// set (a scope the caller does not hold gives nothing), that match `filter`
/// (the query language's `where`) when it is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub collection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<serde_json::Value>,
}

/// One page of a pull. The client must stage pages and publish them only once a
/// page with `has_more == false` has arrived; `cursor` is where the next page starts.
///
/// `F` is how a record's fields are held: parsed [`Fields`] (the default, what a
/// client decodes), or [`RawFields`] on a server that stores each record's fields
/// as JSON text and sends them without parsing. Both give the same JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullPage<F = Fields> {
    /// Cursor after this page. Opaque to clients; commit-ordered on the server.
    pub cursor: String,
    /// More changes exist after `cursor` right now.
    pub has_more: bool,
    /// Changes per collection name.
    #[serde(default)]
    pub changes: BTreeMap<String, CollectionChanges<F>>,
    /// Per-collection totals of rows in the caller's scopes (anchors), when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<BTreeMap<String, u64>>,
    /// A checkpoint of a pull with `priorities`: after this page, everything of
    /// this priority and the higher ones is complete and consistent, at this
    /// page's cursor, while more (of lower priorities) follows (`has_more`). A
    /// client may publish what it staged here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_priority: Option<u8>,
    /// Only on the last page (`has_more == false`) of a pull that asked for
    /// them (`want_checksums`), for the collections it syncs whole (every row
    /// the caller can see, no filter): the count and digest of those rows as of
    /// `cursor`. A collection the server cannot vouch for is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums: Option<BTreeMap<String, Checksum>>,
}

/// What a collection holds in one caller's view, to check a copy against: how
/// many live rows, and the XOR of each row's [`record_digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checksum {
    pub count: u64,
    /// 16 lowercase hex digits (a JSON number could not carry 64 bits).
    pub digest: String,
}

impl Checksum {
    pub fn new(count: u64, digest: u64) -> Checksum {
        Checksum {
            count,
            digest: format!("{digest:016x}"),
        }
    }
}

/// One row's part of a [`Checksum`] digest: the first 8 bytes, big-endian, of
/// SHA-256 over the id's UTF-8 bytes, a zero byte and the version as 8
/// big-endian bytes. XOR-ed over the rows, so that a server keeps it up to
/// date per write and a row's order does not matter.
pub fn record_digest(id: &str, version: u64) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(id.as_bytes());
    h.update([0u8]);
    h.update(version.to_be_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// Changes of one collection within a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionChanges<F = Fields> {
    /// Rows created or updated, with their server version.
    #[serde(default = "Vec::new")]
    pub upserts: Vec<ServerRecord<F>>,
    /// Ids of rows deleted by a user (tombstones).
    #[serde(default)]
    pub deletes: Vec<String>,
    /// Ids of rows that left the caller's scope (archived, access revoked). Not deletes:
    /// the row may still exist on the server.
    #[serde(default)]
    pub evictions: Vec<String>,
}

// By hand: derived, they would require `F: Default`.
impl<F> Default for PullPage<F> {
    fn default() -> Self {
        PullPage {
            complete_priority: None,
            checksums: None,
            cursor: String::new(),
            has_more: false,
            changes: BTreeMap::new(),
            totals: None,
        }
    }
}

impl<F> Default for CollectionChanges<F> {
    fn default() -> Self {
        CollectionChanges {
            upserts: Vec::new(),
            deletes: Vec::new(),
            evictions: Vec::new(),
        }
    }
}

impl<F> CollectionChanges<F> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty() && self.evictions.is_empty()
    }
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len() + self.evictions.len()
    }
}

/// A row as the server holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord<F = Fields> {
    pub id: String,
    /// Monotonic per-record version, starting at 1 on create.
    pub version: u64,
    pub fields: F,
}

/// Path of the read-through endpoint.
pub const FETCH_PATH: &str = "/v1/fetch";

/// Body of `POST /v1/fetch`: the records of one collection that match a query,
/// read on the server (past what a device holds locally).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub collection: String,
    /// A query of the filter language ([`query::Query`]): `where`, `sort`,
    /// `limit` (capped by the server's page size) and `offset`.
    #[serde(default = "empty_query")]
    pub query: serde_json::Value,
}

fn empty_query() -> serde_json::Value {
    serde_json::Value::Object(Fields::new())
}

/// Answer of `POST /v1/fetch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchResponse<F = Fields> {
    /// The matching records, in the query's order (then by id).
    pub records: Vec<ServerRecord<F>>,
    /// More records match past `offset + records.len()`.
    pub has_more: bool,
}

/// The operation of a mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "create" => Some(Op::Create),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One client change, in outbox order.
///
/// `F` holds the fields: parsed [`Fields`] (the default, what a server decodes),
/// or [`RawFields`] on a client that sends the JSON its outbox froze without
/// parsing it again. Both give the same JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mutation<F = Fields> {
    /// Client-generated id; pushing the same id twice applies it once.
    pub mutation_id: String,
    pub collection: String,
    pub record_id: String,
    pub op: Op,
    /// For create: all fields. For update: the changed fields only. For delete: empty.
    #[serde(default)]
    pub fields: F,
    /// The server version the client based the change on; `None` for a create.
    #[serde(default)]
    pub base_version: Option<u64>,
}

/// A batch of mutations, applied in order, each on its own merits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "F: Deserialize<'de> + Default"))]
pub struct PushRequest<F = Fields> {
    pub client_id: String,
    /// Each a JSON object (an array-form mutation is refused).
    #[serde(deserialize_with = "object::json_objects")]
    pub mutations: Vec<Mutation<F>>,
}

/// What happened to one mutation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MutationOutcome {
    /// Applied; the record now has `version` (for a delete, the tombstone's version).
    Applied { version: u64 },
    /// The base version did not match. `server_record` is the current row, or `None`
    /// when the row is deleted on the server.
    Conflict {
        server_record: Option<ServerRecord>,
        #[serde(default)]
        deleted: bool,
    },
    /// Permanently refused; retrying the same mutation gives the same answer.
    Rejected { code: RejectCode, message: String },
    /// Not applied now; try again after `retry_after_ms`.
    Retry { retry_after_ms: u64 },
}

/// Why a mutation was rejected. Unknown codes from newer servers decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The collection does not exist or is not synced.
    UnknownCollection,
    /// A field is unknown, of the wrong type, null where not nullable, or too large.
    InvalidRecord,
    /// The record belongs to a scope the caller cannot write.
    Forbidden,
    /// Create of an id that already exists (and was not created by this mutation).
    AlreadyExists,
    /// Update or delete of a record that never existed.
    NotFound,
    #[serde(other)]
    Other,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownCollection => "unknown_collection",
            RejectCode::InvalidRecord => "invalid_record",
            RejectCode::Forbidden => "forbidden",
            RejectCode::AlreadyExists => "already_exists",
            RejectCode::NotFound => "not_found",
            RejectCode::Other => "other",
        }
    }
}

/// Per-mutation result, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutationResult {
    pub mutation_id: String,
    #[serde(flatten)]
    pub outcome: MutationOutcome,
}

/// Answer to a push: one result per mutation, plus the write checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    pub results: Vec<MutationResult>,
    /// A cursor at or after every change this push applied. A pull whose cursor has
    /// reached it has seen all of this push's effects.
    pub write_checkpoint: String,
}

/// The JSON body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `unauthorized`, `malformed_json`, `payload_too_large`.
    pub code: String,
    pub message: String,
}

/// Error codes of [`ErrorDetail::code`].
pub mod error_code {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const UNKNOWN_COLLECTION: &str = "unknown_collection";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// A request body that is not declared as JSON (`415`).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";
    pub const INVALID_CURSOR: &str = "invalid_cursor";
    pub const INTERNAL: &str = "internal";
    pub const UNAVAILABLE: &str = "unavailable";
}

/// WatermelonDB's sync protocol, as its docs describe a backend.
pub mod watermelon {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// Raw record: `id` plus columns, as WatermelonDB sends and expects them.
    pub type RawRecord = serde_json::Map<String, serde_json::Value>;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
    pub struct TableChanges {
        #[serde(default)]
        pub created: Vec<RawRecord>,
        #[serde(default)]
        pub updated: Vec<RawRecord>,
        #[serde(default)]
        pub deleted: Vec<String>,
    }

    pub type Changes = BTreeMap<String, TableChanges>;

    /// Answer to `GET /watermelon/sync`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PullResponse {
        pub changes: Changes,
        /// Milliseconds; the client sends it back as `last_pulled_at`.
        pub timestamp: i64,
    }

    /// Answer to `POST /watermelon/sync` when some records were rejected.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct PushResponse {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub experimental_rejected_ids: Option<BTreeMap<String, Vec<String>>>,
    }

    pub const SYNC_PATH: &str = "/watermelon/sync";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_result_is_flat_with_a_status_tag() {
        let r = MutationResult {
            mutation_id: "m1".into(),
            outcome: MutationOutcome::Applied { version: 3 },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"mutation_id":"m1","status":"applied","version":3})
        );
        let back: MutationResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_reject_code_decodes_as_other() {
        let v =
            serde_json::json!({"mutation_id":"m","status":"rejected","code":"quota","message":"x"});
        let r: MutationResult = serde_json::from_value(v).unwrap();
        assert_eq!(
            r.outcome,
            MutationOutcome::Rejected {
                code: RejectCode::Other,
                message: "x".into()
            }
        );
    }

    #[test]
    fn pull_request_defaults_allow_an_empty_body() {
        let r: PullRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r.cursor, None);
        assert!(!r.want_totals);
        assert!(!r.want_checksums);
        assert_eq!(r.restart, None);
        assert_eq!(r.max_priority, None);
    }

    #[test]
    fn a_record_digest_is_the_documented_sha256_prefix() {
        // Computed apart from this code (Python's hashlib) from the definition.
        assert_eq!(
            Checksum::new(1, record_digest("a", 1)).digest,
            "8bd829d2b6fc0405"
        );
        assert_eq!(
            Checksum::new(1, record_digest("task-ü", 42)).digest,
            "7bd7b814989d36f8"
        );
        assert_eq!(Checksum::new(0, 0).digest, "0000000000000000");
    }
}
