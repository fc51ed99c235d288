//! `conjoiner modules`: every targeted node's modules with kind, version,
//! state, restarts and uptime. Nodes that did not answer are listed, and
//! make the exit code 3.

use super::client::ApiClient;
use super::members::print_table;
use super::{read_targets, CliError, EXIT_OK, EXIT_PARTIAL};
use serde_json::Value;

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
    let nodes: Vec<Value> = ApiClient::new(http).get("/v1/modules", &query).await?;
    let silent: Vec<&str> = nodes
        .iter()
        .filter(|n| n.get("error").is_some())
        .filter_map(|n| n["node"].as_str())
        .collect();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&nodes).unwrap_or_default());
    } else {
        let mut rows = Vec::new();
        for node in &nodes {
            let name = node["node"].as_str().unwrap_or("?");
            for m in node["modules"].as_array().into_iter().flatten() {
                let text = |k: &str| m[k].as_str().unwrap_or("-").to_string();
                rows.push([
                    name.to_string(),
                    text("name"),
                    text("kind"),
                    text("version"),
                    text("state"),
                    m["restarts"].as_u64().unwrap_or(0).to_string(),
                    uptime(m["uptime_ms"].as_u64().unwrap_or(0)),
                ]);
            }
        }
        print_table(
            ["NODE", "MODULE", "KIND", "VERSION", "STATE", "RESTARTS", "UPTIME"],
            &rows,
        );
        for node in nodes.iter().filter(|n| n.get("error").is_some()) {
            eprintln!(
                "{}: {}",
                node["node"].as_str().unwrap_or("?"),
                node["error"].as_str().unwrap_or("no answer")
            );
        }
    }
    Ok(if silent.is_empty() { EXIT_OK } else { EXIT_PARTIAL })
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
}
