//! `ferry init --schema FILE`: create the database, or migrate it to a newer schema.

use std::path::PathBuf;

use clap::Args;
use ferry::Store;

use super::{Ctx, print_json};
use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The schema file (JSON): collections, columns, indexes, sync settings.
    #[arg(long, value_name = "FILE")]
    schema: PathBuf,
}

/// Prints the status of the initialised database.
pub fn run(ctx: &Ctx, args: InitArgs) -> Result<(), Failure> {
    let db = ctx.db_path()?;
    // Parse and validate before touching the database, so a bad schema creates
    // no file.
    let schema = super::read_schema(&args.schema)?;
    let store = Store::open(db, schema)?;
    let status = store.status()?;
    print_json(&serde_json::to_value(status).map_err(anyhow::Error::from)?)
}
