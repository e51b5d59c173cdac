//! The IdP client: the only code that talks to an identity provider.
//!
//! Every call has a timeout, bounded retries with exponential backoff and full jitter, honours
//! `Retry-After` on 429 and 503 (seconds or HTTP-date), and goes through a circuit breaker per
//! issuer so an outage does not turn into a retry storm. Responses are size-limited.
//!
//! Security notes: IdP URLs are https (plain http only on loopback, checked in config). TLS is
//! verified against the system roots or the issuer's `ca_file`. Request and response bodies
//! (which carry codes and tokens for the token endpoint) are never logged.

pub mod breaker;
pub mod retry;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use breaker::{Breaker, BreakerState};
pub use retry::Backoff;
pub use token::TokenRetry;

use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// How an issuer's IdP is called.
#[derive(Debug, Clone, PartialEq)]
pub struct IdpSettings {
    /// Time allowed for one attempt (connect + response + body).
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// A `Retry-After` longer than this ends the call instead of waiting.
    pub max_retry_after: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_open_for: Duration,
    /// Largest response body accepted.
    pub max_body_bytes: usize,
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body.
    pub body: Bytes,
    /// `Cache-Control: max-age`, when given.
    pub max_age: Option<Duration>,
}

/// Why an IdP call failed.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The breaker is open: the call was not made.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// An attempt took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed or broke.
    #[error("network error")]
    Network(#[source] hyper_util::client::legacy::Error),
    /// The body could not be read or was too large.
    #[error("response body unusable")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The IdP answered 429 or 503 with a `Retry-After` longer than we wait in one call.
    #[error("rate limited (status {status}); retry after {retry_after:?}")]
    RetryAfter {
        status: StatusCode,
        retry_after: Duration,
    },
    /// Any other non-2xx status.
    #[error("status {status}")]
    Status { status: StatusCode, body: Bytes },
    /// The request could not be built.
    #[error("bad request URI")]
    Request(#[source] http::Error),
}

/// The client for one issuer.
pub struct IdpClient {
    issuer: Arc<str>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    settings: IdpSettings,
    breaker: Breaker,
    clock: SharedClock,
    metrics: Metrics,
    /// No call before this: the end of the last `Retry-After` (at most `max_retry_after`
    /// ahead), with the status that asked for it. Holds across calls, so a later call (another
    /// endpoint, a forced refresh) does not go out sooner than the IdP asked.
    not_before: std::sync::Mutex<Option<(tokio::time::Instant, StatusCode)>>,
}

// === impl IdpError ===

impl IdpError {
    /// Whether trying again may help (network, timeout, 429, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Network(_) | Self::Body(_) | Self::RetryAfter { .. } => true,
            Self::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            Self::BreakerOpen | Self::Request(_) => false,
        }
    }

    /// The `Retry-After` the IdP asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RetryAfter { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker_open",
            Self::Timeout(_) => "timeout",
            Self::Network(_) | Self::Body(_) | Self::Request(_) => "error",
            Self::RetryAfter { status, .. } | Self::Status { status, .. } => {
                crate::metrics::status_class(status.as_u16())
            }
        }
    }
}

// === impl IdpClient ===

impl IdpClient {
    /// A client for issuer `issuer` (metric label) using `tls` for https.
    pub fn new(
        issuer: &str,
        tls: rustls::ClientConfig,
        settings: IdpSettings,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let breaker = Breaker::new(
            settings.breaker_threshold,
            settings.breaker_open_for,
            clock.clone(),
        );
        let this = Self {
            issuer: Arc::from(issuer),
            http,
            settings,
            breaker,
            clock,
            metrics,
            not_before: std::sync::Mutex::new(None),
        };
        this.publish_breaker();
        this
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// GET `uri` (`endpoint` names it in metrics: discovery, jwks, ...).
    pub async fn get(&self, uri: &Uri, endpoint: &'static str) -> Result<Fetched, IdpError> {
        self.call(endpoint, TokenRetry::Full, || {
            Request::builder()
                .method(Method::GET)
                .uri(uri.clone())
                .header(http::header::ACCEPT, "application/json")
                .body(Full::default())
        })
        .await
    }

    /// One IdP call with this client's timeout, breaker and `Retry-After` handling; failures
    /// are retried (with backoff, within the budget) as far as `retry` allows.
    async fn call(
        &self,
        endpoint: &'static str,
        retry: TokenRetry,
        make: impl Fn() -> Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Fetched, IdpError> {
        let mut attempt: u32 = 0;
        loop {
            if let Some(err) = self.before_retry_after() {
                return Err(err);
            }
            // The permit reports this attempt's outcome; if this future is dropped mid-call
            // while it is the half-open probe, dropping the permit counts it as failed (and
            // `_publish`, dropped after it, updates the state gauge).
            let _publish = PublishOnDrop(self);
            let Some(permit) = self.breaker.allow() else {
                self.observe(endpoint, "breaker_open", Duration::ZERO);
                return Err(IdpError::BreakerOpen);
            };
            self.publish_breaker();
            let started = self.clock.now();
            let result = match make() {
                Ok(req) => self.once(req).await,
                Err(e) => Err(IdpError::Request(e)),
            };
            let elapsed = self.clock.now().saturating_duration_since(started);
            let err = match result {
                Ok(f) => {
                    self.observe(endpoint, "2xx", elapsed);
                    permit.record(true);
                    self.publish_breaker();
                    return Ok(f);
                }
                Err(e) => e,
            };
            self.observe(endpoint, err.outcome(), elapsed);
            if let IdpError::RetryAfter {
                status,
                retry_after,
            } = &err
            {
                let until = self.clock.now() + (*retry_after).min(self.settings.max_retry_after);
                *self
                    .not_before
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((until, *status));
            }
            // Only unavailability counts against the breaker; a 4xx means the IdP is up.
            permit.record(!err.is_retryable());
            self.publish_breaker();
            if !retry.allows(&err) || attempt >= self.settings.retries {
                return Err(err);
            }
            let mut delay = self.settings.backoff.delay(attempt);
            if let Some(ra) = err.retry_after() {
                if ra > self.settings.max_retry_after {
                    return Err(err);
                }
                delay = delay.max(ra);
            }
            tracing::debug!(issuer = %self.issuer, endpoint, error = %err, ?delay, "IdP call failed; retrying");
            self.metrics
                .idp_retries
                .with_label_values(&[&*self.issuer, endpoint])
                .inc();
            self.clock.sleep(delay).await;
            attempt += 1;
        }
    }

    /// The error for a call made before the last `Retry-After` is over (no request is sent).
    fn before_retry_after(&self) -> Option<IdpError> {
        let guard = self
            .not_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (until, status) = (*guard)?;
        let left = until.saturating_duration_since(self.clock.now());
        (!left.is_zero()).then_some(IdpError::RetryAfter {
            status,
            retry_after: left,
        })
    }

    async fn once(&self, req: Request<Full<Bytes>>) -> Result<Fetched, IdpError> {
        let timeout = self.settings.timeout;
        let fut = async {
            let resp = self.http.request(req).await.map_err(IdpError::Network)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), self.settings.max_body_bytes)
                .collect()
                .await
                .map_err(IdpError::Body)?
                .to_bytes();
            Ok::<_, IdpError>((status, headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| IdpError::Timeout(timeout))??;
        if status.is_success() {
            return Ok(Fetched {
                body,
                max_age: max_age(&headers),
            });
        }
        if (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
            && let Some(retry_after) = retry::retry_after(&headers, self.clock.wall())
        {
            return Err(IdpError::RetryAfter {
                status,
                retry_after,
            });
        }
        Err(IdpError::Status { status, body })
    }

    fn observe(&self, endpoint: &'static str, outcome: &str, elapsed: Duration) {
        self.metrics
            .idp_request_duration
            .with_label_values(&[&*self.issuer, endpoint, outcome])
            .observe(elapsed.as_secs_f64());
    }

    fn publish_breaker(&self) {
        self.metrics
            .idp_breaker_state
            .with_label_values(&[&*self.issuer])
            .set(self.breaker.state() as i64);
    }
}

/// Publishes the breaker state when dropped, also when the call's future is.
struct PublishOnDrop<'a>(&'a IdpClient);

impl Drop for PublishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.publish_breaker();
    }
}

/// `Cache-Control: max-age=N` (ignoring `no-store`/`no-cache`, which mean "use the minimum").
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for d in v.split(',').map(str::trim) {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d
            .strip_prefix("max-age=")
            .or_else(|| d.strip_prefix("s-maxage="))
        {
            age = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs)
                .or(age);
        }
    }
    age
}
