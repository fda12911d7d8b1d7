//! `ferry sync --server URL --token T`: one two-way sync of the database with a
//! running ferry-server, printing the report as JSON.

use std::sync::Arc;

use clap::Args;
use ferry::sync::{SyncClient, SyncConfig};
use ferry::transport::{HttpTransport, StaticToken};
use serde_json::json;

use super::{Ctx, print_json};
use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Base URL of the ferry-server, e.g. http://127.0.0.1:8080
    #[arg(long, env = "FERRY_SERVER")]
    server: String,
    /// Bearer token (the dev server prints its tokens at startup).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: String,
    /// Rows per pulled page.
    #[arg(long, default_value_t = SyncConfig::default().page_size)]
    page_size: u32,
}

pub fn run(ctx: &Ctx, args: SyncArgs) -> Result<(), Failure> {
    let store = ctx.open_existing()?;
    let transport = HttpTransport::new(&args.server).map_err(ferry::Error::from)?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let client = SyncClient::new(
            store.clone(),
            Arc::new(transport),
            Arc::new(StaticToken(args.token)),
            SyncConfig {
                page_size: args.page_size,
                ..SyncConfig::default()
            },
        )?;
        client.sync().await
    })?;
    let status = store.status()?;
    print_json(
        &json!({"report": report, "pending": status.pending, "quarantined": status.quarantined}),
    )
}

pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(anyhow::Error::new(e).context("starting the async runtime")))
}
