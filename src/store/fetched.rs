//! Rows read through from the server (`SyncClient::fetch_remote`), as this
//! device holds them: overlaid with local pending edits, and optionally cached
//! as synced rows.
//!
//! A cached row is an ordinary synced row: the next retention run prunes it
//! again if it is past the policy, and the horizon does not move (the local
//! data below it stays incomplete: a cached row is one row, not a range).

use ferry_protocol::ServerRecord;

use super::records::{self, Record, RecordStatus};
use super::{Store, load};
use crate::error::Result;
use crate::events::ChangeSource;

impl Store {
    /// The records a read-through fetched, as the app should see them: a row
    /// with local changes not yet pushed (or deleted locally) shows its local
    /// state, every other one the server's. With `cache`, the server rows are
    /// also stored as synced rows, each unless the local row is pending or
    /// already at that version or a newer one, in one transaction with one
    /// change event (source `Remote`).
    pub fn take_fetched(
        &self,
        collection: &str,
        rows: Vec<ServerRecord>,
        cache: bool,
    ) -> Result<Vec<Record>> {
        let c = self.collection(collection)?.clone();
        let now = self.clock().now_ms();
        let mut fetched = Vec::with_capacity(rows.len());
        for r in rows {
            let fields = records::server_fields(&c, &r.id, r.fields)?;
            fetched.push(Record {
                id: r.id,
                fields,
                status: RecordStatus::Synced,
                changed: vec![],
                version: Some(r.version),
                created_at: now,
                updated_at: now,
            });
        }
        let settle = |local: Option<Record>, server: Record| match local {
            Some(l) if l.status != RecordStatus::Synced => {
                (l.status != RecordStatus::Deleted).then_some(l).map(Err)
            }
            Some(l) if l.version >= server.version => Some(Err(l)),
            Some(l) => Some(Ok(Record {
                created_at: l.created_at,
                ..server
            })),
            None => Some(Ok(server)),
        };
        if !cache {
            return self.read(|conn| {
                let mut out = Vec::with_capacity(fetched.len());
                for server in fetched {
                    let local = load(conn, &c, &server.id)?;
                    out.extend(settle(local, server).map(|r| r.unwrap_or_else(|l| l)));
                }
                Ok(out)
            });
        }
        self.write_tx(ChangeSource::Remote, |w| {
            let mut out = Vec::with_capacity(fetched.len());
            for server in fetched {
                let local = w.load(&c, &server.id)?;
                let existed = local.is_some();
                match settle(local, server) {
                    Some(Ok(rec)) => {
                        if existed {
                            w.replace_row(&c, &rec)?;
                        } else {
                            w.insert_row(&c, &rec)?;
                        }
                        w.events().upsert_with(&c.name, &rec.id, || rec.to_json());
                        out.push(rec);
                    }
                    Some(Err(local)) => out.push(local),
                    None => {}
                }
            }
            Ok(out)
        })
    }
}
