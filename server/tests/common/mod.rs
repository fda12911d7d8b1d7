//! Shared test support: fresh databases per test for both backends, and the test
//! config. PostgreSQL comes from `FERRY_TEST_PG_URL` (see `scripts/pg-start.sh`);
//! without it the PG tests fail under `CI` and print a loud SKIPPED line elsewhere.
#![allow(dead_code)]

use std::collections::BTreeMap;

use ferry_server::SyncService;
use ferry_server::auth::Caller;
use ferry_server::config::{CollectionConfig, FieldConfig, FieldType, ServerConfig, UserConfig};

pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("server.db").display());
    TestDb {
        url,
        _dir: Some(dir),
    }
}

/// A fresh PostgreSQL database for one test, or `None` (with a loud message) when
/// `FERRY_TEST_PG_URL` is unset outside CI. Under CI an unset URL fails the test.
pub async fn pg_db() -> Option<TestDb> {
    match std::env::var("FERRY_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => {}
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "FERRY_TEST_PG_URL is not set under CI: the PostgreSQL suite must run (scripts/pg-start.sh)"
                );
            }
            eprintln!(
                "SKIPPED: set FERRY_TEST_PG_URL (run scripts/pg-start.sh) to run the PostgreSQL tests"
            );
            return None;
        }
    }
    let url = ferry_server::testing::fresh_pg_database()
        .await
        .expect("FERRY_TEST_PG_URL is set");
    Some(TestDb { url, _dir: None })
}

fn field(ty: FieldType, nullable: bool, max_length: Option<usize>) -> FieldConfig {
    FieldConfig {
        ty,
        nullable,
        max_length,
    }
}

/// The dev config plus `docs` (scoped by its `space` field, with a size limit and
/// every field type) and user `carol` who has no shared scope.
pub fn test_config() -> ServerConfig {
    let mut c = ServerConfig::dev();
    c.collections.insert(
        "docs".into(),
        CollectionConfig {
            fields: BTreeMap::from([
                ("title".into(), field(FieldType::String, false, Some(16))),
                ("space".into(), field(FieldType::String, true, None)),
                ("meta".into(), field(FieldType::Json, true, Some(64))),
                ("rating".into(), field(FieldType::Number, true, None)),
            ]),
            scope_field: Some("space".into()),
            sync_rules: vec![],
        },
    );
    c.users.push(UserConfig {
        id: "carol".into(),
        token: "carol-token".into(),
        scopes: vec![],
    });
    c.limits.max_page_rows = 50;
    c.limits.max_body_bytes = 64 * 1024;
    c
}

pub fn alice() -> Caller {
    Caller::new("alice", ["team".to_string()])
}
pub fn bob() -> Caller {
    Caller::new("bob", ["team".to_string()])
}
pub fn carol() -> Caller {
    Caller::new("carol", Vec::<String>::new())
}

pub async fn service(db: &TestDb) -> SyncService {
    SyncService::open(&db.url, test_config())
        .await
        .expect("open service")
}

pub fn fields(v: serde_json::Value) -> ferry_protocol::Fields {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}
