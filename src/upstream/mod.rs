//! Upstreams: HTTP/1.1 connections, pooled per request worker and address (`pool.rs`),
//! round-robin with passive health shared by all workers, and the only retry rule that is
//! always safe: try again only when the request was provably never sent: the connection
//! could not be opened (then the next address), or a pooled connection that had just closed
//! took nothing of it (then another connection to the same address, and when none can be
//! opened there, the next address: with the codec the request is then already encoded,
//! `h1::Unsent::Encoded`, and its head is encoded again for the next address's `Host`).
//!
//! Two clients, chosen per upstream (`upstreams.<name>.client`):
//! - `codec` (the default): the own HTTP/1 client codec (`h1`), driven from the request's
//!   own task; see its docs for its retry rule and framing.
//! - `hyper`: `hyper::client::conn::http1` with a connection task per connection; a pooled
//!   connection's request is retried only when hyper gives it back unsent
//!   (`TrySendError::take_message`).
//!
//! Security notes: upstream TLS is verified against the system roots, or only against
//! `ca_file` when it is set. The connection to the upstream is HTTP/1.1.

mod balancer;
pub mod body;
pub mod h1;
pub mod headers;
mod pool;
mod response;

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::IntCounter;

pub use balancer::Balancer;
pub use body::{BodyProgress, BoxError, ClientBody, RequestBody};
pub use pool::PooledBody;
use pool::{Checkin, Sender, WorkerPool};
pub use response::{UpstreamBody, UpstreamUpgrade};

use crate::config::{UpstreamClient, UpstreamConfig};
use crate::metrics::Metrics;

/// Why an upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
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
        source: BoxError,
    },
    /// The response headers did not arrive in time.
    #[error("upstream {upstream} did not respond within {timeout:?}")]
    Timeout {
        upstream: Arc<str>,
        timeout: Duration,
    },
    /// No address was left to try (not reached: the loop returns on the last failure).
    #[error("upstream {upstream} has no address to try")]
    NoAddress { upstream: Arc<str> },
    /// The exchange failed after the request was (or may have been) sent.
    #[error("upstream {upstream} failed")]
    Protocol {
        upstream: Arc<str>,
        #[source]
        source: ProtocolError,
    },
}

/// How an exchange failed, by client.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// hyper's client (`client: hyper`).
    #[error(transparent)]
    Hyper(hyper::Error),
    /// The codec (`client: codec`).
    #[error(transparent)]
    Codec(h1::Error),
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
    client: Client<B>,
    /// `Host` for a request that has none: each address's authority.
    hosts: Box<[Option<HeaderValue>]>,
    request_bytes: IntCounter,
    metrics: Metrics,
}

/// The client of one upstream, with one pool per request worker (the index `send` is
/// given).
enum Client<B> {
    Hyper {
        connector: HttpsConnector<HttpConnector>,
        pools: Box<[Arc<WorkerPool<Sender<B>>>]>,
    },
    Codec {
        connector: h1::Connector,
        pools: Box<[Arc<WorkerPool<h1::Conn>>]>,
    },
}

/// The response of an upstream: its body returns the connection to the pool when it ends.
pub type UpstreamResponse<B> = Response<UpstreamBody<B>>;

/// Why one try on one address failed, with the request when it provably was never sent.
enum TryError<B> {
    /// The connection could not be opened; no upstream acted on the request (whole, or
    /// encoded by the codec for a pooled connection that then failed unsent).
    Connect(BoxError, Box<h1::Unsent<B>>),
    /// No pool to try, or an encoded request for hyper's client (neither reached: `send`
    /// checks there is a pool, and only the codec encodes before sending).
    NoPool,
    /// No response head within `response_timeout`.
    Timeout,
    /// The exchange failed after the client took the request.
    Protocol(ProtocolError),
}

// === impl ProtocolError ===

impl ProtocolError {
    /// The client's request body failed, not the upstream.
    pub fn is_user(&self) -> bool {
        match self {
            ProtocolError::Hyper(e) => e.is_user(),
            ProtocolError::Codec(e) => e.is_user(),
        }
    }
}

// === impl Upstream ===

impl<B: ClientBody> Upstream<B> {
    /// Builds the connector (loading the CA file or system roots once, at startup) and an
    /// empty connection pool for each of `workers` request workers.
    pub fn try_new(
        config: Arc<UpstreamConfig>,
        metrics: &Metrics,
        workers: usize,
    ) -> Result<Self, BuildError> {
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
        metrics.init_upstream(&config.name);
        let client = match config.client {
            UpstreamClient::Hyper => {
                let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
                Client::Hyper {
                    connector: builder.https_or_http().enable_http1().wrap_connector(http),
                    pools: per_worker(&config, workers),
                }
            }
            UpstreamClient::Codec => Client::Codec {
                connector: h1::Connector::new(tls, config.connect_timeout),
                pools: per_worker(&config, workers),
            },
        };
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            balancer: Balancer::new(&config.addresses, config.unhealthy_cooldown),
            client,
            hosts: config
                .addresses
                .iter()
                .map(|a| {
                    a.authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                })
                .collect(),
            request_bytes: metrics.bytes.with_label_values(&["request"]),
            metrics: metrics.clone(),
            config,
        })
    }

    /// Whether there is a pool (one per request worker; the first serves an index past them).
    fn has_pool(&self) -> bool {
        match &self.client {
            Client::Hyper { pools, .. } => !pools.is_empty(),
            Client::Codec { pools, .. } => !pools.is_empty(),
        }
    }

    /// Address `i` (as [`Upstream::send`] returns it).
    pub fn address(&self, i: usize) -> Option<&Uri> {
        self.balancer.get(i).map(|a| &a.uri)
    }

    /// Sends the request to one address, moving on to the next only after a connect failure,
    /// on request worker `worker`'s pooled connections. Returns the response and the index of
    /// the address that answered ([`Upstream::address`]; an index, so a request whose access
    /// line is off clones nothing).
    pub async fn send(
        &self,
        out: Outgoing,
        body: B,
        worker: usize,
    ) -> Result<(UpstreamResponse<B>, usize), UpstreamError> {
        if !self.has_pool() {
            return Err(UpstreamError::NoAddress {
                upstream: self.name.clone(),
            });
        }
        let mut req = build_request(
            out.method,
            out.path_and_query,
            out.headers,
            RequestBody::new(body, &self.request_bytes),
        );
        frame_unknown_length(&mut req);
        let progress = req.body().progress();
        let has_host = req.headers().contains_key(http::header::HOST);
        let mut req = h1::Unsent::Request(req);
        // On the stack for up to four addresses (no allocation per request).
        let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
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
            // The address's authority when asked for (`rewrite_host: upstream`), and for a
            // request that came without any Host (HTTP/1.0), as the pooled client did.
            if (out.host_from_upstream || !has_host)
                && let Some(Some(v)) = self.hosts.get(i)
            {
                req.set_host(v.clone());
            }
            match self
                .attempt(worker, i, &addr.uri, req, progress.as_deref())
                .await
            {
                Err(TryError::Timeout) => {
                    self.count_error("response_timeout");
                    return Err(UpstreamError::Timeout {
                        upstream: self.name.clone(),
                        timeout: self.config.response_timeout,
                    });
                }
                Ok(resp) => {
                    self.balancer.mark_up(i);
                    return Ok((resp, i));
                }
                Err(TryError::Connect(e, back)) => {
                    self.connect_failed(i, &addr.uri, &*e);
                    if tried.len() >= self.balancer.len() {
                        return Err(UpstreamError::Connect {
                            upstream: self.name.clone(),
                            source: e,
                        });
                    }
                    // No upstream acted on it: the next address gets it.
                    req = *back;
                }
                Err(TryError::NoPool) => {
                    return Err(UpstreamError::NoAddress {
                        upstream: self.name.clone(),
                    });
                }
                Err(TryError::Protocol(e)) => {
                    // A request body that failed on the client's side (a body-read timeout, a
                    // client gone mid-body) is not the upstream's failure.
                    if !e.is_user() {
                        self.count_error("protocol");
                    }
                    return Err(UpstreamError::Protocol {
                        upstream: self.name.clone(),
                        source: e,
                    });
                }
            }
        }
    }

    /// One try on address `i` with the upstream's client, on request worker `worker`'s pool,
    /// within `response_timeout` (`progress`: the request body's, when it has one). hyper's
    /// client runs under a tokio timer per request ([`within`]); the codec watches the
    /// deadline with its connection's lazy timer (`h1::timer`).
    async fn attempt(
        &self,
        worker: usize,
        i: usize,
        uri: &Uri,
        req: h1::Unsent<B>,
        progress: Option<&BodyProgress>,
    ) -> Result<UpstreamResponse<B>, TryError<B>> {
        let timeout = self.config.response_timeout;
        match &self.client {
            Client::Hyper { connector, pools } => {
                let Some(pool) = pools.get(worker).or_else(|| pools.first()) else {
                    return Err(TryError::NoPool);
                };
                // Only the codec encodes a request before it is sent.
                let h1::Unsent::Request(req) = req else {
                    return Err(TryError::NoPool);
                };
                let attempt = self.try_address(connector, pool, i, uri, req);
                let (resp, tx) = within(timeout, progress, attempt)
                    .await
                    .map_err(|_| TryError::Timeout)??;
                Ok(pooled(resp, pool, i, tx))
            }
            Client::Codec { connector, pools } => {
                let Some(pool) = pools.get(worker).or_else(|| pools.first()) else {
                    return Err(TryError::NoPool);
                };
                let deadline = h1::Deadline::new(timeout, progress);
                match h1::try_address(connector, pool, i, uri, req, &deadline).await {
                    Ok(resp) => Ok(resp.map(UpstreamBody::Codec)),
                    Err(h1::TryFailed::Timeout) => Err(TryError::Timeout),
                    Err(h1::TryFailed::Connect(e, back)) => Err(TryError::Connect(e, back)),
                    Err(h1::TryFailed::Protocol(e)) => {
                        Err(TryError::Protocol(ProtocolError::Codec(e)))
                    }
                }
            }
        }
    }

    /// One address with hyper's client: a pooled connection (the most recent that is still
    /// open), or a new one; if hyper gives the request back unsent because a pooled
    /// connection just closed, the next one (or a new one) gets it.
    async fn try_address(
        &self,
        connector: &HttpsConnector<HttpConnector>,
        pool: &WorkerPool<Sender<B>>,
        i: usize,
        uri: &Uri,
        mut req: Request<RequestBody<B>>,
    ) -> Result<(Response<Incoming>, Sender<B>), TryError<B>> {
        loop {
            let (mut tx, reused) = match pool.checkout(i) {
                Some(mut tx) => {
                    // Waits for the connection task to finish the previous exchange; an
                    // error means it closed meanwhile: try the next one.
                    if tx.ready().await.is_err() {
                        continue;
                    }
                    (tx, true)
                }
                // Boxed: the connect future (TCP, TLS, handshake) is large and only needed for
                // a new connection; inline, it would make every request's future that large.
                None => match Box::pin(Self::connect(connector, uri)).await {
                    Ok(tx) => (tx, false),
                    Err(e) => {
                        return Err(TryError::Connect(e, Box::new(h1::Unsent::Request(req))));
                    }
                },
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, tx)),
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(TryError::Protocol(ProtocolError::Hyper(e.into_error()))),
                },
            }
        }
    }

    /// Opens a connection (TCP, then TLS for `https`) and starts its task on this worker.
    async fn connect(
        connector: &HttpsConnector<HttpConnector>,
        uri: &Uri,
    ) -> Result<Sender<B>, BoxError> {
        use tower_service::Service;
        let mut connector = connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(uri.clone()).await?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Address `i` could not be connected to: marked down for a while, counted, logged.
    fn connect_failed(&self, i: usize, uri: &Uri, e: &(dyn std::error::Error + 'static)) {
        self.balancer.mark_down(i);
        self.count_error(if is_timeout(e) {
            "connect_timeout"
        } else {
            "connect"
        });
        tracing::warn!(upstream = %self.name, address = %uri, error = %error_chain(e), "upstream connect failed");
    }

    fn count_error(&self, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[&*self.name, kind])
            .inc();
    }
}

/// The upstream's response, its body returning the connection to `pool` at its end (an
/// upgraded connection is the tunnel's now: never pooled).
fn pooled<B: Send + 'static>(
    resp: Response<Incoming>,
    pool: &Arc<WorkerPool<Sender<B>>>,
    address: usize,
    tx: Sender<B>,
) -> UpstreamResponse<B> {
    let checkin = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| Checkin {
        pool: pool.clone(),
        address,
        tx,
    });
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, UpstreamBody::Hyper(PooledBody::new(body, checkin)))
}

/// An empty pool per request worker (at least one).
fn per_worker<T: pool::Poolable>(
    config: &UpstreamConfig,
    workers: usize,
) -> Box<[Arc<WorkerPool<T>>]> {
    (0..workers.max(1))
        .map(|_| {
            Arc::new(WorkerPool::new(
                config.addresses.len(),
                config.pool_idle_timeout,
                config.pool_max_idle,
            ))
        })
        .collect()
}

/// The request as the upstream gets it: origin-form target, HTTP/1.1.
fn build_request<B>(
    method: Method,
    pq: Option<PathAndQuery>,
    headers: HeaderMap,
    body: B,
) -> Request<B> {
    let uri = Uri::from(pq.unwrap_or_else(|| PathAndQuery::from_static("/")));
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// Says `Transfer-Encoding: chunked` for a body of unknown length (an HTTP/1 chunked body,
/// HTTP/2 DATA without `content-length`). hyper's HTTP/1 client would frame it itself for most
/// methods, but for GET, HEAD and CONNECT it assumes there is no body and sends none ("almost
/// never have bodies"): the upstream would get the request without what the client sent.
/// Every body is forwarded as received, whatever the method. A body of known length keeps
/// (or gets, from hyper) its `Content-Length`; an empty one gets neither.
fn frame_unknown_length<B: http_body::Body>(req: &mut Request<B>) {
    let body = req.body();
    if body.is_end_stream()
        || body.size_hint().exact().is_some()
        || req.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        return;
    }
    // Transfer-Encoding is hop-by-hop: the client's was removed, this one is the proxy's.
    req.headers_mut().insert(
        http::header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Runs `fut` within the upstream's `timeout`. Without a request body that is a plain timeout
/// from now; with one, the clock runs from the body's last piece and stands still while the
/// client owes the next one (a slow client is `server.body_read_timeout`'s to end, with 408,
/// not the upstream's fault), so it bounds both the upstream taking the body and its answer.
async fn within<F: Future>(
    timeout: Duration,
    progress: Option<&BodyProgress>,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeout, fut).await;
    };
    let mut fut = std::pin::pin!(fut);
    loop {
        let now = tokio::time::Instant::now();
        let deadline = progress.deadline(timeout).unwrap_or(now + timeout);
        match tokio::time::timeout_at(deadline, &mut fut).await {
            Ok(out) => return Ok(out),
            Err(elapsed) => {
                // Expired only if no piece moved meanwhile and the client owes nothing.
                if progress
                    .deadline(timeout)
                    .is_some_and(|d| d <= tokio::time::Instant::now())
                {
                    return Err(elapsed);
                }
            }
        }
    }
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
