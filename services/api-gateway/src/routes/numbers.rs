//! `GET /api/numbers`: the business numbers the deployment serves.

use axum::extract::State;
use axum::{Extension, Json};
use wa_core::numbers::{BusinessNumber, Scope};
use wa_service::http::ApiError;

use super::{scope_of, store_failure};
use crate::ApiState;

/// The numbers webhooks came for (with their conversations and unread
/// messages), plus the numbers WhatsApp is configured to send from that
/// nothing came for yet (with zero counts); a token scoped to numbers
/// sees only its own.
#[utoipa::path(get, path = "/api/numbers", tag = "numbers",
    responses((status = 200, body = Vec<BusinessNumber>)))]
pub async fn list(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
) -> Result<Json<Vec<BusinessNumber>>, ApiError> {
    let mut numbers = state.store.numbers().await.map_err(store_failure)?;
    if let Some(graph) = &state.graph {
        let mut configured: Vec<&str> = graph
            .default_number()
            .into_iter()
            .chain(graph.numbers_with_own_token())
            .collect();
        configured.sort_unstable();
        configured.dedup();
        for number in configured {
            if !numbers.iter().any(|n| n.phone_number_id == number) {
                numbers.push(BusinessNumber {
                    phone_number_id: number.to_owned(),
                    business_number: None,
                    conversations: 0,
                    unread_count: 0,
                });
            }
        }
    }
    let scope = scope_of(scope);
    numbers.retain(|n| scope.allows_number(Some(&n.phone_number_id)));
    Ok(Json(numbers))
}
