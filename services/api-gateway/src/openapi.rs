//! The OpenAPI document of the REST API, served at `/api/openapi.json`.

use axum::Json;
use serde::Serialize;
use utoipa::OpenApi;

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "WhatsApp Web clone API",
        description = "Conversations, messages, sending and stats. Live events: Socket.IO `newMessage` and `statusUpdate` on the same port."
    ),
    paths(
        routes::conversations::list,
        routes::conversations::messages,
        routes::conversations::mark_read,
        routes::messages::send,
        routes::stats::stats,
    ),
    components(schemas(ErrorBody, shared::domain::StatusUpdate))
)]
pub struct ApiDoc;

/// Every error: `{"error": "<what is wrong>"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: String,
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
