//! The default transport: HTTP/JSON with reqwest over rustls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::{
    ErrorBody, FETCH_PATH, FetchRequest, FetchResponse, PROTOCOL_HEADER, PROTOCOL_VERSION,
    PULL_PATH, PUSH_PATH, PullPage, PullRequest, PushRequest, PushResponse, RawFields,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Transport, TransportError};

/// HTTP transport to a Ferry backend at `base_url`.
#[derive(Clone)]
pub struct HttpTransport {
    base: String,
    client: reqwest::Client,
    received: Arc<AtomicU64>,
    /// Compress large request bodies; off once the server refused one.
    compress: Arc<AtomicBool>,
}

impl HttpTransport {
    pub fn new(base_url: &str) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .gzip(true)
            .build()
            .map_err(|e| TransportError::Protocol(format!("cannot build HTTP client: {e}")))?;
        Ok(HttpTransport {
            base: base_url.trim_end_matches('/').to_string(),
            client,
            received: Arc::default(),
            compress: Arc::new(AtomicBool::new(true)),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn post<B: Serialize + Sync, R: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: &B,
    ) -> Result<R, TransportError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| TransportError::Protocol(format!("cannot encode the request: {e}")))?;
        // A large body (a push) goes gzip-compressed, as answers come back:
        // on a slow uplink it is most of a push's time.
        let compress = json.len() >= COMPRESS_FROM_BYTES && self.compress.load(Ordering::Relaxed);
        let (mut status, mut bytes) = self.send(path, token, &json, compress).await?;
        if compress && refuses_gzip(status, &bytes) {
            // A server that does not take compressed bodies (an older one, or
            // another backend): send this one again as it is, and no more
            // compressed ones to it.
            tracing::warn!(
                status = status.as_u16(),
                "the server refused a gzip request body; sending uncompressed from now on"
            );
            self.compress.store(false, Ordering::Relaxed);
            (status, bytes) = self.send(path, token, &json, false).await?;
        }
        decode(status, &bytes)
    }

    /// One POST of `json`, gzip-compressed or not: the status and the body,
    /// counted for progress.
    async fn send(
        &self,
        path: &str,
        token: &str,
        json: &[u8],
        compress: bool,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), TransportError> {
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        let req = if compress {
            req.header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(gzip(json)?)
        } else {
            req.body(json.to_vec())
        };
        self.received_body(req.send().await.map_err(offline)?).await
    }

    /// The status and whole body of an answer, its bytes counted for progress.
    async fn received_body(
        &self,
        resp: reqwest::Response,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), TransportError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(offline)?;
        self.received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((status, bytes))
    }

    /// Decodes a 2xx JSON answer, or maps an error answer to a [`TransportError`];
    /// counts the bytes for progress.
    pub(crate) async fn read_json<R: DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<R, TransportError> {
        let (status, bytes) = self.received_body(resp).await?;
        decode(status, &bytes)
    }
}

/// Whether an answer to a gzip body says the server does not take gzip: a 415,
/// or a 400 that calls the (valid) JSON malformed.
fn refuses_gzip(status: reqwest::StatusCode, bytes: &[u8]) -> bool {
    status == reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE
        || (status == reqwest::StatusCode::BAD_REQUEST
            && serde_json::from_slice::<ErrorBody>(bytes)
                .is_ok_and(|b| b.error.code == ferry_protocol::error_code::MALFORMED_JSON))
}

/// Request bodies from this size on are sent gzip-compressed (unless the
/// server refused one: then none is).
pub const COMPRESS_FROM_BYTES: usize = 1024;

/// Level 1, as the server answers: JSON of records shrinks most of the way
/// at a fraction of the CPU.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>, TransportError> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 3),
        flate2::Compression::fast(),
    );
    e.write_all(bytes)
        .and_then(|_| e.finish())
        .map_err(|err| TransportError::Protocol(format!("cannot compress the request: {err}")))
}

pub(crate) fn offline(e: reqwest::Error) -> TransportError {
    TransportError::Offline(e.to_string())
}

fn decode<R: DeserializeOwned>(
    status: reqwest::StatusCode,
    bytes: &[u8],
) -> Result<R, TransportError> {
    if status.is_success() {
        return serde_json::from_slice(bytes)
            .map_err(|e| TransportError::Protocol(format!("bad response body: {e}")));
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            "unknown".to_string(),
            String::from_utf8_lossy(bytes).chars().take(200).collect(),
        ),
    };
    if status.as_u16() == 401 {
        return Err(TransportError::Unauthorized(message));
    }
    Err(TransportError::Server {
        status: status.as_u16(),
        code,
        message,
    })
}

#[async_trait]
impl Transport for HttpTransport {
    async fn pull(&self, token: &str, req: &PullRequest) -> Result<PullPage, TransportError> {
        self.post(PULL_PATH, token, req).await
    }

    async fn push(
        &self,
        token: &str,
        req: &PushRequest<RawFields>,
    ) -> Result<PushResponse, TransportError> {
        self.post(PUSH_PATH, token, req).await
    }

    async fn fetch(
        &self,
        token: &str,
        req: &FetchRequest,
    ) -> Result<FetchResponse, TransportError> {
        self.post(FETCH_PATH, token, req).await
    }

    fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}
