//! The query filter language, shared by the core (which compiles it to SQL over
//! the local database) and by a backend's read-through endpoint (`/v1/fetch`,
//! which evaluates it over stored records with [`Filter::matches`]).
//!
//! `{"where": filter, "sort": [{"column": c, "desc": bool}], "limit": n, "offset": n}`,
//! where a filter is `{"and": [..]}`, `{"or": [..]}` or
//! `{"column": c, "op": o, "value": v}`. docs/protocol.md has the semantics.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// A query that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The text is not JSON.
    #[error("{0}")]
    Malformed(String),
    /// JSON that is not a query of this language.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> QueryError {
    QueryError::Invalid(msg.into())
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    NotIn,
    Like,
    IsNull,
    IsNotNull,
}

impl Op {
    pub fn parse(s: &str) -> Result<Op, QueryError> {
        Ok(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "not_in" => Op::NotIn,
            "like" => Op::Like,
            "is_null" => Op::IsNull,
            "is_not_null" => Op::IsNotNull,
            other => {
                return Err(invalid(format!(
                    "unknown operator `{other}` (eq, ne, lt, lte, gt, gte, in, not_in, like, is_null, is_not_null)"
                )));
            }
        })
    }

    /// The operator's name in the language.
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Like => "like",
            Op::IsNull => "is_null",
            Op::IsNotNull => "is_not_null",
        }
    }
}

/// A filter tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Cond {
        column: String,
        op: Op,
        value: Value,
    },
}

/// One sort key.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    pub column: String,
    pub desc: bool,
}

/// A whole query: filter, sort and paging.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort: Vec<Sort>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

impl Filter {
    /// Parses `{"and":[..]}`, `{"or":[..]}` or `{"column":c,"op":o,"value":v}`.
    pub fn from_value(v: &Value) -> Result<Filter, QueryError> {
        let obj = v.as_object().ok_or_else(|| {
            invalid(format!(
                "a filter must be an object, got {}",
                crate::json_kind(v)
            ))
        })?;
        let list = |key: &str, items: &Value| -> Result<Vec<Filter>, QueryError> {
            let arr = items
                .as_array()
                .ok_or_else(|| invalid(format!("`{key}` takes an array of filters")))?;
            arr.iter().map(Filter::from_value).collect()
        };
        if let Some(items) = obj.get("and") {
            return Ok(Filter::And(list("and", items)?));
        }
        if let Some(items) = obj.get("or") {
            return Ok(Filter::Or(list("or", items)?));
        }
        for key in obj.keys() {
            if !matches!(key.as_str(), "column" | "op" | "value") {
                return Err(invalid(format!("unexpected key `{key}` in a filter")));
            }
        }
        let column = obj
            .get("column")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a condition needs a `column` string"))?;
        let op = Op::parse(
            obj.get("op")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a condition needs an `op` string"))?,
        )?;
        Ok(Filter::Cond {
            column: column.to_string(),
            op,
            value: obj.get("value").cloned().unwrap_or(Value::Null),
        })
    }

    /// Every condition of the tree, depth first.
    pub fn conditions(&self) -> Vec<(&str, Op, &Value)> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(f) = stack.pop() {
            match f {
                Filter::And(items) | Filter::Or(items) => stack.extend(items.iter().rev()),
                Filter::Cond { column, op, value } => out.push((column.as_str(), *op, value)),
            }
        }
        out
    }

    /// Whether a record matches, with the SQL semantics the core gives the same
    /// filter: a condition on a missing or null value is false (except
    /// `is_null`), numbers compare as numbers, strings by their bytes, `like`
    /// is case-insensitive with `%`, `_` and `\` escapes, and values of
    /// different types are never equal nor ordered. `column` `id` is the id.
    pub fn matches(&self, id: &str, fields: &Map<String, Value>) -> bool {
        match self {
            Filter::And(items) => items.iter().all(|f| f.matches(id, fields)),
            Filter::Or(items) => items.iter().any(|f| f.matches(id, fields)),
            Filter::Cond { column, op, value } => {
                let id_value;
                let field = if column == "id" {
                    id_value = Value::String(id.to_string());
                    Some(&id_value)
                } else {
                    fields.get(column)
                };
                let field = field.filter(|v| !v.is_null());
                match (op, field) {
                    (Op::IsNull, f) => f.is_none(),
                    (Op::IsNotNull, f) => f.is_some(),
                    (_, None) => false,
                    (Op::In, Some(f)) => {
                        list(value).any(|v| compare(f, v) == Some(Ordering::Equal))
                    }
                    (Op::NotIn, Some(f)) => {
                        list(value).all(|v| compare(f, v).is_some_and(|o| o != Ordering::Equal))
                    }
                    (Op::Like, Some(Value::String(s))) => value.as_str().is_some_and(|p| {
                        like::ILike::<true>::ilike(s.as_str(), p).unwrap_or(false)
                    }),
                    (Op::Like, Some(_)) => false,
                    (op, Some(f)) => compare(f, value).is_some_and(|o| match op {
                        Op::Eq => o == Ordering::Equal,
                        Op::Ne => o != Ordering::Equal,
                        Op::Lt => o == Ordering::Less,
                        Op::Lte => o != Ordering::Greater,
                        Op::Gt => o == Ordering::Greater,
                        Op::Gte => o != Ordering::Less,
                        _ => unreachable!("handled above"),
                    }),
                }
            }
        }
    }
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The order of two non-null values of one type; `None` across types.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Query {
    /// Parses a query from JSON text.
    pub fn from_json(json: &str) -> Result<Query, QueryError> {
        let v: Value =
            serde_json::from_str(json).map_err(|e| QueryError::Malformed(e.to_string()))?;
        Query::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<Query, QueryError> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("a query must be a JSON object"))?;
        let mut q = Query::default();
        for (k, val) in obj {
            match k.as_str() {
                "where" => q.filter = Some(Filter::from_value(val)?),
                "sort" => {
                    let arr = val
                        .as_array()
                        .ok_or_else(|| invalid("`sort` takes an array"))?;
                    for s in arr {
                        let column = s
                            .get("column")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("a sort key needs a `column` string"))?;
                        let desc = match s.get("desc") {
                            None => false,
                            Some(Value::Bool(b)) => *b,
                            Some(_) => return Err(invalid("`desc` must be a boolean")),
                        };
                        q.sort.push(Sort {
                            column: column.to_string(),
                            desc,
                        });
                    }
                }
                "limit" => q.limit = Some(as_count("limit", val)?),
                "offset" => q.offset = Some(as_count("offset", val)?),
                other => return Err(invalid(format!("unknown query key `{other}`"))),
            }
        }
        Ok(q)
    }

    /// The order of two records under the query's sort keys, then by id (SQL's
    /// order for nulls: first when ascending).
    pub fn order(
        &self,
        a: (&str, &Map<String, Value>),
        b: (&str, &Map<String, Value>),
    ) -> Ordering {
        let get = |(id, fields): (&str, &Map<String, Value>), column: &str| {
            if column == "id" {
                Some(Value::String(id.to_string()))
            } else {
                fields.get(column).filter(|v| !v.is_null()).cloned()
            }
        };
        for s in &self.sort {
            let o = match (get(a, &s.column), get(b, &s.column)) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(x), Some(y)) => compare(&x, &y).unwrap_or(Ordering::Equal),
            };
            let o = if s.desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.0.cmp(b.0)
    }
}

fn as_count(key: &str, v: &Value) -> Result<u64, QueryError> {
    v.as_u64()
        .ok_or_else(|| invalid(format!("`{key}` must be a non-negative integer")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn matches(filter: Value, fields: Value) -> bool {
        Filter::from_value(&filter)
            .unwrap()
            .matches("r1", &rec(fields))
    }

    #[test]
    fn conditions_follow_sql_semantics() {
        let c = |op: &str, v: Value| json!({"column": "n", "op": op, "value": v});
        assert!(
            matches(c("eq", json!(2)), json!({"n": 2.0})),
            "numbers as numbers"
        );
        assert!(matches(c("lt", json!(3)), json!({"n": 2})));
        assert!(
            !matches(c("lt", json!("3")), json!({"n": 2})),
            "no order across types"
        );
        assert!(
            !matches(c("ne", json!(1)), json!({"n": null})),
            "null is never compared"
        );
        assert!(
            !matches(c("ne", json!(1)), json!({})),
            "nor a missing field"
        );
        assert!(matches(c("is_null", Value::Null), json!({"n": null})));
        assert!(matches(c("in", json!([1, 2])), json!({"n": 2})));
        assert!(!matches(c("not_in", json!([1, 2])), json!({"n": 2})));
        assert!(matches(c("not_in", json!([1])), json!({"n": 2})));
        let like = |p: &str, s: &str| {
            matches(
                json!({"column": "t", "op": "like", "value": p}),
                json!({"t": s}),
            )
        };
        assert!(like("buy%", "Buy milk"), "case-insensitive");
        assert!(like("b_y milk", "buy milk"));
        assert!(!like("100\\%", "1000"), "an escaped % is a literal");
        assert!(like("100\\%", "100%"));
        let id = json!({"column": "id", "op": "eq", "value": "r1"});
        assert!(matches(id, json!({})));
        let tree = json!({"or": [{"and": []}, c("eq", json!(9))]});
        assert!(matches(tree, json!({})), "an empty and is true");
        assert!(
            !matches(json!({"or": []}), json!({})),
            "an empty or is false"
        );
    }

    #[test]
    fn order_sorts_by_keys_then_id_with_nulls_first() {
        let q = Query::from_value(&json!({"sort": [{"column": "n", "desc": true}]})).unwrap();
        let (a, b, c) = (rec(json!({"n": 1})), rec(json!({"n": 2})), rec(json!({})));
        let mut rows = [("a", &a), ("b", &b), ("c", &c), ("d", &b)];
        rows.sort_by(|x, y| q.order(*x, *y));
        let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
        assert_eq!(ids, ["b", "d", "a", "c"]);
    }

    #[test]
    fn bad_queries_are_typed_errors() {
        assert!(matches!(
            Query::from_json("{"),
            Err(QueryError::Malformed(_))
        ));
        for bad in [
            json!([]),
            json!({"where": {"column": "x", "op": "near"}}),
            json!({"limit": -1}),
            json!({"sort": [{"column": "x", "desc": "yes"}]}),
            json!({"nope": 1}),
        ] {
            assert!(
                matches!(Query::from_value(&bad), Err(QueryError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
