mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use shared::http::{ReadinessCheck, ops_routes};

use crate::AppState;

pub(crate) fn router(state: AppState) -> Router {
    let client = state.client.clone();
    let ready: ReadinessCheck = Arc::new(move || {
        let state = client.connection_state();
        Box::pin(async move {
            match state {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("NATS is {other}")),
            }
        })
    });
    Router::new()
        .route("/webhook", get(webhook::verify).post(webhook::receive))
        .route("/api/webhook", get(webhook::verify).post(webhook::receive))
        .merge(ops_routes(ready))
        .with_state(state)
}
