//! Bodies larger than the server's `max_payload`: stored in the object
//! store under their SHA-256, with a reference message in the stream.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::object_store::{self, GetErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use chrono::Utc;
use tokio::io::AsyncReadExt;

use wa_broker::retry::{self, Backoff};
use wa_broker::{Settle, payload_id};

use super::*;

/// An object store bucket for bodies, created on first use.
pub(crate) struct Bucket {
    pub(crate) name: String,
    pub(crate) max_age: Duration,
    pub(crate) replicas: usize,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
    #[error("cannot store the body in the object store: {0}")]
    Bucket(#[source] async_nats::Error),
}

impl SendError {
    /// Whether JetStream refused it for lack of room, and which kind.
    pub(crate) fn no_room(&self) -> Option<&'static str> {
        match self {
            Self::Publish(e) => no_room(e),
            Self::Bucket(e) => no_room_in_text(&e.to_string()),
        }
    }
}

pub(crate) type PublishAck = jetstream::publish::PublishAck;

/// Publishes `body` as one message when it fits the server's `max_payload`;
/// otherwise stores it in `bucket` and publishes a reference to it with the
/// same headers, so the message id still de-duplicates it.
pub(crate) async fn publish_body(
    js: &jetstream::Context,
    subject: String,
    mut headers: HeaderMap,
    body: &Bytes,
    bucket: &Bucket,
) -> Result<PublishAck, SendError> {
    // The limit the client checks: the server's, from its INFO (NATS's
    // 1 MB default until the first connection tells).
    let max_payload = js.client().max_payload();
    if body.len().saturating_add(HEADER_ROOM) <= max_payload {
        match publish(js, subject.clone(), headers.clone(), body.clone()).await {
            // The server takes less than it said (e.g. a reconnection to
            // another one): by reference then.
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {}
            other => return other.map_err(SendError::Publish),
        }
    }
    let name = stash(js, bucket, body).await.map_err(SendError::Bucket)?;
    headers.insert(BODY_REF, name);
    headers.insert(BODY_BUCKET, bucket.name.as_str());
    headers.insert(BODY_SIZE, body.len().to_string());
    Ok(publish(js, subject, headers, Bytes::new()).await?)
}

pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAck, jetstream::context::PublishError> {
    let message = PublishMessage::build().headers(headers).payload(payload);
    js.send_publish(subject, message).await?.await
}

/// Puts `body` into `bucket` under its SHA-256 (hex) and returns that name.
pub(crate) async fn stash(
    js: &jetstream::Context,
    bucket: &Bucket,
    body: &Bytes,
) -> Result<String, async_nats::Error> {
    let name = payload_id(body);
    let store = match js.get_object_store(&bucket.name).await {
        Ok(store) => store,
        Err(_) => {
            js.create_object_store(object_store::Config {
                bucket: bucket.name.clone(),
                description: Some("bodies larger than the server's max_payload".to_owned()),
                max_age: bucket.max_age,
                storage: stream::StorageType::File,
                num_replicas: bucket.replicas,
                ..Default::default()
            })
            .await?
        }
    };
    // The name is the content's hash: a copy written within the duplicate
    // window is the same body, kept (a retry by Meta then uploads nothing,
    // and no chunks a processor may be reading are replaced). An older copy
    // is written again, so it lives as long as the newest reference to it.
    if let Ok(info) = store.info(&name).await {
        let age = info
            .modified
            .map(|m| Utc::now().timestamp().saturating_sub(m.unix_timestamp()));
        let recent =
            age.is_some_and(|age| u64::try_from(age).unwrap_or(0) < DUPLICATE_WINDOW.as_secs());
        if !info.deleted && info.size == body.len() && recent {
            return Ok(name);
        }
    }
    store.put(name.as_str(), &mut body.as_ref()).await?;
    Ok(name)
}

/// Why a referenced body could not be fetched.
pub(crate) enum Fetch {
    /// The server says it is not there (expired, deleted).
    Gone(String),
    /// NATS trouble: try again later.
    Failed(String),
}

/// The body stored as `name` in `bucket`, checked against its name.
pub(crate) async fn fetch_body(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
) -> Result<Bytes, Fetch> {
    let store = js.get_object_store(bucket).await.map_err(|e| {
        let missing = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<GetStreamError>())
            .is_some_and(|e| {
                matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            });
        if missing {
            Fetch::Gone(format!("no bucket {bucket}"))
        } else {
            Fetch::Failed(e.to_string())
        }
    })?;
    let mut object = store.get(name).await.map_err(|e| match e.kind() {
        GetErrorKind::NotFound => Fetch::Gone(e.to_string()),
        _ => Fetch::Failed(e.to_string()),
    })?;
    // Sized from the object's info, bounded in case that is wrong.
    let mut body = Vec::with_capacity(object.info().size.min(64 << 20));
    object
        .read_to_end(&mut body)
        .await
        .map_err(|e| Fetch::Failed(e.to_string()))?;
    // Content-addressed: anything else is a copy being rewritten; read again later.
    if payload_id(&body) != name {
        return Err(Fetch::Failed(format!("{name} read back different bytes")));
    }
    Ok(body.into())
}

/// How a payload whose body cannot be fetched is redelivered: 1 s
/// doubling to 30 s, jittered (an outage of the object store hits every
/// such payload at once; they should not all come back together).
const BODY_FETCH_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// A referenced body could not be fetched: the message is delivered again
/// later (NATS trouble is waited out, never dead-lettered); a body the
/// server keeps saying is gone is dead-lettered after a while.
pub(crate) async fn body_unavailable(
    settle: &NatsSettle,
    bucket: &str,
    name: &str,
    attempt: i64,
    error: Fetch,
) {
    let (gone, error) = match error {
        Fetch::Gone(e) => (true, e),
        Fetch::Failed(e) => (false, e),
    };
    if gone && attempt >= MISSING_BODY_DELIVERIES {
        let reason = format!("body {name} is no longer in bucket {bucket}: {error}");
        tracing::error!(%reason, sequence = settle.sequence, "payload dead-lettered");
        if settle.dead_letter(&Bytes::new(), &reason).await.is_ok() {
            return;
        }
    }
    let delay = retry::wait(&BODY_FETCH_RETRY, retry::attempt_number(attempt));
    tracing::warn!(%error, name, attempt, ?delay, "cannot fetch a payload's body; retrying later");
    if let Err(e) = settle.retry_after(delay).await {
        // Then it comes back after the ack wait.
        tracing::warn!(error = %e, "retry not scheduled");
    }
}

/// The size of the body a message carries or refers to.
pub(crate) fn body_size(message: &jetstream::Message) -> usize {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(BODY_SIZE))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(message.payload.len())
}
