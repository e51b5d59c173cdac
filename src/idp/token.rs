//! Token endpoint POSTs, with the retry rule the grant allows.
//!
//! An authorization code is single-use: once a request may have reached the IdP, sending it
//! again can only fail (`invalid_grant`) and, at some IdPs, revoke the tokens the first request
//! issued. So [`TokenRetry::ConnectOnly`] retries only when the connection was never
//! established. A refresh goes through the full policy of `IdpClient` ([`TokenRetry::Full`]):
//! timeouts, backoff with jitter, `Retry-After`, the breaker.
//!
//! Security notes: the `Authorization` header (client credentials) is marked sensitive, and
//! neither the form (code, verifier, refresh token, client secret) nor the response body is
//! logged.

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;

use super::{Fetched, IdpClient, IdpError};

/// Which failures of a token request are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRetry {
    /// Only a failure to connect (the request cannot have reached the IdP).
    ConnectOnly,
    /// Every retryable failure (network, timeout, 429, 5xx), within the issuer's budget.
    Full,
}

/// The metric label of the token endpoint.
pub const TOKEN_ENDPOINT: &str = "token";

// === impl TokenRetry ===

impl TokenRetry {
    /// Whether `err` may be retried under this rule.
    pub(crate) fn allows(&self, err: &IdpError) -> bool {
        match self {
            Self::Full => err.is_retryable(),
            Self::ConnectOnly => matches!(err, IdpError::Network(e) if e.is_connect()),
        }
    }
}

// === impl IdpClient ===

impl IdpClient {
    /// POSTs `form` (`application/x-www-form-urlencoded`) to the token endpoint `uri`, with
    /// `authorization` (client credentials) when given, retrying as `retry` allows.
    pub async fn post_token(
        &self,
        uri: &Uri,
        form: Bytes,
        authorization: Option<HeaderValue>,
        retry: TokenRetry,
    ) -> Result<Fetched, IdpError> {
        let authorization = authorization.map(|mut v| {
            v.set_sensitive(true);
            v
        });
        let make = || {
            let mut b = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .header(ACCEPT, "application/json");
            if let Some(a) = &authorization {
                b = b.header(AUTHORIZATION, a.clone());
            }
            b.body(Full::new(form.clone()))
        };
        self.call(TOKEN_ENDPOINT, retry, make).await
    }
}
