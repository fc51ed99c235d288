//! `conjoiner tags`: the local node's tags; `--set K=V` and `--delete K`
//! change them at run time. The change reaches every member at once, the
//! node reconciles the deployments table against it, and it is kept
//! across restarts.

use super::client::ApiClient;
use super::{CliError, EXIT_OK};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Debug, clap::Args)]
pub struct TagsArgs {
    /// Set a tag `KEY=VALUE` (repeatable).
    #[arg(long, value_parser = crate::tags::parse_tag)]
    pub set: Vec<(String, String)>,
    /// Delete a tag by its key (repeatable).
    #[arg(long)]
    pub delete: Vec<String>,
}

pub async fn run(http: &str, json_out: bool, args: TagsArgs) -> Result<i32, CliError> {
    let client = ApiClient::new(http);
    let answer: Value = if args.set.is_empty() && args.delete.is_empty() {
        client.get("/v1/tags", &[]).await?
    } else {
        let set: BTreeMap<String, String> = args.set.into_iter().collect();
        client
            .post("/v1/tags", &json!({"set": set, "delete": args.delete}))
            .await?
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
