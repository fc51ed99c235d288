//! `conjoiner deployments`: the deployments table, every entry with how
//! many of the alive nodes it wins on run it (`2/3`), its rollout, and the
//! nodes that are behind, each with its reason. `pause`, `resume` and
//! `revert` steer a rollout from any node. Exit code 3 when a node failed
//! to carry an entry out.

use super::client::ApiClient;
use super::members::{format_table, visible};
use super::modules::uptime;
use super::{CliError, EXIT_OK, EXIT_PARTIAL};
use crate::command::operator_key::OperatorSecret;
use crate::command::signature::OperatorSignature;
use crate::deploy::steer::{Steer, SteerAction};
use crate::deploy::view::{find_by, short_id, EntryView};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct DeploymentsArgs {
    #[command(subcommand)]
    pub command: Option<SteerCommand>,
    /// Only the entries of this module.
    #[arg(long)]
    pub module: Option<String>,
    /// Sign `pause`, `resume` or `revert` with this private operator key;
    /// a node that trusts operator keys steers a rollout only when signed.
    #[arg(long, global = true, env = "CONJOINER_OPERATOR_KEY", value_name = "FILE")]
    pub operator_key: Option<std::path::PathBuf>,
}

/// What to do with a rollout (its entry's id, or a unique start of it).
#[derive(Debug, clap::Subcommand)]
pub enum SteerCommand {
    /// Hold a rollout where it is.
    Pause { id: String },
    /// Go on with a paused rollout (or one whose driving node went away);
    /// this node drives it from now on.
    Resume { id: String },
    /// Take a rollout back: every released node returns to the entry it ran before.
    Revert { id: String },
}

pub async fn run(http: &str, json_out: bool, args: DeploymentsArgs) -> Result<i32, CliError> {
    let client = ApiClient::new(http);
    let raw: Value = match &args.command {
        None => {
            let query: Vec<(&str, &str)> = args.module.iter().map(|m| ("module", m.as_str())).collect();
            client.get("/v1/deployments", &query).await?
        }
        Some(command) => {
            let (action, id) = match command {
                SteerCommand::Pause { id } => (SteerAction::Pause, id),
                SteerCommand::Resume { id } => (SteerAction::Resume, id),
                SteerCommand::Revert { id } => (SteerAction::Revert, id),
            };
            let body = match &args.operator_key {
                None => Value::Null,
                Some(file) => signed_steer(&client, file, action, id).await?,
            };
            let one: Value = client
                .post(&format!("/v1/deployments/{id}/{}", action.as_str()), &body)
                .await?;
            Value::Array(vec![one])
        }
    };
    let entries: Vec<EntryView> = serde_json::from_value(raw.clone())
        .map_err(|e| CliError::error(format!("the node's deployments answer is not what this CLI reads: {e}")))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
    } else {
        print!("{}", screen(&entries));
    }
    let failed = entries.iter().any(|e| e.behind.iter().any(|b| b.failed));
    Ok(if failed { EXIT_PARTIAL } else { EXIT_OK })
}

/// A steer of entry `part` signed with the operator key in `file`, made
/// for the node `client` talks to: that node drives the rollout from then
/// on. The entry's full id is signed, so it is looked up first.
async fn signed_steer(
    client: &ApiClient,
    file: &std::path::Path,
    action: SteerAction,
    part: &str,
) -> Result<Value, CliError> {
    let secret = OperatorSecret::load(file).map_err(CliError::usage)?;
    let listed: Vec<EntryView> = client.get("/v1/deployments", &[]).await?;
    let entry = find_by(&listed, |e| &e.id, part).map_err(CliError::usage)?;
    let mut steer = Steer {
        action,
        entry: entry.id.to_string(),
        driver: client.driver().await?,
        id: uuid::Uuid::now_v7().to_string(),
        ts: crate::wire::now_ms(),
        signature: None,
    };
    steer.signature = Some(OperatorSignature::by(&secret, &steer.signed_bytes()));
    Ok(serde_json::json!({
        "id": steer.id,
        "ts": steer.ts,
        "driver": steer.driver,
        "signature": steer.signature,
    }))
}

/// The ROLLOUT cell: `-`, or its wave, share and state.
fn rollout_cell(e: &EntryView) -> String {
    match &e.rollout {
        None => "-".into(),
        Some(r) => format!("wave {} {:.0}% {}", r.wave, r.released * 100.0, r.state.as_str()),
    }
}

/// `K/N`, or, for an entry that wins on no alive node because a newer one
/// of its module does, `superseded`.
fn converged_cell(e: &EntryView) -> String {
    if e.nodes == 0 && e.superseded_on > 0 {
        "superseded".into()
    } else {
        format!("{}/{}", e.converged, e.nodes)
    }
}

/// The whole screen: the table, then every node that is behind, and why.
pub fn screen(entries: &[EntryView]) -> String {
    if entries.is_empty() {
        return "the deployments table is empty\n".into();
    }
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            [
                short_id(&e.id).to_string(),
                e.module.clone(),
                e.target.clone().unwrap_or_else(|| "*".into()),
                e.action.as_str().to_string(),
                e.sha256.as_deref().map_or("-".into(), |s| s.chars().take(12).collect()),
                format!("{}@{}", e.version.clock, e.version.origin),
                uptime(e.age_ms.max(1)),
                converged_cell(e),
            ]
        })
        .collect();
    let mut out = format_table(
        [
            "ID",
            "MODULE",
            "TARGET",
            "ACTION",
            "SHA256",
            "VERSION",
            "AGE",
            "CONVERGED",
        ],
        &rows,
    );
    let mut notes = Vec::new();
    for e in entries {
        let id = short_id(&e.id);
        if let Some(r) = &e.rollout {
            notes.push(format!(
                "  {id} {}: rollout {}{}",
                e.module,
                rollout_cell(e),
                r.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            ));
        }
        for b in &e.behind {
            notes.push(format!("  {id} {} on {}: {}", e.module, b.node, b.reason));
        }
        if !e.absent.is_empty() {
            notes.push(format!(
                "  {id} {} on {}: not alive; it catches up when it returns",
                e.module,
                e.absent.join(", ")
            ));
        }
        if e.later > 0 {
            notes.push(format!(
                "  {id} {}: {} node(s) wait for a later wave",
                e.module, e.later
            ));
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&visible(&n));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str, converged: usize, nodes: usize, superseded_on: usize) -> EntryView {
        serde_json::from_value(json!({
            "id": id, "module": "web", "action": "deploy",
            "version": {"clock": 7, "origin": "a"}, "signed_by": null,
            "ts": 1, "age_ms": 2000,
            "converged": converged, "nodes": nodes, "behind": [],
            "superseded_on": superseded_on, "later": 0, "absent": ["w4"],
        }))
        .unwrap()
    }

    #[test]
    fn an_entry_that_wins_nowhere_reads_superseded_and_a_live_one_k_of_n() {
        let text = screen(&[entry("0000-new00001", 2, 3, 0), entry("0000-old00002", 0, 0, 3)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("new00001") && lines[1].ends_with("2/3"), "{text}");
        assert!(
            lines[2].starts_with("old00002") && lines[2].ends_with("superseded"),
            "{text}"
        );
        assert!(text.contains("new00001 web on w4: not alive"), "{text}");
    }
}
