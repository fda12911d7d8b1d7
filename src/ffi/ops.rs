//! The JSON shapes batches cross the boundary in, decoded into core [`WriteOp`]s.
//!
//! A mixed batch is a JSON array of
//! `{"op":"create"|"put","collection":C,"fields":{..}}`,
//! `{"op":"update","collection":C,"id":ID,"fields":{..}}` and
//! `{"op":"delete","collection":C,"id":ID}`. Per-collection batches are an array
//! of objects (or one object). Decoding only reshapes; validation is the core's.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::{WriteOp, records_from_json};

/// A mixed batch (see the module docs).
pub(crate) fn batch(json: &str) -> Result<Vec<WriteOp>> {
    WriteOp::batch_from_json(json)
}

pub(crate) fn creates(collection: &str, json: &str) -> Result<Vec<WriteOp>> {
    Ok(records_from_json(json)?
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
    records_from_json(json)?
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
