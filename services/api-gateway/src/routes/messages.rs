//! `POST /api/messages`: the business sends a message. It is stored, with
//! its send queued for WhatsApp in the same commit, and answered at once;
//! the processor's sender sends it (see `wa_engine::sender`). The rules
//! and what is stored are built in `wa_core::outbound`; this handler
//! reads the request, keeps a repeated key to its first message, stores
//! and answers.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Map, Value};
use wa_core::domain::{Conversation, Event, Message, PENDING};
use wa_core::numbers::{self, Scope, parse_conversation_id};
use wa_core::outbound::{self, Addressed, Draft, Outgoing, Refusal};
use wa_service::http::ApiError;
use wa_store::KeyClaim;

use super::{home_number, no_conversation, parse_number, scope_of, store_failure};
use crate::ApiState;

/// Request body: `{conversationId, message}` (or the frontend's
/// `{conversationId, from, to, body, userName}`), or one of `template`,
/// `reaction`, `image`, `document`, `audio`, `video` instead of the text.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the accepted body; parsing is by hand for precise errors
pub struct SendMessage {
    /// `conv_<customer's WhatsApp id>` (or `conv_<wa_id>_<phone_number_id>`);
    /// absent for a first message to a new customer: `to` and
    /// `phoneNumberId` name its conversation.
    conversation_id: Option<String>,
    /// The business number to send through: a new customer's conversation
    /// is with it (default: the default number); with `conversationId`,
    /// must be the conversation's.
    phone_number_id: Option<String>,
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
    /// The customer's WhatsApp id; must be the conversation's customer if
    /// `conversationId` is given, else required.
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
              (status = 404, body = crate::openapi::ErrorBody, description = "no such conversation (a first message must be a template), or a conversation or phone number outside the token's scope"),
              (status = 422, body = crate::openapi::ErrorBody, description = "outside the 24-hour window, the key was used for another message, or no access token serves the conversation's business number"),
              (status = 503, body = crate::openapi::ErrorBody, description = "not stored")))]
pub async fn send(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
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
    let scope = scope_of(scope);
    let route = route(&state, &scope, &request).await?;
    let Route {
        conversation_id,
        wa_id,
        number,
        conversation,
        ..
    } = &route;
    let conversation = conversation.as_ref();
    // Through the conversation's own number: refused before anything is
    // stored (the key stays unused) if no token serves it.
    let phone_number_id = match (&state.graph, number.as_deref()) {
        (None, _) => None,
        (Some(graph), Some(number)) if graph.has_token_for(number) => Some(number),
        (Some(_), number) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "no WhatsApp access token serves business number {}: set WHATSAPP_ACCESS_TOKEN or give the number its own (WHATSAPP_NUMBER_TOKENS)",
                    number.unwrap_or("(none: WHATSAPP_PHONE_NUMBER_ID is not set)")
                ),
            ));
        }
    };
    let local_id = match request.key.as_deref() {
        // A scoped token's keys are its own: another tenant's key neither
        // finds nor blocks its messages.
        Some(key) => match &scope {
            Scope::All => outbound::keyed_local_id(key),
            Scope::Numbers(own) => outbound::keyed_local_id(&format!(
                "{}|{key}",
                own.iter().map(String::as_str).collect::<Vec<_>>().join(",")
            )),
        },
        None => outbound::fresh_local_id(&uuid::Uuid::now_v7().simple().to_string()),
    };

    let first = match request.key {
        Some(_) => state
            .store
            .message(&local_id)
            .await
            .map_err(store_failure)?,
        None => None,
    };
    if let Some(first) = &first {
        check_same(first, &request, conversation_id)?;
        if first.message_id != local_id || first.status != PENDING {
            // WhatsApp has it (or it is stored locally only): done.
            return Ok((StatusCode::OK, Json(first.clone())));
        }
        // Pending: the first request may have stopped half-way; sending
        // it again below finishes it (and changes nothing otherwise).
    }
    if first.is_none() {
        // The rule reads the customer's WhatsApp id off `conv_<wa_id>`.
        outbound::may_send(
            &request.draft,
            &format!("conv_{wa_id}"),
            conversation,
            state.graph.is_some(),
            chrono::Utc::now(),
        )
        .map_err(|refusal| match refusal {
            Refusal::FirstNotTemplate(_) => {
                refused(Refusal::FirstNotTemplate(conversation_id.clone()))
            }
            other => refused(other),
        })?;
    }
    // The key is claimed in one atomic write before anything is stored (and
    // after the checks, so a refused request leaves it unused): concurrent
    // requests with it store one message, with the body of the one that
    // claimed it, on a store without transactions too.
    let fingerprint = request.draft.fingerprint(conversation_id);
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
                    check_same(&stored, &request, conversation_id)?;
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
            // Only a message of this conversation: another's (another
            // number's, maybe) is no message here.
            if message.conversation_id != *conversation_id {
                return Err(ApiError::bad_request(format!(
                    "{id} is not a message of {conversation_id}"
                )));
            }
            *id = message.message_id;
        }
    }
    let business_number = match conversation {
        Some(conversation) => conversation.business_number.clone(),
        None => display_number(&state, number.as_deref()).await,
    };
    let from = outbound::business_number(
        request.from.as_deref().or(business_number.as_deref()),
        conversation,
        wa_id,
    );
    let to = Addressed {
        local_id: &local_id,
        key: request.key.as_deref(),
        wa_id,
        conversation_id,
        number: number.as_deref(),
        business_number: business_number.as_deref(),
        from: &from,
        phone_number_id,
    };
    let Outgoing { message, send } = outbound::outgoing(&draft, &to, chrono::Utc::now());
    if let Some(home) = &route.home_to_record {
        let recorded = state
            .processor
            .numbers()
            .home_or(Some(home))
            .await
            .map_err(store_failure)?;
        if recorded.as_deref() != Some(home.as_str()) {
            // A webhook for another number came first: the id is stale.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the deployment's home number was recorded meanwhile; send again",
            ));
        }
    }
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
    if conversation.is_none()
        && let Err(e) = state
            .processor
            .numbers()
            .note(std::slice::from_ref(&message), &[])
            .await
    {
        // Listed by `GET /api/numbers` once a webhook comes for it.
        tracing::warn!(error = %e, "the business number of a new conversation was not recorded");
    }
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
        check_same(&stored, &request, conversation_id)?;
        return Ok((StatusCode::OK, Json(stored)));
    }
    Ok((StatusCode::CREATED, Json(stored)))
}

/// Where a message goes: its conversation, customer and business number.
struct Route {
    conversation_id: String,
    wa_id: String,
    /// `None` only without WhatsApp and before any webhook named a number.
    number: Option<String>,
    /// What is stored of the conversation, if anything.
    conversation: Option<Conversation>,
    /// The home number the id was made with, when none is recorded yet:
    /// recorded right before the message is stored (never by a request
    /// that is refused).
    home_to_record: Option<String>,
}

/// The conversation and number of a request, within the caller's scope:
/// a conversation or number outside it is answered as one that does not
/// exist.
///
/// Ids are made with the home number. Before one is recorded, the request
/// takes the one it would record: the default number, else (a new
/// customer's) its own number; the processor's adoption of data from
/// before numbers prefers the default number too, so both agree.
async fn route(state: &ApiState, scope: &Scope, request: &Validated) -> Result<Route, ApiError> {
    let default = state
        .graph
        .as_ref()
        .and_then(|g| g.default_number())
        .map(str::to_owned);
    let recorded = home_number(state).await?;
    let (conversation_id, wa_id, number, home) = match &request.conversation_id {
        Some(id) => {
            let Some((wa_id, in_id)) = parse_conversation_id(id) else {
                return Err(ApiError::bad_request(
                    "conversationId must look like conv_<digits> or conv_<digits>_<phone number id>",
                ));
            };
            let home = recorded.clone().or_else(|| default.clone());
            let number = in_id.map(str::to_owned).or_else(|| home.clone());
            // One id per customer and number: `conv_<wa_id>_<home>` is no
            // conversation (the home number's is `conv_<wa_id>`).
            if numbers::conversation_id(wa_id, number.as_deref(), home.as_deref()) != *id {
                return Err(no_conversation(id));
            }
            (id.clone(), wa_id.to_owned(), number, home)
        }
        None => {
            let Some(wa_id) = request.to.clone() else {
                return Err(ApiError::bad_request(
                    "conversationId is required (or to, with phoneNumberId, for a new customer)",
                ));
            };
            let number = match &request.phone_number_id {
                Some(number) => Some(number.clone()),
                None => default_number_of(scope, default.as_deref().or(recorded.as_deref())),
            };
            let home = recorded
                .clone()
                .or_else(|| default.clone())
                .or(number.clone());
            let id = numbers::conversation_id(&wa_id, number.as_deref(), home.as_deref());
            (id, wa_id, number, home)
        }
    };
    if !scope.allows_number(number.as_deref()) {
        return Err(match request.conversation_id {
            Some(_) => no_conversation(&conversation_id),
            None => unknown_number(),
        });
    }
    if let Some(requested) = &request.phone_number_id
        && number.as_deref() != Some(requested.as_str())
    {
        return Err(ApiError::bad_request(
            "phoneNumberId is not the conversation's business number",
        ));
    }
    let conversation = state
        .store
        .conversation(&conversation_id)
        .await
        .map_err(store_failure)?;
    // Stored with another number than its id says: never send through
    // either (a summary is created with its id's number).
    if let Some(stored) = conversation
        .as_ref()
        .and_then(|c| c.phone_number_id.as_deref())
        && Some(stored) != number.as_deref()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{conversation_id} is stored as business number {stored}'s, not {}",
                number.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    Ok(Route {
        conversation_id,
        wa_id,
        number,
        conversation,
        home_to_record: if recorded.is_none() { home } else { None },
    })
}

/// The number a new customer's first message goes from when none is
/// named: the default number, else the home number; for a token scoped to
/// other numbers, the first of its own.
fn default_number_of(scope: &Scope, default: Option<&str>) -> Option<String> {
    match scope {
        Scope::Numbers(own) if !scope.allows_number(default) => own.first().cloned(),
        _ => default.map(str::to_owned),
    }
}

/// A number's display number, as webhooks gave it (`None`: unknown).
async fn display_number(state: &ApiState, number: Option<&str>) -> Option<String> {
    let number = number?;
    match state.store.numbers().await {
        Ok(known) => known
            .into_iter()
            .find(|n| n.phone_number_id == number)
            .and_then(|n| n.business_number),
        // Only a name on the message: it goes out all the same.
        Err(e) => {
            tracing::warn!(error = %e, "business numbers not read");
            None
        }
    }
}

fn unknown_number() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown phone number")
}

/// A checked request.
struct Validated {
    /// Absent for a first message to a new customer (`to` instead).
    conversation_id: Option<String>,
    /// The customer's WhatsApp id (digits), if given.
    to: Option<String>,
    phone_number_id: Option<String>,
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
    let conversation_id = string("conversationId")?;
    let customer = match &conversation_id {
        Some(id) => match parse_conversation_id(id) {
            Some((wa_id, _)) => Some(wa_id.to_owned()),
            None => {
                return Err(ApiError::bad_request(
                    "conversationId must look like conv_<digits>",
                ));
            }
        },
        None => None,
    };
    let phone_number_id = parse_number(string("phoneNumberId")?)?;
    let draft = Draft::from_body(fields).map_err(|e| ApiError::bad_request(e.0))?;
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let to = string("to")?.map(|to| digits(&to));
    match (&customer, &to) {
        (Some(customer), Some(to)) if to != customer => {
            return Err(ApiError::bad_request(
                "to must be the conversation's customer",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "conversationId is required (or to, with phoneNumberId, for a new customer)",
            ));
        }
        (None, Some(to)) if !numbers::is_number_id(to) => {
            return Err(ApiError::bad_request(
                "to must be the customer's WhatsApp id (their number with country code)",
            ));
        }
        _ => {}
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
        to,
        phone_number_id,
        draft,
        from,
        key,
    })
}

/// A repeated key must come with the same message.
fn check_same(first: &Message, request: &Validated, conversation_id: &str) -> Result<(), ApiError> {
    if request.draft.is_repeated_by(conversation_id, first) {
        Ok(())
    } else {
        Err(key_reused())
    }
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

/// Why a message may not be sent, as an answer.
fn refused(refusal: Refusal) -> ApiError {
    let status = match refusal {
        Refusal::FirstNotTemplate(_) => StatusCode::NOT_FOUND,
        Refusal::NotAWhatsAppId | Refusal::WindowClosed => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, refusal.to_string())
}
