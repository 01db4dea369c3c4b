//! `POST /api/messages`: the business sends a message. It is stored, with
//! its send queued for WhatsApp in the same commit, and answered at once;
//! the processor's sender sends it (see `wa_engine::sender`).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use wa_core::domain::{
    BUSINESS_USER_NAME, Conversation, Direction, Event, Message, PENDING, QueuedSend,
    conversation_id, is_conversation_id,
};
use wa_core::outbound::Draft;
use wa_service::http::ApiError;
use wa_store::KeyClaim;

use super::store_failure;
use crate::ApiState;

/// Request body: `{conversationId, message}` (or the frontend's
/// `{conversationId, from, to, body, userName}`), or one of `template`,
/// `reaction`, `image`, `document`, `audio`, `video` instead of the text.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the accepted body; parsing is by hand for precise errors
pub struct SendMessage {
    /// `conv_<customer's WhatsApp id>`
    conversation_id: String,
    /// The text, 1 to 4096 characters (`body` is accepted instead).
    message: Option<String>,
    body: Option<String>,
    /// The id of the message replied to (or `context: {messageId}`).
    reply_to: Option<String>,
    /// `{name, language: {code}, components}`: the only kind allowed for a
    /// first message or outside the 24-hour customer service window.
    #[schema(value_type = Option<Object>)]
    template: Option<Value>,
    /// `{messageId, emoji}` (an empty emoji removes the reaction).
    #[schema(value_type = Option<Object>)]
    reaction: Option<Value>,
    /// `{link}` or `{id}` (from `POST /api/media`), with `caption`;
    /// likewise `document` (with `filename`), `audio`, `video`.
    #[schema(value_type = Option<Object>)]
    image: Option<Value>,
    /// The client's own id for the message: sending the same id again
    /// returns the first message (as does the `Idempotency-Key` header).
    client_message_id: Option<String>,
    /// The business number; defaults to the conversation's.
    from: Option<String>,
    /// Must be the conversation's customer if given.
    to: Option<String>,
    /// Ignored: the business's messages are always shown as "Business".
    user_name: Option<String>,
}

/// Longest `Idempotency-Key`.
const MAX_KEY_CHARS: usize = 255;

/// Stores the message (`pending`, its send queued; `sent` when WhatsApp is
/// not configured) and answers 201 with it; a repeated `Idempotency-Key`
/// answers 200 with the first message.
#[utoipa::path(post, path = "/api/messages", tag = "messages", request_body = SendMessage,
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key returns the first message instead of sending again")),
    responses((status = 201, body = Message, description = "stored, and queued for WhatsApp"),
              (status = 200, body = Message, description = "sent before with this Idempotency-Key"),
              (status = 400, body = crate::openapi::ErrorBody),
              (status = 404, body = crate::openapi::ErrorBody, description = "no such conversation (a first message must be a template)"),
              (status = 422, body = crate::openapi::ErrorBody, description = "outside the 24-hour window, or the key was used for another message"),
              (status = 503, body = crate::openapi::ErrorBody, description = "not stored")))]
pub async fn send(
    State(state): State<ApiState>,
    headers: HeaderMap,
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
    let request = validate(&fields, &headers)?;
    let wa_id = request
        .conversation_id
        .trim_start_matches("conv_")
        .to_owned();
    let local_id = local_id(request.key.as_deref());

    let first = match request.key {
        Some(_) => state
            .store
            .message(&local_id)
            .await
            .map_err(store_failure)?,
        None => None,
    };
    if let Some(first) = &first {
        check_same(first, &request)?;
        if first.message_id != local_id || first.status != PENDING {
            // WhatsApp has it (or it is stored locally only): done.
            return Ok((StatusCode::OK, Json(first.clone())));
        }
        // Pending: the first request may have stopped half-way; sending
        // it again below finishes it (and changes nothing otherwise).
    }
    let conversation = state
        .store
        .conversation(&request.conversation_id)
        .await
        .map_err(store_failure)?;
    if first.is_none() {
        check_window(&state, conversation.as_ref(), &request)?;
    }
    // The key is claimed in one atomic write before anything is stored (and
    // after the checks, so a refused request leaves it unused): concurrent
    // requests with it store one message, with the body of the one that
    // claimed it, on a store without transactions too.
    let fingerprint = request.fingerprint();
    let mut claim = None;
    if first.is_none() && request.key.is_some() {
        let claimed = state
            .store
            .claim_key(&local_id, &fingerprint)
            .await
            .map_err(store_failure)?;
        match claimed {
            KeyClaim::New => {}
            KeyClaim::Other => return Err(key_reused()),
            KeyClaim::Same => {
                if let Some(stored) = stored_by_first(&state, &local_id).await? {
                    check_same(&stored, &request)?;
                    let waiting = stored.message_id == local_id && stored.status == PENDING;
                    // Whole unless known otherwise: a check that fails (a
                    // busy store) leaves it to the first request.
                    let whole =
                        !waiting || state.processor.stored_whole(&stored).await.unwrap_or(true);
                    if whole {
                        return Ok((StatusCode::OK, Json(stored)));
                    }
                }
                // Its first request stopped before storing it whole: this
                // repeat finishes it (answered as a repeat).
            }
        }
        claim = Some(claimed);
    }
    let mut draft = request.draft.clone();
    for id in draft.referenced_id_mut() {
        // A message of ours named by its local id: WhatsApp knows it by its own.
        if id.starts_with("local.")
            && let Some(message) = state.store.message(id).await.map_err(store_failure)?
        {
            *id = message.message_id;
        }
    }
    let from = request
        .from
        .clone()
        .or_else(|| {
            conversation
                .as_ref()
                .and_then(|c| c.participants.iter().find(|p| **p != wa_id).cloned())
        })
        .unwrap_or_default();
    let now = now();
    let status = if state.graph.is_some() {
        PENDING
    } else {
        "sent"
    };
    let message = Message {
        id: local_id.clone(),
        message_id: local_id.clone(),
        client_message_id: Some(request.key.clone().unwrap_or_else(|| local_id.clone())),
        conversation_id: conversation_id(&wa_id),
        wa_id: wa_id.clone(),
        from,
        to: wa_id.clone(),
        timestamp: now,
        kind: draft.kind.clone(),
        body: draft.body.clone(),
        status: status.to_owned(),
        user_name: BUSINESS_USER_NAME.to_owned(),
        direction: Direction::Outbound,
        contact_name: None,
        phone_number_id: state.graph.as_ref().map(|g| g.phone_number_id().to_owned()),
        content: Some(draft.content.clone()),
        context: draft
            .reply_to
            .as_ref()
            .map(|id| serde_json::json!({"id": id})),
        referral: None,
        errors: None,
        status_timestamps: [(status.to_owned(), now)].into(),
        media_url: None,
    };
    let send = state.graph.is_some().then(|| QueuedSend {
        id: local_id.clone(),
        conversation_id: message.conversation_id.clone(),
        request: draft.request(&wa_id, &local_id),
        due: now,
        // To the microsecond: the order of a conversation's sends.
        queued_at: Some(chrono::Utc::now()),
        attempts: 0,
        wamid: None,
        last_error: None,
        held: false,
    });
    let events = match state.processor.send(send.as_ref(), &message).await {
        Ok(events) => events,
        Err(e) => {
            if claim == Some(KeyClaim::New)
                && state
                    .store
                    .message(&local_id)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
            {
                // Nothing stored: the key is free again (best effort).
                let _ = state.store.release_key(&local_id, &fingerprint).await;
            }
            return Err(store_failure(e));
        }
    };
    // Into the event log, so every replica's sockets hear about it.
    state.relay.relay(&events).await;
    let stored = state
        .store
        .message(&local_id)
        .await
        .map_err(store_failure)?
        .unwrap_or(message);
    let created = first.is_none()
        && claim != Some(KeyClaim::Same)
        && events.iter().any(|e| matches!(e, Event::NewMessage(_)));
    if !created {
        // Stored before (a retry, or a concurrent request with the key).
        check_same(&stored, &request)?;
        return Ok((StatusCode::OK, Json(stored)));
    }
    Ok((StatusCode::CREATED, Json(stored)))
}

/// A checked request.
struct Validated {
    conversation_id: String,
    draft: Draft,
    from: Option<String>,
    /// `Idempotency-Key` or `clientMessageId`.
    key: Option<String>,
}

fn validate(fields: &Map<String, Value>, headers: &HeaderMap) -> Result<Validated, ApiError> {
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
    let draft = Draft::from_body(fields).map_err(|e| ApiError::bad_request(e.0))?;
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
    let header = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_owned(),
        ),
    };
    let body_key = string("clientMessageId")?;
    let key = match (header, body_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::bad_request(
                "Idempotency-Key and clientMessageId differ",
            ));
        }
        (h, b) => h.or(b),
    };
    if let Some(key) = &key
        && (key.trim().is_empty()
            || key.chars().count() > MAX_KEY_CHARS
            || key.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters"
        )));
    }
    Ok(Validated {
        conversation_id,
        draft,
        from,
        key,
    })
}

/// The message's key: derived from the client's key, so a retry finds it
/// (whatever the key's characters); else new.
fn local_id(key: Option<&str>) -> String {
    match key {
        Some(key) => format!(
            "local.{}",
            &hex::encode(Sha256::digest(key.as_bytes()))[..32]
        ),
        None => format!("local.{}", uuid::Uuid::now_v7().simple()),
    }
}

impl Validated {
    /// What a repeat with the same key must match: the conversation, the
    /// kind, the Graph API content and the message replied to.
    fn fingerprint(&self) -> String {
        let what = serde_json::json!([
            self.conversation_id,
            self.draft.kind,
            self.draft.content,
            self.draft.reply_to,
        ]);
        hex::encode(Sha256::digest(what.to_string().as_bytes()))
    }
}

/// A repeated key must come with the same message.
fn check_same(first: &Message, request: &Validated) -> Result<(), ApiError> {
    let same = first.conversation_id == request.conversation_id
        && first.kind == request.draft.kind
        && first.body == request.draft.body;
    if same { Ok(()) } else { Err(key_reused()) }
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "this Idempotency-Key was used for another message",
    )
}

/// How long a repeat waits for the request that claimed its key to store
/// the message; past it, that request is taken to have stopped.
const FIRST_REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The message the request that claimed the key stores, once stored
/// (`None`: not within [`FIRST_REQUEST_WAIT`]).
async fn stored_by_first(state: &ApiState, local_id: &str) -> Result<Option<Message>, ApiError> {
    let deadline = tokio::time::Instant::now() + FIRST_REQUEST_WAIT;
    loop {
        if let Some(stored) = state.store.message(local_id).await.map_err(store_failure)? {
            return Ok(Some(stored));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A first message needs a conversation or a template; with WhatsApp
/// configured, free-form messages need the customer service window open.
fn check_window(
    state: &ApiState,
    conversation: Option<&Conversation>,
    request: &Validated,
) -> Result<(), ApiError> {
    let free_form = request.draft.needs_open_window();
    let Some(conversation) = conversation else {
        if free_form {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no conversation {}: the first message to a customer must be a template",
                    request.conversation_id
                ),
            ));
        }
        let wa_id = request.conversation_id.trim_start_matches("conv_");
        if !(7..=15).contains(&wa_id.len()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a new conversation needs the customer's WhatsApp id (their number with country code, 7 to 15 digits)",
            ));
        }
        return Ok(());
    };
    if free_form
        && state.graph.is_some()
        && conversation
            .window_expires_at
            .is_none_or(|closes| closes <= now())
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "outside the 24-hour customer service window (the customer's last message is older, or there is none): only a template can be sent",
        ));
    }
    Ok(())
}

/// Now, to the millisecond (what every store keeps).
fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
        .unwrap_or_default()
}
