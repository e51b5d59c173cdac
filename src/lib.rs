//! Portcullis: a resilient OpenID Connect reverse proxy and edge gateway.
//!
//! `main.rs` loads the [`config::Config`], then [`server::Server::bind`] builds every part and
//! binds every socket, and [`server::Server::run`] serves until shutdown. See
//! `docs/ARCHITECTURE.md`.

#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod body;
pub mod claims;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod idp;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod secret;
pub mod server;
pub mod session;
pub mod tls_client;
pub mod upstream;

pub use config::Config;
pub use server::Server;
