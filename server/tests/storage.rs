//! The storage suite: every case runs against SQLite and against PostgreSQL
//! (when `FERRY_TEST_PG_URL` is set; required under CI).

mod common;

use std::collections::BTreeSet;

use common::*;
use ferry_protocol::{
    Mutation, MutationOutcome, Op, PullPage, PullRequest, PushRequest, RejectCode,
};
use ferry_server::auth::Caller;
use ferry_server::{ApiError, SyncService};
use serde_json::json;

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::sqlite_db();
                    super::$case(super::service(&db).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = super::pg_db().await else { return };
                    super::$case(super::service(&db).await).await;
                }
            )*
        }
    };
}

suite!(
    push_then_pull_returns_rows_with_versions_and_tombstones,
    pull_pages_carry_has_more_and_deliver_every_row_once,
    push_retry_with_same_mutation_ids_applies_nothing_twice,
    stale_base_version_conflicts_with_the_server_row,
    rejected_mutation_does_not_block_the_rest,
    create_of_existing_id_and_update_of_missing_id_are_rejected,
    sync_rule_and_scope_change_evict_and_totals_follow,
    revoked_scope_is_evicted_and_granted_scope_gets_full_history,
    own_writes_are_not_echoed_but_the_cursor_advances,
    users_only_see_their_scopes_and_cannot_use_each_others_cursors,
    selecting_a_collection_later_gets_its_full_history,
    a_batch_that_touches_a_record_again_sees_its_own_writes,
    names_and_values_cannot_inject_sql,
    fetch_reads_the_callers_scopes_under_the_sync_rules,
    fetch_refuses_queries_outside_the_collection_config,
    subscriptions_widen_by_backfill_only_and_evict_rows_that_stop_matching,
    a_subscription_to_a_scope_gets_that_scope_only,
    subscriptions_outside_the_collection_config_are_refused,
    a_higher_priority_comes_first_and_its_last_page_is_a_checkpoint,
    checksums_follow_every_write_and_a_restart_sends_a_collection_again,
);

fn create(mid: &str, coll: &str, id: &str, f: serde_json::Value) -> Mutation {
    Mutation {
        mutation_id: mid.into(),
        collection: coll.into(),
        record_id: id.into(),
        op: Op::Create,
        fields: fields(f),
        base_version: None,
    }
}

fn update(mid: &str, coll: &str, id: &str, base: u64, f: serde_json::Value) -> Mutation {
    Mutation {
        op: Op::Update,
        base_version: Some(base),
        ..create(mid, coll, id, f)
    }
}

fn delete(mid: &str, coll: &str, id: &str, base: u64) -> Mutation {
    Mutation {
        op: Op::Delete,
        base_version: Some(base),
        ..create(mid, coll, id, json!({}))
    }
}

fn task(title: &str) -> serde_json::Value {
    json!({"title": title, "done": false})
}

async fn push(
    svc: &SyncService,
    who: &Caller,
    client: &str,
    ms: Vec<Mutation>,
) -> Vec<MutationOutcome> {
    let resp = svc
        .push(
            who,
            PushRequest {
                client_id: client.into(),
                mutations: ms,
            },
        )
        .await
        .expect("push");
    assert!(resp.write_checkpoint.starts_with("wc1."));
    resp.results.into_iter().map(|r| r.outcome).collect()
}

fn req(cursor: Option<&str>) -> PullRequest {
    PullRequest {
        subscriptions: None,
        cursor: cursor.map(String::from),
        client_id: None,
        limit: None,
        collections: None,
        want_totals: true,
        want_checksums: false,
        restart: None,
        max_priority: None,
        priorities: None,
    }
}

/// One page as a client decodes it: the service's page (stored JSON, unparsed)
/// through the JSON a client receives.
async fn pull(svc: &SyncService, who: &Caller, r: &PullRequest) -> Result<PullPage, ApiError> {
    let page = svc.pull(who, r).await?;
    let wire = serde_json::to_string(&page).expect("page serializes");
    Ok(serde_json::from_str(&wire).expect("the page is valid protocol JSON"))
}

/// Pulls pages until `has_more == false`; returns them.
async fn pull_all(svc: &SyncService, who: &Caller, mut r: PullRequest) -> Vec<PullPage> {
    let mut pages = Vec::new();
    loop {
        let page = pull(svc, who, &r).await.expect("pull");
        let more = page.has_more;
        r.cursor = Some(page.cursor.clone());
        // A restart is asked once, with the first page.
        r.restart = None;
        pages.push(page);
        if !more {
            return pages;
        }
        assert!(pages.len() < 10_000, "pull never finished");
    }
}

fn applied(v: u64) -> MutationOutcome {
    MutationOutcome::Applied { version: v }
}

fn rejected_code(o: &MutationOutcome) -> Option<RejectCode> {
    match o {
        MutationOutcome::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

async fn push_then_pull_returns_rows_with_versions_and_tombstones(svc: SyncService) {
    let a = alice();
    let out = push(
        &svc,
        &a,
        "c1",
        vec![
            create("m1", "tasks", "t1", task("one")),
            create("m2", "tasks", "t2", task("two")),
        ],
    )
    .await;
    assert_eq!(out, vec![applied(1), applied(1)]);
    let first = pull(&svc, &a, &req(None)).await.unwrap();
    assert!(!first.has_more);
    let tasks = &first.changes["tasks"];
    assert_eq!(tasks.upserts.len(), 2);
    let t1 = tasks.upserts.iter().find(|r| r.id == "t1").unwrap();
    assert_eq!(t1.version, 1);
    assert_eq!(t1.fields["title"], "one");
    assert_eq!(
        t1.fields["priority"],
        serde_json::Value::Null,
        "missing nullable fields are stored as null"
    );
    assert_eq!(first.totals.as_ref().unwrap()["tasks"], 2);

    let out = push(
        &svc,
        &a,
        "c1",
        vec![
            update("m3", "tasks", "t1", 1, json!({"done": true})),
            delete("m4", "tasks", "t2", 1),
        ],
    )
    .await;
    assert_eq!(out, vec![applied(2), applied(2)]);
    let next = pull(&svc, &a, &req(Some(&first.cursor))).await.unwrap();
    let tasks = &next.changes["tasks"];
    assert_eq!(tasks.upserts.len(), 1, "only the change since the cursor");
    assert_eq!(tasks.upserts[0].version, 2);
    assert_eq!(tasks.upserts[0].fields["done"], true);
    assert_eq!(
        tasks.upserts[0].fields["title"], "one",
        "update merges changed fields"
    );
    assert_eq!(tasks.deletes, vec!["t2".to_string()]);
    assert_eq!(next.totals.as_ref().unwrap()["tasks"], 1);
    let idle = pull(&svc, &a, &req(Some(&next.cursor))).await.unwrap();
    assert!(idle.changes.is_empty() && !idle.has_more);
}

async fn pull_pages_carry_has_more_and_deliver_every_row_once(svc: SyncService) {
    let a = alice();
    let ms: Vec<Mutation> = (0..120)
        .map(|i| create(&format!("m{i}"), "tasks", &format!("t{i:03}"), task("x")))
        .collect();
    push(&svc, &a, "c1", ms).await;
    // Also rows in a shared scope, so pages merge two streams.
    let ms: Vec<Mutation> = (0..30)
        .map(|i| {
            create(
                &format!("d{i}"),
                "docs",
                &format!("d{i}"),
                json!({"title": "d", "space": "team"}),
            )
        })
        .collect();
    push(&svc, &a, "c1", ms).await;
    let r = PullRequest {
        subscriptions: None,
        limit: Some(1_000_000),
        ..req(None)
    };
    let pages = pull_all(&svc, &a, r).await;
    assert!(
        pages.len() >= 3,
        "limit is clamped to max_page_rows=50, got {} pages",
        pages.len()
    );
    for p in &pages[..pages.len() - 1] {
        assert!(p.has_more);
        assert_eq!(p.changes.values().map(|c| c.len()).sum::<usize>(), 50);
    }
    let mut seen = BTreeSet::new();
    for p in &pages {
        for c in p.changes.values() {
            for r in &c.upserts {
                assert!(seen.insert(r.id.clone()), "{} delivered twice", r.id);
            }
        }
    }
    assert_eq!(seen.len(), 150);
}

async fn push_retry_with_same_mutation_ids_applies_nothing_twice(svc: SyncService) {
    let a = alice();
    let batch = vec![
        create("m1", "tasks", "t1", task("one")),
        update("m2", "tasks", "t1", 1, json!({"done": true})),
        create("m3", "tasks", "bad", json!({"title": 5, "done": false})),
    ];
    let first = push(&svc, &a, "c1", batch.clone()).await;
    assert_eq!(first[..2], [applied(1), applied(2)]);
    assert_eq!(rejected_code(&first[2]), Some(RejectCode::InvalidRecord));
    let again = push(&svc, &a, "c1", batch).await;
    assert_eq!(again, first, "a retried push returns the same results");
    let page = pull(&svc, &a, &req(None)).await.unwrap();
    let t1 = &page.changes["tasks"].upserts[0];
    assert_eq!(t1.version, 2, "nothing applied twice");
    assert_eq!(page.totals.unwrap()["tasks"], 1);
}

async fn stale_base_version_conflicts_with_the_server_row(svc: SyncService) {
    let a = alice();
    push(
        &svc,
        &a,
        "c1",
        vec![create("m1", "tasks", "t1", task("one"))],
    )
    .await;
    push(
        &svc,
        &a,
        "c2",
        vec![update("m2", "tasks", "t1", 1, json!({"title": "theirs"}))],
    )
    .await;
    let out = push(
        &svc,
        &a,
        "c1",
        vec![update("m3", "tasks", "t1", 1, json!({"title": "mine"}))],
    )
    .await;
    match &out[0] {
        MutationOutcome::Conflict {
            server_record: Some(r),
            deleted: false,
        } => {
            assert_eq!(r.version, 2);
            assert_eq!(r.fields["title"], "theirs");
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    push(&svc, &a, "c2", vec![delete("m4", "tasks", "t1", 2)]).await;
    let out = push(
        &svc,
        &a,
        "c1",
        vec![update("m5", "tasks", "t1", 2, json!({"title": "mine"}))],
    )
    .await;
    assert_eq!(
        out[0],
        MutationOutcome::Conflict {
            server_record: None,
            deleted: true
        }
    );
    // A conflict is not remembered: the same mutation id re-evaluates.
    let out = push(
        &svc,
        &a,
        "c1",
        vec![update("m3", "tasks", "t1", 1, json!({"title": "mine"}))],
    )
    .await;
    assert!(matches!(
        out[0],
        MutationOutcome::Conflict { deleted: true, .. }
    ));
}

async fn rejected_mutation_does_not_block_the_rest(svc: SyncService) {
    let a = alice();
    let out = push(
        &svc,
        &a,
        "c1",
        vec![
            create("m1", "tasks", "ok1", task("fine")),
            create("m2", "tasks", "bad1", json!({"title": "x", "done": "yes"})),
            create(
                "m3",
                "tasks",
                "bad2",
                json!({"title": "x", "done": false, "colour": "red"}),
            ),
            create("m4", "tasks", "bad3", json!({"title": null, "done": false})),
            create("m5", "tasks", "bad4", json!({"done": false})),
            create(
                "m6",
                "docs",
                "bad5",
                json!({"title": "this title is far too long"}),
            ),
            create(
                "m7",
                "docs",
                "bad6",
                json!({"title": "t", "meta": {"blob": "x".repeat(100)}}),
            ),
            create("m8", "nope", "bad7", json!({})),
            create(
                "m9",
                "docs",
                "bad8",
                json!({"title": "t", "space": "other-team"}),
            ),
            create("m10", "tasks", "bad/9", task("x")),
            create(
                "m11",
                "tasks",
                "bad10",
                json!({"title": "x", "done": false, "priority": 1.5}),
            ),
            create(
                "m12",
                "tasks",
                "ok2",
                json!({"title": "y", "done": true, "priority": 3}),
            ),
        ],
    )
    .await;
    assert_eq!(out[0], applied(1));
    assert_eq!(out[11], applied(1));
    let codes: Vec<_> = out[1..11].iter().map(rejected_code).collect();
    use RejectCode::*;
    assert_eq!(
        codes,
        [
            InvalidRecord,
            InvalidRecord,
            InvalidRecord,
            InvalidRecord,
            InvalidRecord,
            InvalidRecord,
            UnknownCollection,
            Forbidden,
            InvalidRecord,
            InvalidRecord
        ]
        .map(Some)
    );
    let page = pull(&svc, &a, &req(None)).await.unwrap();
    let ids: BTreeSet<_> = page
        .changes
        .values()
        .flat_map(|c| c.upserts.iter().map(|r| r.id.clone()))
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["ok1".to_string(), "ok2".to_string()]),
        "rejected items were never written"
    );
}

async fn create_of_existing_id_and_update_of_missing_id_are_rejected(svc: SyncService) {
    let a = alice();
    push(
        &svc,
        &a,
        "c1",
        vec![create("m1", "tasks", "t1", task("one"))],
    )
    .await;
    let out = push(
        &svc,
        &a,
        "c1",
        vec![
            create("m2", "tasks", "t1", task("again")),
            update("m3", "tasks", "nope", 1, json!({})),
        ],
    )
    .await;
    assert_eq!(rejected_code(&out[0]), Some(RejectCode::AlreadyExists));
    assert_eq!(rejected_code(&out[1]), Some(RejectCode::NotFound));
    // Another user's record: never applied, and answered as an unknown id is
    // (docs/protocol.md, "Foreign ids"), so its existence is not revealed.
    let out = push(
        &svc,
        &carol(),
        "c9",
        vec![
            update("m4", "tasks", "t1", 1, json!({"title": "hijack"})),
            delete("m5", "tasks", "t1", 1),
            update("m6", "tasks", "nope", 1, json!({"title": "hijack"})),
            delete("m7", "tasks", "nope", 1),
        ],
    )
    .await;
    assert_eq!(out[0], out[2]);
    assert_eq!(out[1], out[3]);
    assert_eq!(rejected_code(&out[0]), Some(RejectCode::NotFound));
    let page = pull(&svc, &a, &req(None)).await.unwrap();
    assert_eq!(page.changes["tasks"].upserts[0].fields["title"], "one");
}

async fn sync_rule_and_scope_change_evict_and_totals_follow(svc: SyncService) {
    let a = alice();
    let b = bob();
    push(
        &svc,
        &a,
        "c1",
        vec![
            create("m1", "tasks", "t1", task("one")),
            create(
                "m2",
                "docs",
                "d1",
                json!({"title": "shared", "space": "team"}),
            ),
        ],
    )
    .await;
    let pa = pull(&svc, &a, &req(None)).await.unwrap();
    let pb = pull(&svc, &b, &req(None)).await.unwrap();
    assert_eq!(
        pb.changes["docs"].upserts[0].id, "d1",
        "bob shares scope team"
    );
    assert!(
        !pb.changes.contains_key("tasks"),
        "alice's owner scope is hers"
    );
    assert_eq!(pa.totals.as_ref().unwrap()["tasks"], 1);

    // Archived: excluded by the sync rule → eviction, not a delete.
    let out = push(
        &svc,
        &a,
        "c1",
        vec![update("m3", "tasks", "t1", 1, json!({"archived": true}))],
    )
    .await;
    assert_eq!(out[0], applied(2));
    let pa2 = pull(&svc, &a, &req(Some(&pa.cursor))).await.unwrap();
    assert_eq!(pa2.changes["tasks"].evictions, vec!["t1".to_string()]);
    assert!(pa2.changes["tasks"].upserts.is_empty() && pa2.changes["tasks"].deletes.is_empty());
    assert_eq!(pa2.totals.as_ref().unwrap()["tasks"], 0);
    // Unarchived: comes back as an upsert.
    push(
        &svc,
        &a,
        "c1",
        vec![update("m4", "tasks", "t1", 2, json!({"archived": false}))],
    )
    .await;
    let pa3 = pull(&svc, &a, &req(Some(&pa2.cursor))).await.unwrap();
    assert_eq!(pa3.changes["tasks"].upserts[0].version, 3);

    // A shared record cannot be taken private by one member: that would evict
    // it from everyone else (docs/protocol.md, "Moving a record between scopes").
    let out = push(
        &svc,
        &a,
        "c1",
        vec![
            update("m5", "docs", "d1", 1, json!({"space": null})),
            update("m6", "docs", "d1", 1, json!({"space": "user:alice"})),
        ],
    )
    .await;
    assert_eq!(
        out.iter().map(rejected_code).collect::<Vec<_>>(),
        [Some(RejectCode::Forbidden); 2]
    );
    let pb1 = pull(&svc, &b, &req(Some(&pb.cursor))).await.unwrap();
    assert!(
        pb1.changes.is_empty(),
        "bob lost nothing: {:?}",
        pb1.changes
    );

    // Moved from one shared scope to another that alice also holds: bob, who
    // is not in the second, gets an eviction.
    let a2 = Caller::new("alice", ["team".to_string(), "design".to_string()]);
    let out = push(
        &svc,
        &a2,
        "c1",
        vec![update("m7", "docs", "d1", 1, json!({"space": "design"}))],
    )
    .await;
    assert_eq!(out[0], applied(2));
    let pb2 = pull(&svc, &b, &req(Some(&pb1.cursor))).await.unwrap();
    assert_eq!(pb2.changes["docs"].evictions, vec!["d1".to_string()]);
    assert_eq!(pb2.totals.as_ref().unwrap()["docs"], 0);
    let pa4 = pull(&svc, &a2, &req(Some(&pa3.cursor))).await.unwrap();
    let docs = &pa4.changes["docs"];
    assert_eq!(
        docs.upserts.len(),
        1,
        "alice still sees it in the other scope"
    );
    assert!(
        docs.evictions.is_empty(),
        "a move between two of alice's scopes is not an eviction for her"
    );
    assert_eq!(pa4.totals.as_ref().unwrap()["docs"], 1);
}

async fn revoked_scope_is_evicted_and_granted_scope_gets_full_history(svc: SyncService) {
    let a = alice();
    let ms: Vec<Mutation> = (0..70)
        .map(|i| {
            create(
                &format!("m{i}"),
                "docs",
                &format!("d{i}"),
                json!({"title": "t", "space": "team"}),
            )
        })
        .collect();
    push(&svc, &a, "c1", ms).await;
    // Carol first syncs without the scope, then is granted it: full history.
    let c_without = carol();
    let p0 = pull_all(&svc, &c_without, req(None)).await;
    assert!(p0.iter().all(|p| p.changes.is_empty()));
    let c_with = Caller::new("carol", ["team".to_string()]);
    let granted = pull_all(&svc, &c_with, req(Some(&p0.last().unwrap().cursor))).await;
    let got: usize = granted
        .iter()
        .map(|p| p.changes.get("docs").map_or(0, |c| c.upserts.len()))
        .sum();
    assert_eq!(
        got, 70,
        "a newly granted scope arrives with its full history"
    );
    // Revoked again: every row of the scope is evicted, over several pages.
    let revoked = pull_all(&svc, &c_without, req(Some(&granted.last().unwrap().cursor))).await;
    assert!(revoked.len() >= 2, "evictions are paged too");
    let evicted: BTreeSet<String> = revoked
        .iter()
        .flat_map(|p| {
            p.changes
                .get("docs")
                .map(|c| c.evictions.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(evicted.len(), 70);
    let after = pull(
        &svc,
        &c_without,
        &req(Some(&revoked.last().unwrap().cursor)),
    )
    .await
    .unwrap();
    assert!(
        after.changes.is_empty(),
        "eviction of a revoked scope happens once"
    );
}

async fn own_writes_are_not_echoed_but_the_cursor_advances(svc: SyncService) {
    let a = alice();
    let start = pull(&svc, &a, &req(None)).await.unwrap();
    push(
        &svc,
        &a,
        "phone",
        vec![create("m1", "tasks", "t1", task("mine"))],
    )
    .await;
    push(
        &svc,
        &a,
        "laptop",
        vec![create("m2", "tasks", "t2", task("other device"))],
    )
    .await;
    let r = PullRequest {
        subscriptions: None,
        client_id: Some("phone".into()),
        ..req(Some(&start.cursor))
    };
    let page = pull(&svc, &a, &r).await.unwrap();
    let ids: Vec<_> = page.changes["tasks"]
        .upserts
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids, ["t2"], "the phone's own write is not echoed back");
    let again = pull(
        &svc,
        &a,
        &PullRequest {
            subscriptions: None,
            cursor: Some(page.cursor.clone()),
            ..r.clone()
        },
    )
    .await
    .unwrap();
    assert!(
        again.changes.is_empty(),
        "the cursor advanced past the skipped echo"
    );
    // Another device of the same user does get it.
    let laptop = pull(
        &svc,
        &a,
        &PullRequest {
            subscriptions: None,
            client_id: Some("laptop".into()),
            ..req(Some(&start.cursor))
        },
    )
    .await
    .unwrap();
    assert_eq!(laptop.changes["tasks"].upserts[0].id, "t1");
}

async fn users_only_see_their_scopes_and_cannot_use_each_others_cursors(svc: SyncService) {
    push(
        &svc,
        &alice(),
        "c1",
        vec![create("m1", "tasks", "t1", task("alice's"))],
    )
    .await;
    push(
        &svc,
        &bob(),
        "c2",
        vec![create("m1", "tasks", "t2", task("bob's"))],
    )
    .await;
    let pa = pull(&svc, &alice(), &req(None)).await.unwrap();
    let pb = pull(&svc, &bob(), &req(None)).await.unwrap();
    assert_eq!(
        pa.changes["tasks"]
            .upserts
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["t1"]
    );
    assert_eq!(
        pb.changes["tasks"]
            .upserts
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["t2"]
    );
    let err = pull(&svc, &bob(), &req(Some(&pa.cursor)))
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_cursor");
    let err = pull(&svc, &bob(), &req(Some("not-a-cursor")))
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_cursor");
    let err = pull(
        &svc,
        &bob(),
        &PullRequest {
            subscriptions: None,
            collections: Some(vec!["nope".into()]),
            ..req(None)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "unknown_collection");
}

async fn selecting_a_collection_later_gets_its_full_history(svc: SyncService) {
    let a = alice();
    push(
        &svc,
        &a,
        "c1",
        vec![
            create("m1", "tasks", "t1", task("x")),
            create("m2", "projects", "p1", json!({"name": "P"})),
        ],
    )
    .await;
    let only_tasks = PullRequest {
        subscriptions: None,
        collections: Some(vec!["tasks".into()]),
        ..req(None)
    };
    let p1 = pull(&svc, &a, &only_tasks).await.unwrap();
    assert!(p1.changes.contains_key("tasks") && !p1.changes.contains_key("projects"));
    assert_eq!(
        p1.totals.as_ref().unwrap().keys().collect::<Vec<_>>(),
        ["tasks"]
    );
    let p2 = pull(&svc, &a, &req(Some(&p1.cursor))).await.unwrap();
    assert_eq!(p2.changes["projects"].upserts[0].id, "p1");
    assert!(!p2.changes.contains_key("tasks"));
}

async fn a_batch_that_touches_a_record_again_sees_its_own_writes(svc: SyncService) {
    let a = alice();
    let out = push(
        &svc,
        &a,
        "c1",
        vec![
            create("m1", "tasks", "t1", task("one")),
            update("m2", "tasks", "t1", 1, json!({"done": true})),
            update("m3", "tasks", "t1", 2, json!({"title": "three"})),
            // A stale base inside the same batch conflicts with the row just written.
            update("m4", "tasks", "t1", 2, json!({"title": "stale"})),
            create("m1", "tasks", "t1", task("one")),
            delete("m5", "tasks", "t1", 3),
            create("m6", "tasks", "t2", task("two")),
        ],
    )
    .await;
    assert_eq!(out[..3], [applied(1), applied(2), applied(3)]);
    match &out[3] {
        MutationOutcome::Conflict {
            server_record: Some(r),
            ..
        } => {
            assert_eq!(r.version, 3);
            assert_eq!(r.fields["title"], "three");
            assert_eq!(r.fields["done"], true);
        }
        other => panic!("expected a conflict with the row written earlier, got {other:?}"),
    }
    assert_eq!(
        out[4],
        applied(1),
        "a repeated mutation id gets its first outcome"
    );
    assert_eq!(out[5..], [applied(4), applied(1)]);
    let page = pull(&svc, &a, &req(None)).await.unwrap();
    let tasks = &page.changes["tasks"];
    assert_eq!(tasks.upserts.len(), 1);
    assert_eq!(tasks.upserts[0].id, "t2");
    assert_eq!(tasks.deletes, vec!["t1".to_string()]);
    assert_eq!(page.totals.unwrap()["tasks"], 1);
}

/// SQL injection through every name and value a push or pull carries: names are
/// checked against the config before any statement, values are bound. Each
/// attempt is rejected with its code or stored verbatim, and a full pull shows
/// exactly what was applied.
async fn names_and_values_cannot_inject_sql(svc: SyncService) {
    let names = [
        "tasks\"; DROP TABLE records; --",
        "tasks' OR '1'='1",
        "records",
        "title); DELETE FROM changes; --",
    ];
    let mut ms = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // As a collection, and as a field of a real collection.
        ms.push(create(&format!("c{i}"), name, &format!("x{i}"), task("x")));
        ms.push(create(
            &format!("f{i}"),
            "tasks",
            &format!("y{i}"),
            json!({"title": "t", "done": false, *name: 1}),
        ));
    }
    // Ids with quotes break the protocol's id rule.
    ms.push(create(
        "q",
        "tasks",
        "a'); DROP TABLE records; --",
        task("x"),
    ));
    // Values with quotes and SQL are data.
    let odd = "it's \"quoted\"; DROP TABLE records; --";
    ms.push(create("v", "tasks", "kept", task(odd)));
    let outcomes = push(&svc, &alice(), "inj", ms).await;
    let codes: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            MutationOutcome::Rejected { code, .. } => code.as_str().to_string(),
            MutationOutcome::Applied { .. } => "applied".into(),
            other => format!("{other:?}"),
        })
        .collect();
    let mut want: Vec<&str> = names
        .iter()
        .flat_map(|_| ["unknown_collection", "invalid_record"])
        .collect();
    want.extend(["invalid_record", "applied"]);
    assert_eq!(codes, want);
    let rows: Vec<_> = pull_all(&svc, &alice(), req(None))
        .await
        .into_iter()
        .flat_map(|p| p.changes.into_values().flat_map(|c| c.upserts))
        .collect();
    assert_eq!(rows.len(), 1, "only the applied row");
    assert_eq!(rows[0].id, "kept");
    assert_eq!(rows[0].fields["title"], json!(odd), "stored verbatim");
}

/// A read-through fetch: the records as parsed JSON, in the answer's order.
async fn fetch(
    svc: &SyncService,
    who: &Caller,
    collection: &str,
    query: serde_json::Value,
) -> Result<(Vec<ferry_protocol::ServerRecord>, bool), ApiError> {
    let resp = svc
        .fetch(
            who,
            &ferry_protocol::FetchRequest {
                collection: collection.into(),
                query,
            },
        )
        .await?;
    let wire = serde_json::to_string(&resp).expect("serializes");
    let resp: ferry_protocol::FetchResponse = serde_json::from_str(&wire).expect("protocol JSON");
    Ok((resp.records, resp.has_more))
}

fn ids(records: &[ferry_protocol::ServerRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

async fn fetch_reads_the_callers_scopes_under_the_sync_rules(svc: SyncService) {
    let a = alice();
    // More rows than one scan chunk, so the fetch walks several.
    let mut ms: Vec<Mutation> = (0..1100)
        .map(|i| {
            create(
                &format!("m{i}"),
                "tasks",
                &format!("t{i:04}"),
                json!({"title": format!("task {i}"), "done": i % 2 == 0, "priority": i % 7}),
            )
        })
        .collect();
    ms.push(create(
        "m-arch",
        "tasks",
        "archived",
        json!({"title": "task archived", "done": true, "priority": 6, "archived": true}),
    ));
    ms.push(create("m-del", "tasks", "gone", task("task gone")));
    ms.push(create(
        "m-doc",
        "docs",
        "d1",
        json!({"title": "team doc", "space": "team"}),
    ));
    push(&svc, &a, "c1", ms).await;
    push(&svc, &a, "c1", vec![delete("m-del2", "tasks", "gone", 1)]).await;
    push(
        &svc,
        &carol(),
        "c9",
        vec![create(
            "c1",
            "tasks",
            "carol-1",
            json!({"title": "task c", "done": true, "priority": 6}),
        )],
    )
    .await;

    // Filter, sort, limit and offset, as the core would run them locally.
    let q = json!({
        "where": {"and": [
            {"column": "done", "op": "eq", "value": true},
            {"column": "priority", "op": "gte", "value": 6},
        ]},
        "sort": [{"column": "title", "desc": true}],
        "limit": 3,
    });
    let (first, more) = fetch(&svc, &a, "tasks", q.clone()).await.unwrap();
    let expected: Vec<String> = {
        let mut all: Vec<(String, String)> = (0..1100)
            .filter(|i| i % 2 == 0 && i % 7 == 6)
            .map(|i| (format!("task {i}"), format!("t{i:04}")))
            .collect();
        all.sort();
        all.reverse();
        all.into_iter().map(|(_, id)| id).collect()
    };
    assert_eq!(
        ids(&first),
        expected[..3].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(more);
    // The rest, page by page: a limit past the server's page size is capped.
    let mut rest = Vec::new();
    let mut q2 = q.clone();
    q2["limit"] = json!(1000);
    loop {
        q2["offset"] = json!(3 + rest.len());
        let (page, more) = fetch(&svc, &a, "tasks", q2.clone()).await.unwrap();
        assert!(page.len() <= 50, "capped by max_page_rows");
        rest.extend(page);
        if !more {
            break;
        }
    }
    assert_eq!(
        ids(&rest),
        expected[3..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(
        !ids(&first).contains(&"archived") && !ids(&rest).contains(&"archived"),
        "a row a sync rule excludes is never fetched"
    );
    let (gone, _) = fetch(
        &svc,
        &a,
        "tasks",
        json!({"where": {"column": "id", "op": "in", "value": ["gone", "t0001"]}}),
    )
    .await
    .unwrap();
    assert_eq!(ids(&gone), ["t0001"], "a deleted record is not fetched");
    assert_eq!(gone[0].fields["title"], "task 1");
    assert_eq!(gone[0].version, 1);

    // Two other users: carol sees only hers, bob the shared doc and none of
    // alice's private tasks.
    let all = json!({"limit": 5000});
    let (c, _) = fetch(&svc, &carol(), "tasks", all.clone()).await.unwrap();
    assert_eq!(ids(&c), ["carol-1"]);
    let (b, _) = fetch(&svc, &bob(), "tasks", all.clone()).await.unwrap();
    assert!(b.is_empty());
    let (bd, _) = fetch(&svc, &bob(), "docs", all.clone()).await.unwrap();
    assert_eq!(ids(&bd), ["d1"]);
    let (cd, _) = fetch(&svc, &carol(), "docs", all).await.unwrap();
    assert!(cd.is_empty(), "carol is not in team");
}

async fn fetch_refuses_queries_outside_the_collection_config(svc: SyncService) {
    let a = alice();
    let code = |r: Result<(Vec<ferry_protocol::ServerRecord>, bool), ApiError>| r.unwrap_err().code;
    assert_eq!(
        code(fetch(&svc, &a, "nope", json!({})).await),
        "unknown_collection"
    );
    for q in [
        json!({"where": {"column": "secret", "op": "eq", "value": 1}}),
        json!({"where": {"column": "_status", "op": "eq", "value": "pending"}}),
        json!({"where": {"column": "done", "op": "eq", "value": "yes"}}),
        json!({"where": {"column": "priority", "op": "in", "value": 3}}),
        json!({"where": {"column": "done", "op": "like", "value": "t%"}}),
        json!({"where": {"column": "meta", "op": "eq", "value": 1}}),
        json!({"sort": [{"column": "nope"}]}),
        json!({"where": {"column": "title", "op": "near", "value": 1}}),
        json!({"limit": -1}),
        json!([]),
    ] {
        let coll = if q.to_string().contains("meta") {
            "docs"
        } else {
            "tasks"
        };
        assert_eq!(
            code(fetch(&svc, &a, coll, q.clone()).await),
            "invalid_request",
            "{q}"
        );
    }
}

fn sub(
    collection: &str,
    scope: Option<&str>,
    filter: Option<serde_json::Value>,
) -> ferry_protocol::Subscription {
    ferry_protocol::Subscription {
        collection: collection.into(),
        scope: scope.map(String::from),
        filter,
    }
}

fn priority_is(p: i64) -> serde_json::Value {
    json!({"column": "priority", "op": "eq", "value": p})
}

fn subscribed(cursor: Option<&str>, subs: Vec<ferry_protocol::Subscription>) -> PullRequest {
    PullRequest {
        subscriptions: Some(subs),
        limit: Some(3),
        ..req(cursor)
    }
}

/// What a whole pull sent: upserted, deleted and evicted ids of `collection`,
/// and its last cursor.
async fn pulled(
    svc: &SyncService,
    who: &Caller,
    r: PullRequest,
    collection: &str,
) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>, String) {
    let pages = pull_all(svc, who, r).await;
    let (mut up, mut del, mut ev) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for p in &pages {
        if let Some(c) = p.changes.get(collection) {
            up.extend(c.upserts.iter().map(|r| r.id.clone()));
            del.extend(c.deletes.iter().cloned());
            ev.extend(c.evictions.iter().cloned());
        }
    }
    (up, del, ev, pages.last().unwrap().cursor.clone())
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn subscriptions_widen_by_backfill_only_and_evict_rows_that_stop_matching(svc: SyncService) {
    let a = alice();
    let pri = |i: usize| if i <= 5 { 1 } else { 2 };
    let creates = (1..=10)
        .map(|i| {
            create(
                &format!("m{i}"),
                "tasks",
                &format!("t{i}"),
                json!({"title": format!("task {i}"), "done": false, "priority": pri(i)}),
            )
        })
        .collect();
    push(&svc, &a, "writer", creates).await;
    let ones = sub("tasks", None, Some(priority_is(1)));
    let twos = sub("tasks", None, Some(priority_is(2)));

    // Narrow: only priority 1, and nothing of what does not match.
    let (up, del, ev, cursor) =
        pulled(&svc, &a, subscribed(None, vec![ones.clone()]), "tasks").await;
    assert_eq!(up, set(&["t1", "t2", "t3", "t4", "t5"]));
    assert!(del.is_empty() && ev.is_empty(), "{del:?} {ev:?}");

    // t2 stops matching: an eviction, not a delete. t7 starts matching: it arrives.
    push(
        &svc,
        &a,
        "writer",
        vec![
            update("m11", "tasks", "t2", 1, json!({"priority": 2})),
            update("m12", "tasks", "t7", 1, json!({"priority": 1})),
        ],
    )
    .await;
    let (up, del, ev, cursor) = pulled(
        &svc,
        &a,
        subscribed(Some(&cursor), vec![ones.clone()]),
        "tasks",
    )
    .await;
    assert_eq!(up, set(&["t7"]));
    assert_eq!(ev, set(&["t2"]));
    assert!(del.is_empty());

    // Widen: priority 2 too. Only what it adds arrives, rows last written long
    // ago included; nothing priority 1 already sent comes again.
    let (up, del, ev, cursor) = pulled(
        &svc,
        &a,
        subscribed(Some(&cursor), vec![ones.clone(), twos.clone()]),
        "tasks",
    )
    .await;
    assert_eq!(up, set(&["t2", "t6", "t8", "t9", "t10"]));
    assert!(del.is_empty() && ev.is_empty(), "{del:?} {ev:?}");

    // Widen with one that overlaps both: everything it matches was sent already.
    let open = sub(
        "tasks",
        None,
        Some(json!({"column": "done", "op": "eq", "value": false})),
    );
    let (up, _, ev, _) = pulled(
        &svc,
        &a,
        subscribed(Some(&cursor), vec![ones.clone(), twos.clone(), open]),
        "tasks",
    )
    .await;
    assert!(up.is_empty() && ev.is_empty(), "{up:?} {ev:?}");

    // A row that moves from one subscription to another is not evicted.
    push(
        &svc,
        &a,
        "writer",
        vec![update("m13", "tasks", "t1", 1, json!({"priority": 2}))],
    )
    .await;
    let (up, _, ev, cursor) = pulled(
        &svc,
        &a,
        subscribed(Some(&cursor), vec![ones.clone(), twos.clone()]),
        "tasks",
    )
    .await;
    assert_eq!(up, set(&["t1"]));
    assert!(ev.is_empty(), "{ev:?}");

    // Narrow to priority 2, then subscribe to priority 1 again: it starts afresh.
    let (up, _, ev, cursor) = pulled(
        &svc,
        &a,
        subscribed(Some(&cursor), vec![twos.clone()]),
        "tasks",
    )
    .await;
    assert!(up.is_empty() && ev.is_empty(), "{up:?} {ev:?}");
    let (up, _, _, _) = pulled(
        &svc,
        &a,
        subscribed(Some(&cursor), vec![twos, ones]),
        "tasks",
    )
    .await;
    assert_eq!(up, set(&["t3", "t4", "t5", "t7"]));
}

async fn a_subscription_to_a_scope_gets_that_scope_only(svc: SyncService) {
    let a = alice();
    push(
        &svc,
        &a,
        "writer",
        vec![
            create(
                "m1",
                "docs",
                "shared",
                json!({"title": "s", "space": "team"}),
            ),
            create("m2", "docs", "mine", json!({"title": "m"})),
        ],
    )
    .await;
    let (up, _, _, _) = pulled(
        &svc,
        &a,
        subscribed(None, vec![sub("docs", Some("team"), None)]),
        "docs",
    )
    .await;
    assert_eq!(up, set(&["shared"]));
    let (up, _, _, _) = pulled(
        &svc,
        &a,
        subscribed(None, vec![sub("docs", Some("user:alice"), None)]),
        "docs",
    )
    .await;
    assert_eq!(up, set(&["mine"]));
    // A scope the caller does not hold gives nothing, and is not an error.
    let (up, del, ev, _) = pulled(
        &svc,
        &a,
        subscribed(None, vec![sub("docs", Some("user:bob"), None)]),
        "docs",
    )
    .await;
    assert!(up.is_empty() && del.is_empty() && ev.is_empty());
}

async fn subscriptions_outside_the_collection_config_are_refused(svc: SyncService) {
    let a = alice();
    let code = |r: Result<PullPage, ApiError>| r.unwrap_err().code;
    assert_eq!(
        code(pull(&svc, &a, &subscribed(None, vec![sub("nope", None, None)])).await),
        "unknown_collection"
    );
    for f in [
        json!({"column": "secret", "op": "eq", "value": 1}),
        json!({"column": "done", "op": "eq", "value": "yes"}),
        json!({"column": "title", "op": "near", "value": 1}),
        json!([]),
    ] {
        assert_eq!(
            code(
                pull(
                    &svc,
                    &a,
                    &subscribed(None, vec![sub("tasks", None, Some(f.clone()))])
                )
                .await
            ),
            "invalid_request",
            "{f}"
        );
    }
    let both = PullRequest {
        collections: Some(vec!["tasks".into()]),
        ..subscribed(None, vec![sub("tasks", None, None)])
    };
    assert_eq!(code(pull(&svc, &a, &both).await), "invalid_request");
}

async fn a_higher_priority_comes_first_and_its_last_page_is_a_checkpoint(svc: SyncService) {
    let a = alice();
    let project = |n: &str| json!({"name": n});
    push(
        &svc,
        &a,
        "c1",
        vec![
            create("m1", "tasks", "t1", task("t1")),
            create("m2", "projects", "p1", project("p1")),
            create("m3", "tasks", "t2", task("t2")),
            create("m4", "projects", "p2", project("p2")),
            create("m5", "tasks", "t3", task("t3")),
        ],
    )
    .await;
    let ranked = |cursor: Option<&str>, limit: u32| PullRequest {
        limit: Some(limit),
        priorities: Some([("projects".to_string(), 0)].into()),
        ..req(cursor)
    };
    let ids = |p: &PullPage, c: &str| -> Vec<String> {
        p.changes
            .get(c)
            .map(|c| c.upserts.iter().map(|r| r.id.clone()).collect())
            .unwrap_or_default()
    };
    // Projects first, on their own page: the checkpoint of priority 0.
    let first = pull(&svc, &a, &ranked(None, 100)).await.unwrap();
    assert_eq!(ids(&first, "projects"), ["p1", "p2"]);
    assert!(ids(&first, "tasks").is_empty(), "not mixed with priority 3");
    assert!(first.has_more);
    assert_eq!(first.complete_priority, Some(0));
    let second = pull(&svc, &a, &ranked(Some(&first.cursor), 100))
        .await
        .unwrap();
    assert_eq!(ids(&second, "tasks"), ["t1", "t2", "t3"]);
    assert!(!second.has_more);
    assert_eq!(
        second.complete_priority, None,
        "the end of the pull says it all"
    );

    // Pages smaller than a priority: only the one that completes it says so.
    let p1 = pull(&svc, &a, &ranked(None, 1)).await.unwrap();
    assert_eq!(
        (ids(&p1, "projects"), p1.complete_priority),
        (vec!["p1".to_string()], None)
    );
    let p2 = pull(&svc, &a, &ranked(Some(&p1.cursor), 1)).await.unwrap();
    assert_eq!(
        (ids(&p2, "projects"), p2.complete_priority),
        (vec!["p2".to_string()], Some(0))
    );

    // Later changes of a higher priority still go first.
    push(
        &svc,
        &a,
        "c1",
        vec![
            create("m6", "tasks", "t4", task("t4")),
            create("m7", "projects", "p3", project("p3")),
        ],
    )
    .await;
    let next = pull(&svc, &a, &ranked(Some(&second.cursor), 100))
        .await
        .unwrap();
    assert_eq!(ids(&next, "projects"), ["p3"]);
    assert_eq!(next.complete_priority, Some(0));
    let last = pull(&svc, &a, &ranked(Some(&next.cursor), 100))
        .await
        .unwrap();
    assert_eq!(ids(&last, "tasks"), ["t4"]);

    // Without priorities, one page in position order, as before.
    let plain = pull(&svc, &a, &req(None)).await.unwrap();
    assert_eq!(ids(&plain, "tasks").len(), 4);
    assert_eq!(ids(&plain, "projects").len(), 3);
    assert_eq!(plain.complete_priority, None);

    let code = |r: Result<PullPage, ApiError>| r.unwrap_err().code;
    let bad = |c: &str, p: u8| PullRequest {
        priorities: Some([(c.to_string(), p)].into()),
        ..req(None)
    };
    assert_eq!(
        code(pull(&svc, &a, &bad("nope", 0)).await),
        "unknown_collection"
    );
    assert_eq!(
        code(pull(&svc, &a, &bad("tasks", 4)).await),
        "invalid_request"
    );

    // `max_priority`: only priority 0 is read, and the pull ends there; the
    // tasks wait at their positions and come with the next pull that asks.
    let capped = |cursor: Option<&str>, max: u8| PullRequest {
        max_priority: Some(max),
        ..ranked(cursor, 100)
    };
    let only = pull(&svc, &a, &capped(None, 0)).await.unwrap();
    assert_eq!(ids(&only, "projects"), ["p1", "p2", "p3"]);
    assert!(!only.changes.contains_key("tasks"));
    assert!(!only.has_more, "everything asked for is there");
    let again = pull(&svc, &a, &capped(Some(&only.cursor), 0))
        .await
        .unwrap();
    assert!(again.changes.is_empty() && !again.has_more);
    let rest = pull(&svc, &a, &ranked(Some(&again.cursor), 100))
        .await
        .unwrap();
    assert_eq!(ids(&rest, "tasks"), ["t1", "t2", "t3", "t4"]);
    assert!(!rest.changes.contains_key("projects"), "not twice");
    assert_eq!(
        code(pull(&svc, &a, &capped(None, 4)).await),
        "invalid_request"
    );
}

/// A first pull's totals and checksums (from its last page).
async fn totals_and_checksums(
    svc: &SyncService,
    who: &Caller,
) -> (
    std::collections::BTreeMap<String, u64>,
    std::collections::BTreeMap<String, ferry_protocol::Checksum>,
) {
    let r = PullRequest {
        want_checksums: true,
        ..req(None)
    };
    let last = pull_all(svc, who, r).await.pop().unwrap();
    (last.totals.unwrap(), last.checksums.unwrap())
}

/// Creates of tasks `t<i>` for each i, and of doc `d1` in scope `team`.
fn tasks_and_a_doc(ids: impl Iterator<Item = u32>, doc_title: &str) -> Vec<Mutation> {
    let mut ms: Vec<Mutation> = ids
        .map(|i| create(&format!("m{i}"), "tasks", &format!("t{i}"), task("x")))
        .collect();
    ms.push(create(
        "md",
        "docs",
        "d1",
        json!({"title": doc_title, "space": "team"}),
    ));
    ms
}

/// The checksum of a view: id → version of each live row.
fn checksum_of(view: &std::collections::BTreeMap<String, u64>) -> ferry_protocol::Checksum {
    let digest = view
        .iter()
        .fold(0, |d, (id, v)| d ^ ferry_protocol::record_digest(id, *v));
    ferry_protocol::Checksum::new(view.len() as u64, digest)
}

/// Applies a whole pull to `views` (collection → id → version); returns its
/// last page.
async fn pull_into(
    svc: &SyncService,
    who: &Caller,
    r: PullRequest,
    views: &mut std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
) -> PullPage {
    let mut pages = pull_all(svc, who, r).await;
    let last = pages.pop().unwrap();
    for p in pages.iter().chain([&last]) {
        for (c, ch) in &p.changes {
            let view = views.entry(c.clone()).or_default();
            for r in &ch.upserts {
                view.insert(r.id.clone(), r.version);
            }
            for id in ch.deletes.iter().chain(&ch.evictions) {
                view.remove(id);
            }
        }
    }
    for p in &pages {
        assert_eq!(p.checksums, None, "only the last page carries checksums");
    }
    last
}

async fn checksums_follow_every_write_and_a_restart_sends_a_collection_again(svc: SyncService) {
    let (a, b) = (alice(), bob());
    push(&svc, &a, "c1", tasks_and_a_doc(1..=5, "shared")).await;
    push(
        &svc,
        &b,
        "c2",
        vec![create(
            "n1",
            "docs",
            "d2",
            json!({"title": "bob's", "space": "team"}),
        )],
    )
    .await;
    let asked = |cursor: Option<&str>| PullRequest {
        limit: Some(2),
        want_checksums: true,
        ..req(cursor)
    };
    let mut views = Default::default();
    let last = pull_into(&svc, &a, asked(None), &mut views).await;
    let sums = last.checksums.clone().expect("the last page has checksums");
    assert_eq!(sums["tasks"], checksum_of(&views["tasks"]));
    assert_eq!(sums["docs"], checksum_of(&views["docs"]));
    assert_eq!(sums["tasks"].count, 5);
    assert_eq!(sums["docs"].count, 2, "bob's shared doc is in alice's view");

    // An update in place, a delete, an eviction by the sync rule, another
    // user's write in a shared scope: the checksums follow each.
    push(
        &svc,
        &a,
        "c1",
        vec![
            update("m7", "tasks", "t1", 1, json!({"title": "y"})),
            delete("m8", "tasks", "t2", 1),
            update("m9", "tasks", "t3", 1, json!({"archived": true})),
        ],
    )
    .await;
    push(
        &svc,
        &b,
        "c2",
        vec![update(
            "n2",
            "docs",
            "d1",
            1,
            json!({"title": "bob was here"}),
        )],
    )
    .await;
    let before = sums;
    let last = pull_into(&svc, &a, asked(Some(&last.cursor)), &mut views).await;
    let sums = last.checksums.clone().unwrap();
    assert_eq!(sums["tasks"], checksum_of(&views["tasks"]));
    assert_eq!(sums["docs"], checksum_of(&views["docs"]));
    assert_eq!(sums["tasks"].count, 3);
    assert_ne!(
        sums["docs"].digest, before["docs"].digest,
        "d1 is at version 2"
    );
    assert_eq!(sums["docs"].count, before["docs"].count);

    // Not asked, or a view that is not the whole collection: no checksum.
    let plain = pull(&svc, &a, &req(Some(&last.cursor))).await.unwrap();
    assert_eq!(plain.checksums, None);
    let narrowed = PullRequest {
        subscriptions: Some(vec![
            sub(
                "tasks",
                None,
                Some(json!({"column": "done", "op": "eq", "value": false})),
            ),
            sub("docs", None, None),
        ]),
        want_checksums: true,
        ..req(None)
    };
    let pages = pull_all(&svc, &a, narrowed).await;
    let sums = pages.last().unwrap().checksums.clone().unwrap();
    assert!(
        !sums.contains_key("tasks"),
        "a filtered view has no checksum"
    );
    assert_eq!(sums["docs"], checksum_of(&views["docs"]));

    // A repair: `restart` sends every live row of tasks again, from the
    // cursor at the end, and docs go on from it (nothing new).
    let again = PullRequest {
        restart: Some(vec!["tasks".into()]),
        ..asked(Some(&last.cursor))
    };
    let mut fresh = Default::default();
    let end = pull_into(&svc, &a, again, &mut fresh).await;
    assert_eq!(fresh["tasks"], views["tasks"], "every live task, again");
    assert!(!fresh.contains_key("docs"), "docs went on from the cursor");
    assert_eq!(
        end.checksums.unwrap()["tasks"],
        checksum_of(&views["tasks"])
    );
    let bad = PullRequest {
        restart: Some(vec!["nope".into()]),
        ..req(Some(&end.cursor))
    };
    let err = pull(&svc, &a, &bad).await.unwrap_err();
    assert_eq!(err.code, ferry_protocol::error_code::INVALID_REQUEST);
}

/// Totals kept by a server from before digests: the collection gets no
/// checksum (the server cannot vouch for it), its counts still do, and a
/// collection whose totals start after the upgrade gets one.
async fn totals_from_before_digests_get_no_checksum(db: TestDb, forget: impl AsyncFnOnce(&str)) {
    let a = alice();
    let svc = service(&db).await;
    push(&svc, &a, "c1", vec![create("m1", "tasks", "t1", task("x"))]).await;
    drop(svc);
    forget(&db.url).await;
    let svc = service(&db).await;
    push(
        &svc,
        &a,
        "c1",
        vec![
            create("m2", "tasks", "t2", task("y")),
            create("m3", "docs", "d1", json!({"title": "new", "space": "team"})),
        ],
    )
    .await;
    let (totals, sums) = totals_and_checksums(&svc, &a).await;
    assert!(!sums.contains_key("tasks"), "{sums:?}");
    assert_eq!(sums["docs"].count, 1);
    assert_eq!(totals["tasks"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_totals_from_before_digests_get_no_checksum() {
    // The upgrade itself: a totals table without the column gets it, empty.
    totals_from_before_digests_get_no_checksum(sqlite_db(), async |url: &str| {
        let path = url.strip_prefix("sqlite:").unwrap();
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("ALTER TABLE totals DROP COLUMN digest")
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_totals_from_before_digests_get_no_checksum() {
    let Some(db) = pg_db().await else { return };
    totals_from_before_digests_get_no_checksum(db, async |url: &str| {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        // The database as an older server left it: counts only, in `totals`.
        client
            .batch_execute(
                "INSERT INTO totals (scope, collection, count)
                   SELECT scope, collection, SUM(count) FROM totals_delta GROUP BY 1, 2
                   ON CONFLICT (scope, collection) DO UPDATE SET count = totals.count + excluded.count;
                 DROP TABLE totals_delta;
                 ALTER TABLE totals DROP COLUMN digest;",
            )
            .await
            .unwrap();
    })
    .await;
}

/// PostgreSQL keeps a write's changes of the totals in `totals_delta` (so that
/// concurrent writers take no common lock) and folds them into `totals` in the
/// background: a pull reads the same totals and checksums either side of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_totals_read_the_same_before_and_after_a_fold() {
    let Some(db) = pg_db().await else { return };
    // No background folder: this test folds.
    let pg = std::sync::Arc::new(
        ferry_server::storage::postgres::PgStorage::connect_with(&db.url, None)
            .await
            .unwrap(),
    );
    let svc = SyncService::new(pg.clone(), test_config()).await.unwrap();
    let a = alice();
    push(&svc, &a, "c1", tasks_and_a_doc(0..4, "d")).await;
    push(
        &svc,
        &a,
        "c1",
        vec![
            update("n1", "tasks", "t0", 1, json!({"title": "y"})),
            delete("n2", "tasks", "t1", 1),
        ],
    )
    .await;
    let read = async || totals_and_checksums(&svc, &a).await;
    let before = read().await;
    assert_eq!(before.0["tasks"], 3);
    let changed = pg.fold_totals().await.unwrap();
    assert!(changed >= 2, "tasks and docs in their scopes: {changed}");
    assert_eq!(pg.fold_totals().await.unwrap(), 0, "nothing left to fold");
    assert_eq!(read().await, before);
}
