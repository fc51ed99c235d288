//! The node's live stream of envelopes, for `GET /v1/events` and
//! `conjoiner tail`.
//!
//! Each envelope is written once as a Server-Sent Events frame and shared
//! by every reader that wants it. A reader's queue is bounded in bytes: a
//! reader that stops reading is dropped once [`MAX_QUEUED_BYTES`] wait for
//! it, and counted. (A shared ring of 1,024 envelopes held 900 MB of 900 KB
//! events for 200 readers that never read, and never let them go.) Readers
//! that did not show the node's API token get frames without bodies, which
//! may carry a deploy's secrets; those that did still never see the
//! cluster key in a keyring change (`keyring_change::hide_key`). Frames are handed to the HTTP server in
//! pieces of at most [`PIECE_BYTES`], so its buffer for a reader that does
//! not read holds a piece, not a whole envelope.

use crate::command::keyring_change::hide_key;
use crate::wire::Envelope;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tracing::warn;

/// The most bytes that may wait for one reader before it is dropped: room
/// for a few envelopes of the 1 MiB limit.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;
/// The most readers at once; another is refused until one leaves.
pub const MAX_READERS: usize = 1024;
/// The largest piece of a frame handed to the HTTP server at a time.
pub const PIECE_BYTES: usize = 16 << 10;

/// What one reader asked to see.
#[derive(Debug, Clone, Default)]
pub struct ReaderWants {
    /// Only envelopes to this address.
    pub address: Option<String>,
    /// Only envelopes of this type.
    pub kind: Option<String>,
    /// Whether it may see bodies (it showed the API token).
    pub bodies: bool,
}

impl ReaderWants {
    fn matches(&self, envelope: &Envelope) -> bool {
        self.address.as_ref().is_none_or(|a| &envelope.dst.address == a)
            && self.kind.as_ref().is_none_or(|k| envelope.kind.as_str() == k)
    }
}

/// The tap is full: [`MAX_READERS`] read it already.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_READERS} readers stream this node's envelopes already; try again when one has left")]
pub struct TapFull;

struct Reader {
    id: u64,
    wants: ReaderWants,
    frames: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Shared {
    readers: Mutex<Vec<Reader>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

/// Cloning is cheap; emitting with no reader costs a lock and nothing more.
#[derive(Clone, Default)]
pub struct EventTap {
    shared: Arc<Shared>,
}

impl EventTap {
    /// Offers an envelope to every reader that wants it; a reader with more
    /// than [`MAX_QUEUED_BYTES`] waiting is dropped instead.
    pub fn emit(&self, envelope: &Envelope) {
        let Ok(mut readers) = self.shared.readers.lock() else {
            return;
        };
        if readers.is_empty() {
            return;
        }
        let (mut whole, mut bare) = (None, None);
        readers.retain(|reader| {
            if !reader.wants.matches(envelope) {
                return true;
            }
            let frame = if reader.wants.bodies {
                whole.get_or_insert_with(|| frame_of(envelope, true)).clone()
            } else {
                bare.get_or_insert_with(|| frame_of(envelope, false)).clone()
            };
            let queued = reader.queued.load(Ordering::Relaxed);
            if queued > 0 && queued + frame.len() > MAX_QUEUED_BYTES {
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(
                    reader = reader.id,
                    queued_bytes = queued,
                    limit_bytes = MAX_QUEUED_BYTES,
                    readers_dropped = dropped,
                    "an event stream reader is not reading; dropped it"
                );
                return false;
            }
            reader.queued.fetch_add(frame.len(), Ordering::Relaxed);
            reader.frames.send(frame).is_ok()
        });
    }

    /// A new reader's stream of frames, or [`TapFull`].
    pub fn subscribe(&self, wants: ReaderWants) -> Result<TapStream, TapFull> {
        let mut readers = self.shared.readers.lock().map_err(|_| TapFull)?;
        if readers.len() >= MAX_READERS {
            return Err(TapFull);
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (frames, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        readers.push(Reader {
            id,
            wants,
            frames,
            queued: queued.clone(),
        });
        Ok(TapStream {
            id,
            receiver,
            queued,
            piece: Bytes::new(),
            shared: self.shared.clone(),
        })
    }

    /// Readers now.
    pub fn listeners(&self) -> usize {
        self.shared.readers.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Readers dropped for not reading, since the node started.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// One Server-Sent Events frame: `id:` and one `data:` line with the
/// envelope, whole or with its body left out (`"body_hidden": true`).
fn frame_of(envelope: &Envelope, bodies: bool) -> Bytes {
    let json = if bodies && envelope.body.get("op").and_then(serde_json::Value::as_str) == Some("keyring") {
        serde_json::to_value(envelope).and_then(|mut value| {
            if let Some(body) = value.get_mut("body") {
                hide_key(body);
            }
            serde_json::to_string(&value)
        })
    } else if bodies {
        serde_json::to_string(envelope)
    } else {
        serde_json::to_value(envelope).and_then(|mut value| {
            if let Some(fields) = value.as_object_mut() {
                fields.remove("body");
                fields.insert("body_hidden".into(), true.into());
            }
            serde_json::to_string(&value)
        })
    };
    Bytes::from(format!("id: {}\ndata: {}\n\n", envelope.id, json.unwrap_or_default()))
}

/// A reader's frames, in pieces of at most [`PIECE_BYTES`]. Dropping it
/// (the reader went away) takes the reader off the tap.
pub struct TapStream {
    id: u64,
    receiver: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    /// What is left of the frame being handed out.
    piece: Bytes,
    shared: Arc<Shared>,
}

impl futures_util::Stream for TapStream {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        if this.piece.is_empty() {
            match this.receiver.poll_recv(cx) {
                Poll::Ready(Some(frame)) => this.piece = frame,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        let piece = this.piece.split_to(this.piece.len().min(PIECE_BYTES));
        this.queued.fetch_sub(piece.len(), Ordering::Relaxed);
        Poll::Ready(Some(piece))
    }
}

impl Drop for TapStream {
    fn drop(&mut self) {
        if let Ok(mut readers) = self.shared.readers.lock() {
            readers.retain(|r| r.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MessageType, Source};
    use futures_util::StreamExt as _;
    use serde_json::json;

    fn envelope(address: &str, body: serde_json::Value) -> Envelope {
        let src = Source {
            node: "n1".into(),
            module: "test".into(),
        };
        Envelope::new(MessageType::Event, src, address, None, body)
    }

    /// A reader that showed the API token, of everything.
    fn token_reader(tap: &EventTap) -> TapStream {
        tap.subscribe(ReaderWants {
            bodies: true,
            ..ReaderWants::default()
        })
        .unwrap()
    }

    /// Everything the stream has ready now, joined.
    async fn ready_text(stream: &mut TapStream) -> String {
        let mut text = Vec::new();
        while let Ok(Some(piece)) = tokio::time::timeout(std::time::Duration::from_millis(10), stream.next()).await {
            assert!(piece.len() <= PIECE_BYTES, "pieces are at most {PIECE_BYTES} bytes");
            text.extend_from_slice(&piece);
        }
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn readers_get_what_they_asked_for_and_bodies_only_with_the_token() {
        let tap = EventTap::default();
        let mut trusted = token_reader(&tap);
        let mut anyone = tap.subscribe(ReaderWants::default()).unwrap();
        let mut only_b = tap
            .subscribe(ReaderWants {
                address: Some("b".into()),
                bodies: true,
                ..ReaderWants::default()
            })
            .unwrap();
        let big = "s".repeat(100_000);
        tap.emit(&envelope("a", json!({"secret": big})));
        tap.emit(&envelope("b", json!({"n": 2})));

        let seen = ready_text(&mut trusted).await;
        assert!(
            seen.contains(&big) && seen.contains(r#""n":2"#),
            "the token holder sees bodies"
        );
        let seen = ready_text(&mut anyone).await;
        assert!(!seen.contains("secret") && !seen.contains(r#""n":2"#), "{seen}");
        assert_eq!(seen.matches(r#""body_hidden":true"#).count(), 2, "{seen}");
        let seen = ready_text(&mut only_b).await;
        assert!(!seen.contains("secret") && seen.contains(r#""n":2"#), "{seen}");
    }

    #[tokio::test]
    async fn a_keyring_change_shows_its_key_to_no_reader() {
        let tap = EventTap::default();
        let mut trusted = token_reader(&tap);
        let key = "c2VjcmV0IGNsdXN0ZXIga2V5IG9mIDMyIGJ5dGVzISE=";
        let change = json!({"op": "keyring", "change": {"op": "install", "key": key, "id": "i", "ts": 1}});
        tap.emit(&envelope("mod.deployer", change));
        let list = json!({"op": "keyring", "change": {"op": "list", "id": "j", "ts": 2}});
        tap.emit(&envelope("mod.deployer", list));
        let seen = ready_text(&mut trusted).await;
        assert!(!seen.contains(key), "{seen}");
        assert!(seen.contains(crate::command::keyring_change::KEY_HIDDEN), "{seen}");
        assert!(
            seen.contains(r#""op":"install""#) && seen.contains(r#""op":"list""#),
            "the rest is shown: {seen}"
        );
    }

    #[tokio::test]
    async fn a_reader_that_does_not_read_is_dropped_at_the_bound_and_counted() {
        let tap = EventTap::default();
        let mut reading = token_reader(&tap);
        let mut idle = token_reader(&tap);
        let body = json!({"blob": "x".repeat(900_000)});
        for _ in 0..20 {
            tap.emit(&envelope("a", body.clone()));
            ready_text(&mut reading).await;
        }
        assert_eq!(tap.dropped(), 1, "only the reader that did not read");
        assert_eq!(tap.listeners(), 1);
        // What was queued before the drop is still its to read; then it ends.
        let mut left = 0;
        while let Some(piece) = idle.next().await {
            left += piece.len();
        }
        assert!(left <= MAX_QUEUED_BYTES, "{left} bytes waited for it");
        drop(reading);
        assert_eq!(tap.listeners(), 0, "a reader that goes away leaves the tap");
    }

    #[tokio::test]
    async fn readers_past_the_limit_are_refused() {
        let tap = EventTap::default();
        let readers: Vec<_> = (0..MAX_READERS)
            .map(|_| tap.subscribe(ReaderWants::default()).unwrap())
            .collect();
        assert!(tap.subscribe(ReaderWants::default()).is_err());
        drop(readers);
        assert!(tap.subscribe(ReaderWants::default()).is_ok());
    }
}
