//! webhook-gateway against a real nats-server, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod exhaustion;
mod helpers;
mod large_bodies;
mod receive;
mod resilience;
mod verification;
