//! `GET /api/events?after=N&limit=M`: the event log, for clients without a
//! socket (and for catching up by hand).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use wa_broker::ReadError;
use wa_core::domain::Sequenced;
use wa_core::numbers::Scope;
use wa_service::http::ApiError;

use super::{home_number, scope_of};
use crate::ApiState;
use crate::realtime::{of_home_number, visible};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// The `after` of the next request: the last `seq` read, which is past the
/// last one listed when a scoped token's page ends with other numbers'
/// events (or has none of its own).
const NEXT_AFTER: HeaderName = HeaderName::from_static("next-after");

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// The events after `after` (default 0: the oldest kept), oldest first:
/// `[{seq, event, data}]`, the same events Socket.IO clients get. A token
/// scoped to numbers gets their events only: `limit` events are read and
/// the others' left out, and `Next-After` says where the next page starts.
/// `410` when events after `after` are no longer kept (reload over REST).
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(("after" = Option<u64>, Query, description = "the last seq the client has (default 0); the previous answer's Next-After"),
           ("limit" = Option<usize>, Query, description = "events read: 1..1000, default 100")),
    responses((status = 200, body = Vec<crate::openapi::SequencedEvent>,
               headers(("Next-After" = u64, description = "the after of the next request: the last seq read (with a scoped token, possibly past the last listed)"))),
              (status = 400, body = crate::openapi::ErrorBody),
              (status = 410, body = crate::openapi::ErrorBody),
              (status = 503, body = crate::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("after must be a whole number (a seq)"))?,
    };
    let limit = super::parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let mut events = match state.relay.bus().read(after, limit).await {
        Ok(events) => events,
        Err(e @ (ReadError::Gone { .. } | ReadError::Ahead { .. })) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                format!("{e}: reload over REST, then follow from the newest seq"),
            ));
        }
        Err(ReadError::Broker(e)) => {
            return Err(ApiError::unavailable_because(
                "the event log is unavailable, retry later",
                &e,
            ));
        }
    };
    let next_after = events.last().map_or(after, |event| event.seq);
    let scope = scope_of(scope);
    if !matches!(scope, Scope::All) {
        // Only `conv_<wa_id>` events need the home number (cached once
        // recorded).
        let needs_home = events
            .iter()
            .any(|event| of_home_number(event.event.conversation_id()));
        let home = if needs_home {
            home_number(&state).await?
        } else {
            None
        };
        events.retain(|event| visible(&scope, &event.event, home.as_deref()));
    }
    Ok(listing(events, next_after))
}

fn listing(events: Vec<Sequenced>, next_after: u64) -> Response {
    let mut response = Json(events).into_response();
    response
        .headers_mut()
        .insert(NEXT_AFTER, HeaderValue::from(next_after));
    response
}
