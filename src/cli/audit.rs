//! `conjoiner audit`: the audit lines of the targeted nodes (each command
//! a node took as its origin, carried out or refused), merged by time, and
//! the nodes that did not answer named. Each line is checked against its
//! node's identity key as the node asked knows it: proved on a link, or
//! named by the node's signed member proof (see `audit.rs`). Exit 0 when every targeted node answered and no line fails
//! its check, 3 otherwise.

use super::client::ApiClient;
use super::members::format_table;
use super::{parse_duration, read_targets, CliError, EXIT_OK, EXIT_PARTIAL};
use crate::actors::Member;
use crate::audit::{AuditLine, LineCheck};
use crate::cluster::node_key::NodePublicKey;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only nodes matching this selector (repeat for OR). Default: every node.
    #[arg(long)]
    pub target: Vec<String>,
    /// Only lines about this module.
    #[arg(long)]
    pub module: Option<String>,
    /// Only lines from this long ago on (e.g. 30m, 1h, 24h).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// How long to wait for the nodes' answers.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(http: &str, json_out: bool, args: AuditArgs) -> Result<i32, CliError> {
    let since_ms = args
        .since
        .map(|d| crate::wire::now_ms().saturating_sub(d.as_millis() as u64));
    let request = json!({
        "address": "mod.deployer",
        "body": {"op": "audit", "since_ms": since_ms, "module": args.module},
        "target": read_targets(&args.target)?,
        "timeout_ms": args.timeout.as_millis() as u64,
    });
    let client = ApiClient::new(http);
    let outcome: Value = client.post("/v1/request", &request).await?;
    // The keys the members proved to the node asked, after their answers,
    // so a node that answered is known by then.
    let members: Vec<Member> = client.get("/v1/members", &[]).await.unwrap_or_default();
    let keys: HashMap<String, NodePublicKey> = members
        .into_iter()
        .filter_map(|m| Some((m.name, NodePublicKey::parse(m.identity.as_deref()?).ok()?)))
        .collect();
    let empty = Vec::new();
    let mut lines: Vec<AuditLine> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for reply in outcome["replies"].as_array().unwrap_or(&empty) {
        let node = reply["node"].as_str().unwrap_or("?");
        match serde_json::from_value::<Vec<AuditLine>>(reply["body"]["lines"].clone()) {
            Ok(mut more) if reply.get("error").is_none() => lines.append(&mut more),
            _ => failed.push(format!(
                "{node}: {}",
                reply["error"]
                    .as_str()
                    .unwrap_or("its answer is not a list of audit lines")
            )),
        }
    }
    lines.sort_by(|a, b| (a.ts, &a.node).cmp(&(b.ts, &b.node)));
    let checked: Vec<(AuditLine, LineCheck)> = lines
        .into_iter()
        .map(|l| {
            let check = l.check(keys.get(&l.node));
            (l, check)
        })
        .collect();
    let invalid = checked.iter().filter(|(_, c)| *c == LineCheck::Invalid).count();
    let missing: Vec<&str> = outcome["missing"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if json_out {
        let lines: Vec<Value> = checked
            .iter()
            .map(|(l, c)| {
                let mut v = json!(l);
                v["signature"] = json!(c);
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"lines": lines, "missing": missing, "failed": failed}))
                .unwrap_or_default()
        );
    } else {
        print!("{}", screen(&checked));
        for f in &failed {
            eprintln!("failed: {f}");
        }
        if invalid > 0 {
            eprintln!(
                "invalid: {invalid} line(s) whose signature does not verify against the identity key their \
                 node proved: altered after they were written, or made up by another host"
            );
        }
        if !missing.is_empty() {
            eprintln!(
                "missing: {} (no answer within {} ms; their lines are not shown)",
                missing.join(", "),
                args.timeout.as_millis()
            );
        }
    }
    Ok(if missing.is_empty() && failed.is_empty() && invalid == 0 {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

/// The audit table, oldest line first, with each line's check.
pub fn screen(lines: &[(AuditLine, LineCheck)]) -> String {
    let rows: Vec<[String; 9]> = lines
        .iter()
        .map(|(l, check)| {
            let outcome = match (&l.status, &l.reason) {
                (Some(s), Some(r)) => format!("{s}: {r}"),
                (Some(s), None) => s.clone(),
                (None, Some(r)) => r.clone(),
                (None, None) => "-".into(),
            };
            [
                utc(l.ts),
                l.node.clone(),
                l.decision.as_str().to_string(),
                l.kind.clone(),
                l.module.clone(),
                l.id.clone().unwrap_or_else(|| "-".into()),
                l.key.clone().unwrap_or_else(|| "-".into()),
                check.as_str().to_string(),
                outcome,
            ]
        })
        .collect();
    format_table(
        [
            "TIME (UTC)",
            "NODE",
            "DECISION",
            "TYPE",
            "MODULE",
            "ID",
            "KEY",
            "SIGNATURE",
            "OUTCOME",
        ],
        &rows,
    )
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a millisecond timestamp.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        (rest / 60) % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_764_000_000_123), "2025-11-24 16:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
