//! `conjoiner tail`: a live stream of the envelopes the local node sees.

use super::client::ApiClient;
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
        println!("{data}");
        return;
    }
    let Ok(env) = serde_json::from_str::<Value>(data) else {
        println!("{data}");
        return;
    };
    let target = env["dst"]["target"]
        .as_str()
        .map(|t| format!(" [{t}]"))
        .unwrap_or_default();
    println!(
        "{} {:<9} {}/{} -> {}{} {}",
        clock(env["ts"].as_u64().unwrap_or(0)),
        env["type"].as_str().unwrap_or("?"),
        env["src"]["node"].as_str().unwrap_or("?"),
        env["src"]["module"].as_str().unwrap_or("?"),
        env["dst"]["address"].as_str().unwrap_or("?"),
        target,
        if env["body_hidden"] == true {
            "(body hidden)".to_string()
        } else {
            env["body"].to_string()
        },
    );
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
    fn clock_is_utc_time_of_day() {
        assert_eq!(super::clock(1_764_000_000_123), "16:00:00.123");
    }
}
