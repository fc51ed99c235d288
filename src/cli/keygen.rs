//! `conjoiner keygen`: prints a new cluster key; `keygen --operator`
//! writes a new operator key pair and prints its public key.

use super::{CliError, EXIT_OK};
use crate::cluster::ClusterKey;
use crate::command::operator_key::{public_path, OperatorSecret};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Make an operator key pair (ed25519): the private key to FILE (mode
    /// 0600; it signs deploys, and never has to be on a node), the public
    /// one to FILE.pub (what nodes trust).
    #[arg(long)]
    pub operator: bool,
    /// Where --operator writes the private key.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "FILE",
        default_value = "operator.key",
        requires = "operator"
    )]
    pub out: PathBuf,
}

pub fn run(json: bool, args: KeygenArgs) -> Result<i32, CliError> {
    if args.operator {
        let secret = OperatorSecret::generate();
        secret.write_pair(&args.out).map_err(CliError::usage)?;
        let public = secret.public();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "key": public.to_string(),
                    "id": public.id(),
                    "private_key_file": args.out,
                    "public_key_file": public_path(&args.out),
                })
            );
        } else {
            println!("{public}");
            eprintln!(
                "wrote the private key to {} (keep it off the nodes) and the public key to {}; \
                 nodes trust it with --trust-operator {public} or a copy in <data-dir>/operators/; \
                 sign deploys with --operator-key {}",
                args.out.display(),
                public_path(&args.out).display(),
                args.out.display()
            );
        }
        return Ok(EXIT_OK);
    }
    let key = ClusterKey::generate().to_base64();
    if json {
        println!("{}", serde_json::json!({ "key": key }));
    } else {
        println!("{key}");
        eprintln!("give this key to every node: save it to a file for --key-file (mode 0600), or set CONJOINER_KEY");
    }
    Ok(EXIT_OK)
}
