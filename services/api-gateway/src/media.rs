//! Media through the API: `GET /api/media/{id}` serves an inbound photo,
//! voice note or document (fetched from WhatsApp with the access token,
//! then kept in a size-capped cache on disk), and `POST /api/media`
//! uploads a file to WhatsApp for a message to send by `id`.
//!
//! No media is held in memory whole: a download streams from WhatsApp into
//! a file, an upload is spooled to a file, and responses are read from the
//! file a chunk at a time. Concurrent requests for a media not yet cached
//! share one download. The access token goes to WhatsApp's media URL only
//! if the [`MediaFence`] allows that URL.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::Serialize;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio::sync::Semaphore;
use wa_core::numbers::Scope;
use wa_graph::{Graph, GraphError, META_MEDIA_HOSTS, MediaError, MediaFence};
use wa_service::http::ApiError;

use crate::ApiState;
use crate::media_cache::{CachedMedia, EntryWriter, MediaCache, TempFile};
use crate::routes::{NumberQuery, home_number, scope_of, store_failure};

#[derive(Debug, Clone, clap::Args)]
pub struct MediaSettings {
    /// Directory of the media cache (default: a directory under the
    /// system's temporary directory; the all-in-one's is under its data
    /// directory).
    #[arg(long, env = "MEDIA_CACHE_DIR")]
    pub media_cache_dir: Option<PathBuf>,
    /// Most bytes the media cache keeps; least recently used media go first.
    #[arg(long, env = "MEDIA_CACHE_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub media_cache_max_bytes: u64,
    /// Largest media downloaded from or uploaded to WhatsApp (its own
    /// limit is 100 MB, for documents); larger ones get 413.
    #[arg(long, env = "MEDIA_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub media_max_bytes: u64,
    /// Hosts media are downloaded from (with the access token), comma-separated:
    /// names, `*.example.com` for any subdomain, or IP addresses. Over https only.
    #[arg(
        long,
        env = "MEDIA_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = META_MEDIA_HOSTS
    )]
    pub media_allowed_hosts: Vec<String>,
    /// Also download media from loopback, private and link-local addresses
    /// (plain http too, from such an address given literally in
    /// MEDIA_ALLOWED_HOSTS). For tests and local stand-ins of WhatsApp only.
    #[arg(long, env = "MEDIA_ALLOW_PRIVATE_ADDRESSES")]
    pub media_allow_private_addresses: bool,
}

/// Longest wait to connect to a media host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a media file per chunk of a response.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes of an upload buffered before they go to its spool file.
const SPOOL_BUFFER: usize = 64 * 1024;
/// Downloads from WhatsApp at once (of different media); more wait their
/// turn. Each holds a few buffers, so this bounds their memory in total.
const MAX_DOWNLOADS: usize = 32;
const NOT_A_FORM: &str = "expected a multipart/form-data body with a `file` field";

/// The media settings in use.
#[derive(Clone)]
pub struct MediaConfig {
    cache: Option<MediaCache>,
    max_bytes: u64,
    /// `None` only if no HTTP client could be built: downloads then fail.
    fence: Option<MediaFence>,
    flights: Flights,
    downloads: Arc<Semaphore>,
}

/// No cache, Meta's media hosts: configurations built in code (tests).
impl Default for MediaConfig {
    fn default() -> Self {
        let meta: Vec<String> = META_MEDIA_HOSTS.split(',').map(str::to_owned).collect();
        Self {
            cache: None,
            max_bytes: 100 * 1024 * 1024,
            fence: MediaFence::new(&meta, false, CONNECT_TIMEOUT).ok(),
            flights: Flights::default(),
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        }
    }
}

impl MediaConfig {
    /// Opens the cache (`default_dir` unless `MEDIA_CACHE_DIR` is set) and
    /// the fence.
    pub fn open(settings: &MediaSettings, default_dir: &Path) -> anyhow::Result<Self> {
        let dir = settings
            .media_cache_dir
            .clone()
            .unwrap_or_else(|| default_dir.to_owned());
        let cache = MediaCache::open(dir.clone(), settings.media_cache_max_bytes)
            .map_err(|e| anyhow::anyhow!("cannot use {} as the media cache: {e}", dir.display()))?;
        let fence = MediaFence::new(
            &settings.media_allowed_hosts,
            settings.media_allow_private_addresses,
            CONNECT_TIMEOUT,
        )?;
        if settings.media_allow_private_addresses {
            tracing::warn!(
                "MEDIA_ALLOW_PRIVATE_ADDRESSES is on: media may be downloaded, with the access token, from loopback and private addresses"
            );
        }
        Ok(Self {
            cache: Some(cache),
            max_bytes: settings.media_max_bytes,
            fence: Some(fence),
            flights: Flights::default(),
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        })
    }

    /// Request bodies `POST /api/media` accepts (the file and the form).
    pub fn upload_limit(&self) -> usize {
        usize::try_from(self.max_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(64 * 1024)
    }

    /// Where files are written before they are whole.
    fn spool_dir(&self) -> PathBuf {
        self.cache
            .as_ref()
            .map_or_else(std::env::temp_dir, |cache| cache.dir().to_owned())
    }

    /// The media, from the cache, from a download under way, or downloaded
    /// now (in a task of its own: it goes on for the others when the first
    /// client leaves).
    async fn media(
        &self,
        graph: Option<&Graph>,
        number: Option<&str>,
        media_id: &str,
    ) -> Result<CachedMedia, MediaFailure> {
        if let Some(flight) = self.flights.get(media_id) {
            metrics::counter!("media_downloads_shared_total").increment(1);
            return flight.await;
        }
        if let Some(cache) = &self.cache
            && let Some(media) = cache.open_entry(media_id).await
        {
            metrics::counter!("media_cache_hits_total").increment(1);
            return Ok(media);
        }
        let graph = graph.ok_or(MediaFailure::NoWhatsApp)?.clone();
        let fence = self.fence.clone().ok_or_else(|| {
            MediaFailure::Disk("no HTTP client for media downloads could be built".to_owned())
        })?;
        let (cache, max_bytes, spool_dir) = (self.cache.clone(), self.max_bytes, self.spool_dir());
        let (id, downloads) = (media_id.to_owned(), self.downloads.clone());
        let number = number.map(str::to_owned);
        let flight = self.flights.join_or_start(media_id, async move {
            // Never closed, so only a wait.
            let _turn = downloads.acquire_owned().await;
            let place = Place {
                cache: cache.as_ref(),
                max_bytes,
                spool_dir: &spool_dir,
            };
            let downloaded =
                download_to_disk(&graph, &fence, &place, number.as_deref(), &id).await;
            if let Err(e) = &downloaded {
                tracing::warn!(media_id = id, error = %e.detail(), "media not fetched from WhatsApp");
            }
            downloaded
        });
        flight.await
    }
}

/// Where media are cached by default: under the system's temporary directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join("whatsapp-clone-media")
}

/// Downloads under way, by media id: later requests wait for the first.
#[derive(Clone, Default)]
struct Flights(Arc<Mutex<HashMap<String, Flight>>>);

type Flight = Shared<BoxFuture<'static, Result<CachedMedia, MediaFailure>>>;

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Flight>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, media_id: &str) -> Option<Flight> {
        self.lock().get(media_id).cloned()
    }

    /// The download of `media_id` under way, or `download` started as one.
    fn join_or_start(
        &self,
        media_id: &str,
        download: impl Future<Output = Result<CachedMedia, MediaFailure>> + Send + 'static,
    ) -> Flight {
        let mut flights = self.lock();
        if let Some(flight) = flights.get(media_id) {
            metrics::counter!("media_downloads_shared_total").increment(1);
            return flight.clone();
        }
        let (this, id) = (self.clone(), media_id.to_owned());
        let task = tokio::spawn(async move {
            let result = download.await;
            // Gone before its waiters wake: a later request finds the
            // cache entry (kept before this), or starts afresh after a
            // failure. The lock waits for the insertion below.
            this.lock().remove(&id);
            result
        });
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                Err(MediaFailure::Disk(format!("the download task failed: {e}")))
            })
        }
        .boxed()
        .shared();
        flights.insert(media_id.to_owned(), flight.clone());
        flight
    }
}

/// Why a media is not served.
#[derive(Debug, Clone)]
enum MediaFailure {
    NoWhatsApp,
    Graph(GraphError),
    TooLarge {
        max_bytes: u64,
    },
    /// The media URL (or a redirect) leads where the token must not go.
    Refused(String),
    /// Writing or reading the file failed.
    Disk(String),
}

impl From<GraphError> for MediaFailure {
    fn from(e: GraphError) -> Self {
        MediaFailure::Graph(e)
    }
}

impl From<MediaError> for MediaFailure {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Graph(e) => MediaFailure::Graph(e),
            MediaError::TooLarge { max_bytes, .. } => MediaFailure::TooLarge { max_bytes },
            MediaError::Refused(why) => MediaFailure::Refused(why),
        }
    }
}

impl MediaFailure {
    fn disk(e: io::Error) -> Self {
        MediaFailure::Disk(e.to_string())
    }

    /// For the log: what went wrong, in full.
    fn detail(&self) -> String {
        match self {
            MediaFailure::NoWhatsApp => "WHATSAPP_ACCESS_TOKEN is not set".to_owned(),
            MediaFailure::Graph(e) => e.to_string(),
            MediaFailure::TooLarge { max_bytes } => {
                format!("larger than MEDIA_MAX_BYTES ({max_bytes} bytes)")
            }
            MediaFailure::Refused(why) => format!("media URL refused: {why}"),
            MediaFailure::Disk(why) => format!("media file: {why}"),
        }
    }

    /// For the client: in words, without hosts or file names.
    fn to_api_error(&self) -> ApiError {
        match self {
            MediaFailure::NoWhatsApp => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "media are kept by WhatsApp, which this deployment does not reach (WHATSAPP_ACCESS_TOKEN is not set)",
            ),
            MediaFailure::Graph(e) => graph_failure(e),
            MediaFailure::TooLarge { max_bytes } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the media is larger than the {max_bytes} bytes this service serves (MEDIA_MAX_BYTES)"
                ),
            ),
            MediaFailure::Refused(_) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "WhatsApp named a media URL this service does not download from (MEDIA_ALLOWED_HOSTS)",
            ),
            MediaFailure::Disk(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the media could not be stored on disk",
            ),
        }
    }
}

/// Where a download goes: the cache, its limit, the spool directory.
struct Place<'a> {
    cache: Option<&'a MediaCache>,
    max_bytes: u64,
    spool_dir: &'a Path,
}

/// Streams the media from WhatsApp (with the token of `number`, the
/// business number whose message it is; `None`: the default number's) into
/// a file in `spool_dir` (the cache's directory), counting against
/// `max_bytes`; keeps it in the cache.
async fn download_to_disk(
    graph: &Graph,
    fence: &MediaFence,
    place: &Place<'_>,
    number: Option<&str>,
    media_id: &str,
) -> Result<CachedMedia, MediaFailure> {
    let Place {
        cache,
        max_bytes,
        spool_dir,
    } = *place;
    // A download that finished between the caller's look and this one.
    if let Some(cache) = cache
        && let Some(media) = cache.open_entry(media_id).await
    {
        return Ok(media);
    }
    let info = graph.media_info_as(number, media_id).await?;
    if info.file_size.is_some_and(|size| size > max_bytes) {
        return Err(MediaFailure::TooLarge { max_bytes });
    }
    let mut body = graph.open_media(fence, &info, max_bytes).await?;
    let mime_type = info
        .mime_type
        .clone()
        .or_else(|| body.content_type.clone())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let mut writer = EntryWriter::create(spool_dir, &mime_type)
        .await
        .map_err(MediaFailure::disk)?;
    while let Some(chunk) = body.chunk().await? {
        if writer.length() + chunk.len() as u64 > max_bytes {
            return Err(MediaFailure::TooLarge { max_bytes });
        }
        writer.write(&chunk).await.map_err(MediaFailure::disk)?;
    }
    let finished = writer.finish().await.map_err(MediaFailure::disk)?;
    metrics::counter!("media_downloads_total").increment(1);
    Ok(match cache {
        Some(cache) => cache.keep(media_id, finished).await,
        None => finished.detached(),
    })
}

/// What the client sees of WhatsApp's error.
fn graph_failure(e: &GraphError) -> ApiError {
    let status = if e.retry {
        StatusCode::SERVICE_UNAVAILABLE
    } else if e.http_status == Some(404) || e.code == Some(100) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_GATEWAY
    };
    ApiError::new(status, format!("WhatsApp: {}", e.title))
}

fn whatsapp(state: &ApiState) -> Result<&Graph, ApiError> {
    state
        .graph
        .as_ref()
        .ok_or_else(|| MediaFailure::NoWhatsApp.to_api_error())
}

/// `GET /api/media/{mediaId}`: the media's bytes, with its content type;
/// a single `Range` (`bytes=a-b`, `bytes=a-`, `bytes=-n`) gets `206`.
#[utoipa::path(get, path = "/api/media/{mediaId}", tag = "media",
    params(("mediaId" = String, Path, description = "a media id from a message's content"),
           ("phoneNumberId" = Option<String>, Query, description = "the business number whose message it is (its `phoneNumberId`): its access token fetches the media"),
           ("Range" = Option<String>, Header, description = "one byte range, e.g. `bytes=0-1023`")),
    responses((status = 200, description = "the media, with its Content-Type"),
              (status = 206, description = "the range asked for, with Content-Range"),
              (status = 404, body = crate::openapi::ErrorBody),
              (status = 413, description = "over MEDIA_MAX_BYTES", body = crate::openapi::ErrorBody),
              (status = 416, description = "the range is past the end", body = crate::openapi::ErrorBody),
              (status = 502, body = crate::openapi::ErrorBody),
              (status = 503, body = crate::openapi::ErrorBody)))]
pub async fn download(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    UrlPath(media_id): UrlPath<String>,
    query: Result<Query<NumberQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if media_id.is_empty()
        || media_id.len() > 64
        || !media_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(ApiError::bad_request("mediaId must be a WhatsApp media id"));
    }
    let requested = NumberQuery::parse(query)?;
    let number = media_number(&state, &scope_of(scope), requested, &media_id).await?;
    let media = state
        .media
        .media(state.graph.as_ref(), number.as_deref(), &media_id)
        .await
        .map_err(|e| e.to_api_error())?;
    Ok(media_response(media, headers.get(header::RANGE)))
}

/// The business number whose token fetches a media (`None`: the default
/// number's), within the caller's scope.
///
/// The message a media id is of (found by an index) tells its number: a
/// token scoped to other numbers gets `404`, as for a media that does not
/// exist, and the number's own token fetches it. A media id no stored
/// message names is served to unscoped tokens only, with the token of the
/// number asked for (`?phoneNumberId=`), else the default number's.
async fn media_number(
    state: &ApiState,
    scope: &Scope,
    requested: Option<String>,
    media_id: &str,
) -> Result<Option<String>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no media {media_id}"));
    let conversation = state
        .store
        .media_conversation(media_id)
        .await
        .map_err(store_failure)?;
    let Some(conversation) = conversation else {
        return match scope {
            Scope::All => Ok(requested),
            Scope::Numbers(_) => Err(not_found()),
        };
    };
    let home = home_number(state).await?;
    if !scope.allows_conversation(&conversation, home.as_deref()) {
        return Err(not_found());
    }
    let number = wa_core::numbers::number_of(&conversation, home.as_deref()).map(str::to_owned);
    Ok(number.or(requested))
}

/// Which bytes a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Span {
    Whole,
    /// `start..=end`, within the media.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// A single `bytes=` range; anything else (several ranges, other units,
/// nonsense) is ignored and the whole media served, as RFC 9110 allows.
fn requested_span(range: Option<&HeaderValue>, length: u64) -> Span {
    let Some(spec) = range
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Span::Whole;
    };
    let number = |text: &str| {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // More digits than u64 holds: past any end.
        Some(text.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => Span::Whole,
        // The last `n` bytes.
        (true, false) => match number(last) {
            None => Span::Whole,
            Some(0) => Span::Unsatisfiable,
            Some(_) if length == 0 => Span::Unsatisfiable,
            Some(n) => Span::Part {
                start: length.saturating_sub(n),
                end: length - 1,
            },
        },
        (false, open_ended) => {
            let Some(start) = number(first) else {
                return Span::Whole;
            };
            let end = if open_ended {
                None
            } else {
                match number(last) {
                    Some(end) if end >= start => Some(end),
                    _ => return Span::Whole,
                }
            };
            if start >= length {
                return Span::Unsatisfiable;
            }
            Span::Part {
                start,
                end: end.map_or(length - 1, |end| end.min(length - 1)),
            }
        }
    }
}

fn media_response(media: CachedMedia, range: Option<&HeaderValue>) -> Response {
    let length = media.length;
    let (status, start, count) = match requested_span(range, length) {
        Span::Whole => (StatusCode::OK, 0, length),
        Span::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Span::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range asked for is outside the media's {length} bytes"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    let mime_type = media.mime_type.clone();
    let mut response = Response::new(file_body(media, start, count));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{length}", start + count - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    let content_type = mime_type
        .parse()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    // The same id always names the same bytes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The type is the sender's word: nothing here runs as a page of ours,
    // and what is not a picture or a sound is a download.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    let inline = ["image/", "audio/", "video/"]
        .iter()
        .any(|kind| mime_type.starts_with(kind))
        && !mime_type.starts_with("image/svg");
    if !inline {
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    response
}

/// `count` bytes of the media from `start`, read a chunk at a time as the
/// client takes them (the connection's backpressure bounds what is held).
fn file_body(media: CachedMedia, start: u64, count: u64) -> Body {
    let end = start + count;
    let chunks = futures::stream::try_unfold((media, start), move |(media, position)| async move {
        if position >= end {
            return Ok(None);
        }
        let want = usize::try_from(end - position)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK);
        let (media, read) = tokio::task::spawn_blocking(move || {
            let read = media.read_at(position, want);
            (media, read)
        })
        .await
        .map_err(io::Error::other)?;
        let bytes = read?;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the media file ended early",
            ));
        }
        let next = position + bytes.len() as u64;
        Ok::<_, io::Error>(Some((Bytes::from(bytes), (media, next))))
    });
    Body::from_stream(chunks)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// The media id to send (`{"image": {"id": ...}}` in `POST /api/messages`).
    id: String,
}

/// `POST /api/media`: a multipart form with a `file` part (its content
/// type and file name are WhatsApp's); answers the id to send it by. The
/// file is spooled to disk, then streamed to WhatsApp.
#[utoipa::path(post, path = "/api/media", tag = "media",
    params(("phoneNumberId" = Option<String>, Query, description = "the business number the media is sent from (default: the default number)")),
    request_body(content_type = "multipart/form-data", description = "a `file` part"),
    responses((status = 201, body = Uploaded), (status = 400, body = crate::openapi::ErrorBody),
              (status = 404, body = crate::openapi::ErrorBody, description = "a phone number outside the token's scope"),
              (status = 413, body = crate::openapi::ErrorBody),
              (status = 422, body = crate::openapi::ErrorBody, description = "no access token serves the number"),
              (status = 503, body = crate::openapi::ErrorBody)))]
pub async fn upload(
    State(state): State<ApiState>,
    scope: Option<Extension<Scope>>,
    query: Result<Query<NumberQuery>, QueryRejection>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, axum::Json<Uploaded>), ApiError> {
    let graph = whatsapp(&state)?.clone();
    let number = upload_number(&graph, &scope_of(scope), NumberQuery::parse(query)?)?;
    // The extractor's own words ("Invalid `boundary` ...") say nothing to
    // a client that did not send a form at all.
    let mut form = form.map_err(|_| ApiError::bad_request(NOT_A_FORM))?;
    let max_bytes = state.media.max_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the file is larger than the {max_bytes} bytes allowed (MEDIA_MAX_BYTES)"),
        )
    };
    let unreadable = |e: MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(
                e.status(),
                format!("the form could not be read: {}", e.body_text()),
            )
        }
    };
    let spool_failure = |e: io::Error| {
        tracing::warn!(error = %e, "media upload: cannot write the spool file");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the file could not be stored on disk",
        )
    };
    while let Some(mut field) = form.next_field().await.map_err(unreadable)? {
        if field.name() != Some("file") {
            continue;
        }
        let file_name = field.file_name().unwrap_or("file").to_owned();
        let mime_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        // Kept until the upload is done; removed when dropped.
        let (_spooled, file) = TempFile::create(&state.media.spool_dir())
            .await
            .map_err(spool_failure)?;
        let mut writer = BufWriter::with_capacity(SPOOL_BUFFER, file);
        let mut length = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
            length += chunk.len() as u64;
            if length > max_bytes {
                return Err(too_large());
            }
            writer.write_all(&chunk).await.map_err(spool_failure)?;
        }
        if length == 0 {
            return Err(ApiError::bad_request("file is empty"));
        }
        writer.flush().await.map_err(spool_failure)?;
        let mut file = writer.into_inner();
        file.rewind().await.map_err(spool_failure)?;
        let id = graph
            .upload_from(&number, file, length, &mime_type, &file_name)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "media not uploaded to WhatsApp");
                graph_failure(&e)
            })?;
        return Ok((StatusCode::CREATED, axum::Json(Uploaded { id })));
    }
    Err(ApiError::bad_request(NOT_A_FORM))
}

/// The number an upload goes through: the one asked for, else the
/// default number (for a token scoped to other numbers, the first of its
/// own); one the caller may use and a token serves.
fn upload_number(
    graph: &Graph,
    scope: &Scope,
    requested: Option<String>,
) -> Result<String, ApiError> {
    let number = match (requested, scope) {
        (Some(number), _) if scope.allows_number(Some(&number)) => number,
        (Some(_), _) => return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown phone number")),
        (None, Scope::Numbers(own)) if !scope.allows_number(graph.default_number()) => own
            .first()
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown phone number"))?,
        (None, _) => graph.default_number().map(str::to_owned).ok_or_else(|| {
            ApiError::bad_request(
                "phoneNumberId is required: no default number is set (WHATSAPP_PHONE_NUMBER_ID)",
            )
        })?,
    };
    if !graph.has_token_for(&number) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no WhatsApp access token serves business number {number}"),
        ));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(range: &str, length: u64) -> Span {
        requested_span(Some(&HeaderValue::from_str(range).unwrap()), length)
    }

    #[test]
    fn single_byte_ranges_are_understood() {
        let part = |start, end| Span::Part { start, end };
        assert_eq!(requested_span(None, 100), Span::Whole);
        assert_eq!(span("bytes=0-9", 100), part(0, 9));
        assert_eq!(
            span("bytes=90-200", 100),
            part(90, 99),
            "clamped to the end"
        );
        assert_eq!(span("bytes=50-", 100), part(50, 99));
        assert_eq!(span("bytes=-10", 100), part(90, 99));
        assert_eq!(span("bytes=-500", 100), part(0, 99));
        assert_eq!(span(" bytes= 5 - 5 ", 100), part(5, 5));
        assert_eq!(span("bytes=100-", 100), Span::Unsatisfiable);
        assert_eq!(span("bytes=100-200", 100), Span::Unsatisfiable);
        assert_eq!(span("bytes=-0", 100), Span::Unsatisfiable);
        assert_eq!(span("bytes=0-", 0), Span::Unsatisfiable);
        assert_eq!(span("bytes=-1", 0), Span::Unsatisfiable);
        assert_eq!(
            span("bytes=99999999999999999999999-", 100),
            Span::Unsatisfiable
        );
        // Ignored: the whole media.
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "0-1",
        ] {
            assert_eq!(span(ignored, 100), Span::Whole, "{ignored}");
        }
    }
}
