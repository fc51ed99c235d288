//! `conjoiner request`: send a request to the targeted nodes and gather one
//! reply per node. Nodes that stay silent, and targeted members that are
//! dead or left (not asked), are named, never counted as success.

use super::client::ApiClient;
use super::members::visible;
use super::{parse_duration, read_body, read_targets, CliError, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The address to send to, e.g. `mod.echo`.
    pub address: String,
    /// The body as JSON, or `-` to read it from stdin. Default `{}`.
    pub body: Option<String>,
    /// Only nodes matching this selector (repeat for OR). Default: every node.
    #[arg(long)]
    pub target: Vec<String>,
    /// How long to wait for replies (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(http: &str, json_out: bool, args: RequestArgs) -> Result<i32, CliError> {
    let body = read_body(args.body.as_deref())?;
    let target = read_targets(&args.target)?;
    let request = json!({
        "address": args.address,
        "body": body,
        "target": target,
        "timeout_ms": args.timeout.as_millis() as u64,
    });
    let outcome: Value = ApiClient::new(http).post("/v1/request", &request).await?;
    let empty = Vec::new();
    let replies = outcome["replies"].as_array().unwrap_or(&empty);
    let missing: Vec<&str> = outcome["missing"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let failed = replies.iter().filter(|r| r.get("error").is_some()).count();
    let absent: Vec<String> = outcome["absent"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|a| {
            format!(
                "{} ({})",
                a["node"].as_str().unwrap_or("?"),
                a["note"].as_str().unwrap_or("not alive")
            )
        })
        .collect();

    if json_out {
        println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
    } else {
        for reply in replies {
            match reply_line(reply) {
                (true, line) => eprintln!("{line}"),
                (false, line) => println!("{line}"),
            }
        }
        if !missing.is_empty() {
            eprintln!(
                "missing: {} (no reply within {} ms)",
                visible(&missing.join(", ")),
                args.timeout.as_millis()
            );
        }
        if !absent.is_empty() {
            eprintln!("not alive: {}", visible(&absent.join(", ")));
        }
    }

    if replies.is_empty() && missing.is_empty() {
        let target = target.as_deref().unwrap_or("*");
        let why = if absent.is_empty() {
            String::new()
        } else {
            format!("; not alive: {}", absent.join(", "))
        };
        return Err(CliError::error(format!(
            "no alive node matches the target `{target}`{why}"
        )));
    }
    // A targeted member that is not alive was not asked: not a success.
    Ok(exit_code(replies.len(), failed, missing.len() + absent.len()))
}

/// One node's reply as a line, and whether it is an error (for stderr).
/// A module or a peer chooses the text, so control characters are
/// written out, never sent to the terminal; the body prints as JSON.
fn reply_line(reply: &Value) -> (bool, String) {
    let node = visible(reply["node"].as_str().unwrap_or("?")).into_owned();
    match reply.get("error").and_then(Value::as_str) {
        Some(error) => {
            let code = reply["code"].as_str().unwrap_or("error");
            (true, format!("{node}: error: {} ({})", visible(error), visible(code)))
        }
        None => (false, format!("{node}: {}", reply["body"])),
    }
}

/// 0 when every targeted node answered well; 1 when every one failed and
/// none was silent; 3 (partial) otherwise.
pub fn exit_code(replies: usize, failed: usize, missing: usize) -> i32 {
    if missing == 0 && failed == 0 {
        EXIT_OK
    } else if missing == 0 && failed == replies {
        EXIT_ERROR
    } else {
        EXIT_PARTIAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replys_text_is_printed_with_its_control_characters_written_out() {
        let (is_error, line) = reply_line(&json!({"node": "n1", "error": "bad\u{1b}[2J", "code": "x\ny"}));
        assert!(is_error);
        assert_eq!(line, "n1: error: bad\\u{1b}[2J (x\\ny)");
        let (is_error, line) = reply_line(&json!({"node": "n\u{7}2", "body": {"say": "\u{1b}[31m"}}));
        assert!(!is_error);
        assert!(!line.contains('\u{1b}') && !line.contains('\u{7}'), "{line:?}");
    }

    #[test]
    fn silent_nodes_are_never_success() {
        assert_eq!(exit_code(3, 0, 0), EXIT_OK);
        assert_eq!(exit_code(2, 0, 1), EXIT_PARTIAL);
        assert_eq!(exit_code(0, 0, 2), EXIT_PARTIAL);
        assert_eq!(exit_code(3, 1, 0), EXIT_PARTIAL);
        assert_eq!(exit_code(1, 1, 0), EXIT_ERROR);
        assert_eq!(exit_code(1, 1, 1), EXIT_PARTIAL);
    }
}
