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

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use ferry_protocol::MutationOutcome;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

use super::{
    ChangeRow, CurrentRow, ReadRequest, ReadResult, RecordData, Storage, WriteBatch, WriteResult,
    decode_fields, decode_outcome, encode_outcome, raw_fields,
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
CREATE TABLE IF NOT EXISTS mutations (
    user_id text NOT NULL, mutation_id text NOT NULL, outcome text,
    PRIMARY KEY (user_id, mutation_id));
";

/// Attempts of a write batch that hit a serialization failure, deadlock or a
/// concurrent duplicate insert before the push answers 503.
const WRITE_ATTEMPTS: usize = 4;

pub struct PgStorage {
    pool: Pool,
}

impl PgStorage {
    /// Connects a pool and creates the schema if missing.
    pub async fn connect(url: &str) -> Result<PgStorage, ServerError> {
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
        Ok(PgStorage { pool })
    }

    /// The connection pool (tests use it to hold transactions open).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Applies a batch inside an open transaction without committing. `Ok(None)` means
    /// the batch aborted on a conflict and the caller must roll back. Exposed so tests
    /// can commit concurrent writers in a chosen order.
    pub async fn write_in(
        tx: &Transaction<'_>,
        batch: &WriteBatch,
    ) -> Result<Option<Vec<ferry_protocol::MutationOutcome>>, ServerError> {
        let txid: i64 = tx
            .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
            .await?
            .get(0);
        let claim = tx
            .prepare_cached(
                "INSERT INTO mutations (user_id, mutation_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .await?;
        let stored = tx
            .prepare_cached("SELECT outcome FROM mutations WHERE user_id = $1 AND mutation_id = $2")
            .await?;
        let load = tx
            .prepare_cached(
                "SELECT scope, version, deleted, data, changed_at, created_at FROM records
                 WHERE collection = $1 AND id = $2 FOR UPDATE",
            )
            .await?;
        let insert_record = tx
            .prepare_cached(
                "INSERT INTO records (collection, id, scope, version, deleted, data, changed_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING",
            )
            .await?;
        let update_record = tx
            .prepare_cached(
                "UPDATE records SET scope = $3, version = $4, deleted = $5, data = $6, changed_at = $7
                 WHERE collection = $1 AND id = $2",
            )
            .await?;
        let add_total = tx
            .prepare_cached(
                "INSERT INTO totals (scope, collection, count) VALUES ($1, $2, $3)
                 ON CONFLICT (scope, collection) DO UPDATE SET count = totals.count + excluded.count",
            )
            .await?;
        let user = &batch.caller.user_id;
        let mut outcomes = Vec::with_capacity(batch.mutations.len());
        // Row counts change once per (scope, collection) per batch, at its end: one
        // statement each, not one per row, and the `totals` rows are locked only
        // for the commit, in one order for every batch.
        let mut total_deltas: BTreeMap<(String, String), i64> = BTreeMap::new();
        // The change rows and the mutation ids' outcomes are written once, at the
        // end of the batch, a statement each (one per record and per id: the last
        // state wins). Record rows are written as they go: later mutations of the
        // batch read them.
        let mut change_rows: BTreeMap<(String, &str, &str), ChangeKind> = BTreeMap::new();
        let mut outcomes_of: HashMap<&str, Option<MutationOutcome>> = HashMap::new();
        for m in &batch.mutations {
            if let Some(mid) = &m.mutation_id {
                match outcomes_of.get(mid.as_str()) {
                    // Repeated in this batch after it was remembered: the same answer.
                    Some(Some(outcome)) => {
                        outcomes.push(outcome.clone());
                        continue;
                    }
                    // Repeated after an outcome that is not kept: applied again.
                    Some(None) => {}
                    // Claim the id first: a concurrent push of the same id waits here
                    // for the first one to commit, then replays its stored outcome.
                    None if tx.execute(&claim, &[user, mid]).await? == 0 => {
                        let outcome: Option<String> =
                            tx.query_one(&stored, &[user, mid]).await?.get(0);
                        if let Some(json) = outcome {
                            outcomes.push(decode_outcome(&json)?);
                            continue;
                        }
                    }
                    None => {}
                }
            }
            let outcome = loop {
                let current = match tx.query_opt(&load, &[&m.collection, &m.record_id]).await? {
                    Some(r) => Some(CurrentRow {
                        scope: r.get(0),
                        version: r.get::<_, i64>(1) as u64,
                        deleted: r.get(2),
                        fields: decode_fields(r.get(3))?,
                        changed_at: r.get(4),
                        created_at: r.get(5),
                    }),
                    None => None,
                };
                let decision = decide(&batch.config, &batch.caller, m, current.as_ref());
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
                        let data = serde_json::Value::Object(row.fields);
                        let version = row.version as i64;
                        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                            &m.collection,
                            &m.record_id,
                            &row.scope,
                            &version,
                            &row.deleted,
                            &data,
                            &txid,
                        ];
                        if current.is_none() {
                            if tx.execute(&insert_record, &args).await? == 0 {
                                // A concurrent create of this id committed first: decide again.
                                continue;
                            }
                        } else {
                            tx.execute(&update_record, &args).await?;
                        }
                        for (scope, kind) in changes {
                            change_rows.insert((scope, &m.collection, &m.record_id), kind);
                        }
                        for (scope, delta) in totals {
                            *total_deltas
                                .entry((scope, m.collection.clone()))
                                .or_default() += delta;
                        }
                        outcome
                    }
                };
                if let Some(mid) = &m.mutation_id {
                    outcomes_of.insert(mid, remembered.then(|| outcome.clone()));
                }
                break outcome;
            };
            outcomes.push(outcome);
        }
        for ((scope, collection), delta) in &total_deltas {
            if *delta != 0 {
                tx.execute(&add_total, &[scope, collection, delta]).await?;
            }
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
        let foreign: Vec<i64> = client
            .query_one(
                "SELECT coalesce(array_agg(backend_xid::text::bigint), '{}') FROM pg_stat_activity
                 WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()",
                &[],
            )
            .await?
            .get(0);
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
        if let Some((scopes, collections)) = &req.totals {
            for c in collections {
                totals.insert(c.clone(), 0);
            }
            let sums = tx
                .query(
                    "SELECT collection, SUM(count)::bigint FROM totals
                     WHERE scope = ANY($1) AND collection = ANY($2) GROUP BY collection",
                    &[scopes, collections],
                )
                .await?;
            for r in sums {
                totals.insert(r.get(0), r.get::<_, i64>(1).max(0) as u64);
            }
        }
        tx.commit().await?;
        Ok(ReadResult {
            rows,
            watermark: Position(xmin, 0),
            totals,
            withheld,
        })
    }

    async fn write(&self, batch: WriteBatch) -> Result<WriteResult, ServerError> {
        let mut attempt = 1;
        loop {
            match self.write_once(&batch).await {
                Err(e) if attempt < WRITE_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "retrying write batch");
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
