//! SQL injection through every name and value the core puts near SQL: the
//! collection, column and sort names are checked against the schema before
//! they are quoted into a statement, and values are bound as parameters. Each
//! attempt gets its typed error (or, for a value, no match), and the database
//! is unchanged after all of them.

mod support;

use ferry::{Error, Query, Store};
use serde_json::{Value, json};
use support::*;

fn query(store: &Store, collection: &str, q: Value) -> ferry::Result<Vec<ferry::Record>> {
    store.query(collection, &Query::from_value(&q)?)
}

/// The tables in the file, read by SQLite itself.
fn table_names(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn names_and_values_cannot_inject_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.db");
    let store = Store::open(&path, schema()).unwrap();
    store
        .put(
            "tasks",
            obj(json!({"id": "a", "title": "one", "priority": 1})),
        )
        .unwrap();
    let before = contents(&store, "tasks");
    let tables = table_names(&path);
    assert!(tables.contains(&"tasks".to_string()));

    const NAMES: [&str; 4] = [
        "title\" = '' OR 1=1 --",
        "tasks; DROP TABLE tasks",
        "title`) ; DELETE FROM tasks; --",
        "_ferry_outbox",
    ];
    for name in NAMES {
        // A collection name.
        assert!(
            matches!(store.get(name, "a"), Err(Error::UnknownCollection(_))),
            "{name}"
        );
        assert!(matches!(
            query(&store, name, json!({})),
            Err(Error::UnknownCollection(_))
        ));
        assert!(matches!(
            store.put(name, obj(json!({"id": "b"}))),
            Err(Error::UnknownCollection(_))
        ));
        // A column in a filter, a sort key, a written field.
        assert!(
            matches!(
                query(
                    &store,
                    "tasks",
                    json!({"where": {"column": name, "op": "eq", "value": 1}})
                ),
                Err(Error::UnknownColumn { .. })
            ),
            "{name}"
        );
        assert!(matches!(
            query(&store, "tasks", json!({"sort": [{"column": name}]})),
            Err(Error::UnknownColumn { .. })
        ));
        let mut fields = obj(json!({"id": "b"}));
        fields.insert(name.to_string(), json!("x"));
        assert!(
            matches!(store.put("tasks", fields), Err(Error::UnknownColumn { .. })),
            "{name}"
        );
    }
    // Values are bound: they match as values, nothing else.
    for value in ["' OR '1'='1", "one' --", "x'); DROP TABLE tasks; --"] {
        let rows = query(
            &store,
            "tasks",
            json!({"where": {"column": "title", "op": "eq", "value": value}}),
        )
        .unwrap();
        assert!(rows.is_empty(), "{value}");
        let rows = query(
            &store,
            "tasks",
            json!({"where": {"column": "title", "op": "in", "value": [value, "nope"]}}),
        )
        .unwrap();
        assert!(rows.is_empty());
    }
    // A value stored with quotes is stored as it is, and found by equality.
    let odd = "it's \"quoted\"; DROP TABLE tasks; --";
    store
        .put("tasks", obj(json!({"id": "q", "title": odd})))
        .unwrap();
    let rows = query(
        &store,
        "tasks",
        json!({"where": {"column": "title", "op": "eq", "value": odd}}),
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    store.delete("tasks", "q").unwrap();
    // Ids are checked by the protocol's rule (no quotes, no control characters).
    assert!(matches!(
        store.put("tasks", obj(json!({"id": "a'); DROP TABLE tasks; --"}))),
        Err(Error::InvalidInput(_))
    ));

    assert_eq!(table_names(&path), tables);
    assert_eq!(contents(&store, "tasks"), before, "nothing changed");
    assert_eq!(store.status().unwrap().records["tasks"], 1);
}
