//! `conjoiner members`: the cluster's members with address, status and tags.

use super::client::ApiClient;
use super::{read_targets, CliError, EXIT_OK};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// Only members with this status: alive, suspect, dead or left.
    #[arg(long)]
    pub status: Option<String>,
    /// Only members matching this selector (repeat for OR).
    #[arg(long)]
    pub target: Vec<String>,
}

pub async fn run(http: &str, json: bool, args: MembersArgs) -> Result<i32, CliError> {
    let target = read_targets(&args.target)?;
    let mut query = Vec::new();
    if let Some(s) = &args.status {
        query.push(("status", s.as_str()));
    }
    if let Some(t) = &target {
        query.push(("target", t.as_str()));
    }
    let members: Vec<Value> = ApiClient::new(http).get("/v1/members", &query).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&members).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    let rows: Vec<[String; 4]> = members
        .iter()
        .map(|m| {
            let tags = m["tags"]
                .as_object()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            [
                m["name"].as_str().unwrap_or("?").to_string(),
                m["addr"].as_str().unwrap_or("-").to_string(),
                m["status"].as_str().unwrap_or("?").to_string(),
                tags,
            ]
        })
        .collect();
    print_table(["NAME", "ADDR", "STATUS", "TAGS"], &rows);
    Ok(EXIT_OK)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
