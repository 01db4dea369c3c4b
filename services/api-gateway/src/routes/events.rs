//! `GET /api/events?after=N&limit=M`: the event log, for clients without a
//! socket (and for catching up by hand).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use wa_broker::ReadError;
use wa_core::domain::Sequenced;
use wa_service::http::ApiError;

use crate::ApiState;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// The events after `after` (default 0: the oldest kept), oldest first:
/// `[{seq, event, data}]`, the same events Socket.IO clients get. `410`
/// when events after `after` are no longer kept (reload over REST).
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(("after" = Option<u64>, Query, description = "the last seq the client has (default 0)"),
           ("limit" = Option<usize>, Query, description = "1..1000, default 100")),
    responses((status = 200, body = Vec<crate::openapi::SequencedEvent>),
              (status = 400, body = crate::openapi::ErrorBody),
              (status = 410, body = crate::openapi::ErrorBody),
              (status = 503, body = crate::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<Sequenced>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("after must be a whole number (a seq)"))?,
    };
    let limit = super::parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    match state.relay.bus().read(after, limit).await {
        Ok(events) => Ok(Json(events)),
        Err(e @ (ReadError::Gone { .. } | ReadError::Ahead { .. })) => Err(ApiError::new(
            StatusCode::GONE,
            format!("{e}: reload over REST, then follow from the newest seq"),
        )),
        Err(ReadError::Broker(e)) => Err(ApiError::unavailable_because(
            "the event log is unavailable, retry later",
            &e,
        )),
    }
}
