//! The public error types.
//!
//! [`FerryError`] is the one error the host sees: its variant says what went
//! wrong, its `detail` is the core's message, unchanged (it names the collection,
//! column or value), and typed fields carry what a host branches on. It is built from the core [`crate::Error`]
//! by `From`, at the boundary and nowhere else. [`HostError`] is what host
//! callbacks (token provider, conflict resolver) may throw back into Rust.

use crate::error::Error;

/// Every failure of an FFI call. Kotlin: `FerryException.<Variant>`; Swift:
/// `FerryError.<variant>`; TS: `FerryError.<Variant>` with `.inner`. Each variant
/// carries `detail`, the core's message (it names the collection, column or
/// value), and the typed fields a host branches on: the rejection code, the
/// conflicting record, the server's status and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum FerryError {
    /// Input that is not valid (an id, a name, a query, a value out of range).
    #[error("{detail}")]
    InvalidInput { detail: String },
    /// Input that is not JSON, or not the JSON shape expected.
    #[error("{detail}")]
    MalformedJson { detail: String },
    #[error("{detail}")]
    UnknownCollection { collection: String, detail: String },
    #[error("{detail}")]
    UnknownColumn {
        collection: String,
        column: String,
        detail: String,
    },
    /// A value of the wrong type for its column (including null in a non-null column).
    #[error("{detail}")]
    WrongType {
        collection: String,
        column: String,
        detail: String,
    },
    /// Over a size limit (`limit`, in bytes or items as `detail` says).
    #[error("{detail}")]
    TooLarge { limit: u64, detail: String },
    #[error("{detail}")]
    NotFound {
        collection: String,
        id: String,
        detail: String,
    },
    #[error("{detail}")]
    AlreadyExists {
        collection: String,
        id: String,
        detail: String,
    },
    /// The schema is invalid, or an incompatible change of the stored one.
    #[error("{detail}")]
    Schema { detail: String },
    /// The server could not be reached.
    #[error("{detail}")]
    Offline { detail: String },
    /// The server refused the credentials, even after a token refresh, or the
    /// token provider threw `HostError.Unauthorized`.
    #[error("{detail}")]
    Unauthorized { detail: String },
    /// The token provider threw something else; sync retries it with backoff.
    #[error("{detail}")]
    TokenUnavailable { detail: String },
    /// The server permanently rejected a mutation (`code`: the protocol's reject
    /// code, such as `forbidden` or `invalid`); the write was rolled back.
    #[error("{detail}")]
    Rejected { code: String, detail: String },
    /// The server has a newer version of the record.
    #[error("{detail}")]
    Conflict {
        collection: String,
        id: String,
        detail: String,
    },
    /// The server answered with an error (`status`, its error `code`), or broke
    /// the protocol (`status` 0, `code` `protocol`).
    #[error("{detail}")]
    Server {
        status: u16,
        code: String,
        detail: String,
    },
    /// The sync client was shut down (`FerrySyncClient.shutdown`): a sync or
    /// push running then, or started after, ends with this.
    #[error("{detail}")]
    Closed { detail: String },
    /// A bug or an environment failure (database, I/O, a caught panic).
    #[error("{detail}")]
    Internal { detail: String },
}

impl FerryError {
    pub(crate) fn internal(detail: impl Into<String>) -> FerryError {
        FerryError::Internal {
            detail: detail.into(),
        }
    }
}

impl From<ferry_protocol::query::QueryError> for FerryError {
    fn from(e: ferry_protocol::query::QueryError) -> Self {
        Error::from(e).into()
    }
}

impl From<Error> for FerryError {
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        match e {
            Error::MalformedJson(_) => FerryError::MalformedJson { detail },
            Error::InvalidInput(_) | Error::InvalidName { .. } | Error::InvalidQuery(_) => {
                FerryError::InvalidInput { detail }
            }
            Error::UnknownCollection(collection) => {
                FerryError::UnknownCollection { collection, detail }
            }
            Error::UnknownColumn { collection, column } => FerryError::UnknownColumn {
                collection,
                column,
                detail,
            },
            Error::WrongType {
                collection, column, ..
            }
            | Error::NullNotAllowed { collection, column } => FerryError::WrongType {
                collection,
                column,
                detail,
            },
            Error::TooLarge { limit, .. } => FerryError::TooLarge {
                limit: limit as u64,
                detail,
            },
            Error::NotFound { collection, id } => FerryError::NotFound {
                collection,
                id,
                detail,
            },
            Error::AlreadyExists { collection, id } => FerryError::AlreadyExists {
                collection,
                id,
                detail,
            },
            Error::InvalidSchema(_) | Error::IncompatibleSchema(_) => FerryError::Schema { detail },
            Error::Offline(_) => FerryError::Offline { detail },
            Error::Unauthorized(_) => FerryError::Unauthorized { detail },
            Error::TokenUnavailable(_) => FerryError::TokenUnavailable { detail },
            Error::Rejected { code, .. } => FerryError::Rejected { code, detail },
            Error::Conflict { collection, id } => FerryError::Conflict {
                collection,
                id,
                detail,
            },
            Error::Server { status, code, .. } => FerryError::Server {
                status,
                code,
                detail,
            },
            Error::Protocol(_) => FerryError::Server {
                status: 0,
                code: "protocol".into(),
                detail,
            },
            Error::Closed => FerryError::Closed { detail },
            Error::Database(_) | Error::Io(_) | Error::Internal(_) => {
                FerryError::Internal { detail }
            }
        }
    }
}

/// What a host callback may throw. Kotlin: `HostException.Offline(reason)` etc.
/// Any other exception the host throws arrives as [`HostError::Failed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum HostError {
    /// The host could not reach its auth service; sync treats it as offline.
    #[error("offline: {reason}")]
    Offline { reason: String },
    /// The host has no valid credentials; background sync stops with `auth_failed`.
    #[error("unauthorized: {reason}")]
    Unauthorized { reason: String },
    /// Anything else, including an unexpected exception in the callback.
    #[error("host callback failed: {reason}")]
    Failed { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for HostError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        HostError::Failed { reason: e.reason }
    }
}
