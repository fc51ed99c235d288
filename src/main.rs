//! The `conjoiner` binary: parses the command line and runs it.

use clap::Parser;

fn main() {
    let cli = conjoiner::cli::Cli::parse();
    std::process::exit(conjoiner::cli::run(cli));
}
