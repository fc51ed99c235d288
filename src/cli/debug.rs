//! `conjoiner debug dump`: every actor of the local node logs its state
//! snapshot (as `kill -USR1` does), and the command prints them all.

use super::client::ApiClient;
use super::{CliError, EXIT_OK};
use serde_json::Value;

#[derive(Debug, clap::Subcommand)]
pub enum DebugCommand {
    /// Make every actor log its state snapshot, and print the snapshots (JSON).
    Dump,
}

pub async fn run(http: &str, command: DebugCommand) -> Result<i32, CliError> {
    match command {
        DebugCommand::Dump => {
            let state: Value = ApiClient::new(http).get("/v1/debug/state", &[]).await?;
            println!("{}", serde_json::to_string_pretty(&state).unwrap_or_default());
            Ok(EXIT_OK)
        }
    }
}
