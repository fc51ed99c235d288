//! `conjoiner agent`: runs a node until SIGINT or SIGTERM.
//!
//! SIGUSR1 makes every actor log one line with a snapshot of its state.

use super::{parse_duration, CliError, EXIT_OK};
use crate::actors::monitor::MonitorConfig;
use crate::deploy::install::DeployerConfig;
use crate::logging::{self, LogFormat};
use crate::node::{NetworkConfig, Node, NodeConfig, Profile, DEFAULT_MAX_BODY, HTTP_ADDR_FILE};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// This node's name. Default: the hostname.
    #[arg(long, env = "CONJOINER_NAME")]
    pub name: Option<String>,
    /// The cluster's name; nodes only talk to nodes of the same cluster.
    #[arg(long, env = "CONJOINER_CLUSTER", default_value = "conjoiner")]
    pub cluster: String,
    /// A tag `KEY=VALUE` for target selectors (repeatable).
    #[arg(long = "tag", value_parser = crate::tags::parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Where the node keeps its state.
    #[arg(long, env = "CONJOINER_DATA_DIR", default_value = "./conjoiner-data")]
    pub data_dir: PathBuf,
    /// Where the cluster listener binds (TCP, encrypted).
    #[arg(long, env = "CONJOINER_BIND", default_value = "0.0.0.0:7946")]
    pub bind: String,
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
    /// The largest module package this node fetches (e.g. 64M, 512K, 1048576).
    #[arg(long, env = "CONJOINER_MAX_PACKAGE", default_value = "64M", value_parser = parse_size)]
    pub max_package: u64,
    /// Peers this node sends module packages to at once; the others ask
    /// the nodes that already fetched it, so a deploy spreads like a tree.
    #[arg(long, default_value_t = crate::deploy::uploads::DEFAULT_MAX_UPLOADS as u16,
        value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_uploads: u16,
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
    /// Also serve `GET /metrics` on this address, alone: no token and no
    /// Host check, for Prometheus to scrape by any name (e.g.
    /// `0.0.0.0:9464`; port 0 picks one, recorded in
    /// `<data-dir>/metrics.addr`). The control API's `/metrics` stays.
    #[arg(long, env = "CONJOINER_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Every timeout and limit, by preset: `lan` (hosts on one network),
    /// `wan` (slow or lossy links: about five times slower to judge a peer,
    /// more patient with downloads and modules), or `local` (nodes on one
    /// host: quicker to judge). See `Profile` in `src/node.rs`.
    #[arg(long, env = "CONJOINER_PROFILE", default_value = "lan", value_parser = ["lan", "wan", "local"])]
    pub profile: String,
    /// How often the Monitor asks this node's modules for their status. A
    /// changed report is published at once; an unchanged one every
    /// max(interval, N/2 s) in a cluster of N nodes, and shown as stale
    /// after three such periods. Default: 10s (30s with `--profile wan`).
    #[arg(long, value_parser = parse_duration)]
    pub status_interval: Option<Duration>,
    /// Log line format (the filter comes from RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Parses a size: bytes, or a number with `K`, `M` or `G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, factor) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 64M, 512K or a number of bytes)"))?;
    n.checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is out of range"))
}

/// Checks a node name, under the rules every node holds peers' names to.
pub fn check_name(name: &str) -> Result<(), String> {
    crate::cluster::identity::check_name(name).map_err(|e| format!("{e} (use --name)"))
}

fn hostname() -> String {
    let Some(name) = crate::node::system_hostname() else {
        return "conjoiner".into();
    };
    // Keep the short host name; replace anything a node name may not hold.
    let short = name.split('.').next().unwrap_or(&name);
    short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
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

fn resolve(flag: &str, addr: &str) -> Result<SocketAddr, CliError> {
    addr.to_socket_addrs()
        .map_err(|e| CliError::usage(format!("{flag} `{addr}` is not an address: {e}")))?
        .next()
        .ok_or_else(|| CliError::usage(format!("{flag} `{addr}` resolves to nothing")))
}

/// `--advertise` takes `IP` (the bound port is used) or `IP:PORT`.
fn parse_advertise(text: &str) -> Result<SocketAddr, CliError> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 0));
    }
    text.parse()
        .map_err(|_| CliError::usage(format!("--advertise `{text}` must be IP or IP:PORT")))
}

pub fn run(http: &str, args: AgentArgs) -> Result<i32, CliError> {
    let name = args.name.clone().unwrap_or_else(hostname);
    check_name(&name).map_err(CliError::usage)?;
    let profile = Profile::preset(&args.profile)
        .ok_or_else(|| CliError::usage(format!("unknown --profile `{}`", args.profile)))?;
    let monitor = match args.status_interval {
        Some(interval) if interval < Duration::from_millis(100) => {
            return Err(CliError::usage("--status-interval must be at least 100ms"))
        }
        Some(interval) => MonitorConfig::every(interval),
        None => profile.monitor,
    };
    let api = ApiSettings {
        addr: resolve("--http", http)?,
        max_body_bytes: DEFAULT_MAX_BODY,
        metrics: args.metrics.as_deref().map(|m| resolve("--metrics", m)).transpose()?,
    };
    let config = NodeConfig {
        name,
        cluster: args.cluster.clone(),
        tags: args.tags.iter().cloned().collect::<BTreeMap<_, _>>(),
        data_dir: args.data_dir.clone(),
        transponder: profile.transponder,
        deployer: DeployerConfig {
            max_package_bytes: args.max_package,
            max_uploads: usize::from(args.max_uploads),
            package_dirs: args.package_dirs.clone(),
            trust: std::sync::Arc::new(
                crate::command::trust::Trust::load(&args.trust_operators, &args.data_dir).map_err(CliError::usage)?,
            ),
            ..profile.deployer
        },
        monitor,
        network: Some(NetworkConfig {
            bind: resolve("--bind", &args.bind)?,
            advertise: args.advertise.as_deref().map(parse_advertise).transpose()?,
            join: args.join.clone(),
            mdns: !args.no_mdns,
            key_file: args.key_file.clone(),
            key_env: std::env::var("CONJOINER_KEY").ok(),
            timing: profile.cluster,
            memory: None,
        }),
    };
    logging::init(args.log_format);
    limit_malloc_arenas();
    let system = actix_rt::System::new();
    let result = system.block_on(run_node(config, api));
    match result {
        Ok(()) => Ok(EXIT_OK),
        Err(e) => {
            error!(error = %format!("{e:#}"), "node failed");
            Err(CliError::error(format!("{e:#}")))
        }
    }
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
async fn run_node(config: NodeConfig, api: ApiSettings) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let data_dir = config.data_dir.clone();
    let node = Node::start(config).await?;
    let span = node.handle.ctx.identity.span("node");
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
    fn names() {
        assert!(check_name("web-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("web 1").is_err());
        assert!(check_name("web*").is_err());
        assert!(check_name(&hostname()).is_ok(), "the default name is valid");
        assert_eq!(parse_advertise("10.0.0.5").unwrap(), "10.0.0.5:0".parse().unwrap());
        assert_eq!(parse_advertise("10.0.0.5:80").unwrap(), "10.0.0.5:80".parse().unwrap());
        assert!(parse_advertise("nope").is_err());
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
    }
}
