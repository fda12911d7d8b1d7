//! `ferry demo`: two devices syncing through a local ferry-server.
//!
//! Starts an in-process ferry-server on an embedded SQLite file on loopback,
//! opens two device databases (a phone and a tablet of the same user), makes
//! offline edits on both — different columns of one task, the same column of
//! another, and an edit racing a delete — then syncs and prints what happened
//! and the converged state. Needs nothing installed; everything lives in a
//! temporary directory that is removed at the end.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use ferry::sync::{SyncClient, SyncConfig, WriteMode};
use ferry::transport::{HttpTransport, StaticToken};
use ferry::{ChangeEvent, ChangeSource, Fields, Query, Schema, Store, WriteOp};
use serde_json::{Value, json};

use super::sync::runtime;
use crate::failure::Failure;

const SCHEMA: &str = include_str!("../../../examples/tasks.schema.json");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the databases in this directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

struct Device {
    name: &'static str,
    store: Store,
    client: SyncClient,
    _events: ferry::ListenerHandle,
}

fn fields(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("demo literals are objects"),
    }
}

fn say(line: &str) {
    println!("{line}");
}

impl Device {
    fn open(name: &'static str, dir: &std::path::Path, url: &str) -> Result<Device, Failure> {
        let schema = Schema::from_json(SCHEMA)?;
        let store = Store::open(dir.join(format!("{name}.db")), schema)?;
        let transport = HttpTransport::new(url).map_err(ferry::Error::from)?;
        let client = SyncClient::new(
            store.clone(),
            Arc::new(transport),
            Arc::new(StaticToken(ferry_server::config::DEV_TOKENS[0].1.into())),
            SyncConfig::default(),
        )?;
        let events = store.add_change_listener(Arc::new(move |e: &ChangeEvent| {
            if e.source == ChangeSource::Local {
                return;
            }
            for c in &e.changes {
                let what = match (c.upserted.len(), c.deleted.len()) {
                    (u, 0) => format!("{u} upserted"),
                    (0, d) => format!("{d} deleted"),
                    (u, d) => format!("{u} upserted, {d} deleted"),
                };
                say(&format!(
                    "      [{name} event] {:?} {}: {what}",
                    e.source, c.collection
                )
                .to_lowercase());
            }
        }));
        Ok(Device {
            name,
            store,
            client,
            _events: events,
        })
    }

    async fn write(&self, what: &str, ops: Vec<WriteOp>) -> Result<(), Failure> {
        say(&format!("  {:<7} {what}", self.name));
        self.client.write(ops, WriteMode::OfflineFirst).await?;
        Ok(())
    }

    async fn sync(&self) -> Result<(), Failure> {
        let r = self.client.sync().await?;
        self.store.flush_events();
        say(&format!(
            "  {:<7} synced: pulled {} change(s) in {} page(s), pushed {} applied / {} conflict(s) / {} rejected",
            self.name, r.pulled, r.pages, r.pushed.applied, r.pushed.conflicts, r.pushed.rejected
        ));
        Ok(())
    }

    fn tasks(&self) -> Result<BTreeMap<String, Fields>, Failure> {
        Ok(self
            .store
            .query("tasks", &Query::default())?
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect())
    }
}

fn task(id: &str, title: &str) -> WriteOp {
    WriteOp::Create {
        collection: "tasks".into(),
        fields: fields(json!({"id": id, "title": title, "priority": 2})),
    }
}

fn edit(id: &str, v: Value) -> WriteOp {
    WriteOp::Update {
        collection: "tasks".into(),
        id: id.into(),
        fields: fields(v),
    }
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    let tmp = tempfile::tempdir().map_err(|e| Failure::Other(e.into()))?;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Failure::Other(e.into()))?;
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    runtime()?.block_on(demo(&dir))
}

async fn demo(dir: &std::path::Path) -> Result<(), Failure> {
    let server = ferry_server::start(ferry_server::ServerOptions {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        database_url: format!("sqlite:{}", dir.join("server.db").display()),
        config: ferry_server::ServerConfig::dev(),
    })
    .await
    .map_err(|e| Failure::Other(anyhow::anyhow!("starting the demo server: {e}")))?;
    say(&format!(
        "Ferry demo: ferry-server on {} (embedded SQLite), two devices of user alice\n",
        server.url()
    ));
    let phone = Device::open("phone", dir, &server.url())?;
    let tablet = Device::open("tablet", dir, &server.url())?;

    say("1. The phone creates three tasks and syncs; the tablet syncs and receives them.");
    phone
        .write(
            "creates t1 'Buy milk', t2 'Call the plumber', t3 'Book flights'",
            vec![
                task("t1", "Buy milk"),
                task("t2", "Call the plumber"),
                task("t3", "Book flights"),
            ],
        )
        .await?;
    phone.sync().await?;
    tablet.sync().await?;

    say("\n2. Both devices go offline and edit:");
    phone
        .write(
            "renames t1 to 'Buy oat milk'",
            vec![edit("t1", json!({"title": "Buy oat milk"}))],
        )
        .await?;
    tablet
        .write(
            "marks t1 done (another column of the same task)",
            vec![edit("t1", json!({"done": true}))],
        )
        .await?;
    phone
        .write(
            "sets t2's priority to 5",
            vec![edit("t2", json!({"priority": 5}))],
        )
        .await?;
    tablet
        .write(
            "sets t2's priority to 1 (the same column: a conflict)",
            vec![edit("t2", json!({"priority": 1}))],
        )
        .await?;
    phone
        .write(
            "adds a note to t3",
            vec![edit("t3", json!({"notes": "window seat"}))],
        )
        .await?;
    tablet
        .write(
            "deletes t3",
            vec![WriteOp::Delete {
                collection: "tasks".into(),
                id: "t3".into(),
            }],
        )
        .await?;
    say(&format!(
        "  pending: phone {} mutation(s), tablet {} mutation(s)",
        phone.store.status()?.pending,
        tablet.store.status()?.pending
    ));

    say("\n3. Back online, they sync (phone, tablet, phone):");
    phone.sync().await?;
    tablet.sync().await?;
    phone.sync().await?;

    let (p, t) = (phone.tasks()?, tablet.tasks()?);
    // Read off the phone's data as it is now, not written down beforehand.
    say("\n4. What happened:");
    say(&match p.get("t1") {
        Some(f) if f["title"] == "Buy oat milk" && f["done"] == true => {
            "  t1: the rename and the done flag were on different columns, so both survive."
                .to_string()
        }
        Some(f) => format!(
            "  t1: title {}, done {}: one of the two edits was lost.",
            f["title"], f["done"]
        ),
        None => "  t1: gone.".to_string(),
    });
    say(&match p.get("t2").map(|f| f["priority"].clone()) {
        Some(v) if v == 1 => "  t2: both changed priority; the tablet rebased its pending change over the phone's and pushed last, so its value (1) wins.".to_string(),
        Some(v) => format!("  t2: both changed priority; the value kept is ({v})."),
        None => "  t2: gone.".to_string(),
    });
    say(&match p.get("t3") {
        None => "  t3: the tablet's delete was pushed after the phone's note; a pending delete wins, so t3 is gone everywhere.".to_string(),
        Some(f) => format!("  t3: still here, with notes {}.", f["notes"]),
    });

    say("\n5. Converged state:");
    say(&format!(
        "  {:<4} {:<16} {:<6} {:<9} {}",
        "id", "title", "done", "priority", "notes"
    ));
    for (id, f) in &p {
        say(&format!(
            "  {:<4} {:<16} {:<6} {:<9} {}",
            id,
            f["title"].as_str().unwrap_or(""),
            f["done"].to_string(),
            f["priority"].to_string(),
            f["notes"].as_str().unwrap_or("-")
        ));
    }
    let converged =
        p == t && phone.store.status()?.pending == 0 && tablet.store.status()?.pending == 0;
    say(&format!(
        "\n  phone and tablet {}",
        if converged {
            "hold identical data, with nothing left to push."
        } else {
            "DIFFER"
        }
    ));
    drop((phone, tablet));
    server.shutdown().await;
    if converged {
        Ok(())
    } else {
        Err(Failure::Other(anyhow::anyhow!(
            "the devices did not converge"
        )))
    }
}
