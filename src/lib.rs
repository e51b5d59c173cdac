//! Portcullis: a resilient OpenID Connect reverse proxy and edge gateway.
//!
//! `main.rs` loads the [`config::Config`], then [`server::Server::bind`] builds every part and
//! binds every socket, and [`server::Server::run`] serves until shutdown. See
//! `docs/ARCHITECTURE.md`.

#![forbid(unsafe_code)]

// What the binary needs.
pub mod config;
pub mod demo;
pub mod explain;
pub mod logging;
pub mod server;

/// Modules private to the crate, public only with the `test-util` feature, which the crate's
/// own integration tests and benches turn on (a dev-dependency on itself): they reach inside
/// while the dead-code lint of the real build still sees every item.
macro_rules! internal {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[cfg(feature = "test-util")]
            pub mod $name;
            $(#[$doc])*
            #[cfg(not(feature = "test-util"))]
            pub(crate) mod $name;
        )*
    };
}

internal!(
    assertion, authn, authz, body, claims, clock, error, health, idp, listener, metrics, proxy,
    reload, request_id, routing, secret, session, tls_client, upstream,
);

pub use config::Config;
pub use server::Server;
