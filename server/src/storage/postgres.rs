//! PostgreSQL 15 backend, for scale: tokio-postgres through a deadpool pool.
//!
//! Sequence order is not commit order on PostgreSQL, so a change's position is
//! `(txid, seq)`: the writing transaction's id (`pg_current_xact_id()`) and a
//! sequence value. A read returns only changes with `txid <` the oldest transaction
//! still running in its own snapshot (`pg_snapshot_xmin`, ignoring transactions
//! of other databases of the cluster): every transaction below that is finished,
//! so nothing can later
//! commit *before* a position already handed out, and a cursor never skips a late
//! committer. Reads run in one REPEATABLE READ READ ONLY transaction so all scans
//! share that snapshot. This module must never hand out a position at or above the
//! watermark.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use ferry_protocol::MutationOutcome;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

use super::{
    ChangeRow, CurrentRow, ReadRequest, ReadResult, RecordData, Storage, TotalDeltas, WriteBatch,
    WriteResult, decode_fields, decode_outcome, encode_outcome, raw_fields,
};
use crate::cursor::Position;
use crate::engine::{Decision, decide};
use crate::error::ServerError;
use crate::storage::ChangeKind;

const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7400250301);
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    collection text NOT NULL, id text NOT NULL, scope text NOT NULL,
    version bigint NOT NULL, deleted boolean NOT NULL, data jsonb NOT NULL,
    changed_at bigint NOT NULL, created_at bigint NOT NULL,
    PRIMARY KEY (collection, id));
CREATE TABLE IF NOT EXISTS changes (
    scope text NOT NULL, collection text NOT NULL, record_id text NOT NULL,
    txid bigint NOT NULL, seq bigint NOT NULL, kind smallint NOT NULL, client_id text,
    PRIMARY KEY (scope, collection, record_id));
CREATE INDEX IF NOT EXISTS changes_stream ON changes (scope, collection, txid, seq);
CREATE SEQUENCE IF NOT EXISTS change_seq;
CREATE TABLE IF NOT EXISTS totals (
    scope text NOT NULL, collection text NOT NULL, count bigint NOT NULL,
    PRIMARY KEY (scope, collection));
-- Totals kept before digests were: their digest is unknown (NULL) and stays
-- so, so a pull sends no checksum it cannot vouch for.
ALTER TABLE totals ADD COLUMN IF NOT EXISTS digest bigint;
-- A write adds its changes of the totals here, one row per (scope,
-- collection), and never updates `totals` itself: concurrent writers to one
-- collection in one scope then take no common row lock (an update changes the
-- digest). Totals are read as `totals` plus these rows; the folder moves them
-- into `totals` (`PgStorage::fold_totals`).
CREATE TABLE IF NOT EXISTS totals_delta (
    id bigserial PRIMARY KEY, scope text NOT NULL, collection text NOT NULL,
    count bigint NOT NULL, digest bigint NOT NULL);
CREATE INDEX IF NOT EXISTS totals_delta_key ON totals_delta (scope, collection);
CREATE TABLE IF NOT EXISTS mutations (
    user_id text NOT NULL, mutation_id text NOT NULL, outcome text,
    PRIMARY KEY (user_id, mutation_id));
";

/// Attempts of a write batch that hit a serialization failure, deadlock or a
/// concurrent duplicate insert before the push answers 503.
const WRITE_ATTEMPTS: usize = 4;

pub struct PgStorage {
    pool: Pool,
    /// Folds `totals_delta` into `totals` every [`FOLD_EVERY`]; stopped on drop.
    folder: Option<tokio::task::JoinHandle<()>>,
}

/// How often the folder moves the totals' changes into `totals`.
const FOLD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Drop for PgStorage {
    fn drop(&mut self) {
        if let Some(f) = &self.folder {
            f.abort();
        }
    }
}

impl PgStorage {
    /// Connects a pool and creates the schema if missing; its totals are
    /// folded every [`FOLD_EVERY`].
    pub async fn connect(url: &str) -> Result<PgStorage, ServerError> {
        Self::connect_with(url, Some(FOLD_EVERY)).await
    }

    /// [`Self::connect`], folding the totals every `fold_every`, or only when
    /// [`Self::fold_totals`] is called (`None`: tests).
    pub async fn connect_with(
        url: &str,
        fold_every: Option<std::time::Duration>,
    ) -> Result<PgStorage, ServerError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| ServerError::DatabaseUrl(e.to_string()))?;
        // Statements are prepared once per connection; PostgreSQL's generic plans for
        // them (made after five runs) do not use the stream bounds well, so plan each
        // execution with its real parameters.
        let options = format!(
            "{} -c plan_cache_mode=force_custom_plan",
            config.get_options().unwrap_or("")
        );
        config.options(options.trim());
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| ServerError::Pool(e.to_string()))?;
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(SCHEMA).await?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('cursor_secret', $1) ON CONFLICT DO NOTHING",
            &[&super::new_secret()],
        )
        .await?;
        tx.commit().await?;
        drop(client);
        let folder = fold_every.map(|period| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(period);
                loop {
                    every.tick().await;
                    if let Err(e) = fold_totals(&pool).await {
                        tracing::warn!(error = %crate::logging::Escaped(&e), "folding the totals failed; the next round retries");
                    }
                }
            })
        });
        Ok(PgStorage { pool, folder })
    }

    /// Moves the committed rows of `totals_delta` into `totals` now (the
    /// folder does it every second); returns how many totals it changed.
    pub async fn fold_totals(&self) -> Result<u64, ServerError> {
        fold_totals(&self.pool).await
    }

    /// The connection pool (tests use it to hold transactions open).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Applies a batch inside an open transaction without committing. `Ok(None)` means
    /// the batch aborted on a conflict and the caller must roll back. Exposed so tests
    /// can commit concurrent writers in a chosen order.
    ///
    /// A batch costs a fixed number of statements, not a few per mutation: it claims
    /// every mutation id at once, reads and locks every row it may write at once,
    /// decides each mutation in order against its own view of those rows, then
    /// writes the records, totals, change rows and outcomes (the last state of each
    /// wins). Ids and rows are locked in key order, the same for every batch. A
    /// record created by a concurrent push after the read makes the insert fail
    /// with a unique violation, and the whole batch is retried (see `write`).
    pub async fn write_in(
        tx: &Transaction<'_>,
        batch: &WriteBatch,
    ) -> Result<Option<Vec<MutationOutcome>>, ServerError> {
        let txid: i64 = tx
            .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
            .await?
            .get(0);
        let user = &batch.caller.user_id;
        let stored = claim_ids(tx, user, batch).await?;
        let replayed =
            |mid: &Option<String>| mid.as_ref().is_some_and(|id| stored.contains_key(id));
        let keys: BTreeSet<(&str, &str)> = batch
            .mutations
            .iter()
            .filter(|m| !replayed(&m.mutation_id))
            .map(|m| (m.collection.as_str(), m.record_id.as_str()))
            .collect();
        let mut rows = lock_rows(tx, &keys).await?;
        // Records the batch writes, and those of them not stored before it (a row
        // enters `rows` only when read or written, so one missing at its first write
        // is new).
        let mut written: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut new: HashSet<(&str, &str)> = HashSet::new();
        let mut outcomes = Vec::with_capacity(batch.mutations.len());
        let mut total_deltas = TotalDeltas::default();
        let mut change_rows: BTreeMap<(String, &str, &str), ChangeKind> = BTreeMap::new();
        let mut outcomes_of: HashMap<&str, Option<MutationOutcome>> = HashMap::new();
        for m in &batch.mutations {
            if let Some(mid) = &m.mutation_id {
                // An id already answered, by an earlier push or earlier in this batch
                // (and kept): the same answer. One answered and not kept (a conflict)
                // is decided again.
                let known = match outcomes_of.get(mid.as_str()) {
                    Some(here) => here.as_ref(),
                    None => stored.get(mid),
                };
                if let Some(outcome) = known {
                    outcomes.push(outcome.clone());
                    continue;
                }
            }
            let key = (m.collection.clone(), m.record_id.clone());
            let decision = decide(&batch.config, &batch.caller, m, rows.get(&key));
            let remembered = decision.remembered();
            let outcome = match decision {
                Decision::Conflict { .. } if batch.abort_on_conflict => return Ok(None),
                Decision::Conflict { outcome } | Decision::NoWrite { outcome } => outcome,
                Decision::Write {
                    row,
                    changes,
                    totals,
                    outcome,
                } => {
                    let created_at = match rows.get(&key) {
                        Some(r) => r.created_at,
                        None => {
                            new.insert((&m.collection, &m.record_id));
                            txid
                        }
                    };
                    rows.insert(
                        key,
                        CurrentRow {
                            scope: row.scope,
                            version: row.version,
                            deleted: row.deleted,
                            fields: row.fields,
                            changed_at: txid,
                            created_at,
                        },
                    );
                    written.insert((&m.collection, &m.record_id));
                    for (scope, kind) in changes {
                        change_rows.insert((scope, &m.collection, &m.record_id), kind);
                    }
                    total_deltas.add(&m.collection, totals);
                    outcome
                }
            };
            if let Some(mid) = &m.mutation_id {
                outcomes_of.insert(mid, remembered.then(|| outcome.clone()));
            }
            outcomes.push(outcome);
        }
        write_records(tx, txid, &rows, &written, &new).await?;
        let add_total = tx
            .prepare_cached(
                "INSERT INTO totals_delta (scope, collection, count, digest) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        for (scope, collection, delta, digest) in total_deltas.changed() {
            tx.execute(&add_total, &[&scope, &collection, &delta, &digest])
                .await?;
        }
        write_changes(tx, txid, batch.client_id.as_deref(), &change_rows).await?;
        write_outcomes(tx, user, &outcomes_of).await?;
        Ok(Some(outcomes))
    }

    async fn write_once(&self, batch: &WriteBatch) -> Result<WriteResult, ServerError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(outcomes) = Self::write_in(&tx, batch).await? else {
            tx.rollback().await?;
            return Ok(WriteResult {
                outcomes: vec![],
                checkpoint: Position::ZERO,
                aborted: true,
            });
        };
        tx.commit().await?;
        let xmax: i64 = client
            .query_one(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await?
            .get(0);
        Ok(WriteResult {
            outcomes,
            checkpoint: Position(xmax, 0),
            aborted: false,
        })
    }
}

/// Claims every mutation id of the batch for this transaction, in id order (a
/// concurrent push of the same id waits for this one to commit, then replays its
/// outcome). Returns the outcomes already stored for ids claimed before.
async fn claim_ids(
    tx: &Transaction<'_>,
    user: &str,
    batch: &WriteBatch,
) -> Result<HashMap<String, MutationOutcome>, ServerError> {
    let ids: BTreeSet<&str> = batch
        .mutations
        .iter()
        .filter_map(|m| m.mutation_id.as_deref())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = ids.into_iter().collect();
    let claim = tx
        .prepare_cached(
            "INSERT INTO mutations (user_id, mutation_id)
             SELECT $1, u.id FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n) ORDER BY u.n
             ON CONFLICT DO NOTHING RETURNING mutation_id",
        )
        .await?;
    let claimed: HashSet<String> = tx
        .query(&claim, &[&user, &ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let earlier: Vec<&str> = ids
        .into_iter()
        .filter(|id| !claimed.contains(*id))
        .collect();
    if earlier.is_empty() {
        return Ok(HashMap::new());
    }
    let stored = tx
        .prepare_cached(
            "SELECT mutation_id, outcome FROM mutations
             WHERE user_id = $1 AND mutation_id = ANY($2) AND outcome IS NOT NULL",
        )
        .await?;
    tx.query(&stored, &[&user, &earlier])
        .await?
        .iter()
        .map(|r| Ok((r.get(0), decode_outcome(r.get(1))?)))
        .collect()
}

/// Reads and locks (`FOR UPDATE`, in key order) the stored rows of `keys`.
async fn lock_rows(
    tx: &Transaction<'_>,
    keys: &BTreeSet<(&str, &str)>,
) -> Result<HashMap<(String, String), CurrentRow>, ServerError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (collections, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let load = tx
        .prepare_cached(
            "SELECT r.collection, r.id, r.scope, r.version, r.deleted, r.data, r.changed_at,
                    r.created_at
             FROM records r JOIN unnest($1::text[], $2::text[]) AS k(collection, id)
               ON r.collection = k.collection AND r.id = k.id
             ORDER BY r.collection, r.id FOR UPDATE OF r",
        )
        .await?;
    let mut rows = HashMap::with_capacity(keys.len());
    for r in tx.query(&load, &[&collections, &ids]).await? {
        rows.insert(
            (r.get(0), r.get(1)),
            CurrentRow {
                scope: r.get(2),
                version: r.get::<_, i64>(3) as u64,
                deleted: r.get(4),
                fields: decode_fields(r.get(5))?,
                changed_at: r.get(6),
                created_at: r.get(7),
            },
        );
    }
    Ok(rows)
}

/// Writes the final state of each record the batch wrote: one insert for those
/// that did not exist when the batch read them, one update for the others.
async fn write_records(
    tx: &Transaction<'_>,
    txid: i64,
    rows: &HashMap<(String, String), CurrentRow>,
    written: &BTreeSet<(&str, &str)>,
    new: &HashSet<(&str, &str)>,
) -> Result<(), ServerError> {
    #[derive(Default)]
    struct Columns<'a> {
        collections: Vec<&'a str>,
        ids: Vec<&'a str>,
        scopes: Vec<&'a str>,
        versions: Vec<i64>,
        deleted: Vec<bool>,
        data: Vec<String>,
    }
    let (mut inserts, mut updates) = (Columns::default(), Columns::default());
    for &(collection, id) in written {
        let row = &rows[&(collection.to_string(), id.to_string())];
        let c = if new.contains(&(collection, id)) {
            &mut inserts
        } else {
            &mut updates
        };
        c.collections.push(collection);
        c.ids.push(id);
        c.scopes.push(&row.scope);
        c.versions.push(row.version as i64);
        c.deleted.push(row.deleted);
        c.data
            .push(serde_json::to_string(&row.fields).expect("fields serialize"));
    }
    if !inserts.ids.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO records (collection, id, scope, version, deleted, data, changed_at, created_at)
                 SELECT u.collection, u.id, u.scope, u.version, u.deleted, u.data::jsonb, $7, $7
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bool[], $6::text[])
                   AS u(collection, id, scope, version, deleted, data)",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &inserts.collections,
                &inserts.ids,
                &inserts.scopes,
                &inserts.versions,
                &inserts.deleted,
                &inserts.data,
                &txid,
            ],
        )
        .await?;
    }
    if !updates.ids.is_empty() {
        let update = tx
            .prepare_cached(
                "UPDATE records SET scope = u.scope, version = u.version, deleted = u.deleted,
                   data = u.data::jsonb, changed_at = $7
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bool[], $6::text[])
                   AS u(collection, id, scope, version, deleted, data)
                 WHERE records.collection = u.collection AND records.id = u.id",
            )
            .await?;
        tx.execute(
            &update,
            &[
                &updates.collections,
                &updates.ids,
                &updates.scopes,
                &updates.versions,
                &updates.deleted,
                &updates.data,
                &txid,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Points each changed record's change row at this transaction, in one statement
/// (rows in key order, so concurrent batches lock them in the same order).
async fn write_changes(
    tx: &Transaction<'_>,
    txid: i64,
    client_id: Option<&str>,
    rows: &BTreeMap<(String, &str, &str), ChangeKind>,
) -> Result<(), ServerError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut scopes, mut collections, mut ids, mut kinds) = (vec![], vec![], vec![], vec![]);
    for ((scope, collection, id), kind) in rows {
        scopes.push(scope.as_str());
        collections.push(*collection);
        ids.push(*id);
        kinds.push(kind.code());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO changes (scope, collection, record_id, txid, seq, kind, client_id)
             SELECT u.scope, u.collection, u.record_id, $5, nextval('change_seq'), u.kind, $6
             FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[])
               WITH ORDINALITY AS u(scope, collection, record_id, kind, n)
             ORDER BY u.n
             ON CONFLICT (scope, collection, record_id) DO UPDATE SET
               txid = excluded.txid, seq = excluded.seq, kind = excluded.kind,
               client_id = excluded.client_id",
        )
        .await?;
    tx.execute(
        &stmt,
        &[&scopes, &collections, &ids, &kinds, &txid, &client_id],
    )
    .await?;
    Ok(())
}

/// Stores the outcome of each claimed mutation id that keeps one, and releases
/// the ids whose outcome is not kept, a statement each.
async fn write_outcomes(
    tx: &Transaction<'_>,
    user: &str,
    outcomes: &HashMap<&str, Option<MutationOutcome>>,
) -> Result<(), ServerError> {
    let (mut kept_ids, mut kept, mut released) = (vec![], vec![], vec![]);
    for (id, outcome) in outcomes {
        match outcome {
            Some(o) => {
                kept_ids.push(*id);
                kept.push(encode_outcome(o));
            }
            None => released.push(*id),
        }
    }
    if !kept_ids.is_empty() {
        let stmt = tx
            .prepare_cached(
                "UPDATE mutations SET outcome = u.outcome
                 FROM unnest($2::text[], $3::text[]) AS u(mutation_id, outcome)
                 WHERE user_id = $1 AND mutations.mutation_id = u.mutation_id",
            )
            .await?;
        tx.execute(&stmt, &[&user, &kept_ids, &kept]).await?;
    }
    if !released.is_empty() {
        let stmt = tx
            .prepare_cached("DELETE FROM mutations WHERE user_id = $1 AND mutation_id = ANY($2)")
            .await?;
        tx.execute(&stmt, &[&user, &released]).await?;
    }
    Ok(())
}

fn retryable(e: &ServerError) -> bool {
    let ServerError::Postgres(e) = e else {
        return false;
    };
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::UNIQUE_VIOLATION
    )
}

#[async_trait]
impl Storage for PgStorage {
    async fn read(&self, req: ReadRequest) -> Result<ReadResult, ServerError> {
        let mut client = self.pool.get().await?;
        // Transactions of *other* databases of the cluster cannot write here, but they
        // hold back the cluster-wide xmin. Their xids, read before our snapshot is
        // taken (an xid never changes database), may be ignored; any xid not known
        // to be foreign is treated as ours.
        // Read with them: how long the oldest transaction of this database that
        // holds a transaction id has been running (what holds the watermark
        // back; a metric, for an operator to find a transaction left open).
        // Other roles' transactions show only with `pg_read_all_stats`.
        let activity = client
            .query_one(
                "SELECT coalesce(array_agg(backend_xid::text::bigint)
                            FILTER (WHERE datname IS DISTINCT FROM current_database()), '{}'),
                        extract(epoch FROM clock_timestamp() - min(xact_start)
                            FILTER (WHERE datname = current_database()))::float8
                 FROM pg_stat_activity WHERE backend_xid IS NOT NULL",
                &[],
            )
            .await?;
        let foreign: Vec<i64> = activity.get(0);
        let lag_seconds: Option<f64> = activity.get(1);
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // First statement: fixes the snapshot. The watermark is its oldest running
        // transaction that may be ours (or xmax when there is none).
        let row = tx
            .query_one(
                "SELECT pg_snapshot_xmax(s)::text::bigint,
                        ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x)
                 FROM pg_current_snapshot() AS s",
                &[],
            )
            .await?;
        let xmax: i64 = row.get(0);
        let running: Vec<i64> = row.get(1);
        let xmin = running
            .into_iter()
            .filter(|x| !foreign.contains(x))
            .min()
            .unwrap_or(xmax);
        let scan = tx
            .prepare_cached(
                "SELECT c.txid, c.seq, c.record_id, c.kind, c.client_id, r.version, r.created_at, r.data::text
                 FROM changes c LEFT JOIN records r
                   ON c.kind = 0 AND r.collection = c.collection AND r.id = c.record_id
                 WHERE c.scope = $1 AND c.collection = $2
                   AND (c.txid, c.seq) > ($3, $4) AND (c.txid, c.seq) <= ($5, $6) AND c.txid < $7
                 ORDER BY c.txid, c.seq LIMIT $8",
            )
            .await?;
        let beyond = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM changes c WHERE c.scope = $1 AND c.collection = $2
                   AND (c.txid, c.seq) > ($3, $4) AND c.txid >= $5)",
            )
            .await?;
        let mut withheld = false;
        let mut rows = Vec::with_capacity(req.scans.len());
        for s in &req.scans {
            let upto = s.upto.unwrap_or(Position::MAX);
            let limit = i64::try_from(s.limit).unwrap_or(i64::MAX);
            let result = tx
                .query(
                    &scan,
                    &[
                        &s.key.scope,
                        &s.key.collection,
                        &s.after.0,
                        &s.after.1,
                        &upto.0,
                        &upto.1,
                        &xmin,
                        &limit,
                    ],
                )
                .await?;
            if !withheld && s.upto.is_none() && (result.len() as u64) < s.limit as u64 {
                let after = result
                    .last()
                    .map_or(s.after, |r| Position(r.get(0), r.get(1)));
                withheld = tx
                    .query_one(
                        &beyond,
                        &[&s.key.scope, &s.key.collection, &after.0, &after.1, &xmin],
                    )
                    .await?
                    .get(0);
            }
            let mut out = Vec::with_capacity(result.len());
            for r in result {
                let record = match r.get::<_, Option<String>>(7) {
                    Some(data) => Some(RecordData {
                        version: r.get::<_, i64>(5) as u64,
                        created_at: r.get(6),
                        fields: raw_fields(data)?,
                    }),
                    None => None,
                };
                out.push(ChangeRow {
                    position: Position(r.get(0), r.get(1)),
                    record_id: r.get(2),
                    kind: ChangeKind::from_code(r.get::<_, i16>(3).into())?,
                    client_id: r.get(4),
                    record,
                });
            }
            rows.push(out);
        }
        let mut totals = BTreeMap::new();
        let mut digests = BTreeMap::new();
        if let Some((scopes, collections)) = &req.totals {
            for c in collections {
                totals.insert(c.clone(), 0);
                digests.insert(c.clone(), Some(0));
            }
            // BIT_XOR skips NULLs: a scope whose digest is unknown makes the
            // collection's unknown.
            let sums = tx
                .query(
                    "SELECT collection, SUM(count)::bigint, BIT_XOR(digest), COUNT(*) = COUNT(digest)
                     FROM (SELECT collection, count, digest FROM totals
                             WHERE scope = ANY($1) AND collection = ANY($2)
                           UNION ALL
                           SELECT collection, count, digest FROM totals_delta
                             WHERE scope = ANY($1) AND collection = ANY($2)) t
                     GROUP BY collection",
                    &[scopes, collections],
                )
                .await?;
            for r in sums {
                let c: String = r.get(0);
                totals.insert(c.clone(), r.get::<_, i64>(1).max(0) as u64);
                let known: bool = r.get(3);
                let digest = r.get::<_, Option<i64>>(2).unwrap_or(0) as u64;
                digests.insert(c, known.then_some(digest));
            }
        }
        tx.commit().await?;
        Ok(ReadResult {
            rows,
            watermark: Position(xmin, 0),
            totals,
            digests,
            withheld,
            lag_seconds,
        })
    }

    async fn write(&self, batch: WriteBatch) -> Result<WriteResult, ServerError> {
        let mut attempt = 1;
        loop {
            match self.write_once(&batch).await {
                Err(e) if attempt < WRITE_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(attempt, error = %crate::logging::Escaped(&e), "retrying write batch");
                    attempt += 1;
                }
                Err(e) if retryable(&e) => {
                    return Err(ServerError::Pool(format!("write contention: {e}")));
                }
                other => return other,
            }
        }
    }

    async fn secret(&self) -> Result<Vec<u8>, ServerError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one("SELECT value FROM meta WHERE key = 'cursor_secret'", &[])
            .await?
            .get(0))
    }

    async fn ping(&self) -> Result<(), ServerError> {
        let client = self.pool.get().await?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

/// One round of the folder: in one transaction, deletes the committed rows of
/// `totals_delta` and adds their sums to `totals`, so a reader sees them in
/// one place or the other, never both nor neither. Rows of transactions still
/// running are not visible to it and wait for the next round. One folder at a
/// time (an advisory lock); another round finding it taken does nothing.
async fn fold_totals(pool: &Pool) -> Result<u64, ServerError> {
    /// The advisory lock key: "ferry" "fold" in ASCII.
    const FOLD_LOCK: i64 = 0x6665_7272_7966_6f6c;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&FOLD_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(0);
    }
    let moved = tx
        .execute(
            "WITH d AS (DELETE FROM totals_delta RETURNING scope, collection, count, digest)
             INSERT INTO totals (scope, collection, count, digest)
             SELECT scope, collection, SUM(count)::bigint, BIT_XOR(digest) FROM d
             GROUP BY scope, collection
             ON CONFLICT (scope, collection) DO UPDATE SET count = totals.count + excluded.count,
               digest = totals.digest # excluded.digest",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(moved)
}
