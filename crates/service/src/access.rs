//! Who may use a service, and how much: bearer tokens, the refusal to
//! serve anyone on a public address by accident, per-IP rate limits, a
//! bound on requests in flight, and JSON bodies for every error.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::http::ApiError;
pub use wa_core::numbers::Scope;

/// The bearer tokens that open the API; none configured: open to anyone.
/// A token may be scoped to business numbers (`API_TOKENS_FILE` lines
/// `<token> numbers=<id>,<id>`): it then sees and sends through those
/// numbers only ([`Scope`]).
///
/// Kept as SHA-256 digests and compared in constant time, so neither the
/// comparison's timing nor its length reveals a token.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<([u8; 32], Scope)>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// From `API_TOKENS` (comma-separated, unscoped) and the lines of
    /// `API_TOKENS_FILE` (blank lines and `#` comments skipped; a line is
    /// a token, optionally followed by `numbers=<id>,<id>`).
    pub fn load(list: Option<&str>, file: Option<&Path>) -> anyhow::Result<Self> {
        let mut tokens: Vec<(String, Scope)> = list
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(|t| (t, Scope::All))
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("API_TOKENS_FILE {} cannot be read: {e}", path.display())
            })?;
            let lines = text.lines().map(str::trim);
            let before = tokens.len();
            for (n, line) in lines.enumerate() {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                tokens.push(token_line(line).map_err(|e| {
                    anyhow::anyhow!("API_TOKENS_FILE {} line {}: {e}", path.display(), n + 1)
                })?);
            }
            // Asked for tokens and got none: never open the API by mistake.
            if tokens.len() == before {
                anyhow::bail!("API_TOKENS_FILE {} holds no token", path.display());
            }
        }
        if let Some((short, _)) = tokens.iter().find(|(t, _)| t.len() < 16) {
            anyhow::bail!(
                "an API token has {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
                short.len()
            );
        }
        let digests: Vec<([u8; 32], Scope)> = tokens
            .into_iter()
            .map(|(t, scope)| (digest(&t), scope))
            .collect();
        // A token listed twice would keep its first scope, silently.
        let distinct: std::collections::HashSet<&[u8; 32]> =
            digests.iter().map(|(d, _)| d).collect();
        if distinct.len() != digests.len() {
            anyhow::bail!("an API token is listed twice (in API_TOKENS or API_TOKENS_FILE)");
        }
        Ok(Self(Arc::new(digests)))
    }

    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// What `presented` may see: `None` if it is none of the tokens (every
    /// one is compared); with no tokens configured, everything.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        if self.is_open() {
            return Some(Scope::All);
        }
        let presented = digest(presented);
        let mut found = None;
        for (token, scope) in self.0.iter() {
            if bool::from(token.ct_eq(&presented)) && found.is_none() {
                found = Some(scope.clone());
            }
        }
        found
    }

    /// The scope of a request's `Authorization: Bearer <token>`.
    pub fn scope_of_request(&self, headers: &HeaderMap) -> Option<Scope> {
        if self.is_open() {
            return Some(Scope::All);
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, token)| self.scope_of(token.trim()))
    }
}

/// `<token>` or `<token> numbers=<id>,<id>` (ids: 1 to 32 digits).
fn token_line(line: &str) -> anyhow::Result<(String, Scope)> {
    let mut words = line.split_whitespace();
    let token = words.next().unwrap_or_default().to_owned();
    let mut scope = Scope::All;
    for word in words {
        let Some(list) = word.strip_prefix("numbers=") else {
            anyhow::bail!("expected `<token>` or `<token> numbers=<id>,<id>`");
        };
        let numbers: std::collections::BTreeSet<String> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if numbers.is_empty() || !numbers.iter().all(|n| wa_core::numbers::is_number_id(n)) {
            anyhow::bail!("numbers= takes phone number ids (digits), comma-separated");
        }
        scope = Scope::Numbers(numbers);
    }
    Ok((token, scope))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `host` only accepts connections from this machine.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses to serve anyone on a public address by accident: without
/// `guard` (tokens, a webhook secret), a non-loopback `host` needs the
/// explicit `allowed` switch named `switch`.
pub fn check_exposure(
    host: &str,
    guarded: bool,
    allowed: bool,
    what: &str,
    switch: &str,
) -> Result<(), String> {
    match (guarded, is_loopback(host), allowed) {
        (true, _, _) => Ok(()),
        (false, true, _) => {
            tracing::warn!("{what} is open to anyone on this machine ({host})");
            Ok(())
        }
        (false, false, true) => {
            tracing::warn!("{what} is open to anyone who reaches {host} ({switch}=true)");
            Ok(())
        }
        (false, false, false) => Err(format!(
            "refusing to listen on {host}: {what} would be open to anyone. \
             Set {switch}=true to allow that, or listen on 127.0.0.1"
        )),
    }
}

/// Paths that need a token when tokens are set: the REST API (not the
/// webhook, which its signature guards) and the metrics.
fn needs_token(path: &str) -> bool {
    (path == "/metrics" || path == "/api" || path.starts_with("/api/")) && path != "/api/webhook"
}

/// What [`require_token`] checks: the tokens, and a per-IP limit on
/// failed authentications (`None`: no limit).
#[derive(Clone)]
pub struct TokenGuard {
    pub tokens: Tokens,
    pub failures: Option<PerIp>,
}

/// Middleware: `401` unless the request carries an admitted token; past
/// the per-IP rate, failed attempts get `429` (guessing tokens costs as
/// much as any other request, though it never reaches the API's limiter).
pub async fn require_token(
    State(guard): State<TokenGuard>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = &guard.tokens;
    let scope = tokens.scope_of_request(request.headers());
    if let Some(scope) = scope {
        if matches!(scope, Scope::Numbers(_)) && request.uri().path() == "/metrics" {
            return scoped_metrics();
        }
        // What the handlers narrow their answers to.
        let mut request = request;
        request.extensions_mut().insert(scope);
        return next.run(request).await;
    }
    if !needs_token(request.uri().path()) {
        return next.run(request).await;
    }
    if let Some(failures) = &guard.failures
        && !failures.admits(&request)
    {
        return too_many("too many failed authentications; retry in 1 s");
    }
    unauthorized()
}

/// The metrics count every number's messages: not for a token scoped to
/// some.
fn scoped_metrics() -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "a token scoped to numbers cannot read /metrics (all numbers' counters)",
    )
    .into_response()
}

fn unauthorized() -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or unknown bearer token (Authorization: Bearer <token>)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Who may read `/metrics` of the services without a REST API (the
/// processor and the webhook-gateway), which listen on all addresses.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsAccess {
    /// Bearer tokens that may read /metrics, comma-separated (the
    /// api-gateway's API_TOKENS); unset: /metrics answers clients on this
    /// host (loopback) only.
    #[arg(long, env = "API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// A file of such tokens, one per line (added to API_TOKENS).
    #[arg(long, env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<std::path::PathBuf>,
}

impl MetricsAccess {
    pub fn tokens(&self) -> anyhow::Result<Tokens> {
        Tokens::load(self.api_tokens.as_deref(), self.api_tokens_file.as_deref())
    }
}

/// Middleware: `/metrics` needs a token when tokens are set, else a
/// client on this host; everything else passes.
pub async fn guard_metrics(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/metrics" {
        return next.run(request).await;
    }
    if !tokens.is_open() {
        return match tokens.scope_of_request(request.headers()) {
            Some(Scope::All) => next.run(request).await,
            Some(Scope::Numbers(_)) => scoped_metrics(),
            None => unauthorized(),
        };
    }
    let local = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|peer| peer.0.ip().is_loopback());
    if local {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "without API_TOKENS, /metrics answers clients on this host only; set API_TOKENS to scrape it from elsewhere",
    )
    .into_response()
}

/// `429` with `Retry-After: 1`.
fn too_many(why: &str) -> Response {
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, why).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Per-IP request rate limits on the REST API.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Requests per second, sustained; 0 turns the limit off.
    pub per_second: u32,
    /// Requests allowed at once above the rate.
    pub burst: u32,
    /// Take the client's address from the last `X-Forwarded-For` entry
    /// (the one the proxy in front of us added) instead of the peer's.
    pub trust_forwarded: bool,
}

/// The client address a request is limited by.
#[derive(Debug, Clone, Copy)]
struct ClientIp {
    trust_forwarded: bool,
}

impl tower_governor::key_extractor::KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(
        &self,
        request: &axum::http::Request<T>,
    ) -> Result<Self::Key, tower_governor::GovernorError> {
        let forwarded = || {
            request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|ip| ip.trim().parse().ok())
        };
        let peer = || {
            request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip())
        };
        Ok(self
            .trust_forwarded
            .then(forwarded)
            .flatten()
            .or_else(peer)
            // Without an address (a router called in-process): one bucket.
            .unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }
}

/// A router limited per client IP (`429` with `Retry-After` past the
/// limit); `None` when the limit is off.
pub fn rate_limited(router: axum::Router, limit: RateLimit) -> anyhow::Result<axum::Router> {
    if limit.per_second == 0 {
        return Ok(router);
    }
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .period(Duration::from_secs(1) / limit.per_second)
        .burst_size(limit.burst.max(1))
        .key_extractor(ClientIp {
            trust_forwarded: limit.trust_forwarded,
        })
        .finish()
        .ok_or_else(|| anyhow::anyhow!("invalid rate limit {limit:?}"))?;
    let config = Arc::new(config);
    // Forget idle clients now and then, so memory stays bounded by the
    // clients of the last minute.
    let limiter = config.limiter().clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            limiter.retain_recent();
        }
    });
    let layer = tower_governor::GovernorLayer::new(config).error_handler(too_many_requests);
    Ok(router.layer(layer))
}

fn too_many_requests(error: tower_governor::GovernorError) -> Response<Body> {
    match error {
        tower_governor::GovernorError::TooManyRequests { wait_time, .. } => {
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many requests; retry in {} s", wait_time.max(1)),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait_time.max(1)));
            response
        }
        other => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()).into_response()
        }
    }
}

/// A per-client-IP rate, for requests that cost the service without
/// reaching the REST API's limiter: new Socket.IO sessions and failed
/// authentications.
#[derive(Clone)]
pub struct PerIp {
    limiter: Arc<governor::DefaultKeyedRateLimiter<IpAddr>>,
    key: ClientIp,
}

impl PerIp {
    /// `None` when the limit is off.
    pub fn new(limit: RateLimit) -> Option<Self> {
        let per_second = std::num::NonZeroU32::new(limit.per_second)?;
        let burst = std::num::NonZeroU32::new(limit.burst.max(1))?;
        let quota = governor::Quota::per_second(per_second).allow_burst(burst);
        let limiter = Arc::new(governor::RateLimiter::keyed(quota));
        let forget = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                match forget.upgrade() {
                    Some(limiter) => limiter.retain_recent(),
                    None => return,
                }
            }
        });
        Some(Self {
            limiter,
            key: ClientIp {
                trust_forwarded: limit.trust_forwarded,
            },
        })
    }

    /// Counts the request against its client's rate: `false` past it.
    fn admits(&self, request: &Request) -> bool {
        use tower_governor::key_extractor::KeyExtractor;
        match self.key.extract(request) {
            Ok(ip) => self.limiter.check_key(&ip).is_ok(),
            Err(_) => true,
        }
    }
}

/// Middleware: limits new Socket.IO sessions (handshakes: requests under
/// `/socket.io/` without a session id) per IP; they cost memory until they
/// time out whether or not they then authenticate. Requests of established
/// sessions are not limited.
pub async fn limit_handshakes(
    State(handshakes): State<PerIp>,
    request: Request,
    next: Next,
) -> Response {
    let uri = request.uri();
    let handshake = uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|p| p.starts_with("sid="));
    if handshake && !handshakes.admits(&request) {
        return too_many("too many new connections; retry in 1 s");
    }
    next.run(request).await
}

/// Middleware state: requests a service works on at once; past that it
/// answers `503` at once rather than queueing without bound.
#[derive(Clone)]
pub struct InFlight(Arc<Semaphore>);

impl InFlight {
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Semaphore::new(limit.max(1))))
    }
}

pub async fn limit_in_flight(
    State(in_flight): State<InFlight>,
    request: Request,
    next: Next,
) -> Response {
    // Health checks are answered whatever the load (a replica that is
    // merely busy must not be taken out of service).
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    match in_flight.0.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            let mut response =
                ApiError::unavailable("too many requests in progress; retry shortly")
                    .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// Largest error body read to turn it into JSON.
const ERROR_TEXT_LIMIT: usize = 4096;

/// Middleware: every error answer is JSON `{"error": ...}` (axum, tower and
/// the extractors answer some with plain text or nothing: `405`, `408`,
/// `413`, `415`, `422`), and a `5xx` also carries the request id, so a
/// report can be matched with the log.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // Every refusal says when to try again (a layer's 503 sets none).
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(crate::http::RETRY_AFTER_SECS.into());
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json && !status.is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_LIMIT)
        .await
        .unwrap_or_default();
    let mut object = match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(object)) if is_json => object,
        _ => {
            let text = String::from_utf8_lossy(&text).trim().to_owned();
            let message = if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_lowercase()
            } else {
                text
            };
            let mut object = serde_json::Map::new();
            object.insert("error".to_owned(), Value::String(message));
            object
        }
    };
    if status.is_server_error()
        && let Some(id) = request_id
    {
        object.insert("requestId".to_owned(), Value::String(id));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json!(object).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_token_is_admitted() {
        let tokens = Tokens::load(
            Some("first-token-0123456789, second-token-0123456789"),
            None,
        )
        .unwrap_or_default();
        assert!(!tokens.is_open());
        assert!(tokens.scope_of("first-token-0123456789").is_some());
        assert!(tokens.scope_of("second-token-0123456789").is_some());
        assert!(tokens.scope_of("first-token-012345678").is_none());
        assert!(tokens.scope_of("").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer second-token-0123456789"),
        );
        assert!(tokens.scope_of_request(&headers).is_some());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic second-token-0123456789"),
        );
        assert!(tokens.scope_of_request(&headers).is_none());
        assert!(Tokens::load(Some(" , "), None).is_ok_and(|t| t.is_open()));
        assert!(Tokens::load(Some("short"), None).is_err());
        // A token may start with '#' in the list; a file needs one token.
        assert!(Tokens::load(Some("#starts-with-a-hash-0123"), None).is_ok_and(|t| !t.is_open()));
        let file = std::env::temp_dir().join(format!("tokens-{}", std::process::id()));
        std::fs::write(&file, "# only a comment\n\n").unwrap_or_default();
        assert!(Tokens::load(None, Some(&file)).is_err());
        std::fs::write(&file, "# the frontend\nfile-token-0123456789abcdef\n").unwrap_or_default();
        assert!(
            Tokens::load(None, Some(&file))
                .is_ok_and(|t| t.scope_of("file-token-0123456789abcdef").is_some())
        );
        // Scoped lines; a token listed twice is refused.
        std::fs::write(
            &file,
            "all-numbers-0123456789\nscoped-token-0123456789 numbers=12,34\n",
        )
        .unwrap_or_default();
        let scoped = Tokens::load(None, Some(&file)).unwrap_or_default();
        assert_eq!(scoped.scope_of("all-numbers-0123456789"), Some(Scope::All));
        assert_eq!(
            scoped.scope_of("scoped-token-0123456789"),
            Some(Scope::Numbers(["12".to_owned(), "34".to_owned()].into()))
        );
        assert_eq!(scoped.scope_of("unknown-token-0123456789"), None);
        assert!(Tokens::load(Some("scoped-token-0123456789"), Some(&file)).is_err());
        for bad in [
            "t-0123456789abcdef numbers=",
            "t-0123456789abcdef numbers=1a",
            "t-0123456789abcdef extra",
        ] {
            std::fs::write(&file, bad).unwrap_or_default();
            assert!(Tokens::load(None, Some(&file)).is_err(), "{bad}");
        }
        let mut upper = HeaderMap::new();
        upper.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER first-token-0123456789"),
        );
        assert!(tokens.scope_of_request(&upper).is_some());
    }

    #[test]
    fn a_public_address_needs_a_guard_or_the_switch() {
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"] {
            assert!(is_loopback(host), "{host}");
            assert!(check_exposure(host, false, false, "the API", "ALLOW_ANONYMOUS").is_ok());
        }
        for host in ["0.0.0.0", "::", "10.0.0.5", "example.com"] {
            assert!(!is_loopback(host), "{host}");
            let refused = check_exposure(host, false, false, "the API", "ALLOW_ANONYMOUS");
            assert!(refused.is_err_and(|e| e.contains("ALLOW_ANONYMOUS=true")));
            assert!(check_exposure(host, true, false, "the API", "ALLOW_ANONYMOUS").is_ok());
            assert!(check_exposure(host, false, true, "the API", "ALLOW_ANONYMOUS").is_ok());
        }
    }

    /// Without tokens, /metrics of the processor and webhook-gateway
    /// answers clients on this host only; other paths pass.
    #[tokio::test]
    async fn metrics_without_tokens_answer_loopback_clients_only() {
        use tower::ServiceExt;
        let tokens = Tokens::load(None, None).unwrap();
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(|| async { "m" }))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(tokens, guard_metrics));
        let from = |path: &str, ip: [u8; 4]| {
            let mut request = Request::builder().uri(path).body(Body::empty()).unwrap();
            request.extensions_mut().insert(axum::extract::ConnectInfo(
                std::net::SocketAddr::from((ip, 40000)),
            ));
            request
        };
        let status = |request: Request| {
            let app = app.clone();
            async move { app.oneshot(request).await.unwrap().status() }
        };
        assert_eq!(
            status(from("/metrics", [127, 0, 0, 1])).await,
            StatusCode::OK
        );
        assert_eq!(
            status(from("/metrics", [10, 1, 2, 3])).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(from("/healthz", [10, 1, 2, 3])).await,
            StatusCode::OK
        );
    }

    /// With tokens (shared with the api-gateway), /metrics of the processor
    /// and webhook-gateway is for unscoped tokens only, as the
    /// api-gateway's is.
    #[tokio::test]
    async fn metrics_with_tokens_are_for_unscoped_tokens_only() {
        use tower::ServiceExt;
        let file = std::env::temp_dir().join(format!("metrics-tokens-{}", std::process::id()));
        std::fs::write(
            &file,
            "all-numbers-0123456789\nscoped-token-0123456789 numbers=12\n",
        )
        .unwrap();
        let tokens = Tokens::load(None, Some(&file)).unwrap();
        std::fs::remove_file(&file).ok();
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(|| async { "m" }))
            .layer(axum::middleware::from_fn_with_state(tokens, guard_metrics));
        let status = |token: &str| {
            let request = Request::builder()
                .uri("/metrics")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let app = app.clone();
            async move { app.oneshot(request).await.unwrap().status() }
        };
        assert_eq!(status("all-numbers-0123456789").await, StatusCode::OK);
        assert_eq!(
            status("scoped-token-0123456789").await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status("unknown-token-0123456789").await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn the_api_and_metrics_need_a_token_but_not_health_or_the_webhook() {
        for path in [
            "/api/conversations",
            "/api/messages",
            "/api/events",
            "/metrics",
            "/api",
        ] {
            assert!(needs_token(path), "{path}");
        }
        for path in [
            "/healthz",
            "/readyz",
            "/webhook",
            "/api/webhook",
            "/socket.io/",
        ] {
            assert!(!needs_token(path), "{path}");
        }
    }
}
