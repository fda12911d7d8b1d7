//! The bodies of Ferry's fuzz targets. `fuzz/` (cargo-fuzz, nightly) calls each
//! on libFuzzer's inputs; `tests/properties.rs` calls the same ones on
//! proptest's inputs on stable, in CI. The rules: no panic; bad input is a
//! typed error (a 4xx over HTTP), never an internal one; and a refused request
//! writes nothing.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ferry::{Error, Query, Schema, Store};
use ferry_protocol::{PullPage, PullRequest, PushRequest, PushResponse, RawFields};
use ferry_server::SyncService;
use ferry_server::cursor::CursorCodec;
use tower::ServiceExt;

const SCHEMA: &str = include_str!("../../examples/tasks.schema.json");

/// Every protocol message decodes or fails cleanly, and what decodes
/// re-encodes to something that decodes the same.
pub fn protocol(data: &[u8]) {
    fn check<T>(data: &[u8])
    where
        T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
    {
        if let Ok(v) = serde_json::from_slice::<T>(data) {
            let again: T = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(again, v);
        }
    }
    check::<PullRequest>(data);
    check::<PullPage>(data);
    check::<PushResponse>(data);
    // Raw fields compare by text: decoding is the check.
    let _ = serde_json::from_slice::<PushRequest<RawFields>>(data);
    check::<std::collections::BTreeMap<String, ferry_protocol::watermelon::TableChanges>>(data);
}

/// A cursor string decodes only if it is one the server signed for that user.
pub fn cursor(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let codec = CursorCodec::new(b"fuzz secret");
    if let Err(e) = codec.decode("alice", s) {
        assert!(e.status.is_client_error(), "{e:?}");
    }
}

fn store() -> &'static Store {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(
                dir.path().join("fuzz.db"),
                Schema::from_json(SCHEMA).unwrap(),
            )
            .unwrap();
            (dir, store)
        })
        .1
}

/// A query parses or fails as an invalid query, and one that parses runs (or
/// fails as a typed error): the compiler never builds SQL that SQLite refuses.
pub fn query(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(q) = Query::from_json(s) else {
        return;
    };
    for collection in ["tasks", "projects", "drafts", "nope"] {
        match store().query(collection, &q) {
            Ok(_) => {}
            Err(Error::Database(e)) => panic!("the compiler built bad SQL for {s:?}: {e}"),
            Err(Error::Internal(e)) => panic!("internal error for {s:?}: {e}"),
            Err(_) => {}
        }
    }
}

/// A schema parses and validates, or fails as a schema error; never a panic.
pub fn schema(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(schema) = Schema::from_json(s) {
        let _ = schema.validate();
    }
}

struct Server {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("server.db").display());
        let service = rt
            .block_on(SyncService::open(&url, ferry_server::ServerConfig::dev()))
            .unwrap();
        Server {
            router: ferry_server::http::router(service),
            rt,
            _dir: dir,
        }
    })
}

fn call(method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    call_as("alice-dev-token", method, path, body)
}

fn call_as(token: &str, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let s = server();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    s.rt.block_on(async {
        let resp = s.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    })
}

/// Everything alice's view holds now, as a full pull returns it.
fn snapshot() -> Vec<u8> {
    let (status, body) = call(
        Method::POST,
        ferry_protocol::PULL_PATH,
        br#"{"limit": 5000}"#.to_vec(),
    );
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    serde_json::to_vec(&page["changes"]).unwrap()
}

/// A request body on each route, in process through the router: never a 5xx,
/// and a refused push (4xx) writes nothing.
pub fn server_request(route: u8, body: &[u8]) {
    let (method, path, writes) = match route % 5 {
        0 => (Method::POST, ferry_protocol::PULL_PATH, false),
        1 => (Method::POST, ferry_protocol::PUSH_PATH, true),
        2 => (Method::POST, ferry_protocol::watermelon::SYNC_PATH, true),
        3 => (Method::GET, ferry_protocol::watermelon::SYNC_PATH, false),
        _ => (Method::POST, ferry_protocol::FETCH_PATH, false),
    };
    let before = writes.then(snapshot);
    let (status, _) = call(method, path, body.to_vec());
    assert!(
        !status.is_server_error(),
        "{status} for {path}: {:?}",
        String::from_utf8_lossy(body)
    );
    if let Some(before) = before
        && status.is_client_error()
    {
        assert_eq!(snapshot(), before, "a refused request wrote something");
    }
}

/// Collections a read-through request may name: the configured ones and some
/// that are not.
const FETCH_COLLECTIONS: [&str; 4] = ["tasks", "projects", "nope", ""];

/// A read-through request, `{"collection", "query"}` with `query` taken from
/// `query` when it is JSON (else sent as a string): never a 5xx, a refusal is a
/// typed error body, an answer is a well-formed page within the query's limit
/// and the server's, sorted as asked, and it writes nothing.
pub fn fetch_request(collection: u8, query: &[u8]) {
    let query_value = serde_json::from_slice::<serde_json::Value>(query)
        .unwrap_or_else(|_| String::from_utf8_lossy(query).into_owned().into());
    let collection = FETCH_COLLECTIONS[collection as usize % FETCH_COLLECTIONS.len()];
    let body = serde_json::json!({"collection": collection, "query": query_value});
    seed_fetch_rows();
    let before = snapshot();
    let (status, answer) = call(
        Method::POST,
        ferry_protocol::FETCH_PATH,
        serde_json::to_vec(&body).unwrap(),
    );
    assert!(!status.is_server_error(), "{status} for fetch {body}");
    if status.is_success() {
        let page: ferry_protocol::FetchResponse<RawFields> = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("fetch answer does not decode ({e}): {body}"));
        let parsed = ferry_protocol::query::Query::from_value(&query_value)
            .expect("the server took this query");
        let cap = ferry_server::ServerConfig::dev().limits.max_page_rows as usize;
        let limit = parsed.limit.map_or(cap, |l| (l as usize).clamp(1, cap));
        assert!(page.records.len() <= limit, "over the limit: {body}");
        let rows: Vec<(String, ferry_protocol::Fields)> = page
            .records
            .iter()
            .map(|r| (r.id.clone(), serde_json::from_str(r.fields.get()).unwrap()))
            .collect();
        for pair in rows.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_ne!(
                parsed.order((&a.0, &a.1), (&b.0, &b.1)),
                std::cmp::Ordering::Greater,
                "out of order: {body}"
            );
        }
        for (id, fields) in &rows {
            assert!(
                !id.starts_with("bob-"),
                "bob's record {id} reached alice: {body}"
            );
            assert_ne!(
                fields.get("archived"),
                Some(&serde_json::Value::Bool(true)),
                "archived {id} was fetched: {body}"
            );
            if let Some(filter) = &parsed.filter {
                assert!(filter.matches(id, fields), "{id} does not match: {body}");
            }
        }
    } else {
        let err: ferry_protocol::ErrorBody = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{status} without an error body ({e}): {body}"));
        assert!(!err.error.code.is_empty());
    }
    assert_eq!(snapshot(), before, "a fetch wrote something");
}

/// Rows for read-through to find: alice's tasks (some archived, which a sync
/// rule keeps from clients) and bob's private ones, which alice must never get.
fn seed_fetch_rows() {
    static SEEDED: OnceLock<()> = OnceLock::new();
    SEEDED.get_or_init(|| {
        for (token, prefix, n) in [("alice-dev-token", "seed-", 24), ("bob-dev-token", "bob-", 8)] {
            let mutations: Vec<serde_json::Value> = (0..n)
                .map(|i| {
                    serde_json::json!({
                        "mutation_id": format!("{prefix}m{i}"),
                        "collection": "tasks",
                        "record_id": format!("{prefix}{i}"),
                        "op": "create",
                        "fields": {
                            "title": format!("task {}", i % 7),
                            "done": i % 2 == 0,
                            "priority": if i % 5 == 0 { serde_json::Value::Null } else { (i % 4).into() },
                            "archived": i % 6 == 0,
                        },
                    })
                })
                .collect();
            let push = serde_json::json!({"client_id": "fuzz-seed", "mutations": mutations});
            let (status, _) = call_as(
                token,
                Method::POST,
                ferry_protocol::PUSH_PATH,
                serde_json::to_vec(&push).unwrap(),
            );
            assert_eq!(status, StatusCode::OK);
        }
    });
}
