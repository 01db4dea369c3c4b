//! Media through the API against the fake Graph API: streamed in bounded
//! memory, one download for concurrent requests, `Range`, the size cap
//! (413), the fence that keeps the access token from hosts that are not
//! allowed, and uploads.
//!
//! A test binary of its own, so the memory test measures this process
//! with only these tests in it; the API runs on SQLite and the in-process
//! event log (no NATS or MongoDB needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_gateway::{Access, ApiState, MediaConfig, api_router};
use clap::Parser;
use serde_json::Value;
use test_support::graph::{FakeGraph, TOKEN, generated_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker_embedded::EmbeddedEvents;
use wa_store::Store;
use wa_store_sqlite::SqliteStore;

const MB: u64 = 1024 * 1024;
/// What lets the API fetch the fake's media URLs (127.0.0.1, plain http).
const FAKE_ALLOWED: [&str; 2] = [
    "--media-allowed-hosts=127.0.0.1",
    "--media-allow-private-addresses",
];
const NOT_A_FORM: &str = "expected a multipart/form-data body with a `file` field";

/// An api-gateway (REST only) on SQLite, talking to `graph`.
struct MediaApi {
    url: String,
    http: reqwest::Client,
    dir: PathBuf,
    shutdown: CancellationToken,
}

impl Drop for MediaApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn spawn_api(graph: &FakeGraph, extra: &[&str]) -> MediaApi {
    let dir = std::env::temp_dir().join(test_support::unique_name("media-api"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec![
        "api-gateway".to_owned(),
        "--host=127.0.0.1".to_owned(),
        format!("--media-cache-dir={}", dir.join("media").display()),
    ];
    args.extend(
        graph
            .env()
            .into_iter()
            .map(|(name, value)| format!("--{}={value}", name.to_lowercase().replace('_', "-"))),
    );
    args.extend(extra.iter().map(|&arg| arg.to_owned()));
    let config = api_gateway::Config::parse_from(args);
    let store = SqliteStore::open(&dir.join("store.sqlite3")).unwrap();
    store.prepare().await.unwrap();
    let events = EmbeddedEvents::open(&dir.join("events.sqlite3"))
        .await
        .unwrap();
    let media = MediaConfig::open(&config.media, &dir.join("media")).unwrap();
    let state = ApiState::new(
        Arc::new(store),
        Arc::new(events),
        config.graph.client().unwrap(),
    )
    .with_media(media);
    let access = Access::new(&config.api, &config.limits, &config.host).unwrap();
    let api = api_router(state, axum::Router::new(), &config.api, &access).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(api.serve(listener, shutdown.clone()));
    MediaApi {
        url,
        http: reqwest::Client::new(),
        dir,
        shutdown,
    }
}

impl MediaApi {
    async fn get(&self, path: &str, range: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send().await.unwrap()
    }

    /// Status and JSON error of a GET that fails.
    async fn get_error(&self, path: &str) -> (u16, String) {
        let response = self.get(path, None).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// Reads the body a chunk at a time, checking each against the generated
/// bytes from `offset`; the length read. Nothing is held whole.
async fn check_generated(mut response: reqwest::Response, offset: u64) -> u64 {
    let mut read = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        assert!(
            chunk == generated_bytes(offset + read, chunk.len()),
            "bytes {}..{} differ from the media's",
            offset + read,
            offset + read + chunk.len() as u64
        );
        read += chunk.len() as u64;
    }
    read
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_gets_of_a_90_mb_media_download_it_once_in_bounded_memory() {
    let graph = FakeGraph::start().await;
    let api = spawn_api(&graph, &FAKE_ALLOWED).await;
    let length = 90 * MB;
    graph.add_generated_media("9000000000000001", length, "video/mp4", true);
    // Warm up (connections, allocator, a small media end to end).
    graph.add_generated_media("9000000000000002", MB, "video/mp4", true);
    let warm = api.get("/api/media/9000000000000002", None).await;
    assert_eq!(check_generated(warm, 0).await, MB);

    let rss_before = memory("VmRSS:");
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = tokio::spawn({
        let (sampling, peak) = (sampling.clone(), peak.clone());
        async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(memory("VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let downloads: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (api.http.clone(), api.url.clone());
            tokio::spawn(async move {
                let response = http
                    .get(format!("{url}/api/media/9000000000000001"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                assert_eq!(response.headers()["content-type"], "video/mp4");
                assert_eq!(response.headers()["accept-ranges"], "bytes");
                assert_eq!(response.content_length(), Some(length));
                check_generated(response, 0).await
            })
        })
        .collect();
    for download in downloads {
        assert_eq!(download.await.unwrap(), length, "every body whole");
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let (peak, high_water) = (peak.load(Ordering::Relaxed), memory("VmHWM:"));
    assert_eq!(
        graph.downloads("9000000000000001"),
        1,
        "one download from WhatsApp for the 20 requests"
    );
    // 20 × 90 MB went through (1.8 GB); held whole even once it would be
    // 90 MB more. The high-water mark is exact (sampling can miss a peak)
    // but counts from before the test too; both must stay under 100 MB.
    let sampled_growth = peak.saturating_sub(rss_before);
    let peak_growth = high_water.saturating_sub(rss_before);
    eprintln!(
        "RSS before {} MB, sampled peak +{} MB, high-water mark +{} MB",
        rss_before / MB,
        sampled_growth / MB,
        peak_growth / MB
    );
    assert!(
        sampled_growth < 100 * MB && peak_growth < 100 * MB,
        "RSS grew by {} MB (sampled) / {} MB (high-water mark) serving 20 × 90 MB",
        sampled_growth / MB,
        peak_growth / MB
    );

    // Seeking, from the cached file.
    let response = api
        .get("/api/media/9000000000000001", Some("bytes=1000-1999"))
        .await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 1000-1999/{length}").as_str()
    );
    assert_eq!(response.content_length(), Some(1000));
    assert_eq!(check_generated(response, 1000).await, 1000);
    let response = api
        .get("/api/media/9000000000000001", Some("bytes=-500"))
        .await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes {}-{}/{length}", length - 500, length - 1).as_str()
    );
    assert_eq!(check_generated(response, length - 500).await, 500);
    let tail = length - 40;
    let response = api
        .get(
            "/api/media/9000000000000001",
            Some(&format!("bytes={tail}-")),
        )
        .await;
    assert_eq!(response.status(), 206);
    assert_eq!(check_generated(response, tail).await, 40);
    // Past the end: 416, with the length.
    let response = api
        .get(
            "/api/media/9000000000000001",
            Some(&format!("bytes={length}-")),
        )
        .await;
    assert_eq!(response.status(), 416);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{length}").as_str()
    );
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].is_string(), "{error}");
    assert_eq!(graph.downloads("9000000000000001"), 1);
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_on_a_media_not_yet_cached_downloads_it_and_serves_the_range() {
    let graph = FakeGraph::start().await;
    let api = spawn_api(&graph, &FAKE_ALLOWED).await;
    graph.add_generated_media("9000000000000003", 3 * MB, "audio/ogg", false);
    let response = api
        .get("/api/media/9000000000000003", Some("bytes=2000000-2000099"))
        .await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 2000000-2000099/{}", 3 * MB).as_str()
    );
    assert_eq!(check_generated(response, 2_000_000).await, 100);
    // Several ranges: the whole media (allowed by RFC 9110).
    let response = api
        .get("/api/media/9000000000000003", Some("bytes=0-1,5-6"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(check_generated(response, 0).await, 3 * MB);
    assert_eq!(graph.downloads("9000000000000003"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_over_media_max_bytes_gets_413() {
    let graph = FakeGraph::start().await;
    let mut args = FAKE_ALLOWED.to_vec();
    args.push("--media-max-bytes=1000000");
    let api = spawn_api(&graph, &args).await;
    // Told by Meta's file_size: not even downloaded.
    graph.add_generated_media("9100000000000001", 1_000_001, "video/mp4", true);
    let (status, error) = api.get_error("/api/media/9100000000000001").await;
    assert_eq!(status, 413, "{error}");
    assert!(error.contains("1000000 bytes"), "{error}");
    assert_eq!(graph.downloads("9100000000000001"), 0);
    // No size told anywhere: counted while streaming.
    graph.add_generated_media("9100000000000002", 3_000_000, "video/mp4", false);
    let (status, error) = api.get_error("/api/media/9100000000000002").await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(graph.downloads("9100000000000002"), 1);
    // Nothing was kept: asked again, downloaded (and refused) again.
    let (status, _) = api.get_error("/api/media/9100000000000002").await;
    assert_eq!(status, 413);
    assert_eq!(graph.downloads("9100000000000002"), 2);
    // At the cap exactly: served.
    graph.add_generated_media("9100000000000003", 1_000_000, "video/mp4", false);
    let response = api.get("/api/media/9100000000000003", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(check_generated(response, 0).await, 1_000_000);
}

/// A plain TCP server that records what reaches it: connections and each
/// request's head (with any `Authorization`). `GET /redirect?to=URL`
/// answers 302 to URL; anything else 200 "trap".
struct Trap {
    port: u16,
    connections: Arc<AtomicU64>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Trap {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    seen.lock().unwrap().push(head.clone());
                    let target = head.split_whitespace().nth(1).unwrap_or_default();
                    let answer = match target.strip_prefix("/redirect?to=") {
                        Some(to) => format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        ),
                        None => "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\nConnection: close\r\n\r\ntrap".to_owned(),
                    };
                    socket.write_all(answer.as_bytes()).await.ok();
                });
            }
        });
        Self {
            port,
            connections,
            heads,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_urls_to_hosts_that_are_not_allowed_are_refused_and_never_get_the_token() {
    let graph = FakeGraph::start().await;
    let trap = Trap::start().await;
    let port = trap.port;
    let refused = |api: &'static str, status: u16, error: &str| {
        assert_eq!(status, 502, "{api}: {error}");
        assert!(error.contains("MEDIA_ALLOWED_HOSTS"), "{api}: {error}");
    };

    // Meta's hosts only (the default): 127.0.0.1, by http or https.
    let meta_only = spawn_api(&graph, &[]).await;
    for (id, url) in [
        ("9200000000000001", format!("http://127.0.0.1:{port}/a")),
        ("9200000000000002", format!("https://127.0.0.1:{port}/b")),
        // Allowed suffix spelled into a name that is not Meta's.
        (
            "9200000000000003",
            format!("https://lookaside.fbsbx.com.127.0.0.1.nip.io:{port}/c"),
        ),
    ] {
        graph.add_media_at(id, &url, 4, "image/jpeg");
        let (status, error) = meta_only.get_error(&format!("/api/media/{id}")).await;
        refused("default hosts", status, &error);
    }
    // 127.0.0.1 allowed by name but private addresses not: refused.
    let named_only = spawn_api(&graph, &["--media-allowed-hosts=127.0.0.1"]).await;
    graph.add_media_at(
        "9200000000000004",
        &format!("http://127.0.0.1:{port}/d"),
        4,
        "image/jpeg",
    );
    let (status, error) = named_only.get_error("/api/media/9200000000000004").await;
    assert_eq!(status, 502, "{error}");
    // A name allowed, over https, that resolves to loopback: refused at
    // resolution, before any connection.
    let by_name = spawn_api(&graph, &["--media-allowed-hosts=localhost"]).await;
    graph.add_media_at(
        "9200000000000005",
        &format!("https://localhost:{port}/e"),
        4,
        "image/jpeg",
    );
    let (status, error) = by_name.get_error("/api/media/9200000000000005").await;
    assert_eq!(status, 502, "{error}");
    // The test allowance (127.0.0.1, private addresses) does not extend to
    // another name for the same machine.
    let test_allowance = spawn_api(&graph, &FAKE_ALLOWED).await;
    graph.add_media_at(
        "9200000000000006",
        &format!("http://localhost:{port}/f"),
        4,
        "image/jpeg",
    );
    let (status, error) = test_allowance
        .get_error("/api/media/9200000000000006")
        .await;
    refused("test allowance", status, &error);
    assert_eq!(
        trap.connections.load(Ordering::SeqCst),
        0,
        "nothing reached the trap: {:#?}",
        trap.heads()
    );

    // An allowed URL that redirects elsewhere: the redirect is not followed.
    let allowed = Trap::start().await;
    graph.add_media_at(
        "9200000000000007",
        &format!(
            "http://127.0.0.1:{}/redirect?to=http://localhost:{port}/g",
            allowed.port
        ),
        4,
        "image/jpeg",
    );
    let (status, error) = test_allowance
        .get_error("/api/media/9200000000000007")
        .await;
    assert_eq!(status, 502, "{error}");
    assert_eq!(allowed.heads().len(), 1, "{:#?}", allowed.heads());
    assert_eq!(
        trap.connections.load(Ordering::SeqCst),
        0,
        "{:#?}",
        trap.heads()
    );
    // Where allowed, the token does go: the fence is what stopped it.
    graph.add_media_at(
        "9200000000000008",
        &format!("http://127.0.0.1:{}/h", allowed.port),
        4,
        "image/jpeg",
    );
    let response = test_allowance
        .get("/api/media/9200000000000008", None)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"trap");
    let heads = allowed.heads();
    assert!(
        heads[1].contains(&format!("authorization: Bearer {TOKEN}"))
            || heads[1].contains(&format!("Authorization: Bearer {TOKEN}")),
        "{heads:#?}"
    );
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_streamed_and_a_body_that_is_not_a_form_gets_a_plain_message() {
    let graph = FakeGraph::start().await;
    let mut args = FAKE_ALLOWED.to_vec();
    args.push("--media-max-bytes=1000000");
    let api = spawn_api(&graph, &args).await;
    let post = |body: reqwest::RequestBuilder| async move {
        let response = body.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let url = format!("{}/api/media", api.url);

    let (status, error) = post(
        api.http
            .post(&url)
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (400, Some(NOT_A_FORM)));
    let (status, error) = post(api.http.post(&url).body("file=x")).await;
    assert_eq!((status, error["error"].as_str()), (400, Some(NOT_A_FORM)));
    let no_file = reqwest::multipart::Form::new().text("caption", "hello");
    let (status, error) = post(api.http.post(&url).multipart(no_file)).await;
    assert_eq!((status, error["error"].as_str()), (400, Some(NOT_A_FORM)));

    let file = |bytes: Vec<u8>| {
        reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes)
                .file_name("clip.mp4")
                .mime_str("video/mp4")
                .unwrap(),
        )
    };
    let (status, error) = post(api.http.post(&url).multipart(file(vec![1; 1_000_001]))).await;
    assert_eq!(status, 413, "{error}");
    assert!(graph.uploads().is_empty());

    let bytes = generated_bytes(0, 700_000);
    let (status, uploaded) = post(api.http.post(&url).multipart(file(bytes.clone()))).await;
    assert_eq!(status, 201, "{uploaded}");
    let uploads = graph.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploaded["id"], uploads[0].0.as_str());
    assert_eq!(
        (uploads[0].1.as_str(), uploads[0].2.as_str()),
        ("video/mp4", "clip.mp4")
    );
    assert!(uploads[0].3 == bytes, "WhatsApp got the file's bytes");
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
    // No spool file is left behind.
    let left: Vec<_> = std::fs::read_dir(api.dir.join("media"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
