//! `FakeGraph`: a local stand-in for Meta's Graph API as the WhatsApp Cloud
//! API documents it (send a message, mark a message read, retrieve /
//! download / upload / delete media), for integration tests of the backend's
//! outbound path.
//!
//! It checks every request against the documented shape and answers like
//! Graph does: accepted sends get `{"messaging_product","contacts","messages"}`,
//! refusals get Graph's error body
//! `{"error":{"message","type","code","error_data"?,"error_subcode"?,"fbtrace_id"}}`.
//! A request that breaks the documented shape (wrong path, method, version,
//! token, content type or JSON) is answered with the error Graph would give
//! and listed by [`FakeGraph::invalid`], which tests assert is empty.
//!
//! Sources (read through the search index): Meta's *Send messages* / *Text*,
//! *Media messages*, *Template*, *Reaction* pages, *Mark messages as read*,
//! *Media* reference (upload, retrieve URL, download, delete) and *WhatsApp
//! error codes* (HTTP statuses: 190 → 401, 100 / 131047 / 131026 → 400,
//! 130429 → 429, 131000 → 500); the example bodies of 130429 and 131047 are
//! Meta's own. The media-URL answer follows a recorded real response
//! (`sha256` as 64 lowercase hex digits, `file_size` as a JSON number; the
//! inbound webhook's `sha256` is base64, so a client checking the hash must
//! accept both). An unknown path, method or object gets Graph's
//! "Unsupported get/post request" (GraphMethodException, code 100, subcode
//! 33) with HTTP 400, as Graph answers it, not 404; an unknown media id is
//! answered so too but is not counted as invalid (media expire at Meta).
//!
//! It serves several business numbers, as one Meta app does:
//! [`PHONE_NUMBER_ID`] and [`SECOND_PHONE_NUMBER_ID`] with [`TOKEN`], and
//! any number given its own token ([`FakeGraph::with_number_token`]), which
//! then is the only token that serves it. A token the fake does not know
//! gets code 190 (HTTP 401, "Invalid OAuth access token"); a token it knows
//! but that does not serve the number (or the media's number) gets code 10
//! (HTTP 403, OAuthException, "Permission denied" in Meta's error table).
//! Media belong to the number they were uploaded on or added for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use sha2::Digest;

/// The bearer token of every number without its own (`WHATSAPP_ACCESS_TOKEN`).
pub const TOKEN: &str = "EAAG-fake-graph-token-0123456789";
/// The default business number (`WHATSAPP_PHONE_NUMBER_ID` in [`FakeGraph::env`]).
pub const PHONE_NUMBER_ID: &str = "106540352242922";
/// A second business number of the same app, served by [`TOKEN`] too
/// (unless given its own token).
pub const SECOND_PHONE_NUMBER_ID: &str = "106540352242923";
/// A token for tests to give a number of its own
/// ([`FakeGraph::with_number_token`]); not served until given.
pub const SECOND_NUMBER_TOKEN: &str = "EAAG-fake-graph-number-token-9876543210";
/// The Graph API version the fake serves; other versions are refused.
pub const VERSION: &str = "v23.0";

/// Largest request body accepted (Meta's media limit is 100 MB).
const BODY_LIMIT: usize = 128 * 1024 * 1024;
/// `text.body` limit, in characters.
const TEXT_BODY_MAX: usize = 4096;
/// Media `caption` limit, in characters.
const CAPTION_MAX: usize = 1024;
/// `biz_opaque_callback_data` limit, in characters.
const CALLBACK_DATA_MAX: usize = 512;

/// How the fake answers the next message send (see [`FakeGraph::script`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// HTTP 200 with a fresh `wamid`.
    Accept,
    /// HTTP 500, code 131000 "Something went wrong".
    ServerError,
    /// HTTP 400, code 131047 "Re-engagement message" (outside the 24-hour
    /// window), Meta's documented example body.
    ReEngagement131047,
    /// HTTP 429, code 130429 "Rate limit hit", Meta's documented example
    /// body (Meta's error table gives 429 Too Many Requests).
    RateLimit130429,
    /// The same 130429 body with HTTP 400, as some integrators report
    /// receiving it: a client should go by `error.code`, not only the status.
    RateLimit130429Status400,
    /// HTTP 400, code 131026 "Message undeliverable".
    Undeliverable131026,
    /// HTTP 401, code 190 (subcode 463) "Error validating access token:
    /// Session has expired", as Graph answers an expired token (no
    /// `error_data`: it is a Graph-level OAuth error).
    ExpiredToken190,
    /// Holds the request until the fake is dropped; the client must time
    /// out. Recorded with `answer_status` 0.
    NoAnswer,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub authorization: Option<String>,
    /// The JSON body; `Null` when the body is not JSON (multipart, empty).
    pub body: Value,
    /// The HTTP status answered; 0 for a request held by [`Reply::NoAnswer`].
    /// (Statuses are in `answer_status`; the business number is in the path,
    /// see [`Recorded::phone_number_id`].)
    pub answer_status: u16,
    /// The `wamid` answered, for accepted sends.
    pub wamid: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// The fake Graph API server. It listens on `127.0.0.1` on a free port and
/// stops when dropped.
pub struct FakeGraph {
    shared: Arc<Shared>,
    url: String,
    shutdown: tokio::sync::watch::Sender<bool>,
}

struct Shared {
    url: String,
    state: Mutex<GraphState>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

struct MediaItem {
    /// The business number it belongs to: its tokens may fetch it.
    number: String,
    bytes: Vec<u8>,
    /// Served from [`generated_bytes`] instead of `bytes`, streamed.
    generated: Option<Generated>,
    /// Where the media-URL answer points instead of the fake's own
    /// download URL ([`FakeGraph::add_media_at`]).
    url: Option<String>,
    mime_type: String,
    sha256: String,
    /// Path segment of its download URL.
    opaque: String,
    /// `hash` query parameter of its download URL.
    hash: String,
}

#[derive(Default)]
struct GraphState {
    script: VecDeque<Reply>,
    /// Until then, unscripted sends are answered [`Reply::ServerError`].
    outage_until: Option<Instant>,
    /// How long answers to sends take (held after the send is recorded and,
    /// if accepted, given its wamid: as when Meta's answer is slow).
    send_delay: Duration,
    requests: Vec<Recorded>,
    invalid: Vec<(Recorded, String)>,
    reads: Vec<String>,
    media: HashMap<String, MediaItem>,
    downloads: HashMap<String, usize>,
    uploads: Vec<(String, String, String, Vec<u8>)>,
    /// Numbers with their own token (the only one that serves them).
    number_tokens: HashMap<String, String>,
}

impl GraphState {
    /// Whether the fake serves this business number.
    fn serves(&self, number: &str) -> bool {
        number == PHONE_NUMBER_ID
            || number == SECOND_PHONE_NUMBER_ID
            || self.number_tokens.contains_key(number)
    }

    /// The token that serves `number`.
    fn token_of(&self, number: &str) -> &str {
        self.number_tokens.get(number).map_or(TOKEN, String::as_str)
    }

    /// Whether the fake issued this token (to any number).
    fn knows(&self, token: &str) -> bool {
        token == TOKEN || self.number_tokens.values().any(|t| t == token)
    }
}

impl FakeGraph {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("FakeGraph: bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("FakeGraph: local address")
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            url: url.clone(),
            state: Mutex::new(GraphState::default()),
            shutdown: shutdown_rx.clone(),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(shared.clone());
        let mut signal = shutdown_rx;
        tokio::spawn(async move {
            let stop = async move {
                // Err: the sender is gone, which also means stop.
                let _ = signal.wait_for(|stop| *stop).await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await;
        });
        Self {
            shared,
            url,
            shutdown,
        }
    }

    /// Gives `number` a token of its own: from now on only `token` serves
    /// it (sends, read receipts, uploads, its media), and the fake serves
    /// `number` even if it is neither [`PHONE_NUMBER_ID`] nor
    /// [`SECOND_PHONE_NUMBER_ID`]. [`TOKEN`] keeps serving the others.
    pub fn with_number_token(self, number: &str, token: &str) -> Self {
        self.set_number_token(number, token);
        self
    }

    /// [`FakeGraph::with_number_token`] on a running fake.
    pub fn set_number_token(&self, number: &str, token: &str) {
        self.shared
            .lock()
            .number_tokens
            .insert(number.to_owned(), token.to_owned());
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT`: what `GRAPH_API_URL` is set to.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The env vars a backend needs to talk to it: `WHATSAPP_ACCESS_TOKEN`,
    /// `WHATSAPP_PHONE_NUMBER_ID`, `GRAPH_API_URL`, `GRAPH_API_VERSION`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("WHATSAPP_ACCESS_TOKEN", TOKEN),
            ("WHATSAPP_PHONE_NUMBER_ID", PHONE_NUMBER_ID),
            ("GRAPH_API_URL", self.url.as_str()),
            ("GRAPH_API_VERSION", VERSION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Replies to the next message sends (`POST .../messages` that are not
    /// read receipts and pass the shape checks), in order, appended to what
    /// is still scripted; once the script runs out: [`Reply::Accept`].
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().script.extend(replies);
    }

    /// For `length` from now, sends that the script does not cover get
    /// HTTP 500 (code 131000), as in a Graph API outage.
    pub fn outage(&self, length: Duration) {
        self.shared.lock().outage_until = Some(Instant::now() + length);
    }

    /// Answers to message sends take `delay` from now on (each request is
    /// recorded, and an accepted one gets its wamid, before the wait).
    pub fn delay_sends(&self, delay: Duration) {
        self.shared.lock().send_delay = delay;
    }

    /// Every request received, in order (including invalid ones).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Message sends received (`POST /{VERSION}/{phone_number_id}/messages`
    /// whose body is not a read receipt, to any number), whatever the
    /// answer, in order.
    pub fn sends(&self) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| is_send(r))
            .cloned()
            .collect()
    }

    /// The local id each message send carried (`biz_opaque_callback_data`),
    /// in order; `accepted`: only of the sends WhatsApp accepted.
    pub fn sent_ids(&self, accepted: bool) -> Vec<String> {
        self.sends()
            .iter()
            .filter(|r| !accepted || r.wamid.is_some())
            .map(|r| {
                r.body["biz_opaque_callback_data"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// When each message send arrived, in order.
    pub fn send_times(&self) -> Vec<Instant> {
        self.sends().iter().map(|r| r.at).collect()
    }

    /// `message_id`s of the read receipts accepted, in order.
    pub fn reads(&self) -> Vec<String> {
        self.shared.lock().reads.clone()
    }

    /// Requests refused because they broke Meta's documented shape, with why.
    pub fn invalid(&self) -> Vec<(Recorded, String)> {
        self.shared.lock().invalid.clone()
    }

    /// Waits (polling, at most `timeout`) until `condition(&requests)` holds;
    /// panics with every request seen on timeout.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[Recorded]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if condition(&requests) {
                return;
            }
            if Instant::now() >= deadline {
                let invalid = self.invalid();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the fake Graph API \
                     received {} request(s):\n{}\ninvalid: {invalid:#?}",
                    requests.len(),
                    describe(&requests)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Media the fake holds. `GET /{VERSION}/{media_id}` answers
    /// `{messaging_product:"whatsapp", url, mime_type, sha256, file_size, id}`
    /// (`sha256`: lowercase hex of the SHA-256 of `bytes`; `file_size`: a
    /// number); `GET url` with the bearer serves `bytes` with
    /// `Content-Type: mime_type`. The `url` is
    /// `<self.url>/media-download/<opaque>?mid=<media_id>&ext=<unix>&hash=<h>`,
    /// like Meta's lookaside URLs: it must be fetched as given, query included.
    /// The media belongs to [`PHONE_NUMBER_ID`] (see [`FakeGraph::add_media_for`]).
    pub fn add_media(&self, media_id: &str, bytes: &[u8], mime_type: &str) {
        self.add_media_for(PHONE_NUMBER_ID, media_id, bytes, mime_type);
    }

    /// [`FakeGraph::add_media`] for a media received on (or uploaded to)
    /// `number`: only the token serving `number` may retrieve it.
    pub fn add_media_for(&self, number: &str, media_id: &str, bytes: &[u8], mime_type: &str) {
        let mut state = self.shared.lock();
        state.media.insert(
            media_id.to_owned(),
            MediaItem::new(number, media_id, bytes.to_vec(), mime_type),
        );
    }

    /// A media of `length` bytes of [`generated_bytes`], streamed when
    /// downloaded (never held whole, on either side). With `sized` false,
    /// neither `file_size` nor `Content-Length` tells its size, so a
    /// client has to count.
    pub fn add_generated_media(&self, media_id: &str, length: u64, mime_type: &str, sized: bool) {
        let generated = Generated { length, sized };
        let mut sha256 = sha2::Sha256::new();
        let mut offset = 0;
        while offset < length {
            let len = (length - offset).min(GENERATED_CHUNK as u64) as usize;
            sha256.update(generated_bytes(offset, len));
            offset += len as u64;
        }
        let sha256 = hex::encode(sha256.finalize());
        let item = MediaItem::with(
            PHONE_NUMBER_ID,
            media_id,
            Vec::new(),
            Some(generated),
            mime_type,
            sha256,
        );
        self.shared.lock().media.insert(media_id.to_owned(), item);
    }

    /// A media whose media-URL answer names `url` (another server, say)
    /// with `file_size` `length`: what a backend does with a URL it should
    /// not fetch.
    pub fn add_media_at(&self, media_id: &str, url: &str, length: u64, mime_type: &str) {
        let mut item = MediaItem::with(
            PHONE_NUMBER_ID,
            media_id,
            Vec::new(),
            Some(Generated {
                length,
                sized: true,
            }),
            mime_type,
            String::new(),
        );
        item.url = Some(url.to_owned());
        self.shared.lock().media.insert(media_id.to_owned(), item);
    }

    /// How many times the bytes of that media were downloaded.
    pub fn downloads(&self, media_id: &str) -> usize {
        self.shared
            .lock()
            .downloads
            .get(media_id)
            .copied()
            .unwrap_or(0)
    }

    /// Uploaded media: (returned id, mime type from the `type` field, file
    /// name of the `file` part (empty if none), bytes). Uploaded media can be
    /// retrieved and downloaded like [`FakeGraph::add_media`]'s.
    pub fn uploads(&self) -> Vec<(String, String, String, Vec<u8>)> {
        self.shared.lock().uploads.clone()
    }
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        // Stops accepting, ends held (`NoAnswer`) requests, closes idle
        // connections.
        let _ = self.shutdown.send(true);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, GraphState> {
        // A panicking test thread must not hide the real failure behind a
        // poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A media made of [`generated_bytes`].
#[derive(Debug, Clone, Copy)]
struct Generated {
    length: u64,
    /// Whether its size is told (`file_size`, `Content-Length`).
    sized: bool,
}

/// Length of the pattern generated media repeat: a prime, so it never
/// lines up with chunk or buffer sizes.
const PATTERN_LENGTH: usize = 65_521;
/// Bytes per chunk of a generated media's download.
const GENERATED_CHUNK: usize = 64 * 1024;

fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        // xorshift64: arbitrary-looking bytes, the same every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..PATTERN_LENGTH)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    })
}

/// Bytes `offset..offset + len` of every media added with
/// [`FakeGraph::add_generated_media`] (the same pattern, repeated), to
/// check a download against without holding it whole.
pub fn generated_bytes(offset: u64, len: usize) -> Vec<u8> {
    let pattern = pattern();
    let mut bytes = Vec::with_capacity(len);
    let mut at = (offset % PATTERN_LENGTH as u64) as usize;
    while bytes.len() < len {
        let take = (len - bytes.len()).min(PATTERN_LENGTH - at);
        bytes.extend_from_slice(&pattern[at..at + take]);
        at = 0;
    }
    bytes
}

impl MediaItem {
    fn new(number: &str, media_id: &str, bytes: Vec<u8>, mime_type: &str) -> Self {
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        Self::with(number, media_id, bytes, None, mime_type, sha256)
    }

    fn with(
        number: &str,
        media_id: &str,
        bytes: Vec<u8>,
        generated: Option<Generated>,
        mime_type: &str,
        sha256: String,
    ) -> Self {
        let seq = next_seq();
        let digest = sha2::Sha256::digest(format!("{media_id}/{seq}").as_bytes());
        let token = hex::encode(digest);
        Self {
            number: number.to_owned(),
            bytes,
            generated,
            url: None,
            sha256,
            mime_type: mime_type.to_owned(),
            opaque: format!("{}{seq}", &token[..16]),
            hash: token[16..48].to_owned(),
        }
    }
}

impl Recorded {
    /// The business number of a `/{VERSION}/{phone_number_id}/messages` or
    /// `.../media` request (the path names it); `None` for other requests.
    pub fn phone_number_id(&self) -> Option<&str> {
        let rest = self.path.strip_prefix('/')?.strip_prefix(VERSION)?;
        let (number, leaf) = rest.strip_prefix('/')?.split_once('/')?;
        let is_number = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
        (is_number && matches!(leaf, "messages" | "media")).then_some(number)
    }
}

fn is_send(r: &Recorded) -> bool {
    r.method == "POST"
        && r.path.ends_with("/messages")
        && r.phone_number_id().is_some()
        && !r.body.as_object().is_some_and(|o| o.contains_key("status"))
}

fn describe(requests: &[Recorded]) -> String {
    requests
        .iter()
        .map(|r| {
            format!(
                "  {} {} -> {} {}{}",
                r.method,
                r.path,
                r.answer_status,
                r.body,
                r.wamid
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);

fn next_seq() -> u64 {
    SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

/// A `wamid` unique in this process and unlikely to repeat across processes.
fn new_wamid() -> String {
    format!(
        "wamid.HBgLRkFLRUdSQVBIFQIAERgS{:08X}{:012X}",
        std::process::id(),
        next_seq()
    )
}

fn new_fbtrace_id() -> String {
    format!("AFakeGraph{:013X}", next_seq())
}

/// A numeric media id, like Meta's.
fn new_media_id() -> String {
    format!(
        "{}",
        1_700_000_000_000_000u64 + u64::from(std::process::id() % 1000) * 1_000_000 + next_seq()
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- answers

/// What a request gets.
enum Answer {
    Json(u16, Value),
    Bytes(String, Vec<u8>),
    /// A generated media, streamed: its type and facts.
    Generated(String, Generated),
    /// [`Reply::NoAnswer`]: wait until the fake is dropped.
    Hold,
    /// The answer, after a wait ([`FakeGraph::delay_sends`]).
    Later(Duration, Box<Answer>),
}

impl Answer {
    fn status(&self) -> u16 {
        match self {
            Answer::Json(status, _) => *status,
            Answer::Bytes(..) | Answer::Generated(..) => 200,
            Answer::Hold => 0,
            Answer::Later(_, answer) => answer.status(),
        }
    }
}

/// The outcome of one request: the answer, why it was invalid (if it was),
/// the `wamid` of an accepted send.
struct Outcome {
    answer: Answer,
    invalid: Option<String>,
    wamid: Option<String>,
}

impl Outcome {
    fn ok(answer: Answer) -> Self {
        Self {
            answer,
            invalid: None,
            wamid: None,
        }
    }

    fn refused(answer: Answer, why: impl Into<String>) -> Self {
        Self {
            answer,
            invalid: Some(why.into()),
            wamid: None,
        }
    }
}

/// Graph-level error body (no `error_data`).
fn graph_error(message: &str, kind: &str, code: u64, subcode: Option<u64>) -> Value {
    let mut error = json!({
        "message": message,
        "type": kind,
        "code": code,
        "fbtrace_id": new_fbtrace_id(),
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    json!({ "error": error })
}

/// WhatsApp Cloud API error body: `message` is `(#code) title`, with
/// `error_data {messaging_product, details}`.
fn whatsapp_error(code: u64, title: &str, details: &str, subcode: Option<u64>) -> Value {
    let mut error = json!({
        "message": format!("(#{code}) {title}"),
        "type": "OAuthException",
        "code": code,
        "error_data": { "messaging_product": "whatsapp", "details": details },
        "fbtrace_id": new_fbtrace_id(),
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    json!({ "error": error })
}

/// HTTP 400, code 100, for a request that breaks the documented shape.
fn invalid_parameter(details: &str) -> Outcome {
    Outcome::refused(
        Answer::Json(400, whatsapp_error(100, "Invalid parameter", details, None)),
        details,
    )
}

/// Graph's answer to a path or method it does not serve (HTTP 400,
/// GraphMethodException, code 100, subcode 33).
fn unsupported(method: &Method, object: &str, why: String) -> Outcome {
    let message = format!(
        "Unsupported {} request. Object with ID '{object}' does not exist, cannot be loaded due \
         to missing permissions, or does not support this operation. Please read the Graph API \
         documentation at https://developers.facebook.com/docs/graph-api",
        method.as_str().to_ascii_lowercase()
    );
    Outcome::refused(
        Answer::Json(
            400,
            graph_error(&message, "GraphMethodException", 100, Some(33)),
        ),
        why,
    )
}

/// The refusal unless `Authorization: Bearer <token>` with a token the
/// fake issued (else HTTP 401, code 190) that serves `number`, when the
/// request is for one (else HTTP 403, code 10).
fn check_bearer(state: &GraphState, headers: &HeaderMap, number: Option<&str>) -> Option<Outcome> {
    let expected = number.map_or(TOKEN, |number| state.token_of(number));
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Some(Outcome::refused(
            Answer::Json(
                401,
                graph_error(
                    "An access token is required to request this resource.",
                    "OAuthException",
                    190,
                    None,
                ),
            ),
            "no Authorization header",
        ));
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token);
    let Some(token) = token.filter(|token| state.knows(token)) else {
        return Some(Outcome::refused(
            Answer::Json(
                401,
                graph_error(
                    "Invalid OAuth access token - Cannot parse access token",
                    "OAuthException",
                    190,
                    None,
                ),
            ),
            format!("Authorization is {value:?}, expected \"Bearer {expected}\""),
        ));
    };
    if number.is_some_and(|number| state.token_of(number) != token) {
        // A valid token of another number: Meta's "Permission denied".
        return Some(Outcome::refused(
            Answer::Json(
                403,
                graph_error(
                    "(#10) Application does not have permission for this action",
                    "OAuthException",
                    10,
                    None,
                ),
            ),
            format!(
                "Authorization is {value:?}, a token that does not serve business number {}; expected \"Bearer {expected}\"",
                number.unwrap_or_default()
            ),
        ));
    }
    None
}

/// Meta's documented example body of error 130429.
fn rate_limit_hit() -> Value {
    whatsapp_error(
        130429,
        "Rate limit hit",
        "Cloud API message throughput has been reached.",
        Some(2494055),
    )
}

/// The status and body of a scripted error reply; `None` for
/// [`Reply::Accept`] and [`Reply::NoAnswer`].
fn error_reply(reply: &Reply) -> Option<(u16, Value)> {
    Some(match reply {
        Reply::Accept | Reply::NoAnswer => return None,
        Reply::ServerError => (
            500,
            whatsapp_error(
                131000,
                "Something went wrong",
                "Message failed to send due to an unknown error.",
                None,
            ),
        ),
        Reply::ReEngagement131047 => (
            400,
            whatsapp_error(
                131047,
                "Re-engagement message",
                "Message failed to send because more than 24 hours have passed since the \
                 customer last replied to this number.",
                Some(2494010),
            ),
        ),
        Reply::RateLimit130429 => (429, rate_limit_hit()),
        Reply::RateLimit130429Status400 => (400, rate_limit_hit()),
        Reply::Undeliverable131026 => (
            400,
            whatsapp_error(
                131026,
                "Message undeliverable",
                "Message Undeliverable.",
                None,
            ),
        ),
        Reply::ExpiredToken190 => (
            401,
            graph_error(
                "Error validating access token: Session has expired on Tuesday, 01-Jul-25 \
                 10:00:00 PDT. The current time is Tuesday, 01-Jul-25 11:00:00 PDT.",
                "OAuthException",
                190,
                Some(463),
            ),
        ),
    })
}

// ---------------------------------------------------------------- server

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut state = shared.lock();
        process(&mut state, &shared.url, &method, &uri, &headers, &body)
    };
    let answer = match answer {
        Answer::Later(delay, answer) => {
            tokio::time::sleep(delay).await;
            *answer
        }
        answer => answer,
    };
    match answer {
        Answer::Json(status, value) => json_response(status, &value),
        Answer::Bytes(mime_type, bytes) => bytes_response(&mime_type, bytes),
        Answer::Generated(mime_type, generated) => generated_response(&mime_type, generated),
        Answer::Hold => {
            let mut shutdown = shared.shutdown.clone();
            let _ = shutdown.wait_for(|stop| *stop).await;
            plain(StatusCode::SERVICE_UNAVAILABLE, "FakeGraph stopped")
        }
        Answer::Later(..) => plain(StatusCode::INTERNAL_SERVER_ERROR, "FakeGraph: nested delay"),
    }
}

/// Answers one request and records it, under the state lock.
fn process(
    state: &mut GraphState,
    base_url: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Answer {
    let outcome = dispatch(state, base_url, method, uri, headers, body);
    let recorded = Recorded {
        at: Instant::now(),
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        answer_status: outcome.answer.status(),
        wamid: outcome.wamid,
    };
    if let Some(why) = outcome.invalid {
        state.invalid.push((recorded.clone(), why));
    }
    state.requests.push(recorded);
    outcome.answer
}

fn dispatch(
    state: &mut GraphState,
    base_url: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Outcome {
    let path = uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["media-download", opaque] => download(state, method, uri, headers, opaque),
        [version, rest @ ..] if looks_like_version(version) => {
            if *version != VERSION {
                return unsupported(
                    method,
                    rest.first().copied().unwrap_or_default(),
                    format!("Graph API version {version}, expected {VERSION}"),
                );
            }
            match (method, rest) {
                (&Method::POST, [phone, "messages"]) if state.serves(phone) => {
                    messages(state, headers, body, phone)
                }
                (&Method::POST, [phone, "media"]) if state.serves(phone) => {
                    upload(state, headers, body, phone)
                }
                (&Method::GET, [media_id]) if !media_id.is_empty() => {
                    media_url(state, base_url, method, uri, headers, media_id)
                }
                (&Method::DELETE, [media_id]) if !media_id.is_empty() => {
                    delete_media(state, method, uri, headers, media_id)
                }
                (_, [phone, ..]) if !state.serves(phone) && rest.len() > 1 => unsupported(
                    method,
                    phone,
                    format!(
                        "{method} {path}: phone number id {phone} is not one the fake serves \
                         ({PHONE_NUMBER_ID}, {SECOND_PHONE_NUMBER_ID} or one given a token)"
                    ),
                ),
                _ => unsupported(
                    method,
                    rest.first().copied().unwrap_or_default(),
                    format!("{method} {path} is not a Graph API request the backend should make"),
                ),
            }
        }
        _ => unsupported(
            method,
            path,
            format!("{method} {path} is not a Graph API path (expected /{VERSION}/...)"),
        ),
    }
}

fn looks_like_version(segment: &str) -> bool {
    segment
        .strip_prefix('v')
        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

fn json_response(status: u16, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    if let Some(trace) = value["error"]["fbtrace_id"].as_str()
        && let Ok(trace) = HeaderValue::from_str(trace)
    {
        headers.insert("x-fb-trace-id", trace);
    }
    if status == 401 {
        let message = value["error"]["message"].as_str().unwrap_or_default();
        if let Ok(challenge) = HeaderValue::from_str(&format!(
            "OAuth \"Facebook Platform\" \"invalid_token\" \"{}\"",
            message.replace('"', "'")
        )) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
    }
    response
}

fn bytes_response(mime_type: &str, bytes: Vec<u8>) -> Response {
    let length = bytes.len();
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// A generated media, a chunk at a time as the client reads.
fn generated_response(mime_type: &str, generated: Generated) -> Response {
    let chunks = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= generated.length {
            return None;
        }
        let len = (generated.length - offset).min(GENERATED_CHUNK as u64) as usize;
        let chunk = Bytes::from(generated_bytes(offset, len));
        Some((Ok::<_, std::io::Error>(chunk), offset + len as u64))
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if generated.sized {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(generated.length));
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

// ---------------------------------------------------------------- messages

/// `POST /{VERSION}/{phone_number_id}/messages`: a send or a read receipt.
fn messages(state: &mut GraphState, headers: &HeaderMap, body: &Bytes, number: &str) -> Outcome {
    if let Some(refused) = check_bearer(state, headers, Some(number)) {
        return refused;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return invalid_parameter(&format!(
            "Content-Type is {content_type:?}, expected application/json"
        ));
    }
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            return invalid_parameter(&format!("the body is not a JSON object: {other}"));
        }
        Err(e) => return invalid_parameter(&format!("the body is not JSON: {e}")),
    };
    if object.get("messaging_product") != Some(&json!("whatsapp")) {
        return invalid_parameter(&format!(
            "messaging_product is {}, expected \"whatsapp\"",
            shown(object.get("messaging_product"))
        ));
    }
    if object.contains_key("status") {
        return read_receipt(state, &object);
    }
    if let Err(why) = check_send(&object) {
        return invalid_parameter(&why);
    }
    let in_outage = state
        .outage_until
        .is_some_and(|until| Instant::now() < until);
    let reply = state.script.pop_front().unwrap_or(if in_outage {
        Reply::ServerError
    } else {
        Reply::Accept
    });
    if reply == Reply::NoAnswer {
        return Outcome::ok(Answer::Hold);
    }
    if let Some((status, body)) = error_reply(&reply) {
        return Outcome::ok(delayed(state.send_delay, Answer::Json(status, body)));
    }
    let to = object["to"].as_str().unwrap_or_default();
    let wamid = new_wamid();
    let mut message = json!({ "id": wamid });
    if object["type"] == "template" {
        message["message_status"] = json!("accepted");
    }
    let answer = json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to, "wa_id": to.trim_start_matches('+') }],
        "messages": [message],
    });
    Outcome {
        answer: delayed(state.send_delay, Answer::Json(200, answer)),
        invalid: None,
        wamid: Some(wamid),
    }
}

/// `answer`, after `delay` (none: at once).
fn delayed(delay: Duration, answer: Answer) -> Answer {
    if delay.is_zero() {
        answer
    } else {
        Answer::Later(delay, Box::new(answer))
    }
}

/// `{"messaging_product":"whatsapp","status":"read","message_id":"wamid..."}`
/// (optionally `"typing_indicator":{"type":"text"}`) → `{"success":true}`.
fn read_receipt(state: &mut GraphState, object: &Map<String, Value>) -> Outcome {
    if let Err(why) = only_keys(
        object,
        &[
            "messaging_product",
            "status",
            "message_id",
            "typing_indicator",
        ],
        "a read receipt",
    ) {
        return invalid_parameter(&why);
    }
    if object["status"] != "read" {
        return invalid_parameter(&format!(
            "status is {}, expected \"read\"",
            shown(object.get("status"))
        ));
    }
    let message_id = match non_empty_str(object, "message_id", "a read receipt") {
        Ok(id) => id.to_owned(),
        Err(why) => return invalid_parameter(&why),
    };
    if let Some(typing) = object.get("typing_indicator")
        && typing != &json!({ "type": "text" })
    {
        return invalid_parameter(&format!(
            "typing_indicator is {typing}, expected {{\"type\":\"text\"}}"
        ));
    }
    state.reads.push(message_id);
    Outcome::ok(Answer::Json(200, json!({ "success": true })))
}

const MEDIA_TYPES: &[&str] = &["image", "document", "audio", "video", "sticker"];
const SEND_TYPES: &[&str] = &[
    "text",
    "template",
    "reaction",
    "image",
    "document",
    "audio",
    "video",
    "sticker",
    "location",
    "contacts",
    "interactive",
];

/// Checks a send against the documented request body.
fn check_send(object: &Map<String, Value>) -> Result<(), String> {
    let to = non_empty_str(object, "to", "a message")?;
    let digits = to.strip_prefix('+').unwrap_or(to);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "to is {to:?}, expected a phone number or wa_id (digits, optional +)"
        ));
    }
    match object.get("recipient_type") {
        None => {}
        Some(Value::String(kind)) if kind == "individual" => {}
        Some(other) => {
            return Err(format!(
                "recipient_type is {other}, expected \"individual\" or absent"
            ));
        }
    }
    // "type: Optional. ... If omitted, defaults to text."
    let kind = match object.get("type") {
        None => "text",
        Some(Value::String(kind)) if SEND_TYPES.contains(&kind.as_str()) => kind.as_str(),
        Some(other) => {
            return Err(format!("type is {other}, expected one of {SEND_TYPES:?}"));
        }
    };
    only_keys(
        object,
        &[
            "messaging_product",
            "recipient_type",
            "to",
            "type",
            "context",
            "biz_opaque_callback_data",
            kind,
        ],
        &format!("a {kind} message"),
    )?;
    if let Some(context) = object.get("context") {
        let context = context
            .as_object()
            .ok_or_else(|| format!("context is {context}, expected an object"))?;
        only_keys(context, &["message_id"], "context")?;
        non_empty_str(context, "message_id", "context")?;
    }
    if let Some(data) = object.get("biz_opaque_callback_data") {
        let data = data
            .as_str()
            .ok_or_else(|| format!("biz_opaque_callback_data is {data}, expected a string"))?;
        if data.chars().count() > CALLBACK_DATA_MAX {
            return Err(format!(
                "biz_opaque_callback_data is longer than {CALLBACK_DATA_MAX} characters"
            ));
        }
    }
    let Some(payload) = object.get(kind) else {
        return Err(format!("type is {kind:?} but there is no {kind:?} object"));
    };
    match kind {
        "text" => check_text(object_of(payload, kind)?),
        "template" => check_template(object_of(payload, kind)?),
        "reaction" => check_reaction(object_of(payload, kind)?),
        "location" => check_location(object_of(payload, kind)?),
        "contacts" => match payload {
            Value::Array(contacts) if !contacts.is_empty() => Ok(()),
            other => Err(format!("contacts is {other}, expected a non-empty array")),
        },
        "interactive" => {
            let interactive = object_of(payload, kind)?;
            non_empty_str(interactive, "type", "interactive")?;
            match interactive.get("action") {
                Some(Value::Object(_)) => Ok(()),
                other => Err(format!(
                    "interactive.action is {}, expected an object",
                    shown(other)
                )),
            }
        }
        media if MEDIA_TYPES.contains(&media) => check_media(media, object_of(payload, media)?),
        _ => Err(format!("type {kind:?} is not handled")),
    }
}

fn check_text(text: &Map<String, Value>) -> Result<(), String> {
    only_keys(text, &["body", "preview_url"], "text")?;
    let body = text.get("body").and_then(Value::as_str).ok_or_else(|| {
        format!(
            "text.body is {}, expected a string",
            shown(text.get("body"))
        )
    })?;
    let length = body.chars().count();
    if length == 0 || length > TEXT_BODY_MAX {
        return Err(format!(
            "text.body has {length} characters, expected 1 to {TEXT_BODY_MAX}"
        ));
    }
    if let Some(preview) = text.get("preview_url")
        && !preview.is_boolean()
    {
        return Err(format!("text.preview_url is {preview}, expected a boolean"));
    }
    Ok(())
}

fn check_template(template: &Map<String, Value>) -> Result<(), String> {
    only_keys(template, &["name", "language", "components"], "template")?;
    non_empty_str(template, "name", "template")?;
    let language = template
        .get("language")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            format!(
                "template.language is {}, expected an object with a code",
                shown(template.get("language"))
            )
        })?;
    only_keys(language, &["code", "policy"], "template.language")?;
    non_empty_str(language, "code", "template.language")?;
    if let Some(policy) = language.get("policy")
        && policy != "deterministic"
    {
        return Err(format!(
            "template.language.policy is {policy}, expected \"deterministic\""
        ));
    }
    match template.get("components") {
        None => Ok(()),
        Some(Value::Array(components)) => {
            for component in components {
                let component = component
                    .as_object()
                    .ok_or_else(|| format!("template component {component} is not an object"))?;
                non_empty_str(component, "type", "template component")?;
            }
            Ok(())
        }
        Some(other) => Err(format!("template.components is {other}, expected an array")),
    }
}

fn check_reaction(reaction: &Map<String, Value>) -> Result<(), String> {
    only_keys(reaction, &["message_id", "emoji"], "reaction")?;
    non_empty_str(reaction, "message_id", "reaction")?;
    // An empty emoji removes the reaction; the field is still required.
    match reaction.get("emoji") {
        Some(Value::String(_)) => Ok(()),
        other => Err(format!(
            "reaction.emoji is {}, expected a string (\"\" to remove)",
            shown(other)
        )),
    }
}

fn check_location(location: &Map<String, Value>) -> Result<(), String> {
    only_keys(
        location,
        &["latitude", "longitude", "name", "address"],
        "location",
    )?;
    for key in ["latitude", "longitude"] {
        let ok = match location.get(key) {
            Some(Value::Number(_)) => true,
            Some(Value::String(s)) => s.parse::<f64>().is_ok(),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "location.{key} is {}, expected a number",
                shown(location.get(key))
            ));
        }
    }
    for key in ["name", "address"] {
        if let Some(value) = location.get(key)
            && !value.is_string()
        {
            return Err(format!("location.{key} is {value}, expected a string"));
        }
    }
    Ok(())
}

/// image / document / audio / video / sticker: exactly one of `link`
/// (http/https) or `id`; `caption` (not on audio or sticker, at most 1024
/// characters); `filename` on documents only; `voice` on audio only.
fn check_media(kind: &str, media: &Map<String, Value>) -> Result<(), String> {
    let mut allowed = vec!["id", "link"];
    match kind {
        "document" => allowed.extend(["caption", "filename"]),
        "image" | "video" => allowed.push("caption"),
        "audio" => allowed.push("voice"),
        _ => {}
    }
    only_keys(media, &allowed, kind)?;
    match (media.get("link"), media.get("id")) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{kind} has both link and id; exactly one is allowed"
            ));
        }
        (None, None) => return Err(format!("{kind} needs a link or an id")),
        (Some(link), None) => {
            let link = link
                .as_str()
                .ok_or_else(|| format!("{kind}.link is {link}, expected a string"))?;
            let rest = link
                .strip_prefix("https://")
                .or_else(|| link.strip_prefix("http://"));
            if rest.is_none_or(str::is_empty) {
                return Err(format!("{kind}.link is {link:?}, expected an http(s) URL"));
            }
        }
        (None, Some(_)) => {
            non_empty_str(media, "id", kind)?;
        }
    }
    if let Some(caption) = media.get("caption") {
        let caption = caption
            .as_str()
            .ok_or_else(|| format!("{kind}.caption is {caption}, expected a string"))?;
        if caption.chars().count() > CAPTION_MAX {
            return Err(format!(
                "{kind}.caption is longer than {CAPTION_MAX} characters"
            ));
        }
    }
    if let Some(filename) = media.get("filename")
        && !filename.is_string()
    {
        return Err(format!("{kind}.filename is {filename}, expected a string"));
    }
    if let Some(voice) = media.get("voice")
        && !voice.is_boolean()
    {
        return Err(format!("{kind}.voice is {voice}, expected a boolean"));
    }
    Ok(())
}

fn object_of<'a>(value: &'a Value, name: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{name} is {value}, expected an object"))
}

fn non_empty_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    within: &str,
) -> Result<&'a str, String> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        other => Err(format!(
            "{key} in {within} is {}, expected a non-empty string",
            shown(other)
        )),
    }
}

fn only_keys(object: &Map<String, Value>, allowed: &[&str], within: &str) -> Result<(), String> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(format!(
            "{key:?} is not a documented parameter of {within} (allowed: {allowed:?})"
        )),
        None => Ok(()),
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}

// ---------------------------------------------------------------- media

/// `GET /{VERSION}/{media_id}` → the media's (temporary) URL and facts.
fn media_url(
    state: &mut GraphState,
    base_url: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    media_id: &str,
) -> Outcome {
    if let Some(refused) = check_media_access(state, uri, headers, media_id) {
        return refused;
    }
    let Some(media) = state.media.get(media_id) else {
        // Not a shape error: the media does not exist (or expired). Graph
        // answers its "Unsupported get request" error.
        let mut outcome = unsupported(method, media_id, String::new());
        outcome.invalid = None;
        return outcome;
    };
    let url = media.url.clone().unwrap_or_else(|| {
        format!(
            "{base_url}/media-download/{}?mid={media_id}&ext={}&hash={}",
            media.opaque,
            unix_now() + 300,
            media.hash
        )
    });
    let mut answer = json!({
        "url": url,
        "mime_type": media.mime_type,
        "sha256": media.sha256,
        "file_size": media.generated.map_or(media.bytes.len() as u64, |g| g.length),
        "id": media_id,
        "messaging_product": "whatsapp",
    });
    if media.generated.is_some_and(|g| !g.sized) {
        answer
            .as_object_mut()
            .map(|fields| fields.remove("file_size"));
    }
    Outcome::ok(Answer::Json(200, answer))
}

/// The refusal unless the bearer serves the media's number (any token the
/// fake issued, for a media it does not hold) and the optional
/// `phone_number_id` query parameter, which Meta documents as "processed
/// only if the ID matches the business phone number the media was uploaded
/// on", names that number.
fn check_media_access(
    state: &GraphState,
    uri: &Uri,
    headers: &HeaderMap,
    media_id: &str,
) -> Option<Outcome> {
    let number = state.media.get(media_id).map(|m| m.number.as_str());
    if let Some(refused) = check_bearer(state, headers, number) {
        return Some(refused);
    }
    if let Some(phone) = query_param(uri, "phone_number_id") {
        let expected = number.unwrap_or(PHONE_NUMBER_ID);
        if !state.serves(&phone) || number.is_some_and(|n| n != phone) {
            return Some(invalid_parameter(&format!(
                "phone_number_id is {phone:?}, expected {expected}"
            )));
        }
    }
    None
}

/// `DELETE /{VERSION}/{media_id}` → `{"success":true}`.
fn delete_media(
    state: &mut GraphState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    media_id: &str,
) -> Outcome {
    if let Some(refused) = check_media_access(state, uri, headers, media_id) {
        return refused;
    }
    if state.media.remove(media_id).is_none() {
        let mut outcome = unsupported(method, media_id, String::new());
        outcome.invalid = None;
        return outcome;
    }
    Outcome::ok(Answer::Json(200, json!({ "success": true })))
}

/// `GET <url from media_url>` with the bearer → the bytes.
fn download(
    state: &mut GraphState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    opaque: &str,
) -> Outcome {
    if method != Method::GET {
        return unsupported(
            method,
            opaque,
            format!("{method} on a media download URL, expected GET"),
        );
    }
    let number = state
        .media
        .values()
        .find(|m| m.opaque == opaque)
        .map(|m| m.number.clone());
    if let Some(refused) = check_bearer(state, headers, number.as_deref()) {
        return refused;
    }
    let Some((media_id, media)) = state.media.iter().find(|(_, m)| m.opaque == opaque) else {
        return Outcome::refused(
            Answer::Json(
                404,
                graph_error("Not found", "GraphMethodException", 100, None),
            ),
            format!("no media has the download URL {}", uri.path()),
        );
    };
    if query_param(uri, "hash").as_deref() != Some(media.hash.as_str()) {
        return Outcome::refused(
            Answer::Json(
                404,
                graph_error("URL signature mismatch", "GraphMethodException", 100, None),
            ),
            format!("download URL {uri} lost or changed its query string; use the url as given"),
        );
    }
    let media_id = media_id.clone();
    let answer = match media.generated {
        Some(generated) => Answer::Generated(media.mime_type.clone(), generated),
        None => Answer::Bytes(media.mime_type.clone(), media.bytes.clone()),
    };
    *state.downloads.entry(media_id).or_default() += 1;
    Outcome::ok(answer)
}

/// `POST /{VERSION}/{phone_number_id}/media`, multipart/form-data with
/// `messaging_product=whatsapp`, `type=<mime type>` and the `file` part →
/// `{"id":"<media id>"}` (a media of that number).
fn upload(state: &mut GraphState, headers: &HeaderMap, body: &Bytes, number: &str) -> Outcome {
    if let Some(refused) = check_bearer(state, headers, Some(number)) {
        return refused;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let parts = match parse_multipart(&content_type, body) {
        Ok(parts) => parts,
        Err(why) => return invalid_parameter(&format!("media upload: {why}")),
    };
    let mut messaging_product = None;
    let mut mime_type = None;
    let mut file = None;
    for part in parts {
        let slot = match part.name.as_str() {
            "messaging_product" => &mut messaging_product,
            "type" => &mut mime_type,
            "file" => &mut file,
            other => {
                return invalid_parameter(&format!(
                    "media upload: {other:?} is not a documented field \
                     (messaging_product, type, file)"
                ));
            }
        };
        if slot.is_some() {
            return invalid_parameter(&format!("media upload: field {:?} twice", part.name));
        }
        *slot = Some(part);
    }
    let text = |part: &Option<Part>| {
        part.as_ref()
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
    };
    if text(&messaging_product).as_deref() != Some("whatsapp") {
        return invalid_parameter(&format!(
            "media upload: messaging_product is {:?}, expected \"whatsapp\"",
            text(&messaging_product)
        ));
    }
    let Some(mime_type) = text(&mime_type).filter(|t| {
        t.split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
    }) else {
        return invalid_parameter(&format!(
            "media upload: type is {:?}, expected the file's MIME type",
            text(&mime_type)
        ));
    };
    let Some(file) = file else {
        return invalid_parameter("media upload: no file part");
    };
    if file.data.is_empty() {
        return invalid_parameter("media upload: the file is empty");
    }
    let id = new_media_id();
    state.media.insert(
        id.clone(),
        MediaItem::new(number, &id, file.data.clone(), &mime_type),
    );
    state.uploads.push((
        id.clone(),
        mime_type,
        file.filename.unwrap_or_default(),
        file.data,
    ));
    Outcome::ok(Answer::Json(200, json!({ "id": id })))
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

/// A small multipart/form-data parser (RFC 7578), enough for uploads.
fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let mut params = content_type.split(';');
    let essence = params.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!(
            "Content-Type is {content_type:?}, expected multipart/form-data"
        ));
    }
    let boundary = params
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty())
        .ok_or("multipart/form-data without a boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut close = b"\r\n".to_vec();
    close.extend_from_slice(&delimiter);

    let start = find(body, &delimiter, 0).ok_or("no opening boundary")?;
    let mut at = start + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = body.get(at..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        if !rest.starts_with(b"\r\n") {
            return Err("a boundary is not followed by CRLF".to_owned());
        }
        at += 2;
        let headers_end = find(body, b"\r\n\r\n", at).ok_or("a part without a header end")?;
        let head = String::from_utf8_lossy(&body[at..headers_end]).into_owned();
        let data_start = headers_end + 4;
        let data_end = find(body, &close, data_start).ok_or("a part without a closing boundary")?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            let mut fields = value.split(';');
            if fields.next().map(str::trim) != Some("form-data") {
                return Err(format!("Content-Disposition {value:?} is not form-data"));
            }
            for field in fields {
                if let Some((k, v)) = field.trim().split_once('=') {
                    let v = v.trim().trim_matches('"').to_owned();
                    match k.trim() {
                        "name" => name = Some(v),
                        "filename" => filename = Some(v),
                        _ => {}
                    }
                }
            }
        }
        let name = name.ok_or_else(|| format!("a part without a name: {head:?}"))?;
        parts.push(Part {
            name,
            filename,
            data: body[data_start..data_end].to_vec(),
        });
        at = data_end + close.len();
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;

    fn text_message() -> Value {
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "to": "16505551234", "type": "text", "text": {"body": "Hello"}})
    }

    async fn post_as(graph: &FakeGraph, number: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/{VERSION}/{number}/messages", graph.url()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn several_numbers_each_with_the_token_that_serves_it() {
        let own = "106540352242999";
        let graph = FakeGraph::start()
            .await
            .with_number_token(own, SECOND_NUMBER_TOKEN);
        // TOKEN serves both numbers of the app; the third only its own token.
        for (number, token) in [
            (PHONE_NUMBER_ID, TOKEN),
            (SECOND_PHONE_NUMBER_ID, TOKEN),
            (own, SECOND_NUMBER_TOKEN),
        ] {
            let (status, body) = post_as(&graph, number, token, &text_message()).await;
            assert_eq!(status, 200, "{number}: {body}");
            assert!(body["messages"][0]["id"].is_string());
        }
        assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
        let numbers: Vec<Option<String>> = graph
            .sends()
            .iter()
            .map(|r| r.phone_number_id().map(str::to_owned))
            .collect();
        assert_eq!(
            numbers,
            [
                Some(PHONE_NUMBER_ID),
                Some(SECOND_PHONE_NUMBER_ID),
                Some(own)
            ]
            .map(|n| n.map(str::to_owned))
        );

        // A token the fake issued, to a number it does not serve: code 10.
        let (status, body) = post_as(&graph, own, TOKEN, &text_message()).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            (&body["error"]["code"], &body["error"]["type"]),
            (&json!(10), &json!("OAuthException"))
        );
        let (status, body) = post_as(
            &graph,
            PHONE_NUMBER_ID,
            SECOND_NUMBER_TOKEN,
            &text_message(),
        )
        .await;
        assert_eq!((status, &body["error"]["code"]), (403, &json!(10)));
        // A token it never issued: 190, as before.
        let (status, body) = post_as(&graph, own, "EAAG-unknown", &text_message()).await;
        assert_eq!((status, &body["error"]["code"]), (401, &json!(190)));
        // A number it does not serve: Graph's unsupported request.
        let (status, body) = post_as(&graph, "999", TOKEN, &text_message()).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!(100)));
        assert_eq!(body["error"]["error_subcode"], 33);
        let invalid = graph.invalid();
        assert_eq!(invalid.len(), 4, "{invalid:#?}");
        assert!(invalid[0].1.contains(own), "{}", invalid[0].1);
        assert!(!graph.sends()[3..].iter().any(|r| r.wamid.is_some()));
    }

    #[tokio::test]
    async fn media_is_served_to_the_token_of_its_number() {
        let own = "106540352242999";
        let graph = FakeGraph::start()
            .await
            .with_number_token(own, SECOND_NUMBER_TOKEN);
        graph.add_media_for(own, "m-own", b"bytes", "image/jpeg");
        graph.add_media_for(SECOND_PHONE_NUMBER_ID, "m-second", b"bytes", "image/jpeg");
        let client = reqwest::Client::new();
        let get = |id: &str, token: &str| {
            client
                .get(format!("{}/{VERSION}/{id}", graph.url()))
                .bearer_auth(token)
                .send()
        };
        let info: Value = get("m-own", SECOND_NUMBER_TOKEN)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let download = client
            .get(info["url"].as_str().unwrap())
            .bearer_auth(SECOND_NUMBER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(download.status().as_u16(), 200);
        assert_eq!(graph.downloads("m-own"), 1);
        assert_eq!(get("m-own", TOKEN).await.unwrap().status().as_u16(), 403);
        let refused = client
            .get(info["url"].as_str().unwrap())
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 403);
        assert_eq!(get("m-second", TOKEN).await.unwrap().status().as_u16(), 200);
        assert_eq!(graph.invalid().len(), 2, "{:#?}", graph.invalid());
    }

    #[test]
    fn recorded_names_the_number_of_messages_and_media_requests() {
        let recorded = |path: &str| Recorded {
            method: "POST".to_owned(),
            path: path.to_owned(),
            authorization: None,
            body: Value::Null,
            answer_status: 200,
            wamid: None,
            at: Instant::now(),
        };
        assert_eq!(
            recorded(&format!("/{VERSION}/123/messages")).phone_number_id(),
            Some("123")
        );
        assert_eq!(
            recorded(&format!("/{VERSION}/123/media")).phone_number_id(),
            Some("123")
        );
        assert_eq!(recorded(&format!("/{VERSION}/123")).phone_number_id(), None);
        assert_eq!(recorded("/v19.0/123/messages").phone_number_id(), None);
        assert_eq!(recorded("/media-download/abc").phone_number_id(), None);
    }
}
