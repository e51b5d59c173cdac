//! What the upstream learns about the caller: the identity headers (`auth.identity_headers`
//! and the profile's), the signed assertion (`crate::assertion`) and, where the route
//! forwards an access token, the profile's access-token headers. Shared by the proxy path
//! (`rewrite_headers`) and external authorization's allow answers.
//!
//! Also the JWKS own path: the assertion's public keys, answered before routing on any host.
//!
//! Security notes: everything here comes from the verified identity and the route; the
//! client's copies of every header set here were stripped before authentication
//! (`IdentityHeaders::sanitize`, owned names in every spelling). An access-token header
//! carries exactly the token the upstream gets in `Authorization` anyway, never more.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Response};

use super::{Forwarding, Proxy};
use crate::assertion::jwks;
use crate::body::ProxyBody;
use crate::config::RouteAssertion;
use crate::error::ProxyError;
use crate::routing::Route;
use crate::routing::target::Target;
use crate::upstream::ClientBody;

// === impl Proxy ===

impl<B: ClientBody> Proxy<B> {
    /// The JWKS, when `path` (canonical) is its own path and assertions are configured: GET
    /// and HEAD, anything else 405. Never routed.
    pub(super) fn jwks(
        &self,
        path: &str,
        method: &Method,
    ) -> Option<Result<Response<ProxyBody>, ProxyError>> {
        let keys = self.assertions.as_ref()?.keys();
        if path != keys.path() {
            return None;
        }
        if !jwks::allows(method) {
            return Some(Err(ProxyError::MethodNotAllowed {
                allow: HeaderValue::from_static(jwks::ALLOW),
            }));
        }
        Some(Ok(jwks::response(keys, method)))
    }

    /// The `aud` of the assertion a request on `route` for `target` gets, or `None` when it
    /// gets none (no assertions configured, the route turned it off, or no authentication).
    pub(super) fn audience<'a>(&self, route: &'a Route, target: &'a Target) -> Option<&'a str> {
        self.assertions.as_ref()?;
        match &route.assertion {
            RouteAssertion::Off => None,
            RouteAssertion::Audience(a) => Some(a.as_str()),
            RouteAssertion::Default => Some(target.host()),
        }
    }

    /// Sets the identity headers, the assertion for `audience` and the access-token headers
    /// of `f` into `headers`, which already hold what the upstream gets as `Authorization`.
    pub(super) fn send_identity(
        &self,
        headers: &mut HeaderMap,
        f: &Forwarding,
        audience: Option<&str>,
    ) {
        let Some(identity) = &f.identity else {
            return;
        };
        self.identity.apply(headers, identity);
        if let (Some(a), Some(aud)) = (&self.assertions, audience)
            && let Some(v) = a.value(identity, aud)
        {
            headers.insert(a.header().clone(), v);
        }
        if self.access_token_headers.is_empty() {
            return;
        }
        // Only a token the upstream gets anyway: the session's (forward_access_token) or
        // the client's bearer token the route forwards.
        let token = headers
            .get(AUTHORIZATION)
            .filter(|_| f.authorization.is_some() || !f.strip_authorization)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, t)| HeaderValue::from_str(t.trim()).ok());
        if let Some(token) = token {
            for name in &self.access_token_headers {
                headers.insert(name.clone(), token.clone());
            }
        }
    }
}
