//! The agent's effective settings: the command line laid over the config
//! file, laid over the preset that `profile` picks. One function resolves
//! them and checks every value, naming the key at fault; the same
//! settings print back as a config file (`agent --check`), and a reload
//! compares two of them key by key.

use super::file::{AgentFile, OperatorEntry, OperatorScope, ProfileName};
use super::knobs::{check_cluster, check_deployer, ClusterKnobs, DeployerKnobs, MonitorKnobs, TransponderKnobs};
use super::units::{format_duration, format_size};
use crate::actors::monitor::MonitorConfig;
use crate::logging::LogFormat;
use crate::node::Profile;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use toml::Value;

/// The control API's address when none is given.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7373";
/// The cluster listener's address when none is given.
pub const DEFAULT_BIND: &str = "0.0.0.0:7946";
/// The data dir when none is given.
pub const DEFAULT_DATA_DIR: &str = "./conjoiner-data";
/// The cluster's name when none is given.
pub const DEFAULT_CLUSTER: &str = "conjoiner";

/// A setting that is not acceptable: its key (as the file names it) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: String,
    pub message: String,
}

impl SettingError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> SettingError {
        SettingError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every setting of a node, resolved and checked.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub name: String,
    pub cluster: String,
    pub tags: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub bind: String,
    /// `bind`, resolved once (a host name is looked up here only).
    pub bind_addr: SocketAddr,
    pub advertise: Option<String>,
    /// `advertise` read: an IP alone has port 0, the bound port.
    pub advertise_addr: Option<SocketAddr>,
    pub join: Vec<String>,
    pub mdns: bool,
    pub key_file: Option<PathBuf>,
    pub http: String,
    pub http_addr: SocketAddr,
    pub metrics: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub max_package: u64,
    pub max_uploads: u16,
    pub package_dirs: Vec<PathBuf>,
    /// As `--trust-operator` takes them.
    pub operators: Vec<String>,
    /// Every peer's hello must show an admission by a trusted operator key.
    pub require_admission: bool,
    /// An admission to keep as this node's own at start.
    pub join_token: Option<PathBuf>,
    pub profile_name: ProfileName,
    /// The preset with the file's and the flags' tunings laid over it.
    pub profile: Profile,
    pub log_format: LogFormat,
    /// The log filter: `RUST_LOG` when set, else `log_level`, else `info`.
    pub log_level: String,
}

/// The keys a running node takes on reload (SIGHUP); any other change
/// waits for the next start.
pub const RELOADABLE: [&str; 3] = ["tags", "log_level", "operators"];

impl AgentSettings {
    /// Resolves `given` (the layers already laid over each other), with
    /// `rust_log` the environment's `RUST_LOG`.
    pub fn resolve(given: &AgentFile, rust_log: Option<&str>) -> Result<AgentSettings, SettingError> {
        let name = given.name.clone().unwrap_or_else(default_name);
        crate::cluster::identity::check_name(&name).map_err(|e| SettingError::new("name", e))?;
        let cluster = given.cluster.clone().unwrap_or_else(|| DEFAULT_CLUSTER.into());
        if cluster.is_empty() {
            return Err(SettingError::new("cluster", "must not be empty"));
        }
        let tags = given.tags.clone().unwrap_or_default();
        for (k, v) in &tags {
            crate::tags::parse_tag(&format!("{k}={v}")).map_err(|e| SettingError::new("tags", e))?;
        }
        if tags.len() > crate::tags::MAX_TAGS {
            return Err(SettingError::new(
                "tags",
                format!("a node carries at most {} tags", crate::tags::MAX_TAGS),
            ));
        }
        let bind = given.bind.clone().unwrap_or_else(|| DEFAULT_BIND.into());
        let bind_addr = check_address("bind", &bind)?;
        let advertise_addr = given
            .advertise
            .as_deref()
            .map(parse_advertise)
            .transpose()
            .map_err(|e| SettingError::new("advertise", e))?;
        let http = given.http.clone().unwrap_or_else(|| DEFAULT_HTTP.into());
        let http_addr = check_address("http", &http)?;
        let metrics_addr = given
            .metrics
            .as_deref()
            .map(|m| check_address("metrics", m))
            .transpose()?;
        let max_uploads = given
            .max_uploads
            .unwrap_or(crate::deploy::uploads::DEFAULT_MAX_UPLOADS as u16);
        if !(1..=64).contains(&max_uploads) {
            return Err(SettingError::new("max_uploads", "must be from 1 to 64"));
        }
        let operators: Vec<String> = given.operators.iter().flatten().map(OperatorEntry::as_flag).collect();
        for op in operators.iter().filter(|op| !op.starts_with('@')) {
            crate::command::trust::TrustedKey::parse(op).map_err(|e| SettingError::new("operators", e))?;
        }

        let require_admission = given.require_admission.unwrap_or(false);
        let profile_name = given.profile.unwrap_or(ProfileName::Lan);
        let mut profile = Profile::preset(profile_name.as_str()).expect("every profile name has a preset");
        given.membership.apply(&mut profile.cluster);
        check_cluster(&profile.cluster).map_err(|(k, e)| SettingError::new(k, e))?;
        if let Some(interval) = given.status_interval {
            if interval.0 < Duration::from_millis(100) {
                return Err(SettingError::new("status_interval", "must be at least 100ms"));
            }
            profile.monitor = MonitorConfig::every(interval.0);
        }
        given.monitor.apply(&mut profile.monitor);
        if profile.monitor.timeout >= profile.monitor.interval {
            return Err(SettingError::new(
                "monitor.timeout",
                format!(
                    "must be below status_interval ({})",
                    format_duration(profile.monitor.interval)
                ),
            ));
        }
        given.deployer.apply(&mut profile.deployer);
        profile.deployer.max_package_bytes = given.max_package.map_or(profile.deployer.max_package_bytes, |s| s.0);
        profile.deployer.max_uploads = usize::from(max_uploads);
        profile.deployer.package_dirs = given.package_dirs.iter().flatten().cloned().map(absolute).collect();
        check_deployer(&profile.deployer).map_err(|(k, e)| SettingError::new(k, e))?;
        given.transponder.apply(&mut profile.transponder);
        if profile.transponder.dedup_capacity == 0 {
            return Err(SettingError::new("transponder.dedup_capacity", "must be at least 1"));
        }

        let log_level = match rust_log.map(str::trim).filter(|l| !l.is_empty()) {
            Some(env) => env.to_string(),
            None => given.log_level.clone().unwrap_or_else(|| "info".into()),
        };
        crate::logging::parse_filter(&log_level).map_err(|e| SettingError::new("log_level", e))?;

        Ok(AgentSettings {
            name,
            cluster,
            tags,
            data_dir: absolute(given.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into())),
            bind,
            bind_addr,
            advertise: given.advertise.clone(),
            advertise_addr,
            join: given.join.clone().unwrap_or_default(),
            mdns: given.mdns.unwrap_or(true),
            key_file: given.key_file.clone().map(absolute),
            http,
            http_addr,
            metrics: given.metrics.clone(),
            metrics_addr,
            max_package: profile.deployer.max_package_bytes,
            max_uploads,
            package_dirs: profile.deployer.package_dirs.clone(),
            operators,
            require_admission,
            join_token: given.join_token.clone().map(absolute),
            profile_name,
            profile,
            log_format: given.log_format.unwrap_or(LogFormat::Text),
            log_level,
        })
    }

    /// The settings as a config file that gives every key: it reads back
    /// as the same settings.
    pub fn to_table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        let text = |s: &str| Value::String(s.to_string());
        let path = |p: &PathBuf| Value::String(p.display().to_string());
        let list = |items: Vec<Value>| Value::Array(items);
        t.insert("name".into(), text(&self.name));
        t.insert("cluster".into(), text(&self.cluster));
        t.insert(
            "tags".into(),
            Value::Table(self.tags.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
        );
        t.insert("data_dir".into(), path(&self.data_dir));
        t.insert("bind".into(), text(&self.bind));
        if let Some(a) = &self.advertise {
            t.insert("advertise".into(), text(a));
        }
        t.insert("join".into(), list(self.join.iter().map(|j| text(j)).collect()));
        t.insert("mdns".into(), Value::Boolean(self.mdns));
        if let Some(k) = &self.key_file {
            t.insert("key_file".into(), path(k));
        }
        t.insert("http".into(), text(&self.http));
        if let Some(m) = &self.metrics {
            t.insert("metrics".into(), text(m));
        }
        t.insert("max_package".into(), text(&format_size(self.max_package)));
        t.insert("max_uploads".into(), Value::Integer(i64::from(self.max_uploads)));
        t.insert(
            "package_dirs".into(),
            list(self.package_dirs.iter().map(path).collect()),
        );
        t.insert(
            "operators".into(),
            list(self.operators.iter().map(|o| operator_value(o)).collect()),
        );
        t.insert("require_admission".into(), Value::Boolean(self.require_admission));
        if let Some(token) = &self.join_token {
            t.insert("join_token".into(), path(token));
        }
        t.insert("profile".into(), text(self.profile_name.as_str()));
        t.insert(
            "status_interval".into(),
            text(&format_duration(self.profile.monitor.interval)),
        );
        let format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        t.insert("log_format".into(), text(format));
        t.insert("log_level".into(), text(&self.log_level));
        t.insert(
            "membership".into(),
            Value::Table(ClusterKnobs::show(&self.profile.cluster)),
        );
        t.insert(
            "deployer".into(),
            Value::Table(DeployerKnobs::show(&self.profile.deployer)),
        );
        t.insert(
            "monitor".into(),
            Value::Table(MonitorKnobs::show(&self.profile.monitor)),
        );
        t.insert(
            "transponder".into(),
            Value::Table(TransponderKnobs::show(&self.profile.transponder)),
        );
        t
    }

    /// [`AgentSettings::to_table`] as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_table()).unwrap_or_default()
    }

    /// Every key, `section.key` for the sections, with its value.
    pub fn flat(&self) -> BTreeMap<String, Value> {
        let mut flat = BTreeMap::new();
        for (key, value) in self.to_table() {
            match value {
                Value::Table(section) if key != "tags" => {
                    for (k, v) in section {
                        flat.insert(format!("{key}.{k}"), v);
                    }
                }
                value => {
                    flat.insert(key, value);
                }
            }
        }
        flat
    }

    /// The keys whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &AgentSettings) -> Vec<String> {
        let (a, b) = (self.flat(), other.flat());
        let keys: std::collections::BTreeSet<&String> =
            a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
        keys.into_iter().cloned().collect()
    }
}

/// What a reload does: the keys it takes on, and the keys it refuses
/// (they wait for the next start).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reload {
    pub taken: Vec<String>,
    pub refused: Vec<String>,
}

impl AgentSettings {
    /// The settings a running node moves to when it reloads and finds
    /// `wanted`: the keys of [`RELOADABLE`] are taken from it, every other
    /// change is refused.
    pub fn reload(&self, wanted: &AgentSettings) -> (AgentSettings, Reload) {
        let mut outcome = Reload::default();
        for key in self.changed_keys(wanted) {
            if RELOADABLE.contains(&key.as_str()) {
                outcome.taken.push(key);
            } else {
                outcome.refused.push(key);
            }
        }
        let next = AgentSettings {
            tags: wanted.tags.clone(),
            log_level: wanted.log_level.clone(),
            operators: wanted.operators.clone(),
            ..self.clone()
        };
        (next, outcome)
    }
}

/// A path from the working directory (a flag's), made whole so that the
/// settings mean the same printed or read from anywhere.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

fn check_address(key: &str, addr: &str) -> Result<SocketAddr, SettingError> {
    addr.to_socket_addrs()
        .map_err(|e| SettingError::new(key, format!("`{addr}` is not an address: {e}")))?
        .next()
        .ok_or_else(|| SettingError::new(key, format!("`{addr}` resolves to nothing")))
}

/// `advertise` is `IP` (the bound port is used) or `IP:PORT`.
pub fn parse_advertise(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 0));
    }
    text.parse().map_err(|_| format!("`{text}` must be IP or IP:PORT"))
}

/// The default node name: the short host name, with anything a node name
/// may not hold replaced.
pub fn default_name() -> String {
    let Some(name) = crate::node::system_hostname() else {
        return "conjoiner".into();
    };
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

/// A trusted key as the file writes it: a scope (held as the JSON that
/// `--trust-operator` takes) as a TOML table, anything else as its text.
fn operator_value(flag: &str) -> Value {
    serde_json::from_str::<OperatorScope>(flag)
        .ok()
        .and_then(|scope| Value::try_from(scope).ok())
        .unwrap_or_else(|| Value::String(flag.to_string()))
}

#[cfg(test)]
mod tests;
