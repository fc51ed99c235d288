//! `conjoiner admit NODE-KEY --name NAME --operator-key FILE`: an
//! operator's signed word that the host whose identity key is NODE-KEY may
//! be the node NAME, for fleets that require admission. It writes a join
//! token: the node takes it with `agent --join-token FILE`. Nothing is
//! sent anywhere, so the operator key never has to be on a node.

use super::{CliError, EXIT_OK};
use crate::cluster::identity::check_name;
use crate::cluster::node_key::NodePublicKey;
use crate::command::admission::Admission;
use crate::command::operator_key::OperatorSecret;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct AdmitArgs {
    /// The node's identity key (`cjnode1…`): its log says it at start, and
    /// `GET /v1/health` answers it as `identity`.
    pub node_key: String,
    /// The name the node runs under (its `--name`).
    #[arg(long)]
    pub name: String,
    /// The operator key that signs the admission. Nodes that require
    /// admission must trust it, with a scope that covers `admit`.
    #[arg(long, env = "CONJOINER_OPERATOR_KEY", value_name = "FILE")]
    pub operator_key: PathBuf,
    /// Where to write the join token (default: print it).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(args: AdmitArgs) -> Result<i32, CliError> {
    let key = NodePublicKey::parse(&args.node_key).map_err(CliError::usage)?;
    check_name(&args.name).map_err(CliError::usage)?;
    let secret = OperatorSecret::load(&args.operator_key).map_err(CliError::usage)?;
    let token = Admission::issue(&secret, &key, &args.name, crate::wire::now_ms()).to_text();
    match &args.out {
        None => println!("{token}"),
        Some(file) => {
            std::fs::write(file, format!("{token}\n"))
                .map_err(|e| CliError::error(format!("cannot write {}: {e}", file.display())))?;
            eprintln!(
                "wrote the join token of `{}` (identity {}) to {}; start that node with --join-token {}",
                args.name,
                key.id(),
                file.display(),
                file.display()
            );
        }
    }
    Ok(EXIT_OK)
}
