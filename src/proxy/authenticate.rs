//! The authentication step of the request path: given the matched route and the request
//! head, decide whether the request goes on to the upstream (and as whom), or is answered here.
//!
//! The outcome is richer than "allowed or error" because browser sessions need it to be: a
//! sign-in redirect with a `Set-Cookie` is an answer, not an error ([`Outcome::Respond`]), and
//! a refreshed session cookie rides on the upstream's response
//! ([`Forwarding::response_headers`]). Refusals are `ProxyError`s and become responses in
//! `crate::error`, like every other error (a sign-in that cannot start is one too).
//!
//! Security notes: the step runs after the client's copies of owned identity headers were
//! stripped, and the identity it returns is the only source of identity headers.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Response, request};
use prometheus::IntCounter;

use crate::authn::browser::{Browser, Lookup, Origin, SignInError, SignInFailure};
use crate::authn::oidc::RedirectPolicy;
use crate::authn::oidc::navigation::{Navigation, is_navigation};
use crate::authn::{Authenticator, AuthnError, Identity};
use super::authorize::{RequestView, RuleSeries, authorize};
use crate::body::ProxyBody;
use crate::config::AuthMode;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::routing::Route;
use crate::session::Session;

/// What the authentication step decided.
pub enum Outcome {
    /// Go on to the upstream.
    Forward(Forwarding),
    /// Answer the client with this response (a sign-in redirect, a page); nothing is forwarded.
    Respond(Response<ProxyBody>),
}

/// How a request that may go on is forwarded.
#[derive(Debug, Default)]
pub struct Forwarding {
    /// Who the caller is; `None` on routes without authentication.
    pub identity: Option<Arc<Identity>>,
    /// Remove the client's `Authorization` before forwarding.
    pub strip_authorization: bool,
    /// Headers added to the upstream's response (e.g. a refreshed session cookie).
    pub response_headers: HeaderMap,
    /// `Authorization` to send upstream instead of the client's (a session's access token,
    /// on routes with `forward_access_token`).
    pub authorization: Option<HeaderValue>,
    /// Served in outage grace: mark the request with `sessions.degraded_header`.
    pub degraded: bool,
    /// The session the request was authenticated by (an upgraded connection is registered
    /// under it, and closed when it ends).
    pub session: Option<Arc<Session>>,
    /// External authorization: the `aud` of the assertion the allow carries (the proxy path
    /// passes it along without keeping it here).
    pub audience: Option<Arc<str>>,
}

/// Runs authentication and authorization for a route.
pub struct AuthnStep {
    auth: Arc<Authenticator>,
    browser: Option<Arc<Browser>>,
    metrics: Metrics,
    /// Issuer names by index, for metric labels.
    issuer_names: Vec<Arc<str>>,
    /// By route index (`routing::Route::index`), for routes limited to one issuer: that
    /// issuer's name and the route's `{route, issuer, ok}` series, resolved once.
    ok: Vec<Option<(Arc<str>, IntCounter)>>,
    /// Which return targets a sign-in keeps (`auth.allowed_redirect_domains`).
    redirects: RedirectPolicy,
    /// `portcullis_authz_rule_results_total` per route and CEL rule.
    rules: RuleSeries,
}

// === impl AuthnStep ===

impl AuthnStep {
    /// A step over `auth`; `issuer_names` label metrics by the index routes use. `routes`
    /// are the configured routes' names and issuer indexes, in configuration order.
    pub fn new<'a>(
        auth: Arc<Authenticator>,
        metrics: Metrics,
        issuer_names: Vec<Arc<str>>,
        routes: impl Iterator<Item = (&'a str, Option<usize>)>,
    ) -> Self {
        let ok = routes
            .map(|(route, issuer)| {
                let name = issuer_names.get(issuer?)?.clone();
                let counter = metrics
                    .auth_results
                    .with_label_values(&[route, &*name, "ok"]);
                Some((name, counter))
            })
            .collect();
        Self {
            auth,
            browser: None,
            metrics,
            issuer_names,
            ok,
            redirects: RedirectPolicy::default(),
            rules: RuleSeries::default(),
        }
    }

    /// Resolves the CEL rule series of `routes` (names and policies, configuration order).
    pub fn with_rules<'a>(
        mut self,
        routes: impl Iterator<Item = (&'a str, &'a crate::authz::Policy)>,
    ) -> Self {
        self.rules = RuleSeries::new(&self.metrics, routes);
        self
    }

    /// Unix seconds on the verifier's clock (`now` in CEL rules).
    fn unix_now(&self) -> i64 {
        self.auth
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    /// Sets which return targets a sign-in keeps (same-origin paths only by default).
    pub fn with_redirects(mut self, redirects: RedirectPolicy) -> Self {
        self.redirects = redirects;
        self
    }

    /// Seconds left before a bearer identity's `exp`, as the token verifier's clock reads
    /// it (0 when past or missing).
    pub fn lifetime_left(&self, identity: &Identity) -> u64 {
        let now = self
            .auth
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        identity.expires.map_or(0, |exp| exp.saturating_sub(now))
    }

    /// Which return targets a sign-in keeps; also where own paths may send the browser.
    pub fn redirects(&self) -> &RedirectPolicy {
        &self.redirects
    }

    /// Adds browser sessions (for `session` and `either` routes).
    pub fn with_browser(mut self, browser: Option<Arc<Browser>>) -> Self {
        self.browser = browser;
        self
    }

    /// Authenticates and authorizes the request for `route`. The view's target (its path
    /// and query) and `origin` are where a sign-in comes back to.
    pub async fn run(
        &self,
        route: &Route,
        head: &request::Parts,
        view: &RequestView<'_>,
        origin: &Origin,
    ) -> Result<Outcome, ProxyError> {
        match route.auth {
            AuthMode::None => Ok(Outcome::Forward(Forwarding::default())),
            AuthMode::Either if head.headers.contains_key(AUTHORIZATION) => {
                self.bearer_forward(route, head, view).await
            }
            AuthMode::Bearer => self.bearer_forward(route, head, view).await,
            AuthMode::Session | AuthMode::Either => self.session(route, head, view, origin).await,
        }
    }

    async fn bearer_forward(
        &self,
        route: &Route,
        head: &request::Parts,
        view: &RequestView<'_>,
    ) -> Result<Outcome, ProxyError> {
        let identity = self.bearer(route, head, view).await?;
        Ok(Outcome::Forward(Forwarding {
            identity: Some(identity),
            strip_authorization: !route.forward_authorization,
            ..Forwarding::default()
        }))
    }

    /// A session route: the session's identity, or sign in (302 for a browser navigation,
    /// 401 otherwise) and come `back` to this path and query on this origin.
    async fn session(
        &self,
        route: &Route,
        head: &request::Parts,
        view: &RequestView<'_>,
        origin: &Origin,
    ) -> Result<Outcome, ProxyError> {
        let return_to = view.target.path_and_query().as_str();
        let issuer_name = route
            .issuer
            .and_then(|i| self.issuer_names.get(i))
            .map_or("any", |n| &**n);
        let (Some(browser), Some(slot)) = (&self.browser, route.issuer) else {
            self.count(route, issuer_name, "store_unavailable");
            return Err(ProxyError::SessionStore);
        };
        let navigation = is_navigation(&head.method, &head.headers) == Navigation::Browser;
        match browser
            .lookup(slot, issuer_name, &head.headers, &route.name)
            .await
        {
            Lookup::Found(found) => {
                if let Some(max) = route.max_auth_age
                    && browser.signed_in_before(&found.session, max)
                {
                    self.count(route, issuer_name, "auth_too_old");
                    return self.step_up(browser, slot, head, (return_to, origin), navigation, max);
                }
                let now = || self.unix_now();
                if let Err(e) = authorize(&self.rules, route, &found.identity, head, view, now) {
                    self.count(route, issuer_name, "forbidden");
                    return Err(e);
                }
                self.count(
                    route,
                    issuer_name,
                    if found.degraded { "ok_grace" } else { "ok" },
                );
                let authorization = if route.forward_access_token {
                    HeaderValue::try_from(format!(
                        "Bearer {}",
                        found.session.tokens.access.expose()
                    ))
                    .ok()
                } else {
                    None
                };
                Ok(Outcome::Forward(Forwarding {
                    identity: Some(found.identity),
                    // The client's own Authorization is not checked on a session route: it
                    // never reaches the upstream as if it were.
                    strip_authorization: true,
                    authorization,
                    degraded: found.degraded,
                    response_headers: HeaderMap::new(),
                    session: Some(found.session),
                    audience: None,
                }))
            }
            Lookup::Missing => {
                self.count(route, issuer_name, "no_session");
                if navigation {
                    Ok(Outcome::Respond(
                        browser.start_login(
                            slot,
                            head,
                            return_to,
                            origin,
                            &self.redirects,
                            route.max_auth_age,
                        )?,
                    ))
                } else {
                    Err(ProxyError::Unauthenticated(AuthnError::Missing))
                }
            }
            Lookup::Unavailable(e) => {
                tracing::warn!(error = %e, "session lookup failed");
                self.count(route, issuer_name, "store_unavailable");
                if navigation {
                    Err(SignInError::at(SignInFailure::StoreUnavailable, return_to).into())
                } else {
                    Err(ProxyError::SessionStore)
                }
            }
        }
    }

    /// A sign-in older than the route's `max_auth_age`: a navigation signs in again, asking
    /// the IdP for an authentication at most `max` old; anything else gets 401.
    fn step_up(
        &self,
        browser: &Browser,
        slot: usize,
        head: &request::Parts,
        back: (&str, &Origin),
        navigation: bool,
        max: std::time::Duration,
    ) -> Result<Outcome, ProxyError> {
        if !navigation {
            return Err(ProxyError::Unauthenticated(AuthnError::Missing));
        }
        let (return_to, origin) = back;
        let login = browser.start_login(slot, head, return_to, origin, &self.redirects, Some(max));
        Ok(Outcome::Respond(login?))
    }

    /// Checks the bearer token, then the route's rules; counts the result.
    async fn bearer(
        &self,
        route: &Route,
        head: &request::Parts,
        view: &RequestView<'_>,
    ) -> Result<Arc<Identity>, ProxyError> {
        let identity = match self.auth.authenticate(&head.headers, route.issuer).await {
            Ok(id) => id,
            Err(e) => {
                // A refused token's issuer is unverified: label it with the route's issuer.
                let issuer = route
                    .issuer
                    .and_then(|i| self.issuer_names.get(i))
                    .map_or("any", |n| &**n);
                self.count(route, issuer, e.reason());
                return Err(e.into());
            }
        };
        if let Err(e) = authorize(&self.rules, route, &identity, head, view, || self.unix_now()) {
            self.count(route, &identity.issuer, "forbidden");
            return Err(e);
        }
        self.count(route, &identity.issuer, "ok");
        Ok(identity)
    }

    fn count(&self, route: &Route, issuer: &str, result: &str) {
        if result == "ok"
            && let Some(Some((name, counter))) = self.ok.get(route.index)
            && **name == *issuer
        {
            counter.inc();
            return;
        }
        self.metrics
            .auth_results
            .with_label_values(&[&*route.name, issuer, result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::authn::browser::Origin;
    use crate::clock::{SharedClock, TokioClock};
    use crate::config::Config;
    use crate::routing::Router;

    const SECRET: &str = "a-shared-secret-for-the-authentication-step-tests";

    fn now_unix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    struct Fixture {
        router: Router,
        step: AuthnStep,
        metrics: Metrics,
    }

    fn fixture() -> Fixture {
        let dir = std::env::temp_dir().join("portcullis-authenticate-unit");
        let yaml = format!(
            "listeners:\n  plain: {{ address: \"127.0.0.1:0\" }}\n\
             upstreams:\n  open: {{ addresses: [\"http://127.0.0.1:9\"] }}\n  \
             api: {{ addresses: [\"http://127.0.0.1:10\"] }}\n\
             routes:\n  - {{ name: open, path: /open, upstream: open }}\n  \
             - {{ name: api, path: /api, upstream: api, auth: bearer, issuer: corp, \
             forward_authorization: false, authorize: {{ scopes: [read] }} }}\n  \
             - {{ name: app, path: /app, upstream: api, auth: session, issuer: corp }}\n\
             state_dir: \"{}\"\n\
             issuers:\n  corp:\n    issuer: \"https://corp\"\n    audiences: [api]\n    \
             algorithms: [HS256]\n    shared_secret: \"{SECRET}\"\n    client_id: web\n    \
             client_secret: \"a-client-secret\"\n",
            dir.display()
        );
        let config = Config::from_yaml(&yaml, []).unwrap_or_else(|e| panic!("{e}"));
        let metrics = Metrics::try_new().unwrap_or_else(|e| panic!("{e}"));
        let clock: SharedClock = Arc::new(TokioClock);
        let auth = Arc::new(
            Authenticator::try_new(&config, metrics.clone(), clock)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let step = AuthnStep::new(
            auth.clone(),
            metrics.clone(),
            auth.slot_names(),
            config.routes.iter().map(|r| (r.name.as_str(), r.issuer)),
        );
        Fixture {
            router: Router::new(&config.routes),
            step,
            metrics,
        }
    }

    fn head(path: &str, token_scope: Option<&str>) -> request::Parts {
        let mut req = Request::get(path).body(()).unwrap_or_else(|e| panic!("{e}"));
        if let Some(scope) = token_scope {
            let claims = json!({
                "iss": "https://corp", "aud": "api", "sub": "alice", "scope": scope,
                "exp": now_unix() + 600,
            });
            let t = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            req.headers_mut().insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        req.into_parts().0
    }

    async fn run(f: &Fixture, path: &str, scope: Option<&str>) -> Result<Outcome, ProxyError> {
        let route = f
            .router
            .find("example.com", path, &Method::GET)
            .unwrap_or_else(|_| panic!("a route for {path}"))
            .clone();
        let origin = Origin {
            scheme: "https",
            authority: HeaderValue::from_static("example.com"),
        };
        let mut head = head(path, scope);
        head.headers
            .insert(http::header::HOST, HeaderValue::from_static("example.com"));
        let target = crate::routing::target::canonicalize(&mut head, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let id = HeaderValue::from_static("test-id");
        let view = RequestView {
            target: &target,
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            request_id: &id,
        };
        f.step.run(&route, &head, &view, &origin).await
    }

    fn counted(f: &Fixture, route: &str, result: &str) -> u64 {
        f.metrics
            .auth_results
            .with_label_values(&[route, "corp", result])
            .get()
    }

    #[tokio::test]
    async fn a_route_without_authentication_forwards_with_no_identity() {
        let f = fixture();
        let Ok(Outcome::Forward(fwd)) = run(&f, "/open", None).await else {
            panic!("forwarded");
        };
        assert!(fwd.identity.is_none() && !fwd.strip_authorization);
    }

    #[tokio::test]
    async fn a_bearer_route_forwards_a_valid_token_as_its_identity_and_counts_it() {
        let f = fixture();
        let Ok(Outcome::Forward(fwd)) = run(&f, "/api", Some("read")).await else {
            panic!("forwarded");
        };
        let identity = fwd.identity.unwrap_or_else(|| panic!("an identity"));
        assert_eq!(identity.subject.as_deref(), Some("alice"));
        assert!(fwd.strip_authorization, "forward_authorization: false");
        assert_eq!(counted(&f, "api", "ok"), 1);
    }

    #[tokio::test]
    async fn refusals_are_proxy_errors_counted_by_reason() {
        let f = fixture();
        assert!(matches!(
            run(&f, "/api", None).await,
            Err(ProxyError::Unauthenticated(AuthnError::Missing))
        ));
        assert_eq!(counted(&f, "api", "missing"), 1);
        assert!(matches!(
            run(&f, "/api", Some("write")).await,
            Err(ProxyError::Forbidden { scope: Some(s), .. }) if s == "read"
        ));
        assert_eq!(counted(&f, "api", "forbidden"), 1);
    }

    #[tokio::test]
    async fn a_session_route_without_sessions_configured_is_unavailable_not_unauthenticated() {
        let f = fixture();
        assert!(matches!(
            run(&f, "/app", None).await,
            Err(ProxyError::SessionStore)
        ));
        assert_eq!(counted(&f, "app", "store_unavailable"), 1);
    }
}
