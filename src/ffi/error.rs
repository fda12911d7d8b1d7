//! The public error types.
//!
//! [`FerryError`] is the one error the host sees: a flat enum whose variant says
//! what went wrong and whose message is the core's message, unchanged (it names
//! the collection, column or value). It is built from the core [`crate::Error`]
//! by `From`, at the boundary and nowhere else. [`HostError`] is what host
//! callbacks (token provider, conflict resolver) may throw back into Rust.

use crate::error::Error;

/// Every failure of an FFI call. Kotlin: `FerryException.<Variant>`; Swift:
/// `FerryError.<variant>`. The message is the core's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum FerryError {
    /// Input that is not valid (an id, a name, a query, a value out of range).
    #[error("{0}")]
    InvalidInput(String),
    /// Input that is not JSON, or not the JSON shape expected.
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    UnknownCollection(String),
    #[error("{0}")]
    UnknownColumn(String),
    /// A value of the wrong type for its column (including null in a non-null column).
    #[error("{0}")]
    WrongType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The schema is invalid, or an incompatible change of the stored one.
    #[error("{0}")]
    Schema(String),
    /// The server could not be reached.
    #[error("{0}")]
    Offline(String),
    /// The server refused the credentials, even after a token refresh.
    #[error("{0}")]
    Unauthorized(String),
    /// The server permanently rejected a mutation.
    #[error("{0}")]
    Rejected(String),
    /// The server has a newer version of the record.
    #[error("{0}")]
    Conflict(String),
    /// The server answered with an error, or broke the protocol.
    #[error("{0}")]
    Server(String),
    /// A bug or an environment failure (database, I/O, a caught panic).
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for FerryError {
    fn from(e: Error) -> Self {
        let m = e.to_string();
        match e {
            Error::MalformedJson(_) => FerryError::MalformedJson(m),
            Error::InvalidInput(_) | Error::InvalidName { .. } | Error::InvalidQuery(_) => {
                FerryError::InvalidInput(m)
            }
            Error::UnknownCollection(_) => FerryError::UnknownCollection(m),
            Error::UnknownColumn { .. } => FerryError::UnknownColumn(m),
            Error::WrongType { .. } | Error::NullNotAllowed { .. } => FerryError::WrongType(m),
            Error::TooLarge { .. } => FerryError::TooLarge(m),
            Error::NotFound { .. } => FerryError::NotFound(m),
            Error::AlreadyExists { .. } => FerryError::AlreadyExists(m),
            Error::InvalidSchema(_) | Error::IncompatibleSchema(_) => FerryError::Schema(m),
            Error::Offline(_) => FerryError::Offline(m),
            Error::Unauthorized(_) => FerryError::Unauthorized(m),
            Error::Rejected { .. } => FerryError::Rejected(m),
            Error::Conflict { .. } => FerryError::Conflict(m),
            Error::Server { .. } | Error::Protocol(_) => FerryError::Server(m),
            Error::Database(_) | Error::Io(_) | Error::Closed | Error::Internal(_) => {
                FerryError::Internal(m)
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
    /// The host has no valid credentials; sync stops with `auth_failed`.
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
