//! `conjoiner keygen`: prints a new cluster key.

use super::{CliError, EXIT_OK};
use crate::cluster::ClusterKey;

pub fn run(json: bool) -> Result<i32, CliError> {
    let key = ClusterKey::generate().to_base64();
    if json {
        println!("{}", serde_json::json!({ "key": key }));
    } else {
        println!("{key}");
        eprintln!("give this key to every node: save it to a file for --key-file (mode 0600), or set CONJOINER_KEY");
    }
    Ok(EXIT_OK)
}
