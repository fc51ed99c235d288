//! `conjoiner tail`: a live stream of the envelopes the local node sees.

use super::client::ApiClient;
use super::members::visible;
use super::{CliError, EXIT_ERROR};
use futures_util::StreamExt;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Only envelopes to this address.
    #[arg(long)]
    pub address: Option<String>,
    /// Only envelopes of this type (event, request, reply, heartbeat, …).
    #[arg(long = "type")]
    pub kind: Option<String>,
}

pub async fn run(http: &str, json_out: bool, args: TailArgs) -> Result<i32, CliError> {
    let mut query = Vec::new();
    if let Some(a) = &args.address {
        query.push(("address", a.as_str()));
    }
    if let Some(t) = &args.kind {
        query.push(("type", t.as_str()));
    }
    let client = ApiClient::new(http);
    let response = client.stream("/v1/events", &query).await?;
    eprintln!("tailing envelopes seen by the node at {http} (Ctrl-C to stop)");
    let mut stream = response.bytes_stream();
    // Bytes, not text, until a line is whole: a chunk may end inside a
    // character.
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CliError::error(format!("event stream broke: {e}")))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end();
            if let Some(data) = line.strip_prefix("data: ") {
                print_envelope(data, json_out);
            } else if let Some(note) = line.strip_prefix(": connected; ") {
                // Without the API token, the node leaves bodies out.
                eprintln!("{note}");
            }
        }
    }
    eprintln!("the node closed the event stream");
    Ok(EXIT_ERROR)
}

fn print_envelope(data: &str, json_out: bool) {
    if json_out {
        // JSON as the node wrote it: control characters are escaped there.
        println!("{data}");
    } else {
        println!("{}", envelope_line(data));
    }
}

/// One envelope as a line for people. Names, addresses and targets come
/// from peers and modules, so their control characters are written out,
/// never sent to the terminal.
fn envelope_line(data: &str) -> String {
    let Ok(env) = serde_json::from_str::<Value>(data) else {
        return visible(data).into_owned();
    };
    let text = |v: &Value| visible(v.as_str().unwrap_or("?")).into_owned();
    let target = env["dst"]["target"]
        .as_str()
        .map(|t| format!(" [{}]", visible(t)))
        .unwrap_or_default();
    format!(
        "{} {:<9} {}/{} -> {}{} {}",
        clock(env["ts"].as_u64().unwrap_or(0)),
        text(&env["type"]),
        text(&env["src"]["node"]),
        text(&env["src"]["module"]),
        text(&env["dst"]["address"]),
        target,
        if env["body_hidden"] == true {
            "(body hidden)".to_string()
        } else {
            env["body"].to_string()
        },
    )
}

/// `HH:MM:SS.mmm` (UTC) of a millisecond timestamp.
fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn peers_control_characters_are_written_out_not_sent_to_the_terminal() {
        let data = serde_json::json!({
            "type": "event",
            "ts": 0,
            "src": {"node": "evil\u{1b}[2J", "module": "m\nx"},
            "dst": {"address": "a\u{7}", "target": "name=\u{1b}]0;t"},
            "body": {"k": "\u{1b}[31m"},
        })
        .to_string();
        let line = super::envelope_line(&data);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains(r"evil\u{1b}[2J/m\nx -> a\u{7} [name=\u{1b}]0;t]"),
            "{line}"
        );
        assert!(!super::envelope_line("not json \u{1b}[2J").chars().any(char::is_control));
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(super::clock(1_764_000_000_123), "16:00:00.123");
    }
}
