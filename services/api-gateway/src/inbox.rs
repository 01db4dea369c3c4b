//! The web inbox: `GET /` and its files under `/assets/`, built into the
//! binary (see `build.rs`: the files of `web/app/`, gzipped at build time).
//!
//! Public like any static page: the API behind it keeps its tokens. Every
//! answer carries an ETag (a `304` when the browser has it), a
//! Content-Security-Policy that allows scripts from this origin only (no
//! inline script), and the gzip form when the browser takes it. Files with
//! a version in their name (`vendor/`) are cached for good; the others are
//! revalidated.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    /// Relative to `web/app/`, with `/`.
    path: &'static str,
    content_type: &'static str,
    /// Quoted, as the header carries it.
    etag: &'static str,
    body: &'static [u8],
    gzip: Option<&'static [u8]>,
}

static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/inbox_assets.rs"));

/// Scripts, styles, fonts and API calls from this origin only (`'self'`
/// covers the same origin's `ws:`/`wss:` for Socket.IO); pictures and
/// media from this origin, or `blob:` (media fetched with a token, a file
/// about to be sent); no plugins, no framing, no inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; \
    connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// `GET /` and `GET /assets/{*path}`.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if path.starts_with("vendor/") {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if matches_etag(request, asset.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    let body = match asset.gzip {
        Some(gzip) if accepts_gzip(request) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gzip
        }
        _ => asset.body,
    };
    (StatusCode::OK, headers, body).into_response()
}

/// `If-None-Match` names this version (or `*`).
fn matches_etag(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// `Accept-Encoding` takes gzip (not refused with `q=0`).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn the_page_and_its_modules_are_embedded() {
        for path in [
            "index.html",
            "app.js",
            "style.css",
            "vendor/preact-htm-3.1.1.js",
            "vendor/socket.io-client-4.8.4.js",
        ] {
            assert!(ASSETS.iter().any(|a| a.path == path), "{path}");
        }
        assert!(!ASSETS.iter().any(|a| a.path.ends_with(".d.ts")));
    }

    #[test]
    fn gzip_etag_and_csp() {
        let response = serve(
            "index.html",
            &headers(&[(header::ACCEPT_ENCODING, "br, gzip;q=0.8")]),
        );
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self';")
        );
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        let again = serve(
            "index.html",
            &[(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap())]
                .into_iter()
                .collect(),
        );
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let plain = serve(
            "index.html",
            &headers(&[(header::ACCEPT_ENCODING, "gzip;q=0")]),
        );
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(
            serve("nope.js", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
