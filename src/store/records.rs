//! Records: conversion between JSON fields and typed SQLite columns.
//!
//! Every collection is a real table: `id`, the declared columns, then the
//! bookkeeping columns `_status` (synced/created/updated/deleted), `_changed` (the
//! columns changed since the last sync, as a JSON array), `_version` (the server
//! version the row is based on) and `_created_at`/`_updated_at` (local ms). This
//! module must never build SQL from a value; only validated names are quoted in.

use rusqlite::Row;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::schema::{Collection, ColumnType};

pub type Fields = Map<String, Value>;

/// The bookkeeping columns after the declared ones, in `SELECT` order.
pub(crate) const BOOKKEEPING: &str = "_status, _changed, _version, _created_at, _updated_at";

/// Local sync status of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    /// Matches the server version in `_version` (or: a local-only collection).
    Synced,
    /// Created locally, not yet confirmed by the server.
    Created,
    /// Changed locally since `_version`.
    Updated,
    /// Deleted locally; the tombstone stays until the delete is pushed.
    Deleted,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Synced => "synced",
            RecordStatus::Created => "created",
            RecordStatus::Updated => "updated",
            RecordStatus::Deleted => "deleted",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "synced" => RecordStatus::Synced,
            "created" => RecordStatus::Created,
            "updated" => RecordStatus::Updated,
            "deleted" => RecordStatus::Deleted,
            other => return Err(Error::Internal(format!("bad _status `{other}`"))),
        })
    }

    pub fn is_pending(self) -> bool {
        self != RecordStatus::Synced
    }
}

/// A record as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub fields: Fields,
    pub status: RecordStatus,
    /// Columns changed locally since the last sync.
    pub changed: Vec<String>,
    /// Server version this record is based on; `None` if never synced.
    pub version: Option<u64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Record {
    /// The JSON row handed to apps: `id`, the columns, `_status` as `pending` or
    /// `synced`, and `_version`.
    pub fn to_json(&self) -> Value {
        self.clone().into_json()
    }

    /// [`Self::to_json`] without copying the fields: they become the row.
    pub fn into_json(self) -> Value {
        let mut m = self.fields;
        m.insert("id".into(), Value::String(self.id));
        let status = if self.status.is_pending() {
            "pending"
        } else {
            "synced"
        };
        m.insert("_status".into(), Value::String(status.into()));
        m.insert(
            "_version".into(),
            self.version.map(Value::from).unwrap_or(Value::Null),
        );
        Value::Object(m)
    }
}

/// Quotes a validated identifier for SQL.
pub(crate) fn quote(name: &str) -> String {
    debug_assert!(!name.contains('"'));
    format!("\"{name}\"")
}

/// `SELECT` list of a collection: id, columns, bookkeeping.
pub(crate) fn select_list(c: &Collection) -> String {
    select_list_of(c, "")
}

/// [`select_list`] with every column qualified by `prefix` (e.g. `"s."`).
pub(crate) fn select_list_of(c: &Collection, prefix: &str) -> String {
    let mut s = format!("{prefix}id");
    for col in &c.columns {
        s.push_str(&format!(", {prefix}{}", quote(&col.name)));
    }
    for b in BOOKKEEPING.split(", ") {
        s.push_str(&format!(", {prefix}{b}"));
    }
    s
}

/// JSON value to a bound SQL value, for a column of type `ty`. The value has been
/// checked against the column already.
pub(crate) trait ToSql {
    fn to_sql(&self, ty: ColumnType) -> SqlValue;
}

impl ToSql for Value {
    fn to_sql(&self, ty: ColumnType) -> SqlValue {
        match (ty, self) {
            (_, Value::Null) => SqlValue::Null,
            (ColumnType::Json, v) => SqlValue::Text(v.to_string()),
            (_, Value::String(s)) => SqlValue::Text(s.clone()),
            (_, Value::Bool(b)) => SqlValue::Integer(*b as i64),
            (ColumnType::Integer, Value::Number(n)) => SqlValue::Integer(n.as_i64().unwrap_or(0)),
            (_, Value::Number(n)) => SqlValue::Real(n.as_f64().unwrap_or(0.0)),
            (_, v) => SqlValue::Text(v.to_string()),
        }
    }
}

/// Binds a checked value for a column of type `ty`, borrowing text instead of
/// copying it (a bulk write binds every value of every row).
pub(crate) fn bind(v: Option<&Value>, ty: ColumnType) -> ToSqlOutput<'_> {
    match (ty, v) {
        (_, None | Some(Value::Null)) => ToSqlOutput::Borrowed(ValueRef::Null),
        (ColumnType::Json, Some(v)) => ToSqlOutput::Owned(SqlValue::Text(v.to_string())),
        (_, Some(Value::String(s))) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        (_, Some(v)) => ToSqlOutput::Owned(v.to_sql(ty)),
    }
}

fn column_to_json(ty: ColumnType, v: ValueRef<'_>) -> Result<Value> {
    Ok(match (ty, v) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnType::Boolean, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (ColumnType::Integer, ValueRef::Integer(i)) => Value::from(i),
        (ColumnType::Number, ValueRef::Integer(i)) => Value::from(i as f64),
        (ColumnType::Number, ValueRef::Real(f)) => Value::from(f),
        (ColumnType::String, ValueRef::Text(t)) => {
            Value::String(String::from_utf8_lossy(t).into_owned())
        }
        (ColumnType::Json, ValueRef::Text(t)) => serde_json::from_slice(t)
            .map_err(|e| Error::Internal(format!("stored json does not parse: {e}")))?,
        (ty, other) => {
            return Err(Error::Internal(format!(
                "column of type {} holds {:?}",
                ty.as_str(),
                other.data_type()
            )));
        }
    })
}

/// A SQL expression that builds a row's fields as a JSON object, each value
/// exactly as [`column_to_json`] reads it (`prefix` qualifies the columns). The
/// functions it calls are registered on the writer by `conn::open_writer`.
pub(crate) fn json_object_sql(c: &Collection, prefix: &str) -> String {
    let pairs: Vec<String> = c
        .columns
        .iter()
        .map(|col| {
            let v = format!("{prefix}{}", quote(&col.name));
            let value = match col.ty {
                ColumnType::String | ColumnType::Integer => v,
                ColumnType::Boolean => format!(
                    "json(CASE WHEN {v} IS NULL THEN NULL WHEN {v} THEN 'true' ELSE 'false' END)"
                ),
                // SQLite's own JSON keeps 15 digits of a real: not enough.
                ColumnType::Number => format!("json(ferry_json_number({v}))"),
                ColumnType::Json => format!("json({v})"),
            };
            // Column names are plain identifiers (see `schema`): no quote inside.
            format!("'{}', {value}", col.name)
        })
        .collect();
    format!("json_object({})", pairs.join(", "))
}

/// Reads a row selected with [`select_list`].
pub(crate) fn read_record(c: &Collection, row: &Row<'_>) -> Result<Record> {
    let id: String = row.get(0)?;
    let mut fields = Map::with_capacity(c.columns.len());
    for (i, col) in c.columns.iter().enumerate() {
        fields.insert(
            col.name.clone(),
            column_to_json(col.ty, row.get_ref(i + 1)?)?,
        );
    }
    let n = c.columns.len() + 1;
    let status: String = row.get(n)?;
    let changed: Option<String> = row.get(n + 1)?;
    let version: Option<i64> = row.get(n + 2)?;
    Ok(Record {
        id,
        fields,
        status: RecordStatus::parse(&status)?,
        changed: match changed {
            Some(s) => serde_json::from_str(&s)
                .map_err(|e| Error::Internal(format!("bad _changed: {e}")))?,
            None => Vec::new(),
        },
        version: version.map(|v| v as u64),
        created_at: row.get(n + 3)?,
        updated_at: row.get(n + 4)?,
    })
}

/// Validates a fields object: known columns, right types, size limits. `id` is
/// allowed and returned separately.
pub(crate) fn check_fields(c: &Collection, fields: &Fields) -> Result<()> {
    for (k, v) in fields {
        if k == "id" {
            continue;
        }
        let col = c.column(k).ok_or_else(|| c.unknown_column(k))?;
        c.check_value(col, v)?;
    }
    Ok(())
}

/// Fills a create's absent columns from defaults (or null where nullable).
pub(crate) fn complete_for_create(c: &Collection, fields: &mut Fields) -> Result<()> {
    for col in &c.columns {
        if !fields.contains_key(&col.name) {
            let v = match &col.default {
                Some(d) => d.clone(),
                None if col.nullable => Value::Null,
                None => {
                    return Err(Error::NullNotAllowed {
                        collection: c.name.clone(),
                        column: col.name.clone(),
                    });
                }
            };
            fields.insert(col.name.clone(), v);
        }
    }
    Ok(())
}

/// Normalises a value the way it reads back from SQLite (numbers of a `number`
/// column become floats), so events carry exactly what a later read returns.
pub(crate) fn normalise(c: &Collection, fields: &mut Fields) {
    for col in &c.columns {
        if col.ty == ColumnType::Number
            && let Some(v) = fields.get_mut(&col.name)
            && let Some(f) = v.as_f64()
        {
            *v = Value::from(f);
        }
    }
}

/// A server row's fields as this app's schema holds them: the fields the schema
/// does not know (from a newer server) left out, absent ones from defaults.
/// Fails when the row does not fit the schema.
pub(crate) fn server_fields(c: &Collection, id: &str, mut fields: Fields) -> Result<Fields> {
    crate::schema::validate_id(id)?;
    fields.retain(|k, _| c.column(k).is_some());
    check_fields(c, &fields)?;
    complete_for_create(c, &mut fields)?;
    normalise(c, &mut fields);
    Ok(fields)
}

/// Takes a JSON object out of a value, or says what it was instead.
pub(crate) fn into_object(v: Value, what: &str) -> Result<Fields> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(Error::InvalidInput(format!(
            "{what} must be a JSON object, got {}",
            crate::error::JsonKind(&other)
        ))),
    }
}
