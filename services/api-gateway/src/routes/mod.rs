pub mod conversations;
pub mod events;
pub mod messages;
pub mod search;
pub mod stats;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::QueryRejection;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use wa_core::domain::{Page, is_conversation_id};
use wa_service::http::ApiError;
use wa_store::StoreError;

use crate::ApiState;

/// The REST routes and their OpenAPI operations, from one list: each
/// handler's `#[utoipa::path]` gives both its route (method and path) and
/// its part of the document. `upload_limit`: the largest media upload.
pub fn rest(upload_limit: usize) -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(conversations::list))
        .routes(routes!(conversations::messages))
        .routes(routes!(conversations::mark_read))
        .routes(routes!(messages::send))
        .routes(routes!(stats::stats))
        .routes(routes!(search::search))
        .routes(routes!(events::list))
        .routes(routes!(crate::media::download))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Files are larger than any other request.
        .routes(routes!(crate::media::upload).layer(DefaultBodyLimit::max(upload_limit)))
}

/// The REST API with its state, and `/api/openapi.json` serving the
/// document its routes were built with.
pub fn router(state: ApiState) -> Router {
    let (router, document) = rest(state.media.upload_limit()).split_for_parts();
    let document = std::sync::Arc::new(document);
    router
        .route(
            "/api/openapi.json",
            get(move || crate::openapi::document(document.clone()))
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(state)
}

/// `?limit=&before=` of the listing endpoints.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    limit: Option<String>,
    before: Option<String>,
    #[serde(rename = "beforeId")]
    before_id: Option<String>,
}

/// Largest REST request body (a message's text is far smaller).
pub const BODY_LIMIT: usize = 64 * 1024;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// `?limit=`: a whole number from 1 to `max`; `default` when absent.
pub(crate) fn parse_limit<T>(text: Option<&str>, default: T, max: T) -> Result<T, ApiError>
where
    T: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display,
{
    match text {
        None | Some("") => Ok(default),
        Some(text) => text
            .parse::<T>()
            .ok()
            .filter(|n| *n >= T::from(1) && *n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be a whole number from 1 to {max}"))
            }),
    }
}

impl PageQuery {
    pub fn parse(
        query: Result<axum::extract::Query<PageQuery>, QueryRejection>,
    ) -> Result<Page, ApiError> {
        let axum::extract::Query(query) =
            query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let limit = parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
        let before = match query.before.as_deref() {
            None | Some("") => None,
            Some(text) => Some(parse_time(text).ok_or_else(|| {
                ApiError::bad_request("before must be an ISO-8601 time (e.g. 2025-08-06T12:00:00Z) or Unix milliseconds, in years 1 to 9999")
            })?),
        };
        let before_id = match query.before_id {
            None => None,
            Some(id) if before.is_some() && !id.is_empty() && id.len() <= 256 => Some(id),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "beforeId goes with before: the id of the last item of the previous page (at most 256 characters)",
                ));
            }
        };
        Ok(Page {
            limit,
            before,
            before_id,
        })
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            text.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
        })
        // What a BSON date (and every store) can hold.
        .filter(|t| (1..=9999).contains(&t.year()))
}

pub fn check_conversation_id(id: &str) -> Result<(), ApiError> {
    if is_conversation_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "conversationId must look like conv_<digits>",
        ))
    }
}

/// A store failure answered by its kind: `503` only when the database is
/// unavailable (or full), `422` when it refuses the data, `409` on a
/// concurrent change (see [`ApiError::from_store`]).
pub fn store_failure(e: StoreError) -> ApiError {
    ApiError::from_store(&e)
}
