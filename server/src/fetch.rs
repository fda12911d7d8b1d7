//! Read-through: `POST /v1/fetch`, the records of one collection that match a
//! query, read on the server for a device that holds only part of them.
//!
//! Same auth, scopes and sync rules as a pull: the scan walks the caller's
//! change streams of the collection, whose upserts are exactly the rows a pull
//! would deliver (a row a sync rule excludes is an eviction there, a deleted one
//! a tombstone). The filter is the core's language, evaluated with
//! [`ferry_protocol::query::Filter::matches`]; the scan goes by chunks and keeps only the best
//! `offset + limit + 1` matches, so memory stays bounded whatever the
//! collection's size. Time is O(rows of the collection in the caller's scopes).

use std::collections::BTreeMap;

use ferry_protocol::query::{Filter, Op, Query};
use ferry_protocol::{FetchRequest, FetchResponse, Fields, RawFields, ServerRecord, error_code};
use serde_json::Value;

use crate::auth::Caller;
use crate::config::{CollectionConfig, FieldType};
use crate::cursor::{Position, StreamKey};
use crate::error::{ApiError, ServerError};
use crate::service::SyncService;
use crate::storage::{ChangeKind, ReadRequest, Scan};

/// Rows read per stream and round trip.
const CHUNK: usize = 1000;

struct Match {
    id: String,
    version: u64,
    fields: Fields,
    raw: RawFields,
}

impl SyncService {
    /// Records of `req.collection` in the caller's scopes that match `req.query`.
    pub async fn fetch(
        &self,
        caller: &Caller,
        req: &FetchRequest,
    ) -> Result<FetchResponse<RawFields>, ApiError> {
        let coll = self
            .config()
            .collections
            .get(&req.collection)
            .ok_or_else(|| ApiError::unknown_collection(&req.collection))?;
        let query = Query::from_value(&req.query)
            .map_err(|e| ApiError::bad_request(error_code::INVALID_REQUEST, e.to_string()))?;
        check_query(coll, &query)?;
        let limits = &self.config().limits;
        let limit = query
            .limit
            .map_or(limits.default_page_rows as usize, |l| l as usize)
            .clamp(1, limits.max_page_rows as usize);
        let offset = query.offset.unwrap_or(0) as usize;
        let keep = offset.saturating_add(limit).saturating_add(1);

        let mut after: BTreeMap<StreamKey, Position> = caller
            .scopes
            .iter()
            .map(|s| (StreamKey::new(s, &req.collection), Position::ZERO))
            .collect();
        let mut best: Vec<Match> = Vec::new();
        while !after.is_empty() {
            let scans: Vec<Scan> = after
                .iter()
                .map(|(key, after)| Scan {
                    key: key.clone(),
                    after: *after,
                    upto: None,
                    limit: CHUNK,
                })
                .collect();
            let read = self
                .read_settled(ReadRequest {
                    scans: scans.clone(),
                    totals: None,
                })
                .await?;
            for (scan, rows) in scans.iter().zip(read.rows) {
                match rows.last() {
                    Some(last) if rows.len() == CHUNK => {
                        after.insert(scan.key.clone(), last.position);
                    }
                    _ => {
                        after.remove(&scan.key);
                    }
                }
                for row in rows {
                    let (ChangeKind::Upsert, Some(rec)) = (row.kind, row.record) else {
                        continue;
                    };
                    let fields: Fields = serde_json::from_str(rec.fields.get())
                        .map_err(|e| ServerError::Corrupt(e.to_string()))?;
                    if query
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.matches(&row.record_id, &fields))
                    {
                        best.push(Match {
                            id: row.record_id,
                            version: rec.version,
                            fields,
                            raw: rec.fields,
                        });
                    }
                }
            }
            if best.len() >= 2 * keep {
                settle(&query, &mut best, keep);
            }
        }
        settle(&query, &mut best, keep);
        let has_more = best.len() > offset + limit;
        let records = best
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|m| ServerRecord {
                id: m.id,
                version: m.version,
                fields: m.raw,
            })
            .collect();
        Ok(FetchResponse { records, has_more })
    }
}

/// Sorts, drops the older copy of a record seen twice (it changed between two
/// chunks), and keeps the first `keep`.
fn settle(query: &Query, best: &mut Vec<Match>, keep: usize) {
    best.sort_by(|a, b| a.id.cmp(&b.id).then(b.version.cmp(&a.version)));
    best.dedup_by(|later, first| later.id == first.id);
    best.sort_by(|a, b| query.order((&a.id, &a.fields), (&b.id, &b.fields)));
    best.truncate(keep);
}

/// Every column a query names is the id or a configured field, and each value
/// has the field's type: what the core checks against its schema before it
/// compiles the same query.
fn check_query(coll: &CollectionConfig, q: &Query) -> Result<(), ApiError> {
    for s in &q.sort {
        if column_type(coll, &s.column)? == FieldType::Json {
            return Err(invalid(format!("cannot sort by json field {:?}", s.column)));
        }
    }
    match &q.filter {
        Some(filter) => check_filter(coll, filter),
        None => Ok(()),
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request(error_code::INVALID_REQUEST, message)
}

fn column_type(coll: &CollectionConfig, column: &str) -> Result<FieldType, ApiError> {
    if column == "id" {
        return Ok(FieldType::String);
    }
    coll.fields
        .get(column)
        .map(|f| f.ty)
        .ok_or_else(|| invalid(format!("unknown field {column:?}")))
}

/// A filter (of a query or a sync subscription) names only the id and
/// configured fields, and compares each with a value of its type.
pub(crate) fn check_filter(coll: &CollectionConfig, filter: &Filter) -> Result<(), ApiError> {
    let bad = |m: String| Err(invalid(m));
    for (column, op, value) in filter.conditions() {
        let ty = column_type(coll, column)?;
        if matches!(op, Op::IsNull | Op::IsNotNull) {
            if !value.is_null() {
                return bad(format!("`{}` takes no value", op.name()));
            }
            continue;
        }
        if ty == FieldType::Json {
            return bad(format!(
                "json field {column:?} can only be tested with is_null / is_not_null"
            ));
        }
        if op == Op::Like && ty != FieldType::String {
            return bad(format!("`like` needs a string field, {column:?} is not"));
        }
        let values: Vec<&Value> = match op {
            Op::In | Op::NotIn => match value.as_array() {
                Some(a) => a.iter().collect(),
                None => return bad(format!("`{}` takes an array value", op.name())),
            },
            _ => vec![value],
        };
        for v in values {
            let ok = match ty {
                FieldType::String => v.is_string(),
                FieldType::Number => v.is_number(),
                FieldType::Integer => v.is_i64() || v.is_u64(),
                FieldType::Boolean => v.is_boolean(),
                FieldType::Json => false,
            };
            if !ok {
                return bad(format!(
                    "field {column:?} is compared with a {}, not a {}",
                    ferry_protocol::json_kind(v),
                    format!("{ty:?}").to_lowercase()
                ));
            }
        }
    }
    Ok(())
}
