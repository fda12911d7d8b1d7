//! The HTTP API (axum): `/v1/pull`, `/v1/push`, `/watermelon/sync`, `/health`,
//! `/metrics`, with auth, limits, timeouts and compression.
//!
//! Handlers only parse, authenticate and map errors; the meaning lives in
//! [`crate::service`]. Every error answer is an `ErrorBody` JSON. Nothing here may
//! log a request's `Authorization` header.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use ferry_protocol::object::JsonObject;
use ferry_protocol::watermelon::{Changes, TableChanges};
use ferry_protocol::{
    FetchRequest, MutationOutcome, PROTOCOL_HEADER, PROTOCOL_VERSION, PullRequest, PushRequest,
    error_code,
};
use serde::de::{DeserializeOwned, IgnoredAny};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{Authenticator, Caller};
use crate::error::ApiError;
use crate::service::{SyncService, WatermelonMigration};

/// Shared state of all handlers.
pub struct AppState {
    pub service: SyncService,
    pub auth: Authenticator,
}

/// Builds the router with every middleware layer.
pub fn router(service: SyncService) -> Router {
    let limits = service.config().limits.clone();
    let state = Arc::new(AppState {
        auth: Authenticator::new(service.config()),
        service,
    });
    crate::metrics::handle();
    Router::new()
        .route(ferry_protocol::PULL_PATH, post(pull))
        .route(ferry_protocol::PUSH_PATH, post(push))
        .route(ferry_protocol::FETCH_PATH, post(fetch))
        .route(
            ferry_protocol::watermelon::SYNC_PATH,
            get(watermelon_pull).post(watermelon_push),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        // Outside the limit, so that the limit counts decompressed bytes: a
        // small gzip body cannot expand past `max_body_bytes`.
        .layer(RequestDecompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(limits.request_timeout_ms),
        ))
        .layer(middleware::map_response(json_errors))
        // Fastest level: sync pages are repetitive JSON, so level 1 keeps most of
        // the size win at a fraction of the CPU (the server is the bottleneck of
        // a large initial sync).
        .layer(CompressionLayer::new().quality(tower_http::CompressionLevel::Fastest))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(TraceLayer::new_for_http())
}

/// Gives the plain-text answers of tower layers (413, 408, 415, 405) the JSON error shape.
async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || response.status().is_success() {
        return response;
    }
    let err = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            error_code::PAYLOAD_TOO_LARGE,
            "request body too large",
        ),
        StatusCode::REQUEST_TIMEOUT => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            error_code::UNAVAILABLE,
            "request timed out",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error_code::UNSUPPORTED_MEDIA_TYPE,
            "the request body's Content-Encoding is not gzip or identity",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            error_code::INVALID_REQUEST,
            "method not allowed",
        ),
        _ => return response,
    };
    err.into_response()
}

impl AppState {
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(v) = headers.get(PROTOCOL_HEADER) {
            let supported = v.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok())
                == Some(PROTOCOL_VERSION);
            if !supported {
                return Err(ApiError::bad_request(
                    error_code::UNSUPPORTED_PROTOCOL,
                    format!("this server speaks {PROTOCOL_HEADER}: {PROTOCOL_VERSION}"),
                ));
            }
        }
        self.auth.authenticate(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
    }
}

/// Parses a JSON request body, or a JSON query parameter: text that is not JSON →
/// `malformed_json`; JSON of the wrong shape → `invalid_request`. Every JSON request
/// of the protocol is an object, so the top-level value must be one: serde's
/// derived structs also take an array (`[null,null,1]` would be a pull with
/// `limit: 1`).
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map(|JsonObject(v)| v)
        .map_err(|e| {
            // serde stops at the first error, and a shape error can come before a
            // syntax error further on (`[1,`): only JSON is told it has the wrong shape.
            let (code, e) = if !e.is_data() {
                (error_code::MALFORMED_JSON, e)
            } else if let Err(syntax) = serde_json::from_slice::<IgnoredAny>(body) {
                (error_code::MALFORMED_JSON, syntax)
            } else {
                (error_code::INVALID_REQUEST, e)
            };
            ApiError::bad_request(code, format!("request body: {e}"))
        })
}

/// What a request body may be declared as.
#[derive(Clone, Copy)]
enum BodyType {
    /// `application/json` (or a `+json` type), required for a non-empty body.
    Json,
    /// Also `text/plain` or no `Content-Type`: what WatermelonDB's documented
    /// frontend sends (`fetch` with a string body), which its backends accept.
    JsonOrText,
}

/// A body declared as anything else (a form, say) is refused with `415
/// unsupported_media_type` before it is read.
fn check_body_type(headers: &HeaderMap, allowed: BodyType) -> Result<(), ApiError> {
    let declared = headers.get(header::CONTENT_TYPE);
    let mime = declared
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok());
    let json = mime.as_ref().is_some_and(|m| {
        m.type_() == mime::APPLICATION
            && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    });
    let text = match &mime {
        None => declared.is_none(),
        Some(m) => m.type_() == mime::TEXT && m.subtype() == mime::PLAIN,
    };
    if json || (text && matches!(allowed, BodyType::JsonOrText)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        error_code::UNSUPPORTED_MEDIA_TYPE,
        "the request body must be sent as `Content-Type: application/json`",
    ))
}

/// The whole body, decompressed: past `limit` bytes a 413; a body that
/// cannot be read (gzip that is not, or is cut short) a 400.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if c.is::<http_body_util::LengthLimitError>() {
                return ApiError::payload_too_large(limit);
            }
            cause = c.source();
        }
        ApiError::bad_request(
            error_code::MALFORMED_JSON,
            format!("the request body could not be read: {e}"),
        )
    })
}

fn protocol_json<T: serde::Serialize>(value: &T) -> Response {
    let mut r = Json(value).into_response();
    r.headers_mut()
        .insert(PROTOCOL_HEADER, PROTOCOL_VERSION.into());
    r
}

async fn pull(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers)?;
    let body = read_body(body, s.service.config().limits.max_body_bytes).await?;
    let req: PullRequest = if body.is_empty() {
        PullRequest::default_request()
    } else {
        check_body_type(&headers, BodyType::Json)?;
        parse_json(&body)?
    };
    let page = s.service.pull(&caller, &req).await?;
    crate::metrics::pulled("ferry", page.changes.values().map(|c| c.len() as u64).sum());
    Ok(protocol_json(&page))
}

async fn push(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers)?;
    check_body_type(&headers, BodyType::Json)?;
    let body = read_body(body, s.service.config().limits.max_body_bytes).await?;
    let req: PushRequest = parse_json(&body)?;
    let n = req.mutations.len() as u64;
    let resp = s.service.push(&caller, req).await?;
    let applied = resp
        .results
        .iter()
        .filter(|r| matches!(r.outcome, MutationOutcome::Applied { .. }))
        .count();
    crate::metrics::pushed("ferry", n, applied as u64);
    Ok(protocol_json(&resp))
}

async fn fetch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers)?;
    check_body_type(&headers, BodyType::Json)?;
    let body = read_body(body, s.service.config().limits.max_body_bytes).await?;
    let req: FetchRequest = parse_json(&body)?;
    let resp = s.service.fetch(&caller, &req).await?;
    crate::metrics::pulled("fetch", resp.records.len() as u64);
    Ok(protocol_json(&resp))
}

/// Parses a WatermelonDB number parameter; `null`, empty and absent are `None`.
fn wm_number(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    match params.get(name).map(|s| s.trim()) {
        None | Some("" | "null" | "undefined") => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                error_code::INVALID_REQUEST,
                format!("{name} must be an integer or null"),
            )
        }),
    }
}

async fn watermelon_pull(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers)?;
    let last_pulled_at = wm_number(&params, "last_pulled_at")?;
    wm_number(&params, "schema_version")?;
    let migration: Option<WatermelonMigration> = match params.get("migration").map(|s| s.trim()) {
        None | Some("" | "null" | "undefined") => None,
        Some(json) => Some(parse_json(json.as_bytes())?),
    };
    let resp = s
        .service
        .watermelon_pull(&caller, last_pulled_at, migration.as_ref())
        .await?;
    let rows = resp
        .changes
        .values()
        .map(|t| (t.created.len() + t.updated.len() + t.deleted.len()) as u64)
        .sum();
    crate::metrics::pulled("watermelon", rows);
    Ok(Json(resp).into_response())
}

async fn watermelon_push(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers)?;
    check_body_type(&headers, BodyType::JsonOrText)?;
    let body = read_body(body, s.service.config().limits.max_body_bytes).await?;
    let mut value: serde_json::Value = parse_json(&body)?;
    // WatermelonDB's frontend example posts the changes object itself; accept a
    // `{"changes": {...}}` wrapper too, unless `changes` is one of the collections.
    let wrapped = value.as_object().is_some_and(|o| {
        o.get("changes").is_some_and(|c| c.is_object())
            && !s.service.config().collections.contains_key("changes")
    });
    if wrapped {
        value = value["changes"].take();
    }
    // Each table's changes are an object too (`created`, `updated`, `deleted`).
    let changes: BTreeMap<String, JsonObject<TableChanges>> =
        parse_json(value.to_string().as_bytes())?;
    let changes: Changes = changes.into_iter().map(|(t, c)| (t, c.0)).collect();
    let last_pulled_at = wm_number(&params, "last_pulled_at")?.ok_or_else(|| {
        ApiError::bad_request(
            error_code::INVALID_REQUEST,
            "last_pulled_at query parameter is required",
        )
    })?;
    let n = changes
        .values()
        .map(|t| (t.created.len() + t.updated.len() + t.deleted.len()) as u64)
        .sum();
    let resp = s
        .service
        .watermelon_push(&caller, last_pulled_at, changes)
        .await?;
    let rejected: u64 = resp
        .experimental_rejected_ids
        .iter()
        .flat_map(|m| m.values())
        .map(|v| v.len() as u64)
        .sum();
    crate::metrics::pushed("watermelon", n, n - rejected);
    Ok(Json(resp).into_response())
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s.service.storage().ping().await {
        Ok(()) => {
            Json(serde_json::json!({"status": "ok", "backend": s.service.storage().backend()}))
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %crate::logging::Escaped(&e), "health check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error_code::UNAVAILABLE,
                "storage unreachable",
            )
            .into_response()
        }
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
}

trait DefaultRequest {
    fn default_request() -> Self;
}

impl DefaultRequest for PullRequest {
    fn default_request() -> Self {
        PullRequest {
            subscriptions: None,
            cursor: None,
            client_id: None,
            limit: None,
            collections: None,
            want_totals: false,
            want_checksums: false,
            restart: None,
            max_priority: None,
            priorities: None,
        }
    }
}
