//! `conjoiner keys list|install|use|remove [KEY]`: the cluster keys of
//! every targeted node, listed or changed at once, with one answer per
//! node and the silent ones named (exit 3). Rotation without downtime:
//! `install` the new key, `use` it, `remove` the old one. On nodes that
//! trust operator keys, a change must be signed (`--operator-key`).

use super::client::ApiClient;
use super::members::{format_table, visible};
use super::request::exit_code;
use super::{parse_duration, read_targets, CliError};
use crate::cluster::ClusterKey;
use crate::command::keyring_change::{KeyringAnswer, KeyringChange, KeyringOp};
use crate::command::operator_key::OperatorSecret;
use crate::command::signature::OperatorSignature;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// `list`, `install` (accept the key too), `use` (dial with it; it
    /// must be installed) or `remove` (the primary key cannot be removed).
    #[arg(value_parser = ["list", "install", "use", "remove"])]
    pub op: String,
    /// The key, as `conjoiner keygen` prints it, or `@FILE`.
    pub key: Option<String>,
    /// Only the nodes matching this selector (repeatable: any of them).
    /// Default: every alive node.
    #[arg(long)]
    pub target: Vec<String>,
    /// Sign the change with this private operator key; nodes that trust
    /// operator keys take only signed changes.
    #[arg(long, env = "CONJOINER_OPERATOR_KEY", value_name = "FILE")]
    pub operator_key: Option<std::path::PathBuf>,
    /// How long to wait for the nodes' answers.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The command as the nodes will check it, signed if a key was given.
fn command(args: &KeysArgs) -> Result<KeyringChange, CliError> {
    let op = match args.op.as_str() {
        "install" => KeyringOp::Install,
        "use" => KeyringOp::Use,
        "remove" => KeyringOp::Remove,
        _ => KeyringOp::List,
    };
    let key = match (op, &args.key) {
        (KeyringOp::List, None) => None,
        (KeyringOp::List, Some(_)) => return Err(CliError::usage("`keys list` takes no key")),
        (_, None) => return Err(CliError::usage(format!("`keys {}` needs the key", args.op))),
        (_, Some(text)) => {
            let text = match text.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| CliError::usage(format!("cannot read the key file {file}: {e}")))?,
                None => text.clone(),
            };
            Some(
                ClusterKey::parse(&text, "the command line")
                    .map_err(|e| CliError::usage(e.to_string()))?
                    .to_base64(),
            )
        }
    };
    let mut change = KeyringChange {
        op,
        key,
        id: uuid::Uuid::now_v7().to_string(),
        ts: crate::wire::now_ms(),
        target: read_targets(&args.target)?,
        signature: None,
    };
    if let Some(file) = &args.operator_key {
        let secret = OperatorSecret::load(file).map_err(CliError::usage)?;
        change.signature = Some(OperatorSignature::by(&secret, &change.signed_bytes()));
    }
    Ok(change)
}

/// One row per node that answered: its keyring, or why it refused.
pub fn screen(replies: &[Value]) -> (String, usize) {
    let mut failed = 0;
    let rows: Vec<[String; 4]> = replies
        .iter()
        .map(|reply| {
            let node = visible(reply["node"].as_str().unwrap_or("?")).into_owned();
            match serde_json::from_value::<KeyringAnswer>(reply["body"].clone()) {
                Ok(answer) if reply.get("error").is_none() => {
                    let result = if answer.changed { "changed" } else { "ok" };
                    [node, answer.primary, answer.keys.join(","), result.into()]
                }
                _ => {
                    failed += 1;
                    let why = reply["error"].as_str().unwrap_or("its answer is not a keyring");
                    let code = reply["code"].as_str().unwrap_or("error");
                    [
                        node,
                        "-".into(),
                        "-".into(),
                        visible(&format!("{code}: {why}")).into_owned(),
                    ]
                }
            }
        })
        .collect();
    (format_table(["NODE", "PRIMARY", "KEYS", "RESULT"], &rows), failed)
}

pub async fn run(http: &str, json_out: bool, args: KeysArgs) -> Result<i32, CliError> {
    let change = command(&args)?;
    let request = json!({
        "address": "mod.deployer",
        "body": {"op": "keyring", "change": change},
        "target": read_targets(&args.target)?,
        "timeout_ms": args.timeout.as_millis() as u64,
    });
    let outcome: Value = ApiClient::new(http).post("/v1/request", &request).await?;
    let empty = Vec::new();
    let replies = outcome["replies"].as_array().unwrap_or(&empty);
    let names = |key: &str| -> Vec<String> {
        outcome[key]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|v| v.as_str().or_else(|| v["node"].as_str()))
            .map(str::to_string)
            .collect()
    };
    let (missing, absent) = (names("missing"), names("absent"));
    let (table, failed) = screen(replies);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
    } else {
        print!("{table}");
        if !missing.is_empty() {
            eprintln!(
                "missing: {} (no answer within {} ms; their keyrings are unchanged or unknown)",
                visible(&missing.join(", ")),
                args.timeout.as_millis()
            );
        }
        if !absent.is_empty() {
            eprintln!(
                "not alive: {} (not asked; run this again when they are back)",
                visible(&absent.join(", "))
            );
        }
    }
    if replies.is_empty() && missing.is_empty() {
        return Err(CliError::error("no alive node matches the target"));
    }
    Ok(exit_code(replies.len(), failed, missing.len() + absent.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_refused_shows_why_and_counts_as_failed() {
        let ok =
            json!({"node": "n1", "body": {"primary": "aabbccdd", "keys": ["aabbccdd", "11223344"], "changed": true}});
        let refused = json!({"node": "n2", "error": "unsigned: \u{1b}[2J", "code": "not_authorized"});
        let (table, failed) = screen(&[ok, refused]);
        assert_eq!(failed, 1);
        assert!(
            table.contains("aabbccdd,11223344") && table.contains("changed"),
            "{table}"
        );
        assert!(
            table.contains("not_authorized: unsigned") && !table.contains('\u{1b}'),
            "{table}"
        );
    }

    #[test]
    fn a_change_needs_a_key_and_a_list_takes_none() {
        let args = |op: &str, key: Option<&str>| KeysArgs {
            op: op.into(),
            key: key.map(str::to_string),
            target: Vec::new(),
            operator_key: None,
            timeout: Duration::from_secs(1),
        };
        assert!(command(&args("install", None)).is_err());
        assert!(command(&args("list", Some("x"))).is_err());
        assert!(command(&args("use", Some("not a key"))).is_err());
        let key = ClusterKey::generate().to_base64();
        let change = command(&args("install", Some(&key))).unwrap();
        assert_eq!(
            (change.op, change.key.as_deref()),
            (KeyringOp::Install, Some(key.as_str()))
        );
    }
}
