use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Serialize;
use wa_core::domain::{Conversation, Message};
use wa_core::numbers::{Scope, number_of};
use wa_service::http::ApiError;

use super::{
    PageQuery, check_conversation_id, check_visible, home_number, scope_of, store_failure,
};
use crate::ApiState;

/// `GET /api/conversations`: summaries, newest last message first.
#[utoipa::path(get, path = "/api/conversations", tag = "conversations",
    params(("limit" = Option<i64>, Query, description = "1..500, default 50"),
           ("before" = Option<String>, Query, description = "only conversations whose last message is older (ISO-8601 or Unix ms)"),
           ("beforeId" = Option<String>, Query, description = "with before: lastMessageId of the previous page's last conversation, so ties at `before` are not skipped"),
           ("phoneNumberId" = Option<String>, Query, description = "only this business number's conversations (a token scoped to numbers sees only its own)")),
    responses((status = 200, body = Vec<Conversation>), (status = 400, body = crate::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Vec<Conversation>>, ApiError> {
    let (page, number) = PageQuery::parse_with_number(query)?;
    let numbers = scope_of(scope).narrow(number.as_deref());
    if numbers.as_ref().is_some_and(Vec::is_empty) {
        // A number outside the token's scope: as if it had nothing.
        return Ok(Json(Vec::new()));
    }
    Ok(Json(
        state
            .store
            .conversations(page, numbers.as_deref())
            .await
            .map_err(store_failure)?,
    ))
}

/// `GET /api/conversations/{id}/messages`: the newest page, oldest first.
#[utoipa::path(get, path = "/api/conversations/{conversationId}/messages", tag = "conversations",
    params(("conversationId" = String, Path, description = "conv_<digits>"),
           ("limit" = Option<i64>, Query, description = "1..500, default 50"),
           ("before" = Option<String>, Query, description = "only messages older than this (ISO-8601 or Unix ms)"),
           ("beforeId" = Option<String>, Query, description = "with before: messageId of the previous page's oldest message, so messages in the same second are not skipped")),
    responses((status = 200, body = Vec<Message>), (status = 400, body = crate::openapi::ErrorBody),
              (status = 404, body = crate::openapi::ErrorBody, description = "a conversation of a business number outside the token's scope")))]
pub async fn messages(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    Path(conversation_id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Vec<Message>>, ApiError> {
    check_conversation_id(&conversation_id)?;
    let page = PageQuery::parse(query)?;
    check_visible(&state, &scope_of(scope), &conversation_id).await?;
    Ok(Json(
        state
            .store
            .messages(&conversation_id, page)
            .await
            .map_err(store_failure)?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MarkedRead {
    conversation_id: String,
    /// Messages that changed from `received` to `read`.
    updated: usize,
    /// WhatsApp was told (blue ticks for the customer): the newest of
    /// them was marked read there.
    read_receipt: bool,
}

/// `POST /api/conversations/{id}/read`: the business has read the
/// conversation; its inbound messages become `read`.
#[utoipa::path(post, path = "/api/conversations/{conversationId}/read", tag = "conversations",
    params(("conversationId" = String, Path, description = "conv_<digits>")),
    responses((status = 200, body = MarkedRead), (status = 400, body = crate::openapi::ErrorBody),
              (status = 404, body = crate::openapi::ErrorBody, description = "a conversation of a business number outside the token's scope")))]
pub async fn mark_read(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    Path(conversation_id): Path<String>,
) -> Result<Json<MarkedRead>, ApiError> {
    check_conversation_id(&conversation_id)?;
    check_visible(&state, &scope_of(scope), &conversation_id).await?;
    let (events, newest) = state
        .processor
        .mark_read(&conversation_id, chrono::Utc::now())
        .await
        .map_err(store_failure)?;
    // Into the event log, so every replica's sockets hear about it.
    state.relay.relay(&events).await;
    // WhatsApp marks the earlier messages read with the newest. Read here
    // either way: a receipt that did not go through is only logged.
    let mut read_receipt = false;
    if let (Some(graph), Some(newest)) = (&state.graph, newest) {
        // Through the number the customer wrote to.
        let home = home_number(&state).await.ok().flatten();
        let number = newest
            .phone_number_id
            .clone()
            .or_else(|| number_of(&conversation_id, home.as_deref()).map(str::to_owned))
            .or_else(|| graph.default_number().map(str::to_owned));
        match number.as_deref() {
            Some(number) if graph.has_token_for(number) => {
                match graph.mark_read_from(number, &newest.message_id).await {
                    Ok(()) => read_receipt = true,
                    Err(e) => tracing::warn!(
                        message_id = %newest.message_id, error = %e,
                        "WhatsApp was not told the conversation was read"
                    ),
                }
            }
            _ => tracing::warn!(
                message_id = %newest.message_id, phone_number_id = ?number,
                "WhatsApp was not told the conversation was read: no access token serves its business number"
            ),
        }
    }
    Ok(Json(MarkedRead {
        conversation_id,
        updated: events.len(),
        read_receipt,
    }))
}
