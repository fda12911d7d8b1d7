use std::sync::Arc;
use std::sync::mpsc::channel;

use ferry_protocol::Op;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::*;
use crate::events::ChangeEvent;

pub(crate) fn schema() -> Schema {
    Schema::from_json(include_str!("../../examples/tasks.schema.json")).unwrap()
}

pub(crate) fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("t.db"), schema()).unwrap();
    (dir, store)
}

pub(crate) fn obj(v: Value) -> Fields {
    records::into_object(v, "test").unwrap()
}

/// Marks a record as synced at `version`, as a push result would.
pub(crate) fn mark_synced(store: &Store, collection: &str, id: &str, version: u64) {
    store
        .write_tx(ChangeSource::Remote, |w| {
            let c = w.schema.collection(collection)?;
            let mut r = w.load(c, id)?.unwrap();
            r.status = RecordStatus::Synced;
            r.changed.clear();
            r.version = Some(version);
            w.replace_row(c, &r)?;
            w.tx.execute("DELETE FROM _ferry_outbox WHERE record_id = ?1", [id])?;
            Ok(())
        })
        .unwrap();
}

/// Everything in the database, to prove that a failed call wrote nothing.
fn snapshot(store: &Store) -> (Vec<Value>, Vec<OutboxEntry>) {
    let mut rows = Vec::new();
    for c in ["tasks", "projects", "drafts"] {
        rows.extend(
            store
                .query(c, &Query::default())
                .unwrap()
                .iter()
                .map(Record::to_json),
        );
    }
    (rows, store.outbox().unwrap())
}

#[test]
fn create_generates_uuid_v7_fills_defaults_and_queues_a_create() {
    let (_d, s) = open();
    let r = s.create("tasks", obj(json!({"title": "a"}))).unwrap();
    let id = uuid::Uuid::parse_str(&r.id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(r.fields["done"], json!(false));
    assert_eq!(r.fields["priority"], Value::Null);
    assert_eq!(r.status, RecordStatus::Created);
    let got = s.get("tasks", &r.id).unwrap().unwrap();
    assert_eq!(got, r);
    assert_eq!(got.to_json()["_status"], "pending");
    let ob = s.outbox().unwrap();
    assert_eq!(ob.len(), 1);
    assert_eq!(ob[0].op, Op::Create);
    assert_eq!(ob[0].fields["title"], "a");
    assert_eq!(ob[0].base_version, None);
}

#[test]
fn create_with_existing_id_is_already_exists() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "x"}))).unwrap();
    let e = s.create("tasks", obj(json!({"id": "x"}))).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
}

#[test]
fn update_records_changed_columns_and_base_version() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "t", "title": "a"})))
        .unwrap();
    mark_synced(&s, "tasks", "t", 4);
    let r = s
        .update("tasks", "t", obj(json!({"title": "b", "done": false})))
        .unwrap();
    // `done` did not change, so only `title` is recorded.
    assert_eq!(r.changed, vec!["title".to_string()]);
    assert_eq!(r.status, RecordStatus::Updated);
    let ob = s.outbox().unwrap();
    assert_eq!(ob.len(), 1);
    assert_eq!(ob[0].op, Op::Update);
    assert_eq!(ob[0].fields, obj(json!({"title": "b"})));
    assert_eq!(ob[0].base_version, Some(4));
}

#[test]
fn create_then_update_coalesces_into_one_create() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "t", "title": "a"})))
        .unwrap();
    s.update("tasks", "t", obj(json!({"priority": 2}))).unwrap();
    let ob = s.outbox().unwrap();
    assert_eq!(ob.len(), 1);
    assert_eq!(ob[0].op, Op::Create);
    assert_eq!(ob[0].fields["title"], "a");
    assert_eq!(ob[0].fields["priority"], 2);
}

#[test]
fn create_then_delete_leaves_nothing_to_push_and_no_row() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "t"}))).unwrap();
    s.delete("tasks", "t").unwrap();
    assert!(s.outbox().unwrap().is_empty());
    assert!(
        s.read(|c| load(c, s.collection("tasks")?, "t"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn update_then_delete_becomes_a_delete_and_keeps_a_tombstone() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "t"}))).unwrap();
    mark_synced(&s, "tasks", "t", 1);
    s.update("tasks", "t", obj(json!({"title": "x"}))).unwrap();
    s.delete("tasks", "t").unwrap();
    let ob = s.outbox().unwrap();
    assert_eq!(ob.len(), 1);
    assert_eq!(ob[0].op, Op::Delete);
    assert_eq!(ob[0].base_version, Some(1));
    assert!(
        s.get("tasks", "t").unwrap().is_none(),
        "tombstone is hidden"
    );
    let tomb = s
        .read(|c| load(c, s.collection("tasks")?, "t"))
        .unwrap()
        .unwrap();
    assert_eq!(tomb.status, RecordStatus::Deleted);
    let e = s
        .update("tasks", "t", obj(json!({"title": "y"})))
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }));
}

#[test]
fn local_only_collections_never_enter_the_outbox() {
    let (_d, s) = open();
    let r = s
        .create("drafts", obj(json!({"body": "x", "meta": {"k": [1]}})))
        .unwrap();
    s.update("drafts", &r.id, obj(json!({"body": "y"})))
        .unwrap();
    assert_eq!(
        s.get("drafts", &r.id).unwrap().unwrap().fields["meta"],
        json!({"k": [1]})
    );
    s.delete("drafts", &r.id).unwrap();
    assert!(s.outbox().unwrap().is_empty());
}

#[test]
fn a_batch_with_one_bad_write_writes_nothing() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "keep"}))).unwrap();
    let before = snapshot(&s);
    let ops = vec![
        WriteOp::Create {
            collection: "tasks".into(),
            fields: obj(json!({"id": "a"})),
        },
        WriteOp::Update {
            collection: "tasks".into(),
            id: "keep".into(),
            fields: obj(json!({"title": "changed"})),
        },
        WriteOp::Create {
            collection: "tasks".into(),
            fields: obj(json!({"priority": "high"})),
        },
    ];
    let e = s.write(ops).unwrap_err();
    assert!(matches!(e, Error::WrongType { .. }), "{e}");
    assert_eq!(snapshot(&s), before);
}

#[test]
fn every_bad_input_is_a_typed_error_and_writes_nothing() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "keep"}))).unwrap();
    let before = snapshot(&s);
    type Case = (&'static str, &'static str, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        ("tasks", "{\"title\": ", |e| {
            matches!(e, Error::MalformedJson(_))
        }),
        ("tasks", "[1]", |e| matches!(e, Error::InvalidInput(_))),
        ("nope", "{\"title\":\"a\"}", |e| {
            matches!(e, Error::UnknownCollection(_))
        }),
        ("tasks", "{\"colour\":\"red\"}", |e| {
            matches!(e, Error::UnknownColumn { .. })
        }),
        ("tasks", "{\"done\":\"yes\"}", |e| {
            matches!(e, Error::WrongType { .. })
        }),
        ("tasks", "{\"priority\":1.5}", |e| {
            matches!(e, Error::WrongType { .. })
        }),
        ("tasks", "{\"title\":null}", |e| {
            matches!(e, Error::NullNotAllowed { .. })
        }),
        ("tasks", "{\"id\":7}", |e| {
            matches!(e, Error::InvalidInput(_))
        }),
        ("tasks", "{\"id\":\"\"}", |e| {
            matches!(e, Error::InvalidInput(_))
        }),
        ("projects", "{}", |e| {
            matches!(e, Error::NullNotAllowed { .. })
        }),
    ];
    for (collection, json, want) in cases {
        let r = WriteOp::puts_from_json(collection, json).and_then(|ops| s.write(ops));
        let e = r.expect_err(json);
        assert!(want(&e), "{collection} {json}: {e}");
        assert_eq!(snapshot(&s), before, "{json} changed the database");
    }
    let big = json!({"title": "x".repeat(crate::schema::MAX_VALUE_BYTES + 1)}).to_string();
    let e = WriteOp::puts_from_json("tasks", &big)
        .and_then(|ops| s.write(ops))
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    let huge = " ".repeat(crate::schema::MAX_INPUT_BYTES + 1);
    let e = WriteOp::puts_from_json("tasks", &huge).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert_eq!(snapshot(&s), before);
}

#[test]
fn put_creates_then_updates() {
    let (_d, s) = open();
    let ops = WriteOp::puts_from_json(
        "tasks",
        r#"[{"id":"a","title":"1"},{"id":"a","title":"2"}]"#,
    )
    .unwrap();
    s.write(ops).unwrap();
    assert_eq!(s.get("tasks", "a").unwrap().unwrap().fields["title"], "2");
    assert_eq!(s.outbox().unwrap().len(), 1);
}

fn seed(s: &Store) {
    let rows = json!([
        {"id": "1", "title": "alpha", "done": false, "priority": 1, "project": "p"},
        {"id": "2", "title": "beta", "done": true, "priority": 3, "project": "p"},
        {"id": "3", "title": "gamma", "done": false, "priority": null, "project": "q"},
        {"id": "4", "title": "delta", "done": true, "priority": 2},
    ]);
    s.write(WriteOp::puts_from_json("tasks", &rows.to_string()).unwrap())
        .unwrap();
}

fn ids(s: &Store, q: Value) -> Vec<String> {
    s.query("tasks", &Query::from_value(&q).unwrap())
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn queries_filter_sort_and_page() {
    let (_d, s) = open();
    seed(&s);
    let c = |col: &str, op: &str, v: Value| json!({"column": col, "op": op, "value": v});
    assert_eq!(
        ids(
            &s,
            json!({"where": c("done", "eq", json!(true)), "sort": [{"column": "id"}]})
        ),
        ["2", "4"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"where": c("priority", "gte", json!(2)), "sort": [{"column": "priority", "desc": true}]})
        ),
        ["2", "4"]
    );
    assert_eq!(
        ids(&s, json!({"where": c("priority", "lt", json!(2))})),
        ["1"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"where": c("priority", "lte", json!(2)), "sort": [{"column": "id"}]})
        ),
        ["1", "4"]
    );
    assert_eq!(
        ids(&s, json!({"where": c("priority", "gt", json!(2))})),
        ["2"]
    );
    assert_eq!(
        ids(&s, json!({"where": c("project", "ne", json!("p"))})),
        ["3"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"where": c("id", "in", json!(["1", "3", "9"])), "sort": [{"column": "id"}]})
        ),
        ["1", "3"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"where": c("id", "not_in", json!(["1", "3"])), "sort": [{"column": "id"}]})
        ),
        ["2", "4"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"where": c("title", "like", json!("%ta")), "sort": [{"column": "id"}]})
        ),
        ["2", "4"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"where": {"column": "priority", "op": "is_null"}})
        ),
        ["3"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"where": {"column": "project", "op": "is_not_null"}, "sort": [{"column": "id"}]})
        ),
        ["1", "2", "3"]
    );
    let or = json!({"or": [c("project", "eq", json!("q")), {"and": [c("done", "eq", json!(true)), c("priority", "eq", json!(2))]}]});
    assert_eq!(
        ids(&s, json!({"where": or, "sort": [{"column": "id"}]})),
        ["3", "4"]
    );
    assert_eq!(
        ids(
            &s,
            json!({"sort": [{"column": "id", "desc": true}], "limit": 2, "offset": 1})
        ),
        ["3", "2"]
    );
    let q =
        Query::from_value(&json!({"where": c("done", "eq", json!(false)), "limit": 1})).unwrap();
    assert_eq!(s.count("tasks", &q).unwrap(), 2);
}

#[test]
fn query_errors_are_typed() {
    let (_d, s) = open();
    let bad = |q: Value| s.query("tasks", &Query::from_value(&q)?);
    assert!(matches!(
        bad(json!({"where": {"column": "nope", "op": "eq", "value": 1}})),
        Err(Error::UnknownColumn { .. })
    ));
    assert!(matches!(
        bad(json!({"where": {"column": "done", "op": "eq", "value": "x"}})),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        bad(json!({"where": {"column": "done", "op": "eq", "value": null}})),
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        bad(json!({"where": {"column": "done", "op": "near", "value": 1}})),
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        bad(json!({"where": {"column": "done", "op": "in", "value": 1}})),
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        bad(json!({"where": {"column": "priority", "op": "like", "value": 1}})),
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        bad(json!({"sort": [{"column": "nope"}]})),
        Err(Error::UnknownColumn { .. })
    ));
    assert!(matches!(
        bad(json!({"limit": -1})),
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        bad(json!({"bogus": 1})),
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        s.query("nope", &Query::default()),
        Err(Error::UnknownCollection(_))
    ));
}

#[test]
fn pending_filter_uses_the_partial_index() {
    let (_d, s) = open();
    seed(&s);
    mark_synced(&s, "tasks", "1", 1);
    let q =
        Query::from_value(&json!({"where": {"column": "_status", "op": "eq", "value": "pending"}}))
            .unwrap();
    let got: Vec<String> = s
        .query("tasks", &q)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got.len(), 3);
    assert!(!got.contains(&"1".to_string()));
    let c = s.collection("tasks").unwrap();
    let compiled = query::compile(c, &q).unwrap();
    let plan: String = s
        .read(|conn| {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE {}",
                compiled.where_sql
            );
            let mut st = conn.prepare(&sql)?;
            let rows = st.query_map([], |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("; "))
        })
        .unwrap();
    assert!(plan.contains("_ferry_tasks_pending"), "plan: {plan}");
    let synced =
        Query::from_value(&json!({"where": {"column": "_status", "op": "eq", "value": "synced"}}))
            .unwrap();
    assert_eq!(s.query("tasks", &synced).unwrap().len(), 1);
}

#[test]
fn one_event_per_transaction_with_all_its_changes() {
    let (_d, s) = open();
    let events: Arc<Mutex<Vec<ChangeEvent>>> = Arc::default();
    let sink = events.clone();
    let _sub = s.add_change_listener(Arc::new(move |e: &ChangeEvent| sink.lock().push(e.clone())));
    s.create("tasks", obj(json!({"id": "x"}))).unwrap();
    let ops = vec![
        WriteOp::Create {
            collection: "tasks".into(),
            fields: obj(json!({"id": "a"})),
        },
        WriteOp::Create {
            collection: "projects".into(),
            fields: obj(json!({"id": "p", "name": "P"})),
        },
        WriteOp::Update {
            collection: "tasks".into(),
            id: "a".into(),
            fields: obj(json!({"title": "t"})),
        },
        WriteOp::Delete {
            collection: "tasks".into(),
            id: "x".into(),
        },
    ];
    s.write(ops).unwrap();
    s.flush_events();
    let ev = events.lock().clone();
    assert_eq!(ev.len(), 2);
    let batch = &ev[1];
    assert_eq!(batch.source, ChangeSource::Local);
    let tasks = batch.collection("tasks").unwrap();
    assert_eq!(
        tasks.upserted.len(),
        1,
        "a's create and update fold into one row"
    );
    assert_eq!(tasks.upserted[0]["title"], "t");
    assert_eq!(tasks.deleted, vec!["x".to_string()]);
    assert_eq!(batch.collection("projects").unwrap().upserted.len(), 1);
}

#[test]
fn events_are_delivered_after_commit_outside_the_writer_lock() {
    let (_d, s) = open();
    let (tx, rx) = channel();
    let reader = s.clone();
    let _sub = s.add_change_listener(Arc::new(move |e: &ChangeEvent| {
        let id = e.changes[0].upserted[0]["id"].as_str().unwrap().to_string();
        // Committed: visible to a reader. Not under the lock: a write succeeds.
        let seen = reader.get("tasks", &id).unwrap().is_some();
        let wrote = reader.create("drafts", Fields::new()).is_ok();
        let _ = tx.send((seen, wrote));
    }));
    s.create("tasks", obj(json!({"id": "a"}))).unwrap();
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(),
        (true, true)
    );
}

#[test]
fn a_panicking_listener_does_not_stop_others_or_the_store() {
    let (_d, s) = open();
    let _bad = s.add_change_listener(Arc::new(|_: &ChangeEvent| panic!("listener bug")));
    let count = Arc::new(Mutex::new(0));
    let c2 = count.clone();
    let _good = s.add_change_listener(Arc::new(move |_: &ChangeEvent| *c2.lock() += 1));
    s.create("tasks", Fields::new()).unwrap();
    s.create("tasks", Fields::new()).unwrap();
    s.flush_events();
    assert_eq!(*count.lock(), 2);
}

#[test]
fn dropping_a_listener_handle_unregisters_it() {
    let (_d, s) = open();
    let count = Arc::new(Mutex::new(0));
    let c2 = count.clone();
    let sub = s.add_change_listener(Arc::new(move |_: &ChangeEvent| *c2.lock() += 1));
    s.create("tasks", Fields::new()).unwrap();
    s.flush_events();
    drop(sub);
    s.create("tasks", Fields::new()).unwrap();
    s.flush_events();
    assert_eq!(*count.lock(), 1);
}

#[test]
fn observed_query_gets_initial_and_new_results() {
    let (_d, s) = open();
    seed(&s);
    // Let the seed's event go by first: an observer registered while it is being
    // delivered may (harmlessly) get one extra identical result.
    s.flush_events();
    let results: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let sink = results.clone();
    let q = Query::from_value(&json!({"where": {"column": "done", "op": "eq", "value": true}, "sort": [{"column": "id"}]})).unwrap();
    let _sub = s
        .observe(
            "tasks",
            q,
            Arc::new(move |rows: &[Value]| {
                sink.lock().push(
                    rows.iter()
                        .map(|r| r["id"].as_str().unwrap().to_string())
                        .collect(),
                )
            }),
        )
        .unwrap();
    s.flush_events();
    s.update("tasks", "1", obj(json!({"done": true}))).unwrap();
    s.create("drafts", Fields::new()).unwrap(); // other collection: no re-run
    s.flush_events();
    let got = results.lock().clone();
    assert_eq!(got.first().unwrap(), &vec!["2", "4"]);
    assert_eq!(got.last().unwrap(), &vec!["1", "2", "4"]);
    assert_eq!(got.len(), 2, "{got:?}");
}

#[test]
fn readers_do_not_wait_for_an_open_write_transaction() {
    let (_d, s) = open();
    s.create("tasks", obj(json!({"id": "a"}))).unwrap();
    let (entered_tx, entered_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let w = s.clone();
    let t = std::thread::spawn(move || {
        w.write_tx(ChangeSource::Local, |wr| {
            wr.create("tasks", obj(json!({"id": "b"})))?;
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(())
        })
        .unwrap();
    });
    entered_rx.recv().unwrap();
    // The writer holds an open transaction: reads proceed and see the last commit.
    assert!(s.get("tasks", "a").unwrap().is_some());
    assert!(s.get("tasks", "b").unwrap().is_none());
    release_tx.send(()).unwrap();
    t.join().unwrap();
    assert!(s.get("tasks", "b").unwrap().is_some());
}

#[test]
fn get_many_keeps_the_order_asked_and_skips_missing() {
    let (_d, s) = open();
    seed(&s);
    let got: Vec<String> = s
        .get_many("tasks", &["3".into(), "nope".into(), "1".into()])
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, ["3", "1"]);
}

mod migrations {
    use super::*;

    fn with(f: impl FnOnce(&mut Value)) -> Schema {
        let mut v: Value =
            serde_json::from_str(include_str!("../../examples/tasks.schema.json")).unwrap();
        f(&mut v);
        Schema::from_json(&v.to_string()).unwrap()
    }

    #[test]
    fn a_newer_schema_adds_columns_collections_and_indexes_keeping_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let s = Store::open(&path, schema()).unwrap();
        s.create("tasks", obj(json!({"id": "a", "title": "kept"})))
            .unwrap();
        drop(s);
        let v2 = with(|v| {
            v["version"] = json!(2);
            let cols = v["collections"][0]["columns"].as_array_mut().unwrap();
            cols.push(json!({"name": "estimate", "type": "number", "default": 1.5}));
            v["collections"][0]["indexes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"columns": ["estimate"]}));
            v["collections"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "tags", "columns": [{"name": "label", "type": "string"}]}));
        });
        let s = Store::open(&path, v2).unwrap();
        let a = s.get("tasks", "a").unwrap().unwrap();
        assert_eq!(a.fields["title"], "kept");
        assert_eq!(a.fields["estimate"], json!(1.5));
        s.create("tags", obj(json!({"label": "x"}))).unwrap();
        drop(s);
        // Reopening with the stored schema works, and knows the new collection.
        assert_eq!(Store::open_existing(&path).unwrap().schema().version, 2);
    }

    #[test]
    fn incompatible_changes_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let s = Store::open(&path, schema()).unwrap();
        s.create("tasks", obj(json!({"id": "a", "notes": "n"})))
            .unwrap();
        drop(s);
        let retyped = with(|v| {
            v["version"] = json!(2);
            v["collections"][0]["columns"][2]["type"] = json!("string");
        });
        assert!(matches!(
            Store::open(&path, retyped),
            Err(Error::IncompatibleSchema(_))
        ));
        let dropped_in_use = with(|v| {
            v["version"] = json!(2);
            v["collections"][0]["columns"]
                .as_array_mut()
                .unwrap()
                .retain(|c| c["name"] != "notes");
            v["collections"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "extra", "columns": []}));
        });
        assert!(matches!(
            Store::open(&path, dropped_in_use),
            Err(Error::IncompatibleSchema(_))
        ));
        let unchanged = with(|v| {
            v["collections"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "extra", "columns": []}));
        });
        assert!(matches!(
            Store::open(&path, unchanged),
            Err(Error::IncompatibleSchema(_))
        ));
        let s = Store::open_existing(&path).unwrap();
        assert_eq!(
            s.schema(),
            &schema(),
            "the failed migrations rolled back entirely"
        );
        assert!(matches!(
            s.collection("extra"),
            Err(Error::UnknownCollection(_))
        ));
        assert_eq!(s.get("tasks", "a").unwrap().unwrap().fields["notes"], "n");
    }

    #[test]
    fn dropping_an_empty_column_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        Store::open(&path, schema())
            .unwrap()
            .create("tasks", obj(json!({"id": "a"})))
            .unwrap();
        let v2 = with(|v| {
            v["version"] = json!(2);
            v["collections"][0]["columns"]
                .as_array_mut()
                .unwrap()
                .retain(|c| c["name"] != "notes");
        });
        let s = Store::open(&path, v2).unwrap();
        assert!(
            !s.get("tasks", "a")
                .unwrap()
                .unwrap()
                .fields
                .contains_key("notes")
        );
    }

    #[test]
    fn a_new_database_without_a_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open_existing(dir.path().join("x.db")),
            Err(Error::InvalidSchema(_))
        ));
    }
}

#[test]
fn a_mixed_batch_parses_each_op_and_refuses_unknown_shapes() {
    let ops = WriteOp::batch_from_json(
        r#"[{"op":"create","collection":"tasks","fields":{"id":"a"}},
            {"op":"update","collection":"tasks","id":"a","fields":{"title":"t"}},
            {"op":"put","collection":"tasks","fields":{"id":"b"}},
            {"op":"delete","collection":"tasks","id":"b"}]"#,
    )
    .unwrap();
    assert!(matches!(&ops[1], WriteOp::Update { id, .. } if id == "a"));
    assert!(matches!(&ops[3], WriteOp::Delete { id, .. } if id == "b"));
    for bad in [
        r#"[{"op":"upsert","collection":"tasks","fields":{}}]"#,
        r#"[{"op":"delete","collection":"tasks","id":"x","extra":1}]"#,
        r#"{"op":"delete","collection":"tasks","id":"x"}"#,
    ] {
        assert!(
            matches!(WriteOp::batch_from_json(bad), Err(Error::MalformedJson(_))),
            "{bad}"
        );
    }
    let huge = " ".repeat(crate::schema::MAX_INPUT_BYTES + 1);
    assert!(matches!(
        WriteOp::batch_from_json(&huge),
        Err(Error::TooLarge { .. })
    ));
}
