mod webhook;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::WebhookState;

/// `GET/POST /webhook` and `/api/webhook`.
pub fn webhook_routes<S: Clone + Send + Sync + 'static>(state: WebhookState) -> Router<S> {
    let body_limit = state.body_limit;
    let budget = state.budget.clone();
    Router::new()
        .route("/webhook", get(webhook::verify).post(webhook::receive))
        .route("/api/webhook", get(webhook::verify).post(webhook::receive))
        .layer(DefaultBodyLimit::max(body_limit))
        // Before the body is read: a refused webhook costs no memory.
        .route_layer(axum::middleware::from_fn_with_state(
            budget,
            crate::budget::limit_body_memory,
        ))
        .with_state(state)
}
