//! Rebasing: putting a pending local record on top of a newer server row, shared
//! by publish (a pulled row newer than a pending record) and push (a `conflict`
//! answer).
//!
//! The app's [`ConflictResolver`] never runs inside the transaction. A host
//! resolver (a JS function, say) that runs while the writer lock is held would
//! deadlock with a host thread that is itself waiting for that lock inside a
//! write. So a rebase that needs the app's resolver works in two steps
//! ([`with_merges`]): first find what will conflict and call the resolver, with
//! no lock held; then, in the transaction, use each answer only if the record and
//! the server row are still the ones it was computed for. If one changed in
//! between (a local write came first), the transaction rolls back and the two
//! steps run again, at most [`MAX_RESOLVE_ROUNDS`] times; after that a record
//! whose answer went stale takes the configured [`MergeRule`].

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use ferry_protocol::ServerRecord;

use super::resolver::{ConflictResolver, MergeRule};
use crate::error::{Error, Result};
use crate::schema::Collection;
use crate::store::records::{Fields, Record, RecordStatus, check_fields, normalise};
use crate::store::{Store, Writer};

/// How often the resolve-then-apply steps run before stale answers fall back.
pub const MAX_RESOLVE_ROUNDS: usize = 3;

/// A record that will need a merge: its local state and the server row.
pub(crate) struct Candidate {
    pub collection: String,
    pub local: Record,
    pub server: ServerRecord,
}

/// One resolver answer and what it was computed from.
struct Answer {
    local: Record,
    server_version: u64,
    merged: std::result::Result<Fields, String>,
}

impl Answer {
    fn fits(&self, local: &Record, server: &ServerRecord) -> bool {
        self.server_version == server.version
            && self.local.fields == local.fields
            && self.local.changed == local.changed
            && self.local.status == local.status
    }
}

/// The merges a transaction may use.
pub(crate) struct Merger {
    /// The app's resolver, when it is not a built-in rule.
    host: Option<Arc<dyn ConflictResolver>>,
    rule: MergeRule,
    answers: HashMap<(String, String), Answer>,
    /// In the last round: a missing or stale answer takes the rule.
    last_round: bool,
    stale: Cell<bool>,
}

impl Merger {
    fn new(resolver: &Arc<dyn ConflictResolver>, fallback: MergeRule) -> Merger {
        let (host, rule) = match resolver.as_rule() {
            Some(rule) => (None, rule),
            None => (Some(resolver.clone()), fallback),
        };
        Merger {
            host,
            rule,
            answers: HashMap::new(),
            last_round: false,
            stale: Cell::new(false),
        }
    }

    /// Calls the host resolver for each candidate; no lock is held here.
    fn answer(&mut self, candidates: Vec<Candidate>) {
        let Some(host) = &self.host else { return };
        for c in candidates {
            let merged = host.resolve(&c.collection, &c.local, &c.server);
            self.answers.insert(
                (c.collection, c.local.id.clone()),
                Answer {
                    local: c.local,
                    server_version: c.server.version,
                    merged,
                },
            );
        }
    }

    /// The merged fields of `local` over `server`, validated like any write.
    ///
    /// A resolver that failed, or whose fields do not fit the schema, gives way to
    /// the rule. Under a host resolver, a record with no answer that fits fails
    /// the transaction (`went_stale`), unless this is the last round.
    pub(crate) fn resolved(
        &self,
        c: &Collection,
        local: &Record,
        server: &ServerRecord,
    ) -> Result<Fields> {
        let answer = match &self.host {
            None => Ok(self.rule.merge(local, server)),
            Some(_) => match self.answers.get(&(c.name.clone(), local.id.clone())) {
                Some(a) if a.fits(local, server) => a.merged.clone(),
                _ if self.last_round => {
                    Err("the record changed while its conflict was being resolved".into())
                }
                _ => {
                    self.stale.set(true);
                    return Err(Error::Internal(format!(
                        "the resolution of {}/{} went stale",
                        c.name, local.id
                    )));
                }
            },
        };
        let checked = answer.and_then(|fields| {
            let mut merged: Fields = fields
                .into_iter()
                .filter(|(k, _)| c.column(k).is_some())
                .collect();
            for (k, v) in &local.fields {
                merged
                    .entry(k.clone())
                    .or_insert_with(|| server.fields.get(k).unwrap_or(v).clone());
            }
            normalise(c, &mut merged);
            check_fields(c, &merged).map_err(|e| e.to_string())?;
            Ok(merged)
        });
        Ok(match checked {
            Ok(merged) => merged,
            Err(why) => {
                tracing::warn!(collection = %c.name, id = %local.id, error = %why,
                    rule = ?self.rule, "conflict resolver failed; the merge rule decides");
                let mut merged = self.rule.merge(local, server);
                normalise(c, &mut merged);
                if check_fields(c, &merged).is_err() {
                    merged = server.fields.clone();
                    normalise(c, &mut merged);
                }
                merged
            }
        })
    }
}

/// Runs `apply` (one transaction that rebases) with the merges it needs: under a
/// host resolver, `candidates` first lists the records that will conflict and the
/// resolver answers for them outside any lock; a transaction that met a stale
/// answer runs again (see the module doc).
pub(crate) fn with_merges<T>(
    store: &Store,
    resolver: &Arc<dyn ConflictResolver>,
    fallback: MergeRule,
    candidates: impl Fn(&Store) -> Result<Vec<Candidate>>,
    apply: impl Fn(&Merger) -> Result<T>,
) -> Result<T> {
    for round in 1..=MAX_RESOLVE_ROUNDS {
        let mut merger = Merger::new(resolver, fallback);
        if merger.host.is_some() {
            merger.answer(candidates(store)?);
        }
        merger.last_round = round == MAX_RESOLVE_ROUNDS;
        match apply(&merger) {
            Err(_) if merger.stale.get() => {
                tracing::debug!(
                    round,
                    "a record changed while its conflict was resolved; again"
                );
            }
            done => return done,
        }
    }
    unreachable!("the last round never goes stale")
}

/// Whether a pending record rebased over `server` goes through the resolver
/// (see [`rebase_over`]): a local update, or a local create.
pub(crate) fn needs_merge(local: &Record, server: &ServerRecord) -> bool {
    matches!(local.status, RecordStatus::Updated | RecordStatus::Created)
        && local.version.is_none_or(|v| v < server.version)
}

/// Puts a pending local record on top of a newer server row.
///
/// What then differs from the server is what remains to push. A sent entry is
/// never rewritten (see [`Writer::rebase_entries_onto`]); the difference queues behind
/// it. A local create that was already sent is now known to the server (the
/// pull just brought its row, whether our create made it or not), so it goes on
/// as an update of that row.
pub(crate) fn rebase_over(
    w: &mut Writer<'_, '_>,
    c: &Collection,
    mut local: Record,
    server: &ServerRecord,
    merger: &Merger,
) -> Result<()> {
    local.version = Some(server.version);
    local.updated_at = w.now();
    let sent_create = local.status == RecordStatus::Created && w.has_entries(&c.name, &local.id)?;
    if local.status == RecordStatus::Updated || sent_create {
        let merged = merger.resolved(c, &local, server)?;
        let diff = differing(&merged, &server.fields);
        local.fields = merged;
        local.status = RecordStatus::Updated;
        local.changed = diff.keys().cloned().collect();
        if !w.rebase_entries_onto(&c.name, &local.id, &diff, server.version)? {
            local.status = RecordStatus::Synced;
            local.changed.clear();
        }
    } else {
        if local.status == RecordStatus::Created {
            local.fields = merger.resolved(c, &local, server)?;
        }
        w.rebase_entries(&c.name, &local.id, server.version)?;
    }
    w.replace_row(c, &local)?;
    w.set_shadow(&c.name, &local.id, Some(server.version), &server.fields)?;
    if local.status == RecordStatus::Synced {
        w.remove_shadow(&c.name, &local.id)?;
    }
    if local.status != RecordStatus::Deleted {
        w.events().upsert(&c.name, &local.id, local.to_json());
    }
    Ok(())
}

/// The fields of `merged` whose value differs from the server's: what is left to push.
pub(crate) fn differing(merged: &Fields, server: &Fields) -> Fields {
    merged
        .iter()
        .filter(|(k, v)| server.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
