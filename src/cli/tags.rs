//! `conjoiner tags`: the local node's tags; `--set K=V` and `--delete K`
//! change them at run time. The change reaches every member at once, the
//! node reconciles the deployments table against it, and it is kept
//! across restarts. On a node that trusts operator keys, a change must be
//! signed (`--operator-key`) by a key whose scope covers `tags` there.

use super::client::ApiClient;
use super::{CliError, EXIT_OK};
use crate::command::operator_key::OperatorSecret;
use crate::command::signature::OperatorSignature;
use crate::command::tag_change::TagChange;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct TagsArgs {
    /// Set a tag `KEY=VALUE` (repeatable).
    #[arg(long, value_parser = crate::tags::parse_tag)]
    pub set: Vec<(String, String)>,
    /// Delete a tag by its key (repeatable).
    #[arg(long)]
    pub delete: Vec<String>,
    /// Sign the change with this private operator key; a node that trusts
    /// operator keys takes only a signed change.
    #[arg(long, env = "CONJOINER_OPERATOR_KEY", value_name = "FILE")]
    pub operator_key: Option<std::path::PathBuf>,
}

/// The change as the node will check it, made for `node` and signed if a
/// key was given.
fn command(args: TagsArgs, node: String) -> Result<TagChange, CliError> {
    let mut change = TagChange {
        set: args.set.into_iter().collect(),
        delete: args.delete,
        node,
        id: uuid::Uuid::now_v7().to_string(),
        ts: crate::wire::now_ms(),
        signature: None,
    };
    change.check().map_err(|e| CliError::usage(e.message))?;
    if let Some(file) = &args.operator_key {
        let secret = OperatorSecret::load(file).map_err(CliError::usage)?;
        change.signature = Some(OperatorSignature::by(&secret, &change.signed_bytes()));
    }
    Ok(change)
}

pub async fn run(http: &str, json_out: bool, args: TagsArgs) -> Result<i32, CliError> {
    let client = ApiClient::new(http);
    let answer: Value = if args.set.is_empty() && args.delete.is_empty() {
        if args.operator_key.is_some() {
            return Err(CliError::usage("--operator-key signs a change: give --set or --delete"));
        }
        client.get("/v1/tags", &[]).await?
    } else {
        // A signed change names the node it is for, so ask its name first.
        let node = match &args.operator_key {
            Some(_) => {
                let now: Value = client.get("/v1/tags", &[]).await?;
                now["node"].as_str().unwrap_or_default().to_string()
            }
            None => String::new(),
        };
        let change = serde_json::to_value(command(args, node)?).unwrap_or_default();
        client.post("/v1/tags", &change).await?
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    } else {
        let tags: Vec<String> = answer["tags"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        println!(
            "{}: {}",
            answer["node"].as_str().unwrap_or("this node"),
            if tags.is_empty() {
                "no tags".to_string()
            } else {
                tags.join(",")
            }
        );
    }
    Ok(EXIT_OK)
}
