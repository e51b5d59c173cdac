//! The authentication step of the request path: given the matched route and the request
//! head, decide whether the request goes on to the upstream (and as whom), or is answered here.
//!
//! The outcome is richer than "allowed or error" because browser sessions need it to be: a
//! sign-in redirect with a `Set-Cookie` is an answer, not an error ([`Outcome::Respond`]), and
//! a refreshed session cookie rides on the upstream's response
//! ([`Forwarding::response_headers`]). Refusals ([`Refusal`]) become responses in
//! `crate::error`, like every other error.
//!
//! Security notes: the step runs after the client's copies of owned identity headers were
//! stripped, and the identity it returns is the only source of identity headers.

use std::sync::Arc;

use http::{HeaderMap, Response, request};

use super::{Authenticator, AuthnError, Identity};
use crate::authz::Decision;
use crate::config::AuthMode;
use crate::metrics::Metrics;
use crate::routing::Route;
use crate::upstream::ProxyBody;

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
}

/// Why the step refused a request.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No valid credentials.
    #[error(transparent)]
    Unauthenticated(#[from] AuthnError),
    /// Authenticated, but the route's rules refuse this identity.
    #[error("forbidden")]
    Forbidden {
        /// The scopes the route asks for, for `WWW-Authenticate`.
        scope: Option<String>,
    },
}

/// Runs authentication and authorization for a route.
pub struct AuthnStep {
    auth: Arc<Authenticator>,
    metrics: Metrics,
    /// Issuer names by index, for metric labels.
    issuer_names: Vec<Arc<str>>,
}

// === impl AuthnStep ===

impl AuthnStep {
    /// A step over `auth`; `issuer_names` label metrics by the index routes use.
    pub fn new(auth: Arc<Authenticator>, metrics: Metrics, issuer_names: Vec<Arc<str>>) -> Self {
        Self {
            auth,
            metrics,
            issuer_names,
        }
    }

    /// The shared authenticator (keys, token cache).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// Authenticates and authorizes the request for `route`.
    pub async fn run(&self, route: &Route, head: &request::Parts) -> Result<Outcome, Refusal> {
        match route.auth {
            AuthMode::None => Ok(Outcome::Forward(Forwarding::default())),
            AuthMode::Bearer => {
                let identity = self.bearer(route, &head.headers).await?;
                Ok(Outcome::Forward(Forwarding {
                    identity: Some(identity),
                    strip_authorization: !route.forward_authorization,
                    response_headers: HeaderMap::new(),
                }))
            }
        }
    }

    /// Checks the bearer token, then the route's rules; counts the result.
    async fn bearer(&self, route: &Route, headers: &HeaderMap) -> Result<Arc<Identity>, Refusal> {
        let identity = match self.auth.authenticate(headers, route.issuer).await {
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
        if let Decision::Deny { scope } = route.policy.evaluate(&identity) {
            self.count(route, &identity.issuer, "forbidden");
            return Err(Refusal::Forbidden { scope });
        }
        self.count(route, &identity.issuer, "ok");
        Ok(identity)
    }

    fn count(&self, route: &Route, issuer: &str, result: &str) {
        self.metrics
            .auth_results
            .with_label_values(&[&*route.name, issuer, result])
            .inc();
    }
}
