//! Integrity checks and repair (docs/architecture.md, "Integrity checks and
//! repair").
//!
//! When a check is due ([`super::SyncConfig::checksum_interval`]), a pull asks
//! for checksums, and its last page carries one per collection it syncs
//! whole: the count and digest of the rows the server holds in this caller's
//! view. After the publish, each is compared with what this device holds
//! (`Store::local_checksum`; a collection with a horizon or with a change
//! the server may have applied unheard is not compared). A difference is
//! confirmed by a second pull, which brings what was written in between;
//! then a repair pull restarts only those collections (`restart`): it
//! brings every row of them again, which replaces what this device holds,
//! and rows the server does not send are evicted. A third checksum says
//! whether the repair worked; one that did not is not tried again until the
//! server's checksum changes.

use std::collections::BTreeMap;

use ferry_protocol::Checksum;
use serde::Serialize;

use super::client::{SyncClient, SyncReport};
use crate::error::Result;

/// What a pull asks for beyond the changes.
#[derive(Debug, Default)]
pub(super) struct Want {
    /// Checksums on the last page.
    pub checksums: bool,
    /// A repair of these collections.
    pub restart: Option<Vec<String>>,
}

/// A pull that ran to the end.
pub(super) struct Pulled {
    pub report: SyncReport,
    /// Its last page's checksums, when asked and given.
    pub checksums: Option<BTreeMap<String, Checksum>>,
}

/// A collection whose checksum differed from the server's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Repair {
    pub collection: String,
    /// The rows this device held in the collection's synced view.
    pub local_count: u64,
    /// The rows the server holds in it.
    pub server_count: u64,
    /// The repair made them match (false: the difference stays, and the
    /// same difference is not repaired again).
    pub repaired: bool,
    /// When it was found (ms).
    pub at: i64,
}

/// A collection that does not match.
#[derive(Debug, Clone)]
struct Mismatch {
    collection: String,
    local: Checksum,
    server: Checksum,
}

impl SyncClient {
    /// A pull, with a check of the checksums when one is due and the repair
    /// of what does not match.
    pub(super) async fn pull(&self) -> Result<SyncReport> {
        let want = Want {
            checksums: self.checksums_due().await?,
            restart: None,
        };
        let first = self.pull_to_end(&want).await?;
        let mut report = first.report;
        let Some(sums) = first.checksums else {
            return Ok(report);
        };
        let mut suspects = self.mismatches(&sums, None).await?;
        let mut memo: Vec<(String, Option<String>)> = sums
            .keys()
            .filter(|c| !suspects.iter().any(|m| &m.collection == *c))
            .map(|c| (c.clone(), None))
            .collect();
        if !suspects.is_empty() {
            // A write between the server's read and this comparison explains
            // a difference too: a second pull brings it and a fresh checksum.
            let again = self
                .pull_to_end(&Want {
                    checksums: true,
                    restart: None,
                })
                .await?;
            report.absorb(&again.report);
            suspects = match again.checksums {
                Some(sums) => self.mismatches(&sums, Some(&suspects)).await?,
                None => Vec::new(),
            };
        }
        let now = self.store().clock().now_ms();
        let mut to_repair = Vec::new();
        for m in suspects {
            let (s, name) = (self.store().clone(), m.collection.clone());
            let tried = self.blocking(move || s.unrepaired(&name)).await?;
            if tried.as_deref() == Some(m.server.digest.as_str()) {
                report.repairs.push(repair(&m, false, now));
            } else {
                to_repair.push(m);
            }
        }
        if !to_repair.is_empty() {
            for m in &to_repair {
                m.log("the collection differs from the server's checksum; repairing it");
            }
            let fixed = self
                .pull_to_end(&Want {
                    checksums: true,
                    restart: Some(to_repair.iter().map(|m| m.collection.clone()).collect()),
                })
                .await?;
            report.absorb(&fixed.report);
            let still = match &fixed.checksums {
                Some(sums) => self.mismatches(sums, Some(&to_repair)).await?,
                None => to_repair.clone(),
            };
            for m in &to_repair {
                let after = still.iter().find(|s| s.collection == m.collection);
                if let Some(s) = after {
                    s.log("the repair did not make the collection match the server's checksum");
                }
                // Only a difference the server vouched for is remembered.
                let unrepaired = after
                    .filter(|_| fixed.checksums.is_some())
                    .map(|s| s.server.digest.clone());
                memo.push((m.collection.clone(), unrepaired));
                report.repairs.push(repair(m, after.is_none(), now));
            }
        }
        let s = self.store().clone();
        self.blocking(move || s.checksums_checked(&memo)).await?;
        if let Some(last) = report.repairs.last().cloned() {
            self.update_status(|s| s.last_repair = Some(last));
        }
        Ok(report)
    }

    /// Whether this pull should check: the last check is at least the
    /// interval old, or a repair is under way. A device that never checked
    /// starts counting now: its first sync is not read a second time.
    async fn checksums_due(&self) -> Result<bool> {
        let Some(interval) = self.config().checksum_interval else {
            return Ok(false);
        };
        let s = self.store().clone();
        let (checked, repairing) = self
            .blocking(move || {
                let checked = s.checksums_checked_at()?;
                if checked.is_none() {
                    s.checksums_checked(&[])?;
                }
                Ok((checked, !s.repairing()?.is_empty()))
            })
            .await?;
        let now = self.store().clock().now_ms();
        Ok(repairing
            || checked.is_some_and(|at| now.saturating_sub(at) >= interval.as_millis() as i64))
    }

    /// The collections of `sums` (only those of `among`, if given) whose
    /// local checksum differs; those that cannot be compared are left out.
    async fn mismatches(
        &self,
        sums: &BTreeMap<String, Checksum>,
        among: Option<&[Mismatch]>,
    ) -> Result<Vec<Mismatch>> {
        let wanted: Vec<(String, Checksum)> = sums
            .iter()
            .filter(|(c, _)| among.is_none_or(|a| a.iter().any(|m| &m.collection == *c)))
            .map(|(c, s)| (c.clone(), s.clone()))
            .collect();
        let s = self.store().clone();
        self.blocking(move || {
            let mut out = Vec::new();
            for (name, server) in wanted {
                let Ok(c) = s.collection(&name) else {
                    continue;
                };
                if c.is_local_only() {
                    continue;
                }
                if let Some(local) = s.local_checksum(c)?
                    && local != server
                {
                    out.push(Mismatch {
                        collection: name,
                        local,
                        server,
                    });
                }
            }
            Ok(out)
        })
        .await
    }
}

impl Mismatch {
    fn log(&self, what: &str) {
        tracing::warn!(
            collection = %self.collection,
            local_count = self.local.count,
            server_count = self.server.count,
            "{what}"
        );
    }
}

fn repair(m: &Mismatch, repaired: bool, at: i64) -> Repair {
    Repair {
        collection: m.collection.clone(),
        local_count: m.local.count,
        server_count: m.server.count,
        repaired,
        at,
    }
}
