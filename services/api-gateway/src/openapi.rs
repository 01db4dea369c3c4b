//! The OpenAPI document of the REST API, served at `/api/openapi.json`.
//!
//! Its paths are not listed here: the router adds each route and its
//! operation from the same `#[utoipa::path]` ([`crate::routes::rest`]), so
//! the document and the routes cannot drift apart.

use std::sync::Arc;

use axum::Json;
use serde::Serialize;
use utoipa::OpenApi;

/// What the document says besides its paths: its title and description,
/// and the schemas no operation names.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "WhatsApp Web clone API",
        description = "Conversations, messages, sending through WhatsApp, media, stats, business numbers and the event log. A token scoped to business numbers sees only theirs: anything of another number answers as if it did not exist. Live events: Socket.IO `newMessage` and `statusUpdate` (with `seq`; resume with `auth: {lastSeq}`) on the same port."
    ),
    components(schemas(ErrorBody, wa_core::domain::StatusUpdate))
)]
pub struct ApiDoc;

impl ApiDoc {
    /// The whole document: this, plus every route's operation.
    pub fn document() -> utoipa::openapi::OpenApi {
        crate::routes::rest(0).into_openapi()
    }
}

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

/// `GET /api/openapi.json`: the document the router was built with.
pub async fn document(document: Arc<utoipa::openapi::OpenApi>) -> Json<utoipa::openapi::OpenApi> {
    Json(utoipa::openapi::OpenApi::clone(&document))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every REST route is documented with its method (the router and the
    /// document come from one list), and the schemas it names are there.
    #[test]
    fn every_route_is_documented() {
        let document = serde_json::to_value(ApiDoc::document()).unwrap_or_default();
        let mut operations: Vec<String> = document["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(path, item)| {
                let methods = item.as_object().into_iter().flatten();
                methods.map(move |(method, _)| format!("{method} {path}"))
            })
            .collect();
        operations.sort();
        assert_eq!(
            operations,
            [
                "get /api/conversations",
                "get /api/conversations/{conversationId}/messages",
                "get /api/events",
                "get /api/media/{mediaId}",
                "get /api/numbers",
                "get /api/search",
                "get /api/stats",
                "post /api/conversations/{conversationId}/read",
                "post /api/media",
                "post /api/messages",
            ]
        );
        let schemas = &document["components"]["schemas"];
        for schema in [
            "Conversation",
            "Message",
            "Stats",
            "ErrorBody",
            "StatusUpdate",
            "BusinessNumber",
        ] {
            assert!(schemas.get(schema).is_some(), "{schema} is documented");
        }
    }
}
