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
    let s = server();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", "Bearer alice-dev-token")
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
    let (method, path) = match route % 4 {
        0 => (Method::POST, ferry_protocol::PULL_PATH),
        1 => (Method::POST, ferry_protocol::PUSH_PATH),
        2 => (Method::POST, ferry_protocol::watermelon::SYNC_PATH),
        _ => (Method::GET, ferry_protocol::watermelon::SYNC_PATH),
    };
    let writes = method == Method::POST && path != ferry_protocol::PULL_PATH;
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
