//! WatermelonDB compat mode: the sync engine against any backend that speaks
//! WatermelonDB's sync protocol (`GET`/`POST` on one sync URL).
//!
//! The adapter maps that protocol onto the Ferry [`Transport`]: a pull is one
//! page (`has_more = false`) whose cursor is the backend's `timestamp`, sent back
//! as `last_pulled_at`; rows carry that timestamp as their version. A push sends
//! `created`/`updated`/`deleted` with the `last_pulled_at` of the last pull. A
//! conflict fails the whole push, as WatermelonDB backends do: every mutation then
//! answers `retry`, and the client pulls again and pushes once more
//! ([`Transport::repull_on_retry`]). `experimentalRejectedIds` become per-item
//! rejections. Updates carry the changed columns only (plus `id`); a backend that
//! needs whole records must merge them, as `ferry-server` does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use ferry_protocol::watermelon::{
    Changes, PullResponse, PushResponse as WmPushResponse, RawRecord, TableChanges,
};
use ferry_protocol::{
    CollectionChanges, MutationOutcome, MutationResult, Op, PullPage, PullRequest, PushRequest,
    PushResponse, RawFields, RejectCode, ServerRecord,
};
use serde_json::Value;

use super::http::offline;
use super::{HttpTransport, Transport, TransportError};

const UNKNOWN: i64 = i64::MIN;

/// A WatermelonDB-protocol backend at `sync_url` (e.g. `https://api.example.com/sync`).
pub struct WatermelonTransport {
    http: HttpTransport,
    schema_version: u32,
    last_pulled_at: AtomicI64,
}

impl WatermelonTransport {
    pub fn new(sync_url: &str, schema_version: u32) -> Result<Self, TransportError> {
        Ok(WatermelonTransport {
            http: HttpTransport::new(sync_url)?,
            schema_version,
            last_pulled_at: AtomicI64::new(UNKNOWN),
        })
    }
}

fn to_server_record(mut raw: RawRecord, version: u64) -> Result<ServerRecord, TransportError> {
    let id = match raw.remove("id") {
        Some(Value::String(id)) => id,
        _ => {
            return Err(TransportError::Protocol(
                "a pulled record has no string `id`".into(),
            ));
        }
    };
    raw.remove("_status");
    raw.remove("_changed");
    Ok(ServerRecord {
        id,
        version,
        fields: raw,
    })
}

#[async_trait]
impl Transport for WatermelonTransport {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        let last = match &req.cursor {
            Some(c) => c
                .parse::<i64>()
                .map_err(|_| {
                    TransportError::Protocol(format!(
                        "cursor {c:?} is not a WatermelonDB timestamp"
                    ))
                })?
                .to_string(),
            None => "null".to_string(),
        };
        let url = format!(
            "{}?last_pulled_at={last}&schema_version={}&migration=null",
            self.http.base_url(),
            self.schema_version
        );
        let resp = self
            .http
            .client()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(offline)?;
        let body: PullResponse = self.http.read_json(resp).await?;
        let version = u64::try_from(body.timestamp).unwrap_or(0);
        let mut changes = BTreeMap::new();
        for (table, t) in body.changes {
            if let Some(only) = &req.collections
                && !only.contains(&table)
            {
                continue;
            }
            let upserts = t
                .created
                .into_iter()
                .chain(t.updated)
                .map(|r| to_server_record(r, version))
                .collect::<Result<_, _>>()?;
            changes.insert(
                table,
                CollectionChanges {
                    upserts,
                    deletes: t.deleted,
                    evictions: vec![],
                },
            );
        }
        self.last_pulled_at.store(body.timestamp, Ordering::SeqCst);
        Ok(PullPage {
            complete_priority: None,
            cursor: body.timestamp.to_string(),
            has_more: false,
            changes,
            totals: None,
            checksums: None,
        })
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        let last = self.last_pulled_at.load(Ordering::SeqCst);
        let retry_all = |ms| PushResponse {
            results: req
                .mutations
                .iter()
                .map(|m| MutationResult {
                    mutation_id: m.mutation_id.clone(),
                    outcome: MutationOutcome::Retry { retry_after_ms: ms },
                })
                .collect(),
            write_checkpoint: String::new(),
        };
        if last == UNKNOWN {
            // WatermelonDB pushes must name the pull they build on.
            return Ok(retry_all(0));
        }
        let mut changes: Changes = BTreeMap::new();
        for m in &req.mutations {
            let t: &mut TableChanges = changes.entry(m.collection.clone()).or_default();
            let mut raw: ferry_protocol::Fields = serde_json::from_str(m.fields.get())
                .map_err(|e| TransportError::Protocol(format!("outgoing fields: {e}")))?;
            raw.insert("id".into(), Value::String(m.record_id.clone()));
            match m.op {
                Op::Create => t.created.push(raw),
                Op::Update => t.updated.push(raw),
                Op::Delete => t.deleted.push(m.record_id.clone()),
            }
        }
        let url = format!("{}?last_pulled_at={last}", self.http.base_url());
        let resp = self
            .http
            .client()
            .post(url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "changes": changes }))
            .send()
            .await
            .map_err(offline)?;
        let body: WmPushResponse = match self.http.read_json(resp).await {
            Ok(b) => b,
            Err(TransportError::Server { status: 409, .. }) => return Ok(retry_all(0)),
            Err(e) => return Err(e),
        };
        let rejected = body.experimental_rejected_ids.unwrap_or_default();
        let results = req
            .mutations
            .iter()
            .map(|m| {
                let outcome = if rejected
                    .get(&m.collection)
                    .is_some_and(|ids| ids.contains(&m.record_id))
                {
                    MutationOutcome::Rejected {
                        code: RejectCode::Other,
                        message: "rejected by the backend".into(),
                    }
                } else {
                    MutationOutcome::Applied {
                        version: u64::try_from(last).unwrap_or(0),
                    }
                };
                MutationResult {
                    mutation_id: m.mutation_id.clone(),
                    outcome,
                }
            })
            .collect();
        Ok(PushResponse {
            results,
            write_checkpoint: last.to_string(),
        })
    }

    fn bytes_received(&self) -> u64 {
        self.http.bytes_received()
    }

    fn repull_on_retry(&self) -> bool {
        true
    }
}
