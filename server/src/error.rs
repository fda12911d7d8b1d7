//! Errors: [`ServerError`] for startup and storage failures, [`ApiError`] for the
//! answer a request gets.
//!
//! Every non-2xx answer has the `ferry_protocol::ErrorBody` JSON shape. An
//! `ApiError` must never carry a token or a storage internal in its message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_protocol::{ErrorBody, ErrorDetail, error_code};

/// Startup, configuration and storage failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("invalid database url: {0}")]
    DatabaseUrl(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<deadpool_postgres::PoolError> for ServerError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => ServerError::Postgres(e),
            other => ServerError::Pool(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(e: tokio::task::JoinError) -> Self {
        ServerError::Task(e.to_string())
    }
}

/// WatermelonDB push conflict (not a Ferry protocol code: Ferry reports conflicts per mutation).
pub const CONFLICT: &str = "conflict";

/// A request failure: HTTP status plus the machine-readable code of the body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, error_code::UNAUTHORIZED, message)
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unknown_collection(name: &str) -> Self {
        Self::bad_request(
            error_code::UNKNOWN_COLLECTION,
            format!("unknown collection {name:?}"),
        )
    }
    pub fn invalid_cursor() -> Self {
        Self::bad_request(
            error_code::INVALID_CURSOR,
            "the cursor was not issued to this user by this server",
        )
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            error_code::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        // A storage error can quote the values it was given (PostgreSQL's DETAIL).
        tracing::error!(error = %crate::logging::Escaped(&e), "request failed in storage");
        let pool_exhausted = matches!(e, ServerError::Pool(_));
        if pool_exhausted {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error_code::UNAVAILABLE,
                "storage is busy, retry later",
            )
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_code::INTERNAL,
                "internal error",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
