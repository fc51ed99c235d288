//! Links as the ClusterBridge sees them, whatever carries them: the events a
//! transport reports, and the handle the bridge sends through.
//!
//! A link's outgoing frames wait in two queues, control before bulk, so a
//! probe or a membership change never waits behind envelopes. Each queue is
//! measured in bytes, and the bulk one in time too:
//! - a bulk frame past the byte limit, or older than
//!   [`backpressure::MAX_WAIT`] when its turn comes, is shed and counted (by
//!   the envelopes it carried); the link stays up;
//! - a control frame past the limit means the peer reads nothing at all:
//!   the bridge drops the link.
//!
//! The bridge reads [`LinkHandle::sample`] to hold back publishers before
//! either limit is reached (see [`backpressure`]).

use super::backpressure::{self, LinkSample};
use super::core::{Direction, LinkId};
use super::keyring::SharedKeyring;
use super::node_key::NodeKey;
use super::noise::LinkError;
use super::protocol::Lane;
use actix::prelude::*;
use bytes::Bytes;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// A fresh link id, unique in this process.
pub fn next_link_id() -> LinkId {
    NEXT_LINK.fetch_add(1, Ordering::Relaxed)
}

/// Why a link went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The peer closed it (or its process ended).
    PeerClosed,
    /// The peer sent a frame over the size limit.
    Oversized(String),
    /// Reading, writing or decrypting failed.
    Failed(String),
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::PeerClosed => f.write_str("peer closed the link"),
            DownReason::Oversized(e) | DownReason::Failed(e) => f.write_str(e),
        }
    }
}

/// What a transport tells the bridge.
#[derive(Message)]
#[rtype(result = "()")]
pub enum LinkEvent {
    /// The link is established (and, on TCP, its Noise handshake done).
    Up(LinkHandle),
    /// A frame arrived. The reader waits until the bridge took it, so a
    /// slow bridge slows the peer down instead of growing a buffer.
    Frame { id: LinkId, frame: Bytes },
    /// The link is gone.
    Down { id: LinkId, reason: DownReason },
    /// A dial's TCP connection was accepted; the handshake starts.
    Connected { remote: SocketAddr },
    /// Dialing or the handshake failed; there never was a link.
    Failed {
        remote: SocketAddr,
        direction: Direction,
        reason: String,
        stage: FailedAt,
    },
}

/// Where a link that never came up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedAt {
    /// Connecting: refused, unreachable, timed out.
    Connect,
    /// The peer spoke but failed the handshake: a wrong key, garbage,
    /// another protocol.
    HandshakeRefused,
    /// The handshake never finished: it timed out, or the peer hung up.
    /// A busy or departing node does that too, so it says nothing about
    /// keys (a busy seed's timeouts were once logged as a key mismatch).
    HandshakeUnfinished,
}

impl FailedAt {
    /// The stage a handshake error stands for.
    pub fn of_handshake(e: &LinkError) -> FailedAt {
        match e {
            LinkError::Handshake(_)
            | LinkError::NoCommonKey { .. }
            | LinkError::MessageTooLarge { .. }
            | LinkError::Decrypt(_) => FailedAt::HandshakeRefused,
            LinkError::HandshakeTimeout(_)
            | LinkError::ClosedDuringHandshake
            | LinkError::Io(_)
            | LinkError::FrameTooLarge { .. }
            | LinkError::Truncated => FailedAt::HandshakeUnfinished,
        }
    }
}

/// What every link task needs.
#[derive(Clone)]
pub struct LinkSetup {
    /// The keys links are made with, read at each handshake.
    pub keys: SharedKeyring,
    /// This node's identity, the static key of its handshakes.
    pub node_key: Arc<NodeKey>,
    pub max_frame: usize,
    pub events: Recipient<LinkEvent>,
    pub span: tracing::Span,
}

/// The bridge's handle on a live link. Dropping it closes the link after
/// what is queued has been written (or after a grace period).
pub struct LinkHandle {
    pub id: LinkId,
    pub remote: SocketAddr,
    pub direction: Direction,
    control: mpsc::UnboundedSender<Bytes>,
    bulk: mpsc::UnboundedSender<BulkFrame>,
    load: Arc<LinkLoad>,
    writer: tokio::task::AbortHandle,
    _close_reader: oneshot::Sender<()>,
    /// The TCP socket (a duplicate descriptor), to ask the kernel whether
    /// the peer's host still acknowledges; none on in-memory links.
    socket: Option<OwnedFd>,
    /// The X25519 static key the peer proved it holds in the handshake.
    pub peer_static: Option<[u8; 32]>,
}

/// A control frame was not queued: the peer already has this many control
/// bytes waiting, so it reads nothing.
#[derive(Debug)]
pub struct QueueFull {
    pub queued: usize,
}

/// What became of a frame offered to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// A bulk frame past the byte limit, shed with the envelopes it held.
    Shed {
        envelopes: u32,
    },
}

/// A bulk frame, when it was queued, and how many envelopes it carries (so
/// shedding it is counted by the envelopes lost).
struct BulkFrame {
    bytes: Bytes,
    at: Instant,
    envelopes: u32,
}

/// A link's queue figures, shared by its handle and its writer.
#[derive(Default)]
struct LinkLoad {
    /// Bytes waiting, both lanes (and the batch the writer is writing).
    queued: AtomicUsize,
    /// Bytes waiting in the bulk lane.
    bulk_queued: AtomicUsize,
    /// Bytes written since the link came up.
    written: AtomicU64,
    /// How long the last bulk frame taken had waited, in µs.
    last_bulk_wait_us: AtomicU64,
    /// Envelopes shed because their frame waited past `MAX_WAIT`.
    shed_stale: AtomicU64,
    /// Envelopes in the bulk lane right now: lost if the link closes.
    bulk_envelopes: AtomicU64,
}

/// The receiving ends of a link's two queues, for its writer.
pub struct Outgoing {
    control: mpsc::UnboundedReceiver<Bytes>,
    bulk: mpsc::UnboundedReceiver<BulkFrame>,
    load: Arc<LinkLoad>,
}

impl Outgoing {
    /// The next frame to write, control first; `None` once the handle is
    /// dropped and both queues are drained.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            let bulk = tokio::select! {
                biased;
                Some(f) = self.control.recv() => return Some(f),
                Some(f) = self.bulk.recv() => f,
                else => return None,
            };
            if let Some(frame) = self.take_bulk(bulk) {
                return Some(frame);
            }
        }
    }

    /// A frame waiting right now, control first.
    pub fn try_next(&mut self) -> Option<Bytes> {
        if let Ok(f) = self.control.try_recv() {
            return Some(f);
        }
        while let Ok(bulk) = self.bulk.try_recv() {
            if let Some(frame) = self.take_bulk(bulk) {
                return Some(frame);
            }
        }
        None
    }

    /// A bulk frame leaves its queue: written, unless it waited too long.
    fn take_bulk(&mut self, frame: BulkFrame) -> Option<Bytes> {
        let len = frame.bytes.len();
        self.load.bulk_queued.fetch_sub(len, Ordering::AcqRel);
        self.load
            .bulk_envelopes
            .fetch_sub(u64::from(frame.envelopes), Ordering::AcqRel);
        let waited = frame.at.elapsed();
        if waited > backpressure::MAX_WAIT {
            self.load.queued.fetch_sub(len, Ordering::AcqRel);
            self.load
                .shed_stale
                .fetch_add(u64::from(frame.envelopes), Ordering::Relaxed);
            return None;
        }
        self.load
            .last_bulk_wait_us
            .store(waited.as_micros() as u64, Ordering::Relaxed);
        Some(frame.bytes)
    }

    /// Marks `bytes` as written.
    pub fn written(&self, bytes: usize) {
        self.load.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.load.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl LinkHandle {
    /// A handle and the queues its writer drains. `writer` is the task that
    /// drains them; `close_reader` stops the reading side when the handle goes.
    pub fn new(
        id: LinkId,
        remote: SocketAddr,
        direction: Direction,
        writer: tokio::task::AbortHandle,
        close_reader: oneshot::Sender<()>,
    ) -> (LinkHandle, Outgoing) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (bulk_tx, bulk_rx) = mpsc::unbounded_channel();
        let load = Arc::new(LinkLoad::default());
        (
            LinkHandle {
                id,
                remote,
                direction,
                control: control_tx,
                bulk: bulk_tx,
                load: load.clone(),
                writer,
                _close_reader: close_reader,
                socket: None,
                peer_static: None,
            },
            Outgoing {
                control: control_rx,
                bulk: bulk_rx,
                load,
            },
        )
    }

    /// Queues a frame unless its lane already holds `limit` bytes: a bulk
    /// frame is then shed (the answer says how many envelopes went with
    /// it), a control frame refused. `envelopes` is how many the frame
    /// carries.
    pub fn enqueue(&self, frame: Bytes, lane: Lane, envelopes: u32, limit: usize) -> Result<Queued, QueueFull> {
        let len = frame.len();
        let load = &self.load;
        match lane {
            Lane::Control => {
                let queued = load.queued.load(Ordering::Acquire);
                let control = queued.saturating_sub(load.bulk_queued.load(Ordering::Acquire));
                if control + len > limit {
                    return Err(QueueFull { queued: control });
                }
                load.queued.fetch_add(len, Ordering::AcqRel);
                if self.control.send(frame).is_err() {
                    load.queued.fetch_sub(len, Ordering::AcqRel);
                }
            }
            Lane::Bulk => {
                if load.bulk_queued.load(Ordering::Acquire) + len > limit {
                    return Ok(Queued::Shed { envelopes });
                }
                self.queue_bulk(frame, envelopes, Instant::now());
            }
        }
        Ok(Queued::Yes)
    }

    fn queue_bulk(&self, bytes: Bytes, envelopes: u32, at: Instant) {
        let len = bytes.len();
        let load = &self.load;
        load.queued.fetch_add(len, Ordering::AcqRel);
        load.bulk_queued.fetch_add(len, Ordering::AcqRel);
        load.bulk_envelopes.fetch_add(u64::from(envelopes), Ordering::AcqRel);
        if self.bulk.send(BulkFrame { bytes, at, envelopes }).is_err() {
            load.queued.fetch_sub(len, Ordering::AcqRel);
            load.bulk_queued.fetch_sub(len, Ordering::AcqRel);
            load.bulk_envelopes.fetch_sub(u64::from(envelopes), Ordering::AcqRel);
        }
    }

    /// The link's queues as they are now, for its [`backpressure::LinkWatch`].
    pub fn sample(&self) -> LinkSample {
        LinkSample {
            queued: self.load.queued.load(Ordering::Acquire),
            bulk_queued: self.load.bulk_queued.load(Ordering::Acquire),
            written: self.load.written.load(Ordering::Relaxed),
            last_bulk_wait: Duration::from_micros(self.load.last_bulk_wait_us.load(Ordering::Relaxed)),
        }
    }

    /// Envelopes shed so far because their frame waited past
    /// [`backpressure::MAX_WAIT`].
    pub fn shed_stale(&self) -> u64 {
        self.load.shed_stale.load(Ordering::Relaxed)
    }

    /// Envelopes waiting in the bulk lane: what is lost if the link closes
    /// now.
    pub fn envelopes_waiting(&self) -> u64 {
        self.load.bulk_envelopes.load(Ordering::Acquire)
    }

    /// Keeps `socket` (a duplicate of the link's TCP descriptor) for
    /// [`LinkHandle::peer_host_answered`].
    pub fn with_socket(mut self, socket: OwnedFd) -> LinkHandle {
        self.socket = Some(socket);
        self
    }

    /// The link's peer proved it holds `key` (see `Transport::peer_static`).
    pub fn with_peer_static(mut self, key: Option<[u8; 32]>) -> LinkHandle {
        self.peer_static = key;
        self
    }

    /// What the kernel says about this link's TCP connection; `None` on
    /// in-memory links or when it cannot be read (the failure detector
    /// then treats silence as it always did).
    pub fn tcp_report(&self) -> Option<super::tcp_info::LinkReport> {
        self.socket
            .as_ref()
            .and_then(|s| super::tcp_info::link_report(s.as_fd()).ok())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.load.queued.load(Ordering::Acquire)
    }
}

/// How long a closed link's writer may go on writing what was queued.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

impl Drop for LinkHandle {
    fn drop(&mut self) {
        // The queues close with the senders; the writer drains them and
        // stops. A peer that does not read must not keep it forever.
        let writer = self.writer.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(CLOSE_GRACE).await;
                writer.abort();
            });
        } else {
            writer.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> (LinkHandle, Outgoing) {
        let idle = tokio::spawn(async {});
        let (close, _closed) = oneshot::channel();
        LinkHandle::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            Direction::Outbound,
            idle.abort_handle(),
            close,
        )
    }

    fn frame(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[tokio::test]
    async fn bulk_past_its_limit_is_shed_and_counted_while_control_still_goes_first() {
        let (handle, mut out) = link();
        assert_eq!(handle.enqueue(frame(600, 0), Lane::Bulk, 3, 1000).unwrap(), Queued::Yes);
        assert_eq!(
            handle.enqueue(frame(500, 0), Lane::Bulk, 2, 1000).unwrap(),
            Queued::Shed { envelopes: 2 },
            "the bulk lane is full: shed, with its envelopes"
        );
        assert_eq!(handle.queued_bytes(), 600, "the shed frame is not counted as queued");
        // Control has a limit of its own: a full bulk lane does not block it.
        assert_eq!(
            handle.enqueue(frame(900, 1), Lane::Control, 0, 1000).unwrap(),
            Queued::Yes
        );
        let full = handle.enqueue(frame(200, 1), Lane::Control, 0, 1000).unwrap_err();
        assert_eq!(full.queued, 900, "only control bytes count against control");
        let s = handle.sample();
        assert_eq!((s.queued, s.bulk_queued, s.written), (1500, 600, 0));
        assert_eq!(handle.envelopes_waiting(), 3);
        let first = out.next().await.unwrap();
        assert_eq!((first.len(), first[0]), (900, 1), "control first");
        out.written(first.len());
        let second = out.next().await.unwrap();
        assert_eq!(second.len(), 600);
        out.written(second.len());
        let s = handle.sample();
        assert_eq!((s.queued, s.bulk_queued, s.written), (0, 0, 1500));
        drop(handle);
        assert!(out.next().await.is_none(), "the queues end with the handle");
    }

    #[tokio::test]
    async fn a_bulk_frame_that_waited_past_the_limit_is_shed_by_the_writer() {
        let (handle, mut out) = link();
        let long_ago = Instant::now() - backpressure::MAX_WAIT - Duration::from_millis(1);
        handle.queue_bulk(frame(100, 7), 4, long_ago);
        handle.enqueue(frame(50, 8), Lane::Bulk, 1, 10_000).unwrap();
        let next = out.try_next().unwrap();
        assert_eq!(next[0], 8, "the stale frame was skipped");
        assert_eq!(handle.shed_stale(), 4, "counted by the envelopes it carried");
        assert_eq!(handle.envelopes_waiting(), 0);
        out.written(next.len());
        assert_eq!(handle.sample().queued, 0, "the shed frame left the byte count too");
    }
}
