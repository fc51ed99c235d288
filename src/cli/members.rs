//! `conjoiner members`: the cluster's members with address, status and tags.

use super::client::ApiClient;
use super::{read_targets, CliError, EXIT_OK};
use crate::actors::Member;
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
    let raw: Value = ApiClient::new(http).get("/v1/members", &query).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    let members: Vec<Member> = serde_json::from_value(raw)
        .map_err(|e| CliError::error(format!("the node's members answer is not what this CLI reads: {e}")))?;
    let rows: Vec<[String; 4]> = members
        .iter()
        .map(|m| {
            let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                m.name.clone(),
                m.addr.clone().unwrap_or_else(|| "-".into()),
                m.status.as_str().to_string(),
                tags.join(","),
            ]
        })
        .collect();
    print_table(["NAME", "ADDR", "STATUS", "TAGS"], &rows);
    Ok(EXIT_OK)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    print!("{}", format_table(header, rows));
}

/// Rows under a header, each column as wide as its widest cell, one line
/// each.
pub fn format_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
