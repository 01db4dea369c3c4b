//! Code shared by the webhook-gateway, processor and api-gateway services:
//!
//! - [`webhook`]: WhatsApp's webhook payloads and how to read them;
//! - [`domain`]: messages, statuses, conversations and events;
//! - [`plan`]: the processing rules as pure functions: what a batch
//!   changes, given what is stored;
//! - [`processing`]: reads what a batch needs, plans it, has it applied;
//! - [`store`]: where that state lives (the [`store::Store`] trait, MongoDB
//!   and SQLite), with [`error`] its one error type;
//! - [`broker`]: the queue and event bus between the services (NATS, or
//!   in-process for the all-in-one binary);
//! - [`relay`]: events from the store's outbox to the event log;
//! - [`outbound`] and [`sender`]: messages the business sends, and the
//!   loop that sends them through WhatsApp's Cloud API;
//! - [`worker`]: the processor's consume-store-relay-ack loop;
//! - [`graph`]: the WhatsApp Cloud (Graph) API client: send, mark read, media;
//! - [`config`] and [`http`]: configuration, logging, errors, health and metrics.

pub mod access;
pub mod broker;
pub mod config;
pub mod domain;
pub mod error;
pub mod graph;
pub mod health;
pub mod http;
pub mod outbound;
pub mod plan;
pub mod processing;
pub mod relay;
pub mod search;
pub mod sender;
pub mod server;
pub mod sqlite;
pub mod store;
pub mod webhook;
pub mod worker;
