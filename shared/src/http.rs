//! HTTP pieces every service shares: the JSON error type, the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`) and shutdown on signals.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::Queue;
use crate::store::Store;

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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = %self.message, "request failed");
        }
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

/// Finishes a service's router with what every request gets: an
/// `x-request-id` (kept from the caller or generated), echoed in the
/// response and recorded in the request's log span; a JSON 404 for unknown
/// paths; and a 500 instead of a dropped connection if a handler panics.
pub fn service(router: Router) -> Router {
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::{DefaultOnResponse, TraceLayer};

    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &axum::http::Request<_>| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
        })
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(CatchPanicLayer::new())
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
            queue.ready().await?;
            match store {
                Some(store) => store.ping().await.map_err(|e| e.to_string()),
                None => Ok(()),
            }
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

/// A token cancelled on SIGINT or SIGTERM: the start of a graceful shutdown.
pub fn shutdown_on_signals() -> CancellationToken {
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
