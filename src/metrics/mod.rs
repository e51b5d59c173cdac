//! Every metric Portcullis exports, defined once and registered in one registry at startup.
//! `docs/METRICS.md` lists them for users; keep the two in step.
//!
//! Label values are bounded: route and upstream names come from the config, methods outside
//! the standard set become `OTHER`, statuses are reduced to their class.

use http::Method;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// `portcullis_connections_parked{listener}`
    pub connections_parked: IntGaugeVec,
    /// `portcullis_connections_rejected_total{listener}`
    pub connections_rejected: IntCounterVec,
    /// `portcullis_request_body_timeouts_total{route}`
    pub request_body_timeouts: IntCounterVec,
    /// `portcullis_external_auth_decisions_total{dialect,route,result}`
    pub external_auth_decisions: IntCounterVec,
    /// `portcullis_external_auth_decision_duration_seconds{dialect}`
    pub external_auth_decision_duration: HistogramVec,
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
    /// `portcullis_auth_results_total{route,issuer,result}`
    pub auth_results: IntCounterVec,
    /// `portcullis_authz_rule_results_total{route,rule,result}`
    pub authz_rule_results: IntCounterVec,
    /// `portcullis_token_cache_requests_total{result}` (hit, miss)
    pub token_cache: IntCounterVec,
    /// `portcullis_jwks_refreshes_total{issuer,result}`
    pub jwks_refreshes: IntCounterVec,
    /// `portcullis_jwks_forced_refreshes_total{issuer,result}`
    pub jwks_forced_refreshes: IntCounterVec,
    /// `portcullis_jwks_age_seconds{issuer}`
    pub jwks_age: GaugeVec,
    /// `portcullis_jwks_keys{issuer}`
    pub jwks_keys: IntGaugeVec,
    /// `portcullis_idp_request_duration_seconds{issuer,endpoint,outcome}`
    pub idp_request_duration: HistogramVec,
    /// `portcullis_idp_retries_total{issuer,endpoint}`
    pub idp_retries: IntCounterVec,
    /// `portcullis_idp_breaker_state{issuer}`
    pub idp_breaker_state: IntGaugeVec,
    /// `portcullis_state_loads_total{issuer,result}`
    pub state_loads: IntCounterVec,
    /// `portcullis_issuer_keys_usable{issuer}` (1 usable, 0 not: its routes answer 503)
    pub issuer_keys_usable: IntGaugeVec,
    /// `portcullis_token_requests_total{issuer,grant,result}`
    pub token_requests: IntCounterVec,
    /// `portcullis_assertions_signed_total`
    pub assertions_signed: prometheus::IntCounter,
    /// `portcullis_assertion_claims_dropped_total{claim}`
    pub assertion_claims_dropped: IntCounterVec,
    /// `portcullis_sessions_memory` (sessions held by the memory store)
    pub sessions_memory: IntGauge,
    /// `portcullis_session_store_operations_total{backend,op,result}`
    pub session_store_ops: IntCounterVec,
    /// `portcullis_session_store_duration_seconds{backend,op}`
    pub session_store_duration: HistogramVec,
    /// `portcullis_session_cache_requests_total{result}` (hit, miss: the L1 in front of Redis)
    pub session_l1: IntCounterVec,
    /// `portcullis_session_lock_contention_total{backend}`
    pub session_lock_contention: IntCounterVec,
    /// `portcullis_logins_total{issuer,result}` (started, completed, failed)
    pub logins: IntCounterVec,
    /// `portcullis_login_failures_total{issuer,reason}`
    pub login_failures: IntCounterVec,
    /// `portcullis_callback_errors_total{reason}` (callbacks refused before any token call)
    pub callback_errors: IntCounterVec,
    /// `portcullis_session_refreshes_total{issuer,result}` (ok, transient, definitive)
    pub session_refreshes: IntCounterVec,
    /// `portcullis_session_grace_requests_total{route}`
    pub session_grace_requests: IntCounterVec,
    /// `portcullis_logouts_total{kind}` (sign_out, backchannel)
    pub logouts: IntCounterVec,
    /// `portcullis_session_tunnels_closed_total{reason}` (upgraded connections closed because
    /// their session ended: sign_out, backchannel, expired, refresh_refused, replaced, revoked)
    pub session_tunnels_closed: IntCounterVec,
    /// `portcullis_tls_certificate_not_after_seconds{cert}` (Unix time the certificate in use
    /// expires, per listener certificate file)
    pub tls_cert_not_after: GaugeVec,
    /// `portcullis_session_notices_total{event}` (session-ended announcements between replicas
    /// over Redis pub/sub: published, publish_failed, received, malformed, resync)
    pub session_notices: IntCounterVec,
    /// `portcullis_session_notices_subscribed` (1 while this replica is subscribed to the
    /// announcements, 0 while it reconnects; absent with the memory store)
    pub session_notices_subscribed: IntGauge,
    /// `portcullis_admin_requests_total{endpoint,result}` (session administration calls on the
    /// admin listener: list, revoke; ok, unauthorized, bad_request, unavailable)
    pub admin_requests: IntCounterVec,
}

/// Every `reason` of `portcullis_login_failures_total`.
pub const LOGIN_FAILURE_REASONS: [&str; 5] = [
    "idp_error",
    "token_definitive",
    "token_transient",
    "id_token_invalid",
    "store_unavailable",
];

/// Every `reason` of `portcullis_callback_errors_total`.
pub const CALLBACK_ERROR_REASONS: [&str; 5] = [
    "no_login",
    "bad_state",
    "replayed_state",
    "expired_login",
    "malformed",
];

/// Every `kind` of `portcullis_upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 4] =
    ["connect", "connect_timeout", "response_timeout", "protocol"];

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
        let connections_parked = IntGaugeVec::new(
            Opts::new(
                "portcullis_connections_parked",
                "Client connections waiting for their next HTTP/1 request with no HTTP state or buffer held (parked), by listener.",
            ),
            &["listener"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "portcullis_connections_rejected_total",
                "Client connections closed at once because server.max_connections (admin.max_connections on the admin listener) was reached.",
            ),
            &["listener"],
        )?;
        let request_body_timeouts = IntCounterVec::new(
            Opts::new(
                "portcullis_request_body_timeouts_total",
                "Requests ended because the client sent no more of the request body within server.body_read_timeout, by route.",
            ),
            &["route"],
        )?;
        let external_auth_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_external_auth_decisions_total",
                "External authorization decisions, by dialect (nginx, forward_auth, envoy), route (empty when none matched) and result (allow, sign_in, unauthenticated, forbidden, unavailable, denied, no_route, bad_request, untrusted_peer).",
            ),
            &["dialect", "route", "result"],
        )?;
        let external_auth_decision_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_external_auth_decision_duration_seconds",
                "Time to decide one external authorization request, by dialect.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["dialect"],
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
        let auth_results = IntCounterVec::new(
            Opts::new(
                "portcullis_auth_results_total",
                "Authentication outcomes by route, issuer and result (ok, forbidden, or the reason a token was refused).",
            ),
            &["route", "issuer", "result"],
        )?;
        let authz_rule_results = IntCounterVec::new(
            Opts::new(
                "portcullis_authz_rule_results_total",
                "CEL authorize rules (allow_if, deny_if) by route, rule and result: allow, deny, error; shadow rules as shadow_allow, shadow_deny (would deny), shadow_error.",
            ),
            &["route", "rule", "result"],
        )?;
        let token_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_token_cache_requests_total",
                "Verified-token cache lookups by result (hit, miss).",
            ),
            &["result"],
        )?;
        let jwks_refreshes = IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_refreshes_total",
                "JWKS refreshes (scheduled and forced) by issuer and result (success, failure).",
            ),
            &["issuer", "result"],
        )?;
        let jwks_forced_refreshes = IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_forced_refreshes_total",
                "Refreshes triggered by an unknown kid, by issuer and result (fetched, failed, cooldown = refused by the rate limit).",
            ),
            &["issuer", "result"],
        )?;
        let jwks_age = GaugeVec::new(
            Opts::new(
                "portcullis_jwks_age_seconds",
                "Seconds since the keys in use were fetched (the last good refresh); -1 when there are none.",
            ),
            &["issuer"],
        )?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new("portcullis_jwks_keys", "Signing keys loaded, by issuer."),
            &["issuer"],
        )?;
        let idp_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_idp_request_duration_seconds",
                "IdP calls (one per attempt) by issuer, endpoint (discovery, jwks, token) and outcome (2xx, 4xx, 5xx, timeout, error, breaker_open).",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["issuer", "endpoint", "outcome"],
        )?;
        let idp_retries = IntCounterVec::new(
            Opts::new(
                "portcullis_idp_retries_total",
                "IdP call retries by issuer and endpoint.",
            ),
            &["issuer", "endpoint"],
        )?;
        let idp_breaker_state = IntGaugeVec::new(
            Opts::new(
                "portcullis_idp_breaker_state",
                "Circuit breaker per issuer: 0 closed, 1 open, 2 half-open.",
            ),
            &["issuer"],
        )?;
        let state_loads = IntCounterVec::new(
            Opts::new(
                "portcullis_state_loads_total",
                "Loads of persisted last-known-good IdP state at start, by issuer and result (success, failure).",
            ),
            &["issuer", "result"],
        )?;
        let issuer_keys_usable = IntGaugeVec::new(
            Opts::new(
                "portcullis_issuer_keys_usable",
                "1 when the issuer has usable signing keys (fetched or persisted, not older than max_stale); 0 when its tokens get 503.",
            ),
            &["issuer"],
        )?;
        let assertions_signed = prometheus::IntCounter::new(
            "portcullis_assertions_signed_total",
            "Identity assertions signed (a new one per identity and audience, then again once half its lifetime has passed); the requests between them reuse it.",
        )?;
        let assertion_claims_dropped = IntCounterVec::new(
            Opts::new(
                "portcullis_assertion_claims_dropped_total",
                "Optional claims left out of a signed assertion because they did not fit auth.assertion.max_bytes, by claim.",
            ),
            &["claim"],
        )?;
        let token_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_token_requests_total",
                "Token endpoint calls (after retries) by issuer, grant (authorization_code, refresh_token) and result (ok, definitive, transient).",
            ),
            &["issuer", "grant", "result"],
        )?;
        let sessions_memory = IntGauge::new(
            "portcullis_sessions_memory",
            "Sessions held by the memory session store.",
        )?;
        let session_store_ops = IntCounterVec::new(
            Opts::new(
                "portcullis_session_store_operations_total",
                "Session store operations by backend (memory, redis), op (get, get_fresh, put, replace, delete, touch, delete_by_sid, delete_by_sub, delete_hashed, list, lock, unlock, mark_used) and result (ok, miss, busy, replay, error, timeout).",
            ),
            &["backend", "op", "result"],
        )?;
        let session_store_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_session_store_duration_seconds",
                "Session store operation latency by backend and op (L1 hits included).",
            )
            .buckets(vec![
                0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0,
            ]),
            &["backend", "op"],
        )?;
        let session_l1 = IntCounterVec::new(
            Opts::new(
                "portcullis_session_cache_requests_total",
                "Lookups in the in-process cache in front of the Redis session store, by result (hit, miss).",
            ),
            &["result"],
        )?;
        let session_lock_contention = IntCounterVec::new(
            Opts::new(
                "portcullis_session_lock_contention_total",
                "Refresh-lock attempts that found the lock held by another task or replica, by backend.",
            ),
            &["backend"],
        )?;
        let logins = IntCounterVec::new(
            Opts::new(
                "portcullis_logins_total",
                "Browser sign-ins by issuer and result (started: sent to the IdP, completed: session created, failed: see portcullis_login_failures_total).",
            ),
            &["issuer", "result"],
        )?;
        let login_failures = IntCounterVec::new(
            Opts::new(
                "portcullis_login_failures_total",
                "Sign-ins that failed at the callback, by issuer and reason (idp_error, token_definitive, token_transient, id_token_invalid, store_unavailable).",
            ),
            &["issuer", "reason"],
        )?;
        let callback_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_callback_errors_total",
                "Callbacks refused before any token endpoint call, by reason (no_login, bad_state, replayed_state, expired_login, malformed).",
            ),
            &["reason"],
        )?;
        let session_refreshes = IntCounterVec::new(
            Opts::new(
                "portcullis_session_refreshes_total",
                "Session access-token refreshes by issuer and result (ok, transient: kept in grace and retried, definitive: session ended).",
            ),
            &["issuer", "result"],
        )?;
        let session_grace_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_session_grace_requests_total",
                "Requests served on a session whose access token expired while its refresh fails transiently (outage grace), by route.",
            ),
            &["route"],
        )?;
        let logouts = IntCounterVec::new(
            Opts::new(
                "portcullis_logouts_total",
                "Logouts by kind (sign_out: the browser asked; backchannel: the IdP sent a logout token).",
            ),
            &["kind"],
        )?;
        let session_tunnels_closed = IntCounterVec::new(
            Opts::new(
                "portcullis_session_tunnels_closed_total",
                "Upgraded connections (WebSocket tunnels) closed because their session ended, by reason (sign_out, backchannel, expired, refresh_refused, replaced, revoked).",
            ),
            &["reason"],
        )?;
        let session_notices = IntCounterVec::new(
            Opts::new(
                "portcullis_session_notices_total",
                "Session-ended announcements between replicas over Redis pub/sub, by event (published, publish_failed, received, malformed, resync).",
            ),
            &["event"],
        )?;
        let session_notices_subscribed = IntGauge::new(
            "portcullis_session_notices_subscribed",
            "1 while this replica is subscribed to the session-ended announcements (Redis store), 0 while it reconnects.",
        )?;
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_admin_requests_total",
                "Session administration calls on the admin listener, by endpoint (list, revoke) and result (ok, unauthorized, bad_request, unavailable).",
            ),
            &["endpoint", "result"],
        )?;
        let tls_cert_not_after = GaugeVec::new(
            Opts::new(
                "portcullis_tls_certificate_not_after_seconds",
                "Unix time at which the leaf certificate in use expires (its notAfter), by certificate file.",
            ),
            &["cert"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_parked.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(request_body_timeouts.clone()))?;
        registry.register(Box::new(external_auth_decisions.clone()))?;
        registry.register(Box::new(external_auth_decision_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(auth_results.clone()))?;
        registry.register(Box::new(authz_rule_results.clone()))?;
        registry.register(Box::new(token_cache.clone()))?;
        registry.register(Box::new(jwks_refreshes.clone()))?;
        registry.register(Box::new(jwks_forced_refreshes.clone()))?;
        registry.register(Box::new(jwks_age.clone()))?;
        registry.register(Box::new(jwks_keys.clone()))?;
        registry.register(Box::new(idp_request_duration.clone()))?;
        registry.register(Box::new(idp_retries.clone()))?;
        registry.register(Box::new(idp_breaker_state.clone()))?;
        registry.register(Box::new(state_loads.clone()))?;
        registry.register(Box::new(issuer_keys_usable.clone()))?;
        registry.register(Box::new(token_requests.clone()))?;
        registry.register(Box::new(assertions_signed.clone()))?;
        registry.register(Box::new(assertion_claims_dropped.clone()))?;
        registry.register(Box::new(sessions_memory.clone()))?;
        registry.register(Box::new(session_store_ops.clone()))?;
        registry.register(Box::new(session_store_duration.clone()))?;
        registry.register(Box::new(session_l1.clone()))?;
        registry.register(Box::new(session_lock_contention.clone()))?;
        registry.register(Box::new(logins.clone()))?;
        registry.register(Box::new(login_failures.clone()))?;
        registry.register(Box::new(callback_errors.clone()))?;
        registry.register(Box::new(session_refreshes.clone()))?;
        registry.register(Box::new(session_grace_requests.clone()))?;
        registry.register(Box::new(logouts.clone()))?;
        registry.register(Box::new(session_tunnels_closed.clone()))?;
        registry.register(Box::new(tls_cert_not_after.clone()))?;
        registry.register(Box::new(session_notices.clone()))?;
        registry.register(Box::new(session_notices_subscribed.clone()))?;
        registry.register(Box::new(admin_requests.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            in_flight,
            connections_open,
            connections_parked,
            connections_rejected,
            request_body_timeouts,
            external_auth_decisions,
            external_auth_decision_duration,
            upstream_errors,
            tls_handshake_failures,
            reloads,
            bytes,
            build_info,
            auth_results,
            authz_rule_results,
            token_cache,
            jwks_refreshes,
            jwks_forced_refreshes,
            jwks_age,
            jwks_keys,
            idp_request_duration,
            idp_retries,
            idp_breaker_state,
            state_loads,
            issuer_keys_usable,
            token_requests,
            assertions_signed,
            assertion_claims_dropped,
            sessions_memory,
            session_store_ops,
            session_store_duration,
            session_l1,
            session_lock_contention,
            logins,
            login_failures,
            callback_errors,
            session_refreshes,
            session_grace_requests,
            logouts,
            session_tunnels_closed,
            tls_cert_not_after,
            session_notices,
            session_notices_subscribed,
            admin_requests,
        }
        .with_fixed_series())
    }

    /// Creates, at 0, the series whose labels are known at start.
    fn with_fixed_series(self) -> Self {
        for kind in ["config", "certificate"] {
            for result in ["success", "failure"] {
                self.reloads.with_label_values(&[kind, result]);
            }
        }
        for result in ["hit", "miss"] {
            self.token_cache.with_label_values(&[result]);
        }
        for reason in CALLBACK_ERROR_REASONS {
            self.callback_errors.with_label_values(&[reason]);
        }
        for kind in ["sign_out", "backchannel"] {
            self.logouts.with_label_values(&[kind]);
        }
        self
    }

    /// Creates, at 0, the browser sign-in series of an issuer with a `client_id`.
    pub fn init_session_issuer(&self, issuer: &str) {
        for result in ["started", "completed", "failed"] {
            self.logins.with_label_values(&[issuer, result]);
        }
        for reason in LOGIN_FAILURE_REASONS {
            self.login_failures.with_label_values(&[issuer, reason]);
        }
        for result in ["ok", "transient", "definitive"] {
            self.session_refreshes.with_label_values(&[issuer, result]);
        }
    }

    /// Creates, at 0, the series of a listener, so rates and alerts see them before the first
    /// event (and a test that expects 0 can tell 0 from a renamed series).
    pub fn init_listener(&self, listener: &str, tls: bool) {
        self.connections_rejected.with_label_values(&[listener]);
        if tls {
            for reason in ["error", "timeout"] {
                self.tls_handshake_failures
                    .with_label_values(&[listener, reason]);
            }
        }
    }

    /// Creates, at 0, the series of an upstream.
    pub fn init_upstream(&self, upstream: &str) {
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream_errors.with_label_values(&[upstream, kind]);
        }
    }

    /// Creates, at 0, the series of an issuer.
    pub fn init_issuer(&self, issuer: &str) {
        for result in ["success", "failure"] {
            self.jwks_refreshes.with_label_values(&[issuer, result]);
            self.state_loads.with_label_values(&[issuer, result]);
        }
        for result in ["fetched", "failed", "cooldown", "joined"] {
            self.jwks_forced_refreshes
                .with_label_values(&[issuer, result]);
        }
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
