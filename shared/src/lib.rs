//! Code shared by the webhook-gateway, processor and api-gateway services:
//!
//! - [`webhook`]: WhatsApp's webhook payloads and how to read them;
//! - [`domain`]: messages, statuses, conversations and events;
//! - [`processing`]: the rules that turn payloads into stored state;
//! - [`store`]: where that state lives (the [`store::Store`] trait, MongoDB);
//! - [`broker`]: the queue and event bus between the services (NATS, or
//!   in-process for the all-in-one binary);
//! - [`worker`]: the processor's consume-store-publish-ack loop;
//! - [`config`] and [`http`]: configuration, logging, errors, health and metrics.

pub mod broker;
pub mod config;
pub mod domain;
pub mod http;
pub mod processing;
pub mod sqlite;
pub mod store;
pub mod webhook;
pub mod worker;
