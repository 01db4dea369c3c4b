//! Media through the API: `GET /api/media/{id}` serves an inbound photo,
//! voice note or document (fetched from WhatsApp with the access token,
//! then kept in a size-capped cache on disk), and `POST /api/media`
//! uploads a file to WhatsApp for a message to send by `id`.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use shared::graph::{Graph, GraphError};
use shared::http::ApiError;

use crate::ApiState;
use crate::media_cache::MediaCache;

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
    /// limit is 100 MB, for documents).
    #[arg(long, env = "MEDIA_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub media_max_bytes: u64,
}

/// The media settings in use.
#[derive(Clone)]
pub struct MediaConfig {
    cache: Option<MediaCache>,
    max_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            cache: None,
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

impl MediaConfig {
    /// Opens the cache (`default_dir` unless `MEDIA_CACHE_DIR` is set).
    pub fn open(settings: &MediaSettings, default_dir: &Path) -> anyhow::Result<Self> {
        let dir = settings
            .media_cache_dir
            .clone()
            .unwrap_or_else(|| default_dir.to_owned());
        let cache = MediaCache::open(dir.clone(), settings.media_cache_max_bytes)
            .map_err(|e| anyhow::anyhow!("cannot use {} as the media cache: {e}", dir.display()))?;
        Ok(Self {
            cache: Some(cache),
            max_bytes: settings.media_max_bytes,
        })
    }

    /// Request bodies `POST /api/media` accepts (the file and the form).
    pub fn upload_limit(&self) -> usize {
        usize::try_from(self.max_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(64 * 1024)
    }
}

/// Where media are cached by default: under the system's temporary directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join("whatsapp-clone-media")
}

fn whatsapp(state: &ApiState) -> Result<&Graph, ApiError> {
    state.graph.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media are kept by WhatsApp, which this deployment does not reach (WHATSAPP_ACCESS_TOKEN is not set)",
        )
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

/// `GET /api/media/{mediaId}`: the media's bytes, with its content type.
#[utoipa::path(get, path = "/api/media/{mediaId}", tag = "media",
    params(("mediaId" = String, Path, description = "a media id from a message's content")),
    responses((status = 200, description = "the media, with its Content-Type"),
              (status = 404, body = crate::openapi::ErrorBody),
              (status = 503, body = crate::openapi::ErrorBody)))]
pub async fn download(
    State(state): State<ApiState>,
    UrlPath(media_id): UrlPath<String>,
) -> Result<Response, ApiError> {
    if media_id.is_empty()
        || media_id.len() > 64
        || !media_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(ApiError::bad_request("mediaId must be a WhatsApp media id"));
    }
    let cache = state.media.cache.as_ref();
    if let Some(cache) = cache
        && let Some((bytes, mime_type)) = cache.get(&media_id).await
    {
        metrics::counter!("media_cache_hits_total").increment(1);
        return Ok(media_response(bytes.into(), &mime_type));
    }
    let graph = whatsapp(&state)?;
    let media = graph
        .media(&media_id, state.media.max_bytes)
        .await
        .map_err(|e| {
            tracing::warn!(media_id, error = %e, "media not fetched from WhatsApp");
            graph_failure(&e)
        })?;
    metrics::counter!("media_downloads_total").increment(1);
    if let Some(cache) = cache {
        cache.put(&media_id, &media.bytes, &media.mime_type).await;
    }
    Ok(media_response(media.bytes.into(), &media.mime_type))
}

fn media_response(body: Body, mime_type: &str) -> Response {
    let mut response = Response::new(body);
    let content_type = mime_type
        .parse()
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    // The same id always names the same bytes.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    // The type is the sender's word: nothing here runs as a page of ours,
    // and what is not a picture or a sound is a download.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    let inline = ["image/", "audio/", "video/"]
        .iter()
        .any(|kind| mime_type.starts_with(kind))
        && !mime_type.starts_with("image/svg");
    if !inline {
        headers.insert(
            header::CONTENT_DISPOSITION,
            header::HeaderValue::from_static("attachment"),
        );
    }
    response
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// The media id to send (`{"image": {"id": ...}}` in `POST /api/messages`).
    id: String,
}

/// `POST /api/media`: a multipart form with a `file` part (its content
/// type and file name are WhatsApp's); answers the id to send it by.
#[utoipa::path(post, path = "/api/media", tag = "media",
    request_body(content_type = "multipart/form-data", description = "a `file` part"),
    responses((status = 201, body = Uploaded), (status = 400, body = crate::openapi::ErrorBody),
              (status = 413, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub async fn upload(
    State(state): State<ApiState>,
    mut form: Multipart,
) -> Result<(StatusCode, axum::Json<Uploaded>), ApiError> {
    let graph = whatsapp(&state)?.clone();
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            e.status(),
            format!("the form could not be read: {}", e.body_text()),
        )
    };
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        if field.name() != Some("file") {
            continue;
        }
        let file_name = field.file_name().unwrap_or("file").to_owned();
        let mime_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = field.bytes().await.map_err(unreadable)?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request("file is empty"));
        }
        if bytes.len() as u64 > state.media.max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("file over {} bytes", state.media.max_bytes),
            ));
        }
        let id = graph
            .upload(bytes, &mime_type, &file_name)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "media not uploaded to WhatsApp");
                graph_failure(&e)
            })?;
        return Ok((StatusCode::CREATED, axum::Json(Uploaded { id })));
    }
    Err(ApiError::bad_request(
        "the form needs a `file` part (multipart/form-data)",
    ))
}
