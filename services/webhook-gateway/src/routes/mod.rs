mod webhook;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::WebhookState;

/// `GET/POST /webhook` and `/api/webhook`.
pub fn webhook_routes<S: Clone + Send + Sync + 'static>(state: WebhookState) -> Router<S> {
    let body_limit = state.body_limit;
    Router::new()
        .route("/webhook", get(webhook::verify).post(webhook::receive))
        .route("/api/webhook", get(webhook::verify).post(webhook::receive))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
