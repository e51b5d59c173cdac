//! Per-request observation: counts the request in flight, and when the response body ends
//! (or is dropped) records the request metrics and writes the access-log line.
//!
//! Security notes: the access log has the path without its query (queries carry codes and
//! tokens), and no header values.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::{HistogramVec, IntCounterVec, IntGauge};
use tokio::time::Instant;

use super::ConnInfo;
use crate::listener::Activity;
use crate::metrics::{Metrics, method_label, status_class};
use crate::upstream::{BoxError, ProxyBody};

/// The record of one request, finished when the response body ends.
pub struct Observed {
    // Only the metrics a request records: cloning all of `Metrics` per request costs an
    // atomic increment and decrement for each of its fields.
    requests: IntCounterVec,
    request_duration: HistogramVec,
    in_flight: IntGauge,
    bytes_total: IntCounterVec,
    activity: Arc<Activity>,
    start: Instant,
    method: Method,
    /// Kept only for the access log.
    uri: Option<Uri>,
    peer: std::net::IpAddr,
    /// `None` until a route matched (labelled `none`).
    route: Option<Arc<str>>,
    upstream: Option<Uri>,
    status: u16,
    bytes: u64,
    access_log: bool,
    done: bool,
}

/// The response body, observed.
struct ObservedBody {
    inner: ProxyBody,
    obs: Observed,
}

// === impl Observed ===

impl Observed {
    /// Starts observing `req`.
    pub fn start<B>(
        metrics: &Metrics,
        conn: &ConnInfo,
        req: &Request<B>,
        access_log: bool,
        start: Instant,
    ) -> Self {
        metrics.in_flight.inc();
        conn.activity.begin();
        Self {
            requests: metrics.requests.clone(),
            request_duration: metrics.request_duration.clone(),
            in_flight: metrics.in_flight.clone(),
            bytes_total: metrics.bytes.clone(),
            activity: conn.activity.clone(),
            start,
            method: req.method().clone(),
            uri: access_log.then(|| req.uri().clone()),
            peer: conn.peer.ip(),
            route: None,
            upstream: None,
            status: 0,
            bytes: 0,
            access_log,
            done: false,
        }
    }

    /// The route that matched.
    pub fn set_route(&mut self, route: Arc<str>) {
        self.route = Some(route);
    }

    /// The upstream address that answered.
    pub fn set_upstream(&mut self, upstream: Uri) {
        if self.access_log {
            self.upstream = Some(upstream);
        }
    }

    /// Wraps the response so the record finishes with its body.
    pub fn wrap(mut self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        self.status = resp.status().as_u16();
        let (parts, inner) = resp.into_parts();
        Response::from_parts(parts, ObservedBody { inner, obs: self }.boxed_unsync())
    }

    fn finish(&mut self, complete: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        let method = method_label(&self.method);
        let class = status_class(self.status);
        let route = self.route.as_deref().unwrap_or("none");
        let labels = [route, method, class];
        self.requests.with_label_values(&labels).inc();
        self.request_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        self.bytes_total
            .with_label_values(&["response"])
            .inc_by(self.bytes);
        self.in_flight.dec();
        self.activity.end();
        if self.access_log {
            tracing::info!(
                target: "portcullis::access",
                client = %self.peer,
                method = %self.method,
                path = self.uri.as_ref().map_or("", |u| u.path()),
                route,
                status = self.status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream = self.upstream.as_ref().map(|u| u.to_string()).unwrap_or_default(),
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
