//! Request-level suite: every endpoint and every bad input over real HTTP against an
//! in-process server (SQLite; the isolation test runs on PostgreSQL too).

mod common;

use common::*;
use ferry_protocol::{ErrorBody, PullPage, PushResponse};
use ferry_server::{RunningServer, ServerConfig, ServerOptions, start};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Harness {
    server: RunningServer,
    http: Client,
    _db: TestDb,
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(adjust: impl FnOnce(&mut ServerConfig)) -> Harness {
    harness_on(sqlite_db(), adjust).await
}

async fn harness_on(db: TestDb, adjust: impl FnOnce(&mut ServerConfig)) -> Harness {
    let mut config = test_config();
    adjust(&mut config);
    let server = start(ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        config,
    })
    .await
    .unwrap();
    Harness {
        server,
        http: Client::new(),
        _db: db,
    }
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn raw(
        &self,
        path: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.server.url()))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
    async fn pull(&self, token: &str, body: Value) -> PullPage {
        let (s, v) = self
            .call(Method::POST, "/v1/pull", Some(token), Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }
    async fn push(&self, token: &str, body: Value) -> PushResponse {
        let (s, v) = self
            .call(Method::POST, "/v1/push", Some(token), Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }
}

fn error_code(v: &Value) -> String {
    let body: ErrorBody =
        serde_json::from_value(v.clone()).unwrap_or_else(|_| panic!("not an ErrorBody: {v}"));
    body.error.code
}

fn create(mid: &str, id: &str, fields: Value) -> Value {
    json!({"mutation_id": mid, "collection": "tasks", "record_id": id, "op": "create", "fields": fields})
}

const ALICE: &str = "alice-dev-token";
const BOB: &str = "bob-dev-token";

#[tokio::test]
async fn missing_or_wrong_token_is_401_with_a_json_error() {
    let h = harness().await;
    // A well-formed push, so that "nothing written" says something.
    let push = json!({"client_id": "c1", "mutations": [create("m1", "t-unauth", json!({"title": "x", "done": false}))]});
    for (token, path, body) in [
        (None, "/v1/pull", json!({})),
        (Some("wrong"), "/v1/pull", json!({})),
        (None, "/v1/push", push.clone()),
        (Some("nope"), "/v1/push", push.clone()),
    ] {
        let (s, v) = h.call(Method::POST, path, token, Some(body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&v), "unauthorized");
        assert!(
            !v.to_string().contains("wrong") && !v.to_string().contains("nope"),
            "the token is not echoed"
        );
    }
    let (s, v) = h
        .call(Method::GET, "/watermelon/sync", Some("wrong"), None)
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    // Nothing of the refused pushes was written.
    let page = h.pull(ALICE, json!({})).await;
    assert!(
        page.changes
            .values()
            .all(|c| c.upserts.iter().all(|r| r.id != "t-unauth")),
        "{page:?}"
    );
    // The same push with alice's token is written: the check above can fail.
    let resp = h.push(ALICE, push).await;
    assert!(
        matches!(
            resp.results[0].outcome,
            ferry_protocol::MutationOutcome::Applied { .. }
        ),
        "{resp:?}"
    );
    let page = h.pull(ALICE, json!({})).await;
    assert!(
        page.changes["tasks"]
            .upserts
            .iter()
            .any(|r| r.id == "t-unauth")
    );
    h.server.shutdown().await;
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let h = harness().await;
    let (s, v) = h.call(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    h.pull(ALICE, json!({})).await;
    let (s, v) = h.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    for metric in [
        "ferry_http_requests_total",
        "ferry_http_request_duration_seconds_bucket",
        "ferry_pulls_total",
    ] {
        assert!(
            text.contains(metric),
            "{metric} missing from /metrics:\n{text}"
        );
    }
    let (s, v) = h.call(Method::GET, "/nope", None, None).await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn bad_inputs_get_typed_4xx_errors_and_write_nothing() {
    let h = harness().await;
    let (s, v) = h.raw("/v1/push", ALICE, "{not json").await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (s, v) = h.raw("/v1/pull", ALICE, r#"{"cursor": "#).await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (s, v) = h
        .raw("/v1/push", ALICE, r#"{"client_id": 5, "mutations": []}"#)
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, v) = h
        .call(
            Method::POST,
            "/v1/pull",
            Some(ALICE),
            Some(json!({"collections": ["nope"]})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "unknown_collection")
    );
    let (s, v) = h
        .call(
            Method::POST,
            "/v1/pull",
            Some(ALICE),
            Some(json!({"cursor": "forged.cursor"})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_cursor")
    );
    let big = json!({"client_id": "c", "mutations": [create("m1", "t1", json!({"title": "x".repeat(100_000), "done": false}))]});
    let (s, v) = h.raw("/v1/push", ALICE, big.to_string()).await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let resp = h
        .http
        .post(format!("{}/v1/pull", h.server.url()))
        .bearer_auth(ALICE)
        .header("ferry-protocol", "99")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_code(&resp.json().await.unwrap()),
        "unsupported_protocol"
    );
    let page = h.pull(ALICE, json!({})).await;
    assert!(
        page.changes.is_empty(),
        "nothing was written by any bad request"
    );
}

#[tokio::test]
async fn push_outcomes_over_http_retry_conflict_rejection_forbidden() {
    let h = harness().await;
    let batch = json!({"client_id": "phone", "mutations": [
        create("m1", "t1", json!({"title": "a", "done": false})),
        create("m2", "t2", json!({"title": 7, "done": false})),
        {"mutation_id": "m3", "collection": "docs", "record_id": "d1", "op": "create", "fields": {"title": "x", "space": "secret"}},
        create("m4", "t3", json!({"title": "c", "done": true})),
    ]});
    let first = h.push(ALICE, batch.clone()).await;
    let statuses: Vec<Value> = serde_json::to_value(&first.results)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            json!("applied"),
            json!("rejected"),
            json!("rejected"),
            json!("applied")
        ]
    );
    let v = serde_json::to_value(&first.results).unwrap();
    assert_eq!(v[1]["code"], "invalid_record");
    assert_eq!(v[2]["code"], "forbidden");
    let retry = h.push(ALICE, batch).await;
    assert_eq!(retry.results, first.results, "idempotent retry");
    // Conflict: stale base version.
    h.push(BOB, json!({"client_id": "b", "mutations": []}))
        .await;
    h.push(ALICE, json!({"client_id": "laptop", "mutations": [{"mutation_id": "m5", "collection": "tasks", "record_id": "t1", "op": "update", "fields": {"done": true}, "base_version": 1}]})).await;
    let c = h.push(ALICE, json!({"client_id": "phone", "mutations": [{"mutation_id": "m6", "collection": "tasks", "record_id": "t1", "op": "update", "fields": {"title": "b"}, "base_version": 1}]})).await;
    let v = serde_json::to_value(&c.results[0]).unwrap();
    assert_eq!(v["status"], "conflict");
    assert_eq!(v["server_record"]["version"], 2);
    // Bob cannot touch alice's record, nor learn that it exists: the answer
    // an unknown id gets.
    let f = h.push(BOB, json!({"client_id": "b", "mutations": [
        {"mutation_id": "x", "collection": "tasks", "record_id": "t1", "op": "delete", "base_version": 2},
        {"mutation_id": "y", "collection": "tasks", "record_id": "no-such", "op": "delete", "base_version": 2},
    ]})).await;
    let f = serde_json::to_value(&f.results).unwrap();
    assert_eq!(f[0]["code"], "not_found");
    assert_eq!(
        (&f[0]["code"], &f[0]["message"]),
        (&f[1]["code"], &f[1]["message"])
    );
    let pb = h.pull(BOB, json!({})).await;
    assert!(pb.changes.is_empty());
}

#[tokio::test]
async fn pull_pages_evictions_and_totals_over_http() {
    let h = harness().await;
    let ms: Vec<Value> = (0..60)
        .map(|i| {
            create(
                &format!("m{i}"),
                &format!("t{i}"),
                json!({"title": "x", "done": false}),
            )
        })
        .collect();
    h.push(ALICE, json!({"client_id": "c", "mutations": ms}))
        .await;
    let p1 = h
        .pull(ALICE, json!({"limit": 40, "want_totals": true}))
        .await;
    assert!(p1.has_more);
    assert_eq!(p1.changes["tasks"].upserts.len(), 40);
    assert_eq!(p1.totals.as_ref().unwrap()["tasks"], 60);
    let p2 = h
        .pull(ALICE, json!({"cursor": p1.cursor, "limit": 40}))
        .await;
    assert!(!p2.has_more);
    assert_eq!(p2.changes["tasks"].upserts.len(), 20);
    assert!(p2.totals.is_none(), "totals only when asked");
    h.push(ALICE, json!({"client_id": "c", "mutations": [{"mutation_id": "a", "collection": "tasks", "record_id": "t5", "op": "update", "fields": {"archived": true}, "base_version": 1}]})).await;
    let p3 = h
        .pull(ALICE, json!({"cursor": p2.cursor, "want_totals": true}))
        .await;
    assert_eq!(p3.changes["tasks"].evictions, vec!["t5".to_string()]);
    assert_eq!(p3.totals.unwrap()["tasks"], 59);
}

#[tokio::test]
async fn watermelon_pull_and_push_follow_the_watermelondb_backend_contract() {
    let h = harness().await;
    // First sync: everything accessible, as `created`.
    h.push(ALICE, json!({"client_id": "c", "mutations": [create("m1", "t1", json!({"title": "from ferry", "done": false}))]})).await;
    let (s, v) = h
        .call(
            Method::GET,
            "/watermelon/sync?last_pulled_at=null&schema_version=1&migration=null",
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["changes"]["tasks"]["created"][0]["id"], "t1");
    assert_eq!(v["changes"]["tasks"]["created"][0]["title"], "from ferry");
    assert!(v["changes"]["tasks"]["created"][0].get("_status").is_none());
    let ts = v["timestamp"].as_i64().unwrap();

    // Push: created, updated (full raw records with _status/_changed), deleted of a missing id.
    let push = json!({"changes": {"tasks": {
        "created": [{"id": "w1", "title": "from watermelon", "done": false, "_status": "created", "_changed": ""}],
        "updated": [{"id": "t1", "title": "edited", "done": true, "_status": "updated", "_changed": "title,done"}],
        "deleted": ["never-existed"]
    }}});
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/watermelon/sync?last_pulled_at={ts}"),
            Some(ALICE),
            Some(push.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("experimentalRejectedIds").is_none());
    // The same push again with the old last_pulled_at: its records changed after it → conflict.
    let (s, _) = h
        .call(
            Method::POST,
            &format!("/watermelon/sync?last_pulled_at={ts}"),
            Some(ALICE),
            Some(push),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "but the records changed after last_pulled_at: conflict"
    );

    // Incremental pull: t1 updated, w1 created since ts.
    let (_, v) = h
        .call(
            Method::GET,
            &format!("/watermelon/sync?last_pulled_at={ts}&schema_version=1"),
            Some(ALICE),
            None,
        )
        .await;
    let created: Vec<&str> = v["changes"]["tasks"]["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let updated: Vec<&str> = v["changes"]["tasks"]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!((created, updated), (vec!["w1"], vec!["t1"]));
    let ts2 = v["timestamp"].as_i64().unwrap();
    assert!(ts2 > ts);

    // A Ferry client changes t1 → a WatermelonDB push based on ts2 conflicts, nothing applies.
    h.push(ALICE, json!({"client_id": "c", "mutations": [{"mutation_id": "m2", "collection": "tasks", "record_id": "t1", "op": "update", "fields": {"done": false}, "base_version": 2}]})).await;
    let conflicting = json!({"tasks": {"created": [{"id": "w2", "title": "x", "done": false}], "updated": [{"id": "t1", "title": "mine", "done": true}], "deleted": []}});
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/watermelon/sync?last_pulled_at={ts2}"),
            Some(ALICE),
            Some(conflicting),
        )
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let page = h.pull(ALICE, json!({})).await;
    assert!(
        page.changes["tasks"].upserts.iter().all(|r| r.id != "w2"),
        "a conflicting push applies nothing"
    );

    // Per-record rejections: experimentalRejectedIds, the rest applied.
    let (_, v) = h
        .call(
            Method::GET,
            &format!("/watermelon/sync?last_pulled_at={ts2}"),
            Some(ALICE),
            None,
        )
        .await;
    let ts3 = v["timestamp"].as_i64().unwrap();
    let mixed = json!({"tasks": {"created": [
        {"id": "ok", "title": "fine", "done": false},
        {"id": "bad", "title": "x", "done": "not a boolean"}
    ], "updated": [], "deleted": []}});
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/watermelon/sync?last_pulled_at={ts3}"),
            Some(ALICE),
            Some(mixed),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["experimentalRejectedIds"], json!({"tasks": ["bad"]}));
    let page = h.pull(ALICE, json!({})).await;
    assert!(page.changes["tasks"].upserts.iter().any(|r| r.id == "ok"));

    // Unknown table and bad parameters.
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/watermelon/sync?last_pulled_at={ts3}"),
            Some(ALICE),
            Some(json!({"nope": {"created": [], "updated": [], "deleted": []}})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "unknown_collection")
    );
    let (s, v) = h
        .call(
            Method::GET,
            "/watermelon/sync?last_pulled_at=yesterday",
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, v) = h
        .call(
            Method::POST,
            "/watermelon/sync",
            Some(ALICE),
            Some(json!({"tasks": {}})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    // Migration: a table added since the last sync comes back in full.
    h.push(ALICE, json!({"client_id": "c", "mutations": [{"mutation_id": "p", "collection": "projects", "record_id": "p1", "op": "create", "fields": {"name": "P"}}]})).await;
    let (_, v) = h
        .call(
            Method::GET,
            &format!("/watermelon/sync?last_pulled_at={ts3}"),
            Some(ALICE),
            None,
        )
        .await;
    let ts4 = v["timestamp"].as_i64().unwrap();
    let migration = urlencode(r#"{"from":1,"tables":["projects"],"columns":[]}"#);
    let (_, v) = h
        .call(
            Method::GET,
            &format!(
                "/watermelon/sync?last_pulled_at={ts4}&schema_version=2&migration={migration}"
            ),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(v["changes"]["projects"]["updated"][0]["id"], "p1", "{v}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The protocol's JSON requests are objects, and so are the mutations of a push and
/// each table of a WatermelonDB push: the same fields as an array (which serde's
/// derived structs would take, field by field) are a `400 invalid_request`, and
/// nothing is written.
#[tokio::test]
async fn json_arrays_where_objects_are_promised_are_invalid_requests() {
    let h = harness().await;
    let task = json!({"title": "x", "done": false});
    let wm = "/watermelon/sync?last_pulled_at=0";
    let cases: Vec<(&str, String)> = vec![
        // Pull: `[cursor, client_id, limit]`, i.e. limit = 1.
        ("/v1/pull", "[null,null,1]".into()),
        ("/v1/pull", "[]".into()),
        // Push: the request as an array, and a mutation as an array.
        (
            "/v1/push",
            json!(["c", [create("m1", "t1", task.clone())]]).to_string(),
        ),
        (
            "/v1/push",
            json!({"client_id": "c", "mutations": [["m2", "tasks", "t2", "create", task.clone()]]})
                .to_string(),
        ),
        ("/v1/push", "5".into()),
        // WatermelonDB push: the changes as an array, and a table's changes as an
        // array (`[created, updated, deleted]`), bare and wrapped in `changes`.
        (
            wm,
            json!([{"tasks": {"created": [{"id": "w1", "title": "x", "done": false}]}}])
                .to_string(),
        ),
        (
            wm,
            json!({"tasks": [[{"id": "w2", "title": "x", "done": false}], [], []]}).to_string(),
        ),
        (
            wm,
            json!({"changes": {"tasks": [[{"id": "w3", "title": "x", "done": false}], [], []]}})
                .to_string(),
        ),
    ];
    for (path, body) in cases {
        let (s, v) = h.raw(path, ALICE, body.clone()).await;
        assert_eq!(
            (s, error_code(&v).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{path} {body}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expected a JSON object"),
            "the message says what is wrong: {v}"
        );
    }
    // WatermelonDB pull: `migration` is a JSON object, and so is each of its `columns`.
    for migration in [
        json!([1, ["tasks"], []]),
        json!({"from": 1, "columns": [["tasks", ["title"]]]}),
    ] {
        let path = format!(
            "/watermelon/sync?last_pulled_at=null&schema_version=1&migration={}",
            urlencode(&migration.to_string())
        );
        let (s, v) = h.call(Method::GET, &path, Some(ALICE), None).await;
        assert_eq!(
            (s, error_code(&v).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{migration}: {v}"
        );
    }
    // Not JSON at all is still malformed, whatever it starts with.
    let (s, v) = h.raw("/v1/pull", ALICE, "[1,").await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    // The object forms are served, and the refused requests wrote nothing.
    let page = h.pull(ALICE, json!({"limit": 1})).await;
    assert!(page.changes.is_empty(), "{:?}", page.changes);
    let (s, v) = h
        .call(
            Method::GET,
            &format!(
                "/watermelon/sync?last_pulled_at=null&schema_version=1&migration={}",
                urlencode(&json!({"from": 1, "tables": ["tasks"], "columns": [{"table": "projects", "columns": ["name"]}]}).to_string())
            ),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["changes"]["tasks"]["created"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// The `ferry_http_*` series of /metrics, each `(route, method)` label pair once.
fn metric_series(text: &str) -> Vec<String> {
    let mut series: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("ferry_http_requests_total{"))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(labels, _)| labels)
                .to_string()
        })
        .collect();
    series.sort();
    series
}

fn label<'a>(series: &'a str, name: &str) -> &'a str {
    let start = series
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name} label in {series}"))
        + name.len()
        + 2;
    let len = series[start..].find('"').unwrap();
    &series[start..start + len]
}

/// Clients choose methods and paths; a label value taken from them would be a new
/// series, kept for the life of the process. Made-up methods count as `other` and
/// paths no route matched as `unmatched`, so they never grow /metrics.
#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_metrics() {
    let h = harness().await;
    let burst = |from: usize| {
        let h = &h;
        async move {
            for i in from..from + 30 {
                let made_up = Method::from_bytes(format!("XMETHOD{i}").as_bytes()).unwrap();
                let (s, _) = h.call(made_up.clone(), "/v1/pull", Some(ALICE), None).await;
                assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
                let (s, _) = h
                    .call(made_up, &format!("/xpath{i}/deeper"), None, None)
                    .await;
                assert_eq!(s, StatusCode::NOT_FOUND);
                let (s, _) = h.call(Method::GET, &format!("/xpath{i}"), None, None).await;
                assert_eq!(s, StatusCode::NOT_FOUND);
            }
        }
    };
    let metrics = || async {
        let (s, v) = h.call(Method::GET, "/metrics", None, None).await;
        assert_eq!(s, StatusCode::OK);
        v.as_str().unwrap().to_string()
    };
    burst(0).await;
    let first = metrics().await;
    burst(30).await;
    let second = metrics().await;
    for text in [&first, &second] {
        assert!(!text.contains("XMETHOD"), "a made-up method is a label");
        assert!(!text.contains("xpath"), "a request path is a label");
    }
    let routes = [
        "/v1/pull",
        "/v1/push",
        "/v1/fetch",
        "/watermelon/sync",
        "/health",
        "/metrics",
        "unmatched",
    ];
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "other",
    ];
    let series = metric_series(&second);
    for s in &series {
        assert!(routes.contains(&label(s, "route")), "{s}");
        assert!(methods.contains(&label(s, "method")), "{s}");
    }
    // The made-up requests' series (only this test makes `other` ones): there after
    // the first burst, the same after the second.
    let other = |text: &str| {
        metric_series(text)
            .into_iter()
            .filter(|s| label(s, "method") == "other")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        other(&first),
        [
            r#"ferry_http_requests_total{route="/v1/pull",method="other",status="405"}"#,
            r#"ferry_http_requests_total{route="unmatched",method="other",status="404"}"#,
        ]
    );
    assert_eq!(other(&first), other(&second));
}

/// Turns a hang into a failure; never an assertion about how long something took.
const GUARD: std::time::Duration = std::time::Duration::from_secs(30);

async fn guarded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {GUARD:?}"))
}

/// Reads from a raw connection until the server closes it; returns what came.
async fn read_until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Sends `GET /health` on a raw keep-alive connection and reads its whole answer.
async fn health_on(socket: &mut TcpStream) -> String {
    socket
        .write_all(b"GET /health HTTP/1.1\r\nhost: ferry\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer ended: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return text.into_owned();
            }
        }
    }
}

/// A socket that sends half a request head, or nothing, is closed once the header
/// read timeout passes; before the fix it stayed open for ever.
#[tokio::test]
async fn a_connection_that_never_finishes_its_request_head_is_closed() {
    let h = harness_with(|c| c.limits.header_read_timeout_ms = 300).await;
    let addr = h.server.addr();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(
        b"POST /v1/pull HTTP/1.1\r\nhost: ferry\r\nauthorization: Bearer alice-dev-token\r\n",
    )
    .await
    .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(health_on(&mut idle).await.starts_with("HTTP/1.1 200"));
    for (what, socket) in [
        ("half a head", &mut half),
        ("nothing", &mut silent),
        ("nothing after an answer", &mut idle),
    ] {
        let got = guarded(what, read_until_closed(socket)).await;
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 408"),
            "{what}: closed without being served: {got:?}"
        );
    }
    // The server goes on serving.
    let (s, _) = h.call(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Past `max_connections`, a new connection is not served while the others stay
/// open, and is served once one of them closes.
#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let h = harness_with(|c| {
        c.limits.max_connections = 2;
        c.limits.header_read_timeout_ms = 60_000;
    })
    .await;
    let addr = h.server.addr();
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert!(health_on(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(health_on(&mut b).await.starts_with("HTTP/1.1 200"));
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nhost: ferry\r\n\r\n")
        .await
        .unwrap();
    // A round trip on `a` after `c` connected and sent its request: the server has
    // run meanwhile, and it has still not taken `c` on (without the cap it had).
    assert!(health_on(&mut a).await.starts_with("HTTP/1.1 200"));
    assert_eq!(h.server.open_connections(), 2);
    let mut buf = [0u8; 64];
    match c.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the connection past the cap got an answer: {other:?}"),
    }
    // `a` closes: `c` is accepted and served.
    drop(a);
    let answer = guarded("the waiting connection's answer", async {
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\"status\"") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed unanswered: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(h.server.open_connections(), 2, "b and c");
}

/// `client_id` is copied into every change row a push writes: one over the limit,
/// or outside its characters, is a `400 invalid_request` that says so, and the push
/// writes nothing. A pull checks it too.
#[tokio::test]
async fn a_client_id_outside_its_rule_is_refused_and_nothing_is_written() {
    let h = harness().await;
    let creates: Vec<Value> = (0..10)
        .map(|i| {
            create(
                &format!("m{i}"),
                &format!("t{i}"),
                json!({"title": "x", "done": false}),
            )
        })
        .collect();
    for (client_id, says) in [
        ("c".repeat(129), "129 bytes, over the limit of 128 bytes"),
        (
            "c".repeat(50_000),
            "50000 bytes, over the limit of 128 bytes",
        ),
        ("phone 1".to_string(), "contains ' '"),
        ("phone\n1".to_string(), "contains '\\n'"),
        ("a/b".to_string(), "contains '/'"),
        (String::new(), "client_id is empty"),
    ] {
        let (s, v) = h
            .raw(
                "/v1/push",
                ALICE,
                json!({"client_id": client_id, "mutations": creates}).to_string(),
            )
            .await;
        assert_eq!(
            (s, error_code(&v).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("client_id") && message.contains(says),
            "{message}"
        );
        assert!(message.len() < 200, "the message does not echo the id");
        if !client_id.is_empty() {
            let (s, v) = h
                .raw(
                    "/v1/pull",
                    ALICE,
                    json!({"client_id": client_id}).to_string(),
                )
                .await;
            assert_eq!(
                (s, error_code(&v).as_str()),
                (StatusCode::BAD_REQUEST, "invalid_request"),
                "{v}"
            );
        }
    }
    let page = h.pull(ALICE, json!({})).await;
    assert!(page.changes.is_empty(), "nothing was written");
    // At the limit, and a UUID (what the core sends), are accepted.
    let at_limit = "c".repeat(128);
    let done = h
        .push(ALICE, json!({"client_id": at_limit, "mutations": creates}))
        .await;
    assert_eq!(done.results.len(), 10);
    let page = h
        .pull(
            ALICE,
            json!({"client_id": "0190a3c2-7b1e-7c3d-9f00-123456789abc"}),
        )
        .await;
    assert_eq!(page.changes["tasks"].upserts.len(), 10);
}

/// What the server logs, captured: a `tracing` fmt subscriber writing to a buffer,
/// with tracing-subscriber's own ANSI sanitizing off, so the server's escaping is
/// what is tested (an embedding app's subscriber may not sanitize).
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A record id with a newline and a terminal escape in it is rejected, and the
/// log line that reports it stays one line, with neither character in it raw:
/// before the fix, the id's second half was a log line of its own.
#[tokio::test]
async fn client_strings_cannot_forge_log_lines() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_ansi_sanitization(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    // The test runtime has one thread: the server's tasks log through this too.
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = harness().await;
    let forged = "x\nFORGED ERROR ferry_server::auth: admin login ok";
    let escape = "y\u{1b}[2J\u{1b}[31mred";
    let push = json!({"tasks": {"created": [
        {"id": forged, "title": "a", "done": false},
        {"id": escape, "title": "b", "done": false},
    ]}});
    let (s, v) = h
        .call(
            Method::POST,
            "/watermelon/sync?last_pulled_at=0",
            Some(ALICE),
            Some(push),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["experimentalRejectedIds"]["tasks"],
        json!([forged, escape]),
        "both ids are refused (control characters)"
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("watermelon record rejected"))
        .collect();
    assert_eq!(rejected.len(), 2, "both rejections are logged:\n{text}");
    assert!(rejected[0].contains(r"x\nFORGED ERROR"), "{}", rejected[0]);
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED")),
        "a forged line:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "a raw ESC in the log:\n{text:?}");
}

// ---- The decisions of docs/protocol.md, "Access decisions", one test each ----

/// Another user's id gets the answer an unknown id gets, on both endpoints: a
/// Ferry update or delete is `not_found`, a WatermelonDB delete is ignored, and
/// a create of a taken id is `already_exists` whoever holds it.
#[tokio::test]
async fn a_foreign_id_is_answered_as_an_unknown_one() {
    let h = harness().await;
    h.push(
        ALICE,
        json!({"client_id": "a", "mutations": [
            create("m1", "t1", json!({"title": "alice's", "done": false})),
        ]}),
    )
    .await;
    let before = h.pull(ALICE, json!({})).await.changes;
    let carol = "carol-token";
    let r = h.push(carol, json!({"client_id": "c", "mutations": [
        {"mutation_id": "u1", "collection": "tasks", "record_id": "t1", "op": "update", "fields": {"title": "x"}},
        {"mutation_id": "u2", "collection": "tasks", "record_id": "nope", "op": "update", "fields": {"title": "x"}},
        {"mutation_id": "d1", "collection": "tasks", "record_id": "t1", "op": "delete"},
        {"mutation_id": "d2", "collection": "tasks", "record_id": "nope", "op": "delete"},
        create("c1", "t1", json!({"title": "squat", "done": false})),
    ]}))
    .await;
    let r = serde_json::to_value(&r.results).unwrap();
    let answer = |i: usize| {
        (
            r[i]["status"].clone(),
            r[i]["code"].clone(),
            r[i]["message"].clone(),
        )
    };
    assert_eq!(answer(0), answer(1), "update: {r}");
    assert_eq!(answer(2), answer(3), "delete: {r}");
    assert_eq!(r[0]["code"], "not_found");
    assert_eq!(r[4]["code"], "already_exists");
    let own = h
        .push(
            ALICE,
            json!({"client_id": "a", "mutations": [
                create("m2", "t1", json!({"title": "again", "done": false})),
            ]}),
        )
        .await;
    let own = serde_json::to_value(&own.results).unwrap();
    assert_eq!(
        (&own[0]["code"], &own[0]["message"]),
        (&r[4]["code"], &r[4]["message"]),
        "a create of a taken id is answered alike, whoever holds it"
    );
    // WatermelonDB: deleting a foreign id is ignored, as deleting a missing one is.
    let (s, v) = h
        .call(
            Method::POST,
            "/watermelon/sync?last_pulled_at=1",
            Some(carol),
            Some(json!({"tasks": {"created": [], "updated": [], "deleted": ["t1", "nope"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("experimentalRejectedIds").is_none(), "{v}");
    assert_eq!(
        h.pull(ALICE, json!({})).await.changes,
        before,
        "alice's record is untouched"
    );
    h.server.shutdown().await;
}

/// One member of a shared scope cannot take a shared record private (it would
/// vanish for every other member); moving a private record into a shared scope
/// the writer holds is fine.
#[tokio::test]
async fn a_shared_record_cannot_be_moved_into_a_private_scope() {
    let h = harness().await;
    let doc = |mid: &str, op: &str, fields: Value| json!({"client_id": "a", "mutations": [{"mutation_id": mid, "collection": "docs", "record_id": "d1", "op": op, "fields": fields}]});
    h.push(
        ALICE,
        doc("m1", "create", json!({"title": "shared", "space": "team"})),
    )
    .await;
    let bob_before = h.pull(BOB, json!({})).await.changes;
    for (mid, space) in [("m2", Value::Null), ("m3", json!("user:alice"))] {
        let r = h
            .push(ALICE, doc(mid, "update", json!({"space": space})))
            .await;
        let r = serde_json::to_value(&r.results).unwrap();
        assert_eq!(
            (r[0]["status"].as_str(), r[0]["code"].as_str()),
            (Some("rejected"), Some("forbidden")),
            "{r}"
        );
    }
    assert_eq!(
        h.pull(BOB, json!({})).await.changes,
        bob_before,
        "bob still has it"
    );
    // Private to shared: allowed.
    let r = h.push(ALICE, json!({"client_id": "a", "mutations": [
        {"mutation_id": "m4", "collection": "docs", "record_id": "d2", "op": "create", "fields": {"title": "mine"}},
        {"mutation_id": "m5", "collection": "docs", "record_id": "d2", "op": "update", "fields": {"space": "team"}},
    ]}))
    .await;
    let r = serde_json::to_value(&r.results).unwrap();
    assert_eq!(
        (r[0]["status"].as_str(), r[1]["status"].as_str()),
        (Some("applied"), Some("applied")),
        "{r}"
    );
    let bob = h.pull(BOB, json!({})).await;
    assert!(bob.changes["docs"].upserts.iter().any(|d| d.id == "d2"));
    h.server.shutdown().await;
}

/// A JWT whose `scopes` claim names another user's owner scope is refused as a
/// whole (before the fix it read that user's private records).
#[tokio::test]
async fn a_jwt_naming_another_users_owner_scope_is_refused() {
    let secret = "a-secret-of-at-least-32-bytes-long!";
    let h = harness_with(|c| {
        c.jwt = Some(ferry_server::config::JwtConfig {
            hs256_secret: secret.into(),
            issuer: None,
        })
    })
    .await;
    h.push(
        ALICE,
        json!({"client_id": "a", "mutations": [
            create("m1", "t1", json!({"title": "private", "done": false})),
        ]}),
    )
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let jwt = |scopes: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "mallory", "exp": exp, "scopes": scopes}),
            &key,
        )
        .unwrap()
    };
    let grab = jwt(json!(["team", "user:alice"]));
    for path in ["/v1/pull", "/v1/push"] {
        let body = if path == "/v1/pull" {
            json!({})
        } else {
            json!({"client_id": "m", "mutations": [{"mutation_id": "x", "collection": "tasks", "record_id": "t1", "op": "delete"}]})
        };
        let (s, v) = h.call(Method::POST, path, Some(&grab), Some(body)).await;
        assert_eq!(
            (s, error_code(&v).as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{path}"
        );
    }
    let (s, _) = h
        .call(
            Method::GET,
            "/watermelon/sync?last_pulled_at=null",
            Some(&grab),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Its own owner scope may be named; it still sees nothing of alice's.
    let own = jwt(json!(["user:mallory"]));
    let (s, v) = h
        .call(Method::POST, "/v1/pull", Some(&own), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!v.to_string().contains("private"), "{v}");
    assert_eq!(
        h.pull(ALICE, json!({})).await.changes["tasks"]
            .upserts
            .len(),
        1
    );
    h.server.shutdown().await;
}

/// WatermelonDB's `timestamp` moves only when something the caller can see
/// changes: another user's writes do not show in it.
#[tokio::test]
async fn the_watermelon_timestamp_does_not_show_other_users_writes() {
    let h = harness().await;
    h.push(
        ALICE,
        json!({"client_id": "a", "mutations": [
            create("m1", "t1", json!({"title": "a", "done": false})),
        ]}),
    )
    .await;
    let timestamp = |since: Option<i64>| {
        let path = match since {
            Some(t) => format!("/watermelon/sync?last_pulled_at={t}"),
            None => "/watermelon/sync?last_pulled_at=null".to_string(),
        };
        let h = &h;
        async move {
            let (s, v) = h.call(Method::GET, &path, Some(ALICE), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["timestamp"].as_i64().unwrap()
        }
    };
    let t1 = timestamp(None).await;
    // Carol writes 20 records in her own scope.
    let mutations: Vec<Value> = (0..20)
        .map(|i| {
            create(
                &format!("c{i}"),
                &format!("carol-{i}"),
                json!({"title": "c", "done": false}),
            )
        })
        .collect();
    h.push(
        "carol-token",
        json!({"client_id": "c", "mutations": mutations}),
    )
    .await;
    assert_eq!(
        timestamp(Some(t1)).await,
        t1,
        "carol's writes are not alice's news"
    );
    assert_eq!(timestamp(None).await, t1, "nor on a full pull");
    // Alice's own change moves it.
    h.push(ALICE, json!({"client_id": "a", "mutations": [
        {"mutation_id": "m2", "collection": "tasks", "record_id": "t1", "op": "update", "fields": {"done": true}},
    ]}))
    .await;
    let t2 = timestamp(Some(t1)).await;
    assert!(t2 > t1);
    h.server.shutdown().await;
}

/// A request body must be declared as JSON (WatermelonDB's push may also be
/// `text/plain` or undeclared, as its documented frontend sends it): anything
/// else is `415 unsupported_media_type`, and nothing is written.
#[tokio::test]
async fn a_body_not_declared_as_json_is_415() {
    let h = harness().await;
    let send = |path: &str, content_type: Option<&str>, body: Value| {
        let mut req = h
            .http
            .post(format!("{}{path}", h.server.url()))
            .bearer_auth(ALICE)
            .body(body.to_string());
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let push = |id: &str| json!({"client_id": "a", "mutations": [create(id, id, json!({"title": "x", "done": false}))]});
    let wm = |id: &str| json!({"tasks": {"created": [{"id": id, "title": "x", "done": false}], "updated": [], "deleted": []}});
    for (path, ty, body) in [
        ("/v1/push", None, push("p1")),
        ("/v1/push", Some("text/plain"), push("p2")),
        (
            "/v1/push",
            Some("application/x-www-form-urlencoded"),
            push("p3"),
        ),
        (
            "/v1/pull",
            Some("multipart/form-data; boundary=x"),
            json!({}),
        ),
        (
            "/watermelon/sync?last_pulled_at=1",
            Some("application/x-www-form-urlencoded"),
            wm("w1"),
        ),
    ] {
        let (s, v) = send(path, ty, body).await;
        assert_eq!(
            (s, error_code(&v).as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{path} as {ty:?}"
        );
    }
    assert!(
        h.pull(ALICE, json!({})).await.changes.is_empty(),
        "nothing was written"
    );
    for (path, ty, body) in [
        (
            "/v1/push",
            Some("application/json; charset=utf-8"),
            push("ok1"),
        ),
        (
            "/watermelon/sync?last_pulled_at=1",
            Some("text/plain;charset=UTF-8"),
            wm("ok2"),
        ),
        ("/watermelon/sync?last_pulled_at=1", None, wm("ok3")),
    ] {
        let (s, v) = send(path, ty, body).await;
        assert_eq!(s, StatusCode::OK, "{path} as {ty:?}: {v}");
    }
    let page = h.pull(ALICE, json!({})).await;
    assert_eq!(page.changes["tasks"].upserts.len(), 3);
    h.server.shutdown().await;
}

#[tokio::test]
async fn a_gzip_body_is_read_and_its_limit_counts_what_it_expands_to() {
    use std::io::Write;
    let gz = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let h = harness_with(|c| c.limits.max_body_bytes = 64 * 1024).await;
    let send = |encoding: &'static str, body: Vec<u8>| {
        let req = h
            .http
            .post(format!("{}/v1/push", h.server.url()))
            .bearer_auth(ALICE)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let push = |id: &str, title: String| {
        json!({"client_id": "a", "mutations": [create(id, id, json!({"title": title, "done": false}))]})
            .to_string()
            .into_bytes()
    };
    // A compressed push is applied like a plain one.
    let (s, v) = send("gzip", gz(&push("g1", "compressed".into()))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // 200 kB of JSON that gzip shrinks to well under the 64 kB limit: the
    // limit is on what it expands to.
    let bomb = gz(&push("g2", "x".repeat(200_000)));
    assert!(bomb.len() < 64 * 1024 / 10, "{} bytes", bomb.len());
    let (s, v) = send("gzip", bomb).await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{v}"
    );
    // Not gzip although it says so, cut short, or an encoding not spoken.
    let mut cut = gz(&push("g3", "cut".into()));
    cut.truncate(cut.len() - 12);
    for (encoding, body, status, code) in [
        (
            "gzip",
            b"not gzip at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        ("gzip", cut, StatusCode::BAD_REQUEST, "malformed_json"),
        (
            "br",
            push("g4", "brotli".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ] {
        let (s, v) = send(encoding, body).await;
        assert_eq!(
            (s, error_code(&v).as_str()),
            (status, code),
            "{encoding}: {v}"
        );
    }
    let page = h.pull(ALICE, json!({})).await;
    let ids: Vec<&str> = page.changes["tasks"]
        .upserts
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids, ["g1"], "only the good push wrote");
    h.server.shutdown().await;
}

/// `POST /v1/fetch` over HTTP: the records that match, auth like every other
/// endpoint, and typed 4xx errors for bad bodies.
#[tokio::test]
async fn fetch_answers_a_query_over_http_with_typed_errors() {
    let h = harness().await;
    h.push(
        ALICE,
        json!({"client_id": "a", "mutations": [
            create("m1", "t1", json!({"title": "buy milk", "done": false})),
            create("m2", "t2", json!({"title": "walk", "done": true})),
        ]}),
    )
    .await;
    let q = json!({"collection": "tasks", "query": {"where": {"column": "title", "op": "like", "value": "BUY%"}}});
    let (s, v) = h
        .call(Method::POST, "/v1/fetch", Some(ALICE), Some(q.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["records"][0]["id"], "t1");
    assert_eq!(v["records"][0]["fields"]["title"], "buy milk");
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    assert_eq!(v["has_more"], false);
    let (s, v) = h
        .call(Method::POST, "/v1/fetch", Some(BOB), Some(q.clone()))
        .await;
    assert_eq!(
        (s, v["records"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "not bob's"
    );
    let (s, v) = h.call(Method::POST, "/v1/fetch", None, Some(q)).await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    for (body, status, code) in [
        ("{", StatusCode::BAD_REQUEST, "malformed_json"),
        ("[\"tasks\"]", StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "{\"query\": {}}",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "{\"collection\": \"nope\"}",
            StatusCode::BAD_REQUEST,
            "unknown_collection",
        ),
        (
            "{\"collection\": \"tasks\", \"query\": {\"where\": {\"column\": \"x\", \"op\": \"eq\", \"value\": 1}}}",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (s, v) = h.raw("/v1/fetch", ALICE, body).await;
        assert_eq!((s, error_code(&v).as_str()), (status, code), "{body}");
    }
    h.server.shutdown().await;
}

/// Every credential that is not a valid one, on every endpoint that needs one.
#[tokio::test]
async fn every_endpoint_refuses_every_bad_credential_and_writes_nothing() {
    let secret = "a-secret-of-at-least-32-bytes-long!";
    let issuer = "https://auth.example.test";
    let h = harness_with(|c| {
        c.jwt = Some(ferry_server::config::JwtConfig {
            hs256_secret: secret.into(),
            issuer: Some(issuer.into()),
        })
    })
    .await;
    h.push(
        ALICE,
        json!({"client_id": "a", "mutations": [
            create("m1", "t1", json!({"title": "kept", "done": false})),
        ]}),
    )
    .await;
    let before = h.pull(ALICE, json!({})).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let good = json!({"sub": "alice", "exp": now + 3600, "iss": issuer});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let mut without_iss = good.clone();
    without_iss.as_object_mut().unwrap().remove("iss");
    let mut without_sub = good.clone();
    without_sub.as_object_mut().unwrap().remove("sub");
    // The valid JWT works: the matrix below fails for the credential alone.
    let valid = sign(good.clone(), secret);
    let (s, v) = h
        .call(Method::POST, "/v1/pull", Some(&valid), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("an empty bearer", Some(String::new())),
        ("an unknown static token", Some("alice-dev-token-x".into())),
        (
            "a JWT signed with another key",
            Some(sign(good.clone(), "another-secret-of-32-bytes-or-more")),
        ),
        (
            "an expired JWT",
            Some(sign(with("exp", json!(now - 3600)), secret)),
        ),
        (
            "a JWT not valid yet",
            Some(sign(with("nbf", json!(now + 3600)), secret)),
        ),
        (
            "a JWT of another issuer",
            Some(sign(with("iss", json!("https://evil.test")), secret)),
        ),
        ("a JWT without an issuer", Some(sign(without_iss, secret))),
        ("a JWT without a subject", Some(sign(without_sub, secret))),
        (
            "a JWT with no expiry",
            Some(sign(json!({"sub": "alice", "iss": issuer}), secret)),
        ),
        (
            "a JWT cut short",
            Some(valid[..valid.len() - 5].to_string()),
        ),
        ("not a JWT", Some("a.b.c".into())),
    ];
    let push = json!({"client_id": "m", "mutations": [
        create("x1", "evil", json!({"title": "written", "done": false})),
        {"mutation_id": "x2", "collection": "tasks", "record_id": "t1", "op": "delete"},
    ]});
    let watermelon_push =
        json!({"changes": {"tasks": {"created": [], "updated": [], "deleted": ["t1"]}}});
    let routes: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::POST, "/v1/pull", Some(json!({}))),
        (Method::POST, "/v1/push", Some(push)),
        (
            Method::POST,
            "/v1/fetch",
            Some(json!({"collection": "tasks"})),
        ),
        (Method::GET, "/watermelon/sync?last_pulled_at=null", None),
        (
            Method::POST,
            "/watermelon/sync?last_pulled_at=0",
            Some(watermelon_push),
        ),
    ];
    for (what, token) in &bad {
        for (method, path, body) in &routes {
            let (s, v) = h
                .call(method.clone(), path, token.as_deref(), body.clone())
                .await;
            assert_eq!(
                (s, error_code(&v).as_str()),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{what} on {method} {path}: {v}"
            );
        }
    }
    // A header that is not a bearer at all.
    let resp = h
        .http
        .post(format!("{}/v1/pull", h.server.url()))
        .header("authorization", format!("Basic {ALICE}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let after = h.pull(ALICE, json!({})).await;
    assert_eq!(after.changes, before.changes, "nothing was written");
    h.server.shutdown().await;
}

/// Two users over real HTTP, on both backends: neither reads, changes or
/// learns of the other's private records, through any endpoint.
async fn two_users_are_isolated(db: TestDb) {
    let h = harness_on(db, |_| {}).await;
    h.push(
        ALICE,
        json!({"client_id": "a", "mutations": [
            create("m1", "a-private", json!({"title": "alice only", "done": false})),
        ]}),
    )
    .await;
    h.push(
        BOB,
        json!({"client_id": "b", "mutations": [
            create("m1", "b-private", json!({"title": "bob only", "done": false})),
        ]}),
    )
    .await;
    let sees = |v: &Value, what: &str| v.to_string().contains(what);
    // Reads: pull, fetch (by id too), WatermelonDB pull.
    let (_, pull) = h
        .call(Method::POST, "/v1/pull", Some(BOB), Some(json!({})))
        .await;
    let (_, fetch) = h
        .call(
            Method::POST,
            "/v1/fetch",
            Some(BOB),
            Some(json!({"collection": "tasks", "query": {"where": {"column": "id", "op": "eq", "value": "a-private"}}})),
        )
        .await;
    let (_, wm) = h
        .call(
            Method::GET,
            "/watermelon/sync?last_pulled_at=null",
            Some(BOB),
            None,
        )
        .await;
    for (route, v) in [("pull", &pull), ("fetch", &fetch), ("watermelon", &wm)] {
        assert!(
            !sees(v, "alice only") && !sees(v, "a-private"),
            "{route}: {v}"
        );
        assert!(
            route == "fetch" || sees(v, "bob only"),
            "{route} shows bob his own: {v}"
        );
    }
    // Writes: an update and a delete of alice's record fail for bob, the same
    // way as for an id that does not exist.
    let attempt = |mid: &str, id: &str, op: &str| {
        json!({"client_id": "b", "mutations": [
            {"mutation_id": mid, "collection": "tasks", "record_id": id, "op": op,
             "fields": {"title": "bob was here"}, "base_version": 1},
        ]})
    };
    for op in ["update", "delete"] {
        let foreign = h
            .push(BOB, attempt(&format!("f-{op}"), "a-private", op))
            .await;
        let unknown = h.push(BOB, attempt(&format!("u-{op}"), "nobody", op)).await;
        assert_eq!(
            serde_json::to_value(&foreign.results[0].outcome).unwrap(),
            serde_json::to_value(&unknown.results[0].outcome).unwrap(),
            "{op}: a foreign id answers as an unknown one"
        );
    }
    // A create of alice's id does not overwrite it.
    h.push(
        BOB,
        json!({"client_id": "b", "mutations": [
            create("c1", "a-private", json!({"title": "bob was here", "done": false})),
        ]}),
    )
    .await;
    let mine = h.pull(ALICE, json!({})).await;
    let rec = mine.changes["tasks"]
        .upserts
        .iter()
        .find(|r| r.id == "a-private")
        .expect("alice still has it");
    assert_eq!(rec.fields["title"], "alice only");
    assert_eq!(rec.version, 1);
    // Bob's cursor is no key to alice's view.
    let bobs: PullPage = serde_json::from_value(pull).unwrap();
    let (s, v) = h
        .call(
            Method::POST,
            "/v1/pull",
            Some(ALICE),
            Some(json!({"cursor": bobs.cursor})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_cursor")
    );
    h.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_are_isolated_over_http_on_sqlite() {
    two_users_are_isolated(sqlite_db()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_are_isolated_over_http_on_postgres() {
    let Some(db) = pg_db().await else { return };
    two_users_are_isolated(db).await;
}
