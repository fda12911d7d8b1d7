//! Collection definitions: parsing, validation and value checking.
//!
//! The app declares its collections once, in JSON, with the same shape on every
//! platform. This module turns that JSON into a validated [`Schema`] and checks
//! record values against it. It must never let an unchecked name reach SQL: every
//! collection, column and index name is a validated identifier, and names starting
//! with `_` (the core's bookkeeping) or equal to `id` are refused.

mod migrate;
mod typescript;

pub use migrate::{Migration, plan_migration};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, JsonKind, Result};

/// Largest string or JSON value a single column may hold, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest JSON document the core accepts in one call (a record or a batch).
pub const MAX_INPUT_BYTES: usize = 64 << 20;
/// Longest accepted record id, in bytes (the protocol's limit, which the server applies too).
pub const MAX_ID_BYTES: usize = ferry_protocol::MAX_RECORD_ID_BYTES;
const MAX_NAME_LEN: usize = 63;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    String,
    Number,
    Integer,
    Boolean,
    Json,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Number => "number",
            ColumnType::Integer => "integer",
            ColumnType::Boolean => "boolean",
            ColumnType::Json => "json",
        }
    }

    /// The SQLite declared type (and so its affinity).
    pub(crate) fn sql_type(self) -> &'static str {
        match self {
            ColumnType::String | ColumnType::Json => "TEXT",
            ColumnType::Number => "REAL",
            ColumnType::Integer | ColumnType::Boolean => "INTEGER",
        }
    }
}

/// One column of a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    #[serde(default)]
    pub nullable: bool,
    /// Value used on create when the field is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// A secondary index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub columns: Vec<String>,
    #[serde(default)]
    pub unique: bool,
}

impl Index {
    /// Deterministic SQL name of the index in `collection`.
    pub(crate) fn sql_name(&self, collection: &str) -> String {
        format!(
            "idx_{}_{}{}",
            collection,
            self.columns.join("_"),
            if self.unique { "_u" } else { "" }
        )
    }
}

/// Whether a collection takes part in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    #[default]
    Synced,
    LocalOnly,
}

/// A collection: one SQLite table of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    pub name: String,
    pub columns: Vec<Column>,
    #[serde(default)]
    pub indexes: Vec<Index>,
    #[serde(default)]
    pub sync: SyncMode,
    /// What this device keeps of a synced collection (docs/architecture.md,
    /// "Retention and the horizon"); none: everything synced stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// The `string` column that holds a record's scope, as the server's
    /// `scope_field` (null: the owner's own scope, `user:<id>`). Needed for a
    /// sync subscription to a scope of this collection, so that narrowing it
    /// can tell locally which rows it covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_column: Option<String>,
    /// When a pull publishes this collection: 0 first, to 3 (the default). A
    /// first sync publishes each priority as its own checkpoint, highest first
    /// (docs/architecture.md, "Priorities").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// A collection's local retention: synced rows past these limits are pruned
/// after each publish, oldest first by `column`. Pruning moves the
/// collection's horizon; a record with pending or quarantined mutations is
/// never pruned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// A `number` or `integer` column holding a time in milliseconds since the
    /// epoch (for `max_age_ms`), and the order of pruning: lowest first. Rows
    /// where it is null are never pruned.
    pub column: String,
    /// Prune rows whose `column` is older than this, on the store's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Keep at most this many live rows (pending ones count, and stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
}

impl Collection {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether the collection stays on this device (`"sync": "local"`): never
    /// pulled, pushed or tracked in the outbox.
    pub fn is_local_only(&self) -> bool {
        self.sync != SyncMode::Synced
    }

    pub(crate) fn unknown_column(&self, column: &str) -> Error {
        Error::UnknownColumn {
            collection: self.name.clone(),
            column: column.to_string(),
        }
    }

    /// Checks one value against its column, returning it in canonical form.
    pub fn check_value(&self, column: &Column, value: &Value) -> Result<()> {
        let wrong = || Error::WrongType {
            collection: self.name.clone(),
            column: column.name.clone(),
            expected: column.ty.as_str().to_string(),
            got: JsonKind(value).to_string(),
        };
        match (column.ty, value) {
            (_, Value::Null) if column.nullable => Ok(()),
            (_, Value::Null) => Err(Error::NullNotAllowed {
                collection: self.name.clone(),
                column: column.name.clone(),
            }),
            (ColumnType::String, Value::String(s)) => self.check_size(column, s.len()),
            (ColumnType::Number, Value::Number(_)) => Ok(()),
            (ColumnType::Integer, Value::Number(n)) if n.is_i64() => Ok(()),
            (ColumnType::Boolean, Value::Bool(_)) => Ok(()),
            (ColumnType::Json, v) => self.check_size(column, v.to_string().len()),
            _ => Err(wrong()),
        }
    }

    fn check_size(&self, column: &Column, size: usize) -> Result<()> {
        if size > MAX_VALUE_BYTES {
            return Err(Error::TooLarge {
                what: format!("value of `{}.{}`", self.name, column.name),
                size,
                limit: MAX_VALUE_BYTES,
            });
        }
        Ok(())
    }
}

/// The app's whole schema: a version and its collections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub version: u32,
    pub collections: Vec<Collection>,
}

impl Schema {
    /// Parses and validates a schema document.
    pub fn from_json(json: &str) -> Result<Schema> {
        let schema: Schema = serde_json::from_str(json)
            .map_err(|e| Error::InvalidSchema(format!("cannot parse schema JSON: {e}")))?;
        schema.validate()?;
        Ok(schema)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("schema serializes")
    }

    pub fn collection(&self, name: &str) -> Result<&Collection> {
        self.collections
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::UnknownCollection(name.to_string()))
    }

    /// Checks names, duplicates, defaults and indexes.
    pub fn validate(&self) -> Result<()> {
        if self.version == 0 {
            return Err(Error::InvalidSchema("version must be 1 or more".into()));
        }
        let mut seen = BTreeMap::new();
        for c in &self.collections {
            validate_name(&c.name)?;
            if seen.insert(c.name.as_str(), ()).is_some() {
                return Err(Error::InvalidSchema(format!(
                    "collection `{}` is declared twice",
                    c.name
                )));
            }
            let mut cols = BTreeMap::new();
            for col in &c.columns {
                validate_name(&col.name)?;
                if cols.insert(col.name.as_str(), ()).is_some() {
                    return Err(Error::InvalidSchema(format!(
                        "column `{}.{}` is declared twice",
                        c.name, col.name
                    )));
                }
                if let Some(d) = &col.default {
                    c.check_value(col, d).map_err(|e| {
                        Error::InvalidSchema(format!(
                            "bad default for `{}.{}`: {e}",
                            c.name, col.name
                        ))
                    })?;
                }
            }
            for idx in &c.indexes {
                if idx.columns.is_empty() {
                    return Err(Error::InvalidSchema(format!(
                        "an index of `{}` has no columns",
                        c.name
                    )));
                }
                for col in &idx.columns {
                    if c.column(col).is_none() {
                        return Err(c.unknown_column(col));
                    }
                }
            }
            if let Some(r) = &c.retention {
                validate_retention(c, r)?;
            }
            if let Some(sc) = &c.scope_column {
                validate_scope_column(c, sc)?;
            }
            if let Some(p) = c.priority
                && (p > ferry_protocol::LOWEST_PRIORITY || c.is_local_only())
            {
                return Err(Error::InvalidSchema(format!(
                    "the priority of `{}` is {p}: a synced collection takes 0 (first) to {}",
                    c.name,
                    ferry_protocol::LOWEST_PRIORITY
                )));
            }
        }
        Ok(())
    }
}

fn validate_scope_column(c: &Collection, name: &str) -> Result<()> {
    let col = c.column(name).ok_or_else(|| c.unknown_column(name))?;
    if c.is_local_only() || col.ty != ColumnType::String {
        return Err(Error::InvalidSchema(format!(
            "the scope column of `{}` must be a string column of a synced collection (`{name}` is a {} column{})",
            c.name,
            col.ty.as_str(),
            if c.is_local_only() {
                " of a local-only collection"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

fn validate_retention(c: &Collection, r: &Retention) -> Result<()> {
    let bad = |why: String| {
        Err(Error::InvalidSchema(format!(
            "the retention of `{}` {why}",
            c.name
        )))
    };
    if c.is_local_only() {
        return bad("is not allowed: the collection is local-only, and pruned rows would be lost (retention prunes only what the server keeps)".into());
    }
    let Some(col) = c.column(&r.column) else {
        return Err(c.unknown_column(&r.column));
    };
    if !matches!(col.ty, ColumnType::Number | ColumnType::Integer) {
        return bad(format!(
            "orders by `{}`, a {} column; it takes a number or integer column (a time in ms)",
            r.column,
            col.ty.as_str()
        ));
    }
    if r.max_age_ms.is_none() && r.max_rows.is_none() {
        return bad("sets no limit: give `max_age_ms`, `max_rows` or both".into());
    }
    if r.max_age_ms == Some(0) || r.max_age_ms.is_some_and(|a| a > i64::MAX as u64) {
        return bad("has a `max_age_ms` out of range (1 to 2^63-1)".into());
    }
    if r.max_rows.is_some_and(|n| n > i64::MAX as u64) {
        return bad("has a `max_rows` out of range (0 to 2^63-1)".into());
    }
    Ok(())
}

/// Refuses anything but a plain identifier, and the names the core reserves.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return bad("must start with a letter");
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return bad("only ASCII letters, digits and `_` are allowed");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 63 characters");
    }
    if name.starts_with('_') {
        return bad("names starting with `_` are reserved for Ferry's bookkeeping");
    }
    if name.eq_ignore_ascii_case("id") || name.to_ascii_lowercase().starts_with("sqlite") {
        return bad("reserved name");
    }
    Ok(())
}

/// Checks a client-supplied record id by the protocol's rule
/// ([`ferry_protocol::validate_record_id`]: 1 to [`MAX_ID_BYTES`] bytes, no control
/// characters, none of `' " \ / $`), so the server never rejects a record the core
/// created for its id.
pub fn validate_id(id: &str) -> Result<()> {
    ferry_protocol::validate_record_id(id).map_err(|e| Error::InvalidInput(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> Result<Schema> {
        Schema::from_json(&v.to_string())
    }

    #[test]
    fn reserved_and_unsafe_names_are_refused() {
        for bad in [
            "_status",
            "id",
            "a b",
            "x;drop table t",
            "",
            "1abc",
            "sqlite_master",
        ] {
            let r = schema(
                json!({"version":1,"collections":[{"name":"t","columns":[{"name":bad,"type":"string"}]}]}),
            );
            assert!(
                matches!(r, Err(Error::InvalidName { .. })),
                "{bad:?} was accepted: {r:?}"
            );
        }
        let r = schema(json!({"version":1,"collections":[{"name":"_ferry_outbox","columns":[]}]}));
        assert!(matches!(r, Err(Error::InvalidName { .. })));
    }

    #[test]
    fn bad_default_and_unknown_index_column_are_refused() {
        let r = schema(
            json!({"version":1,"collections":[{"name":"t","columns":[{"name":"n","type":"integer","default":"x"}]}]}),
        );
        assert!(matches!(r, Err(Error::InvalidSchema(_))), "{r:?}");
        let r = schema(
            json!({"version":1,"collections":[{"name":"t","columns":[],"indexes":[{"columns":["nope"]}]}]}),
        );
        assert!(matches!(r, Err(Error::UnknownColumn { .. })), "{r:?}");
    }

    #[test]
    fn a_bad_priority_or_scope_column_is_refused() {
        let one = |extra: Value, sync: &str| {
            let mut c = json!({"name":"t","sync":sync,"columns":[
                {"name":"team","type":"string","nullable":true},{"name":"n","type":"integer"}]});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            schema(json!({"version":1,"collections":[c]}))
        };
        assert!(one(json!({"priority": 0, "scope_column": "team"}), "synced").is_ok());
        for (extra, sync) in [
            (json!({"priority": 4}), "synced"),
            (json!({"priority": 0}), "local_only"),
            (json!({"scope_column": "n"}), "synced"),
            (json!({"scope_column": "team"}), "local_only"),
        ] {
            let r = one(extra.clone(), sync);
            assert!(
                matches!(r, Err(Error::InvalidSchema(_))),
                "{extra} {sync}: {r:?}"
            );
        }
        assert!(matches!(
            one(json!({"scope_column": "nope"}), "synced"),
            Err(Error::UnknownColumn { .. })
        ));
    }

    #[test]
    fn value_checks_name_the_column_and_types() {
        let s = schema(json!({"version":1,"collections":[{"name":"t","columns":[
            {"name":"n","type":"integer"},{"name":"s","type":"string","nullable":true}]}]}))
        .unwrap();
        let c = s.collection("t").unwrap();
        let n = c.column("n").unwrap();
        assert!(c.check_value(n, &json!(3)).is_ok());
        let e = c.check_value(n, &json!(3.5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrong type for `t.n`: expected integer, got number"
        );
        assert!(matches!(
            c.check_value(n, &Value::Null),
            Err(Error::NullNotAllowed { .. })
        ));
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(matches!(
            c.check_value(c.column("s").unwrap(), &json!(big)),
            Err(Error::TooLarge { .. })
        ));
    }
}
