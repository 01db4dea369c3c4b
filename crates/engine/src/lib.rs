//! The pipeline between the broker and the store, generic over both:
//!
//! - [`numbers`]: the home number and the numbers webhooks came for;
//! - [`processing`]: reads what a batch needs, plans it (`wa_core::plan`)
//!   and has the store apply it;
//! - [`worker`]: the processor's consume-store-relay-ack loop;
//! - [`relay`]: events from the store's outbox to the event log;
//! - [`sender`]: the loop that sends what the business sends through
//!   WhatsApp's Cloud API, in order, once.

pub mod numbers;
pub mod processing;
pub mod relay;
pub mod sender;
pub mod worker;
