//! Sync subscriptions: which change streams a pull scans, and what each filtered
//! stream sends (docs/protocol.md, "Sync subscriptions").
//!
//! A subscription is a collection, optionally one scope and optionally a filter
//! of the query language. Each becomes one stream per scope it covers; a
//! filtered stream's key carries a hash of its filter, so a new or changed
//! filter starts from the stream's full history (a backfill) while the
//! others carry on. Every stream of a (scope, collection) scans the same
//! change-index rows, which is what lets a filtered stream skip what another
//! already sent ([`Verdict`]). Must never produce a stream of a scope the
//! caller does not hold.

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::query::Filter;
use ferry_protocol::{Fields, LOWEST_PRIORITY, PullRequest, error_code};
use ring::digest;
use serde_json::Value;

use crate::auth::Caller;
use crate::config::ServerConfig;
use crate::cursor::{Cursor, Position, StreamKey};
use crate::error::{ApiError, ServerError};
use crate::fetch::check_filter;
use crate::storage::{ChangeKind, ChangeRow};

/// One stream a pull scans, and the filter its upserts must match.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub key: StreamKey,
    pub filter: Option<Filter>,
}

/// What a pull covers: its collections, its live streams, and whether the
/// request named its subscriptions (then streams it does not name are dropped
/// from the cursor).
pub(crate) struct Plan {
    pub collections: Vec<String>,
    pub streams: Vec<Stream>,
    pub subscribed: bool,
}

impl Plan {
    /// Whether the pull syncs every row of `collection` the caller can see:
    /// an unfiltered stream in each of its scopes.
    pub fn whole(&self, caller: &Caller, collection: &str) -> bool {
        caller.scopes.iter().all(|scope| {
            self.streams
                .iter()
                .any(|s| s.key == StreamKey::new(scope, collection))
        })
    }
}

/// The streams of a pull, from its subscriptions or, without any, every record
/// of the selected collections in each of the caller's scopes.
pub(crate) fn plan(
    config: &ServerConfig,
    caller: &Caller,
    req: &PullRequest,
) -> Result<Plan, ApiError> {
    let invalid = |m: String| ApiError::bad_request(error_code::INVALID_REQUEST, m);
    let Some(subs) = &req.subscriptions else {
        let collections = selected(config, req.collections.as_deref())?;
        let streams = caller
            .scopes
            .iter()
            .flat_map(|scope| {
                collections.iter().map(move |c| Stream {
                    key: StreamKey::new(scope, c),
                    filter: None,
                })
            })
            .collect();
        return Ok(Plan {
            collections,
            streams,
            subscribed: false,
        });
    };
    if req.collections.is_some() {
        return Err(invalid(
            "a pull names `subscriptions` or `collections`, not both".into(),
        ));
    }
    let mut collections = BTreeSet::new();
    let mut streams: Vec<Stream> = Vec::new();
    for sub in subs {
        let coll = config
            .collections
            .get(&sub.collection)
            .ok_or_else(|| ApiError::unknown_collection(&sub.collection))?;
        collections.insert(sub.collection.clone());
        let (filter, key) = match &sub.filter {
            None => (None, String::new()),
            Some(v) => {
                let f = Filter::from_value(v).map_err(|e| invalid(e.to_string()))?;
                check_filter(coll, &f)?;
                (Some(f), filter_key(v))
            }
        };
        let scopes: Vec<&String> = match &sub.scope {
            Some(s) => caller.scopes.iter().filter(|c| *c == s).collect(),
            None => caller.scopes.iter().collect(),
        };
        for scope in scopes {
            let key = StreamKey::filtered(scope, &sub.collection, &key);
            if !streams.iter().any(|s| s.key == key) {
                streams.push(Stream {
                    key,
                    filter: filter.clone(),
                });
            }
        }
    }
    Ok(Plan {
        collections: collections.into_iter().collect(),
        streams,
        subscribed: true,
    })
}

/// What a filtered stream does with one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Skip,
    Send(ChangeKind),
}

/// What filtered stream `streams[i]` sends for the change `row` at `pos`, with
/// `cursor` as far as this page has gone (the union of the subscriptions is
/// what the client holds):
/// - an upsert that matches is sent, unless another stream of the same rows
///   that matches has gone past `pos`: it already sent this very change;
/// - an upsert that does not match is an eviction (the row stopped matching),
///   unless another stream of the same rows matches it (that one sends it) or
///   the change is older than this stream (it never sent the row);
/// - a delete or an eviction is sent, unless it is older than this stream.
pub(crate) fn verdict(
    streams: &[Stream],
    i: usize,
    cursor: &Cursor,
    pos: Position,
    row: &ChangeRow,
) -> Result<Verdict, ServerError> {
    let me = &streams[i];
    let older = pos
        < cursor
            .created
            .get(&me.key)
            .copied()
            .unwrap_or(Position::ZERO);
    let (ChangeKind::Upsert, Some(rec), Some(filter)) = (row.kind, &row.record, &me.filter) else {
        return Ok(if older {
            Verdict::Skip
        } else {
            Verdict::Send(row.kind)
        });
    };
    let fields: Fields = serde_json::from_str(rec.fields.get())
        .map_err(|e| ServerError::Corrupt(format!("record data: {e}")))?;
    let mut others = streams.iter().enumerate().filter(|(j, s)| {
        *j != i
            && s.key.same_rows(&me.key)
            && s.filter
                .as_ref()
                .is_none_or(|f| f.matches(&row.record_id, &fields))
    });
    Ok(if filter.matches(&row.record_id, &fields) {
        let sent = others.any(|(_, s)| cursor.streams.get(&s.key).is_some_and(|p| *p >= pos));
        if sent {
            Verdict::Skip
        } else {
            Verdict::Send(ChangeKind::Upsert)
        }
    } else if older || others.next().is_some() {
        Verdict::Skip
    } else {
        Verdict::Send(ChangeKind::Evict)
    })
}

/// The priority of each collection in a pull (docs/protocol.md, pull rule 12).
pub(crate) struct Priorities(BTreeMap<String, u8>);

impl Priorities {
    /// The request's priorities, checked: known collections, levels
    /// 0..=[`LOWEST_PRIORITY`].
    pub(crate) fn of_request(config: &ServerConfig, req: &PullRequest) -> Result<Self, ApiError> {
        let Some(map) = &req.priorities else {
            return Ok(Priorities(BTreeMap::new()));
        };
        for (c, p) in map {
            if !config.collections.contains_key(c) {
                return Err(ApiError::unknown_collection(c));
            }
            if *p > LOWEST_PRIORITY {
                return Err(ApiError::bad_request(
                    error_code::INVALID_REQUEST,
                    format!(
                        "the priority of `{c}` is {p}; priorities go from 0 (first) to {LOWEST_PRIORITY}"
                    ),
                ));
            }
        }
        Ok(Priorities(map.clone()))
    }

    pub(crate) fn of(&self, collection: &str) -> u8 {
        self.0.get(collection).copied().unwrap_or(LOWEST_PRIORITY)
    }
}

fn selected(config: &ServerConfig, wanted: Option<&[String]>) -> Result<Vec<String>, ApiError> {
    match wanted {
        None => Ok(config.collections.keys().cloned().collect()),
        Some(list) => {
            let mut out = BTreeSet::new();
            for c in list {
                if !config.collections.contains_key(c) {
                    return Err(ApiError::unknown_collection(c));
                }
                out.insert(c.clone());
            }
            Ok(out.into_iter().collect())
        }
    }
}

/// A filter's stream key: the first 8 bytes of SHA-256 over its canonical JSON
/// (object keys sorted), in hex. The same filter always gets the same key.
pub(crate) fn filter_key(filter: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(filter, &mut canonical);
    digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_key_ignores_key_order_and_tells_filters_apart() {
        let a: Value =
            serde_json::from_str(r#"{"column":"done","op":"eq","value":false}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"value":false,"op":"eq","column":"done"}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"column":"done","op":"eq","value":true}"#).unwrap();
        assert_eq!(filter_key(&a), filter_key(&b));
        assert_ne!(filter_key(&a), filter_key(&c));
        assert_eq!(filter_key(&a).len(), 16);
    }
}
