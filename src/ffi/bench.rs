//! Typed-record variants of the batch calls, built only with the `ffi-bench`
//! feature, to measure typed records against one JSON string per batch
//! (`scripts/bench-ffi.sh`, results in `docs/ffi.md` and `docs/benchmarks.md`).
//! Not part of the shipped API.

use std::collections::HashMap;

use serde_json::Value;

use super::database::FerryDatabase;
use super::error::FerryError;
use crate::store::{Query, Record, WriteOp};

/// One column value, typed.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum FieldValue {
    Null,
    Bool { v: bool },
    Int { v: i64 },
    Real { v: f64 },
    Text { v: String },
    Json { v: String },
}

/// A record as a typed map of columns.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TypedRecord {
    pub id: String,
    pub fields: HashMap<String, FieldValue>,
}

#[uniffi::export]
impl FerryDatabase {
    /// `put` with typed records in and out.
    pub fn bench_put_typed(
        &self,
        collection: String,
        records: Vec<TypedRecord>,
    ) -> Result<Vec<TypedRecord>, FerryError> {
        let ops = records.into_iter().map(|r| put(&collection, r)).collect();
        Ok(self
            .store()?
            .write(ops)?
            .iter()
            .flatten()
            .map(typed)
            .collect())
    }

    /// `query` with typed records out.
    pub fn bench_query_typed(
        &self,
        collection: String,
        query_json: String,
    ) -> Result<Vec<TypedRecord>, FerryError> {
        let q = Query::from_json(&query_json)?;
        Ok(self
            .store()?
            .query(&collection, &q)?
            .iter()
            .map(typed)
            .collect())
    }
}

fn put(collection: &str, r: TypedRecord) -> WriteOp {
    let mut fields: crate::store::Fields =
        r.fields.into_iter().map(|(k, v)| (k, value(v))).collect();
    fields.insert("id".into(), Value::String(r.id));
    WriteOp::Put {
        collection: collection.into(),
        fields,
    }
}

fn value(v: FieldValue) -> Value {
    match v {
        FieldValue::Null => Value::Null,
        FieldValue::Bool { v } => Value::Bool(v),
        FieldValue::Int { v } => Value::from(v),
        FieldValue::Real { v } => Value::from(v),
        FieldValue::Text { v } => Value::String(v),
        FieldValue::Json { v } => serde_json::from_str(&v).unwrap_or(Value::Null),
    }
}

fn typed(r: &Record) -> TypedRecord {
    let row = r.to_json();
    let fields = row
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "id")
        .map(|(k, v)| {
            let t = match v {
                Value::Null => FieldValue::Null,
                Value::Bool(b) => FieldValue::Bool { v: *b },
                Value::Number(n) if n.is_i64() => FieldValue::Int {
                    v: n.as_i64().unwrap_or(0),
                },
                Value::Number(n) => FieldValue::Real {
                    v: n.as_f64().unwrap_or(0.0),
                },
                Value::String(s) => FieldValue::Text { v: s.clone() },
                other => FieldValue::Json {
                    v: other.to_string(),
                },
            };
            (k.clone(), t)
        })
        .collect();
    TypedRecord {
        id: r.id.clone(),
        fields,
    }
}

/// Medians in nanoseconds of the same facade calls made from Rust, so the
/// difference to the host's figures is the crossing alone.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct RustBaseline {
    pub get_ns: u64,
    pub status_ns: u64,
    pub put_json_ns: u64,
    pub query_json_ns: u64,
    pub put_typed_ns: u64,
    pub query_typed_ns: u64,
}

#[uniffi::export]
impl FerryDatabase {
    /// Runs each workload `rounds` times in Rust (`calls` calls per round for the
    /// per-call figures) and returns the medians per call / per batch.
    #[allow(clippy::too_many_arguments)]
    pub fn bench_rust_baseline(
        &self,
        collection: String,
        get_id: String,
        batch_json: String,
        batch_typed: Vec<TypedRecord>,
        query_json: String,
        rounds: u32,
        calls: u32,
    ) -> Result<RustBaseline, FerryError> {
        let per_call = |f: &dyn Fn() -> Result<(), FerryError>| -> Result<u64, FerryError> {
            median(rounds, || {
                for _ in 0..calls {
                    f()?;
                }
                Ok(())
            })
            .map(|ns| ns / calls.max(1) as u64)
        };
        Ok(RustBaseline {
            get_ns: per_call(&|| self.get(collection.clone(), get_id.clone()).map(drop))?,
            status_ns: per_call(&|| self.status().map(drop))?,
            put_json_ns: median(rounds, || {
                self.put(collection.clone(), batch_json.clone()).map(drop)
            })?,
            query_json_ns: median(rounds, || {
                self.query(collection.clone(), query_json.clone()).map(drop)
            })?,
            put_typed_ns: median(rounds, || {
                self.bench_put_typed(collection.clone(), batch_typed.clone())
                    .map(drop)
            })?,
            query_typed_ns: median(rounds, || {
                self.bench_query_typed(collection.clone(), query_json.clone())
                    .map(drop)
            })?,
        })
    }
}

fn median(rounds: u32, f: impl Fn() -> Result<(), FerryError>) -> Result<u64, FerryError> {
    let mut ns = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds.max(1) {
        let t = std::time::Instant::now();
        f()?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    Ok(ns[ns.len() / 2])
}
