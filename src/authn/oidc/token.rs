//! The token endpoint client: authorization-code exchange (with the PKCE verifier) and the
//! refresh-token grant, over the issuer's `IdpClient`.
//!
//! - The code exchange is never retried once it may have reached the IdP (only connect
//!   failures are retried): a code is single-use.
//! - A refresh uses the client's full policy (timeouts, backoff with jitter, `Retry-After`,
//!   breaker). It sends no `scope`, which RFC 6749 §6 defines as "the scope originally
//!   granted": re-sending scopes such as `offline_access` is a known way to make every
//!   refresh fail. When the response has no `refresh_token`, the old one is kept.
//! - Failures are [`TokenError::Definitive`] (an OAuth error from a 4xx: `invalid_grant`,
//!   `invalid_client`, ...; sign in again) or transient (network, timeout, 5xx, 429, breaker
//!   open, or an unusable response; keep the session in grace and retry later).
//!
//! Security notes: client authentication is `client_secret_basic` (default; id and secret
//! form-encoded, then base64, RFC 6749 §2.3.1) or `client_secret_post`, chosen by the issuer
//! key `token_endpoint_auth`. The secret, codes, verifiers and tokens are never logged;
//! `Debug` of every type here redacts them. The OAuth `error_description` is not kept (it is
//! IdP-controlled text); only the `error` code, cut to [`MAX_ERROR_CODE`] bytes.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{StatusCode, Uri};
use serde_json::Value;

use super::form;
use crate::config::issuer::TokenEndpointAuth;
use crate::idp::token::TokenRetry;
use crate::idp::{IdpClient, IdpError};
use crate::metrics::Metrics;

/// Longest OAuth `error` code kept.
pub const MAX_ERROR_CODE: usize = 64;

/// Why a token request failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The IdP refused the grant or the client (a 4xx with an OAuth `error`): retrying cannot
    /// help.
    #[error("token endpoint refused the request: {error} (status {status})")]
    Definitive {
        /// The OAuth error code (`invalid_grant`, `invalid_client`, ...).
        error: String,
        /// The HTTP status.
        status: StatusCode,
    },
    /// The IdP could not be reached or did not answer usefully (network, timeout, 5xx, 429,
    /// breaker open, a 4xx without an OAuth error): try again later.
    #[error("token endpoint unavailable")]
    Transient(#[source] IdpError),
    /// A 2xx whose body is not a usable token response (no `access_token`, not Bearer).
    #[error("token response unusable: {0}")]
    InvalidResponse(&'static str),
    /// The client credentials cannot be put in a header.
    #[error("client credentials unusable in a header")]
    Credentials,
}

/// A successful token response.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// `access_token`
    pub access_token: String,
    /// `expires_in` (seconds), when given.
    pub expires_in: Option<u64>,
    /// `refresh_token`: the new one, or after a refresh without one, the old one.
    pub refresh_token: Option<String>,
    /// `id_token`, when given (always on a code exchange with `openid`).
    pub id_token: Option<String>,
    /// `scope`, when given (else the scope asked for was granted).
    pub scope: Option<String>,
}

/// The client for one issuer's token endpoint.
pub struct TokenClient {
    issuer: Arc<str>,
    idp: Arc<IdpClient>,
    endpoint: Uri,
    client_id: String,
    client_secret: Option<String>,
    auth: TokenEndpointAuth,
    metrics: Metrics,
}

// === impl TokenError ===

impl TokenError {
    /// True when the grant (code, refresh token) or the client is refused for good.
    pub fn is_definitive(&self) -> bool {
        matches!(self, Self::Definitive { .. } | Self::Credentials)
    }

    /// The metric label: `definitive` or `transient`.
    pub fn result(&self) -> &'static str {
        if self.is_definitive() {
            "definitive"
        } else {
            "transient"
        }
    }

    fn from_idp(err: IdpError) -> Self {
        if let IdpError::Status { status, body } = &err
            && status.is_client_error()
            && *status != StatusCode::TOO_MANY_REQUESTS
            && let Some(error) = oauth_error(body)
        {
            return Self::Definitive {
                error,
                status: *status,
            };
        }
        Self::Transient(err)
    }
}

// === impl TokenResponse ===

impl TokenResponse {
    /// Parses a 2xx token response body.
    pub fn parse(body: &[u8]) -> Result<Self, TokenError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|_| TokenError::InvalidResponse("not JSON"))?;
        let obj = v
            .as_object()
            .ok_or(TokenError::InvalidResponse("not a JSON object"))?;
        let text = |k: &str| {
            obj.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let access_token =
            text("access_token").ok_or(TokenError::InvalidResponse("no access_token"))?;
        match text("token_type") {
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            _ => return Err(TokenError::InvalidResponse("token_type is not Bearer")),
        }
        // Some IdPs send expires_in as a string.
        let expires_in = match obj.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Ok(Self {
            access_token,
            expires_in,
            refresh_token: text("refresh_token"),
            id_token: text("id_token"),
            scope: text("scope"),
        })
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .finish()
    }
}

// === impl TokenClient ===

impl TokenClient {
    /// A client for issuer `issuer` (metric label) at `endpoint`, authenticating as
    /// `client_id` (with `client_secret` as `auth` says; without a secret, a public client
    /// that sends only `client_id` in the form).
    pub fn new(
        issuer: &str,
        idp: Arc<IdpClient>,
        endpoint: Uri,
        client_id: &str,
        client_secret: Option<&str>,
        auth: TokenEndpointAuth,
        metrics: Metrics,
    ) -> Self {
        Self {
            issuer: Arc::from(issuer),
            idp,
            endpoint,
            client_id: client_id.to_string(),
            client_secret: client_secret.map(str::to_string),
            auth,
            metrics,
        }
    }

    /// The IdP client it calls through (its breaker is shared by every call).
    pub fn idp(&self) -> &Arc<IdpClient> {
        &self.idp
    }

    /// Exchanges `code` (with the PKCE `verifier`, for `redirect_uri`). Retried only when the
    /// connection failed.
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, TokenError> {
        let grant = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let result = self.request(&grant, TokenRetry::ConnectOnly).await;
        self.count("authorization_code", &result);
        result
    }

    /// Redeems `refresh_token` (no `scope` sent: the original grant). Keeps `refresh_token`
    /// in the result when the response carries none.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, TokenError> {
        let grant = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let result = self.request(&grant, TokenRetry::Full).await.map(|mut r| {
            if r.refresh_token.is_none() {
                r.refresh_token = Some(refresh_token.to_string());
            }
            r
        });
        self.count("refresh_token", &result);
        result
    }

    async fn request(
        &self,
        grant: &[(&str, &str)],
        retry: TokenRetry,
    ) -> Result<TokenResponse, TokenError> {
        let mut pairs: Vec<(&str, &str)> = grant.to_vec();
        let mut authorization = None;
        match (&self.client_secret, self.auth) {
            (Some(secret), TokenEndpointAuth::ClientSecretBasic) => {
                let raw = format!("{}:{}", form::encode(&self.client_id), form::encode(secret));
                let value = format!("Basic {}", STANDARD.encode(raw));
                authorization =
                    Some(HeaderValue::from_str(&value).map_err(|_| TokenError::Credentials)?);
            }
            (Some(secret), TokenEndpointAuth::ClientSecretPost) => {
                pairs.push(("client_id", &self.client_id));
                pairs.push(("client_secret", secret));
            }
            (None, _) => pairs.push(("client_id", &self.client_id)),
        }
        let body = Bytes::from(form::encode_pairs(pairs));
        let fetched = self
            .idp
            .post_token(&self.endpoint, body, authorization, retry)
            .await
            .map_err(TokenError::from_idp)?;
        TokenResponse::parse(&fetched.body)
    }

    fn count(&self, grant: &str, result: &Result<TokenResponse, TokenError>) {
        let label = match result {
            Ok(_) => "ok",
            Err(e) => e.result(),
        };
        self.metrics
            .token_requests
            .with_label_values(&[&*self.issuer, grant, label])
            .inc();
    }
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("issuer", &self.issuer)
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("auth", &self.auth)
            .finish()
    }
}

/// The OAuth `error` code of an error body (RFC 6749 §5.2), if it is one.
fn oauth_error(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?.as_str()?;
    let ok = !e.is_empty()
        && e.len() <= MAX_ERROR_CODE
        && e.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    ok.then(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_responses() {
        let r = TokenResponse::parse(
            br#"{"access_token":"at","token_type":"bearer","expires_in":"300","refresh_token":"rt","id_token":"it","scope":"openid"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.expires_in, Some(300));
        assert_eq!(r.refresh_token.as_deref(), Some("rt"));
        let shown = format!("{r:?}");
        assert!(!shown.contains("\"at\"") && !shown.contains("rt\"") && !shown.contains("it\""));
        for bad in [
            &b"nope"[..],
            br#"[]"#,
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":"at","token_type":"mac"}"#,
            br#"{"access_token":"at"}"#,
        ] {
            assert!(matches!(
                TokenResponse::parse(bad),
                Err(TokenError::InvalidResponse(_))
            ));
        }
    }

    #[test]
    fn classifies_idp_errors() {
        let status = |code: u16, body: &'static str| {
            TokenError::from_idp(IdpError::Status {
                status: StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
                body: Bytes::from_static(body.as_bytes()),
            })
        };
        let grant = status(400, r#"{"error":"invalid_grant","error_description":"x"}"#);
        assert!(grant.is_definitive());
        assert!(matches!(&grant, TokenError::Definitive { error, .. } if error == "invalid_grant"));
        assert!(status(401, r#"{"error":"invalid_client"}"#).is_definitive());
        assert!(!status(400, "<html>bad</html>").is_definitive());
        assert!(!status(400, r#"{"error":"a\"b"}"#).is_definitive());
        assert!(!status(429, r#"{"error":"slow_down"}"#).is_definitive());
        assert!(!status(500, r#"{"error":"server_error"}"#).is_definitive());
        assert!(!status(503, r#"{"error":"temporarily_unavailable"}"#).is_definitive());
        assert!(!TokenError::from_idp(IdpError::BreakerOpen).is_definitive());
        assert!(
            !TokenError::from_idp(IdpError::Timeout(std::time::Duration::from_secs(1)))
                .is_definitive()
        );
        assert_eq!(TokenError::InvalidResponse("x").result(), "transient");
    }
}
