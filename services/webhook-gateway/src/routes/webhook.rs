//! `GET /webhook` (Meta's verification handshake) and `POST /webhook`.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use wa_broker::{Ingest, payload_id};
use wa_service::http::ApiError;

use crate::{WebhookState, signature};

#[derive(Deserialize)]
pub struct Verification {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Echoes `hub.challenge` when the token matches, as Meta expects.
pub async fn verify(
    State(state): State<WebhookState>,
    query: Result<Query<Verification>, axum::extract::rejection::QueryRejection>,
) -> Result<String, ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "verification failed: unreadable query",
        ));
    };
    let expected = state.verify_token.as_deref().map(str::as_bytes);
    let given = query.token.as_deref().map(str::as_bytes);
    // Constant-time comparison: the token is a (small) secret.
    let token_ok = matches!((expected, given), (Some(e), Some(g)) if bool::from(e.ct_eq(g)));
    if query.mode.as_deref() != Some("subscribe") || !token_ok {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "verification failed: wrong hub.mode or hub.verify_token",
        ));
    }
    Ok(query.challenge.unwrap_or_default())
}

/// Checks the signature and the envelope, then publishes the raw body to
/// JetStream and answers 200 once it is stored there (a body over NATS's
/// `max_payload` goes through its object store: the broker does that).
pub async fn receive(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body is larger than the accepted limit".to_owned()
        } else {
            rejection.body_text()
        };
        reject(status, message)
    })?;
    if let Some(secret) = &state.app_secret {
        let header = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok());
        signature::verify(secret, header, &body)
            .map_err(|e| reject(StatusCode::UNAUTHORIZED, e))?;
    }
    let parsed =
        wa_core::webhook::parse(&body).map_err(|e| reject(StatusCode::BAD_REQUEST, e.0))?;

    // The body's hash de-duplicates a webhook posted twice.
    let started = Instant::now();
    let ack = state
        .queue
        .enqueue(Ingest::Webhook, &payload_id(&body), body)
        .await
        // 413 or 503 (Meta retries later), said at once: the reason in
        // words, the driver's text in the log only.
        .map_err(|e| counted(ApiError::from_broker(&e, "the webhook")))?;
    metrics::histogram!("webhook_publish_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("webhooks_accepted_total").increment(1);
    Ok(Json(json!({
        "status": "accepted",
        "messages": parsed.messages.len(),
        "statuses": parsed.statuses.len(),
        // Malformed items: kept with the reason by the processor, counted
        // in /api/stats; the rest of the envelope is stored.
        "rejected": parsed.rejected.len(),
        "duplicate": ack.duplicate,
    })))
}

fn reject(status: StatusCode, message: impl Into<String>) -> ApiError {
    counted(ApiError::new(status, message))
}

/// Counts a refused webhook by its status.
fn counted(error: ApiError) -> ApiError {
    metrics::counter!("webhooks_rejected_total", "status" => error.status.as_str().to_owned())
        .increment(1);
    error
}
