//! The sync service: Ferry pull/push and WatermelonDB pull/push over any [`Storage`].
//!
//! It turns protocol requests into storage scans and write batches and storage
//! results back into pages, cursors and outcomes. HTTP handlers and in-process tests
//! both call it, so it must never depend on axum. It must never let a cursor or a
//! scan reach a scope the caller lacks, except to evict that scope's rows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::watermelon;
use ferry_protocol::{
    Checksum, CollectionChanges, Fields, LOWEST_PRIORITY, MutationOutcome, MutationResult, Op,
    PullPage, PullRequest, PushRequest, PushResponse, RawFields, RejectCode, ServerRecord,
    error_code,
};
use serde_json::Value;

use crate::auth::Caller;
use crate::config::ServerConfig;
use crate::cursor::{Cursor, CursorCodec, Position, StreamKey};
use crate::error::{ApiError, CONFLICT, ServerError};
use crate::logging::Escaped;
use crate::storage::{
    self, ChangeKind, ChangeRow, PlannedMutation, Precondition, ReadRequest, Scan, Storage,
    WriteBatch,
};
use crate::subscriptions::{self, Verdict};

/// Longest a pull waits for older transactions to finish (see [`SyncService::read_settled`]).
const SETTLE_BUDGET: Duration = Duration::from_millis(250);

/// Prefix of a write checkpoint: `wc1.<major>.<minor>`.
const CHECKPOINT_PREFIX: &str = "wc1.";

/// Pull, push and their WatermelonDB twins over one storage backend.
#[derive(Clone)]
pub struct SyncService {
    storage: Arc<dyn Storage>,
    config: Arc<ServerConfig>,
    codec: CursorCodec,
}

/// WatermelonDB's `migration` pull parameter.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct WatermelonMigration {
    #[serde(default)]
    pub from: Option<i64>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default, deserialize_with = "ferry_protocol::object::json_objects")]
    pub columns: Vec<WatermelonMigrationColumns>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct WatermelonMigrationColumns {
    pub table: String,
    #[serde(default)]
    pub columns: Vec<String>,
}

/// Statistics of one pull page or push, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub rows: u64,
}

impl SyncService {
    /// Opens storage from a database URL and builds the service.
    pub async fn open(
        database_url: &str,
        config: ServerConfig,
    ) -> Result<SyncService, ServerError> {
        config.validate()?;
        let storage = storage::open(database_url).await?;
        Self::new(storage, config).await
    }

    pub async fn new(
        storage: Arc<dyn Storage>,
        config: ServerConfig,
    ) -> Result<SyncService, ServerError> {
        let secret = storage.secret().await?;
        Ok(SyncService {
            storage,
            config: Arc::new(config),
            codec: CursorCodec::new(&secret),
        })
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Reads; when committed changes are withheld behind the watermark (an older
    /// transaction is still running on PostgreSQL), waits briefly for it so a pull
    /// right after a push sees that push. Never returns withheld changes.
    pub(crate) async fn read_settled(
        &self,
        req: ReadRequest,
    ) -> Result<storage::ReadResult, ServerError> {
        let mut delay = Duration::from_millis(2);
        let mut waited = Duration::ZERO;
        loop {
            let read = self.storage.read(req.clone()).await?;
            if !read.withheld || waited >= SETTLE_BUDGET {
                crate::metrics::watermark(read.withheld, read.lag_seconds);
                return Ok(read);
            }
            tokio::time::sleep(delay).await;
            waited += delay;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// One page of changes after `req.cursor` in the caller's scopes.
    /// Record fields go out as stored, never parsed into maps.
    pub async fn pull(
        &self,
        caller: &Caller,
        req: &PullRequest,
    ) -> Result<PullPage<RawFields>, ApiError> {
        if let Some(id) = &req.client_id {
            check_client_id(id)?;
        }
        let limits = &self.config.limits;
        let limit = req
            .limit
            .unwrap_or(limits.default_page_rows)
            .clamp(1, limits.max_page_rows) as usize;
        let mut plan = subscriptions::plan(&self.config, caller, req)?;
        let priorities = subscriptions::Priorities::of_request(&self.config, req)?;
        if let Some(max) = req.max_priority.filter(|m| *m > LOWEST_PRIORITY) {
            return Err(ApiError::bad_request(
                error_code::INVALID_REQUEST,
                format!("`max_priority` is 0 to {LOWEST_PRIORITY}, not {max}"),
            ));
        }
        let asked = |collection: &str| {
            req.max_priority
                .is_none_or(|max| priorities.of(collection) <= max)
        };
        let collections = plan.collections.clone();
        let mut cursor = match &req.cursor {
            Some(s) => self.codec.decode(&caller.user_id, s)?,
            None => Cursor::default(),
        };
        // Streams of scopes the caller lost start being evicted (once per scope
        // and collection, whatever their filters); regained ones stop.
        let lost: Vec<StreamKey> = cursor
            .streams
            .keys()
            .filter(|k| !caller.can_access(&k.scope))
            .cloned()
            .collect();
        for k in lost {
            cursor.streams.remove(&k);
            cursor.created.remove(&k);
            cursor.revoking.insert(k.unfiltered(), Position::ZERO);
        }
        cursor.revoking.retain(|k, _| !caller.can_access(&k.scope));
        if let Some(restart) = &req.restart {
            // A repair: these collections start over, as in a first sync.
            if let Some(c) = restart.iter().find(|c| !collections.contains(c)) {
                return Err(ApiError::bad_request(
                    error_code::INVALID_REQUEST,
                    format!("`restart` names {c:?}, which this pull does not sync"),
                ));
            }
            let restarted = |k: &StreamKey| restart.contains(&k.collection);
            cursor.streams.retain(|k, _| !restarted(k));
            cursor.created.retain(|k, _| !restarted(k));
            cursor.revoking.retain(|k, _| !restarted(k));
        }
        if plan.subscribed {
            // A stream no subscription names any more is forgotten: the client
            // evicts it locally, and subscribing again starts it afresh.
            let live: BTreeSet<&StreamKey> = plan.streams.iter().map(|s| &s.key).collect();
            cursor.streams.retain(|k, _| live.contains(k));
            cursor.created.retain(|k, _| live.contains(k));
        }
        // Priorities past `max_priority` wait: their streams are not read and
        // keep their positions in the cursor.
        plan.streams.retain(|s| asked(&s.key.collection));

        let mut scans: Vec<Scan> = plan
            .streams
            .iter()
            .map(|s| Scan {
                key: s.key.clone(),
                after: cursor
                    .streams
                    .get(&s.key)
                    .copied()
                    .unwrap_or(Position::ZERO),
                upto: None,
                limit: limit + 1,
            })
            .collect();
        for (key, after) in &cursor.revoking {
            if collections.contains(&key.collection) && asked(&key.collection) {
                scans.push(Scan {
                    key: key.clone(),
                    after: *after,
                    upto: None,
                    limit: limit + 1,
                });
            }
        }
        let live = plan.streams.len();
        let totals = (req.want_totals || req.want_checksums).then(|| {
            (
                caller.scopes.iter().cloned().collect::<Vec<_>>(),
                collections.clone(),
            )
        });
        let read = self
            .read_settled(ReadRequest {
                scans: scans.clone(),
                totals,
            })
            .await?;
        for s in plan.streams.iter().filter(|s| s.filter.is_some()) {
            cursor
                .created
                .entry(s.key.clone())
                .or_insert(read.watermark);
        }

        // Merge every stream in (priority, global position) order and take the
        // first `limit`, of one priority only: the page that takes the last
        // changes of a priority, with lower ones left, is its checkpoint.
        let priority: Vec<u8> = scans
            .iter()
            .map(|s| priorities.of(&s.key.collection))
            .collect();
        let mut merged: Vec<(u8, Position, usize, &ChangeRow)> = read
            .rows
            .iter()
            .enumerate()
            .flat_map(|(i, rows)| {
                let p = priority[i];
                rows.iter().map(move |r| (p, r.position, i, r))
            })
            .collect();
        merged.sort_by_key(|(prio, p, i, _)| (*prio, *p, *i));
        let top = merged.first().map(|m| m.0);
        let of_top = merged.iter().take_while(|m| Some(m.0) == top).count();
        let page_len = of_top.min(limit);
        let has_more = merged.len() > page_len;
        // Every stream of `top` returned less than `limit + 1` rows when all
        // of them fit: `top` is complete at this read.
        let complete_priority = top.filter(|_| has_more && of_top <= limit);
        let merged: Vec<(Position, usize, &ChangeRow)> = merged
            .into_iter()
            .take(page_len)
            .map(|(_, p, i, r)| (p, i, r))
            .collect();

        let mut taken = vec![0usize; scans.len()];
        let mut changes: BTreeMap<String, CollectionChanges<RawFields>> = BTreeMap::new();
        for (pos, i, row) in &merged {
            taken[*i] += 1;
            let key = &scans[*i].key;
            let page = changes.entry(key.collection.clone()).or_default();
            if *i >= live {
                cursor.revoking.insert(key.clone(), *pos);
                page.evictions.push(row.record_id.clone());
                continue;
            }
            cursor.streams.insert(key.clone(), *pos);
            let kind = match &plan.streams[*i].filter {
                None => row.kind,
                Some(_) => match subscriptions::verdict(&plan.streams, *i, &cursor, *pos, row)? {
                    Verdict::Skip => continue,
                    Verdict::Send(kind) => kind,
                },
            };
            let echo = kind != ChangeKind::Evict
                && req.client_id.is_some()
                && row.client_id == req.client_id;
            if echo {
                continue;
            }
            match (kind, &row.record) {
                (ChangeKind::Upsert, Some(rec)) => page.upserts.push(ServerRecord {
                    id: row.record_id.clone(),
                    version: rec.version,
                    fields: rec.fields.clone(),
                }),
                (ChangeKind::Upsert, None) => {
                    tracing::warn!(record = ?row.record_id, "change row without record; skipped")
                }
                (ChangeKind::Delete, _) => page.deletes.push(row.record_id.clone()),
                (ChangeKind::Evict, _) => page.evictions.push(row.record_id.clone()),
            }
        }
        for (i, scan) in scans.iter().enumerate().skip(live) {
            if read.rows[i].len() <= limit && taken[i] == read.rows[i].len() {
                cursor.revoking.remove(&scan.key);
            }
        }
        for page in changes.values_mut() {
            // A record that moved between two of the caller's scopes: keep the live entry.
            let live_ids: BTreeSet<&String> = page
                .upserts
                .iter()
                .map(|r| &r.id)
                .chain(page.deletes.iter())
                .collect();
            let evictions = std::mem::take(&mut page.evictions);
            page.evictions = evictions
                .into_iter()
                .filter(|id| !live_ids.contains(id))
                .collect();
        }
        changes.retain(|_, c| !c.is_empty());
        if !has_more {
            cursor.watermark = read.watermark;
        }
        // Only the last page: with it the client holds the view as of this
        // read. (A withheld change is in the totals already but not in a page.)
        let checksums = (req.want_checksums && !has_more && !read.withheld).then(|| {
            collections
                .iter()
                .filter(|c| plan.whole(caller, c))
                .filter_map(|c| {
                    let digest = (*read.digests.get(c)?)?;
                    Some((c.clone(), Checksum::new(read.totals[c], digest)))
                })
                .collect()
        });
        Ok(PullPage {
            checksums,
            complete_priority,
            cursor: self.codec.encode(&caller.user_id, &cursor),
            has_more,
            changes,
            totals: req.want_totals.then_some(read.totals),
        })
    }

    /// Applies a push: each mutation on its own merits, idempotent by mutation id.
    pub async fn push(&self, caller: &Caller, req: PushRequest) -> Result<PushResponse, ApiError> {
        // Checked before anything else: every change row of the push holds it.
        check_client_id(&req.client_id)?;
        let max = self.config.limits.max_push_mutations;
        if req.mutations.len() > max {
            return Err(ApiError::bad_request(
                error_code::INVALID_REQUEST,
                format!("a push carries at most {max} mutations"),
            ));
        }
        if let Some(m) = req
            .mutations
            .iter()
            .find(|m| m.mutation_id.is_empty() || m.mutation_id.len() > 128)
        {
            return Err(ApiError::bad_request(
                error_code::INVALID_REQUEST,
                format!("mutation id {:?} must be 1..=128 bytes", m.mutation_id),
            ));
        }
        let ids: Vec<String> = req
            .mutations
            .iter()
            .map(|m| m.mutation_id.clone())
            .collect();
        let mutations = req
            .mutations
            .into_iter()
            .map(|m| PlannedMutation {
                mutation_id: Some(m.mutation_id),
                collection: m.collection,
                record_id: m.record_id,
                op: m.op,
                fields: m.fields,
                precondition: m
                    .base_version
                    .map_or(Precondition::None, Precondition::BaseVersion),
                lenient: false,
            })
            .collect();
        let result = self
            .storage
            .write(WriteBatch {
                caller: caller.clone(),
                client_id: Some(req.client_id),
                config: self.config.clone(),
                mutations,
                abort_on_conflict: false,
            })
            .await?;
        let results = ids
            .into_iter()
            .zip(result.outcomes)
            .map(|(mutation_id, outcome)| MutationResult {
                mutation_id,
                outcome,
            })
            .collect();
        Ok(PushResponse {
            results,
            write_checkpoint: encode_checkpoint(result.checkpoint),
        })
    }

    /// WatermelonDB pull: every change since `last_pulled_at` (a position, not a time).
    pub async fn watermelon_pull(
        &self,
        caller: &Caller,
        last_pulled_at: Option<i64>,
        migration: Option<&WatermelonMigration>,
    ) -> Result<watermelon::PullResponse, ApiError> {
        let since = last_pulled_at.filter(|t| *t > 0);
        let mut full: BTreeSet<&str> = BTreeSet::new();
        if let Some(m) = migration {
            full.extend(m.tables.iter().map(String::as_str));
            full.extend(m.columns.iter().map(|c| c.table.as_str()));
        }
        let mut scans = Vec::new();
        for scope in &caller.scopes {
            for c in self.config.collections.keys() {
                let after = match since {
                    Some(t) if !full.contains(c.as_str()) => Position(t, -1),
                    _ => Position::ZERO,
                };
                scans.push(Scan {
                    key: StreamKey::new(scope, c),
                    after,
                    upto: None,
                    limit: usize::MAX,
                });
            }
        }
        let read = self
            .read_settled(ReadRequest {
                scans: scans.clone(),
                totals: None,
            })
            .await?;
        let mut changes: watermelon::Changes = BTreeMap::new();
        for (scan, rows) in scans.iter().zip(&read.rows) {
            let table = changes.entry(scan.key.collection.clone()).or_default();
            for row in rows {
                match (row.kind, &row.record) {
                    (ChangeKind::Upsert, Some(rec)) => {
                        let mut raw = watermelon::RawRecord::new();
                        raw.insert("id".into(), Value::String(row.record_id.clone()));
                        let fields: Fields = serde_json::from_str(rec.fields.get())
                            .map_err(|e| ServerError::Corrupt(e.to_string()))?;
                        raw.extend(fields);
                        match since {
                            Some(t) if rec.created_at < t => table.updated.push(raw),
                            _ => table.created.push(raw),
                        }
                    }
                    (ChangeKind::Upsert, None) => {}
                    (ChangeKind::Delete | ChangeKind::Evict, _) => {
                        table.deleted.push(row.record_id.clone())
                    }
                }
            }
        }
        for table in changes.values_mut() {
            let live: BTreeSet<String> = table
                .created
                .iter()
                .chain(&table.updated)
                .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
                .collect();
            table.deleted.retain(|id| !live.contains(id));
            table.deleted.sort();
            table.deleted.dedup();
        }
        // The next pull starts after the last change this caller can see, not
        // at the global watermark: nothing in the caller's scopes lies between
        // the two, and the watermark would show every user's write volume.
        let seen = read.rows.iter().flatten().map(|r| r.position.0 + 1).max();
        let next = seen.into_iter().chain(since).max().unwrap_or(0);
        Ok(watermelon::PullResponse {
            changes,
            timestamp: next,
        })
    }

    /// WatermelonDB push: all-or-nothing on conflict, per-record rejections reported
    /// in `experimentalRejectedIds`.
    pub async fn watermelon_push(
        &self,
        caller: &Caller,
        last_pulled_at: i64,
        changes: watermelon::Changes,
    ) -> Result<watermelon::PushResponse, ApiError> {
        let mut mutations = Vec::new();
        let mut tables = Vec::new();
        let plan = |table: &str, id: String, op: Op, fields: Fields| PlannedMutation {
            mutation_id: None,
            collection: table.to_string(),
            record_id: id,
            op,
            fields,
            precondition: Precondition::UnchangedSince(last_pulled_at),
            lenient: true,
        };
        for (table, t) in changes {
            if !self.config.collections.contains_key(&table) {
                return Err(ApiError::unknown_collection(&table));
            }
            for (op, raws) in [(Op::Create, t.created), (Op::Update, t.updated)] {
                for mut raw in raws {
                    let Some(Value::String(id)) = raw.remove("id") else {
                        return Err(ApiError::bad_request(
                            error_code::INVALID_REQUEST,
                            format!("a record in {table:?} has no string `id`"),
                        ));
                    };
                    raw.remove("_status");
                    raw.remove("_changed");
                    mutations.push(plan(&table, id, op, raw));
                    tables.push(table.clone());
                }
            }
            for id in t.deleted {
                mutations.push(plan(&table, id, Op::Delete, Fields::new()));
                tables.push(table.clone());
            }
        }
        let ids: Vec<String> = mutations.iter().map(|m| m.record_id.clone()).collect();
        let result = self
            .storage
            .write(WriteBatch {
                caller: caller.clone(),
                client_id: None,
                config: self.config.clone(),
                mutations,
                abort_on_conflict: true,
            })
            .await?;
        if result.aborted {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                CONFLICT,
                "a record changed on the server after last_pulled_at; pull, then push again",
            ));
        }
        let mut rejected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for ((table, id), outcome) in tables.into_iter().zip(ids).zip(result.outcomes) {
            if let MutationOutcome::Rejected { code, message } = outcome {
                // The id is the client's (the rejection may be for a control
                // character in it), and so may be parts of the message.
                tracing::info!(table = ?table, record = ?id, code = code.as_str(), message = %Escaped(&message), "watermelon record rejected");
                debug_assert!(code != RejectCode::UnknownCollection);
                rejected.entry(table).or_default().push(id);
            }
        }
        Ok(watermelon::PushResponse {
            experimental_rejected_ids: (!rejected.is_empty()).then_some(rejected),
        })
    }
}

/// A pull's or push's `client_id` must follow the protocol's rule
/// ([`ferry_protocol::validate_client_id`]); else `400 invalid_request`.
fn check_client_id(id: &str) -> Result<(), ApiError> {
    ferry_protocol::validate_client_id(id)
        .map_err(|e| ApiError::bad_request(error_code::INVALID_REQUEST, e.to_string()))
}

fn encode_checkpoint(p: Position) -> String {
    format!("{CHECKPOINT_PREFIX}{}.{}", p.0, p.1)
}
