//! Every metric Portcullis exports, defined once and registered in one registry at startup.
//! `docs/METRICS.md` lists them for users; keep the two in step.
//!
//! Label values are bounded: route and upstream names come from the config, methods outside
//! the standard set become `OTHER`, statuses are reduced to their class.

use http::Method;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Why building the metrics failed (only on a programming error: a duplicate or bad name).
pub type MetricsError = prometheus::Error;

/// All metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `portcullis_http_requests_total{route,method,status_class}`
    pub requests: IntCounterVec,
    /// `portcullis_http_request_duration_seconds{route,method,status_class}`
    pub request_duration: HistogramVec,
    /// `portcullis_http_requests_in_flight`
    pub in_flight: IntGauge,
    /// `portcullis_connections_open{listener}`
    pub connections_open: IntGaugeVec,
    /// `portcullis_connections_rejected_total{listener}`
    pub connections_rejected: IntCounterVec,
    /// `portcullis_upstream_errors_total{upstream,kind}`
    pub upstream_errors: IntCounterVec,
    /// `portcullis_tls_handshake_failures_total{listener,reason}`
    pub tls_handshake_failures: IntCounterVec,
    /// `portcullis_reloads_total{kind,result}`
    pub reloads: IntCounterVec,
    /// `portcullis_upstream_bytes_total{direction}`
    pub bytes: IntCounterVec,
    /// `portcullis_build_info{version}`
    pub build_info: IntGaugeVec,
}

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every metric.
    pub fn try_new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_http_requests_total",
                "Requests handled, by route, method and status class.",
            ),
            &["route", "method", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_http_request_duration_seconds",
                "Time from request received to response body finished, by route, method and status class.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route", "method", "status_class"],
        )?;
        let in_flight = IntGauge::new(
            "portcullis_http_requests_in_flight",
            "Requests received whose response has not finished.",
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "portcullis_connections_open",
                "Client connections open, by listener.",
            ),
            &["listener"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "portcullis_connections_rejected_total",
                "Client connections closed at once because server.max_connections was reached.",
            ),
            &["listener"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_errors_total",
                "Failed upstream attempts, by upstream and kind (connect, connect_timeout, response_timeout, protocol).",
            ),
            &["upstream", "kind"],
        )?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_handshake_failures_total",
                "TLS handshakes that failed, by listener and reason (timeout, error).",
            ),
            &["listener", "reason"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_reloads_total",
                "Reloads by kind (certificate, config) and result (success, failure).",
            ),
            &["kind", "result"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_bytes_total",
                "Body bytes proxied, by direction (request = client to upstream, response = upstream to client).",
            ),
            &["direction"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "portcullis_build_info",
                "Always 1; the version label says which build runs.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            in_flight,
            connections_open,
            connections_rejected,
            upstream_errors,
            tls_handshake_failures,
            reloads,
            bytes,
            build_info,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// A bounded label for a method.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// `2xx` etc.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
