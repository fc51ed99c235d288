//! Log setup: `tracing` with `RUST_LOG` (EnvFilter) and a text or JSON format.
//!
//! Every actor logs inside a span `actor{node=… module=…}`, so each line names
//! its node and module. `RUST_LOG=conjoiner=debug` follows one envelope
//! through the node by its id (`envelope=<uuid>` on every hop).

use std::io::IsTerminal;
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
