//! The fuzz targets' bodies on proptest's inputs, on stable: what CI runs of
//! the fuzzing (`fuzz/` runs them for minutes under libFuzzer, nightly). Inputs
//! are both raw bytes and JSON built to reach past the parser.

use ferry_fuzz_harness as h;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, a few levels deep, with the names the protocol uses.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just("tasks".to_string()),
            Just("title".to_string()),
            Just("id".to_string()),
            Just("eq".to_string()),
            Just("create".to_string()),
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("where".to_string()),
            Just("column".to_string()),
            Just("op".to_string()),
            Just("value".to_string()),
            Just("and".to_string()),
            Just("sort".to_string()),
            Just("limit".to_string()),
            Just("cursor".to_string()),
            Just("mutations".to_string()),
            Just("client_id".to_string()),
            Just("collection".to_string()),
            Just("record_id".to_string()),
            Just("fields".to_string()),
            Just("changes".to_string()),
            Just("collections".to_string()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Queries in the filter language, over the example schema's names and others.
fn query_json() -> impl Strategy<Value = Vec<u8>> {
    let column = prop_oneof![
        Just("id"),
        Just("title"),
        Just("done"),
        Just("priority"),
        Just("notes"),
        Just("project"),
        Just("name"),
        Just("body"),
        Just("meta"),
        Just("_status"),
        Just("_created_at"),
        Just("nope"),
        Just("title\" OR 1=1 --"),
    ];
    let op = prop_oneof![
        Just("eq"),
        Just("ne"),
        Just("lt"),
        Just("lte"),
        Just("gt"),
        Just("gte"),
        Just("in"),
        Just("not_in"),
        Just("like"),
        Just("is_null"),
        Just("is_not_null"),
        Just("near"),
    ];
    let cond = (column.clone(), op, json_value())
        .prop_map(|(c, o, v)| json!({"column": c, "op": o, "value": v}));
    let filter = cond.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|fs| json!({"and": fs})),
            prop::collection::vec(inner, 0..4).prop_map(|fs| json!({"or": fs})),
        ]
    });
    query_of(filter, column, 0u64..20, 0u64..5)
}

/// A query's JSON: an optional `where` from `filter`, up to two sort keys on
/// `column`, and an optional `limit` and `offset` from their ranges.
fn query_of(
    filter: impl Strategy<Value = Value>,
    column: impl Strategy<Value = &'static str>,
    limit: std::ops::Range<u64>,
    offset: std::ops::Range<u64>,
) -> impl Strategy<Value = Vec<u8>> {
    let sort = prop::collection::vec((column, any::<bool>()), 0..3).prop_map(|ks| {
        ks.into_iter()
            .map(|(c, d)| json!({"column": c, "desc": d}))
            .collect::<Vec<_>>()
    });
    (
        prop::option::of(filter),
        sort,
        prop::option::of(limit),
        prop::option::of(offset),
    )
        .prop_map(|(f, s, l, o)| {
            let mut q = json!({"sort": s});
            if let Some(f) = f {
                q["where"] = f;
            }
            if let Some(l) = l {
                q["limit"] = json!(l);
            }
            if let Some(o) = o {
                q["offset"] = json!(o);
            }
            serde_json::to_vec(&q).unwrap()
        })
}

/// Read-through queries over `tasks` that the server mostly accepts: typed
/// values for real columns, so answers carry rows the checks can look at.
fn fetch_query_json() -> impl Strategy<Value = Vec<u8>> {
    let typed = prop_oneof![
        (
            Just("title"),
            (0..8u8).prop_map(|i| json!(format!("task {i}")))
        ),
        (Just("title"), Just(json!("task%"))),
        (Just("done"), any::<bool>().prop_map(|b| json!(b))),
        (Just("archived"), any::<bool>().prop_map(|b| json!(b))),
        (Just("priority"), (0..5i64).prop_map(|i| json!(i))),
        (
            Just("id"),
            (0..30u8).prop_map(|i| json!(format!("seed-{i}")))
        ),
        (Just("id"), (0..8u8).prop_map(|i| json!(format!("bob-{i}")))),
    ];
    let op = prop_oneof![
        Just("eq"),
        Just("ne"),
        Just("lt"),
        Just("gte"),
        Just("in"),
        Just("not_in"),
        Just("like"),
        Just("is_null"),
        Just("is_not_null"),
    ];
    let cond = (typed, op).prop_map(|((c, v), o)| {
        let v = match o {
            "in" | "not_in" => json!([v]),
            "is_null" | "is_not_null" => Value::Null,
            _ => v,
        };
        json!({"column": c, "op": o, "value": v})
    });
    let filter = cond.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(|fs| json!({"and": fs})),
            prop::collection::vec(inner, 1..3).prop_map(|fs| json!({"or": fs})),
        ]
    });
    let sort_column = prop_oneof![Just("title"), Just("priority"), Just("done"), Just("id")];
    query_of(filter, sort_column, 1u64..10, 0u64..4)
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn protocol_decoders(data in input()) { h::protocol(&data) }

    #[test]
    fn cursor_decoder(data in input()) { h::cursor(&data) }

    #[test]
    fn query_parser_and_compiler(data in prop_oneof![input(), query_json()]) { h::query(&data) }

    #[test]
    fn schema_parser(data in input()) { h::schema(&data) }
}

proptest! {
    // Each case is a request through the router (and two full pulls for a push).
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn server_request_handlers(route in any::<u8>(), data in input()) {
        h::server_request(route, &data)
    }

    #[test]
    fn fetch_requests(
        collection in any::<u8>(),
        query in prop_oneof![1 => input(), 1 => query_json(), 4 => fetch_query_json()],
    ) {
        h::fetch_request(collection, &query)
    }
}
