//! `conjoiner modules`: every targeted node's modules with kind, version,
//! state, health, restarts, uptime and the module's own status, answered from
//! the local node's status board (one local call, however large the fleet).
//! Nodes whose report is stale or that are dead are listed, and make the
//! exit code 3.

use super::client::ApiClient;
use super::members::{format_table, visible};
use super::{read_targets, CliError, EXIT_OK, EXIT_PARTIAL};
use crate::monitor::board::NodeView;
use serde_json::Value;
use std::io::IsTerminal as _;

#[derive(Debug, clap::Args)]
pub struct ModulesArgs {
    /// Only nodes matching this selector (repeat for OR). Default: every node.
    #[arg(long)]
    pub target: Vec<String>,
}

pub async fn run(http: &str, json_out: bool, args: ModulesArgs) -> Result<i32, CliError> {
    let target = read_targets(&args.target)?;
    let mut query = Vec::new();
    if let Some(t) = &target {
        query.push(("target", t.as_str()));
    }
    let raw: Value = ApiClient::new(http).get("/v1/modules", &query).await?;
    let nodes: Vec<NodeView> = serde_json::from_value(raw.clone())
        .map_err(|e| CliError::error(format!("the node's modules answer is not what this CLI reads: {e}")))?;
    let stale: Vec<&NodeView> = nodes.iter().filter(|n| n.stale).collect();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
    } else {
        // On a terminal the STATUS column is cut to fit; piped into a file
        // or another program, it is written whole.
        let status_width = if std::io::stdout().is_terminal() {
            60
        } else {
            usize::MAX
        };
        print!("{}", screen(&nodes, status_width));
        for node in &stale {
            eprintln!("{}: {}", node.node, visible(node.error.as_deref().unwrap_or("stale")));
        }
    }
    Ok(if stale.is_empty() { EXIT_OK } else { EXIT_PARTIAL })
}

/// The modules table, the STATUS column cut to `status_width` characters.
pub fn screen(nodes: &[NodeView], status_width: usize) -> String {
    let mut rows = Vec::new();
    for node in nodes {
        for m in &node.modules {
            let status = match &m.status_error {
                Some(e) => e.clone(),
                None => short_json(&m.status, status_width),
            };
            // A module of a node whose state is unknown shows the health
            // its last report gave, marked as such.
            let (state, health) = match m.reported_health {
                Some(said) => (
                    format!("was {}", m.state),
                    format!("{} (last said {})", m.health.as_str(), said.as_str()),
                ),
                None => (m.state.clone(), m.health.as_str().to_string()),
            };
            rows.push([
                node.node.clone(),
                m.name.clone(),
                m.kind.clone(),
                m.version.clone(),
                state,
                health,
                m.restarts.to_string(),
                uptime(m.uptime_ms),
                status,
            ]);
        }
    }
    format_table(
        [
            "NODE", "MODULE", "KIND", "VERSION", "STATE", "HEALTH", "RESTARTS", "UPTIME", "STATUS",
        ],
        &rows,
    )
}

/// Compact JSON cut to `max` characters, `-` for null.
pub fn short_json(value: &Value, max: usize) -> String {
    if value.is_null() {
        return "-".into();
    }
    let text = value.to_string();
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`, or `-` when not running.
pub fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 if ms == 0 => "-".into(),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptimes_read_well() {
        assert_eq!(super::uptime(0), "-");
        assert_eq!(super::uptime(12_400), "12s");
        assert_eq!(super::uptime(250_000), "4m10s");
        assert_eq!(super::uptime(7_500_000), "2h5m");
        assert_eq!(super::uptime(280_000_000), "3d5h");
    }

    #[test]
    fn long_statuses_are_cut() {
        use serde_json::json;
        assert_eq!(super::short_json(&json!(null), 10), "-");
        assert_eq!(super::short_json(&json!({"a": 1}), 10), r#"{"a":1}"#);
        assert_eq!(super::short_json(&json!({"abcdef": 123456}), 10), r#"{"abcdef"…"#);
    }
}
