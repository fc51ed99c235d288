//! The `conjoiner` binary: parses the command line and runs it.

fn main() {
    let cli = conjoiner::cli::Cli::from_env();
    std::process::exit(conjoiner::cli::run(cli));
}
