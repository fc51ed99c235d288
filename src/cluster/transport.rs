//! The transport seam: how the ClusterBridge gets links, whatever carries
//! them. [`TcpTransport`] is TCP with a Noise `XXpsk3` handshake keyed by the
//! cluster key; `cluster::memory` is an in-process network for tests.

use super::admission::{Admission, AdmissionLimits, Place};
use super::core::Direction;
use super::link::{next_link_id, DownReason, FailedAt, LinkEvent, LinkHandle, LinkSetup, Outgoing};
use super::noise::{handshake_as, FrameSender, LinkError};
use crate::logging::LogThrottle;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::BufWriter;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn, Instrument as _};

/// How long a link this node closed keeps reading, for the peer to close
/// its side (see `run_link`).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Something that carries links between nodes.
pub trait Transport: Send + Sync + 'static {
    /// The address peers reach this node at, as bound.
    fn local_addr(&self) -> SocketAddr;
    /// Starts accepting links; they are reported to `setup.events`.
    fn listen(&self, setup: LinkSetup) -> tokio::task::JoinHandle<()>;
    /// Dials `addr`; the outcome is reported to `setup.events`.
    fn dial(&self, addr: SocketAddr, timeout: Duration, setup: LinkSetup);
}

/// TCP links with a Noise handshake.
pub struct TcpTransport {
    listener: Mutex<Option<TcpListener>>,
    local: SocketAddr,
    limits: AdmissionLimits,
}

impl TcpTransport {
    /// Takes a bound listener (binding first lets port 0 pick a port).
    pub fn new(listener: TcpListener) -> std::io::Result<TcpTransport> {
        TcpTransport::with_limits(listener, AdmissionLimits::default())
    }

    /// [`TcpTransport::new`], admitting at most `limits` connections to
    /// their handshake at once.
    pub fn with_limits(listener: TcpListener, limits: AdmissionLimits) -> std::io::Result<TcpTransport> {
        let local = listener.local_addr()?;
        Ok(TcpTransport {
            listener: Mutex::new(Some(listener)),
            local,
            limits,
        })
    }
}

/// What the accept loop keeps per connection in its handshake: dropping
/// it (when another source takes the place) ends that handshake.
type PushOut = oneshot::Sender<()>;

/// A connection's place among those in their handshake; given back when
/// dropped, whether the handshake worked or not.
struct Ticket {
    admission: Arc<Mutex<Admission<PushOut>>>,
    place: Place,
    /// Resolves when another source took the place.
    pushed_out: oneshot::Receiver<()>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut admission) = self.admission.lock() {
            admission.release(self.place);
        }
    }
}

impl Transport for TcpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn listen(&self, setup: LinkSetup) -> tokio::task::JoinHandle<()> {
        let listener = self.listener.lock().ok().and_then(|mut l| l.take());
        let limits = self.limits;
        let span = setup.span.clone();
        tokio::spawn(
            async move {
                let Some(listener) = listener else {
                    warn!("the cluster listener was already taken; not accepting links");
                    return;
                };
                let admission: Arc<Mutex<Admission<PushOut>>> = Arc::new(Mutex::new(Admission::new(limits)));
                let mut refusals = LogThrottle::new(Duration::from_secs(10), 1);
                let mut push_outs = LogThrottle::new(Duration::from_secs(10), 1);
                loop {
                    match listener.accept().await {
                        Ok((stream, remote)) => {
                            let (push_out, pushed_out) = oneshot::channel();
                            let verdict = match admission.lock() {
                                Ok(mut a) => a
                                    .admit(remote.ip(), push_out)
                                    .map(|admitted| (admitted, a.pushed_out))
                                    .map_err(|why| (why, a.refused, a.pending())),
                                Err(_) => continue,
                            };
                            let (admitted, pushed_total) = match verdict {
                                Ok(admitted) => admitted,
                                Err((why, total, pending)) => {
                                    drop(stream);
                                    if let Some(count) = refusals.event(Instant::now()) {
                                        warn!(%remote, refused = count, refused_total = total, pending,
                                            "closed inbound connections before their handshake: {why}");
                                    }
                                    continue;
                                }
                            };
                            if admitted.pushed_out.is_some() {
                                debug!(%remote, "took the place of the busiest source's oldest handshake");
                                if let Some(count) = push_outs.event(Instant::now()) {
                                    warn!(%remote, ended = count, ended_total = pushed_total,
                                        "every handshake place was taken: ended the oldest handshake of the \
                                        busiest source to make room for a source with fewer");
                                }
                            }
                            // Dropping it ends the handshake that lost its place.
                            drop(admitted.pushed_out);
                            debug!(%remote, "inbound connection");
                            let ticket = Ticket {
                                admission: admission.clone(),
                                place: admitted.place,
                                pushed_out,
                            };
                            tokio::spawn(run_link(
                                stream,
                                remote,
                                Direction::Inbound,
                                setup.clone(),
                                Some(ticket),
                            ));
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

    fn dial(&self, remote: SocketAddr, timeout: Duration, setup: LinkSetup) {
        let span = setup.span.clone();
        tokio::spawn(
            async move {
                match tokio::time::timeout(timeout, TcpStream::connect(remote)).await {
                    Ok(Ok(stream)) => {
                        // The host is there; the handshake may still stall
                        // on a starved process (see `ClusterCore::dial_connected`).
                        setup.events.do_send(LinkEvent::Connected { remote });
                        run_link(stream, remote, Direction::Outbound, setup, None).await
                    }
                    Ok(Err(e)) => failed(&setup, remote, Direction::Outbound, e.to_string(), FailedAt::Connect),
                    Err(_) => failed(
                        &setup,
                        remote,
                        Direction::Outbound,
                        format!("connect timed out after {timeout:?}"),
                        FailedAt::Connect,
                    ),
                }
            }
            .instrument(span),
        );
    }
}

fn failed(setup: &LinkSetup, remote: SocketAddr, direction: Direction, reason: String, stage: FailedAt) {
    setup.events.do_send(LinkEvent::Failed {
        remote,
        direction,
        reason,
        stage,
    });
}

/// Runs one link: the handshake (holding `ticket`, an inbound connection's
/// admission, until it is done), then frames until either side closes.
async fn run_link(
    mut stream: TcpStream,
    remote: SocketAddr,
    direction: Direction,
    setup: LinkSetup,
    ticket: Option<Ticket>,
) {
    let _ = stream.set_nodelay(true);
    let initiator = direction == Direction::Outbound;
    let keyring = setup.keys.current();
    let shaken = match ticket {
        None => handshake_as(&mut stream, &keyring, &setup.node_key, initiator).await,
        Some(mut ticket) => {
            let shaken = tokio::select! {
                shaken = handshake_as(&mut stream, &keyring, &setup.node_key, initiator) => shaken,
                _ = &mut ticket.pushed_out => {
                    debug!(%remote, "handshake ended: its place went to a source with fewer waiting");
                    return;
                }
            };
            drop(ticket);
            shaken
        }
    };
    let transport = match shaken {
        Ok(t) => t,
        Err(e) => {
            let stage = FailedAt::of_handshake(&e);
            return failed(&setup, remote, direction, e.to_string(), stage);
        }
    };
    // A duplicate descriptor lets the bridge ask the kernel about the link
    // (see `tcp_info`); the halves below still close it as before.
    let socket = stream.as_fd().try_clone_to_owned().ok();
    let (read_half, write_half) = stream.into_split();
    let sender = transport.sender(BufWriter::with_capacity(8 * 1024, write_half));
    let id = next_link_id();
    let (start_tx, start_rx) = oneshot::channel::<Outgoing>();
    let writer = tokio::spawn(
        async move {
            if let Ok(outgoing) = start_rx.await {
                write_loop(id, sender, outgoing).await;
            }
        }
        .instrument(setup.span.clone()),
    );
    let (close_tx, mut close_rx) = oneshot::channel();
    let (mut handle, outgoing) = LinkHandle::new(id, remote, direction, writer.abort_handle(), close_tx);
    if let Some(socket) = socket {
        handle = handle.with_socket(socket);
    }
    handle = handle.with_peer_static(Some(transport.peer_static()));
    let _ = start_tx.send(outgoing);
    if setup.events.send(LinkEvent::Up(handle)).await.is_err() {
        return;
    }
    let mut receiver = transport.receiver(read_half, setup.max_frame);
    let reason = loop {
        tokio::select! {
            _ = &mut close_rx => {
                // Closed by this node. Keep reading (and dropping) until the
                // peer closes too: a socket closed with unread input ends
                // with a reset, and the reset makes the peer's kernel throw
                // away what it had not read yet (a busy seed's member table,
                // written just before it hung up on the joiner).
                let drain = async { while let Ok(Some(_)) = receiver.recv().await {} };
                let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
                return;
            }
            next = receiver.recv() => match next {
                Ok(Some(frame)) => {
                    if setup.events.send(LinkEvent::Frame { id, frame }).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break DownReason::PeerClosed,
                Err(e @ LinkError::FrameTooLarge { .. }) => break DownReason::Oversized(e.to_string()),
                Err(e) => break DownReason::Failed(e.to_string()),
            }
        }
    };
    setup.events.do_send(LinkEvent::Down { id, reason });
}

async fn write_loop(id: u64, mut sender: FrameSender<BufWriter<OwnedWriteHalf>>, mut outgoing: Outgoing) {
    while let Some(first) = outgoing.next().await {
        let mut written = 0;
        let mut next = Some(first);
        // Write what is waiting, then flush once.
        let result = async {
            while let Some(frame) = next.take() {
                sender.send(&frame).await?;
                written += frame.len();
                if written < 256 * 1024 {
                    next = outgoing.try_next();
                }
            }
            sender.flush().await
        }
        .await;
        outgoing.written(written);
        if let Err(e) = result {
            // The reader reports the link down once it has delivered what
            // the peer sent before the failure; reported from here, those
            // frames would be dropped unread.
            debug!(link = id, error = %e, "write failed; the reader ends the link");
            return;
        }
    }
    // The handle is gone and everything queued is written: close our side.
    let _ = sender.flush().await;
}
