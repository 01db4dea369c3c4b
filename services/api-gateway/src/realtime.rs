//! Socket.IO: pushing the event log to connected browsers.
//!
//! Every replica reads the whole event log (not a share of it) and emits
//! each event, with its `seq`, to its own sockets. A live socket is in the
//! room [`ALL`] (every event) or, once it narrows its stream with
//! `subscribe`, in rooms `conv:<id>`, never both, so it never gets an event
//! twice.
//!
//! A client that connects with `auth: {lastSeq: N}` first catches up: it
//! gets the events after `N` it is entitled to, read from the log, and
//! joins its rooms (goes live) exactly when it has caught up with what the
//! replica emitted live, under the same lock, so it misses nothing and
//! gets nothing twice. If events after `N` are no longer kept it gets
//! `resync` and should reload over REST.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use futures::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use socketioxide::SendError;
use socketioxide::SocketError;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use tokio_util::sync::CancellationToken;
use wa_broker::retry::pause;
use wa_broker::{EventBus, ReadError};
use wa_core::domain::{Sequenced, is_conversation_id};
use wa_core::retry::Backoff;
use wa_service::access::Tokens;
use wa_service::http::ReadinessCheck;

/// How long a reader waits before trying the event log again: about a
/// second, jittered, so that the api-gateways of a fleet that lost NATS
/// together do not come back in step.
const LOG_RETRY: Backoff = Backoff::constant(Duration::from_secs(1));

/// Room of sockets that get every event.
const ALL: &str = "*";
/// Events read from the log per round while a socket catches up.
const CATCH_UP_PAGE: usize = 500;
/// How long a catch-up waits for a full buffer to drain before retrying.
const FULL_BUFFER_WAIT: Duration = Duration::from_millis(20);
/// How long a catch-up waits for this replica to emit what the log holds.
const BEHIND_WAIT: Duration = Duration::from_millis(50);
/// How long a new socket waits for a replica that has just started to
/// follow the log before going live anyway (then it gets `resync` later).
const FOLLOW_WAIT: Duration = Duration::from_secs(2);

fn room(conversation_id: &str) -> String {
    format!("conv:{conversation_id}")
}

/// What the Socket.IO handlers share: the event log, and the last `seq`
/// this replica emitted live (its lock orders going live with emitting).
#[derive(Clone)]
pub struct Realtime {
    bus: Arc<dyn EventBus>,
    head: Arc<tokio::sync::Mutex<u64>>,
    /// Set once [`fan_out`] follows the log: until then the replica does
    /// not know where "now" is in it, and is not ready.
    following: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Realtime {
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        Self {
            bus,
            head: Default::default(),
            following: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Waits (at most `wait`) until this replica follows the event log.
    async fn until_following(&self, wait: Duration) {
        let mut following = self.following.subscribe();
        tokio::time::timeout(wait, following.wait_for(|f| *f))
            .await
            .ok();
    }

    /// `ready`, and this replica follows the event log: until it does,
    /// a client that connects could miss events.
    pub fn readiness(&self, ready: ReadinessCheck) -> ReadinessCheck {
        let following = self.following.clone();
        Arc::new(move || {
            let (ready, following) = (ready.clone(), following.clone());
            Box::pin(async move {
                ready().await?;
                if *following.borrow() {
                    Ok(())
                } else {
                    Err("not following the event log yet".to_owned())
                }
            })
        })
    }
}

/// A socket's stream: which conversations, and whether it is live yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    All,
    Only(BTreeSet<String>),
}

impl Subscription {
    fn wants(&self, conversation_id: &str) -> bool {
        match self {
            Subscription::All => true,
            Subscription::Only(ids) => ids.contains(conversation_id),
        }
    }

    fn rooms(&self) -> Vec<String> {
        match self {
            Subscription::All => vec![ALL.to_owned()],
            Subscription::Only(ids) => ids.iter().map(|id| room(id)).collect(),
        }
    }

    /// What a client is told it receives: `["*"]` or its conversation ids.
    fn listed(&self) -> Vec<String> {
        match self {
            Subscription::All => vec![ALL.to_owned()],
            Subscription::Only(ids) => ids.iter().cloned().collect(),
        }
    }
}

#[derive(Debug)]
struct SocketState {
    subscription: Subscription,
    /// In its rooms: gets events as they are emitted.
    live: bool,
}

/// Kept in the socket's extensions.
#[derive(Clone)]
struct Shared(Arc<Mutex<SocketState>>);

impl Shared {
    fn of(socket: &SocketRef) -> Option<Self> {
        socket.extensions.get::<Shared>()
    }

    fn with<T>(&self, f: impl FnOnce(&mut SocketState) -> T) -> Option<T> {
        self.0.lock().ok().map(|mut state| f(&mut state))
    }
}

/// Who may connect, and what a connection may hold.
#[derive(Debug, Clone)]
pub struct SocketRules {
    /// Packets a socket may have waiting to be sent (socketioxide's default
    /// is 128); a socket with a full buffer falls behind.
    pub buffer: usize,
    /// `auth: {token}` must be one of these (when any are configured).
    pub tokens: Tokens,
    /// Browser origins allowed to connect; `None`: any.
    pub origins: Option<Vec<String>>,
    /// Conversations one socket may subscribe to.
    pub max_subscriptions: usize,
}

pub fn socket_io(realtime: Realtime, rules: SocketRules) -> (SocketIoLayer, SocketIo) {
    // Clients only send small `subscribe` packets: a 1 KiB WebSocket read
    // buffer (4 KiB by default; it grows for a larger frame) saves 3 KiB
    // per connection.
    let (layer, io) = SocketIo::builder()
        .ws_read_buffer_size(1024)
        .max_buffer_size(rules.buffer)
        .with_state(realtime)
        .with_state(Arc::new(rules))
        .build_layer();
    io.ns("/", on_connect.with(admit));
    (layer, io)
}

/// Why a connection is refused (the client's `connect_error` message).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("unauthorized: auth.token is missing or unknown")]
    Token,
    #[error("origin not allowed")]
    Origin,
}

/// Refuses a connection without an admitted `auth: {token}` (when tokens
/// are configured) or from a browser origin outside `CORS_ORIGINS`.
async fn admit(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(rules): State<Arc<SocketRules>>,
) -> Result<(), Refused> {
    if let Some(allowed) = &rules.origins
        && let Some(origin) = socket.req_parts().headers.get(axum::http::header::ORIGIN)
        && !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
    {
        return Err(Refused::Origin);
    }
    if rules.tokens.is_open() {
        return Ok(());
    }
    let token = auth
        .ok()
        .and_then(|auth| auth.get("token")?.as_str().map(str::to_owned));
    match token {
        Some(token) if rules.tokens.admits(&token) => Ok(()),
        _ => Err(Refused::Token),
    }
}

/// hyper parses a request's URI and header values as slices of the
/// connection's read buffer, and socketioxide keeps the request parts for
/// the socket's whole life: that pinned the buffer (16 KB) of every
/// connection (found with heaptrack). Socket.IO requests get copies.
pub fn detach_from_read_buffer<B>(mut request: Request<B>) -> Request<B> {
    if !request.uri().path().starts_with("/socket.io") {
        return request;
    }
    let headers: HeaderMap = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
        .collect();
    *request.headers_mut() = headers;
    if let Ok(uri) = Uri::try_from(request.uri().to_string()) {
        *request.uri_mut() = uri;
    }
    // axum's copy of the URI, for nested routers: not needed here.
    request
        .extensions_mut()
        .remove::<axum::extract::OriginalUri>();
    request
}

/// `auth: {lastSeq?, subscribe?}`: resume after `lastSeq`; start narrowed
/// to `subscribe` (ids, or `"*"`).
async fn on_connect(
    socket: SocketRef,
    Data(auth): Data<Value>,
    State(realtime): State<Realtime>,
    State(rules): State<Arc<SocketRules>>,
) {
    let subscription = match auth.get("subscribe").map(conversation_ids) {
        Some(ids) if !ids.contains(&ALL.to_owned()) && !ids.is_empty() => Subscription::Only(
            ids.into_iter()
                .filter(|id| is_conversation_id(id))
                .take(rules.max_subscriptions)
                .collect(),
        ),
        _ => Subscription::All,
    };
    let shared = Shared(Arc::new(Mutex::new(SocketState {
        subscription,
        live: false,
    })));
    socket.extensions.insert(shared.clone());
    socket.on("subscribe", subscribe);
    socket.on("unsubscribe", unsubscribe);
    match auth.get("lastSeq").and_then(Value::as_u64) {
        Some(after) => {
            tokio::spawn(catch_up(socket, shared, realtime, after));
        }
        None => {
            // Live from now on, once this replica knows where "now" is in
            // the log (at once, but for the first moments after a start).
            realtime.until_following(FOLLOW_WAIT).await;
            let _head = realtime.head.lock().await;
            go_live(&socket, &shared);
        }
    }
}

/// Joins the socket's rooms: from now on it gets events as emitted.
fn go_live(socket: &SocketRef, shared: &Shared) {
    // Rooms change under the state's lock, so that a concurrent
    // `subscribe` or falling behind cannot leave stale rooms behind.
    shared.with(|state| {
        state.live = true;
        socket.join(state.subscription.rooms());
    });
}

/// A live socket whose buffer is full (a client slower than the events)
/// leaves its rooms and catches up from the log after `after`, the last
/// event it was sent; it goes live again once it has caught up.
fn fall_behind(socket: SocketRef, realtime: &Realtime, after: u64) {
    let Some(shared) = Shared::of(&socket) else {
        return;
    };
    let was_live = shared
        .with(|state| {
            socket.leave_all();
            std::mem::replace(&mut state.live, false)
        })
        .unwrap_or(false);
    if was_live {
        tracing::debug!(socket = %socket.id, after, "slow socket catches up from the log");
        metrics::counter!("socketio_catch_ups_total").increment(1);
        tokio::spawn(catch_up(socket, shared, realtime.clone(), after));
    }
}

/// Sends one event to one socket, waiting while its buffer is full;
/// `false` once the socket is gone.
async fn send(socket: &SocketRef, name: &str, payload: &RawValue) -> bool {
    loop {
        match socket.emit(name, payload) {
            Ok(()) => return true,
            Err(SendError::Socket(SocketError::InternalChannelFull)) if socket.connected() => {
                tokio::time::sleep(FULL_BUFFER_WAIT).await;
            }
            Err(_) => return false,
        }
    }
}

/// What a catch-up did with a page of events.
enum Sent {
    /// Every event wanted was sent; the cursor is at the page's end.
    All,
    /// The socket's buffer is full (or the socket is gone): stopped.
    Stopped,
}

/// Sends the events the socket wants, up to `until`, moving `cursor`.
/// `wait`: wait while the socket's buffer is full (else stop there).
async fn send_page(
    socket: &SocketRef,
    shared: &Shared,
    events: &[Sequenced],
    until: u64,
    cursor: &mut u64,
    wait: bool,
) -> Sent {
    let from = *cursor;
    for event in events.iter().filter(|e| e.seq > from && e.seq <= until) {
        let wanted = shared
            .with(|state| state.subscription.wants(event.event.conversation_id()))
            .unwrap_or(false);
        if wanted && let Ok(payload) = serde_json::value::to_raw_value(&event.payload()) {
            let sent = if wait {
                send(socket, event.event.name(), &payload).await
            } else {
                socket.emit(event.event.name(), &payload).is_ok()
            };
            if !sent {
                return Sent::Stopped;
            }
        }
        *cursor = event.seq;
    }
    Sent::All
}

/// Tells the socket it missed more than can be sent, and makes it live.
async fn resync(socket: &SocketRef, shared: &Shared, realtime: &Realtime, reason: String) {
    if let Ok(payload) = serde_json::value::to_raw_value(&json!({"reason": reason})) {
        send(socket, "resync", &payload).await;
    }
    let _head = realtime.head.lock().await;
    go_live(socket, shared);
}

/// Sends what the socket missed after `after`, then makes it live: reads
/// the log up to what this replica has emitted (its head); the last few
/// events are sent under the head lock, and the socket joins its rooms
/// before the lock is released, so nothing falls in between.
async fn catch_up(socket: SocketRef, shared: Shared, realtime: Realtime, after: u64) {
    let mut cursor = after;
    while socket.connected() {
        let target = *realtime.head.lock().await;
        let limit = if cursor < target {
            usize::try_from(target - cursor).map_or(CATCH_UP_PAGE, |n| n.min(CATCH_UP_PAGE))
        } else {
            0 // only checks that `cursor` is in the log
        };
        let events = match realtime.bus.read(cursor, limit).await {
            Ok(events) => events,
            Err(ReadError::Gone { first, .. }) => {
                let reason = format!(
                    "events after {after} are no longer kept (the oldest is {first}); reload over REST"
                );
                return resync(&socket, &shared, &realtime, reason).await;
            }
            Err(ReadError::Ahead { last, .. }) => {
                let reason = format!(
                    "there is no event {cursor} (the last is {last}): the event log was reset; reload over REST"
                );
                return resync(&socket, &shared, &realtime, reason).await;
            }
            Err(ReadError::Broker(e)) => {
                tracing::warn!(error = %e, "cannot read the event log for a resuming socket; retrying");
                pause(&LOG_RETRY, 1).await;
                continue;
            }
        };
        if cursor < target {
            if events.is_empty() {
                cursor = target; // nothing kept in between
            }
            if let Sent::Stopped =
                send_page(&socket, &shared, &events, target, &mut cursor, true).await
            {
                return;
            }
            continue;
        }
        if cursor > target {
            // This replica has not emitted what the log already holds: wait.
            tokio::time::sleep(BEHIND_WAIT).await;
            continue;
        }
        // Caught up with `target`; whatever was emitted since is sent
        // under the lock, then the socket goes live.
        let head = realtime.head.lock().await;
        while cursor < *head {
            let Ok(events) = realtime.bus.read(cursor, CATCH_UP_PAGE).await else {
                break;
            };
            if events.is_empty() {
                cursor = *head;
                break;
            }
            if let Sent::Stopped =
                send_page(&socket, &shared, &events, *head, &mut cursor, false).await
            {
                break; // a full buffer is waited for without the lock
            }
        }
        if cursor == *head {
            go_live(&socket, &shared);
            return;
        }
        drop(head);
        tokio::time::sleep(FULL_BUFFER_WAIT).await;
    }
}

/// `subscribe(["conv_1", ...])` or `subscribe("conv_1")`: only these
/// conversations from now on (adding to earlier subscriptions);
/// `subscribe("*")`: every conversation again. Ids that are not
/// conversation ids are ignored (only such ids: nothing changes). Acks the
/// current list.
async fn subscribe(
    socket: SocketRef,
    Data(ids): Data<Value>,
    ack: AckSender,
    State(realtime): State<Realtime>,
    State(rules): State<Arc<SocketRules>>,
) {
    let ids = conversation_ids(&ids);
    let cap = rules.max_subscriptions;
    change(&socket, &realtime, |subscription| {
        if ids.iter().any(|id| id == ALL) {
            *subscription = Subscription::All;
            return;
        }
        let valid: BTreeSet<String> = ids
            .iter()
            .filter(|id| is_conversation_id(id))
            .cloned()
            .collect();
        if valid.is_empty() {
            return;
        }
        // Past the cap, further ids are ignored (the ack lists what holds).
        match subscription {
            Subscription::Only(current) => {
                let room = cap.saturating_sub(current.len());
                current.extend(valid.into_iter().take(room));
            }
            Subscription::All => {
                *subscription = Subscription::Only(valid.into_iter().take(cap).collect());
            }
        }
    })
    .await;
    ack.send(&listed(&socket)).ok();
}

/// `unsubscribe([...])`: stop getting these conversations. Acks the list.
async fn unsubscribe(
    socket: SocketRef,
    Data(ids): Data<Value>,
    ack: AckSender,
    State(realtime): State<Realtime>,
) {
    let ids = conversation_ids(&ids);
    change(&socket, &realtime, |subscription| {
        if let Subscription::Only(current) = subscription {
            current.retain(|id| !ids.contains(id));
        }
    })
    .await;
    ack.send(&listed(&socket)).ok();
}

/// Changes a socket's subscription, and its rooms if it is live: under
/// the head lock, so that no event is emitted while the rooms change.
async fn change(socket: &SocketRef, realtime: &Realtime, f: impl FnOnce(&mut Subscription)) {
    let Some(shared) = Shared::of(socket) else {
        return;
    };
    let _head = realtime.head.lock().await;
    shared.with(|state| {
        let before = state.subscription.clone();
        f(&mut state.subscription);
        if state.live && state.subscription != before {
            socket.leave_all();
            socket.join(state.subscription.rooms());
        }
    });
}

fn listed(socket: &SocketRef) -> Vec<String> {
    Shared::of(socket)
        .and_then(|shared| shared.with(|state| state.subscription.listed()))
        .unwrap_or_default()
}

fn conversation_ids(value: &Value) -> Vec<String> {
    match value {
        Value::String(id) => vec![id.clone()],
        Value::Array(ids) => ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Emits the event log, as it grows, to this replica's live sockets, until
/// cancelled. Each event once and in order: a live stream that ends (it
/// fell behind, or the log was unreachable) is replaced, and what it
/// missed is read from the log first.
pub async fn fan_out(realtime: Realtime, io: SocketIo, cancel: CancellationToken) {
    let mut emitted: Option<u64> = None;
    while !cancel.is_cancelled() {
        let (head, mut stream) = match realtime.bus.live().await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event log; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = pause(&LOG_RETRY, 1) => continue,
                }
            }
        };
        let last = match emitted {
            Some(last) if last <= head => last,
            // First start, or the log restarted below what was emitted
            // (NATS lost its storage): live from its head. Resuming
            // clients from before are told to resync.
            other => {
                if let Some(last) = other {
                    tracing::error!(last, head, "the event log restarted below what was emitted");
                }
                // Under the lock: a socket waiting to go live does so after
                // this, at `head`, and is not told to resync.
                let mut current = realtime.head.lock().await;
                *current = head;
                if !realtime.following.send_replace(true) && head > 0 {
                    resync_early_sockets(&io);
                }
                head
            }
        };
        // What the previous stream missed.
        let mut cursor = last;
        tracing::debug!(head, last, "event log: live stream (re)started");
        'fill: while cursor < head && !cancel.is_cancelled() {
            match realtime.bus.read(cursor, CATCH_UP_PAGE).await {
                // Nothing kept in between.
                Ok(events) if events.is_empty() => cursor = head,
                Ok(events) => {
                    for event in events {
                        if event.seq > head {
                            // The live stream has it.
                            cursor = head;
                            continue 'fill;
                        }
                        cursor = event.seq;
                        emit(&realtime, &io, &event).await;
                    }
                }
                Err(ReadError::Gone { first, .. }) => {
                    tracing::warn!(
                        first,
                        "events were forgotten before this replica emitted them"
                    );
                    cursor = first.saturating_sub(1).min(head);
                }
                // Reset again meanwhile: start over.
                Err(ReadError::Ahead { .. }) => cursor = head,
                Err(ReadError::Broker(e)) => {
                    tracing::warn!(error = %e, "cannot read the event log; retrying");
                    pause(&LOG_RETRY, 1).await;
                }
            }
        }
        emitted = Some(cursor.max(last));
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = stream.next() => event,
            };
            let Some(event) = event else { break };
            if emitted.is_some_and(|e| event.seq <= e) {
                continue;
            }
            emitted = Some(event.seq);
            emit(&realtime, &io, &event).await;
        }
    }
}

/// Sockets that went live before this replica could read the log (it
/// was unreachable for [`FOLLOW_WAIT`], or its stream was being created)
/// may have missed events appended meanwhile: where "now" was is unknown,
/// so they are told to reload. Readiness keeps load balancers from
/// sending them.
fn resync_early_sockets(io: &SocketIo) {
    let reason =
        "this replica was not following the event log yet when you connected; reload over REST";
    let Ok(payload) = serde_json::value::to_raw_value(&json!({"reason": reason})) else {
        return;
    };
    for socket in io.sockets() {
        let live = Shared::of(&socket)
            .and_then(|shared| shared.with(|state| state.live))
            .unwrap_or(false);
        if live && socket.emit("resync", &payload).is_err() {
            // A full buffer is waited for, without holding the head up.
            let payload = payload.clone();
            tokio::spawn(async move { send(&socket, "resync", &payload).await });
        }
    }
}

/// Emits one event to the live sockets entitled to it.
async fn emit(realtime: &Realtime, io: &SocketIo, event: &Sequenced) {
    let mut head = realtime.head.lock().await;
    let rooms = vec![ALL.to_owned(), room(event.event.conversation_id())];
    // Serialized once; sent socket by socket, so that a socket whose
    // buffer is full is known, and catches up rather than miss the event.
    if let Ok(payload) = serde_json::value::to_raw_value(&event.payload()) {
        for socket in io.to(rooms).sockets() {
            match socket.emit(event.event.name(), &payload) {
                Ok(()) => {}
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                    fall_behind(socket, realtime, event.seq.saturating_sub(1));
                }
                Err(_) => {} // gone
            }
        }
        metrics::counter!("socketio_events_emitted_total").increment(1);
    }
    *head = (*head).max(event.seq);
}
