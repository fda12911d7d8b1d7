//! The filter language runs in two places: as SQL in the core (local queries,
//! and the eviction of rows a narrowed sync subscription no longer covers)
//! and as `Filter::matches` on the server (sync subscriptions, read-through).
//! A row the two judge differently would be evicted locally while the server
//! still sends it, or kept while the server evicts it. This property test
//! checks that both give the same rows for random rows and filters.

use ferry::{Filter, Query, Schema, Store, WriteOp};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("A"),
            Just("b"),
            Just("%"),
            Just("_"),
            Just("\\"),
            Just("é"),
            Just("É"),
            Just(" ")
        ],
        0..4,
    )
    .prop_map(|parts| parts.concat())
}

fn row() -> impl Strategy<Value = Map<String, Value>> {
    (
        text(),
        any::<bool>(),
        proptest::option::of(-3i64..4),
        proptest::option::of(text()),
    )
        .prop_map(|(title, done, priority, project)| {
            let mut m = Map::new();
            m.insert("title".into(), json!(title));
            m.insert("done".into(), json!(done));
            m.insert("priority".into(), json!(priority));
            m.insert("project".into(), json!(project));
            m
        })
}

/// A value for `column`, of its type, or null.
fn value_for(column: &'static str) -> BoxedStrategy<Value> {
    match column {
        "done" => any::<bool>().prop_map(Value::from).boxed(),
        "priority" => prop_oneof![
            (-3i64..4).prop_map(Value::from),
            (-6i64..8).prop_map(|h| json!(h as f64 / 2.0)),
        ]
        .boxed(),
        _ => text().prop_map(Value::from).boxed(),
    }
}

fn cond() -> impl Strategy<Value = Value> {
    let column = prop_oneof![
        Just("title"),
        Just("done"),
        Just("priority"),
        Just("project"),
        Just("id")
    ];
    let op = prop_oneof![
        Just("eq"),
        Just("ne"),
        Just("lt"),
        Just("lte"),
        Just("gt"),
        Just("gte"),
        Just("like"),
        Just("in"),
        Just("not_in"),
        Just("is_null"),
        Just("is_not_null")
    ];
    (column, op).prop_flat_map(|(column, op)| {
        let value: BoxedStrategy<Value> = match op {
            "is_null" | "is_not_null" => Just(Value::Null).boxed(),
            "in" | "not_in" => proptest::collection::vec(value_for(column), 0..3)
                .prop_map(Value::from)
                .boxed(),
            "like" => text().prop_map(Value::from).boxed(),
            _ => value_for(column),
        };
        value.prop_map(move |v| json!({"column": column, "op": op, "value": v}))
    })
}

fn filter() -> impl Strategy<Value = Value> {
    cond().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..3).prop_map(|fs| json!({"and": fs})),
            proptest::collection::vec(inner, 1..3).prop_map(|fs| json!({"or": fs})),
        ]
    })
}

fn ids(records: impl IntoIterator<Item = ferry::Record>) -> Vec<String> {
    let mut v: Vec<String> = records.into_iter().map(|r| r.id).collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("FERRY_PARITY_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn local_sql_and_server_matching_select_the_same_rows(
        rows in proptest::collection::vec(row(), 1..8),
        filter in filter(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::from_json(include_str!("../examples/tasks.schema.json")).unwrap();
        let store = Store::open(dir.path().join("p.db"), schema).unwrap();
        let ops = rows
            .into_iter()
            .enumerate()
            .map(|(i, mut fields)| {
                // Ids that differ in case and in `_`, for `like` on `id`.
                fields.insert("id".into(), json!(["a_1", "A_1", "ab1", "é%", "x"][i % 5].to_string() + &i.to_string()));
                WriteOp::Create { collection: "tasks".into(), fields }
            })
            .collect();
        store.write(ops).unwrap();
        let parsed = Filter::from_value(&filter).unwrap();
        let q = Query { filter: Some(parsed.clone()), ..Query::default() };
        // A filter the local schema refuses is refused on both sides, typed.
        let Ok(local) = store.query("tasks", &q) else {
            return Ok(());
        };
        let all = store.query("tasks", &Query::default()).unwrap();
        let server = all.into_iter().filter(|r| parsed.matches(&r.id, &r.fields));
        prop_assert_eq!(ids(local), ids(server), "filter {}", filter);
    }
}
