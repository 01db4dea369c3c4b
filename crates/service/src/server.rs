//! Serving a router over TCP, with what `axum::serve` leaves out: a time
//! limit on reading a request's headers, which also closes idle keep-alive
//! connections and connections that send nothing (so idle or half-sent
//! connections can't pile up), the peer address for per-IP limits, and
//! accept errors (out of file descriptors) that pause the loop instead of
//! ending the server (logged at most once a second, with a count), and a
//! cap on connections (total, per client IP) so that a flood of idle
//! connections or sockets cannot starve health checks and webhooks: at the
//! cap the oldest idle connection is closed to make room, upgrades
//! (WebSockets) may take all but a reserve of the slots, and a client IP
//! past its own cap is refused.
//!
//! HTTP/1.1 only (WebSocket upgrades included): HTTP/2 without TLS is
//! rare in front of an API, and hyper's detection of it waits for the
//! connection preface without a time limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long requests in flight may finish after shutdown starts.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How many connections a server keeps open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// All connections (WebSockets included).
    pub total: usize,
    /// Connections of one client IP; 0: no limit of its own.
    pub per_ip: usize,
    /// Slots upgrades (WebSockets) may not take: room for health checks
    /// and webhooks however many sockets are open.
    pub reserve: usize,
}

/// File descriptors left for everything but client connections (SQLite
/// files, NATS and MongoDB connections, logs), out of the process's limit.
const FDS_FOR_THE_REST: u64 = 64;

impl ConnectionLimits {
    /// From `MAX_CONNECTIONS` / `MAX_CONNECTIONS_PER_IP` (0: derived from
    /// the file descriptor limit: what it allows, less room for the rest).
    pub fn new(total: usize, per_ip: usize) -> Self {
        let total = if total == 0 {
            let fds = fd_limit().unwrap_or(1024);
            usize::try_from(fds.saturating_sub(FDS_FOR_THE_REST).max(16)).unwrap_or(usize::MAX)
        } else {
            total
        };
        Self {
            total,
            per_ip,
            reserve: (total / 8).clamp(1, 64),
        }
    }

    /// The configured limits of the servers in this process (a process
    /// serves one port; tests may start several, which share them), from
    /// `LimitsConfig`; resolved when serving starts, once the descriptor
    /// limit has been raised.
    pub fn set_for_process(config: &crate::config::LimitsConfig) {
        let _first = PROCESS_LIMITS.set((config.max_connections, config.max_connections_per_ip));
    }

    fn for_process() -> Self {
        let (total, per_ip) = PROCESS_LIMITS.get().copied().unwrap_or((0, 0));
        Self::new(total, per_ip)
    }
}

static PROCESS_LIMITS: OnceLock<(usize, usize)> = OnceLock::new();

/// The soft limit on open file descriptors.
#[cfg(unix)]
fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill in.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    (status == 0).then_some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn fd_limit() -> Option<u64> {
    None
}

/// Raises the soft limit on open file descriptors to the hard limit (a
/// default soft limit of 1,024 is soon reached by sockets), and logs it.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit for the call to fill in.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the file descriptor limit");
            return;
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            // SAFETY: a valid rlimit, read above, with soft <= hard.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    soft = before,
                    "cannot raise the file descriptor limit"
                );
                return;
            }
        }
        tracing::info!(
            from = before,
            to = limit.rlim_cur,
            "file descriptor limit (soft, raised to the hard limit)"
        );
    }
}

/// Open connections: counted, by client IP, and the idle ones in the
/// order they were opened, so the oldest idle can be closed for a new one.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    upgraded: AtomicUsize,
    state: Mutex<RegistryState>,
}

#[derive(Default)]
struct RegistryState {
    open: usize,
    per_ip: std::collections::HashMap<IpAddr, usize>,
    /// Every HTTP connection (not upgraded yet), oldest first.
    connections: BTreeMap<u64, Arc<Tracked>>,
}

/// What the registry knows of one connection.
struct Tracked {
    /// Requests in progress on it.
    busy: AtomicUsize,
    upgraded: AtomicBool,
    /// Cancelled to close it (gracefully: an idle one closes at once).
    close: CancellationToken,
}

/// A connection's place in the registry, given back when its socket closes
/// (it lives in the socket, so an upgraded one keeps its place).
struct Slot {
    registry: Arc<Registry>,
    id: u64,
    ip: IpAddr,
    tracked: Arc<Tracked>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(count) = state.per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
        state.connections.remove(&self.id);
        if self.tracked.upgraded.load(Ordering::Relaxed) {
            self.registry.upgraded.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `ip`, closing the oldest idle
    /// connection if all are taken; `None`: refused.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: ConnectionLimits) -> Option<Slot> {
        let mut state = self.lock();
        if limits.per_ip > 0 && state.per_ip.get(&ip).copied().unwrap_or(0) >= limits.per_ip {
            metrics::counter!("connections_refused_total", "why" => "per_ip").increment(1);
            return None;
        }
        if state.open >= limits.total {
            // The oldest idle HTTP connection makes room (it closes at
            // once; its slot comes back when it has).
            let idle = state.connections.values().find(|c| {
                c.busy.load(Ordering::Relaxed) == 0
                    && !c.upgraded.load(Ordering::Relaxed)
                    && !c.close.is_cancelled()
            });
            match idle {
                Some(idle) => {
                    idle.close.cancel();
                    metrics::counter!("connections_shed_total").increment(1);
                }
                None => {
                    metrics::counter!("connections_refused_total", "why" => "total").increment(1);
                    return None;
                }
            }
        }
        state.open += 1;
        *state.per_ip.entry(ip).or_default() += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            busy: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            close: CancellationToken::new(),
        });
        state.connections.insert(id, tracked.clone());
        Some(Slot {
            registry: self.clone(),
            id,
            ip,
            tracked,
        })
    }
}

/// A TCP stream holding its connection's slot, so that a socket handed on
/// by an upgrade (a WebSocket) still counts until it closes.
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Counts a request in progress on its connection while it lives.
struct Busy(Arc<Tracked>);

impl Busy {
    fn new(tracked: &Arc<Tracked>) -> Self {
        tracked.busy.fetch_add(1, Ordering::Relaxed);
        Self(tracked.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept errors (out of file descriptors), logged at most once a second.
#[derive(Default)]
struct AcceptErrors {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl AcceptErrors {
    fn record(&mut self, error: &std::io::Error) {
        self.since_logged += 1;
        metrics::counter!("accept_errors_total").increment(1);
        if self
            .logged_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                %error,
                count = self.since_logged,
                "cannot accept connections (this many since the last report)"
            );
            self.since_logged = 0;
            self.logged_at = Some(Instant::now());
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most a few seconds). A client gets
/// `header_read_timeout` to send a request's headers, from the moment it
/// connects or its previous response was sent.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let limits = ConnectionLimits::for_process();
    let registry = Arc::new(Registry::default());
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: existing connections
                    // close over time; keep serving them meanwhile.
                    accept_errors.record(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Past the caps: closed at once (the client may retry), rather
        // than holding a descriptor that health checks need.
        let Some(slot) = registry.admit(peer.ip(), limits) else {
            drop(stream);
            continue;
        };
        stream.set_nodelay(true).ok();
        let tracked = slot.tracked.clone();
        let router = router.clone();
        let (in_service, registry_of_upgrades) = (tracked.clone(), registry.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::new(&in_service);
            let upgrade = request.headers().contains_key(hyper::header::UPGRADE);
            let refused = upgrade && !take_upgrade_slot(&registry_of_upgrades, &in_service, limits);
            let router = router.clone();
            async move {
                let _busy = busy;
                if refused {
                    metrics::counter!("connections_refused_total", "why" => "upgrades")
                        .increment(1);
                    return Ok(axum::response::IntoResponse::into_response(
                        crate::http::ApiError::unavailable(
                            "too many open connections, retry later",
                        ),
                    ));
                }
                router.oneshot(request.map(Body::new)).await
            }
        });
        let closing = closing.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(
                    TokioIo::new(Counted {
                        stream,
                        _slot: slot,
                    }),
                    service,
                )
                .with_upgrades();
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = closing.cancelled() => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = tracked.close.cancelled() => {
                    // Shed to make room: idle, so it closes at once.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::trace!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    closing.cancel();
    drop(registry);
    connections.close();
    if tokio::time::timeout(DRAIN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("connections still open at the end of the shutdown grace period");
    }
    Ok(())
}

/// Whether a connection may become a WebSocket: upgrades take at most the
/// slots but the reserve, which stays for health checks and webhooks.
fn take_upgrade_slot(registry: &Registry, tracked: &Tracked, limits: ConnectionLimits) -> bool {
    let allowed = limits.total.saturating_sub(limits.reserve).max(1);
    let taken = registry
        .upgraded
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < allowed).then_some(n + 1)
        })
        .is_ok();
    if taken && !tracked.upgraded.swap(true, Ordering::Relaxed) {
        return true;
    }
    if taken {
        // Asked twice on one connection: counted once.
        registry.upgraded.fetch_sub(1, Ordering::Relaxed);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_logged_once_a_second_with_a_count() {
        let mut errors = AcceptErrors::default();
        let error = std::io::Error::from_raw_os_error(24);
        errors.record(&error);
        assert_eq!(errors.since_logged, 0, "the first is logged at once");
        for _ in 0..100 {
            errors.record(&error);
        }
        assert_eq!(errors.since_logged, 100, "counted, not logged");
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let registry = Arc::new(Registry::default());
        let limits = ConnectionLimits {
            total: 2,
            per_ip: 0,
            reserve: 1,
        };
        let ip = IpAddr::from([127, 0, 0, 1]);
        let first = registry.admit(ip, limits).unwrap();
        let second = registry.admit(ip, limits).unwrap();
        let _busy = Busy::new(&second.tracked);
        let third = registry.admit(ip, limits).unwrap();
        let _also_busy = Busy::new(&third.tracked);
        assert!(
            first.tracked.close.is_cancelled(),
            "the oldest idle is shed"
        );
        assert!(!second.tracked.close.is_cancelled(), "a busy one is not");
        // Nothing idle left to shed: refused.
        assert!(registry.admit(ip, limits).is_none());
        drop(first);
        assert_eq!(registry.lock().open, 2);
    }

    #[test]
    fn a_client_ip_past_its_cap_is_refused() {
        let registry = Arc::new(Registry::default());
        let limits = ConnectionLimits {
            total: 100,
            per_ip: 1,
            reserve: 1,
        };
        let _held = registry.admit(IpAddr::from([10, 0, 0, 1]), limits).unwrap();
        assert!(
            registry
                .admit(IpAddr::from([10, 0, 0, 1]), limits)
                .is_none()
        );
        assert!(
            registry
                .admit(IpAddr::from([10, 0, 0, 2]), limits)
                .is_some()
        );
    }

    #[test]
    fn websockets_leave_the_reserve_free() {
        let registry = Registry::default();
        let limits = ConnectionLimits {
            total: 3,
            per_ip: 0,
            reserve: 1,
        };
        let socket = || Tracked {
            busy: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            close: CancellationToken::new(),
        };
        assert!(take_upgrade_slot(&registry, &socket(), limits));
        assert!(take_upgrade_slot(&registry, &socket(), limits));
        assert!(!take_upgrade_slot(&registry, &socket(), limits));
    }
}
