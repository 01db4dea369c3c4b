//! Socket.IO: pushing the event log to connected browsers.
//!
//! Every replica reads the whole event log (not a share of it) and emits
//! each event, with its `seq`, to its own sockets. A live socket is in the
//! room [`ALL`] (every event), or, when its token is scoped to business
//! numbers, in rooms `num:<phone_number_id>` of its numbers; once it
//! narrows its stream with `subscribe`, it is in rooms `conv:<id>` and
//! `num:<phone_number_id>` of what it subscribed to instead. An event is
//! emitted to the rooms `*`, `conv:<its conversation>` and `num:<its
//! number>` at once, and socketioxide sends it once to a socket in several
//! of them, so a socket never gets an event twice.
//!
//! A scoped socket never gets another number's events: it never joins
//! [`ALL`], it can only subscribe to its numbers and their conversations,
//! and catching up skips the events of other numbers. An event's number is
//! read off its conversation id (see [`event_number`]).
//!
//! A client that connects with `auth: {lastSeq: N}` first catches up: it
//! gets the events after `N` it is entitled to, read from the log, and
//! joins its rooms (goes live) exactly when it has caught up with what the
//! replica emitted live, under the same lock, so it misses nothing and
//! gets nothing twice. If events after `N` are no longer kept it gets
//! `resync` and should reload over REST.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
use wa_core::domain::{Event, Sequenced, is_conversation_id};
use wa_core::numbers::{Scope, is_number_id, parse_conversation_id};
use wa_core::retry::Backoff;
use wa_engine::numbers::Numbers;
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
/// How long "no home number yet" (or a store error asking) is believed
/// before the store is asked again: asking costs a store read, and is
/// only needed for events of `conv_<wa_id>` that name no number.
const HOME_RECHECK: Duration = Duration::from_secs(1);
/// In `subscribe` lists, a business number's entry: `number:<id>`.
const NUMBER_PREFIX: &str = "number:";

fn room(conversation_id: &str) -> String {
    format!("conv:{conversation_id}")
}

fn number_room(phone_number_id: &str) -> String {
    format!("num:{phone_number_id}")
}

/// The business number of an event: read off its conversation id, the
/// home number's for `conv_<wa_id>`. While the home number is unknown,
/// a `conv_<wa_id>` event's own `phone_number_id` is taken: such an id is
/// only ever given for the home number (routing records the home number
/// first), and old events without one stay numberless (visible to
/// unscoped clients only).
pub(crate) fn event_number<'a>(event: &'a Event, home: Option<&'a str>) -> Option<&'a str> {
    match parse_conversation_id(event.conversation_id())? {
        (_, Some(number)) => Some(number),
        (_, None) => home.or(match event {
            Event::NewMessage(message) => message.phone_number_id.as_deref(),
            Event::StatusUpdate(update) => update.phone_number_id.as_deref(),
        }),
    }
}

/// Whether `conversation_id` is a home number's `conv_<wa_id>`: only
/// then does telling its number need the home number.
pub(crate) fn of_home_number(conversation_id: &str) -> bool {
    matches!(parse_conversation_id(conversation_id), Some((_, None)))
}

/// Whether a client of `scope` may see `event`.
pub(crate) fn visible(scope: &Scope, event: &Event, home: Option<&str>) -> bool {
    match scope {
        Scope::All => true,
        Scope::Numbers(_) => scope.allows_number(event_number(event, home)),
    }
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
    /// Where the home number is read (see [`Realtime::with_numbers`]).
    numbers: Option<Numbers>,
    /// When the store last had no home number (or could not say).
    home_missed: Arc<Mutex<Option<Instant>>>,
}

impl Realtime {
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        Self {
            bus,
            head: Default::default(),
            following: Arc::new(tokio::sync::watch::Sender::new(false)),
            numbers: None,
            home_missed: Arc::default(),
        }
    }

    /// Reads the home number from `numbers`, to tell the number of
    /// `conv_<wa_id>` events. Without it such events are told by their
    /// own `phone_number_id`, and events stored before numbers existed
    /// reach unscoped clients only.
    pub fn with_numbers(mut self, numbers: Numbers) -> Self {
        self.numbers = Some(numbers);
        self
    }

    /// The home number: cached once recorded; while there is none the
    /// store is asked at most once per [`HOME_RECHECK`].
    async fn home(&self) -> Option<String> {
        let numbers = self.numbers.as_ref()?;
        let recently_missed = || {
            self.home_missed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|at| at.elapsed() < HOME_RECHECK)
        };
        if recently_missed() {
            return None;
        }
        match numbers.home().await {
            Ok(Some(home)) => return Some(home),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the home number; retrying"),
        }
        *self
            .home_missed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        None
    }

    /// [`event_number`], reading the home number only if it is needed.
    async fn number_of(&self, event: &Event) -> Option<String> {
        let home = if of_home_number(event.conversation_id()) {
            self.home().await
        } else {
            None
        };
        event_number(event, home.as_deref()).map(str::to_owned)
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

/// A socket's stream: everything its token may see, or only some
/// conversations and business numbers (within what its token may see).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    All,
    Only {
        conversations: BTreeSet<String>,
        numbers: BTreeSet<String>,
    },
}

impl Subscription {
    fn only() -> Self {
        Subscription::Only {
            conversations: BTreeSet::new(),
            numbers: BTreeSet::new(),
        }
    }

    /// Whether the socket wants an event of `conversation_id`, of business
    /// number `number`; its scope is checked by the caller.
    fn wants(&self, conversation_id: &str, number: Option<&str>) -> bool {
        match self {
            Subscription::All => true,
            Subscription::Only {
                conversations,
                numbers,
            } => {
                conversations.contains(conversation_id)
                    || number.is_some_and(|number| numbers.contains(number))
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Subscription::All => 0,
            Subscription::Only {
                conversations,
                numbers,
            } => conversations.len() + numbers.len(),
        }
    }

    /// The rooms a live socket is in: a scoped socket's "everything" is
    /// its numbers' rooms, never [`ALL`].
    fn rooms(&self, scope: &Scope) -> Vec<String> {
        match (self, scope) {
            (Subscription::All, Scope::All) => vec![ALL.to_owned()],
            (Subscription::All, Scope::Numbers(numbers)) => {
                numbers.iter().map(|n| number_room(n)).collect()
            }
            (
                Subscription::Only {
                    conversations,
                    numbers,
                },
                _,
            ) => conversations
                .iter()
                .map(|id| room(id))
                .chain(numbers.iter().map(|n| number_room(n)))
                .collect(),
        }
    }

    /// What a client is told it receives: `["*"]`, or its conversation
    /// ids then its numbers as `number:<phone_number_id>`.
    fn listed(&self) -> Vec<String> {
        match self {
            Subscription::All => vec![ALL.to_owned()],
            Subscription::Only {
                conversations,
                numbers,
            } => conversations
                .iter()
                .cloned()
                .chain(numbers.iter().map(|n| format!("{NUMBER_PREFIX}{n}")))
                .collect(),
        }
    }

    /// Adds what is asked (`*`: everything again), up to `cap` entries;
    /// a request with nothing valid changes nothing.
    fn add(&mut self, asked: Asked, cap: usize) {
        if asked.all {
            *self = Subscription::All;
            return;
        }
        if asked.conversations.is_empty() && asked.numbers.is_empty() {
            return;
        }
        if *self == Subscription::All {
            *self = Subscription::only();
        }
        let mut room = cap.saturating_sub(self.len());
        if let Subscription::Only {
            conversations,
            numbers,
        } = self
        {
            // Past the cap, further entries are ignored (the ack lists
            // what holds).
            for id in asked.conversations {
                if room > 0 && conversations.insert(id) {
                    room -= 1;
                }
            }
            for number in asked.numbers {
                if room > 0 && numbers.insert(number) {
                    room -= 1;
                }
            }
        }
    }

    fn remove(&mut self, asked: &Asked) {
        if let Subscription::Only {
            conversations,
            numbers,
        } = self
        {
            conversations.retain(|id| !asked.conversations.contains(id));
            numbers.retain(|n| !asked.numbers.contains(n));
        }
    }
}

/// What a `subscribe`/`unsubscribe` (or `auth.subscribe`) names: a
/// conversation id, `"*"`, `"number:<phone_number_id>"`, a list of those,
/// or `{conversationId, phoneNumberId}` (each an id or a list of ids).
#[derive(Debug, Default, PartialEq, Eq)]
struct Asked {
    all: bool,
    conversations: BTreeSet<String>,
    numbers: BTreeSet<String>,
}

impl Asked {
    /// What `value` names, without what is malformed or outside `scope`
    /// (`home`: the home number, to tell the number of `conv_<wa_id>`).
    fn parse(value: &Value, scope: &Scope, home: Option<&str>) -> Self {
        let mut asked = Asked::default();
        match value {
            Value::Object(fields) => {
                for id in strings(fields.get("conversationId")) {
                    asked.conversation(id, scope, home);
                }
                for number in strings(fields.get("phoneNumberId")) {
                    asked.number(number, scope);
                }
            }
            other => {
                for entry in strings(Some(other)) {
                    if entry == ALL {
                        asked.all = true;
                    } else if let Some(number) = entry.strip_prefix(NUMBER_PREFIX) {
                        asked.number(number, scope);
                    } else {
                        asked.conversation(entry, scope, home);
                    }
                }
            }
        }
        asked
    }

    fn conversation(&mut self, id: &str, scope: &Scope, home: Option<&str>) {
        if is_conversation_id(id) && scope.allows_conversation(id, home) {
            self.conversations.insert(id.to_owned());
        }
    }

    fn number(&mut self, number: &str, scope: &Scope) {
        if is_number_id(number) && scope.allows_number(Some(number)) {
            self.numbers.insert(number.to_owned());
        }
    }

    /// Whether it names a conversation `conv_<wa_id>`, whose number is the
    /// home number (only then is the home number needed).
    fn needs_home(value: &Value) -> bool {
        let field = |name| match value {
            Value::Object(fields) => strings(fields.get(name)),
            _ => Vec::new(),
        };
        strings(Some(value))
            .into_iter()
            .chain(field("conversationId"))
            .any(of_home_number)
    }
}

/// A string, or the strings of a list.
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(id)) => vec![id.as_str()],
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug)]
struct SocketState {
    subscription: Subscription,
    /// What the socket's token may see.
    scope: Scope,
    /// In its rooms: gets events as they are emitted.
    live: bool,
}

impl SocketState {
    fn wants(&self, event: &Event, number: Option<&str>) -> bool {
        self.scope.allows_number(number) && self.subscription.wants(event.conversation_id(), number)
    }

    fn rooms(&self) -> Vec<String> {
        self.subscription.rooms(&self.scope)
    }
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
    /// `auth: {token}` must be one of these (when any are configured); a
    /// token scoped to numbers gets their events only.
    pub tokens: Tokens,
    /// Browser origins allowed to connect; `None`: any.
    pub origins: Option<Vec<String>>,
    /// Conversations and numbers one socket may subscribe to.
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
/// are configured) or from a browser origin outside `CORS_ORIGINS`; keeps
/// the token's [`Scope`] in the socket's extensions.
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
    let scope = if rules.tokens.is_open() {
        Some(Scope::All)
    } else {
        auth.ok()
            .and_then(|auth| rules.tokens.scope_of(auth.get("token")?.as_str()?))
    };
    let scope = scope.ok_or(Refused::Token)?;
    socket.extensions.insert(scope);
    Ok(())
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
/// to `subscribe` (what `subscribe` takes; `"*"`: everything).
async fn on_connect(
    socket: SocketRef,
    Data(auth): Data<Value>,
    State(realtime): State<Realtime>,
    State(rules): State<Arc<SocketRules>>,
) {
    // Set by `admit`; nothing is visible to a socket without one.
    let scope = socket
        .extensions
        .get::<Scope>()
        .unwrap_or_else(|| Scope::Numbers(BTreeSet::new()));
    let subscription = match auth.get("subscribe") {
        Some(value) if names_anything(value) => {
            let home = if Asked::needs_home(value) {
                realtime.home().await
            } else {
                None
            };
            let mut subscription = Subscription::All;
            let asked = Asked::parse(value, &scope, home.as_deref());
            if !asked.all {
                // Starts narrowed, even to nothing valid.
                subscription = Subscription::only();
                subscription.add(asked, rules.max_subscriptions);
            }
            subscription
        }
        _ => Subscription::All,
    };
    let shared = Shared(Arc::new(Mutex::new(SocketState {
        subscription,
        scope,
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
        socket.join(state.rooms());
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
    realtime: &Realtime,
    events: &[Sequenced],
    until: u64,
    cursor: &mut u64,
    wait: bool,
) -> Sent {
    let from = *cursor;
    for event in events.iter().filter(|e| e.seq > from && e.seq <= until) {
        let number = realtime.number_of(&event.event).await;
        let wanted = shared
            .with(|state| state.wants(&event.event, number.as_deref()))
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
            if let Sent::Stopped = send_page(
                &socket,
                &shared,
                &realtime,
                &events,
                target,
                &mut cursor,
                true,
            )
            .await
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
            if let Sent::Stopped = send_page(
                &socket,
                &shared,
                &realtime,
                &events,
                *head,
                &mut cursor,
                false,
            )
            .await
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
/// `subscribe("number:<phone_number_id>")` or `subscribe({phoneNumberId})`:
/// every conversation of these business numbers, likewise;
/// `subscribe("*")`: everything again. Ids that are malformed, or that the
/// socket's token may not see, are ignored (only such ids: nothing
/// changes). Acks the current list.
async fn subscribe(
    socket: SocketRef,
    Data(value): Data<Value>,
    ack: AckSender,
    State(realtime): State<Realtime>,
    State(rules): State<Arc<SocketRules>>,
) {
    let asked = asked(&socket, &realtime, &value).await;
    let cap = rules.max_subscriptions;
    change(&socket, &realtime, |subscription| {
        subscription.add(asked, cap)
    })
    .await;
    ack.send(&listed(&socket)).ok();
}

/// `unsubscribe(...)` (what `subscribe` takes): stop getting these
/// conversations and numbers. Acks the list.
async fn unsubscribe(
    socket: SocketRef,
    Data(value): Data<Value>,
    ack: AckSender,
    State(realtime): State<Realtime>,
) {
    let asked = asked(&socket, &realtime, &value).await;
    change(&socket, &realtime, |subscription| {
        subscription.remove(&asked)
    })
    .await;
    ack.send(&listed(&socket)).ok();
}

/// What a `subscribe`/`unsubscribe` of this socket names, within its scope.
async fn asked(socket: &SocketRef, realtime: &Realtime, value: &Value) -> Asked {
    let Some(scope) = Shared::of(socket).and_then(|shared| shared.with(|s| s.scope.clone())) else {
        return Asked::default();
    };
    let home = if Asked::needs_home(value) {
        realtime.home().await
    } else {
        None
    };
    Asked::parse(value, &scope, home.as_deref())
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
            socket.join(state.rooms());
        }
    });
}

fn listed(socket: &SocketRef) -> Vec<String> {
    Shared::of(socket)
        .and_then(|shared| shared.with(|state| state.subscription.listed()))
        .unwrap_or_default()
}

/// Whether `auth.subscribe` names anything (an empty list, or something
/// that is not a list, leaves the socket getting everything).
fn names_anything(value: &Value) -> bool {
    match value {
        Value::Object(fields) => ["conversationId", "phoneNumberId"]
            .iter()
            .any(|name| !strings(fields.get(*name)).is_empty()),
        other => !strings(Some(other)).is_empty(),
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

/// Emits one event to the live sockets entitled to it: those in the
/// rooms of everything, of its conversation, and of its number.
async fn emit(realtime: &Realtime, io: &SocketIo, event: &Sequenced) {
    let number = realtime.number_of(&event.event).await;
    let mut head = realtime.head.lock().await;
    let mut rooms = vec![ALL.to_owned(), room(event.event.conversation_id())];
    rooms.extend(number.as_deref().map(number_room));
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

#[cfg(test)]
mod tests {
    use wa_core::domain::StatusUpdate;

    use super::*;

    const HOME: &str = "9";

    fn scoped(numbers: &[&str]) -> Scope {
        Scope::Numbers(numbers.iter().map(|n| (*n).to_owned()).collect())
    }

    fn status(conversation_id: &str, phone_number_id: Option<&str>) -> Event {
        Event::StatusUpdate(StatusUpdate {
            message_id: "wamid.1".to_owned(),
            status: "read".into(),
            conversation_id: conversation_id.to_owned(),
            phone_number_id: phone_number_id.map(str::to_owned),
            business_number: None,
            timestamp: chrono::Utc::now(),
            client_message_id: None,
            previous_message_id: None,
            errors: None,
        })
    }

    #[test]
    fn an_events_number_is_read_off_its_conversation() {
        assert_eq!(
            event_number(&status("conv_1_8", Some("7")), None),
            Some("8")
        );
        assert_eq!(
            event_number(&status("conv_1", Some("7")), Some(HOME)),
            Some(HOME)
        );
        // No home number yet: the event's own number.
        assert_eq!(event_number(&status("conv_1", Some("7")), None), Some("7"));
        // Stored before numbers existed, no home number: nobody's.
        assert_eq!(event_number(&status("conv_1", None), None), None);
        assert!(visible(&Scope::All, &status("conv_1", None), None));
        assert!(!visible(&scoped(&["8"]), &status("conv_1", None), None));
        assert!(!visible(
            &scoped(&["8"]),
            &status("nonsense", Some("8")),
            None
        ));
    }

    #[test]
    fn a_scoped_socket_asks_only_for_what_it_may_see() {
        let scope = scoped(&["8"]);
        let asked = Asked::parse(
            &json!([
                "conv_1_8", "conv_2_7", "conv_3", "number:8", "number:7", "number:x", "bad"
            ]),
            &scope,
            Some(HOME),
        );
        assert_eq!(asked.conversations, BTreeSet::from(["conv_1_8".to_owned()]));
        assert_eq!(asked.numbers, BTreeSet::from(["8".to_owned()]));
        assert!(!asked.all);
        // The home number's conversations, once the home number is known.
        let home_scope = scoped(&[HOME]);
        let asked = Asked::parse(
            &json!({"conversationId": "conv_3"}),
            &home_scope,
            Some(HOME),
        );
        assert_eq!(asked.conversations.len(), 1);
        let asked = Asked::parse(&json!({"conversationId": "conv_3"}), &home_scope, None);
        assert!(asked.conversations.is_empty());
        assert!(Asked::needs_home(&json!({"conversationId": ["conv_3"]})));
        assert!(!Asked::needs_home(&json!(["conv_3_8", "number:8"])));

        let asked = Asked::parse(&json!({"phoneNumberId": ["8", "7"]}), &Scope::All, None);
        assert_eq!(asked.numbers.len(), 2);
        assert!(Asked::parse(&json!("*"), &scope, None).all);
    }

    #[test]
    fn a_scoped_socket_never_joins_the_room_of_everything() {
        let scope = scoped(&["7", "8"]);
        assert_eq!(Subscription::All.rooms(&scope), ["num:7", "num:8"]);
        assert_eq!(Subscription::All.rooms(&Scope::All), [ALL]);
        let mut subscription = Subscription::All;
        subscription.add(
            Asked::parse(&json!(["conv_1_8", "number:7"]), &scope, None),
            10,
        );
        assert_eq!(subscription.rooms(&scope), ["conv:conv_1_8", "num:7"]);
        assert_eq!(subscription.listed(), ["conv_1_8", "number:7"]);
        let state = SocketState {
            subscription,
            scope,
            live: true,
        };
        assert!(state.wants(&status("conv_1_8", None), Some("8")));
        assert!(state.wants(&status("conv_2_7", None), Some("7")));
        assert!(!state.wants(&status("conv_2_8", None), Some("8")));
    }

    #[test]
    fn subscriptions_stop_at_the_cap_and_can_be_removed() {
        let mut subscription = Subscription::All;
        let asked = Asked::parse(&json!(["conv_1", "conv_2", "number:7"]), &Scope::All, None);
        subscription.add(asked, 2);
        assert_eq!(subscription.len(), 2);
        subscription.add(Asked::parse(&json!("number:8"), &Scope::All, None), 2);
        assert_eq!(subscription.len(), 2, "past the cap: ignored");
        subscription.remove(&Asked::parse(
            &json!(["conv_1", "conv_2"]),
            &Scope::All,
            None,
        ));
        assert_eq!(subscription, Subscription::only());
        // Nothing valid: nothing changes.
        subscription.add(Asked::parse(&json!(["bad"]), &Scope::All, None), 2);
        assert_eq!(subscription, Subscription::only());
    }
}
