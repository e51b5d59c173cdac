//! Authentication: bearer tokens (JWTs) on API routes, sessions on browser routes.
//!
//! Split along the roles of Envoy's jwt_authn filter:
//! - `extract`: the token of a request (`Authorization: Bearer`).
//! - `token_cache`: verified tokens by SHA-256, bounded by bytes, expiring at `exp`.
//! - `issuers`: the issuer set of the running configuration (settings, keys, validations)
//!   and its lifecycle across reloads (slots, key refresh tasks, readiness).
//! - `verify`: the one key loop (validation for the `alg`, candidate keys, each tried),
//!   for bearer tokens and for ID and logout tokens.
//! - `authenticator`: [`Authenticator`], which ties them together.
//! - `jwt`, `keys`, `jwks`, `state`: token parsing, JWKS keys, their refresh and the
//!   persisted last-known-good state. `browser`, `oidc`: browser sessions and the sign-in
//!   protocol. The request path's authentication step, which uses all of them, is the
//!   proxy's (`crate::proxy::authenticate`).
//!
//! Identities are built from verified claims in `crate::claims`; the identity headers (and
//! the removal of the client's copies, on every route) are header rules in
//! `crate::upstream::headers::identity`.
//!
//! Security notes: the token itself is never logged or stored; the cache is keyed by its
//! SHA-256. A cached token is accepted only while the key that verified it is still in the
//! issuer's key set, and never past its `exp`.

mod authenticator;
pub mod browser;
mod error;
mod extract;
mod issuers;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod oidc;
pub mod state;
mod token_cache;
mod verify;

pub use crate::claims::Identity;
pub use authenticator::Authenticator;
pub use error::AuthnError;
pub use issuers::BuildError;
