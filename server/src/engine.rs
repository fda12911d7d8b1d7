//! What a mutation means: validation against the collection config, scope and
//! access checks, conflict detection, and the change-index entries a write produces.
//!
//! Pure functions with no I/O, shared by both storage backends so they cannot
//! disagree. [`decide`] must never approve a write into a scope the caller cannot
//! access, nor a row that does not match its collection's fields.

use ferry_protocol::{
    Fields, MutationOutcome, Op, RejectCode, ServerRecord, record_digest, validate_record_id,
};
use serde_json::Value;

use crate::auth::{Caller, OWNER_SCOPE_PREFIX};
use crate::config::{CollectionConfig, FieldType, ServerConfig};
use crate::storage::{ChangeKind, CurrentRow, PlannedMutation, Precondition, TotalDelta};

/// The row a write stores.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    pub scope: String,
    pub version: u64,
    pub deleted: bool,
    pub fields: Fields,
    /// The write creates the record (sets `created_at`).
    pub created: bool,
}

/// The verdict on one mutation against the locked current row.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Store `row`, set the change-index entries in order, adjust totals.
    Write {
        row: NewRow,
        changes: Vec<(String, ChangeKind)>,
        totals: Vec<TotalDelta>,
        outcome: MutationOutcome,
    },
    /// Write nothing; the outcome is final (rejected, or a WatermelonDB no-op).
    NoWrite { outcome: MutationOutcome },
    /// Write nothing; the client must rebase. Never remembered for idempotency.
    Conflict { outcome: MutationOutcome },
}

impl Decision {
    /// Whether the outcome is stored under the mutation id (applied and rejected are
    /// final; conflicts depend on the row and are evaluated afresh on retry).
    pub fn remembered(&self) -> bool {
        !matches!(self, Decision::Conflict { .. })
    }
}

fn reject(code: RejectCode, message: impl Into<String>) -> Decision {
    Decision::NoWrite {
        outcome: MutationOutcome::Rejected {
            code,
            message: message.into(),
        },
    }
}

fn conflict(id: &str, cur: &CurrentRow) -> Decision {
    let server_record = (!cur.deleted).then(|| ServerRecord {
        id: id.to_string(),
        version: cur.version,
        fields: cur.fields.clone(),
    });
    Decision::Conflict {
        outcome: MutationOutcome::Conflict {
            server_record,
            deleted: cur.deleted,
        },
    }
}

/// Whether a row with these fields is synced to clients (not excluded by a rule).
pub fn in_view(coll: &CollectionConfig, fields: &Fields) -> bool {
    !coll.sync_rules.iter().any(|r| r.excludes(fields))
}

/// Validates `fields` against the collection. `complete` (a create) also requires
/// every non-nullable field.
pub fn validate_fields(
    coll: &CollectionConfig,
    fields: &Fields,
    complete: bool,
) -> Result<(), String> {
    for (name, value) in fields {
        let Some(f) = coll.fields.get(name) else {
            return Err(format!("unknown field {name:?}"));
        };
        if value.is_null() {
            if f.nullable {
                continue;
            }
            return Err(format!("field {name:?} must not be null"));
        }
        let ok = match f.ty {
            FieldType::String => value.is_string(),
            FieldType::Number => value.is_number(),
            FieldType::Integer => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|x| x.fract() == 0.0)
            }
            FieldType::Boolean => value.is_boolean(),
            FieldType::Json => true,
        };
        if !ok {
            return Err(format!("field {name:?} must be of type {:?}", f.ty).to_lowercase());
        }
        if let Some(max) = f.max_length {
            let len = match value {
                Value::String(s) => s.len(),
                other => other.to_string().len(),
            };
            if len > max {
                return Err(format!(
                    "field {name:?} is {len} bytes, over its limit of {max}"
                ));
            }
        }
    }
    if complete
        && let Some((name, _)) = coll
            .fields
            .iter()
            .find(|(n, f)| !f.nullable && !fields.contains_key(*n))
    {
        return Err(format!("missing required field {name:?}"));
    }
    Ok(())
}

/// The scope a row with `fields` lives in.
fn scope_of(
    coll: &CollectionConfig,
    fields: &Fields,
    current: Option<&CurrentRow>,
    caller: &Caller,
) -> String {
    if let Some(Value::String(s)) = coll.scope_field.as_ref().and_then(|f| fields.get(f)) {
        return s.clone();
    }
    match current {
        Some(cur) if cur.scope.starts_with(OWNER_SCOPE_PREFIX) => cur.scope.clone(),
        _ => caller.owner_scope(),
    }
}

/// The answer to a mutation of a record in a scope the caller cannot access:
/// the answer an unknown id gets, so that no answer tells a foreign record from a
/// missing one (docs/protocol.md, "Foreign ids"). Only a create differs, because
/// the id is taken: it gets the answer a create of one's own existing id gets.
fn foreign(m: &PlannedMutation) -> Decision {
    match (m.op, m.lenient) {
        (Op::Delete, true) => Decision::NoWrite {
            outcome: MutationOutcome::Applied { version: 0 },
        },
        (Op::Update | Op::Delete, false) => reject(RejectCode::NotFound, NOT_FOUND),
        // A lenient update of a missing id creates it, so the id being taken
        // is what stops this one.
        (Op::Create, _) | (Op::Update, true) => reject(RejectCode::AlreadyExists, EXISTS),
    }
}

const NOT_FOUND: &str = "no record with this id";
const EXISTS: &str = "a record with this id already exists";

fn precondition_holds(p: Precondition, cur: &CurrentRow) -> bool {
    match p {
        Precondition::None => true,
        Precondition::BaseVersion(v) => v == cur.version,
        Precondition::UnchangedSince(since) => cur.changed_at < since,
    }
}

/// Decides one mutation against the current (locked) row.
pub fn decide(
    config: &ServerConfig,
    caller: &Caller,
    m: &PlannedMutation,
    current: Option<&CurrentRow>,
) -> Decision {
    let Some(coll) = config.collections.get(&m.collection) else {
        return reject(
            RejectCode::UnknownCollection,
            format!("unknown collection {:?}", m.collection),
        );
    };
    // The rule the core applies before it creates a record (ferry-protocol's).
    if let Err(e) = validate_record_id(&m.record_id) {
        return reject(RejectCode::InvalidRecord, e.to_string());
    }
    if let Some(cur) = current
        && !caller.can_access(&cur.scope)
    {
        return foreign(m);
    }
    let op = match (m.op, current, m.lenient) {
        (Op::Create, Some(cur), true) if !cur.deleted => Op::Update,
        (Op::Update, None, true) => Op::Create,
        (op, _, _) => op,
    };
    match op {
        Op::Create => {
            if let Some(cur) = current {
                return if m.lenient {
                    conflict(&m.record_id, cur)
                } else {
                    reject(RejectCode::AlreadyExists, EXISTS)
                };
            }
            if let Err(e) = validate_fields(coll, &m.fields, true) {
                return reject(RejectCode::InvalidRecord, e);
            }
            let mut fields = m.fields.clone();
            for name in coll.fields.keys() {
                fields.entry(name.clone()).or_insert(Value::Null);
            }
            write(coll, caller, &m.record_id, None, fields, false)
        }
        Op::Update => {
            let Some(cur) = current else {
                return reject(RejectCode::NotFound, NOT_FOUND);
            };
            if cur.deleted || !precondition_holds(m.precondition, cur) {
                return conflict(&m.record_id, cur);
            }
            if let Err(e) = validate_fields(coll, &m.fields, false) {
                return reject(RejectCode::InvalidRecord, e);
            }
            let mut fields = cur.fields.clone();
            fields.extend(m.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            write(coll, caller, &m.record_id, Some(cur), fields, false)
        }
        Op::Delete => match current {
            None if m.lenient => Decision::NoWrite {
                outcome: MutationOutcome::Applied { version: 0 },
            },
            None => reject(RejectCode::NotFound, NOT_FOUND),
            Some(cur) if cur.deleted && m.lenient => Decision::NoWrite {
                outcome: MutationOutcome::Applied {
                    version: cur.version,
                },
            },
            Some(cur) if cur.deleted || !precondition_holds(m.precondition, cur) => {
                conflict(&m.record_id, cur)
            }
            Some(cur) => write(coll, caller, &m.record_id, Some(cur), Fields::new(), true),
        },
    }
}

fn write(
    coll: &CollectionConfig,
    caller: &Caller,
    id: &str,
    current: Option<&CurrentRow>,
    fields: Fields,
    deleted: bool,
) -> Decision {
    let scope = match current {
        Some(cur) if deleted => cur.scope.clone(),
        _ => scope_of(coll, &fields, current, caller),
    };
    if !caller.can_access(&scope) {
        return reject(
            RejectCode::Forbidden,
            format!("you cannot write to scope {scope:?}"),
        );
    }
    // A shared record stays shared: moving it into a private scope would evict
    // it from every other member, on the word of any one of them.
    if let Some(cur) = current
        && !cur.scope.starts_with(OWNER_SCOPE_PREFIX)
        && scope.starts_with(OWNER_SCOPE_PREFIX)
    {
        return reject(
            RejectCode::Forbidden,
            "a shared record cannot be moved into a private scope",
        );
    }
    let synced = !deleted && in_view(coll, &fields);
    let mut changes = Vec::new();
    let mut totals = Vec::new();
    if let Some(cur) = current {
        if cur.scope != scope {
            changes.push((cur.scope.clone(), ChangeKind::Evict));
        }
        if !cur.deleted && in_view(coll, &cur.fields) {
            totals.push(TotalDelta {
                scope: cur.scope.clone(),
                count: -1,
                digest: record_digest(id, cur.version),
            });
        }
    }
    let kind = match (deleted, synced) {
        (true, _) => ChangeKind::Delete,
        (false, true) => ChangeKind::Upsert,
        (false, false) => ChangeKind::Evict,
    };
    changes.push((scope.clone(), kind));
    let version = current.map_or(1, |c| c.version + 1);
    if synced {
        let digest = record_digest(id, version);
        match totals.iter_mut().find(|t| t.scope == scope) {
            Some(t) => {
                t.count += 1;
                t.digest ^= digest;
            }
            None => totals.push(TotalDelta {
                scope: scope.clone(),
                count: 1,
                digest,
            }),
        }
    }
    // An update in place leaves the count but changes the digest.
    totals.retain(|t| t.count != 0 || t.digest != 0);
    totals.sort_by(|a, b| a.scope.cmp(&b.scope));
    Decision::Write {
        row: NewRow {
            scope,
            version,
            deleted,
            fields,
            created: current.is_none(),
        },
        changes,
        totals,
        outcome: MutationOutcome::Applied { version },
    }
}
