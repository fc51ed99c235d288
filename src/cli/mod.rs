//! The `conjoiner` command line. One file per command; every client
//! command talks to the local node's control API through [`client::ApiClient`].
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 partial (some targeted
//! nodes failed or did not answer; they are listed).

pub mod admit;
pub mod agent;
pub mod audit;
pub mod client;
pub mod debug;
pub mod deploy;
pub mod deployments;
pub mod keygen;
pub mod keys;
pub mod members;
pub mod modules;
pub mod package;
pub mod publish;
pub mod request;
pub mod status;
pub mod tags;
pub mod tail;

#[cfg(test)]
mod answers_tests;

use clap::{Parser, Subcommand};
use std::fmt;

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_PARTIAL: i32 = 3;

pub use crate::config::settings::DEFAULT_HTTP;
pub use crate::config::units::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "conjoiner",
    version,
    about = "A decentralized management network for fleets of hosts"
)]
pub struct Cli {
    /// The node's control API address (the agent listens there; other
    /// commands talk to it). Default: 127.0.0.1:7373, or for the agent its
    /// config file's `http`.
    #[arg(long, global = true, env = "CONJOINER_HTTP")]
    pub http: Option<String>,

    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,

    /// The node's API token file, for commands that change anything.
    /// Default: `CONJOINER_TOKEN`, else `api.token` in `CONJOINER_DATA_DIR`,
    /// else in `./conjoiner-data`.
    #[arg(long, global = true, env = "CONJOINER_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line as the binary reads it: `--json` and
    /// `--token-file` are options of the client commands, so `agent
    /// --help` does not list them (they mean nothing to the agent).
    pub fn command_line() -> clap::Command {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        cmd.mut_subcommand("agent", |agent| {
            agent
                .mut_arg("json", |a| a.hide(true))
                .mut_arg("token_file", |a| a.hide(true))
        })
    }

    /// Parses the process's arguments (see [`Cli::command_line`]).
    pub fn from_env() -> Cli {
        use clap::FromArgMatches;
        let matches = Cli::command_line().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Agent(agent::AgentArgs),
    /// List the cluster's members with address, status and tags.
    Members(members::MembersArgs),
    /// Publish a fire-and-forget event to the targeted nodes.
    Publish(publish::PublishArgs),
    /// Send a request and gather one reply per targeted node.
    Request(request::RequestArgs),
    /// The audit trail of the targeted nodes: each deploy and undeploy a
    /// node took, carried out or refused, merged by time.
    Audit(audit::AuditArgs),
    /// Show this node's tags, or change them at run time (--set K=V, --delete K).
    Tags(tags::TagsArgs),
    /// Stream the envelopes the local node sees.
    Tail(tail::TailArgs),
    /// The cluster keys of every alive node: list them, or install, use or
    /// remove one on all at once (rotation without downtime).
    Keys(keys::KeysArgs),
    /// Print a new cluster key (give the same key to every node), or with
    /// --operator make an operator key pair that signs deploys.
    Keygen(keygen::KeygenArgs),
    /// Admit a host to a fleet that requires admission: sign a join token
    /// for its identity key and name (`agent --join-token FILE`).
    Admit(admit::AdmitArgs),
    /// Deploy a module package to the targeted nodes.
    Deploy(deploy::DeployArgs),
    /// Stop and remove a module from the targeted nodes.
    Undeploy(deploy::UndeployArgs),
    /// The deployments table: what every node should run, and which nodes
    /// are behind; pause, resume or revert a rollout.
    Deployments(deployments::DeploymentsArgs),
    /// List each node's modules with state, health, restarts, uptime and status.
    Modules(modules::ModulesArgs),
    /// The fleet on one screen: nodes, their health, failing modules (exit 3 if any fail).
    Status,
    /// Inspect the local node's actors.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
    /// Print a shell completion script (bash, zsh or fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Build a module package from a folder with mod.json; prints its sha256.
    Package(package::PackageArgs),
}

/// An error that ends a command, with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub fn error(message: impl Into<String>) -> CliError {
        CliError {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs the parsed command line and answers the process exit code.
/// A client command whose reader went away (`conjoiner modules | head
/// -3`) ends quietly, as `ls` or `cat` do, instead of panicking in
/// `println!`: Rust ignores SIGPIPE, so writes fail with EPIPE, and this
/// gives the signal its default action back. Not for the agent, which must
/// outlive any peer or client that closes a socket.
fn quiet_on_closed_pipe() {
    // SAFETY: sets a signal's disposition to the default before any thread
    // of this process writes; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn run(cli: Cli) -> i32 {
    client::set_token_file(cli.token_file.clone());
    if !matches!(cli.command, Command::Agent(_)) {
        quiet_on_closed_pipe();
    }
    // The agent lays `--http` over its config file's; the other commands
    // talk to the default address unless told otherwise.
    let given_http = cli.http.clone();
    let http = given_http.as_deref().unwrap_or(DEFAULT_HTTP);
    let result = match cli.command {
        Command::Agent(args) => agent::run(given_http.as_deref(), args),
        Command::Members(args) => block_on(members::run(http, cli.json, args)),
        Command::Publish(args) => block_on(publish::run(http, cli.json, args)),
        Command::Request(args) => block_on(request::run(http, cli.json, args)),
        Command::Audit(args) => block_on(audit::run(http, cli.json, args)),
        Command::Tail(args) => block_on(tail::run(http, cli.json, args)),
        Command::Tags(args) => block_on(tags::run(http, cli.json, args)),
        Command::Keygen(args) => keygen::run(cli.json, args),
        Command::Admit(args) => admit::run(args),
        Command::Keys(args) => block_on(keys::run(http, cli.json, args)),
        Command::Deploy(args) => block_on(deploy::deploy(http, cli.json, args)),
        Command::Undeploy(args) => block_on(deploy::undeploy(http, cli.json, args)),
        Command::Deployments(args) => block_on(deployments::run(http, cli.json, args)),
        Command::Modules(args) => block_on(modules::run(http, cli.json, args)),
        Command::Package(args) => package::run(cli.json, args),
        Command::Status => block_on(status::run(http, cli.json)),
        Command::Debug(command) => block_on(debug::run(http, command)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "conjoiner", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("conjoiner: {}", e.message);
            e.code
        }
    }
}

fn block_on<F: std::future::Future<Output = Result<i32, CliError>>>(fut: F) -> Result<i32, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::error(format!("cannot start the async runtime: {e}")))?
        .block_on(fut)
}

/// Reads a JSON body argument: text, `-` for stdin, or `{}` when absent.
pub fn read_body(arg: Option<&str>) -> Result<serde_json::Value, CliError> {
    let text = match arg {
        None => return Ok(serde_json::json!({})),
        Some("-") => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| CliError::error(format!("cannot read the body from stdin: {e}")))?;
            s
        }
        Some(text) => text.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| CliError::usage(format!("the body is not valid JSON: {e}")))
}

/// Checks each `--target` and joins them into one target (OR).
pub fn read_targets(targets: &[String]) -> Result<Option<String>, CliError> {
    crate::wire::Target::any_of(targets)
        .map(|t| t.map(|t| t.to_string()))
        .map_err(|e| CliError::usage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_targets() {
        assert_eq!(read_body(Some(r#"{"x":1}"#)).unwrap(), serde_json::json!({"x": 1}));
        assert_eq!(read_body(None).unwrap(), serde_json::json!({}));
        assert_eq!(read_body(Some("{x")).unwrap_err().code, EXIT_USAGE);
        assert_eq!(
            read_targets(&["name=a".into(), "tag.r=b".into()]).unwrap().unwrap(),
            "name=a|tag.r=b"
        );
        assert_eq!(read_targets(&["nam=a".into()]).unwrap_err().code, EXIT_USAGE);
    }

    /// The systemd unit in `dist/` starts the agent with flags it takes.
    #[test]
    fn the_systemd_unit_runs_a_valid_agent_command() {
        let unit = include_str!("../../dist/conjoiner.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let mut words: Vec<&str> = exec.split_whitespace().filter(|w| *w != "$CONJOINER_ARGS").collect();
        assert_eq!(words[0], "/usr/local/bin/conjoiner");
        words.extend(["--tag", "role=web"]);
        let cli = Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{exec}: {e}"));
        let Command::Agent(args) = cli.command else {
            panic!("not an agent command: {exec}")
        };
        let config = args.config.expect("the unit reads a config file");
        assert_eq!(config, std::path::PathBuf::from("/etc/conjoiner/conjoiner.toml"));
        // The example file in `dist/` is that file: it reads, and with it
        // the node keeps its state where systemd makes it.
        let example = crate::config::ConfigFile::parse(&config, include_str!("../../dist/conjoiner.toml").into())
            .unwrap_or_else(|e| panic!("dist/conjoiner.toml: {e}"));
        let settings = crate::config::AgentSettings::resolve(&example.values, None).unwrap();
        assert_eq!(settings.data_dir, std::path::PathBuf::from("/var/lib/conjoiner"));
        assert_eq!(settings.key_file, Some("/etc/conjoiner/cluster.key".into()));
        assert!(
            unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
            "systemctl reload sends SIGHUP"
        );
        assert!(
            unit.contains("StateDirectory=conjoiner"),
            "systemd creates the data dir"
        );
    }

    #[test]
    fn agent_help_lists_only_what_the_agent_reads() {
        let mut cmd = Cli::command_line();
        let agent = cmd.find_subcommand_mut("agent").unwrap().render_long_help().to_string();
        assert!(!agent.contains("--json") && !agent.contains("--token-file"), "{agent}");
        assert!(
            agent.contains("--trust-operator") && agent.contains("--metrics"),
            "{agent}"
        );
        let status = cmd
            .find_subcommand_mut("status")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(status.contains("--json") && status.contains("--token-file"), "{status}");
    }

    #[test]
    fn completions_name_every_command() {
        use clap::CommandFactory;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "conjoiner", &mut out);
            let text = String::from_utf8(out).unwrap();
            for command in ["agent", "status", "modules", "deploy", "debug", "completions"] {
                assert!(text.contains(command), "{shell}: `{command}` missing");
            }
        }
    }
}
