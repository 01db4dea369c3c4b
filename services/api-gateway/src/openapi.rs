//! The OpenAPI document of the REST API, served at `/api/openapi.json`.

use axum::Json;
use serde::Serialize;
use utoipa::OpenApi;

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "WhatsApp Web clone API",
        description = "Conversations, messages, sending through WhatsApp, media, stats and the event log. Live events: Socket.IO `newMessage` and `statusUpdate` (with `seq`; resume with `auth: {lastSeq}`) on the same port."
    ),
    paths(
        routes::conversations::list,
        routes::conversations::messages,
        routes::conversations::mark_read,
        routes::messages::send,
        routes::stats::stats,
        routes::search::search,
        routes::events::list,
        crate::media::download,
        crate::media::upload,
    ),
    components(schemas(ErrorBody, wa_core::domain::StatusUpdate))
)]
pub struct ApiDoc;

/// An event of the log: `{seq, event: "newMessage" | "statusUpdate", data}`
/// (`data` is the message, or `{messageId, status, conversationId,
/// timestamp}`).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the shape; responses serialise `wa_core::domain::Sequenced`
pub struct SequencedEvent {
    seq: u64,
    event: String,
    data: serde_json::Value,
}

/// Every error: `{"error": "<what is wrong>"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: String,
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
