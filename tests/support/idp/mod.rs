//! A mock OpenID Connect IdP on 127.0.0.1:0 (real HTTP, hyper).
//!
//! - `/.well-known/openid-configuration`: `{issuer: <base URL>, jwks_uri: <base>/jwks}`
//! - `/jwks`: the published keys (optionally with `Cache-Control: max-age=N`)
//!
//! Keys are generated per test with rcgen (RS256, PS256, ES256, EdDSA) and published as JWKs
//! (`Jwk::from_encoding_key` plus a `kid`); tests rotate them with `add_key`/`remove_key`.
//! Every request is logged (path, and the time on the test's `ManualClock` when one is given),
//! so tests can count calls per path and check when they happened.
//!
//! It can be told to fail ([`Failure`]): a status (500), 429 with `Retry-After` in seconds or
//! as an HTTP-date, 503 with `Retry-After`, hang (never answer), malformed JSON, an empty key set, or a connection
//! reset (RST). Connections are never kept alive, so a failure mode applies from the next
//! request on, and a reset can be decided per request.
//!
//! OpenID Connect endpoints (advertised in discovery): `/authorize` (auto-approves for the
//! configured user and redirects with `code` and `state`, or shows a tiny HTML login form),
//! `/token` (`authorization_code` with the PKCE check, `refresh_token` with rotation: a used
//! refresh token gets `invalid_grant`), `/end_session`; logout tokens are minted with
//! [`MockIdp::logout_token`]. [`TokenFault`] fails only the token endpoint (down, hang, 500,
//! 429 with `Retry-After`, `invalid_grant`); [`MockIdp::token_requests`] shows what it got.
//!
//! [`TokenBuilder`] mints tokens with sensible defaults and lets a test override any claim or
//! header (alg, kid, `none`, `crit`, `jku`, ...) or sign with the wrong key.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod keys;
mod oidc;
mod server;
mod tokens;

// Each test uses a different part.
#[allow(unused_imports)]
pub use keys::*;
#[allow(unused_imports)]
pub use oidc::*;
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use tokens::*;

/// The discovery path.
pub const DISCOVERY: &str = "/.well-known/openid-configuration";
/// The JWKS path.
pub const JWKS: &str = "/jwks";
/// The audience tokens carry by default.
pub const AUDIENCE: &str = "api";
