//! Log setup: `tracing` with `RUST_LOG` (EnvFilter) and a text or JSON format.
//!
//! Every actor logs inside a span `actor{node=… module=…}`, so each line names
//! its node and module. `RUST_LOG=conjoiner=debug` follows one envelope
//! through the node by its id (`envelope=<uuid>` on every hop).

use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tracing_subscriber::{fmt, EnvFilter};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr. The default filter is
/// `info`; `RUST_LOG` overrides it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
    // A second init (tests that start several nodes in one process) is harmless.
    let _ = result;
}

/// Keeps a line that a peer or a child can trigger at will (a failed
/// handshake, a dropped publish) from flooding the log: the first `burst`
/// events of each `every` are logged, the rest are counted and summed into
/// the next line that is logged. 39 k wrong-key attempts once wrote 12 MB
/// of log. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct LogThrottle {
    every: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    unlogged: u64,
}

impl LogThrottle {
    pub fn new(every: Duration, burst: u32) -> LogThrottle {
        LogThrottle {
            every,
            burst: burst.max(1),
            window_start: None,
            in_window: 0,
            unlogged: 0,
        }
    }

    /// Notes one event; answers `Some(n)` when it is to be logged now, `n`
    /// being the events the line stands for (this one and those not logged
    /// since the last line), or `None` to stay silent.
    pub fn event(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.every);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        self.in_window += 1;
        self.unlogged += 1;
        (self.in_window <= self.burst).then(|| std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_the_rest_is_summed_into_the_next_window() {
        let t0 = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(10), 3);
        let first: Vec<Option<u64>> = (0..6).map(|_| throttle.event(t0)).collect();
        assert_eq!(first, [Some(1), Some(1), Some(1), None, None, None]);
        assert_eq!(throttle.event(t0 + Duration::from_secs(9)), None);
        // The next window's first line carries the four unlogged ones.
        assert_eq!(throttle.event(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(throttle.event(t0 + Duration::from_secs(11)), Some(1));
    }

    #[test]
    fn a_burst_of_one_logs_the_first_event_of_each_interval() {
        let t0 = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(10), 1);
        assert_eq!(throttle.event(t0), Some(1));
        for s in 1..=9 {
            assert_eq!(throttle.event(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(throttle.event(t0 + Duration::from_secs(10)), Some(10));
    }
}
