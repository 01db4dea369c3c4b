//! A byte budget for webhook bodies in memory: a burst of large webhooks
//! is answered 503 (Meta retries) before the allocator fails, rather than
//! the process dying with every request in flight.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use wa_service::http::ApiError;

/// Counted in KiB, so that a budget of any size fits a semaphore's permits.
const UNIT: usize = 1024;

#[derive(Clone, Debug)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    total: u32,
    /// What a body of unknown length counts as.
    body_limit: usize,
}

impl BodyBudget {
    pub fn new(bytes: usize, body_limit: usize) -> Self {
        let total = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
            body_limit,
        }
    }

    /// Units a body of `length` bytes takes (all of them at most: a body
    /// larger than the whole budget still passes when alone).
    fn units_for(&self, length: usize) -> u32 {
        u32::try_from(length.div_ceil(UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total)
    }
}

/// Middleware on the webhook routes: a POST takes its body's size from
/// the budget until it is answered; without room, 503 at once.
pub async fn limit_body_memory(
    State(budget): State<BodyBudget>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        // Unknown (chunked): as much as it may be; longer is refused (413).
        .map_or(budget.body_limit, |n| n.min(budget.body_limit));
    match budget
        .units
        .clone()
        .try_acquire_many_owned(budget.units_for(length))
    {
        Ok(_held) => next.run(request).await,
        Err(_) => {
            metrics::counter!("webhooks_rejected_total", "status" => "503").increment(1);
            metrics::counter!("webhook_body_budget_exhausted_total").increment(1);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many webhook bytes in flight (BODY_BUDGET_BYTES), retry later",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_takes_its_size_and_never_more_than_the_budget() {
        let budget = BodyBudget::new(10 * UNIT, 4 * 1024 * 1024);
        assert_eq!(budget.units_for(0), 1);
        assert_eq!(budget.units_for(UNIT + 1), 2);
        assert_eq!(budget.units_for(100 * UNIT), 10);
    }
}
