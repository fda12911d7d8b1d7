//! The JSON shapes batches cross the boundary in, decoded into core [`WriteOp`]s.
//!
//! A mixed batch is a JSON array of
//! `{"op":"create"|"put","collection":C,"fields":{..}}`,
//! `{"op":"update","collection":C,"id":ID,"fields":{..}}` and
//! `{"op":"delete","collection":C,"id":ID}`. Per-collection batches are an array
//! of objects (or one object). Decoding only reshapes; validation is the core's.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::{Fields, WriteOp, check_input_size};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum OpJson {
    Create {
        collection: String,
        fields: Fields,
    },
    Put {
        collection: String,
        fields: Fields,
    },
    Update {
        collection: String,
        id: String,
        fields: Fields,
    },
    Delete {
        collection: String,
        id: String,
    },
}

/// A mixed batch (see the module docs).
pub(crate) fn batch(json: &str) -> Result<Vec<WriteOp>> {
    check_input_size(json.len())?;
    let ops: Vec<OpJson> = serde_json::from_str(json)?;
    Ok(ops
        .into_iter()
        .map(|op| match op {
            OpJson::Create { collection, fields } => WriteOp::Create { collection, fields },
            OpJson::Put { collection, fields } => WriteOp::Put { collection, fields },
            OpJson::Update {
                collection,
                id,
                fields,
            } => WriteOp::Update {
                collection,
                id,
                fields,
            },
            OpJson::Delete { collection, id } => WriteOp::Delete { collection, id },
        })
        .collect())
}

/// Objects of one collection: an array of objects, or one object.
fn objects(json: &str) -> Result<Vec<Fields>> {
    check_input_size(json.len())?;
    let items = match serde_json::from_str::<Value>(json)? {
        Value::Array(items) => items,
        other => vec![other],
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::Object(m) => Ok(m),
            other => Err(Error::InvalidInput(format!(
                "a record must be a JSON object, got {}",
                crate::error::JsonKind(&other)
            ))),
        })
        .collect()
}

pub(crate) fn creates(collection: &str, json: &str) -> Result<Vec<WriteOp>> {
    Ok(objects(json)?
        .into_iter()
        .map(|fields| WriteOp::Create {
            collection: collection.into(),
            fields,
        })
        .collect())
}

pub(crate) fn puts(collection: &str, json: &str) -> Result<Vec<WriteOp>> {
    WriteOp::puts_from_json(collection, json)
}

/// Updates: each object carries its `id` and the fields to change.
pub(crate) fn updates(collection: &str, json: &str) -> Result<Vec<WriteOp>> {
    objects(json)?
        .into_iter()
        .map(|mut fields| match fields.remove("id") {
            Some(Value::String(id)) => Ok(WriteOp::Update {
                collection: collection.into(),
                id,
                fields,
            }),
            _ => Err(Error::InvalidInput(
                "an update must carry the record's `id` as a string".into(),
            )),
        })
        .collect()
}

pub(crate) fn deletes(collection: &str, ids: Vec<String>) -> Vec<WriteOp> {
    ids.into_iter()
        .map(|id| WriteOp::Delete {
            collection: collection.into(),
            id,
        })
        .collect()
}

/// The records a batch wrote, as one JSON array (`null` for a delete).
pub(crate) fn written(records: Vec<Option<crate::Record>>) -> String {
    let rows: Vec<Value> = records
        .iter()
        .map(|r| r.as_ref().map_or(Value::Null, crate::Record::to_json))
        .collect();
    super::to_json(&rows)
}

/// Records as one JSON array of rows.
pub(crate) fn rows(records: &[crate::Record]) -> String {
    let rows: Vec<Value> = records.iter().map(crate::Record::to_json).collect();
    super::to_json(&rows)
}
