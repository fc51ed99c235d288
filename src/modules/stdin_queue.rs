//! The lines waiting for a process module's stdin, bounded in bytes as well
//! as in lines.
//!
//! Bounded by lines alone, a module that never read its stdin let 1,024
//! envelopes of 900 KB wait for it: 1,500 publishes took the node from
//! 43 MB to 1.04 GB. A line that would take the queue past its byte bound
//! is refused, and the caller counts it as dropped; the line being written
//! does not count, as it has left the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The most lines that wait for one module's stdin.
pub const MAX_LINES: usize = 1024;
/// The most bytes that wait for one module's stdin: a few envelopes of the
/// 1 MiB limit.
pub const MAX_BYTES: usize = 8 << 20;

/// The sending side, kept by the module's actor.
pub struct StdinQueue {
    lines: mpsc::Sender<String>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The receiving side, read by the task that writes to the child.
pub struct StdinLines {
    lines: mpsc::Receiver<String>,
    queued: Arc<AtomicUsize>,
}

/// Why a line was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `queued_bytes` already; the line would pass the bound.
    Full { queued_bytes: usize },
    /// The writer is gone (the child's stdin closed).
    Closed,
}

/// A queue of at most `max_lines` lines and `max_bytes` bytes. A single
/// line larger than `max_bytes` is still taken when nothing else waits.
pub fn stdin_queue(max_lines: usize, max_bytes: usize) -> (StdinQueue, StdinLines) {
    let (sender, receiver) = mpsc::channel(max_lines);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        StdinQueue {
            lines: sender,
            queued: queued.clone(),
            max_bytes,
        },
        StdinLines {
            lines: receiver,
            queued,
        },
    )
}

impl StdinQueue {
    pub fn offer(&self, line: String) -> Result<(), Refused> {
        let len = line.len();
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + len > self.max_bytes {
            return Err(Refused::Full { queued_bytes: queued });
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.lines.try_send(line).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full { queued_bytes: queued },
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }

    /// Bytes waiting now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl StdinLines {
    /// The next line to write, once there is one; `None` when the actor is gone.
    pub async fn next(&mut self) -> Option<String> {
        let line = self.lines.recv().await?;
        self.queued.fetch_sub(line.len(), Ordering::Relaxed);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_refused_past_the_byte_bound_and_taken_again_once_read() {
        let (queue, mut lines) = stdin_queue(100, 1000);
        queue.offer("a".repeat(600)).unwrap();
        assert_eq!(queue.offer("b".repeat(600)), Err(Refused::Full { queued_bytes: 600 }));
        queue.offer("c".repeat(400)).unwrap();
        assert_eq!(queue.queued_bytes(), 1000);
        assert_eq!(lines.next().await.unwrap().len(), 600);
        assert_eq!(queue.queued_bytes(), 400);
        queue.offer("d".repeat(600)).unwrap();
        assert_eq!(queue.queued_bytes(), 1000);
    }

    #[tokio::test]
    async fn one_line_over_the_bound_passes_alone_and_the_line_bound_holds() {
        let (queue, mut lines) = stdin_queue(2, 10);
        queue.offer("x".repeat(50)).unwrap();
        assert!(queue.offer("y".into()).is_err(), "nothing passes a full queue");
        lines.next().await.unwrap();
        queue.offer("1".into()).unwrap();
        queue.offer("2".into()).unwrap();
        assert_eq!(queue.offer("3".into()), Err(Refused::Full { queued_bytes: 2 }));
        assert_eq!(queue.queued_bytes(), 2, "a refused line is not counted");
        drop(lines);
        assert_eq!(queue.offer("4".into()), Err(Refused::Closed));
    }
}
