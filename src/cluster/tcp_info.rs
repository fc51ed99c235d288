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

/// True if the connection is established, every byte sent on it has been
/// acknowledged, and the last acknowledgement came within `within`: the
/// peer's host answered whatever was sent in that time.
pub fn peer_host_answered(socket: BorrowedFd<'_>, within: Duration) -> io::Result<bool> {
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
    let last_ack = Duration::from_millis(u64::from(info.tcpi_last_ack_recv));
    Ok(info.tcpi_state == TCP_ESTABLISHED && info.tcpi_unacked == 0 && last_ack <= within)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Instant;

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
        // An ack older than the window does not count: once a millisecond
        // has passed since the last one, a zero window holds none.
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
