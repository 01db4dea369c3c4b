//! The all-in-one binary: embedded store and broker, one port, the same
//! API and events as the microservice stack; durable across SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod binary;
mod exhaustion;
mod helpers;
mod in_process;
mod numbers;
mod resume;
mod search;
mod sending;
