//! The write modes' decisions, as pure functions: what the server's answer to
//! an `online` write means for the app (docs/architecture.md, "The three write
//! modes share one store").

use std::collections::HashMap;

use ferry_protocol::{MutationOutcome, PushResponse};

use crate::error::Error;

/// One mutation of an `online` write, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    pub mutation_id: String,
    pub collection: String,
    pub record_id: String,
}

/// What the server's answer to an `online` write means.
#[derive(Debug, Default)]
pub(crate) struct OnlineAnswer {
    /// The records the server applied, with their new versions: stored as synced.
    pub versions: HashMap<(String, String), u64>,
    /// The first mutation that did not apply, as the error the write returns:
    /// `Rejected` and `Conflict` keep their fields; `retry`, or no answer for a
    /// mutation, is `Offline` (the server is unavailable for it, so the write's
    /// offline behaviour applies).
    pub failure: Option<Error>,
}

/// Whether a failed send of an `online` write means the server is out of reach
/// for it, so that the write's offline behaviour applies (queue it, or fail with
/// this error): no answer, an error answer, or no token to send it with. A 401
/// after a refresh, or a broken answer, fails the write whatever it asked.
pub(crate) fn out_of_reach(e: &Error) -> bool {
    matches!(
        e,
        Error::Offline(_) | Error::Server { .. } | Error::TokenUnavailable(_)
    )
}

/// Reads the answer to `sent`, matching results by mutation id.
pub(crate) fn online_answer(sent: &[Sent], resp: &PushResponse) -> OnlineAnswer {
    let by_id = super::push::outcomes_by_id(resp);
    let mut answer = OnlineAnswer::default();
    for m in sent {
        let failure = match by_id.get(m.mutation_id.as_str()) {
            Some(MutationOutcome::Applied { version }) => {
                answer
                    .versions
                    .insert((m.collection.clone(), m.record_id.clone()), *version);
                continue;
            }
            Some(MutationOutcome::Rejected { code, message }) => Error::Rejected {
                code: code.as_str().into(),
                message: message.clone(),
            },
            Some(MutationOutcome::Conflict { .. }) => Error::Conflict {
                collection: m.collection.clone(),
                id: m.record_id.clone(),
            },
            Some(MutationOutcome::Retry { .. }) => {
                Error::Offline("the server asked to retry later".into())
            }
            None => Error::Offline(format!(
                "the server gave no answer for `{}/{}`",
                m.collection, m.record_id
            )),
        };
        answer.failure.get_or_insert(failure);
    }
    answer
}

#[cfg(test)]
mod tests {
    use ferry_protocol::{MutationResult, RejectCode};

    use super::*;

    #[test]
    fn only_an_unreachable_server_or_a_missing_token_is_out_of_reach() {
        let server = Error::Server {
            status: 503,
            code: "unavailable".into(),
            message: String::new(),
        };
        assert!(out_of_reach(&Error::Offline("down".into())));
        assert!(out_of_reach(&server));
        assert!(out_of_reach(&Error::TokenUnavailable("keychain".into())));
        assert!(!out_of_reach(&Error::Unauthorized("expired".into())));
        assert!(!out_of_reach(&Error::Protocol("bad json".into())));
    }

    fn sent(id: &str) -> Sent {
        Sent {
            mutation_id: format!("m-{id}"),
            collection: "tasks".into(),
            record_id: id.into(),
        }
    }

    fn result(id: &str, outcome: MutationOutcome) -> MutationResult {
        MutationResult {
            mutation_id: format!("m-{id}"),
            outcome,
        }
    }

    fn answer(results: Vec<MutationResult>) -> PushResponse {
        PushResponse {
            results,
            write_checkpoint: String::new(),
        }
    }

    #[test]
    fn applied_mutations_give_versions_in_any_order() {
        let a = online_answer(
            &[sent("a"), sent("b")],
            &answer(vec![
                result("b", MutationOutcome::Applied { version: 7 }),
                result("a", MutationOutcome::Applied { version: 3 }),
            ]),
        );
        assert!(a.failure.is_none());
        assert_eq!(a.versions[&("tasks".into(), "a".into())], 3);
        assert_eq!(a.versions[&("tasks".into(), "b".into())], 7);
    }

    #[test]
    fn the_first_failure_is_the_error_with_its_typed_fields() {
        let a = online_answer(
            &[sent("a"), sent("b"), sent("c")],
            &answer(vec![
                result("a", MutationOutcome::Applied { version: 2 }),
                result(
                    "b",
                    MutationOutcome::Rejected {
                        code: RejectCode::InvalidRecord,
                        message: "too long".into(),
                    },
                ),
                result(
                    "c",
                    MutationOutcome::Conflict {
                        server_record: None,
                        deleted: true,
                    },
                ),
            ]),
        );
        assert_eq!(a.versions.len(), 1);
        assert!(
            matches!(&a.failure, Some(Error::Rejected { code, message }) if code == "invalid_record" && message == "too long"),
            "{:?}",
            a.failure
        );
        let c = online_answer(
            &[sent("c")],
            &answer(vec![result(
                "c",
                MutationOutcome::Conflict {
                    server_record: None,
                    deleted: true,
                },
            )]),
        );
        assert!(
            matches!(&c.failure, Some(Error::Conflict { collection, id }) if collection == "tasks" && id == "c")
        );
    }

    #[test]
    fn retry_or_a_missing_answer_means_offline_for_that_write() {
        let a = online_answer(
            &[sent("a")],
            &answer(vec![result(
                "a",
                MutationOutcome::Retry { retry_after_ms: 10 },
            )]),
        );
        assert!(matches!(a.failure, Some(Error::Offline(_))));
        let b = online_answer(
            &[sent("a"), sent("b")],
            &answer(vec![result("a", MutationOutcome::Applied { version: 1 })]),
        );
        assert!(matches!(&b.failure, Some(Error::Offline(m)) if m.contains("tasks/b")));
        assert_eq!(b.versions.len(), 1);
    }
}
