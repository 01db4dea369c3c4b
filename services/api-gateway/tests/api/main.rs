//! api-gateway end to end: webhooks in through the gateway, the processor
//! storing them, REST and a real socket.io-client v4 out, with one or two
//! api-gateway replicas — all on real NATS and MongoDB-wire servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod helpers;
mod numbers;
mod openapi;
mod properties;
mod realtime;
mod realtime_numbers;
mod rest;
mod resume;
mod send;
mod whatsapp;
