//! Socket.IO: pushing the processor's events to connected browsers.
//!
//! Every replica subscribes to the events with a plain core-NATS
//! subscription (not a queue group), so every replica sees every event and
//! emits it to its own sockets only. A socket starts in the room [`ALL`]
//! (every event); `subscribe` narrows it to rooms `conv:<id>`. A socket is
//! in `ALL` or in conversation rooms, never both, so it never gets an
//! event twice.
//!
//! socketioxide has no connection-state recovery: events that happen while
//! a client is disconnected are not replayed. Clients re-read state over
//! REST when they (re)connect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use futures::StreamExt;
use serde_json::Value;
use shared::broker::EventBus;
use shared::domain::{Event, is_conversation_id};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::layer::SocketIoLayer;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Room of sockets that get every event.
const ALL: &str = "*";

fn room(conversation_id: &str) -> String {
    format!("conv:{conversation_id}")
}

pub fn socket_io() -> (SocketIoLayer, SocketIo) {
    // Clients only send small `subscribe` packets: a 1 KiB WebSocket read
    // buffer (4 KiB by default; it grows for a larger frame) saves 3 KiB
    // per connection.
    let (layer, io) = SocketIo::builder().ws_read_buffer_size(1024).build_layer();
    io.ns("/", on_connect);
    (layer, io)
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

async fn on_connect(socket: SocketRef) {
    socket.join(ALL);
    socket.on("subscribe", subscribe);
    socket.on("unsubscribe", unsubscribe);
}

/// `subscribe(["conv_1", ...])` or `subscribe("conv_1")`: only these
/// conversations from now on (adding to earlier subscriptions);
/// `subscribe("*")`: every conversation again. Acks the current list.
async fn subscribe(socket: SocketRef, Data(ids): Data<Value>, ack: AckSender) {
    let ids = conversation_ids(&ids);
    if ids.iter().any(|id| id == ALL) {
        socket.leave_all();
        socket.join(ALL);
    } else if !ids.is_empty() {
        socket.leave(ALL);
        socket.join(
            ids.iter()
                .filter(|id| is_conversation_id(id))
                .map(|id| room(id))
                .collect::<Vec<_>>(),
        );
    }
    ack.send(&subscriptions(&socket)).ok();
}

/// `unsubscribe([...])`: stop getting these conversations. Acks the list.
async fn unsubscribe(socket: SocketRef, Data(ids): Data<Value>, ack: AckSender) {
    let rooms: Vec<String> = conversation_ids(&ids).iter().map(|id| room(id)).collect();
    socket.leave(rooms);
    ack.send(&subscriptions(&socket)).ok();
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

/// What the socket receives now: `["*"]` or its conversation ids.
fn subscriptions(socket: &SocketRef) -> Vec<String> {
    socket
        .rooms()
        .iter()
        .map(|r| r.strip_prefix("conv:").unwrap_or(r).to_owned())
        .collect()
}

/// Messages sent through the API, waiting to be stored by the processor.
#[derive(Clone, Default)]
pub struct PendingSends(Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>);

impl PendingSends {
    /// Registers before publishing, so the stored event cannot be missed.
    /// The registration ends when the returned guard is dropped.
    pub fn register(&self, message_id: &str) -> PendingSend {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.0.lock() {
            pending.insert(message_id.to_owned(), tx);
        }
        PendingSend {
            sends: self.clone(),
            message_id: message_id.to_owned(),
            stored: Some(rx),
        }
    }

    fn stored(&self, message_id: &str) {
        let waiter = self
            .0
            .lock()
            .ok()
            .and_then(|mut pending| pending.remove(message_id));
        if let Some(waiter) = waiter {
            waiter.send(()).ok();
        }
    }
}

/// Emits every event of the bus to this process's sockets, until
/// cancelled; re-subscribes if the subscription ends.
pub async fn fan_out(
    events: Arc<dyn EventBus>,
    io: SocketIo,
    pending: PendingSends,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        let mut stream = match events.subscribe().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to events; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = stream.next() => event,
            };
            let Some(event) = event else { break };
            emit(&io, &pending, &event).await;
        }
    }
}

/// One registered send; waits for its message to be stored.
pub struct PendingSend {
    sends: PendingSends,
    message_id: String,
    stored: Option<oneshot::Receiver<()>>,
}

impl PendingSend {
    /// True once the processor has stored the message, false on timeout.
    pub async fn stored(mut self, timeout: std::time::Duration) -> bool {
        match self.stored.take() {
            Some(stored) => tokio::time::timeout(timeout, stored)
                .await
                .is_ok_and(|r| r.is_ok()),
            None => false,
        }
    }
}

impl Drop for PendingSend {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.sends.0.lock() {
            pending.remove(&self.message_id);
        }
    }
}

/// Emits one event to the sockets entitled to it.
pub async fn emit(io: &SocketIo, pending: &PendingSends, event: &Event) {
    let rooms = vec![ALL.to_owned(), room(event.conversation_id())];
    let sent = match event {
        Event::NewMessage(message) => {
            pending.stored(&message.message_id);
            io.to(rooms).emit("newMessage", message.as_ref()).await
        }
        Event::StatusUpdate(update) => io.to(rooms).emit("statusUpdate", update).await,
    };
    match sent {
        Ok(()) => metrics::counter!("socketio_events_emitted_total").increment(1),
        // A slow client with a full buffer misses the event; it re-reads over REST.
        Err(e) => tracing::debug!(error = %e, "event not delivered to every socket"),
    }
}
