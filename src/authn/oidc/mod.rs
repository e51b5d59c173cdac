//! The OpenID Connect protocol pieces of browser sign-in (authorization code flow with PKCE).
//!
//! Each piece is its own module and needs no session store: provider metadata from discovery
//! ([`metadata`]), the token endpoint client ([`token`]), login state and the authorization URL
//! ([`login`]), return-target validation ([`redirect`]), the browser-navigation decision
//! ([`navigation`]), ID and logout token validation ([`id_token`]) and the form encoding they
//! share ([`form`]). The session routes (callback, sign-out, back-channel logout) compose them.
//!
//! Security notes: secrets (client secret, codes, verifiers, tokens) never reach a log; types
//! that hold them redact them in `Debug`. Every value from the IdP or the browser is parsed
//! into a typed value or refused; nothing here panics on input.

pub mod form;
pub mod id_token;
pub mod login;
pub mod metadata;
pub mod navigation;
pub mod redirect;
pub mod token;

pub use metadata::{MetadataError, ProviderMetadata};
pub use redirect::{RedirectPolicy, login_return_target, return_target};
pub use token::{TokenClient, TokenError, TokenResponse};
