//! The rules of the product, as pure functions over plain data: no I/O,
//! no async runtime, no database or HTTP types.
//!
//! - [`webhook`]: WhatsApp's webhook payloads and how to read them;
//! - [`domain`]: messages, statuses, conversations and events;
//! - [`numbers`]: several business numbers: routing and scoping;
//! - [`plan`]: what a batch of payloads changes, given what is stored;
//! - [`search`]: the words a message is found by, and a query's;
//! - [`outbound`]: the messages a business sends, checked and built;
//! - [`retry`]: how long every retry waits (the one backoff policy).
//!
//! With the `openapi` feature the domain types also describe themselves
//! as OpenAPI schemas (the api-gateway turns it on).

pub mod domain;
pub mod numbers;
pub mod outbound;
pub mod plan;
pub mod retry;
pub mod search;
pub mod webhook;
