//! `ferry outbox` and `ferry status`: what is waiting to be pushed, and counts.

use super::{Ctx, print_json};
use crate::failure::Failure;

/// Prints every outbox entry, in push order, as a JSON array.
pub fn outbox(ctx: &Ctx) -> Result<(), Failure> {
    let store = ctx.open_existing()?;
    let entries = store.outbox()?;
    print_json(&serde_json::to_value(entries).map_err(anyhow::Error::from)?)
}

/// Prints the store status: schema version, client id, counts.
pub fn status(ctx: &Ctx) -> Result<(), Failure> {
    let store = ctx.open_existing()?;
    let status = store.status()?;
    print_json(&serde_json::to_value(status).map_err(anyhow::Error::from)?)
}
