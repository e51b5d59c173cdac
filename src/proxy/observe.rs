//! Per-request observation: counts the request in flight, and when the response body ends
//! (or is dropped) records the request metrics and writes the access-log line.
//!
//! Security notes: the access log has the path without its query (queries carry codes and
//! tokens), and no header values (the request id excepted: validated or generated, see
//! `request_id`). A refusal is logged with its reason and the rule that decided.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};
use tokio::time::Instant;

use super::Activity;
use super::ConnInfo;
use crate::body::{BoxError, ProxyBody};
use crate::authz::Decider;
use crate::error::ProxyError;
use crate::metrics::{Metrics, method_label, status_class};

/// The series a request records, resolved once per handler configuration: one shared
/// `Arc` per request instead of a clone of each metric, and no label lookup (hashing, a
/// read lock) for the common case, a `GET` answered 2xx on a configured route.
pub struct Series {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    in_flight: IntGauge,
    response_bytes: IntCounter,
    /// By route index (`routing::Route::index`): `{route, GET, 2xx}`.
    get_ok: Vec<(IntCounter, Histogram)>,
}

impl Series {
    /// The series of `metrics`, with `routes` (route names in configuration order).
    pub fn new<'a>(metrics: &Metrics, routes: impl Iterator<Item = &'a str>) -> Arc<Self> {
        let get_ok = routes
            .map(|name| {
                let labels = [name, "GET", "2xx"];
                (
                    metrics.requests.with_label_values(&labels),
                    metrics.request_duration.with_label_values(&labels),
                )
            })
            .collect();
        Arc::new(Self {
            requests: metrics.requests.clone(),
            request_duration: metrics.request_duration.clone(),
            in_flight: metrics.in_flight.clone(),
            response_bytes: metrics.bytes.with_label_values(&["response"]),
            get_ok,
        })
    }
}

/// The record of one request, finished when the response body ends. Small: it travels
/// inside every response body; what only the access log needs is boxed apart.
pub struct Observed {
    series: Arc<Series>,
    activity: Arc<Activity>,
    start: Instant,
    method: Method,
    /// `None` until a route matched (labelled `none`); a configured route's index.
    route: Option<(Arc<str>, Option<usize>)>,
    /// Only with the access log on.
    log: Option<Box<LogFields>>,
    status: u16,
    bytes: u64,
    done: bool,
}

/// What only the access-log line needs.
struct LogFields {
    uri: Uri,
    peer: std::net::IpAddr,
    upstream: Option<Uri>,
    /// `X-Request-Id`.
    request_id: Option<http::HeaderValue>,
    /// Why Portcullis refused the request, and the rule that decided, if one did.
    refusal: Option<(&'static str, Option<Decider>)>,
}

/// The body of every response Portcullis serves: the response's own body, observed (one
/// concrete type around the boxed one, not a second box).
pub struct ObservedBody {
    inner: ProxyBody,
    obs: Observed,
}

// === impl Observed ===

impl Observed {
    /// Starts observing `req`.
    pub fn start<B>(
        series: &Arc<Series>,
        conn: &ConnInfo,
        req: &Request<B>,
        access_log: bool,
        start: Instant,
    ) -> Self {
        series.in_flight.inc();
        conn.activity.begin();
        Self {
            series: series.clone(),
            activity: conn.activity.clone(),
            start,
            method: req.method().clone(),
            route: None,
            log: access_log.then(|| {
                Box::new(LogFields {
                    uri: req.uri().clone(),
                    peer: conn.peer.ip(),
                    upstream: None,
                    request_id: None,
                    refusal: None,
                })
            }),
            status: 0,
            bytes: 0,
            done: false,
        }
    }

    /// The configured route that matched (`index`: `routing::Route::index`).
    pub fn set_route(&mut self, name: Arc<str>, index: usize) {
        self.route = Some((name, Some(index)));
    }

    /// A request to one of Portcullis's own paths, labelled `route`.
    pub fn set_own_route(&mut self, route: Arc<str>) {
        self.route = Some((route, None));
    }

    /// The request's id (kept only for the access log).
    pub fn set_request_id(&mut self, id: &http::HeaderValue) {
        if let Some(log) = &mut self.log {
            log.request_id = Some(id.clone());
        }
    }

    /// Portcullis refused the request: the reason and the deciding rule go in the access log.
    pub fn set_refusal(&mut self, e: &ProxyError) {
        if let Some(log) = &mut self.log {
            let rule = match e {
                ProxyError::Forbidden { rule, .. } => rule.clone(),
                _ => None,
            };
            log.refusal = Some((e.reason(), rule));
        }
    }

    /// The upstream address that answered (asked for only with the access log on).
    pub fn set_upstream(&mut self, upstream: impl FnOnce() -> Option<Uri>) {
        if let Some(log) = &mut self.log {
            log.upstream = upstream();
        }
    }

    /// Wraps the response so the record finishes with its body.
    pub fn wrap(mut self, resp: Response<ProxyBody>) -> Response<ObservedBody> {
        self.status = resp.status().as_u16();
        let (parts, inner) = resp.into_parts();
        Response::from_parts(parts, ObservedBody { inner, obs: self })
    }

    fn finish(&mut self, complete: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = crate::clock::coarse_now().saturating_duration_since(self.start);
        let series = &*self.series;
        let route = self.route.as_ref().map_or("none", |(name, _)| &**name);
        let hot = match &self.route {
            Some((_, Some(i)))
                if self.method == Method::GET && (200..300).contains(&self.status) =>
            {
                series.get_ok.get(*i)
            }
            _ => None,
        };
        if let Some((requests, duration)) = hot {
            requests.inc();
            duration.observe(elapsed.as_secs_f64());
        } else {
            let labels = [route, method_label(&self.method), status_class(self.status)];
            series.requests.with_label_values(&labels).inc();
            series
                .request_duration
                .with_label_values(&labels)
                .observe(elapsed.as_secs_f64());
        }
        series.response_bytes.inc_by(self.bytes);
        series.in_flight.dec();
        self.activity.end();
        if let Some(log) = &self.log {
            let (reason, rule) = match &log.refusal {
                Some((reason, rule)) => (*reason, rule.as_ref()),
                None => ("", None),
            };
            tracing::info!(
                target: "portcullis::access",
                request_id = log.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                reason,
                rule = rule.map(Decider::name).unwrap_or(""),
                client = %log.peer,
                method = %self.method,
                path = log.uri.path(),
                route,
                status = self.status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream = log.upstream.as_ref().map(|u| u.to_string()).unwrap_or_default(),
                bytes = self.bytes,
                complete,
                "request"
            );
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // A body dropped before its end (client went away) still gets its record.
        self.finish(false);
    }
}

// === impl ObservedBody ===

impl Drop for ObservedBody {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.obs.finish(complete);
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.obs.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.obs.finish(true),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
