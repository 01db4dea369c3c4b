use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use wa_core::domain::{Conversation, Message};
use wa_service::http::ApiError;

use super::{PageQuery, check_conversation_id, store_failure};
use crate::ApiState;

/// `GET /api/conversations`: summaries, newest last message first.
#[utoipa::path(get, path = "/api/conversations", tag = "conversations",
    params(("limit" = Option<i64>, Query, description = "1..500, default 50"),
           ("before" = Option<String>, Query, description = "only conversations whose last message is older (ISO-8601 or Unix ms)"),
           ("beforeId" = Option<String>, Query, description = "with before: lastMessageId of the previous page's last conversation, so ties at `before` are not skipped")),
    responses((status = 200, body = Vec<Conversation>), (status = 400, body = crate::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Vec<Conversation>>, ApiError> {
    let page = PageQuery::parse(query)?;
    Ok(Json(
        state
            .store
            .conversations(page, None)
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
    responses((status = 200, body = Vec<Message>), (status = 400, body = crate::openapi::ErrorBody)))]
pub async fn messages(
    State(state): State<ApiState>,
    Path(conversation_id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Vec<Message>>, ApiError> {
    check_conversation_id(&conversation_id)?;
    let page = PageQuery::parse(query)?;
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
    responses((status = 200, body = MarkedRead), (status = 400, body = crate::openapi::ErrorBody)))]
pub async fn mark_read(
    State(state): State<ApiState>,
    Path(conversation_id): Path<String>,
) -> Result<Json<MarkedRead>, ApiError> {
    check_conversation_id(&conversation_id)?;
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
        match graph.mark_read(&newest.message_id).await {
            Ok(()) => read_receipt = true,
            Err(e) => tracing::warn!(
                message_id = %newest.message_id, error = %e,
                "WhatsApp was not told the conversation was read"
            ),
        }
    }
    Ok(Json(MarkedRead {
        conversation_id,
        updated: events.len(),
        read_receipt,
    }))
}
