//! Links as the ClusterBridge sees them, whatever carries them: the events a
//! transport reports, and the handle the bridge sends through.
//!
//! A link's outgoing frames wait in two queues, control before bulk, so a
//! probe or a membership change never waits behind envelopes. Together the
//! queues are measured in bytes; the bridge refuses to queue past its limit
//! and drops the link instead: TCP already pushes back, and a peer that
//! stops reading must not make us buffer without bound.

use super::core::{Direction, LinkId};
use super::keyring::SharedKeyring;
use super::noise::LinkError;
use super::protocol::Lane;
use actix::prelude::*;
use bytes::Bytes;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    bulk: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    writer: tokio::task::AbortHandle,
    _close_reader: oneshot::Sender<()>,
    /// The TCP socket (a duplicate descriptor), to ask the kernel whether
    /// the peer's host still acknowledges; none on in-memory links.
    socket: Option<OwnedFd>,
}

/// The frame was not queued: the peer already has this many bytes waiting.
#[derive(Debug)]
pub struct QueueFull {
    pub queued: usize,
}

/// The receiving ends of a link's two queues, for its writer.
pub struct Outgoing {
    pub control: mpsc::UnboundedReceiver<Bytes>,
    pub bulk: mpsc::UnboundedReceiver<Bytes>,
    pub queued: Arc<AtomicUsize>,
}

impl Outgoing {
    /// The next frame to write, control first; `None` once the handle is
    /// dropped and both queues are drained.
    pub async fn next(&mut self) -> Option<Bytes> {
        tokio::select! {
            biased;
            Some(f) = self.control.recv() => Some(f),
            Some(f) = self.bulk.recv() => Some(f),
            else => None,
        }
    }

    /// A frame waiting right now, control first.
    pub fn try_next(&mut self) -> Option<Bytes> {
        self.control.try_recv().ok().or_else(|| self.bulk.try_recv().ok())
    }

    /// Marks `bytes` as written.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
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
        let queued = Arc::new(AtomicUsize::new(0));
        (
            LinkHandle {
                id,
                remote,
                direction,
                control: control_tx,
                bulk: bulk_tx,
                queued: queued.clone(),
                writer,
                _close_reader: close_reader,
                socket: None,
            },
            Outgoing {
                control: control_rx,
                bulk: bulk_rx,
                queued,
            },
        )
    }

    /// Queues a frame unless that would pass `limit` bytes waiting.
    pub fn enqueue(&self, frame: Bytes, lane: Lane, limit: usize) -> Result<(), QueueFull> {
        let len = frame.len();
        let queued = self.queued.fetch_add(len, Ordering::AcqRel);
        if queued + len > limit {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(QueueFull { queued });
        }
        let tx = match lane {
            Lane::Control => &self.control,
            Lane::Bulk => &self.bulk,
        };
        if tx.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Keeps `socket` (a duplicate of the link's TCP descriptor) for
    /// [`LinkHandle::peer_host_answered`].
    pub fn with_socket(mut self, socket: OwnedFd) -> LinkHandle {
        self.socket = Some(socket);
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
        self.queued.load(Ordering::Acquire)
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

    #[tokio::test]
    async fn the_queues_refuse_frames_past_their_byte_limit_and_control_goes_first() {
        let idle = tokio::spawn(async {});
        let (close, _closed) = oneshot::channel();
        let (handle, mut out) = LinkHandle::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            Direction::Outbound,
            idle.abort_handle(),
            close,
        );
        handle.enqueue(Bytes::from(vec![0u8; 600]), Lane::Bulk, 1000).unwrap();
        assert_eq!(handle.queued_bytes(), 600);
        let full = handle
            .enqueue(Bytes::from(vec![0u8; 500]), Lane::Control, 1000)
            .unwrap_err();
        assert_eq!(full.queued, 600, "the refused frame is not counted");
        handle
            .enqueue(Bytes::from(vec![1u8; 400]), Lane::Control, 1000)
            .unwrap();
        let first = out.next().await.unwrap();
        assert_eq!((first.len(), first[0]), (400, 1), "control first");
        out.written(first.len());
        assert_eq!(out.next().await.unwrap().len(), 600);
        drop(handle);
        assert!(out.next().await.is_none(), "the queues end with the handle");
    }
}
