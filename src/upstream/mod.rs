//! Upstreams: a pooled hyper-util client per upstream, round-robin with passive health, and
//! the only retry rule that is always safe: try another address only when the request was
//! never sent (the connection could not be opened).
//!
//! Security notes: upstream TLS is verified against the system roots, or only against
//! `ca_file` when it is set. The connection to the upstream is HTTP/1.1.

mod balancer;
pub mod body;
pub mod headers;

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntCounter;

pub use balancer::Balancer;
pub use body::{BoxError, ClientBody, ProxyBody, RequestBody};

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// Why an upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A reloaded configuration names an issuer the running process does not have.
    #[error("issuer \"{name}\" was added by a reload: issuers change only on restart")]
    NewIssuer { name: String },
    /// The TLS client configuration (CA file, roots) could not be built.
    #[error("upstreams.{upstream}: {source}")]
    Tls {
        upstream: String,
        #[source]
        source: crate::tls_client::TlsClientError,
    },
}

/// Why a request to an upstream failed. Only `Connect` means nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No address accepted a connection.
    #[error("could not connect to upstream {upstream}")]
    Connect {
        upstream: Arc<str>,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The response headers did not arrive in time.
    #[error("upstream {upstream} did not respond within {timeout:?}")]
    Timeout {
        upstream: Arc<str>,
        timeout: Duration,
    },
    /// The request could not be built for this upstream (e.g. an unusable path).
    #[error("request to upstream {upstream} could not be built")]
    BadRequest {
        upstream: Arc<str>,
        #[source]
        source: http::Error,
    },
    /// No address was left to try (not reached: the loop returns on the last failure).
    #[error("upstream {upstream} has no address to try")]
    NoAddress { upstream: Arc<str> },
    /// The exchange failed after the request was (or may have been) sent.
    #[error("upstream {upstream} failed")]
    Protocol {
        upstream: Arc<str>,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

/// What the forwarder needs from the client request, besides headers and body.
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Path and query, as received.
    pub path_and_query: Option<PathAndQuery>,
    /// Headers, already rewritten.
    pub headers: HeaderMap,
    /// Set `Host` to the chosen address's authority (`rewrite_host: upstream`).
    pub host_from_upstream: bool,
}

/// One upstream, ready to forward request bodies of type `B`.
pub struct Upstream<B = Incoming> {
    /// Its name (metric label).
    pub name: Arc<str>,
    config: Arc<UpstreamConfig>,
    balancer: Balancer,
    client: Client<HttpsConnector<HttpConnector>, RequestBody<B>>,
    request_bytes: IntCounter,
    metrics: Metrics,
}

// === impl Upstream ===

impl<B: ClientBody> Upstream<B> {
    /// Builds the client (loading the CA file or system roots once, at startup).
    pub fn try_new(config: Arc<UpstreamConfig>, metrics: &Metrics) -> Result<Self, BuildError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let wants_tls = config
            .addresses
            .iter()
            .any(|a| a.scheme() == Some(&Scheme::HTTPS));
        // Plain-HTTP upstreams skip loading the system roots (a TLS config with none is unused).
        let tls = if wants_tls || config.ca_file.is_some() {
            crate::tls_client::config(config.ca_file.as_deref())
        } else {
            crate::tls_client::without_roots()
        }
        .map_err(|source| BuildError::Tls {
            upstream: config.name.clone(),
            source,
        })?;
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        metrics.init_upstream(&config.name);
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            balancer: Balancer::new(&config.addresses, config.unhealthy_cooldown),
            client,
            request_bytes: metrics.bytes.with_label_values(&["request"]),
            metrics: metrics.clone(),
            config,
        })
    }

    /// Sends the request to one address, moving on to the next only after a connect failure.
    /// Returns the response and the address that answered.
    pub async fn send(
        &self,
        out: Outgoing,
        body: B,
    ) -> Result<(Response<Incoming>, Uri), UpstreamError> {
        let (mut body, unsent) = RequestBody::new(body, self.request_bytes.clone());
        // Headers are only copied when another address could be tried.
        let spare_headers = (self.balancer.len() > 1).then(|| out.headers.clone());
        let mut headers = Some(out.headers);
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let Some((i, addr)) = self
                .balancer
                .pick(&tried)
                .and_then(|i| Some((i, self.balancer.get(i)?)))
            else {
                return Err(UpstreamError::NoAddress {
                    upstream: self.name.clone(),
                });
            };
            tried.push(i);
            let headers_now = headers
                .take()
                .or_else(|| spare_headers.clone())
                .unwrap_or_default();
            let mut headers_now = headers_now;
            if out.host_from_upstream {
                if let Some(v) = addr
                    .uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
                {
                    headers_now.insert(http::header::HOST, v);
                }
            }
            let req = build_request(
                &out.method,
                &addr.uri,
                out.path_and_query.as_ref(),
                headers_now,
                body,
            );
            let req = req.map_err(|source| UpstreamError::BadRequest {
                upstream: self.name.clone(),
                source,
            })?;
            match tokio::time::timeout(self.config.response_timeout, self.client.request(req)).await
            {
                Err(_) => {
                    self.count_error("response_timeout");
                    return Err(UpstreamError::Timeout {
                        upstream: self.name.clone(),
                        timeout: self.config.response_timeout,
                    });
                }
                Ok(Ok(resp)) => {
                    self.balancer.mark_up(i);
                    return Ok((resp, addr.uri.clone()));
                }
                Ok(Err(e)) if e.is_connect() => {
                    self.balancer.mark_down(i);
                    self.count_error(if is_timeout(&e) {
                        "connect_timeout"
                    } else {
                        "connect"
                    });
                    tracing::warn!(upstream = %self.name, address = %addr.uri, error = %error_chain(&e), "upstream connect failed");
                    match unsent.retake() {
                        Some(b) if tried.len() < self.balancer.len() => body = b,
                        _ => {
                            return Err(UpstreamError::Connect {
                                upstream: self.name.clone(),
                                source: e,
                            });
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.count_error("protocol");
                    return Err(UpstreamError::Protocol {
                        upstream: self.name.clone(),
                        source: e,
                    });
                }
            }
        }
    }

    fn count_error(&self, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[&*self.name, kind])
            .inc();
    }
}

fn build_request<B>(
    method: &Method,
    addr: &Uri,
    pq: Option<&PathAndQuery>,
    headers: HeaderMap,
    body: B,
) -> Result<Request<B>, http::Error> {
    let mut parts = addr.clone().into_parts();
    parts.path_and_query = Some(
        pq.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(parts)?;
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// `outer: inner: innermost`, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}
