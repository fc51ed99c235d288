//! `conjoiner agent`: runs a node until SIGINT or SIGTERM.
//!
//! SIGUSR1 makes every actor log one line with a snapshot of its state.

use super::{CliError, EXIT_OK};
use crate::command::trust::{SharedTrust, Trust};
use crate::config::file::{OperatorEntry, ProfileName};
use crate::config::units::{parse_duration, parse_size, Dur, Size};
use crate::config::{AgentFile, AgentSettings, ConfigFile};
use crate::deploy::trust_record::{Seen, TrustRecord, TRUST_RECORD_FILE};
use crate::logging::{self, LogFormat};
use crate::node::{NetworkConfig, Node, NodeConfig, DEFAULT_MAX_BODY, HTTP_ADDR_FILE};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// The agent's flags. Each has a key of the same name in the config file
/// (`--config`); a flag given here, or its environment variable, wins
/// over the file. Defaults are those of the file's absent keys.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// A TOML file with the agent's settings: every flag has a key of the
    /// same name, and `[membership]`, `[deployer]`, `[monitor]` and
    /// `[transponder]` tune the preset. SIGHUP reads it again and applies
    /// what may change at run time: tags, log_level, operators.
    #[arg(long, env = "CONJOINER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the settings (the file with the flags laid over it), print
    /// them whole as a config file, and exit without starting a node.
    #[arg(long)]
    pub check: bool,
    /// This node's name. Default: the hostname.
    #[arg(long, env = "CONJOINER_NAME")]
    pub name: Option<String>,
    /// The cluster's name; nodes only talk to nodes of the same cluster.
    /// Default: conjoiner.
    #[arg(long, env = "CONJOINER_CLUSTER")]
    pub cluster: Option<String>,
    /// A tag `KEY=VALUE` for target selectors (repeatable; merged key by
    /// key with the file's `tags`).
    #[arg(long = "tag", value_parser = crate::tags::parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Where the node keeps its state. Default: ./conjoiner-data.
    #[arg(long, env = "CONJOINER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the cluster listener binds (TCP, encrypted). Default: 0.0.0.0:7946.
    #[arg(long, env = "CONJOINER_BIND")]
    pub bind: Option<String>,
    /// The address other nodes dial to reach this one (IP or IP:PORT).
    /// Default: the bind address, or this host's first LAN address.
    #[arg(long, env = "CONJOINER_ADVERTISE")]
    pub advertise: Option<String>,
    /// A seed node `host:port` to join, retried until reached (repeatable).
    #[arg(long = "join")]
    pub join: Vec<String>,
    /// Do not register or browse mDNS (use --join seeds instead).
    #[arg(long)]
    pub no_mdns: bool,
    /// A file with the cluster key (from `conjoiner keygen`). Else
    /// CONJOINER_KEY, else `<data-dir>/cluster.key`, created on first start.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The largest module package this node fetches (e.g. 64M, 512K,
    /// 1048576). Default: 64M.
    #[arg(long, env = "CONJOINER_MAX_PACKAGE", value_parser = parse_size)]
    pub max_package: Option<u64>,
    /// Peers this node sends module packages to at once; the others ask
    /// the nodes that already fetched it, so a deploy spreads like a tree.
    /// Default: 2.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_uploads: Option<u16>,
    /// A directory this node may read `file://` packages from, and the
    /// paths a local deploy names (repeatable). None by default: the CLI
    /// uploads a local package itself, as the user who runs it.
    #[arg(long = "package-dir")]
    pub package_dirs: Vec<PathBuf>,
    /// An operator key whose signed commands this node carries out
    /// (repeatable): `cjop1…`, `@FILE`, or a scope such as
    /// `{"key":"cjop1…","modules":["web-*"],"target":"tag.env=staging"}`.
    /// The `*.pub` files in `<data-dir>/operators/` count too. With any
    /// key trusted, unsigned deploys are refused; with none, any holder of
    /// the cluster key can deploy.
    #[arg(long = "trust-operator", value_name = "KEY|@FILE")]
    pub trust_operators: Vec<String>,
    /// Link only with peers whose hello shows an admission (`conjoiner
    /// admit`) by an operator key this node trusts, for the identity key
    /// the link proved and the name it claims. A host that has only the
    /// cluster key gets no link.
    #[arg(long)]
    pub require_admission: bool,
    /// This node's admission (from `conjoiner admit <its identity key>
    /// --name <its name>`), kept as `<data-dir>/admission.json` and shown
    /// to every peer.
    #[arg(long, value_name = "FILE")]
    pub join_token: Option<PathBuf>,
    /// Also serve `GET /metrics` on this address, alone: no token and no
    /// Host check, for Prometheus to scrape by any name (e.g.
    /// `0.0.0.0:9464`; port 0 picks one, recorded in
    /// `<data-dir>/metrics.addr`). The control API's `/metrics` stays.
    #[arg(long, env = "CONJOINER_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Every timeout and limit, by preset: `lan` (hosts on one network),
    /// `wan` (slow or lossy links: about five times slower to judge a peer,
    /// more patient with downloads and modules), or `local` (nodes on one
    /// host: quicker to judge). `agent --check` prints every value.
    /// Default: lan.
    #[arg(long, env = "CONJOINER_PROFILE", value_parser = ["lan", "wan", "local"])]
    pub profile: Option<String>,
    /// How often the Monitor asks this node's modules for their status. A
    /// changed report is published at once; an unchanged one every
    /// max(interval, N/2 s) in a cluster of N nodes, and shown as stale
    /// after three such periods. Default: 10s (30s with `--profile wan`).
    #[arg(long, value_parser = parse_duration)]
    pub status_interval: Option<Duration>,
    /// Log line format. Default: text. The filter is `RUST_LOG`, else the
    /// file's `log_level`, else `info`.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

impl AgentArgs {
    /// The flags as a layer of settings, in the config file's schema.
    fn layer(&self, http: Option<&str>) -> AgentFile {
        let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        AgentFile {
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            tags: (!self.tags.is_empty()).then(|| self.tags.iter().cloned().collect()),
            data_dir: self.data_dir.clone(),
            bind: self.bind.clone(),
            advertise: self.advertise.clone(),
            join: some_vec(&self.join),
            mdns: self.no_mdns.then_some(false),
            key_file: self.key_file.clone(),
            http: http.map(str::to_string),
            metrics: self.metrics.clone(),
            max_package: self.max_package.map(Size),
            max_uploads: self.max_uploads,
            package_dirs: (!self.package_dirs.is_empty()).then(|| self.package_dirs.clone()),
            operators: (!self.trust_operators.is_empty())
                .then(|| self.trust_operators.iter().cloned().map(OperatorEntry::Text).collect()),
            require_admission: self.require_admission.then_some(true),
            join_token: self.join_token.clone(),
            profile: self.profile.as_deref().and_then(ProfileName::parse),
            status_interval: self.status_interval.map(Dur),
            log_format: self.log_format,
            ..AgentFile::default()
        }
    }
}

/// Where a node's settings come from: the flags it was started with and
/// its config file, read again on every reload.
struct Sources {
    flags: AgentFile,
    file: Option<PathBuf>,
}

impl Sources {
    /// Reads the file, lays the flags over it, and resolves the settings.
    /// An error names the key, and the file and line that gave it, or the flag.
    fn resolve(&self) -> Result<AgentSettings, String> {
        let file = self.file.as_deref().map(ConfigFile::load).transpose()?;
        let given = match &file {
            Some(file) => self.flags.clone().over(file.values.clone()),
            None => self.flags.clone(),
        };
        let rust_log = std::env::var("RUST_LOG").ok();
        AgentSettings::resolve(&given, rust_log.as_deref()).map_err(|e| {
            let by_flag = self.flags.gives(&e.key);
            let by_env = e.key == "log_level" && rust_log.as_deref().is_some_and(|l| !l.trim().is_empty());
            match &file {
                _ if by_env => format!("RUST_LOG: {}", e.message),
                Some(file) if !by_flag => format!("{}: {}", file.name_key(&e.key), e.message),
                _ => format!("`{}`: {}", e.key, e.message),
            }
        })
    }
}

/// glibc gives each thread its own malloc arena; a node has a few threads
/// and little to allocate, so two arenas keep idle memory low.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before the runtime
    // starts any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Runs the agent; `http` is the `--http` flag, if given.
pub fn run(http: Option<&str>, args: AgentArgs) -> Result<i32, CliError> {
    let sources = Sources {
        flags: args.layer(http),
        file: args.config.clone(),
    };
    let settings = sources.resolve().map_err(CliError::usage)?;
    let trust = Trust::load(&settings.operators, &settings.data_dir).map_err(CliError::usage)?;
    if args.check {
        let from = match &args.config {
            Some(file) => format!("the flags over {}, over", file.display()),
            None => "the flags over".into(),
        };
        print!(
            "# conjoiner agent: settings from {from} the `{}` preset\n{}",
            settings.profile_name.as_str(),
            settings.to_toml()
        );
        return Ok(EXIT_OK);
    }
    let (config, api) = node_config(&settings, trust)?;
    crate::data_dir::keep_files_private();
    logging::init(settings.log_format, &settings.log_level);
    limit_malloc_arenas();
    let system = actix_rt::System::new();
    let result = system.block_on(run_node(config, api, sources, settings));
    match result {
        Ok(()) => Ok(EXIT_OK),
        Err(e) => {
            error!(error = %format!("{e:#}"), "node failed");
            Err(CliError::error(format!("{e:#}")))
        }
    }
}

/// What the node and its control API are built from.
fn node_config(s: &AgentSettings, trust: Trust) -> Result<(NodeConfig, ApiSettings), CliError> {
    let profile = s.profile.clone();
    let api = ApiSettings {
        addr: s.http_addr,
        max_body_bytes: DEFAULT_MAX_BODY,
        metrics: s.metrics_addr,
    };
    let config = NodeConfig {
        name: s.name.clone(),
        cluster: s.cluster.clone(),
        tags: s.tags.clone(),
        data_dir: s.data_dir.clone(),
        transponder: profile.transponder,
        deployer: crate::deploy::install::DeployerConfig {
            trust: SharedTrust::new(trust),
            ..profile.deployer
        },
        monitor: profile.monitor,
        network: Some(NetworkConfig {
            bind: s.bind_addr,
            advertise: s.advertise_addr,
            join: s.join.clone(),
            mdns: s.mdns,
            key_file: s.key_file.clone(),
            key_env: std::env::var("CONJOINER_KEY").ok(),
            require_admission: s.require_admission,
            join_token: s.join_token.clone(),
            timing: profile.cluster,
            memory: None,
        }),
    };
    Ok((config, api))
}

/// Where `agent --metrics` records the address it bound.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";

/// Where the control API listens, and the largest body it takes.
struct ApiSettings {
    /// Port 0 picks a free port, recorded in `<data-dir>/http.addr`.
    addr: SocketAddr,
    max_body_bytes: usize,
    /// The metrics listener's address, if any (`--metrics`).
    metrics: Option<SocketAddr>,
}

/// Starts the node, then its control API; stops them in reverse order.
async fn run_node(
    config: NodeConfig,
    api: ApiSettings,
    sources: Sources,
    mut settings: AgentSettings,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let data_dir = config.data_dir.clone();
    let node = Node::start(config).await?;
    let span = node.handle.ctx.identity.span("node");
    span.in_scope(|| audit_trust_at_start(&node, &settings.tags));
    let token = crate::api_token::load_or_create(&data_dir).with_context(|| {
        format!(
            "cannot read or make the API token in {}",
            data_dir.join(crate::api_token::API_TOKEN_FILE).display()
        )
    })?;
    let (server, http_addr) = crate::api::serve(node.handle.clone(), api.addr, api.max_body_bytes, token)
        .with_context(|| format!("cannot start the control API on {}", api.addr))?;
    let addr_file = data_dir.join(HTTP_ADDR_FILE);
    span.in_scope(|| {
        if let Err(e) = crate::private_file::write(&addr_file, format!("{http_addr}\n").as_bytes()) {
            warn!(file = %addr_file.display(), error = %e, "cannot record the control API address");
        }
        info!(http = %http_addr, "control API listening");
    });
    let metrics_server = match api.metrics {
        None => None,
        Some(addr) => {
            let (server, bound) = crate::api::serve_metrics(node.handle.clone(), addr)
                .with_context(|| format!("cannot start the metrics listener on {addr}"))?;
            let file = data_dir.join(METRICS_ADDR_FILE);
            span.in_scope(|| {
                if let Err(e) = crate::private_file::write(&file, format!("{bound}\n").as_bytes()) {
                    warn!(file = %file.display(), error = %e, "cannot record the metrics address");
                }
                info!(metrics = %bound, "metrics listening (GET /metrics only, no token)");
            });
            Some(server)
        }
    };
    // A node whose own parts broke exits non-zero, so that its service
    // manager starts it again, instead of serving `ok` half dead.
    let mut checkup = tokio::time::interval(CORE_CHECK_INTERVAL);
    let mut trim = tokio::time::interval(MEMORY_TRIM_INTERVAL);
    let fault = loop {
        tokio::select! {
            _ = sigint.recv() => { span.in_scope(|| info!("SIGINT received")); break None; }
            _ = sigterm.recv() => { span.in_scope(|| info!("SIGTERM received")); break None; }
            _ = sigusr1.recv() => {
                span.in_scope(|| info!("SIGUSR1 received: dumping every actor's state"));
                node.handle.dump_state().await;
            }
            _ = sighup.recv() => {
                let _in_span = span.enter();
                reload(&node, &sources, &mut settings).await;
            }
            _ = checkup.tick() => {
                if let Some(fault) = node.handle.core_fault().await {
                    span.in_scope(|| error!(error = %fault, "this node is broken; stopping so that it is restarted"));
                    break Some(fault);
                }
            }
            _ = trim.tick() => release_free_memory(),
        }
    };
    node.shutdown().await;
    server.stop(true).await;
    if let Some(metrics) = metrics_server {
        metrics.stop(true).await;
    }
    match fault {
        Some(fault) => Err(anyhow::anyhow!("this node is broken: {fault}")),
        None => Ok(()),
    }
}

/// Reads the settings again (SIGHUP) and takes what may change at run
/// time: tags, the log level and the trusted operator keys (with the
/// `*.pub` files of `<data-dir>/operators/`). Any other change is refused
/// by name and waits for the next start. Settings that do not read are
/// refused whole, and the node runs on as it was.
async fn reload(node: &Node, sources: &Sources, running: &mut AgentSettings) {
    let file = sources.file.as_ref().map(|f| f.display().to_string());
    info!(config = %file.as_deref().unwrap_or("(none: the flags only)"), "SIGHUP received: reading the settings again");
    let wanted = match sources.resolve() {
        Ok(wanted) => wanted,
        Err(e) => {
            error!(error = %e, "settings not reloaded: the node keeps those it runs with");
            return;
        }
    };
    let (next, outcome) = running.reload(&wanted);
    let trust = match Trust::load(&next.operators, &next.data_dir) {
        Ok(trust) => trust,
        Err(e) => {
            error!(error = %e, "settings not reloaded: the node keeps those it runs with");
            return;
        }
    };
    let before = running.flat();
    let after = next.flat();
    for key in &outcome.taken {
        let show = |v: Option<&toml::Value>| v.map_or_else(|| "(none)".to_string(), |v| v.to_string());
        info!(key = %key, from = %show(before.get(key)), to = %show(after.get(key)), "setting changed");
    }
    if outcome.taken.iter().any(|k| k == "log_level") {
        if let Err(e) = logging::set_level(&next.log_level) {
            error!(error = %e, "the log level stays as it was");
        }
    }
    let was = TrustRecord::of(&node.handle.settings.deployer.trust.current(), &running.tags);
    if outcome.taken.iter().any(|k| k == "tags") {
        let tags = node.handle.set_given_tags(next.tags.clone()).await;
        info!(tags = ?tags, "tags given by the settings changed; run-time changes still lie over them");
    }
    let now = TrustRecord::of(&trust, &next.tags);
    if now.operators != was.operators {
        if trust.is_open() {
            warn!("this node now trusts no operator key: any holder of the cluster key can deploy code to it");
        } else {
            info!(keys = %now.operators.join("; "), "trusted operator keys changed");
        }
        node.handle.settings.deployer.trust.replace(trust);
    }
    audit_trust_changes(node, &now, Some(&was), Seen::Reload);
    if !outcome.refused.is_empty() {
        warn!(keys = %outcome.refused.join(", "),
            "these settings change only at the next start; the node keeps its running values");
    }
    if outcome.taken.is_empty() && outcome.refused.is_empty() {
        info!("settings reloaded: nothing to change");
    }
    *running = next;
}

/// Writes the audit lines of what the settings changed about whom the
/// node obeys (see [`TrustRecord`]) since `was` (none: nothing to compare
/// with), and keeps `now` for the next start when it differs.
fn audit_trust_changes(node: &Node, now: &TrustRecord, was: Option<&TrustRecord>, seen: Seen) {
    if was == Some(now) {
        return;
    }
    if let Some(was) = was {
        let me = node.handle.ctx.identity.name.to_string();
        let effective = node.handle.ctx.identity.tags.get();
        for line in now.changes_since(was, seen, &me, &effective, crate::wire::now_ms()) {
            node.handle.deploy.audit.append(&line);
        }
    }
    if let Err(e) = now.save(&node.handle.settings.data_dir) {
        warn!(error = %e, file = TRUST_RECORD_FILE,
            "cannot keep the trusted keys and given tags; a change of them at the next start is not audited");
    }
}

/// At start: audits what the settings changed about whom the node obeys
/// since the run before, which a restart would otherwise pass silently.
fn audit_trust_at_start(node: &Node, given_tags: &std::collections::BTreeMap<String, String>) {
    let now = TrustRecord::of(&node.handle.settings.deployer.trust.current(), given_tags);
    let was = TrustRecord::load(&node.handle.settings.data_dir).unwrap_or_else(|e| {
        warn!(error = %e, "cannot tell whether the trusted keys or given tags changed since the last start; \
            keeping those of this start");
        None
    });
    audit_trust_changes(node, &now, was.as_ref(), Seen::Start);
}

/// How often the agent checks that the node's own parts still run.
const CORE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often freed heap memory is handed back to the system.
const MEMORY_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands the allocator's free pages back to the system. glibc keeps what a
/// burst freed (queues of a busy minute) mapped for good: after 20 s of
/// 10,000 envelopes/s, five nodes stayed at 30 MiB each when idle again
/// (`make bench-load`). A pass over a small heap takes well under a
/// millisecond.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_a_valid_name() {
        let name = crate::config::settings::default_name();
        assert!(crate::cluster::identity::check_name(&name).is_ok(), "{name}");
    }

    fn args(words: &[&str]) -> AgentArgs {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["conjoiner", "agent"].iter().chain(words)).unwrap();
        match cli.command {
            crate::cli::Command::Agent(args) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_flag_stands_for_the_key_of_its_name_and_an_absent_flag_for_nothing() {
        let none = args(&[]).layer(None);
        assert_eq!(
            none,
            AgentFile::default(),
            "no flag, no setting: the file or the default decides"
        );
        let given = args(&[
            "--name",
            "n1",
            "--no-mdns",
            "--tag",
            "a=1",
            "--join",
            "s:1",
            "--max-package",
            "1M",
            "--profile",
            "wan",
            "--trust-operator",
            "@k.pub",
            "--status-interval",
            "20s",
        ])
        .layer(Some("127.0.0.1:1"));
        assert_eq!(given.name.as_deref(), Some("n1"));
        assert_eq!(given.mdns, Some(false));
        assert_eq!(given.http.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(given.max_package, Some(Size(1 << 20)));
        assert_eq!(given.profile, Some(ProfileName::Wan));
        assert_eq!(given.operators, Some(vec![OperatorEntry::Text("@k.pub".into())]));
        for key in [
            "name",
            "mdns",
            "tags",
            "join",
            "max_package",
            "profile",
            "operators",
            "status_interval",
            "http",
        ] {
            assert!(given.gives(key), "{key}");
        }
        assert!(!given.gives("bind") && !given.gives("membership.probe_interval"));
    }
}
