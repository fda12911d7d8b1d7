//! Transports: how the sync engine reaches a backend.
//!
//! The engine never does I/O itself; it calls a [`Transport`]. The default is
//! [`HttpTransport`] (reqwest with rustls, no OpenSSL); a host can supply its own
//! (for example one that goes through the mobile platform's networking), and tests
//! inject fakes to drive every fault deterministically. [`watermelon`] adapts a
//! WatermelonDB-protocol backend to the same trait.

mod http;
pub mod watermelon;

pub use http::{COMPRESS_FROM_BYTES, HttpTransport};
pub use watermelon::WatermelonTransport;

use async_trait::async_trait;
use ferry_protocol::{
    FetchRequest, FetchResponse, PullPage, PullRequest, PushRequest, PushResponse, RawFields,
};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransportError {
    /// No answer: no network, refused, reset or timed out. Safe to retry later.
    #[error("offline: {0}")]
    Offline(String),
    /// 401: the token is missing, wrong or expired.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token provider could not give a token (see
    /// [`crate::Error::TokenUnavailable`]).
    #[error("no token: {0}")]
    TokenUnavailable(String),
    /// Any other error answer from the server.
    #[error("server error {status} ({code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The answer broke the protocol (bad JSON, wrong shape).
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl TransportError {
    /// Worth retrying later with backoff (network trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Offline(_) | TransportError::TokenUnavailable(_) => true,
            TransportError::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

impl From<TransportError> for crate::Error {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Offline(m) => crate::Error::Offline(m),
            TransportError::Unauthorized(m) => crate::Error::Unauthorized(m),
            TransportError::TokenUnavailable(m) => crate::Error::TokenUnavailable(m),
            TransportError::Server {
                status,
                code,
                message,
            } => crate::Error::Server {
                status,
                code,
                message,
            },
            TransportError::Protocol(m) => crate::Error::Protocol(m),
        }
    }
}

/// A backend speaking the Ferry protocol (see `docs/protocol.md`).
#[async_trait]
pub trait Transport: Send + Sync {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError>;
    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError>;
    /// Read-through (`POST /v1/fetch`): records that match a query, read on the
    /// server. A backend without the endpoint answers 404, as this default does.
    async fn fetch(
        &self,
        token: &str,
        req: &FetchRequest,
    ) -> Result<FetchResponse, TransportError> {
        let _ = (token, req);
        Err(TransportError::Server {
            status: 404,
            code: "not_found".into(),
            message: "this backend has no read-through endpoint".into(),
        })
    }
    /// Response bytes received so far (for progress); 0 if the transport can't tell.
    fn bytes_received(&self) -> u64 {
        0
    }
    /// A `retry` answer means "pull first, then push again" (WatermelonDB's
    /// all-or-nothing conflicts): the client re-pulls and retries within the sync.
    fn repull_on_retry(&self) -> bool {
        false
    }
}

/// Supplies bearer tokens. On a 401 the engine asks once for a refreshed token.
///
/// What a failure means is the error it returns: `Offline` (the auth service is
/// unreachable) and `TokenUnavailable` (anything else) are retried with backoff
/// and reported in the status; `Unauthorized` (no credentials) stops background
/// sync until the next explicit sync, like a 401 after a refresh. Local reads and
/// writes never wait for a token.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// The current token; `refresh` is true after the server refused the last one.
    async fn token(&self, refresh: bool) -> Result<String, TransportError>;
}

/// A fixed token (development, tests, the CLI).
pub struct StaticToken(pub String);

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self, _refresh: bool) -> Result<String, TransportError> {
        Ok(self.0.clone())
    }
}
