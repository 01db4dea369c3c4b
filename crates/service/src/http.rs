//! HTTP pieces every service shares: the JSON error type, the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`) and shutdown on signals.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::LimitsConfig;
use wa_broker::{BrokerError, NotReady, Queue};
use wa_store::Store;
use wa_store::error::{Error as StoreError, ErrorKind as StoreErrorKind};

/// Every error a service answers with: a status and `{"error": "..."}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// A `503` saying in words what is unavailable; the `cause` (a driver's
    /// text, which can name hosts or users) goes to the log only.
    pub fn unavailable_because(message: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "{message}");
        Self::unavailable(message)
    }

    /// How a store error is answered, by its kind (see [`StoreErrorKind`]):
    ///
    /// - unavailable (`Transient`): `503` + `Retry-After`, retry later;
    /// - no room left (`out_of_space`, a full disk): `503` + `Retry-After`
    ///   too, as `/readyz` says at the same time (transient: it passes
    ///   once space is freed, and clients, load balancers and Meta retry a
    ///   `503`, where a `507` would be taken as final);
    /// - the data refused (`Rejected`: it would be refused again): `422`;
    /// - stored data that cannot be read back (`unreadable`): `500`;
    /// - a concurrent change (`Conflict`): `409`. Writers that can plan
    ///   again (the processor's commits) retry conflicts themselves; one
    ///   that reaches a request is answered so that the client retries.
    ///
    /// The body says what failed in words; the store's own text (a
    /// driver's, which can name hosts or users) goes to the log only.
    pub fn from_store(e: &StoreError) -> Self {
        match e.kind {
            _ if e.unreadable => {
                tracing::error!(error = %e, "stored data could not be read");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "stored data could not be read",
                )
            }
            _ if e.out_of_space => Self::unavailable_because(
                "the database has no room left (the disk is full), retry later",
                e,
            ),
            StoreErrorKind::Transient => {
                Self::unavailable_because("the database is unavailable, retry later", e)
            }
            StoreErrorKind::Rejected => {
                tracing::warn!(error = %e, "the database refused a request's data");
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "the database refuses this data",
                )
            }
            StoreErrorKind::Conflict => {
                tracing::info!(error = %e, "a concurrent change refused a request");
                Self::new(
                    StatusCode::CONFLICT,
                    "the same data was changed concurrently, retry",
                )
            }
        }
    }

    /// How a broker error is answered when it can't take `what` (e.g.
    /// "the webhook"): too large, `413`; no room (a full disk, JetStream
    /// out of storage), `503` + `Retry-After` at once, saying why in
    /// words; unavailable, `503` + `Retry-After`. `503` is what makes Meta
    /// deliver a webhook again later. The driver's text goes to the log
    /// only.
    pub fn from_broker(e: &BrokerError, what: &str) -> Self {
        match e {
            BrokerError::TooLarge(_) => {
                tracing::info!(error = %e, "the message queue refuses {what}");
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{what} is too large for the message queue"),
                )
            }
            BrokerError::Full { reason, .. } => {
                tracing::warn!(error = %e, "the message queue has no room for {what}");
                Self::unavailable(format!("cannot store {what} now ({reason}), retry later"))
            }
            BrokerError::Unavailable(_) => {
                tracing::warn!(error = %e, "the message queue cannot take {what}");
                Self::unavailable("the message queue is unavailable, retry later")
            }
        }
    }
}

/// See [`ApiError::from_store`].
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from_store(&e)
    }
}

/// `Retry-After` of a `503` that sets none: every refusal says when to
/// try again (Meta and load balancers have their own schedules; clients
/// of ours read it).
pub const RETRY_AFTER_SECS: u32 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = %self.message, "request failed");
        }
        let mut response = (self.status, Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        response
    }
}

/// Finishes a service's router with what every request gets: an
/// `x-request-id` (kept from the caller or generated), echoed in the
/// response and recorded in the request's log span; a JSON 404 for unknown
/// paths; a 500 instead of a dropped connection if a handler panics; a
/// time limit (408) and a bound on requests in flight (503); and JSON
/// bodies for every error (see [`crate::access::json_errors`]).
pub fn service(router: Router, limits: &LimitsConfig) -> Router {
    use crate::access::{InFlight, json_errors, limit_in_flight};
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::timeout::TimeoutLayer;
    use tower_http::trace::{DefaultOnResponse, TraceLayer};

    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &axum::http::Request<_>| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            // The path only: a query can carry a secret (`hub.verify_token`).
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        })
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    // Every service builds its router here before serving: its connection caps too.
    crate::server::ConnectionLimits::set_for_process(limits);
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(limits.request_timeout_secs.max(1)),
        ))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            InFlight::new(limits.max_requests_in_flight),
            limit_in_flight,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// A readiness check: `Err` names the dependency that is not reachable.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Ready when the queue can take and give payloads and, if given, the
/// store answers a ping.
pub fn readiness(queue: Arc<dyn Queue>, store: Option<Arc<dyn Store>>) -> ReadinessCheck {
    Arc::new(move || {
        let (queue, store) = (queue.clone(), store.clone());
        Box::pin(async move {
            // Which dependency, in words; its error text only in the log.
            match queue.ready().await {
                Ok(()) => {}
                Err(NotReady::Unreachable(e)) => {
                    tracing::warn!(error = %e, "not ready: the message queue");
                    return Err("the message queue is not reachable".to_owned());
                }
                Err(NotReady::CannotStore(reason)) => {
                    return Err(format!("the message queue cannot store: {reason}"));
                }
            }
            if let Some(store) = store
                && let Err(e) = store.ping().await
            {
                tracing::warn!(error = %e, "not ready: the database");
                return Err("the database is not reachable".to_owned());
            }
            Ok(())
        })
    })
}

/// The port a listener got (useful with port 0).
pub fn local_port(listener: &tokio::net::TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

/// `/healthz` (the process answers), `/readyz` (its dependencies answer)
/// and `/metrics` (Prometheus text).
pub fn ops_routes<S: Clone + Send + Sync + 'static>(ready: ReadinessCheck) -> Router<S> {
    // Install the recorder now, so metrics recorded before the first scrape count.
    let metrics = metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => Json(json!({"status": "ready"})).into_response(),
                        Err(e) => ApiError::unavailable(format!("not ready: {e}")).into_response(),
                    }
                }
            }),
        )
        .route("/metrics", get(move || async move { metrics.render() }))
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was set first; metrics then go there.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Longest a service takes to stop after SIGTERM: past it, whatever it was
/// finishing (a batch whose store is unreachable, a flush to a NATS server
/// that is gone) is left to be redelivered, and the process exits.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a service until SIGINT or SIGTERM, then gives it
/// [`SHUTDOWN_GRACE`] to stop gracefully before exiting anyway.
pub async fn run_until_signalled<F, Fut>(run: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    run_until_signalled_within(SHUTDOWN_GRACE, run).await
}

/// Like [`run_until_signalled`] with a longer `grace`: a service that sends
/// through WhatsApp waits for the answers in flight (up to the Graph
/// timeout) so that nothing is sent twice after a restart.
pub async fn run_until_signalled_within<F, Fut>(
    grace: std::time::Duration,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let token = shutdown_on_signals();
    let mut running = tokio::spawn(run(token.clone()));
    tokio::select! {
        result = &mut running => return result?,
        () = token.cancelled() => {}
    }
    match tokio::time::timeout(grace, &mut running).await {
        Ok(result) => result?,
        Err(_) => {
            tracing::warn!(
                ?grace,
                "not stopped within the grace period (a store, broker or WhatsApp not answering): exiting; unfinished work is redelivered"
            );
            // Blocking tasks (SQLite, file I/O) would hold the runtime up.
            std::process::exit(0);
        }
    }
}

/// A token cancelled on SIGINT or SIGTERM: the start of a graceful shutdown.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate => {}
        }
        tracing::info!("shutdown signal received");
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status, `Retry-After` and JSON body an error is answered with.
    async fn answer(error: ApiError) -> (StatusCode, bool, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let retry_after = response
            .headers()
            .contains_key(axum::http::header::RETRY_AFTER);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&body).unwrap_or_default();
        (status, retry_after, body)
    }

    #[tokio::test]
    async fn only_an_unavailable_store_is_a_503() {
        let driver = std::io::Error::other("connection refused by db.internal:27017");
        let cases = [
            (
                StoreError::transient("MongoDB: connection refused by db.internal")
                    .caused_by(driver),
                StatusCode::SERVICE_UNAVAILABLE,
                true,
                "the database is unavailable, retry later",
            ),
            (
                StoreError::out_of_space("SQLite: database or disk is full"),
                StatusCode::SERVICE_UNAVAILABLE,
                true,
                "the database has no room left (the disk is full), retry later",
            ),
            (
                StoreError::rejected("MongoDB: document too large"),
                StatusCode::UNPROCESSABLE_ENTITY,
                false,
                "the database refuses this data",
            ),
            (
                StoreError::unreadable("MongoDB: stored document is malformed"),
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                "stored data could not be read",
            ),
            (
                StoreError::conflict("MongoDB: WriteConflict"),
                StatusCode::CONFLICT,
                false,
                "the same data was changed concurrently, retry",
            ),
        ];
        for (error, status, retry_after, message) in cases {
            let text = error.to_string();
            let answered = answer(ApiError::from(error)).await;
            assert_eq!(answered.0, status, "{text}");
            assert_eq!(answered.1, retry_after, "{text}: Retry-After");
            assert_eq!(answered.2, serde_json::json!({"error": message}), "{text}");
        }
    }

    #[tokio::test]
    async fn a_broker_that_cannot_take_a_payload_is_a_503_unless_it_is_too_large() {
        let driver = || std::io::Error::other("nats://user:secret@nats.internal:4222 timed out");
        let cases = [
            (
                BrokerError::unavailable(driver()),
                StatusCode::SERVICE_UNAVAILABLE,
                true,
                "the message queue is unavailable, retry later",
            ),
            (
                BrokerError::Full {
                    reason: "JetStream is out of storage",
                    detail: wa_broker::Cause::of(driver()),
                },
                StatusCode::SERVICE_UNAVAILABLE,
                true,
                "cannot store the webhook now (JetStream is out of storage), retry later",
            ),
            (
                BrokerError::TooLarge(wa_broker::Cause::of(driver())),
                StatusCode::PAYLOAD_TOO_LARGE,
                false,
                "the webhook is too large for the message queue",
            ),
        ];
        for (error, status, retry_after, message) in cases {
            assert!(
                std::error::Error::source(&error).is_some(),
                "{error}: keeps the driver's error"
            );
            let answered = answer(ApiError::from_broker(&error, "the webhook")).await;
            assert_eq!(answered.0, status, "{error}");
            assert_eq!(answered.1, retry_after, "{error}: Retry-After");
            assert_eq!(answered.2, serde_json::json!({"error": message}), "{error}");
        }
    }
}
