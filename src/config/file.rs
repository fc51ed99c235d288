//! The config file (`agent --config FILE`): one TOML table whose keys are
//! the agent's flags, and four tuning sections. The same schema carries
//! the flags given on the command line, so that flags, file and presets
//! are laid over each other as one kind of thing (see `settings`).

use super::knobs::{ClusterKnobs, DeployerKnobs, MonitorKnobs, TransponderKnobs};
use super::units::{Dur, Size};
use crate::logging::LogFormat;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every agent setting, each optional: what one layer (the command line,
/// or the file) gives.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub name: Option<String>,
    pub cluster: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub advertise: Option<String>,
    pub join: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub key_file: Option<PathBuf>,
    pub http: Option<String>,
    pub metrics: Option<String>,
    pub max_package: Option<Size>,
    pub max_uploads: Option<u16>,
    pub package_dirs: Option<Vec<PathBuf>>,
    pub operators: Option<Vec<OperatorEntry>>,
    pub require_admission: Option<bool>,
    pub join_token: Option<PathBuf>,
    pub profile: Option<ProfileName>,
    pub status_interval: Option<Dur>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub membership: ClusterKnobs,
    #[serde(default)]
    pub deployer: DeployerKnobs,
    #[serde(default)]
    pub monitor: MonitorKnobs,
    #[serde(default)]
    pub transponder: TransponderKnobs,
}

/// A trusted operator key as the file writes it: the text that
/// `--trust-operator` takes (`cjop1…`, `@FILE`, a JSON scope), or a scope
/// as a TOML table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OperatorEntry {
    Text(String),
    Scope(OperatorScope),
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorScope {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl OperatorEntry {
    /// The entry as `--trust-operator` takes it.
    pub fn as_flag(&self) -> String {
        match self {
            OperatorEntry::Text(text) => text.clone(),
            OperatorEntry::Scope(scope) => serde_json::to_string(scope).unwrap_or_default(),
        }
    }
}

/// The presets (`profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileName {
    Lan,
    Wan,
    Local,
}

impl ProfileName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Lan => "lan",
            ProfileName::Wan => "wan",
            ProfileName::Local => "local",
        }
    }

    pub fn parse(text: &str) -> Option<ProfileName> {
        match text {
            "lan" => Some(ProfileName::Lan),
            "wan" => Some(ProfileName::Wan),
            "local" => Some(ProfileName::Local),
            _ => None,
        }
    }
}

impl AgentFile {
    /// This layer laid over `lower`: each setting this one gives wins;
    /// tags are merged key by key; a section's keys one by one.
    pub fn over(self, lower: AgentFile) -> AgentFile {
        let tags = match (lower.tags, self.tags) {
            (Some(mut under), Some(over)) => {
                under.extend(over);
                Some(under)
            }
            (under, over) => over.or(under),
        };
        AgentFile {
            name: self.name.or(lower.name),
            cluster: self.cluster.or(lower.cluster),
            tags,
            data_dir: self.data_dir.or(lower.data_dir),
            bind: self.bind.or(lower.bind),
            advertise: self.advertise.or(lower.advertise),
            join: self.join.or(lower.join),
            mdns: self.mdns.or(lower.mdns),
            key_file: self.key_file.or(lower.key_file),
            http: self.http.or(lower.http),
            metrics: self.metrics.or(lower.metrics),
            max_package: self.max_package.or(lower.max_package),
            max_uploads: self.max_uploads.or(lower.max_uploads),
            package_dirs: self.package_dirs.or(lower.package_dirs),
            operators: self.operators.or(lower.operators),
            require_admission: self.require_admission.or(lower.require_admission),
            join_token: self.join_token.or(lower.join_token),
            profile: self.profile.or(lower.profile),
            status_interval: self.status_interval.or(lower.status_interval),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
            membership: self.membership.or(lower.membership),
            deployer: self.deployer.or(lower.deployer),
            monitor: self.monitor.or(lower.monitor),
            transponder: self.transponder.or(lower.transponder),
        }
    }

    /// Whether this layer gives `key` (a top-level key, or `section.key`).
    pub fn gives(&self, key: &str) -> bool {
        match key {
            "name" => self.name.is_some(),
            "cluster" => self.cluster.is_some(),
            "tags" => self.tags.is_some(),
            "data_dir" => self.data_dir.is_some(),
            "bind" => self.bind.is_some(),
            "advertise" => self.advertise.is_some(),
            "join" => self.join.is_some(),
            "mdns" => self.mdns.is_some(),
            "key_file" => self.key_file.is_some(),
            "http" => self.http.is_some(),
            "metrics" => self.metrics.is_some(),
            "max_package" => self.max_package.is_some(),
            "max_uploads" => self.max_uploads.is_some(),
            "package_dirs" => self.package_dirs.is_some(),
            "operators" => self.operators.is_some(),
            "require_admission" => self.require_admission.is_some(),
            "join_token" => self.join_token.is_some(),
            "profile" => self.profile.is_some(),
            "status_interval" => self.status_interval.is_some(),
            "log_format" => self.log_format.is_some(),
            "log_level" => self.log_level.is_some(),
            // The sections have no flags; a layer gives them only from a file.
            _ => false,
        }
    }

    /// Makes the relative paths the file names relative to the file's own
    /// folder, so that a service reads the same file as a shell does.
    fn rebase(&mut self, dir: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        self.data_dir.as_mut().map(at);
        self.key_file.as_mut().map(at);
        self.join_token.as_mut().map(at);
        for p in self.package_dirs.iter_mut().flatten() {
            at(p);
        }
        for entry in self.operators.iter_mut().flatten() {
            if let OperatorEntry::Text(text) = entry {
                if let Some(file) = text.strip_prefix('@').filter(|f| Path::new(f).is_relative()) {
                    *text = format!("@{}", dir.join(file).display());
                }
            }
        }
    }
}

/// A config file that was read: its path and text (to point at a line),
/// and what it gives.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
    pub values: AgentFile,
}

impl ConfigFile {
    /// Reads and parses `path`. Errors name the file, the line and the key.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ConfigFile::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<ConfigFile, String> {
        let mut values: AgentFile = toml::from_str(&text).map_err(|e| {
            let place = e.span().map(|span| place_of(&text, span.start));
            match place {
                Some((line, Some(key))) => format!("{}:{line}: `{key}`: {}", path.display(), e.message()),
                Some((line, None)) => format!("{}:{line}: {}", path.display(), e.message()),
                None => format!("{}: {}", path.display(), e.message()),
            }
        })?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        values.rebase(dir);
        Ok(ConfigFile {
            path: path.to_path_buf(),
            text,
            values,
        })
    }

    /// Names a key of this file for an error: `FILE:LINE: `key``, or
    /// without the line when the key is not written in the file.
    pub fn name_key(&self, key: &str) -> String {
        match line_of(&self.text, key) {
            Some(line) => format!("{}:{line}: `{key}`", self.path.display()),
            None => format!("{}: `{key}`", self.path.display()),
        }
    }
}

/// The line of byte `at` in `text`, and the key written there (with its
/// section: `membership.probe_interval`).
fn place_of(text: &str, at: usize) -> (usize, Option<String>) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = before[..line_start]
        .lines()
        .rev()
        .find_map(section_header)
        .map(|s| format!("{s}."))
        .unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['))
        .map(|k| format!("{section}{k}"))
        .or_else(|| section_header(line).map(str::to_string));
    (line_no, key)
}

/// The line where `key` (`name`, or `membership.probe_interval`) is written.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (section, name) = match key.split_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, key),
    };
    let mut current: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(header) = section_header(line) {
            current = Some(header);
            continue;
        }
        let written = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"'));
        if current == section && written == Some(name) {
            return Some(i + 1);
        }
    }
    None
}

/// `membership` for a line `[membership]`.
fn section_header(line: &str) -> Option<&str> {
    let line = line.trim();
    line.strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .filter(|l| !l.starts_with('['))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(Path::new("/etc/conjoiner/conjoiner.toml"), text.to_string())
    }

    #[test]
    fn a_file_gives_every_flag_by_its_name_and_relative_paths_are_the_files() {
        let file = parse(
            r#"
name = "web-1"
cluster = "prod"
tags = { role = "web", dc = "ams" }
join = ["10.0.0.1:7946"]
mdns = false
data_dir = "state"
key_file = "/etc/conjoiner/cluster.key"
operators = ["@alice.pub", { key = "cjop1abc", modules = ["web-*"] }]
max_package = "128M"
profile = "wan"
status_interval = "30s"

[membership]
probe_interval = "1s"
"#,
        )
        .unwrap();
        let v = &file.values;
        assert_eq!(v.name.as_deref(), Some("web-1"));
        assert_eq!(v.tags.as_ref().unwrap()["dc"], "ams");
        assert_eq!(v.mdns, Some(false));
        assert_eq!(v.data_dir.as_deref(), Some(Path::new("/etc/conjoiner/state")));
        assert_eq!(v.key_file.as_deref(), Some(Path::new("/etc/conjoiner/cluster.key")));
        let ops: Vec<String> = v.operators.iter().flatten().map(OperatorEntry::as_flag).collect();
        assert_eq!(
            ops,
            ["@/etc/conjoiner/alice.pub", r#"{"key":"cjop1abc","modules":["web-*"]}"#]
        );
        assert_eq!(v.max_package, Some(Size(128 << 20)));
        assert_eq!(v.profile, Some(ProfileName::Wan));
        assert!(v.membership.probe_interval.is_some());
    }

    #[test]
    fn an_unknown_key_or_a_wrong_type_names_the_file_the_line_and_the_key() {
        let cases = [
            ("name = \"a\"\nnmae = \"b\"\n", ":2: `nmae`: unknown field `nmae`"),
            (
                "mdns = \"yes\"\n",
                ":1: `mdns`: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "name = \"a\"\n\n[membership]\nprobe_interval = \"fast\"\n",
                ":4: `membership.probe_interval`: `fast` is not a duration",
            ),
            (
                "[membership]\nprobe_intervall = \"1s\"\n",
                ":2: `membership.probe_intervall`: unknown field `probe_intervall`",
            ),
            ("profile = \"moon\"\n", ":1: `profile`: unknown variant `moon`"),
            ("max_uploads = 100000\n", ":1: `max_uploads`:"),
            ("[moon]\nx = 1\n", ":1: `moon`: unknown field `moon`"),
            ("name = \n", ":1:"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with("/etc/conjoiner/conjoiner.toml:"), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_upper_layer_wins_key_by_key() {
        let file = parse("cluster = \"prod\"\ntags = { role = \"web\", dc = \"ams\" }\n[membership]\nprobe_interval = \"1s\"\nsuspicion_max = \"9s\"\n")
            .unwrap()
            .values;
        let flags = AgentFile {
            cluster: Some("test".into()),
            tags: Some([("dc".to_string(), "fra".to_string())].into()),
            membership: ClusterKnobs {
                suspicion_max: Some(Dur(std::time::Duration::from_secs(3))),
                ..Default::default()
            },
            ..Default::default()
        };
        let merged = flags.over(file);
        assert_eq!(merged.cluster.as_deref(), Some("test"));
        let tags = merged.tags.unwrap();
        assert_eq!((tags["role"].as_str(), tags["dc"].as_str()), ("web", "fra"));
        assert_eq!(
            merged.membership.probe_interval,
            Some(Dur(std::time::Duration::from_secs(1)))
        );
        assert_eq!(
            merged.membership.suspicion_max,
            Some(Dur(std::time::Duration::from_secs(3)))
        );
    }

    #[test]
    fn a_key_is_found_by_its_section_for_later_errors() {
        let file = parse("name = \"a\"\n[membership]\nmax_links = 3\n").unwrap();
        assert_eq!(
            file.name_key("membership.max_links"),
            "/etc/conjoiner/conjoiner.toml:3: `membership.max_links`"
        );
        assert_eq!(file.name_key("bind"), "/etc/conjoiner/conjoiner.toml: `bind`");
    }
}
