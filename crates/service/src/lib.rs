//! What every service needs at its edge:
//!
//! - [`config`]: the configuration pieces each binary's `Config` flattens,
//!   `.env`, logging;
//! - [`access`]: API tokens, per-IP limits, exposure checks;
//! - [`server`]: the HTTP server with connection limits;
//! - [`http`]: JSON errors, health, readiness, metrics and graceful
//!   shutdown.

pub mod access;
pub mod config;
pub mod http;
pub mod server;
