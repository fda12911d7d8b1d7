//! Test support shared by this crate's tests and the core's end-to-end tests:
//! a fresh PostgreSQL database per test, from `FERRY_TEST_PG_URL`.

/// Creates a new, empty database next to the one `FERRY_TEST_PG_URL` names and
/// returns its URL; `None` when the variable is unset.
pub async fn fresh_pg_database() -> Option<String> {
    let base = std::env::var("FERRY_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to FERRY_TEST_PG_URL={base:?}: {e}"));
    tokio::spawn(conn);
    let name = format!("ferry_t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let (prefix, query) = match base.split_once('?') {
        Some((p, q)) => (p.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let (authority, _db) = prefix
        .rsplit_once('/')
        .expect("FERRY_TEST_PG_URL has a /database path");
    Some(format!("{authority}/{name}{query}"))
}
