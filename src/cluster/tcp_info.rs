//! What the kernel knows about a TCP link that the protocol above it
//! cannot: whether the peer's host still acknowledges what we send.
//!
//! A process starved of CPU, paused, or swapping does not answer probes,
//! but its kernel still acks every segment. A killed process resets its
//! links, and a lost host or a cut network acks nothing. The failure
//! detector uses this to tell a stall from a crash (see
//! `core::detector`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// `TCP_ESTABLISHED` in `tcp_info.tcpi_state` (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// The kernel counts `last_ack` in jiffies (4 or 10 ms), and a ping on
/// loopback is acked within a millisecond of `since`: without slack, an ack
/// of the probe itself was read as older than the probe about half the time.
const ACK_CLOCK_SLACK: Duration = Duration::from_millis(50);

/// What the kernel says about one TCP connection, as far as the failure
/// detector cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkReport {
    pub established: bool,
    /// Retransmission timeouts in a row for the oldest unacked segment.
    pub retransmits: u8,
    /// Zero-window probes sent without an answer.
    pub window_probes: u8,
    /// Segments sent and not acked yet.
    pub unacked: u32,
    /// Since the last ack arrived.
    pub last_ack: Duration,
}

impl LinkReport {
    /// The peer's host answered within `within`: the connection is
    /// established, an ack came in that time, and no retransmission timeout
    /// is running (nothing it was sent went unanswered long enough to be
    /// sent again).
    ///
    /// Not "every byte acked": a receiver may hold its ack back for up to
    /// 200 ms (delayed acks), so data sent just before the question is
    /// often unacked on a perfectly live host.
    pub fn answered_within(&self, within: Duration) -> bool {
        self.established && self.retransmits == 0 && self.last_ack <= within + ACK_CLOCK_SLACK
    }
}

/// Reads `TCP_INFO` for `socket`.
pub fn link_report(socket: BorrowedFd<'_>) -> io::Result<LinkReport> {
    // SAFETY: `tcp_info` is plain data; zero is a valid value of every field.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is borrowed for the call, `info` and `len` are valid
    // for writes of the size given, and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(LinkReport {
        established: info.tcpi_state == TCP_ESTABLISHED,
        retransmits: info.tcpi_retransmits,
        window_probes: info.tcpi_probes,
        unacked: info.tcpi_unacked,
        last_ack: Duration::from_millis(u64::from(info.tcpi_last_ack_recv)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Instant;

    fn peer_host_answered(socket: BorrowedFd<'_>, within: Duration) -> io::Result<bool> {
        Ok(link_report(socket)?.answered_within(within))
    }

    fn answered_within(stream: &TcpStream, within: Duration, deadline: Duration) -> bool {
        let start = Instant::now();
        loop {
            if peer_host_answered(stream.as_fd(), within).expect("tcp_info") {
                return true;
            }
            if start.elapsed() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
    }

    fn report(last_ack_ms: u64) -> LinkReport {
        LinkReport {
            established: true,
            retransmits: 0,
            window_probes: 0,
            unacked: 1,
            last_ack: Duration::from_millis(last_ack_ms),
        }
    }

    #[test]
    fn an_ack_within_the_window_counts_even_with_data_in_flight_and_coarse_clocks() {
        let window = Duration::from_millis(722);
        assert!(
            report(300).answered_within(window),
            "a delayed ack leaves newer data unacked"
        );
        assert!(
            report(724).answered_within(window),
            "the ack of the probe itself, read in jiffies, can look older than the probe"
        );
        assert!(
            !report(900).answered_within(window),
            "no ack since well before the probe"
        );
        let resent = LinkReport {
            retransmits: 1,
            ..report(10)
        };
        assert!(!resent.answered_within(window), "a retransmission timeout is running");
        let closed = LinkReport {
            established: false,
            ..report(10)
        };
        assert!(!closed.answered_within(window));
    }

    #[test]
    fn a_peer_that_does_not_read_still_has_its_host_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // The peer process accepts and then never reads: a stalled process.
        let (_theirs, _) = listener.accept().unwrap();
        ours.write_all(b"ping").unwrap();
        assert!(
            answered_within(&ours, Duration::from_secs(5), Duration::from_secs(5)),
            "the peer's kernel should have acked our bytes"
        );
    }

    #[test]
    fn a_closed_peer_and_a_stale_ack_do_not_count_as_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        ours.write_all(b"ping").unwrap();
        assert!(answered_within(&ours, Duration::from_secs(5), Duration::from_secs(5)));
        // An ack older than the window (and its slack) does not count.
        let start = Instant::now();
        while peer_host_answered(ours.as_fd(), Duration::ZERO).unwrap() {
            assert!(start.elapsed() < Duration::from_secs(5), "an old ack counted as fresh");
            std::thread::yield_now();
        }
        drop(theirs);
        // After the peer closed, the link is no longer established.
        let start = Instant::now();
        while peer_host_answered(ours.as_fd(), Duration::from_secs(5)).unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "still established after the peer closed"
            );
            std::thread::yield_now();
        }
    }
}
