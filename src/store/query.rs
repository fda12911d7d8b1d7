//! Queries: a small JSON filter language compiled to parameterised SQL.
//!
//! Values never reach SQL text — they are bound as parameters — and column names
//! are checked against the schema before they are quoted into the statement. The
//! bookkeeping column `_status` is exposed as the sync state (`pending`/`synced`)
//! and compiled to the exact predicate of the partial index that holds only
//! pending rows, so a pending query on a large, mostly synced table reads only those.

use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use super::records::{ToSql, quote};
use crate::error::{Error, JsonKind, Result};
use crate::schema::{Collection, Column, ColumnType};

pub use ferry_protocol::query::{Filter, Op, Query, Sort};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidQuery(msg.into())
}

/// An operator's SQL.
fn sql_of(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Lte => "<=",
        Op::Gt => ">",
        Op::Gte => ">=",
        Op::Like => "LIKE",
        Op::In => "IN",
        Op::NotIn => "NOT IN",
        Op::IsNull => "IS NULL",
        Op::IsNotNull => "IS NOT NULL",
    }
}

/// The columns a query may name besides the collection's own.
enum Target<'a> {
    Column(&'a Column),
    Id,
    Status,
    Timestamp(&'static str),
}

fn target<'a>(c: &'a Collection, name: &str) -> Result<Target<'a>> {
    match name {
        "id" => Ok(Target::Id),
        "_status" => Ok(Target::Status),
        "_created_at" => Ok(Target::Timestamp("_created_at")),
        "_updated_at" => Ok(Target::Timestamp("_updated_at")),
        _ => c
            .column(name)
            .map(Target::Column)
            .ok_or_else(|| c.unknown_column(name)),
    }
}

/// Compiled SQL: a `WHERE` body and an `ORDER BY ... LIMIT` tail, plus parameters.
pub(crate) struct Compiled {
    pub where_sql: String,
    pub tail_sql: String,
    pub params: Vec<SqlValue>,
}

/// Compiles `q` for collection `c`. Tombstones are always excluded.
pub(crate) fn compile(c: &Collection, q: &Query) -> Result<Compiled> {
    let mut params = Vec::new();
    let mut where_sql = String::from("_status <> 'deleted'");
    if let Some(f) = &q.filter {
        where_sql.push_str(" AND ");
        compile_filter(c, f, &mut where_sql, &mut params)?;
    }
    let mut tail_sql = String::new();
    if !q.sort.is_empty() {
        tail_sql.push_str(" ORDER BY ");
        for (i, s) in q.sort.iter().enumerate() {
            let col = match target(c, &s.column)? {
                Target::Column(col) if col.ty == ColumnType::Json => {
                    return Err(invalid(format!(
                        "cannot sort by json column `{}`",
                        col.name
                    )));
                }
                Target::Column(col) => quote(&col.name),
                Target::Id => "id".into(),
                Target::Status => "_status".into(),
                Target::Timestamp(t) => t.into(),
            };
            if i > 0 {
                tail_sql.push_str(", ");
            }
            tail_sql.push_str(&col);
            tail_sql.push_str(if s.desc { " DESC" } else { " ASC" });
        }
    }
    if q.limit.is_some() || q.offset.is_some() {
        tail_sql.push_str(" LIMIT ? OFFSET ?");
        params_push_count(&mut params, q.limit.map(|l| l as i64).unwrap_or(-1));
        params_push_count(&mut params, q.offset.unwrap_or(0) as i64);
    }
    Ok(Compiled {
        where_sql,
        tail_sql,
        params,
    })
}

fn params_push_count(params: &mut Vec<SqlValue>, n: i64) {
    params.push(SqlValue::Integer(n));
}

fn compile_filter(
    c: &Collection,
    f: &Filter,
    sql: &mut String,
    params: &mut Vec<SqlValue>,
) -> Result<()> {
    match f {
        Filter::And(items) | Filter::Or(items) => {
            if items.is_empty() {
                sql.push_str(if matches!(f, Filter::And(_)) {
                    "1"
                } else {
                    "0"
                });
                return Ok(());
            }
            let joiner = if matches!(f, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            sql.push('(');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    sql.push_str(joiner);
                }
                compile_filter(c, item, sql, params)?;
            }
            sql.push(')');
            Ok(())
        }
        Filter::Cond { column, op, value } => compile_cond(c, column, *op, value, sql, params),
    }
}

fn compile_cond(
    c: &Collection,
    column: &str,
    op: Op,
    value: &Value,
    sql: &mut String,
    params: &mut Vec<SqlValue>,
) -> Result<()> {
    let tgt = target(c, column)?;
    if let Target::Status = tgt {
        return compile_status(op, value, sql);
    }
    let (col_sql, ty) = match tgt {
        Target::Column(col) => (quote(&col.name), col.ty),
        Target::Id => ("id".to_string(), ColumnType::String),
        Target::Timestamp(t) => (t.to_string(), ColumnType::Integer),
        Target::Status => unreachable!("handled above"),
    };
    if matches!(op, Op::IsNull | Op::IsNotNull) {
        if !value.is_null() {
            return Err(invalid(format!("`{}` takes no value", sql_of(op))));
        }
        sql.push_str(&format!("{col_sql} {}", sql_of(op)));
        return Ok(());
    }
    if ty == ColumnType::Json {
        return Err(invalid(format!(
            "json column `{column}` can only be tested with is_null / is_not_null"
        )));
    }
    let check = |v: &Value| -> Result<SqlValue> {
        if v.is_null() {
            return Err(invalid(format!(
                "compare `{column}` with null using is_null / is_not_null"
            )));
        }
        let ok = match ty {
            ColumnType::String => v.is_string(),
            ColumnType::Number => v.is_number(),
            ColumnType::Integer => v.is_i64(),
            ColumnType::Boolean => v.is_boolean(),
            ColumnType::Json => false,
        };
        if !ok {
            return Err(Error::WrongType {
                collection: c.name.clone(),
                column: column.to_string(),
                expected: ty.as_str().to_string(),
                got: JsonKind(v).to_string(),
            });
        }
        Ok(v.to_sql(ty))
    };
    match op {
        Op::In | Op::NotIn => {
            let arr = value
                .as_array()
                .ok_or_else(|| invalid(format!("`{}` takes an array value", sql_of(op))))?;
            if arr.is_empty() {
                // Nothing is in an empty list; everything but null is outside it
                // (a condition on null is false, as in `Filter::matches`).
                match op {
                    Op::In => sql.push('0'),
                    _ => sql.push_str(&format!("{col_sql} IS NOT NULL")),
                }
                return Ok(());
            }
            sql.push_str(&format!("{col_sql} {} (", sql_of(op)));
            for (i, v) in arr.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push('?');
                params.push(check(v)?);
            }
            sql.push(')');
        }
        Op::Like => {
            if ty != ColumnType::String {
                return Err(invalid(format!(
                    "`like` needs a string column, `{column}` is {}",
                    ty.as_str()
                )));
            }
            sql.push_str(&format!("{col_sql} LIKE ? ESCAPE '\\'"));
            params.push(check(value)?);
        }
        _ => {
            sql.push_str(&format!("{col_sql} {} ?", sql_of(op)));
            params.push(check(value)?);
        }
    }
    Ok(())
}

/// `_status` speaks of sync state: `pending` (not yet pushed) or `synced`.
fn compile_status(op: Op, value: &Value, sql: &mut String) -> Result<()> {
    let state = value
        .as_str()
        .ok_or_else(|| invalid("`_status` takes \"pending\" or \"synced\""))?;
    let pending = match state {
        "pending" => true,
        "synced" => false,
        other => {
            return Err(invalid(format!(
                "`_status` is \"pending\" or \"synced\", not `{other}`"
            )));
        }
    };
    let want_pending = match op {
        Op::Eq => pending,
        Op::Ne => !pending,
        _ => return Err(invalid("`_status` supports eq and ne only")),
    };
    // `<> 'synced'` is exactly the predicate of the partial index on pending rows,
    // which is the only form SQLite will serve from that index.
    sql.push_str(if want_pending {
        "_status <> 'synced'"
    } else {
        "_status = 'synced'"
    });
    Ok(())
}
