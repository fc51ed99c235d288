//! Log setup: `tracing` with a `RUST_LOG` filter and a text or JSON format.
//!
//! Every actor logs inside a span `actor{node=… module=…}`, so each line names
//! its node and module. `RUST_LOG=conjoiner=debug` follows one envelope
//! through the node by its id (`envelope=<uuid>` on every hop).

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, Registry};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The running filter, swapped by [`set_level`] when the config is reloaded.
static FILTER: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Installs the global subscriber, writing to stderr, with the filter
/// `level` (see [`parse_filter`]; the agent's settings pick it: `RUST_LOG`
/// when set, else the config file's `log_level`, else `info`).
pub fn init(format: LogFormat, level: &str) {
    let (filter, problem) = match parse_filter(level) {
        Ok(filter) => (filter, None),
        Err(e) => (Targets::new().with_default(tracing::Level::INFO), Some(e)),
    };
    let (filter, handle) = reload::Layer::new(filter);
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
        let _ = FILTER.set(handle);
        if let Some(problem) = problem {
            tracing::warn!(%problem, "log level not understood; logging at info");
        }
    }
}

/// Changes the running filter (a reload of the config file).
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = parse_filter(level)?;
    FILTER
        .get()
        .ok_or("this process did not set up its log")?
        .reload(filter)
        .map_err(|e| format!("cannot change the log level: {e}"))
}

/// Reads a filter: comma-separated `level` and `target=level` directives
/// (`debug`, `conjoiner=debug,info`), as `RUST_LOG` takes them; empty
/// means `info`. `Targets` rather than `EnvFilter`: it has no span or
/// field filters, but it does not bring a regex engine into the binary,
/// whose size is most of an idle node's memory.
pub fn parse_filter(text: &str) -> Result<Targets, String> {
    match text.trim() {
        "" => Ok(Targets::new().with_default(tracing::Level::INFO)),
        text => text
            .parse::<Targets>()
            .map_err(|e| format!("{text:?} is not a log filter: {e} (try `info` or `conjoiner=debug,info`)")),
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
    fn filters_set_levels_per_target_and_bad_ones_are_refused_with_the_reason() {
        let unset = parse_filter("").unwrap();
        assert!(unset.would_enable("conjoiner::node", &Level::INFO));
        assert!(!unset.would_enable("conjoiner::node", &Level::DEBUG));

        let mixed = parse_filter("conjoiner=debug,info").unwrap();
        assert!(mixed.would_enable("conjoiner::cluster::core", &Level::DEBUG));
        assert!(!mixed.would_enable("actix_server::worker", &Level::DEBUG));
        assert!(mixed.would_enable("actix_server::worker", &Level::INFO));

        let bad = parse_filter("conjoiner=loud").unwrap_err();
        assert!(bad.contains("conjoiner=loud"), "{bad}");
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
