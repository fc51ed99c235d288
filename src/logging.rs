//! Log setup: `tracing` with a `RUST_LOG` filter and a text or JSON format.
//!
//! Every actor logs inside a span `actor{node=… module=…}`, so each line names
//! its node and module. `RUST_LOG=conjoiner=debug` follows one envelope
//! through the node by its id (`envelope=<uuid>` on every hop).

use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr. The default filter is
/// `info`; `RUST_LOG` overrides it.
pub fn init(format: LogFormat) {
    let (filter, problem) = filter_from(std::env::var("RUST_LOG").ok().as_deref());
    let layer = fmt::layer().with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_ansi(std::io::stderr().is_terminal()).with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                layer
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    // A second init (tests that start several nodes in one process) is harmless.
    if result.is_ok() {
        if let Some(problem) = problem {
            tracing::warn!(%problem, "RUST_LOG not understood; logging at info");
        }
    }
}

/// The filter a `RUST_LOG` value asks for: comma-separated `level` and
/// `target=level` directives (`debug`, `conjoiner=debug,info`). `Targets`
/// rather than `EnvFilter`: it has no span or field filters, but it does not
/// bring a regex engine into the binary, whose size is most of an idle
/// node's memory. Unset or empty means `info`; a value it cannot read also
/// means `info`, with the reason to log.
fn filter_from(value: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(tracing::Level::INFO);
    match value.map(str::trim) {
        None | Some("") => (info(), None),
        Some(value) => match value.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (info(), Some(format!("{value:?}: {e}"))),
        },
    }
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
    use tracing::Level;

    #[test]
    fn rust_log_directives_set_levels_per_target_and_bad_values_fall_back_to_info() {
        let (unset, problem) = filter_from(None);
        assert!(problem.is_none());
        assert!(unset.would_enable("conjoiner::node", &Level::INFO));
        assert!(!unset.would_enable("conjoiner::node", &Level::DEBUG));

        let (mixed, problem) = filter_from(Some("conjoiner=debug,info"));
        assert!(problem.is_none());
        assert!(mixed.would_enable("conjoiner::cluster::core", &Level::DEBUG));
        assert!(!mixed.would_enable("actix_server::worker", &Level::DEBUG));
        assert!(mixed.would_enable("actix_server::worker", &Level::INFO));

        let (bad, problem) = filter_from(Some("conjoiner=loud"));
        assert!(problem.unwrap().contains("conjoiner=loud"));
        assert!(bad.would_enable("conjoiner", &Level::INFO));
        assert!(!bad.would_enable("conjoiner", &Level::DEBUG));
    }

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
