//! `ferry schema ts --schema FILE`: TypeScript row types of a schema, for
//! `react-native-ferry`'s typed entity adapters and selectors.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct SchemaArgs {
    #[command(subcommand)]
    command: SchemaCommand,
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Print a TypeScript module: one row type per collection, and `Rows`.
    Ts {
        /// The schema file (JSON).
        #[arg(long, value_name = "FILE")]
        schema: PathBuf,
    },
}

pub fn run(args: SchemaArgs) -> Result<(), Failure> {
    match args.command {
        SchemaCommand::Ts { schema } => {
            print!("{}", super::read_schema(&schema)?.to_typescript());
            Ok(())
        }
    }
}
