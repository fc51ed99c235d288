//! `conjoiner package DIR [-o FILE]`: builds a module package from a folder
//! with `mod.json` and prints its sha256 (the form `sha256sum` prints, so
//! scripts can `cut -d' ' -f1`).

use super::{CliError, EXIT_OK};
use crate::deploy::package;
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// The module folder (with `mod.json` at its root).
    pub dir: PathBuf,
    /// Where to write the package. Default: `<name>-<version>.tar.gz` here.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

pub fn run(json_out: bool, args: PackageArgs) -> Result<i32, CliError> {
    if !args.dir.is_dir() {
        return Err(CliError::usage(format!("{} is not a folder", args.dir.display())));
    }
    let manifest = crate::deploy::Manifest::read_from(&args.dir).map_err(CliError::error)?;
    let output = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.tar.gz", manifest.name, manifest.version)));
    let (manifest, sha256) = package::build(&args.dir, &output).map_err(CliError::error)?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    if json_out {
        let out = json!({
            "file": output, "sha256": sha256, "size": size,
            "name": manifest.name, "version": manifest.version, "kind": manifest.kind(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("{sha256}  {}", output.display());
        eprintln!(
            "packaged {} {} ({}, {size} bytes)",
            manifest.name,
            manifest.version,
            manifest.kind()
        );
    }
    Ok(EXIT_OK)
}
