//! The `ferry` command end to end: a full scenario from a fresh directory, and
//! every bad input, each of which must fail with one line on stderr, a non-zero
//! exit and no change to the database.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::{Value, json};

const SCHEMA: &str = include_str!("../../examples/tasks.schema.json");

/// A fresh directory holding `tasks.schema.json`, and the path `t.db` in it.
struct Env {
    dir: tempfile::TempDir,
    db: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tasks.schema.json"), SCHEMA).unwrap();
        let db = dir.path().join("t.db");
        Env { dir, db }
    }

    /// `ferry` run in the directory, without `--db` and with `FERRY_DB` unset.
    fn bare(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.current_dir(self.dir.path()).env_remove("FERRY_DB");
        c
    }

    /// `ferry --db t.db ARGS`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.bare();
        c.arg("--db").arg(&self.db).args(args);
        c
    }

    fn schema_path(&self) -> PathBuf {
        self.dir.path().join("tasks.schema.json")
    }

    fn init(&self) -> Value {
        let schema = self.schema_path();
        self.ok(&["init", "--schema", schema.to_str().unwrap()])
    }

    /// Runs, expects success with nothing on stderr, and parses stdout.
    fn ok(&self, args: &[&str]) -> Value {
        parse_ok(self.cmd(args))
    }

    /// Runs, expects exit `code`, no stdout and exactly one `error: ` line on
    /// stderr containing `msg`.
    fn fails(&self, args: &[&str], code: i32, msg: &str) {
        expect_failure(self.cmd(args), code, msg);
    }

    /// Everything a user can see in the database.
    fn snapshot(&self) -> Value {
        json!({
            "status": self.ok(&["status"]),
            "outbox": self.ok(&["outbox"]),
            "tasks": self.ok(&["query", "tasks"]),
            "projects": self.ok(&["query", "projects"]),
            "drafts": self.ok(&["query", "drafts"]),
        })
    }
}

fn parse_ok(mut c: Command) -> Value {
    let out = c.assert().success().stderr("").get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    })
}

fn expect_failure(mut c: Command, code: i32, msg: &str) {
    let out = c.assert().code(code).stdout("").get_output().clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: ") && stderr.ends_with('\n') && stderr.lines().count() == 1,
        "stderr must be one `error: ` line, got {stderr:?}"
    );
    assert!(
        stderr.contains(msg),
        "stderr {stderr:?} should mention {msg:?}"
    );
}

fn ids(rows: &Value) -> Vec<&str> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

#[test]
fn full_scenario_from_a_fresh_directory() {
    let env = Env::new();

    let status = env.init();
    assert_eq!(status["schema_version"], 1);
    assert_eq!(
        status["records"],
        json!({"tasks": 0, "projects": 0, "drafts": 0})
    );
    assert_eq!(status["pending"], 0);

    // One object: one record back.
    let t1 = env.ok(&[
        "put",
        "tasks",
        r#"{"id":"t1","title":"write the CLI","priority":2}"#,
    ]);
    assert_eq!(t1["id"], "t1");
    assert_eq!(t1["title"], "write the CLI");
    assert_eq!(t1["done"], false, "default filled in");
    assert_eq!(t1["_status"], "pending");

    // An array: a batch, all records back in order.
    let batch = env.ok(&[
        "put",
        "tasks",
        r#"[{"id":"t2","title":"b","priority":5},
            {"id":"t3","title":"c","priority":1,"done":true},
            {"id":"t4","title":"d","priority":9},
            {"title":"no id given","priority":3}]"#,
    ]);
    assert_eq!(batch.as_array().unwrap().len(), 4);
    assert_eq!(ids(&batch)[..3], ["t2", "t3", "t4"]);
    let generated = batch[3]["id"].as_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID is generated: {generated}");

    assert_eq!(env.ok(&["get", "tasks", "t1"]), t1);

    // Filter, sort and limit.
    let open_by_priority = env.ok(&[
        "query",
        "tasks",
        "--where",
        r#"{"and":[{"column":"done","op":"eq","value":false}]}"#,
        "--sort",
        "priority:desc",
        "--limit",
        "3",
    ]);
    assert_eq!(ids(&open_by_priority), ["t4", "t2", generated.as_str()]);
    let page2 = env.ok(&[
        "query",
        "tasks",
        "--where",
        r#"{"column":"done","op":"eq","value":false}"#,
        "--sort",
        "priority:desc",
        "--limit",
        "3",
        "--offset",
        "3",
    ]);
    assert_eq!(ids(&page2), ["t1"]);
    let several_keys = env.ok(&["query", "tasks", "--sort", "done", "--sort", "priority"]);
    assert_eq!(
        ids(&several_keys),
        ["t1", generated.as_str(), "t2", "t4", "t3"]
    );
    assert_eq!(
        env.ok(&[
            "query",
            "tasks",
            "--where",
            r#"{"column":"priority","op":"gte","value":3}"#,
            "--count",
        ]),
        json!({"count": 3})
    );
    assert_eq!(env.ok(&["query", "tasks", "--count"]), json!({"count": 5}));

    // An update before any push coalesces into the create.
    let t1b = env.ok(&["put", "tasks", r#"{"id":"t1","title":"renamed"}"#]);
    assert_eq!(t1b["title"], "renamed");
    assert_eq!(t1b["priority"], 2);

    // A delete before any push cancels the create: nothing to push for t2.
    assert_eq!(
        env.ok(&["delete", "tasks", "t2"]),
        json!({"collection": "tasks", "deleted": "t2"})
    );
    env.fails(
        &["get", "tasks", "t2"],
        1,
        "record `t2` not found in `tasks`",
    );
    assert_eq!(env.ok(&["query", "tasks", "--count"]), json!({"count": 4}));

    let outbox = env.ok(&["outbox"]);
    let entries = outbox.as_array().unwrap();
    // Unsent creates list by creation time, then id (one batch shares a time).
    let mut records: Vec<&str> = entries
        .iter()
        .map(|e| e["record_id"].as_str().unwrap())
        .collect();
    records.sort();
    let mut want = vec!["t1", "t3", "t4", generated.as_str()];
    want.sort();
    assert_eq!(records, want);
    for e in entries {
        assert_eq!(e["op"], "create");
        assert_eq!(e["collection"], "tasks");
        assert_eq!(e["state"], "pending");
        assert_eq!(e["attempts"], 0);
    }
    assert_eq!(entries[0]["fields"]["title"], "renamed", "merged fields");
    assert_eq!(entries[0]["fields"]["priority"], 2);

    // Local-only collections never reach the outbox.
    env.ok(&[
        "put",
        "drafts",
        r#"{"id":"d1","body":"x","meta":{"k":[1,2]}}"#,
    ]);
    assert_eq!(
        env.ok(&["get", "drafts", "d1"])["meta"],
        json!({"k": [1, 2]})
    );
    assert_eq!(env.ok(&["outbox"]).as_array().unwrap().len(), 4);

    let status = env.ok(&["status"]);
    assert_eq!(
        status["records"],
        json!({"tasks": 4, "projects": 0, "drafts": 1})
    );
    assert_eq!(status["pending"], 4);
    assert_eq!(status["quarantined"], 0);

    // FERRY_DB stands in for --db.
    let mut c = env.bare();
    c.env("FERRY_DB", &env.db).args(["get", "tasks", "t3"]);
    assert_eq!(parse_ok(c)["title"], "c");
}

#[test]
fn bad_input_fails_with_one_line_and_writes_nothing() {
    let env = Env::new();
    env.init();
    env.ok(&[
        "put",
        "tasks",
        r#"{"id":"t1","title":"keep me","priority":1}"#,
    ]);
    env.ok(&["delete", "tasks", "t1"]);
    env.ok(&["put", "tasks", r#"{"id":"t2","title":"and me"}"#]);
    let before = env.snapshot();

    let cases: &[(&[&str], i32, &str)] = &[
        // Malformed JSON.
        (&["put", "tasks", r#"{"title":"#], 2, "malformed JSON"),
        (
            &["put", "tasks", r#"[{"id":"n1"},{"title":]"#],
            2,
            "malformed JSON",
        ),
        (&["put", "tasks", "5"], 2, "object"),
        (&["put", "tasks", "[1]"], 2, "object"),
        (&["query", "tasks", "--where", "{oops"], 2, "malformed JSON"),
        // Unknown collection.
        (
            &["put", "colours", r#"{"name":"red"}"#],
            2,
            "unknown collection `colours`",
        ),
        (&["get", "colours", "x"], 2, "unknown collection `colours`"),
        (
            &["delete", "colours", "x"],
            2,
            "unknown collection `colours`",
        ),
        (&["query", "colours"], 2, "unknown collection `colours`"),
        (
            &["query", "colours", "--count"],
            2,
            "unknown collection `colours`",
        ),
        // Unknown column, alone and late in a batch (the whole batch is refused).
        (
            &["put", "tasks", r#"{"colour":"red"}"#],
            2,
            "unknown column `colour` in collection `tasks`",
        ),
        (
            &[
                "put",
                "tasks",
                r#"[{"id":"n1","title":"ok"},{"id":"n2","colour":"red"}]"#,
            ],
            2,
            "unknown column `colour` in collection `tasks`",
        ),
        (
            &[
                "query",
                "tasks",
                "--where",
                r#"{"column":"colour","op":"eq","value":"red"}"#,
            ],
            2,
            "unknown column `colour` in collection `tasks`",
        ),
        (
            &["query", "tasks", "--sort", "colour:desc"],
            2,
            "unknown column `colour` in collection `tasks`",
        ),
        // Wrong type.
        (
            &["put", "tasks", r#"{"title":5}"#],
            2,
            "wrong type for `tasks.title`: expected string, got integer",
        ),
        (
            &["put", "tasks", r#"[{"id":"n1"},{"id":"t2","done":"yes"}]"#],
            2,
            "wrong type for `tasks.done`",
        ),
        (
            &[
                "query",
                "tasks",
                "--where",
                r#"{"column":"priority","op":"gt","value":"high"}"#,
            ],
            2,
            "wrong type for `tasks.priority`",
        ),
        // Other refused input.
        (
            &["put", "tasks", r#"{"id":"t2","id2":1}"#],
            2,
            "unknown column `id2`",
        ),
        (
            &[
                "query",
                "tasks",
                "--where",
                r#"{"column":"done","op":"near"}"#,
            ],
            2,
            "unknown operator `near`",
        ),
        (
            &["query", "tasks", "--sort", "priority:up"],
            2,
            "bad --sort `priority:up`",
        ),
        (&["query", "tasks", "--limit", "-1"], 2, "'-1'"),
        (
            &["query", "tasks", "--limit", "ten"],
            2,
            "invalid value 'ten'",
        ),
        (&["put", "tasks"], 2, "<JSON>"),
        (&["frobnicate"], 2, "unrecognized subcommand 'frobnicate'"),
        // Not found is a failure, not bad input.
        (
            &["get", "tasks", "t1"],
            1,
            "record `t1` not found in `tasks`",
        ),
        (
            &["get", "tasks", "nope"],
            1,
            "record `nope` not found in `tasks`",
        ),
        (
            &["delete", "tasks", "nope"],
            1,
            "record `nope` not found in `tasks`",
        ),
    ];
    for (args, code, msg) in cases {
        env.fails(args, *code, msg);
        assert_eq!(
            env.snapshot(),
            before,
            "`ferry {}` changed the database",
            args.join(" ")
        );
    }

    // A bad schema for an existing database (a type change) is refused and the
    // database stays as it was.
    let changed = SCHEMA.replacen(
        r#"{ "name": "title", "type": "string", "default": "" }"#,
        r#"{ "name": "title", "type": "integer", "default": 0 }"#,
        1,
    );
    assert_ne!(changed, SCHEMA);
    let newer = env.dir.path().join("newer.schema.json");
    std::fs::write(
        &newer,
        changed.replacen(r#""version": 1"#, r#""version": 2"#, 1),
    )
    .unwrap();
    env.fails(
        &["init", "--schema", newer.to_str().unwrap()],
        2,
        "incompatible schema change",
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn missing_db_is_a_usage_error() {
    let env = Env::new();
    for args in [
        &["status"][..],
        &["get", "tasks", "x"],
        &["init", "--schema", "tasks.schema.json"],
    ] {
        let mut c = env.bare();
        c.args(args);
        expect_failure(c, 2, "no database given: pass --db FILE or set FERRY_DB");
    }
    assert_no_db_files(env.dir.path());
}

#[test]
fn commands_before_init_fail_and_create_nothing() {
    let env = Env::new();
    for args in [
        &["get", "tasks", "x"][..],
        &["put", "tasks", r#"{"title":"a"}"#],
        &["query", "tasks"],
        &["outbox"],
        &["status"],
    ] {
        env.fails(args, 2, "does not exist; create it with");
    }
    assert_no_db_files(env.dir.path());

    // A file that exists but was never initialised is refused too.
    std::fs::write(&env.db, b"").unwrap();
    env.fails(&["get", "tasks", "x"], 2, "has no schema yet");
    env.fails(&["status"], 2, "has no schema yet");
    // ... and can still be initialised afterwards.
    env.init();
    env.fails(&["get", "tasks", "x"], 1, "not found");
}

#[test]
fn init_with_a_bad_schema_file_creates_nothing() {
    let env = Env::new();
    env.fails(
        &["init", "--schema", "missing.schema.json"],
        2,
        "cannot read schema file `missing.schema.json`",
    );
    std::fs::write(
        env.dir.path().join("broken.json"),
        r#"{"version": 1, "collections": ["#,
    )
    .unwrap();
    env.fails(
        &["init", "--schema", "broken.json"],
        2,
        "cannot parse schema JSON",
    );
    std::fs::write(
        env.dir.path().join("reserved.json"),
        r#"{"version":1,"collections":[{"name":"t","columns":[{"name":"_status","type":"string"}]}]}"#,
    )
    .unwrap();
    env.fails(&["init", "--schema", "reserved.json"], 2, "`_status`");
    env.fails(&["init"], 2, "--schema <FILE>");
    assert_no_db_files(env.dir.path());
}

#[test]
fn help_and_version_succeed() {
    let env = Env::new();
    env.bare()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Usage: ferry"));
    env.bare()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("ferry "));
}

fn assert_no_db_files(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".db"))
        .collect();
    assert!(
        names.is_empty(),
        "no database file may be created: {names:?}"
    );
}

#[test]
fn schema_ts_prints_row_types_and_needs_no_database() {
    let env = Env::new();
    let schema = env.schema_path();
    let out = env
        .bare()
        .args(["schema", "ts", "--schema", schema.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ts = String::from_utf8(out.stdout).unwrap();
    assert!(ts.contains("export type TasksRow = Row & {"), "{ts}");
    assert!(ts.contains("  priority: number | null;"), "{ts}");
    assert!(ts.contains("  drafts: DraftsRow;"), "{ts}");
    assert_no_db_files(env.dir.path());
    let mut bad = env.bare();
    bad.args(["schema", "ts", "--schema", "missing.json"]);
    expect_failure(bad, 2, "cannot read schema file");
}

/// `ferry sync` against a real ferry-server: the report on stdout, and its
/// progress on stderr as plain lines (stderr is not a terminal here), one per
/// page, with the expected total on a first sync.
#[test]
fn sync_reports_its_progress_as_lines_when_stderr_is_not_a_terminal() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let server = rt
        .block_on(ferry_server::start(ferry_server::ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite:{}", server_dir.path().join("s.db").display()),
            config: ferry_server::ServerConfig::dev(),
        }))
        .unwrap();
    let url = server.url();
    let sync = |env: &Env, extra: &[&str]| {
        let mut args = vec!["sync", "--server", &url, "--token", "alice-dev-token"];
        args.extend_from_slice(extra);
        let out = env.cmd(&args).assert().success().get_output().clone();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (report, String::from_utf8(out.stderr).unwrap())
    };

    let a = Env::new();
    a.init();
    let rows: Vec<Value> = (0..25)
        .map(|i| json!({"id": format!("p{i:02}"), "title": "x"}))
        .collect();
    a.ok(&["put", "tasks", &Value::Array(rows).to_string()]);
    let (_, pushed) = sync(&a, &["--progress", "none"]);
    assert_eq!(pushed, "", "--progress none prints nothing");

    let b = Env::new();
    b.init();
    let (report, progress) = sync(&b, &["--page-size", "10"]);
    assert_eq!(report["report"]["pulled"], 25);
    let lines: Vec<&str> = progress.lines().collect();
    // Status reaches a listener as its latest value (a burst is coalesced), so
    // a page's line may be skipped when the next status follows at once; what
    // holds is the order, the total, and the closing line.
    let records: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        records.windows(2).all(|w| w[0] <= w[1]),
        "records only grow: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("pulling: ") && !l.starts_with("pulling: 0 records"))
            .all(|l| l.contains(" records of 25,")),
        "each page's line carries the expected total: {lines:?}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("done: 25 records of 25,") && last.ends_with("in 3 pages"),
        "the closing line says what was pulled: {lines:?}"
    );
    let pages: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("pulling: "))
        .collect();
    assert!(
        pages.len() <= 4,
        "one line per page (and the start), not per status change: {lines:?}"
    );

    // A catch-up cannot know how many rows are coming: no total.
    a.ok(&["put", "tasks", r#"{"id":"later","title":"y"}"#]);
    sync(&a, &["--progress", "none"]);
    let (_, progress) = sync(&b, &["--progress", "lines"]);
    assert!(
        progress.lines().any(|l| l.starts_with("done: 1 records,")),
        "{progress:?}"
    );
    rt.block_on(server.shutdown());
}

/// The demo's account of what happened is read off the converged data, and
/// agrees with the table it prints.
#[test]
fn the_demo_says_what_its_devices_hold() {
    let out = Command::cargo_bin("ferry")
        .unwrap()
        .arg("demo")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let row = |id: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
    };
    let said = |id: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{id}:")))
            .unwrap_or_default()
            .to_string()
    };
    // t2's priority in the table is the value the account says wins.
    let t2 = row("t2").expect("t2 in the table");
    let priority = &t2[t2.len() - 2];
    assert!(said("t2").contains(&format!("({priority})")), "{text}");
    // t3 is gone from the table exactly when the account says so.
    assert_eq!(
        row("t3").is_none(),
        said("t3").contains("gone everywhere"),
        "{text}"
    );
    // t1 holds both edits exactly when the account says both survive.
    let t1 = row("t1").expect("t1 in the table").join(" ");
    assert_eq!(
        t1.contains("Buy oat milk") && t1.contains("true"),
        said("t1").contains("both survive"),
        "{text}"
    );
}
