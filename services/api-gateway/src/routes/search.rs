//! `GET /api/search`: messages by their words, newest first, each with
//! what a client needs to show it in context.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use wa_core::domain::Message;
use wa_core::numbers::Scope;
use wa_core::search::{self, Piece};
use wa_service::http::ApiError;
use wa_store::{ErrorKind, SearchScope};

use super::{
    check_conversation_id, home_number, parse_limit, parse_number, scope_of, store_failure,
};
use crate::ApiState;

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// The words to find (2 to 200 characters; any script; case and
    /// accents ignored; the last word also as a prefix; quotes, `*` and
    /// operators are plain text).
    q: Option<String>,
    /// Only this conversation's messages.
    conversation_id: Option<String>,
    /// Only messages of this business number (a token scoped to numbers
    /// finds only its own numbers' messages).
    phone_number_id: Option<String>,
    /// Hits per page, 1 to 100 (default 20).
    limit: Option<String>,
    /// `next` of the previous page.
    before: Option<String>,
}

/// A page of hits, newest first; `next` is the `before` of the next page
/// (`null`: no more).
#[derive(Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    results: Vec<Hit>,
    next: Option<String>,
}

/// A message that matched, as the API shows messages, plus its
/// conversation's name and its text cut into pieces, those that matched
/// marked (`hit: true`): render them in order, bold where `hit`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hit {
    #[serde(flatten)]
    message: Message,
    conversation_name: String,
    highlight: Vec<Piece>,
}

#[utoipa::path(get, path = "/api/search", tag = "messages", params(SearchQuery),
    responses((status = 200, body = SearchResults),
              (status = 400, body = crate::openapi::ErrorBody, description = "q missing, of one character or without a word; a malformed conversationId, limit or before")))]
pub async fn search(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<SearchResults>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let words = search::Query::parse(query.q.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.0))?;
    if let Some(id) = &query.conversation_id {
        check_conversation_id(id)?;
    }
    let number = match query.phone_number_id {
        // Given but empty: refused, as before numbers had scopes.
        Some(id) if id.is_empty() => {
            return Err(ApiError::bad_request(
                "phoneNumberId must be a phone number id (1 to 32 digits)",
            ));
        }
        id => parse_number(id)?,
    };
    if query.before.as_ref().is_some_and(|b| b.len() > 600) {
        return Err(ApiError::bad_request(
            "before is not a cursor of this search",
        ));
    }
    let limit = parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let scope = scope_of(scope);
    let numbers = scope.narrow(number.as_deref());
    let hidden = match (&query.conversation_id, &scope) {
        (Some(id), Scope::Numbers(_)) => {
            let home = home_number(&state).await?;
            !scope.allows_conversation(id, home.as_deref())
        }
        _ => false,
    };
    if hidden || numbers.as_ref().is_some_and(Vec::is_empty) {
        // Outside the token's scope: nothing to find there.
        return Ok(Json(SearchResults {
            results: Vec::new(),
            next: None,
        }));
    }
    let scope = SearchScope {
        conversation_id: query.conversation_id,
        numbers,
        before: query.before.filter(|b| !b.is_empty()),
    };
    let page = state
        .store
        .search(&words, &scope, limit)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::Rejected => ApiError::bad_request(e.message),
            _ => store_failure(e),
        })?;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut results = Vec::with_capacity(page.messages.len());
    for message in page.messages {
        if !names.contains_key(&message.conversation_id) {
            let name = state
                .store
                .conversation(&message.conversation_id)
                .await
                .map_err(store_failure)?
                .map_or_else(|| format!("+{}", message.wa_id), |c| c.user_name);
            names.insert(message.conversation_id.clone(), name);
        }
        let conversation_name = names
            .get(&message.conversation_id)
            .cloned()
            .unwrap_or_default();
        let highlight = words.highlight(&search::searchable_text(&message));
        results.push(Hit {
            message,
            conversation_name,
            highlight,
        });
    }
    Ok(Json(SearchResults {
        results,
        next: page.next,
    }))
}
