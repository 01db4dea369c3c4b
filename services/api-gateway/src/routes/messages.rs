//! `POST /api/messages`: the business sends a text.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};
use shared::broker::{BrokerError, Ingest};
use shared::domain::{Message, is_conversation_id};
use shared::http::ApiError;

use super::store_failure;
use crate::ApiState;

/// Longest text WhatsApp sends.
const MAX_TEXT_CHARS: usize = 4096;

/// Request body: `{conversationId, message}` or the frontend's
/// `{conversationId, from, to, body, userName}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the accepted body; parsing is by hand for precise errors
pub struct SendMessage {
    /// `conv_<digits>`
    conversation_id: String,
    /// The text, 1 to 4096 characters (`body` is accepted instead).
    message: Option<String>,
    body: Option<String>,
    /// The business number; defaults to the conversation's.
    from: Option<String>,
    /// Must be the conversation's customer if given.
    to: Option<String>,
    /// Ignored: the business's messages are always shown as "Business".
    user_name: Option<String>,
}

/// Validates, hands the message to the processor through JetStream, and
/// answers 201 once it is stored (202 if the processor is slower than
/// `SEND_TIMEOUT_MS`: it is durable and will be stored).
#[utoipa::path(post, path = "/api/messages", tag = "messages", request_body = SendMessage,
    responses((status = 201, body = Message, description = "stored"),
              (status = 202, body = Message, description = "accepted durably, not stored yet"),
              (status = 400, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub async fn send(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let Json(body) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {} bytes", crate::routes::BODY_LIMIT),
        ),
        _ => ApiError::bad_request(format!("body must be JSON: {}", e.body_text())),
    })?;
    let Value::Object(fields) = body else {
        return Err(ApiError::bad_request("body must be a JSON object"));
    };
    let request = validate(&fields)?;
    let wa_id = request.conversation_id.trim_start_matches("conv_");
    let from = match request.from {
        Some(from) => from,
        None => business_number(&state, &request.conversation_id).await?,
    };
    let message_id = format!("local.{}", uuid::Uuid::now_v7().simple());
    let message = Message::outbound_text(
        message_id.clone(),
        wa_id,
        from,
        request.text,
        chrono::Utc::now(),
    );

    let pending = state.pending_sends.register(&message_id);
    let bytes = serde_json::to_vec(&message)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state
        .queue
        .enqueue(Ingest::Send, &message_id, bytes.into())
        .await
        .map_err(|e| match e {
            BrokerError::TooLarge(e) | BrokerError::Unavailable(e) => {
                ApiError::unavailable_because("the message queue is unavailable, retry later", &e)
            }
        })?;
    if pending.stored(state.send_timeout).await {
        return Ok((StatusCode::CREATED, Json(message)));
    }
    // The event may have gone to a subscription that was reconnecting.
    match state
        .store
        .message(&message_id)
        .await
        .map_err(store_failure)?
    {
        Some(stored) => Ok((StatusCode::CREATED, Json(stored))),
        None => Ok((StatusCode::ACCEPTED, Json(message))),
    }
}

struct Validated {
    conversation_id: String,
    text: String,
    from: Option<String>,
}

fn validate(fields: &Map<String, Value>) -> Result<Validated, ApiError> {
    let string = |name: &str| -> Result<Option<String>, ApiError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
        }
    };
    let conversation_id = string("conversationId")?
        .ok_or_else(|| ApiError::bad_request("conversationId is required"))?;
    if !is_conversation_id(&conversation_id) {
        return Err(ApiError::bad_request(
            "conversationId must look like conv_<digits>",
        ));
    }
    let text = match (string("message")?, string("body")?) {
        (Some(text), _) | (None, Some(text)) => text,
        (None, None) => return Err(ApiError::bad_request("message is required (or body)")),
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("message must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad_request(format!(
            "message must be at most {MAX_TEXT_CHARS} characters"
        )));
    }
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    if let Some(to) = string("to")?
        && digits(&to) != conversation_id.trim_start_matches("conv_")
    {
        return Err(ApiError::bad_request(
            "to must be the conversation's customer",
        ));
    }
    string("userName")?;
    let from = string("from")?
        .map(|f| digits(&f))
        .filter(|f| !f.is_empty());
    Ok(Validated {
        conversation_id,
        text,
        from,
    })
}

/// The business number the conversation has used so far, if any.
async fn business_number(state: &ApiState, conversation_id: &str) -> Result<String, ApiError> {
    let recent = state
        .store
        .messages(
            conversation_id,
            shared::domain::Page {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(store_failure)?;
    Ok(recent
        .first()
        .map(|m| match m.direction {
            shared::domain::Direction::Outbound => m.from.clone(),
            shared::domain::Direction::Inbound => m.to.clone(),
        })
        .unwrap_or_default())
}
