//! The core's one internal error type.
//!
//! Every fallible path in the core returns [`Error`]. Variants are typed so that the
//! FFI layer can map them to a small public enum without parsing messages, and every
//! message names the offending collection, column or value so a developer can act on
//! it. Nothing here may swallow an error or turn it into a panic.

use std::fmt;

/// Result alias used across the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    #[error("unknown column `{column}` in collection `{collection}`")]
    UnknownColumn { collection: String, column: String },
    #[error("wrong type for `{collection}.{column}`: expected {expected}, got {got}")]
    WrongType {
        collection: String,
        column: String,
        expected: String,
        got: String,
    },
    #[error("`{collection}.{column}` is not nullable and has no default")]
    NullNotAllowed { collection: String, column: String },
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("record `{id}` not found in `{collection}`")]
    NotFound { collection: String, id: String },
    #[error("record `{id}` already exists in `{collection}`")]
    AlreadyExists { collection: String, id: String },
    #[error("invalid name `{name}`: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("incompatible schema change: {0}")]
    IncompatibleSchema(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server could not be reached (no network, connection refused, timeout).
    #[error("offline: {0}")]
    Offline(String),
    /// The server refused the credentials and a refresh did not help, or the
    /// token provider says there are no credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token provider failed (it threw, or could not reach its auth service
    /// for a reason other than the network). Retried with backoff like a network
    /// failure; it never stops background sync.
    #[error("no token: {0}")]
    TokenUnavailable(String),
    /// The server answered with an error.
    #[error("server error {status} ({code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The server answered something that breaks the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A mutation was permanently rejected by the server.
    #[error("rejected by the server ({code}): {message}")]
    Rejected { code: String, message: String },
    /// A write conflicted with a newer server version.
    #[error("conflict on `{collection}/{id}`: the server has a newer version")]
    Conflict { collection: String, id: String },
    #[error("closed: the sync client was shut down")]
    Closed,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::MalformedJson(e.to_string())
    }
}

impl From<ferry_protocol::query::QueryError> for Error {
    fn from(e: ferry_protocol::query::QueryError) -> Self {
        match e {
            ferry_protocol::query::QueryError::Malformed(m) => Error::MalformedJson(m),
            ferry_protocol::query::QueryError::Invalid(m) => Error::InvalidQuery(m),
        }
    }
}

/// A JSON value's type, as named in error messages.
pub(crate) struct JsonKind<'a>(pub &'a serde_json::Value);

impl fmt::Display for JsonKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ferry_protocol::json_kind(self.0))
    }
}

/// Errors are cloned when several callers join one running sync. SQLite and I/O
/// errors are not clonable; their clones keep the message as [`Error::Internal`].
impl Clone for Error {
    fn clone(&self) -> Self {
        use Error::*;
        match self {
            MalformedJson(s) => MalformedJson(s.clone()),
            InvalidInput(s) => InvalidInput(s.clone()),
            UnknownCollection(s) => UnknownCollection(s.clone()),
            UnknownColumn { collection, column } => UnknownColumn {
                collection: collection.clone(),
                column: column.clone(),
            },
            WrongType {
                collection,
                column,
                expected,
                got,
            } => WrongType {
                collection: collection.clone(),
                column: column.clone(),
                expected: expected.clone(),
                got: got.clone(),
            },
            NullNotAllowed { collection, column } => NullNotAllowed {
                collection: collection.clone(),
                column: column.clone(),
            },
            TooLarge { what, size, limit } => TooLarge {
                what: what.clone(),
                size: *size,
                limit: *limit,
            },
            NotFound { collection, id } => NotFound {
                collection: collection.clone(),
                id: id.clone(),
            },
            AlreadyExists { collection, id } => AlreadyExists {
                collection: collection.clone(),
                id: id.clone(),
            },
            InvalidName { name, reason } => InvalidName {
                name: name.clone(),
                reason: reason.clone(),
            },
            InvalidSchema(s) => InvalidSchema(s.clone()),
            IncompatibleSchema(s) => IncompatibleSchema(s.clone()),
            InvalidQuery(s) => InvalidQuery(s.clone()),
            Database(e) => Internal(format!("database error: {e}")),
            Io(e) => Internal(format!("I/O error: {e}")),
            Offline(s) => Offline(s.clone()),
            Unauthorized(s) => Unauthorized(s.clone()),
            TokenUnavailable(s) => TokenUnavailable(s.clone()),
            Server {
                status,
                code,
                message,
            } => Server {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            Protocol(s) => Protocol(s.clone()),
            Rejected { code, message } => Rejected {
                code: code.clone(),
                message: message.clone(),
            },
            Conflict { collection, id } => Conflict {
                collection: collection.clone(),
                id: id.clone(),
            },
            Closed => Closed,
            Internal(s) => Internal(s.clone()),
        }
    }
}
