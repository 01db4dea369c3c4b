pub mod conversations;
pub mod events;
pub mod messages;
pub mod numbers;
pub mod search;
pub mod stats;

use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use wa_core::domain::{Page, is_conversation_id};
use wa_core::numbers::{Scope, is_number_id};
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
        .routes(routes!(numbers::list))
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
    /// Only this business number's (`GET /api/conversations`).
    #[serde(rename = "phoneNumberId")]
    phone_number_id: Option<String>,
}

/// `?phoneNumberId=` of the endpoints that narrow to one business number.
#[derive(Debug, Deserialize)]
pub struct NumberQuery {
    #[serde(rename = "phoneNumberId")]
    phone_number_id: Option<String>,
}

impl NumberQuery {
    pub fn parse(
        query: Result<axum::extract::Query<NumberQuery>, QueryRejection>,
    ) -> Result<Option<String>, ApiError> {
        let axum::extract::Query(query) =
            query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        parse_number(query.phone_number_id)
    }
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
        Self::parse_with_number(query).map(|(page, _)| page)
    }

    /// The page and `?phoneNumberId=` (checked: digits).
    pub fn parse_with_number(
        query: Result<axum::extract::Query<PageQuery>, QueryRejection>,
    ) -> Result<(Page, Option<String>), ApiError> {
        let axum::extract::Query(query) =
            query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let number = parse_number(query.phone_number_id)?;
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
        Ok((
            Page {
                limit,
                before,
                before_id,
            },
            number,
        ))
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

/// `phoneNumberId` as given: a phone number id (digits); empty counts as
/// absent.
pub fn parse_number(text: Option<String>) -> Result<Option<String>, ApiError> {
    match text {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) if is_number_id(&text) => Ok(Some(text)),
        Some(_) => Err(ApiError::bad_request(
            "phoneNumberId must be a phone number id (1 to 32 digits)",
        )),
    }
}

/// What the caller's token may see. `require_token` puts it in every
/// request it lets through; a router built without that guard checks no
/// tokens, so it serves everything.
pub fn scope_of(scope: Option<Extension<Scope>>) -> Scope {
    scope.map(|Extension(scope)| scope).unwrap_or_default()
}

/// The home number (`None`: nothing stored for any number yet).
pub async fn home_number(state: &ApiState) -> Result<Option<String>, ApiError> {
    state
        .processor
        .numbers()
        .home()
        .await
        .map_err(store_failure)
}

/// A conversation the caller may not see is answered as one that does not
/// exist: the same `404` whatever is stored.
pub fn no_conversation(conversation_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no conversation {conversation_id}"),
    )
}

/// `404` unless `scope` lets the caller see `conversation_id` (known by
/// its id alone: no store read beyond the cached home number).
pub async fn check_visible(
    state: &ApiState,
    scope: &Scope,
    conversation_id: &str,
) -> Result<(), ApiError> {
    if matches!(scope, Scope::All) {
        return Ok(());
    }
    let home = home_number(state).await?;
    if scope.allows_conversation(conversation_id, home.as_deref()) {
        Ok(())
    } else {
        Err(no_conversation(conversation_id))
    }
}

/// A store failure answered by its kind: `503` only when the database is
/// unavailable (or full), `422` when it refuses the data, `409` on a
/// concurrent change (see [`ApiError::from_store`]).
pub fn store_failure(e: StoreError) -> ApiError {
    ApiError::from_store(&e)
}
