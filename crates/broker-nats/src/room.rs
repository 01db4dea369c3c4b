//! Telling "JetStream has no room" apart from an outage, and probing
//! whether there is room again (readiness).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::*;

/// Why JetStream refuses writes, in words (readiness, logs).
pub const JETSTREAM_FULL: &str = "JetStream is out of storage";
/// A stream at its own `max_bytes` / `max_msgs` (discard new).
pub const STREAM_FULL: &str = "a JetStream stream is at its size limit";

/// JetStream error codes that mean "no room": insufficient resources,
/// storage resources exceeded, account resources exceeded, memory
/// resources exceeded. Retrying them within a request is pointless.
pub(crate) const NO_ROOM_CODES: [u64; 4] = [10023, 10047, 10002, 10028];

/// Whether an error (or one of its sources) is JetStream saying it has no
/// room, and which kind. The text is read too: the object store passes
/// publish errors on as text.
pub(crate) fn no_room(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<jetstream::Error>()
            && NO_ROOM_CODES.contains(&js.error_code().0)
        {
            return Some(JETSTREAM_FULL);
        }
        text.push_str(&e.to_string());
        text.push('\n');
        next = e.source();
    }
    no_room_in_text(&text)
}

/// [`no_room`] for errors that only survive as text.
pub(crate) fn no_room_in_text(text: &str) -> Option<&'static str> {
    // Error 10077 (store failed) with the limit it hit.
    if text.contains("maximum bytes exceeded") || text.contains("maximum messages exceeded") {
        return Some(STREAM_FULL);
    }
    let coded = NO_ROOM_CODES
        .iter()
        .any(|code| text.contains(&format!("error code {code})")));
    (coded || text.contains("insufficient resources") || text.contains("insufficient storage"))
        .then_some(JETSTREAM_FULL)
}

impl NatsBroker {
    /// Whether JetStream has room again, after writes failed for `reason`:
    /// a stream at its limit has room once it holds less; a server out of
    /// storage takes a small write into the probe stream once it has
    /// room. `Err`: still no room (or no answer).
    pub(crate) async fn probe(&self, reason: &'static str) -> Result<(), &'static str> {
        if reason == STREAM_FULL {
            let mut stream = self
                .js
                .get_stream(self.names.webhook_stream())
                .await
                .map_err(|_| reason)?;
            let info = stream.info().await.map_err(|_| reason)?;
            let (limits, state) = (&info.config, &info.state);
            let bytes_full = limits.max_bytes > 0
                && state.bytes >= u64::try_from(limits.max_bytes).unwrap_or(u64::MAX);
            let count_full = limits.max_messages > 0
                && state.messages >= u64::try_from(limits.max_messages).unwrap_or(u64::MAX);
            return if bytes_full || count_full {
                Err(reason)
            } else {
                Ok(())
            };
        }
        let stream = stream::Config {
            name: self.names.probe_stream(),
            subjects: vec![self.names.probe()],
            storage: stream::StorageType::File,
            // One tiny message, whatever the probes: it occupies nothing.
            max_messages: 1,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(3600),
            num_replicas: self.events.streams.replicas(),
            ..Default::default()
        };
        let attempt = async {
            if self.js.get_stream(&stream.name).await.is_err() {
                self.js.create_stream(stream).await.map_err(|e| {
                    let detail = format!("{e:#}");
                    no_room_in_text(&detail).unwrap_or(reason)
                })?;
            }
            publish(&self.js, self.names.probe(), HeaderMap::new(), Bytes::new())
                .await
                .map(drop)
                .map_err(|e| no_room(&e).unwrap_or(reason))
        };
        match tokio::time::timeout(READY_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_room_is_told_apart_from_an_outage() {
        // As async-nats words a JetStream error, also inside the object
        // store's text.
        let full = "failed chunk publish: insufficient resources (code 503, error code 10023)";
        assert_eq!(no_room_in_text(full), Some(JETSTREAM_FULL));
        assert_eq!(
            no_room_in_text("maximum bytes exceeded (code 503, error code 10077)"),
            Some(STREAM_FULL)
        );
        assert_eq!(
            no_room_in_text("timed out: didn't receive ack in time"),
            None
        );
        assert_eq!(
            no_room_in_text("no responders (code 503, error code 10100)"),
            None
        );
    }
}
