use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use wa_core::domain::Stats;
use wa_core::numbers::Scope;
use wa_core::plan::counts::Counts;
use wa_service::http::ApiError;

use super::{NumberQuery, scope_of, store_failure};
use crate::ApiState;

/// `GET /api/stats`: message and conversation totals, messages per status
/// (of one business number with `?phoneNumberId=`; of its own numbers only
/// for a token scoped to numbers).
#[utoipa::path(get, path = "/api/stats", tag = "stats",
    params(("phoneNumberId" = Option<String>, Query, description = "only this business number's messages and conversations (echoed back)")),
    responses((status = 200, body = Stats), (status = 400, body = crate::openapi::ErrorBody)))]
pub async fn stats(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    query: Result<Query<NumberQuery>, QueryRejection>,
) -> Result<Json<Stats>, ApiError> {
    let requested = NumberQuery::parse(query)?;
    let scope = scope_of(scope);
    let numbers = scope.narrow(requested.as_deref());
    if numbers.as_ref().is_some_and(Vec::is_empty) {
        // A number outside the token's scope: as if it had nothing.
        return Ok(Json(Stats {
            phone_number_id: requested,
            ..Counts::default().to_stats(0)
        }));
    }
    let mut stats = state
        .store
        .stats(numbers.as_deref())
        .await
        .map_err(store_failure)?;
    if let Some([only]) = numbers.as_deref() {
        stats.phone_number_id = Some(only.clone());
    }
    if !matches!(scope, Scope::All) {
        // Refused webhook items belong to no number a token can be
        // scoped to.
        stats.rejected_items = 0;
    }
    Ok(Json(stats))
}
