//! The record-id rule is the protocol's (`ferry_protocol::validate_record_id`): the
//! core refuses, with a typed error and without writing anything, every id the
//! server would refuse, so a local create is never quarantined later for its id;
//! and an id the core accepts is one the server applies.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry::sync::SyncConfig;
use ferry::transport::Transport;
use ferry::{ChangeEvent, Error, ManualClock, Record, Store, WriteOp};
use ferry_protocol::{
    MAX_RECORD_ID_BYTES, Mutation, MutationOutcome, Op, PushRequest, RECORD_ID_FORBIDDEN_CHARS,
    RejectCode, validate_record_id,
};
use serde_json::{Value, json};
use support::kit::{InProcessServer, KitDevice};
use support::*;

/// Ids ferry-server rejects (`invalid_record`), with what the message must name.
fn refused_ids() -> Vec<(String, String)> {
    let mut ids = vec![
        (String::new(), "empty".to_string()),
        ("x".repeat(MAX_RECORD_ID_BYTES + 1), "129 bytes".to_string()),
        // The limit is in bytes: 43 three-byte characters are 129 bytes.
        ("日".repeat(43), "129 bytes".to_string()),
    ];
    for ch in RECORD_ID_FORBIDDEN_CHARS.chars() {
        ids.push((format!("task{ch}1"), format!("`{ch}`")));
    }
    for ch in ['\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}'] {
        ids.push((format!("task{ch}1"), "control character".to_string()));
    }
    ids
}

/// The list above is what the server refuses: pushed as creates, each is rejected.
#[tokio::test]
async fn the_server_refuses_every_one_of_those_ids() {
    let server = InProcessServer::start(ferry_server::ServerConfig::dev()).await;
    let ids = refused_ids();
    let mutations = ids
        .iter()
        .enumerate()
        .map(|(i, (id, _))| Mutation {
            mutation_id: format!("m{i}"),
            collection: "tasks".into(),
            record_id: id.clone(),
            op: Op::Create,
            fields: serde_json::value::to_raw_value(&json!({"title": "t", "done": false})).unwrap(),
            base_version: None,
        })
        .collect();
    let req = PushRequest {
        client_id: "c1".into(),
        mutations,
    };
    let resp = server.transport().push(ALICE, &req).await.unwrap();
    assert_eq!(resp.results.len(), ids.len());
    for (r, (id, _)) in resp.results.iter().zip(&ids) {
        assert!(
            matches!(
                &r.outcome,
                MutationOutcome::Rejected {
                    code: RejectCode::InvalidRecord,
                    ..
                }
            ),
            "{id:?}: {:?}",
            r.outcome
        );
    }
}

/// Everything in the database, to prove that a refused call wrote nothing.
fn snapshot(store: &Store) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    for c in ["tasks", "projects", "drafts"] {
        rows.extend(
            store
                .query(c, &Default::default())
                .unwrap()
                .iter()
                .map(Record::to_json),
        );
    }
    (rows, store.outbox().unwrap().len())
}

#[test]
fn the_core_refuses_every_id_the_server_refuses_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("t.db"), schema()).unwrap();
    store.create("tasks", obj(json!({"id": "keep"}))).unwrap();
    store.flush_events();
    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    let _sub = store.add_change_listener(Arc::new(move |_: &ChangeEvent| {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    let before = snapshot(&store);

    for (id, names) in refused_ids() {
        assert!(
            validate_record_id(&id).is_err(),
            "the server accepts {id:?}"
        );
        let attempts: Vec<(&str, ferry::Result<()>)> = vec![
            (
                "create",
                store
                    .create("tasks", obj(json!({"id": id, "title": "t"})))
                    .map(drop),
            ),
            (
                "put",
                store
                    .put("tasks", obj(json!({"id": id, "title": "t"})))
                    .map(drop),
            ),
            // A local-only collection follows the same rule: it may become synced.
            (
                "create local-only",
                store.create("drafts", obj(json!({"id": id}))).map(drop),
            ),
            // In a batch, the valid write before it is not kept either.
            (
                "batch",
                store
                    .write(vec![
                        WriteOp::Create {
                            collection: "tasks".into(),
                            fields: obj(json!({"id": "fine", "title": "t"})),
                        },
                        WriteOp::Create {
                            collection: "tasks".into(),
                            fields: obj(json!({"id": id, "title": "t"})),
                        },
                    ])
                    .map(drop),
            ),
            (
                "puts_from_json",
                WriteOp::puts_from_json("tasks", &json!([{"id": id}]).to_string())
                    .and_then(|ops| store.write(ops))
                    .map(drop),
            ),
        ];
        for (how, result) in attempts {
            match result {
                Err(Error::InvalidInput(m)) => {
                    assert!(m.starts_with("record id "), "{how} {id:?}: {m}");
                    assert!(m.contains(&names), "{how} {id:?}: {m:?} names {names:?}");
                }
                other => panic!("{how} {id:?}: expected InvalidInput, got {other:?}"),
            }
            assert_eq!(
                snapshot(&store),
                before,
                "{how} {id:?} changed the database"
            );
        }
    }
    store.flush_events();
    assert_eq!(
        events.load(Ordering::SeqCst),
        0,
        "a refused write sent an event"
    );
}

/// Ids at the edges of the rule that the core accepts: the server applies every
/// one of them (none is quarantined).
#[tokio::test]
async fn ids_the_core_accepts_are_applied_by_the_server() {
    let accepted = [
        "x".repeat(MAX_RECORD_ID_BYTES),
        "日".repeat(MAX_RECORD_ID_BYTES / 3),
        "with spaces and punctuation .,;:!?-_+=*&%#@~`^|<>()[]{}".to_string(),
        "ünïcödé-✓".to_string(),
    ];
    let server = InProcessServer::start(ferry_server::ServerConfig::dev()).await;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let device = KitDevice::new(&server, &clock, ALICE, schema(), SyncConfig::default());
    for id in &accepted {
        assert_eq!(validate_record_id(id), Ok(()), "{id:?}");
        device
            .store
            .create("tasks", obj(json!({"id": id, "title": "t"})))
            .unwrap();
    }
    device.settle(3).await.unwrap();
    let status = device.store.status().unwrap();
    assert_eq!((status.pending, status.quarantined), (0, 0));
    let held = server.snapshot(ALICE, "tasks").await;
    for id in &accepted {
        assert!(
            held.live.contains_key(id),
            "the server does not hold {id:?}"
        );
    }
}
