//! `ferry put | delete | get | query`: records of one collection.

use clap::Args;
use ferry::{Error, Filter, Query, Record, Sort, WriteOp};
use serde_json::{Value, json};

use super::{Ctx, print_json};
use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The collection.
    collection: String,
    /// A record as a JSON object (with `id` to update an existing one), or an
    /// array of them, written in one transaction.
    json: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    collection: String,
    id: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    collection: String,
    id: String,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    collection: String,
    /// A filter: `{"column":C,"op":O,"value":V}`, or `{"and":[..]}` / `{"or":[..]}`.
    /// Operators: eq ne lt lte gt gte in not_in like is_null is_not_null.
    #[arg(long = "where", value_name = "JSON")]
    filter: Option<String>,
    /// Sort key, `COLUMN` or `COLUMN:desc`; repeat for more keys.
    #[arg(long, value_name = "COLUMN[:desc]")]
    sort: Vec<String>,
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    #[arg(long, value_name = "N")]
    offset: Option<u64>,
    /// Print `{"count": N}`, the number of matches (ignoring limit and offset).
    #[arg(long)]
    count: bool,
}

/// Prints the written record, or an array of them for an array input.
pub fn put(ctx: &Ctx, args: PutArgs) -> Result<(), Failure> {
    let ops = WriteOp::puts_from_json(&args.collection, &args.json)?;
    let batch = args.json.trim_start().starts_with('[');
    let store = ctx.open_existing()?;
    let written: Vec<Value> = store
        .write(ops)?
        .iter()
        .flatten()
        .map(Record::to_json)
        .collect();
    match (batch, written.as_slice()) {
        (false, [one]) => print_json(one),
        _ => print_json(&Value::Array(written)),
    }
}

pub fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<(), Failure> {
    let store = ctx.open_existing()?;
    store.delete(&args.collection, &args.id)?;
    print_json(&json!({ "collection": args.collection, "deleted": args.id }))
}

pub fn get(ctx: &Ctx, args: GetArgs) -> Result<(), Failure> {
    let store = ctx.open_existing()?;
    match store.get(&args.collection, &args.id)? {
        Some(r) => print_json(&r.to_json()),
        None => Err(Error::NotFound {
            collection: args.collection,
            id: args.id,
        }
        .into()),
    }
}

/// Prints the matching records as a JSON array, or `{"count": N}`.
pub fn query(ctx: &Ctx, args: QueryArgs) -> Result<(), Failure> {
    let filter = match &args.filter {
        None => None,
        Some(json) => {
            let v: Value = serde_json::from_str(json).map_err(Error::from)?;
            Some(Filter::from_value(&v).map_err(Error::from)?)
        }
    };
    let sort = args
        .sort
        .iter()
        .map(|s| parse_sort(s))
        .collect::<Result<Vec<_>, _>>()?;
    let q = Query {
        filter,
        sort,
        limit: args.limit,
        offset: args.offset,
    };
    let store = ctx.open_existing()?;
    if args.count {
        let n = store.count(&args.collection, &q)?;
        return print_json(&json!({ "count": n }));
    }
    let rows: Vec<Value> = store
        .query(&args.collection, &q)?
        .iter()
        .map(Record::to_json)
        .collect();
    print_json(&Value::Array(rows))
}

/// `COLUMN`, `COLUMN:asc` or `COLUMN:desc`.
fn parse_sort(s: &str) -> Result<Sort, Failure> {
    let (column, desc) = match s.rsplit_once(':') {
        None => (s, false),
        Some((c, "desc")) => (c, true),
        Some((c, "asc")) => (c, false),
        Some((_, other)) => {
            return Err(Failure::Usage(format!(
                "bad --sort `{s}`: the direction is `asc` or `desc`, not `{other}`"
            )));
        }
    };
    if column.is_empty() {
        return Err(Failure::Usage(format!("bad --sort `{s}`: no column")));
    }
    Ok(Sort {
        column: column.to_string(),
        desc,
    })
}
