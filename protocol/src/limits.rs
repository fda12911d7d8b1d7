//! Rules and limits both sides of the protocol apply, so that what a client accepts
//! locally is what a server accepts later (`docs/protocol.md`, "Semantics"), and the
//! default limits client and server share.

/// Longest accepted record id, in bytes (UTF-8).
pub const MAX_RECORD_ID_BYTES: usize = 128;

/// Characters a record id may not contain, besides control characters.
pub const RECORD_ID_FORBIDDEN_CHARS: &str = "'\"\\/$";

/// Why a record id is not acceptable. The message says what is wrong (the offending
/// character and where it is), never the whole id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordIdError {
    #[error("record id is empty")]
    Empty,
    #[error("record id is {len} bytes, over the limit of {max} bytes", max = MAX_RECORD_ID_BYTES)]
    TooLong { len: usize },
    #[error("record id contains the control character {ch:?} at byte {at}")]
    ControlCharacter { ch: char, at: usize },
    #[error(
        "record id contains `{ch}` at byte {at}; none of {forbidden} is allowed",
        forbidden = "' \" \\ / $"
    )]
    ForbiddenCharacter { ch: char, at: usize },
}

/// Checks a record id: 1..=[`MAX_RECORD_ID_BYTES`] bytes, no control characters and
/// none of [`RECORD_ID_FORBIDDEN_CHARS`]. The server rejects a mutation whose id
/// fails it (`invalid_record`); the core refuses to create such a record.
pub fn validate_record_id(id: &str) -> Result<(), RecordIdError> {
    if id.is_empty() {
        return Err(RecordIdError::Empty);
    }
    if id.len() > MAX_RECORD_ID_BYTES {
        return Err(RecordIdError::TooLong { len: id.len() });
    }
    for (at, ch) in id.char_indices() {
        if ch.is_control() {
            return Err(RecordIdError::ControlCharacter { ch, at });
        }
        if RECORD_ID_FORBIDDEN_CHARS.contains(ch) {
            return Err(RecordIdError::ForbiddenCharacter { ch, at });
        }
    }
    Ok(())
}

/// Longest accepted client id ([`crate::PushRequest::client_id`],
/// [`crate::PullRequest::client_id`]), in bytes. The server copies it into every
/// change row a push writes, so it is bounded like a record id.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// Why a client id is not acceptable. Like [`RecordIdError`], the message never
/// holds the whole id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    #[error("client_id is empty")]
    Empty,
    #[error("client_id is {len} bytes, over the limit of {max} bytes", max = MAX_CLIENT_ID_BYTES)]
    TooLong { len: usize },
    #[error(
        "client_id contains {ch:?} at byte {at}; only ASCII letters, digits, `-`, `_`, `.` and `:` are allowed"
    )]
    ForbiddenCharacter { ch: char, at: usize },
}

/// Checks a client id: 1..=[`MAX_CLIENT_ID_BYTES`] bytes of ASCII letters, digits,
/// `-`, `_`, `.` and `:` (a UUID, what the core sends, fits). The server answers
/// `400 invalid_request` to a pull or push whose client id fails it.
pub fn validate_client_id(id: &str) -> Result<(), ClientIdError> {
    if id.is_empty() {
        return Err(ClientIdError::Empty);
    }
    if id.len() > MAX_CLIENT_ID_BYTES {
        return Err(ClientIdError::TooLong { len: id.len() });
    }
    match id
        .char_indices()
        .find(|(_, ch)| !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | ':')))
    {
        Some((at, ch)) => Err(ClientIdError::ForbiddenCharacter { ch, at }),
        None => Ok(()),
    }
}

// Default sync limits: what the core client and ferry-server use when nothing is
// configured (the table in docs/protocol.md, "Limits").

/// Largest pull page a server returns unless configured (ferry-server's
/// `limits.max_page_rows`): a larger [`crate::PullRequest::limit`] is clamped to it.
/// Also the page size the core client asks for by default (`SyncConfig::page_size`),
/// so a default client gets the largest pages a default server gives.
pub const DEFAULT_MAX_PAGE_ROWS: u32 = 5_000;
/// Page size a server uses when a pull names no [`crate::PullRequest::limit`]
/// (ferry-server's `limits.default_page_rows`).
pub const DEFAULT_PAGE_ROWS: u32 = 1_000;
/// Most mutations a server accepts in one push unless configured (ferry-server's
/// `limits.max_push_mutations`).
pub const DEFAULT_MAX_PUSH_MUTATIONS: usize = 10_000;
/// Mutations the core client sends per push request by default
/// (`SyncConfig::push_batch`).
pub const DEFAULT_PUSH_MUTATIONS: usize = 1_000;

const _: () = assert!(DEFAULT_PAGE_ROWS <= DEFAULT_MAX_PAGE_ROWS);
const _: () = assert!(DEFAULT_PUSH_MUTATIONS <= DEFAULT_MAX_PUSH_MUTATIONS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_follow_their_rule() {
        use ClientIdError::*;
        for id in [
            "c",
            "0190a3c2-7b1e-7c3d-9f00-123456789abc",
            "ios:device_1.2-A",
            &"x".repeat(MAX_CLIENT_ID_BYTES),
        ] {
            assert_eq!(validate_client_id(id), Ok(()), "{id:?}");
        }
        assert_eq!(validate_client_id(""), Err(Empty));
        let long = "x".repeat(100_000);
        assert_eq!(validate_client_id(&long), Err(TooLong { len: 100_000 }));
        for (id, ch) in [("a b", ' '), ("a\nb", '\n'), ("a/b", '/'), ("aéb", 'é')] {
            assert_eq!(
                validate_client_id(id),
                Err(ForbiddenCharacter { ch, at: 1 }),
                "{id:?}"
            );
        }
        assert_eq!(
            validate_client_id(&"x".repeat(129))
                .unwrap_err()
                .to_string(),
            "client_id is 129 bytes, over the limit of 128 bytes"
        );
    }

    #[test]
    fn record_ids_within_the_rule_are_accepted() {
        for id in [
            "a",
            "t1",
            "0190a3c2-7b1e-7c3d-9f00-123456789abc",
            "with space",
            "dots.dashes-under_scores:colons@at#hash",
            "ünïcödé-日本",
            &"x".repeat(MAX_RECORD_ID_BYTES),
        ] {
            assert_eq!(validate_record_id(id), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn record_ids_outside_the_rule_say_what_is_wrong() {
        use RecordIdError::*;
        assert_eq!(validate_record_id(""), Err(Empty));
        let long = "x".repeat(MAX_RECORD_ID_BYTES + 1);
        assert_eq!(validate_record_id(&long), Err(TooLong { len: 129 }));
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        assert_eq!(
            validate_record_id(&"日".repeat(43)),
            Err(TooLong { len: 129 })
        );
        for ch in RECORD_ID_FORBIDDEN_CHARS.chars() {
            let id = format!("ab{ch}c");
            assert_eq!(
                validate_record_id(&id),
                Err(ForbiddenCharacter { ch, at: 2 }),
                "{id:?}"
            );
        }
        for ch in ['\0', '\t', '\n', '\r', '\u{7f}', '\u{85}'] {
            let id = format!("a{ch}");
            assert_eq!(
                validate_record_id(&id),
                Err(ControlCharacter { ch, at: 1 }),
                "{id:?}"
            );
        }
        assert_eq!(
            validate_record_id("a/b").unwrap_err().to_string(),
            "record id contains `/` at byte 1; none of ' \" \\ / $ is allowed"
        );
        assert_eq!(
            validate_record_id(&long).unwrap_err().to_string(),
            "record id is 129 bytes, over the limit of 128 bytes"
        );
    }
}
