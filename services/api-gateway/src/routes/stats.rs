use axum::Json;
use axum::extract::State;
use wa_core::domain::Stats;
use wa_service::http::ApiError;

use super::store_failure;
use crate::ApiState;

/// `GET /api/stats`: message and conversation totals, messages per status.
#[utoipa::path(get, path = "/api/stats", tag = "stats", responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<ApiState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(state.store.stats(None).await.map_err(store_failure)?))
}
