//! Prometheus metrics: request counts and latency histograms per route, pulls,
//! pushes and rows, rendered at `GET /metrics`.
//!
//! Uses the `metrics` facade with the Prometheus exporter installed once per
//! process (several in-process servers share it). Labels must never carry user
//! ids, tokens or record ids.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide exporter handle (installs the recorder on first use).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by an embedding app): then
        // metrics go there and this handle renders what it has.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The `route` label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The `method` label of any method outside [`method_label`]'s fixed set.
pub const OTHER_METHOD: &str = "other";

/// The `method` label: the standard methods by name, anything else [`OTHER_METHOD`].
/// Clients choose the method, and every label value is a series kept for the life
/// of the process, so a label value must never be taken from the request as is.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => OTHER_METHOD,
    }
}

/// Middleware: counts requests and records their latency by route and status.
/// Every label has a fixed set of values: `route` is a matched route's template
/// (never the request's path) or [`UNMATCHED_ROUTE`], `method` is
/// [`method_label`], `status` a status the server answered.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE.to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("route", route),
        ("method", method.to_string()),
        ("status", status),
    ];
    metrics::counter!("ferry_http_requests_total", &labels).increment(1);
    metrics::histogram!("ferry_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

pub fn pulled(kind: &'static str, rows: u64) {
    metrics::counter!("ferry_pulls_total", "kind" => kind).increment(1);
    metrics::counter!("ferry_pulled_rows_total", "kind" => kind).increment(rows);
}

/// A read answered: whether it withheld committed changes behind the watermark
/// (an older transaction still running, on PostgreSQL), and how long the
/// oldest transaction that can hold it back has run (0 when there is none).
pub fn watermark(withheld: bool, lag_seconds: Option<f64>) {
    if withheld {
        metrics::counter!("ferry_pull_withheld_total").increment(1);
    }
    metrics::gauge!("ferry_pull_watermark_lag_seconds").set(lag_seconds.unwrap_or(0.0));
}

pub fn pushed(kind: &'static str, mutations: u64, applied: u64) {
    metrics::counter!("ferry_pushes_total", "kind" => kind).increment(1);
    metrics::counter!("ferry_pushed_mutations_total", "kind" => kind).increment(mutations);
    metrics::counter!("ferry_applied_mutations_total", "kind" => kind).increment(applied);
}
