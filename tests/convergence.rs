//! Property: devices that make random offline edits (creates, per-column updates,
//! deletes, colliding ids) and then sync converge to the same state as the server.

mod support;

use ferry::WriteOp;
use proptest::prelude::*;
use serde_json::json;
use support::*;

#[derive(Debug, Clone)]
enum Action {
    Create { id: u8, title: u8 },
    Update { id: u8, field: u8, value: u8 },
    Delete { id: u8 },
    Sync,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0u8..6, 0u8..4).prop_map(|(id, title)| Action::Create { id, title }),
        4 => (0u8..6, 0u8..3, 0u8..4).prop_map(|(id, field, value)| Action::Update { id, field, value }),
        1 => (0u8..6).prop_map(|id| Action::Delete { id }),
        2 => Just(Action::Sync),
    ]
}

fn op(a: &Action) -> Option<WriteOp> {
    let id = |i: &u8| format!("r{i}");
    Some(match a {
        Action::Create { id: i, title } => WriteOp::Create {
            collection: "tasks".into(),
            fields: obj(json!({"id": id(i), "title": format!("t{title}")})),
        },
        Action::Update {
            id: i,
            field,
            value,
        } => {
            let fields = match field {
                0 => json!({"title": format!("u{value}")}),
                1 => json!({"done": value % 2 == 0}),
                _ => json!({"priority": *value as i64}),
            };
            WriteOp::Update {
                collection: "tasks".into(),
                id: id(i),
                fields: obj(fields),
            }
        }
        Action::Delete { id: i } => WriteOp::Delete {
            collection: "tasks".into(),
            id: id(i),
        },
        Action::Sync => return None,
    })
}

async fn run_case(devices: usize, script: Vec<(usize, Action)>) {
    let server = start_server().await;
    let ds: Vec<Device> = (0..devices).map(|_| device(&server.url(), ALICE)).collect();
    for (d, a) in &script {
        let dev = &ds[d % devices];
        match op(a) {
            // Edits of records this device does not have (yet) are refused: fine.
            Some(o) => {
                let _ = dev.store.write(vec![o]);
            }
            None => {
                dev.client.sync().await.expect("sync");
            }
        }
    }
    for _ in 0..3 {
        for dev in &ds {
            dev.client.sync().await.expect("final sync");
        }
    }
    let fresh = device(&server.url(), ALICE);
    fresh.client.sync().await.unwrap();
    let want = contents(&fresh.store, "tasks");
    for (i, dev) in ds.iter().enumerate() {
        assert_eq!(
            contents(&dev.store, "tasks"),
            want,
            "device {i} differs from the server"
        );
        assert!(
            dev.store
                .outbox()
                .unwrap()
                .iter()
                .all(|e| e.state == ferry::EntryState::Quarantined),
            "device {i} has unsent changes"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn devices_converge_after_random_offline_edits(
        devices in 2usize..=3,
        script in prop::collection::vec((0usize..3, action()), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_case(devices, script));
    }
}
