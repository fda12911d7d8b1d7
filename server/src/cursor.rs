//! Change positions and the opaque pull cursor.
//!
//! A [`Position`] is a point in the server's commit order: `(n, 0)` on SQLite,
//! `(txid, seq)` on PostgreSQL; both compare lexicographically. A [`Cursor`] holds
//! one position per (scope, collection) key the client has pulled, so a newly
//! granted scope or newly selected collection starts from its full history, plus the
//! watermark of the last complete pull. It is signed with a per-database secret and
//! bound to the user, so a client can neither forge nor borrow one: a forged key
//! would otherwise make the revocation path reveal ids of other scopes.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A point in commit order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Position(pub i64, pub i64);

impl Position {
    pub const ZERO: Position = Position(0, 0);
    pub const MAX: Position = Position(i64::MAX, i64::MAX);
}

/// Key of one change stream: a scope, a collection and, for a subscription with
/// a filter, the filter's key (empty for every record of the collection).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    pub scope: String,
    pub collection: String,
    pub filter: String,
}

impl StreamKey {
    pub fn new(scope: &str, collection: &str) -> Self {
        StreamKey::filtered(scope, collection, "")
    }
    pub fn filtered(scope: &str, collection: &str, filter: &str) -> Self {
        StreamKey {
            scope: scope.to_string(),
            collection: collection.to_string(),
            filter: filter.to_string(),
        }
    }
    /// The same scope and collection with no filter.
    pub fn unfiltered(&self) -> StreamKey {
        StreamKey::new(&self.scope, &self.collection)
    }
    /// Whether both keys scan the same change-index rows.
    pub fn same_rows(&self, other: &StreamKey) -> bool {
        self.scope == other.scope && self.collection == other.collection
    }
    fn encode(&self) -> String {
        if self.filter.is_empty() {
            format!("{}\u{1f}{}", self.collection, self.scope)
        } else {
            format!(
                "{}\u{1f}{}\u{1f}{}",
                self.collection, self.scope, self.filter
            )
        }
    }
    fn decode(s: &str) -> Option<StreamKey> {
        let mut parts = s.splitn(3, '\u{1f}');
        let collection = parts.next()?;
        let scope = parts.next()?;
        Some(StreamKey::filtered(
            scope,
            collection,
            parts.next().unwrap_or(""),
        ))
    }
}

/// The decoded pull cursor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cursor {
    /// Last position delivered per stream.
    pub streams: BTreeMap<StreamKey, Position>,
    /// Streams of scopes the user lost, being evicted: progress so far.
    pub revoking: BTreeMap<StreamKey, Position>,
    /// For each filtered stream, the watermark of the read it first appeared in:
    /// below it, the stream never sent an earlier version of any record.
    pub created: BTreeMap<StreamKey, Position>,
    /// Every change below this position (in the pulled collections) has been
    /// delivered: set when a pull completes (`has_more == false`).
    pub watermark: Position,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    u: String,
    w: Position,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    s: BTreeMap<String, Position>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    r: BTreeMap<String, Position>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    c: BTreeMap<String, Position>,
}

/// Signs and verifies cursors and write checkpoints.
#[derive(Clone)]
pub struct CursorCodec {
    key: hmac::Key,
}

impl CursorCodec {
    pub fn new(secret: &[u8]) -> Self {
        CursorCodec {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn encode(&self, user_id: &str, c: &Cursor) -> String {
        let map =
            |m: &BTreeMap<StreamKey, Position>| m.iter().map(|(k, p)| (k.encode(), *p)).collect();
        let wire = Wire {
            v: 1,
            u: user_id.to_string(),
            w: c.watermark,
            s: map(&c.streams),
            r: map(&c.revoking),
            c: map(&c.created),
        };
        let json = serde_json::to_vec(&wire).expect("cursor serializes");
        let tag = hmac::sign(&self.key, &json);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Decodes a cursor; any tampering, other user's cursor or garbage → `invalid_cursor`.
    pub fn decode(&self, user_id: &str, s: &str) -> Result<Cursor, ApiError> {
        let bad = ApiError::invalid_cursor;
        let (body, tag) = s.split_once('.').ok_or_else(bad)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        hmac::verify(&self.key, &json, &tag).map_err(|_| bad())?;
        let wire: Wire = serde_json::from_slice(&json).map_err(|_| bad())?;
        if wire.v != 1 || wire.u != user_id {
            return Err(bad());
        }
        let map =
            |m: BTreeMap<String, Position>| -> Result<BTreeMap<StreamKey, Position>, ApiError> {
                m.into_iter()
                    .map(|(k, p)| Ok((StreamKey::decode(&k).ok_or_else(bad)?, p)))
                    .collect()
            };
        Ok(Cursor {
            streams: map(wire.s)?,
            revoking: map(wire.r)?,
            created: map(wire.c)?,
            watermark: wire.w,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_tampering_and_other_users() {
        let codec = CursorCodec::new(b"secret");
        let mut c = Cursor {
            watermark: Position(7, 0),
            ..Default::default()
        };
        c.streams
            .insert(StreamKey::new("user:alice", "tasks"), Position(5, 2));
        let filtered = StreamKey::filtered("team:x", "tasks", "0123abcd");
        c.streams.insert(filtered.clone(), Position(6, 0));
        c.created.insert(filtered, Position(4, 0));
        let s = codec.encode("alice", &c);
        assert_eq!(codec.decode("alice", &s).unwrap(), c);
        assert!(codec.decode("bob", &s).is_err());
        let mut forged = s.clone();
        forged.replace_range(0..1, if s.starts_with('e') { "f" } else { "e" });
        assert!(codec.decode("alice", &forged).is_err());
        assert!(CursorCodec::new(b"other").decode("alice", &s).is_err());
        assert!(codec.decode("alice", "garbage").is_err());
    }
}
