//! `ferry`: inspect and edit a local Ferry database from a shell.
//!
//! Output is JSON on stdout. Every failure is one line on stderr, `error: ...`,
//! with exit code 2 for bad input or usage and 1 for anything else. The commands
//! are thin: parsing and printing only; the logic lives in the `ferry` core.
//!
//! Adding a command: give it a variant in [`Command`], its arguments and code in a
//! file under `commands/` (one file per command group), and one arm in `run`.

mod commands;
mod failure;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::Ctx;
use failure::Failure;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: inspect and edit a local database"
)]
struct Cli {
    /// The local database file.
    #[arg(long, global = true, env = "FERRY_DB", value_name = "FILE")]
    db: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database with a schema, or migrate it to a newer one.
    Init(commands::init::InitArgs),
    /// Create or update records: a JSON object, or an array of them (one transaction).
    Put(commands::records::PutArgs),
    /// Delete a record.
    Delete(commands::records::DeleteArgs),
    /// Print one record.
    Get(commands::records::GetArgs),
    /// Query records with a filter, sort and paging, or count them.
    Query(commands::records::QueryArgs),
    /// Print the outbox: local mutations not yet pushed, in push order.
    Outbox,
    /// Print record counts, pending mutations and the schema version.
    Status,
    /// Run two devices syncing through a local ferry-server (needs nothing installed).
    Demo(commands::demo::DemoArgs),
    /// Sync the database with a running ferry-server.
    Sync(commands::sync::SyncArgs),
    /// Derive code from a schema file: `schema ts` prints TypeScript row types.
    Schema(commands::schema::SchemaArgs),
}

fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx::new(cli.db);
    match cli.command {
        Command::Init(args) => commands::init::run(&ctx, args),
        Command::Put(args) => commands::records::put(&ctx, args),
        Command::Delete(args) => commands::records::delete(&ctx, args),
        Command::Get(args) => commands::records::get(&ctx, args),
        Command::Query(args) => commands::records::query(&ctx, args),
        Command::Outbox => commands::inspect::outbox(&ctx),
        Command::Status => commands::inspect::status(&ctx),
        Command::Demo(args) => commands::demo::run(args),
        Command::Sync(args) => commands::sync::run(&ctx, args),
        Command::Schema(args) => commands::schema::run(args),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return failure::clap_exit(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}
