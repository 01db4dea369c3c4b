//! The ingest pipeline end to end: webhook-gateway → NATS JetStream →
//! processor → MongoDB, on real servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod crash;
mod dead_letters;
mod events;
mod helpers;
mod samples;
mod sending;
mod shutdown;
