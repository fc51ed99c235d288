//! `conjoiner publish`: a fire-and-forget event to the targeted nodes.

use super::client::ApiClient;
use super::{read_body, read_targets, CliError, EXIT_OK};
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The address (topic) to publish to, e.g. `deploys` or `mod.echo`.
    pub address: String,
    /// The body as JSON, or `-` to read it from stdin. Default `{}`.
    pub body: Option<String>,
    /// Only nodes matching this selector (repeat for OR). Default: every node.
    #[arg(long)]
    pub target: Vec<String>,
    /// The envelope type. Default `event`.
    #[arg(long = "type", default_value = "event")]
    pub kind: String,
}

pub async fn run(http: &str, json_out: bool, args: PublishArgs) -> Result<i32, CliError> {
    let body = read_body(args.body.as_deref())?;
    let target = read_targets(&args.target)?;
    let request = json!({"address": args.address, "body": body, "target": target, "type": args.kind});
    let answer: Value = ApiClient::new(http).post("/v1/publish", &request).await?;
    if json_out {
        println!("{answer}");
    } else {
        println!("published {}", answer["id"].as_str().unwrap_or("?"));
    }
    Ok(EXIT_OK)
}
