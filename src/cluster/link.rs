//! The tasks behind one encrypted link: dial or accept, handshake, then a
//! reader and a writer task that report to the ClusterBridge.
//!
//! A link's outgoing frames wait in a queue measured in bytes. The bridge
//! refuses to queue past its limit and drops the link instead: TCP already
//! pushes back, and a peer that stops reading must not make us buffer without
//! bound.

use super::key::ClusterKey;
use super::noise::{handshake, FrameSender};
use actix::prelude::*;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::BufWriter;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn, Instrument as _};

/// Identifies one link for its whole life.
pub type LinkId = u64;

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Who opened the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// What the link tasks tell the bridge.
#[derive(Message)]
#[rtype(result = "()")]
pub enum LinkEvent {
    /// The handshake succeeded and our Hello is sent.
    Up(LinkHandle),
    /// A decrypted frame arrived. The reader waits until the bridge took it,
    /// so a slow bridge slows the peer down instead of growing a buffer.
    Frame { id: LinkId, frame: Bytes },
    /// The link is gone (peer closed it, or i/o or decryption failed).
    Down { id: LinkId, reason: String },
    /// Dialing or the handshake failed; there never was a link.
    Failed {
        remote: SocketAddr,
        direction: Direction,
        reason: String,
        /// The peer answered but failed the Noise handshake (wrong key,
        /// garbage, another protocol).
        handshake: bool,
    },
}

/// The bridge's handle on a live link. Dropping it closes the link.
pub struct LinkHandle {
    pub id: LinkId,
    pub remote: SocketAddr,
    pub direction: Direction,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    writer: tokio::task::AbortHandle,
    _close_reader: oneshot::Sender<()>,
}

/// The frame was not queued: the peer already has this many bytes waiting.
#[derive(Debug)]
pub struct QueueFull {
    pub queued: usize,
}

impl LinkHandle {
    /// Queues a frame unless that would pass `limit` bytes waiting.
    pub fn enqueue(&self, frame: Bytes, limit: usize) -> Result<(), QueueFull> {
        let len = frame.len();
        let queued = self.queued.fetch_add(len, Ordering::AcqRel);
        if queued + len > limit {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(QueueFull { queued });
        }
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The shared count of queued bytes, to wait for a drain without the bridge.
    pub fn queue_gauge(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// The Hello frame this node sends first on every link. The bridge replaces
/// it when the node's identity is renewed.
pub type HelloCard = Arc<RwLock<Bytes>>;

/// What every link task needs.
#[derive(Clone)]
pub struct LinkSetup {
    pub key: ClusterKey,
    pub hello: HelloCard,
    pub max_frame: usize,
    pub events: Recipient<LinkEvent>,
    pub span: tracing::Span,
}

/// Accepts links until the listener fails for good.
pub fn spawn_listener(listener: TcpListener, setup: LinkSetup) -> tokio::task::JoinHandle<()> {
    let span = setup.span.clone();
    tokio::spawn(
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        debug!(%remote, "inbound connection");
                        tokio::spawn(run_link(stream, remote, Direction::Inbound, setup.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a link failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// Dials `remote` and runs the link; failures arrive as [`LinkEvent::Failed`].
pub fn dial(remote: SocketAddr, timeout: Duration, setup: LinkSetup) {
    let span = setup.span.clone();
    tokio::spawn(
        async move {
            match tokio::time::timeout(timeout, TcpStream::connect(remote)).await {
                Ok(Ok(stream)) => run_link(stream, remote, Direction::Outbound, setup).await,
                Ok(Err(e)) => failed(&setup, remote, Direction::Outbound, e.to_string(), false),
                Err(_) => failed(
                    &setup,
                    remote,
                    Direction::Outbound,
                    format!("connect timed out after {timeout:?}"),
                    false,
                ),
            }
        }
        .instrument(span),
    );
}

fn failed(setup: &LinkSetup, remote: SocketAddr, direction: Direction, reason: String, handshake: bool) {
    setup.events.do_send(LinkEvent::Failed {
        remote,
        direction,
        reason,
        handshake,
    });
}

async fn run_link(mut stream: TcpStream, remote: SocketAddr, direction: Direction, setup: LinkSetup) {
    let _ = stream.set_nodelay(true);
    let transport = match handshake(&mut stream, &setup.key, direction == Direction::Outbound).await {
        Ok(t) => t,
        Err(e) => return failed(&setup, remote, direction, e.to_string(), true),
    };
    let (read_half, write_half) = stream.into_split();
    let mut sender = transport.sender(BufWriter::with_capacity(8 * 1024, write_half));
    let hello = setup.hello.read().map(|h| h.clone()).unwrap_or_default();
    let sent = async {
        sender.send(&hello).await?;
        sender.flush().await
    };
    if let Err(e) = sent.await {
        return failed(&setup, remote, direction, format!("sending hello: {e}"), false);
    }
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer =
        tokio::spawn(write_loop(id, sender, rx, queued.clone(), setup.events.clone()).instrument(setup.span.clone()));
    let (close_tx, mut close_rx) = oneshot::channel();
    let handle = LinkHandle {
        id,
        remote,
        direction,
        tx,
        queued,
        writer: writer.abort_handle(),
        _close_reader: close_tx,
    };
    if setup.events.send(LinkEvent::Up(handle)).await.is_err() {
        return;
    }
    let mut receiver = transport.receiver(read_half, setup.max_frame);
    let reason = loop {
        tokio::select! {
            _ = &mut close_rx => return,
            next = receiver.recv() => match next {
                Ok(Some(frame)) => {
                    if setup.events.send(LinkEvent::Frame { id, frame }).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break "peer closed the link".to_string(),
                Err(e) => break e.to_string(),
            }
        }
    };
    setup.events.do_send(LinkEvent::Down { id, reason });
}

async fn write_loop(
    id: LinkId,
    mut sender: FrameSender<BufWriter<OwnedWriteHalf>>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    events: Recipient<LinkEvent>,
) {
    while let Some(first) = rx.recv().await {
        let mut written = 0;
        let mut next = Some(first);
        // Write what is waiting, then flush once.
        let result = async {
            while let Some(frame) = next.take() {
                sender.send(&frame).await?;
                written += frame.len();
                if written < 256 * 1024 {
                    next = rx.try_recv().ok();
                }
            }
            sender.flush().await
        }
        .await;
        queued.fetch_sub(written, Ordering::AcqRel);
        if let Err(e) = result {
            events.do_send(LinkEvent::Down {
                id,
                reason: format!("write failed: {e}"),
            });
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_refuses_frames_past_its_byte_limit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (close, _closed) = oneshot::channel();
        let idle = tokio::spawn(async {});
        let handle = LinkHandle {
            id: 1,
            remote: "127.0.0.1:1".parse().unwrap(),
            direction: Direction::Outbound,
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            writer: idle.abort_handle(),
            _close_reader: close,
        };
        handle.enqueue(Bytes::from(vec![0u8; 600]), 1000).unwrap();
        assert_eq!(handle.queued_bytes(), 600);
        let full = handle.enqueue(Bytes::from(vec![0u8; 500]), 1000).unwrap_err();
        assert_eq!(full.queued, 600, "the refused frame is not counted");
        assert_eq!(handle.queued_bytes(), 600);
        handle.enqueue(Bytes::from(vec![0u8; 400]), 1000).unwrap();
        assert_eq!(rx.recv().await.unwrap().len(), 600);
        assert_eq!(rx.recv().await.unwrap().len(), 400);
    }
}
