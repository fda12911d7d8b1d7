//! The commands, one file per group.
//!
//! - `init`: create or migrate a database from a schema file;
//! - `records`: put, delete, get, query;
//! - `inspect`: outbox, status;
//! - `demo`: two devices syncing through an in-process ferry-server;
//! - `sync`: one sync with a running ferry-server;
//! - `schema`: what a schema file gives other languages (`schema ts`).
//!
//! A new group gets its own file here, takes a [`Ctx`] and returns
//! `Result<(), Failure>`, printing its result with [`print_json`].

pub mod demo;
pub mod init;
pub mod inspect;
pub mod records;
pub mod schema;
pub mod sync;

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry::{Schema, Store};
use serde_json::Value;

use crate::failure::Failure;

/// Reads and validates a schema file.
pub fn read_schema(path: &Path) -> Result<Schema, Failure> {
    let json = std::fs::read_to_string(path).map_err(|e| {
        Failure::Usage(format!("cannot read schema file `{}`: {e}", path.display()))
    })?;
    let schema = Schema::from_json(&json)?;
    schema.validate()?;
    Ok(schema)
}

/// What every command gets: the global options.
pub struct Ctx {
    db: Option<PathBuf>,
}

impl Ctx {
    pub fn new(db: Option<PathBuf>) -> Ctx {
        Ctx { db }
    }

    /// The `--db` path (or `FERRY_DB`), which every command needs.
    pub fn db_path(&self) -> Result<&Path, Failure> {
        self.db.as_deref().ok_or_else(|| {
            Failure::Usage("no database given: pass --db FILE or set FERRY_DB".into())
        })
    }

    /// Opens a database that `init` has created, with its stored schema.
    pub fn open_existing(&self) -> Result<Store, Failure> {
        let path = self.db_path()?;
        // SQLite would create a missing file; refuse instead so that a typo in
        // --db does not leave an empty database behind.
        if !path.exists() {
            return Err(Failure::Usage(format!(
                "database `{}` does not exist; create it with `ferry --db {} init --schema FILE`",
                path.display(),
                path.display()
            )));
        }
        Ok(Store::open_existing(path)?)
    }
}

/// Prints a JSON value on stdout, pretty, with a trailing newline.
pub fn print_json(v: &Value) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)
        .map_err(|e| Failure::Other(anyhow::Error::new(e).context("writing the output")))?;
    writeln!(out)
        .and_then(|_| out.flush())
        .map_err(|e| Failure::Other(anyhow::Error::new(e).context("writing the output")))
}
