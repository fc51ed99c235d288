//! The deployments table: what every node should run, replicated on every
//! node (the cluster core carries it as a keyed dataset; this file says what
//! its entries mean).
//!
//! Every `deploy` and `undeploy` is an entry, under its own id, with a
//! version `(clock, origin)`. A node decides each module on its own: among
//! the entries for that module whose target matches it and that are in
//! force for it (a rollout releases an entry to a growing share of nodes),
//! the one with the highest version wins. A `deploy` winner means "run this
//! exact package and config"; an `undeploy` winner, or no entry at all for a
//! module the table once installed here, means "remove it". Modules the
//! table never named are left alone.
//!
//! Pure: parsing, the rules a node holds entries by, and the winners.

use super::manifest::check_module_name;
use super::order::OrderSource;
use super::package::parse_sha256;
use super::steer::{Driver, Steer};
use crate::cluster::core::hash::{combine, fnv1a, mix};
use crate::cluster::core::keyed::{EntryRules, KeyedSet, Refused};
use crate::cluster::protocol::{Entry, Version};
use crate::command::signature::OperatorSignature;
use crate::modules::registry::CORE_MODULES;
use crate::wire::Target;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest entry body held: a deploy's config travels inside it.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// A version more than this far ahead of this node's clock is refused: it
/// would win over every later deploy until the clocks caught up.
pub const MAX_CLOCK_AHEAD_MS: u64 = 24 * 3600 * 1000;
/// How long the newest undeploy of a module and target is kept, so a node
/// that was away learns of it when it returns.
pub const KEEP_UNDEPLOYS_MS: u64 = 30 * 24 * 3600 * 1000;

/// What an entry asks of the nodes it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Deploy,
    Undeploy,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Undeploy => "undeploy",
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Released to `released` of the nodes, waiting out the health window
    /// before the next wave.
    Rolling,
    /// Held where it is; `resume` goes on.
    Paused,
    /// Released to every targeted node.
    Done,
    /// Taken back: every node runs the entry it ran before.
    Reverted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Rolling => "rolling",
            RolloutState::Paused => "paused",
            RolloutState::Done => "done",
            RolloutState::Reverted => "reverted",
        }
    }
}

/// A number of nodes, or a share of the targeted ones (`3` or `25%`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    Nodes(u32),
    Percent(f64),
}

impl Amount {
    /// Reads `3` or `25%`.
    pub fn parse(text: &str) -> Result<Amount, String> {
        let bad = || format!("`{text}` is not a number of nodes (3) or a percentage (25%)");
        match text.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&p) || !p.is_finite() {
                    return Err(format!("`{text}`: a percentage is between 0% and 100%"));
                }
                Ok(Amount::Percent(p))
            }
            None => text.trim().parse().map(Amount::Nodes).map_err(|_| bad()),
        }
    }

    /// This many of `total` nodes (a share rounded up, so 1% of 10 is 1).
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Nodes(n) => (n as usize).min(total),
            Amount::Percent(p) => ((p / 100.0 * total as f64).ceil() as usize).min(total),
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Nodes(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How a rollout proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// The first wave.
    pub canary: Amount,
    /// Each later wave.
    pub batch: Amount,
    /// How long released nodes must stay healthy before the next wave.
    pub health_window_ms: u64,
    /// How many released nodes may fail before the rollout is reverted
    /// (or paused, without revert).
    pub max_failed: Amount,
    /// Whether too many failures revert the rollout (else they pause it).
    pub revert: bool,
}

/// A deploy released in waves: the share of the targeted nodes it is in
/// force for, where it stands, and how it goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// From 0 to 1: a node runs the entry when its place (see
    /// [`placement`]) is below this.
    pub released: f64,
    pub state: RolloutState,
    pub policy: RolloutPolicy,
    /// When the current wave was released (ms since the epoch).
    pub wave_at_ms: u64,
    /// The wave number, from 1 (the canary).
    pub wave: u32,
    /// Why it was paused or reverted, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The newest operator command that steered it (pause, resume or
    /// revert), with its signature: it names the node that drives the
    /// rollout from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steer: Option<Steer>,
    /// The driving node's signature over this progress and the version it
    /// is written under (see `deploy::progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// One entry's body: what the origin asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub module: String,
    /// The selector of the nodes it is for; none means every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub action: Action,
    /// Where a node fetches the package (deploys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<OrderSource>,
    /// The package's checksum (deploys only): what runs is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Merged over the manifest's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// When the origin wrote the first version (ms since the epoch).
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The node that drives its rollout (signed with the command when the
    /// deploy is a signed rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// The operator's signature over the command's fields (see
    /// `deploy::command`): kept in the entry, so a node that converges
    /// later checks it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<OperatorSignature>,
}

impl Deployment {
    /// The body as the table carries it.
    pub fn to_body(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// Whether no rollout is under way: the entry is in force for every
    /// node it targets, so older entries of its module and target are not
    /// needed any more.
    pub fn settled(&self) -> bool {
        self.rollout.as_ref().is_none_or(|r| r.state == RolloutState::Done)
    }
}

/// A table entry, read: its id, version and body, and its target parsed.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: Arc<str>,
    pub version: Version,
    pub deployment: Deployment,
    target: Option<Target>,
}

impl Row {
    /// Reads a table entry, checking every field a node acts on.
    pub fn read(entry: &Entry) -> Result<Row, String> {
        check_id(&entry.key)?;
        if entry.body.len() > MAX_ENTRY_BYTES {
            return Err(format!(
                "the entry is {} bytes, over the limit of {MAX_ENTRY_BYTES}",
                entry.body.len()
            ));
        }
        let deployment: Deployment =
            serde_json::from_slice(&entry.body).map_err(|e| format!("the entry is malformed: {e}"))?;
        check_module_name(&deployment.module)?;
        if CORE_MODULES.contains(&deployment.module.as_str()) {
            return Err(format!("`{}` is a core module of every node", deployment.module));
        }
        let target = deployment
            .target
            .as_deref()
            .map(Target::parse)
            .transpose()
            .map_err(|e| format!("the target does not parse: {e}"))?;
        if deployment.action == Action::Deploy {
            let sha = deployment.sha256.as_deref().ok_or("a deploy entry needs a sha256")?;
            parse_sha256(sha)?;
            let source = deployment.source.as_ref().ok_or("a deploy entry needs a source")?;
            if source.url.is_none() && source.peer.is_none() {
                return Err("a deploy entry's source names neither a url nor a peer".into());
            }
            if deployment.config.as_ref().is_some_and(|c| !c.is_object()) {
                return Err("a deploy entry's config must be a JSON object".into());
            }
        }
        if let Some(r) = &deployment.rollout {
            if !(0.0..=1.0).contains(&r.released) || !r.released.is_finite() {
                return Err(format!(
                    "a rollout's `released` must be from 0 to 1, not {}",
                    r.released
                ));
            }
        }
        Ok(Row {
            id: entry.key.clone(),
            version: entry.version.clone(),
            deployment,
            target,
        })
    }

    pub fn module(&self) -> &str {
        &self.deployment.module
    }

    /// How entries of one module are ordered: by the time the command was
    /// given (`ts`, which an operator signs), then by version. The version
    /// alone would not do: it is not signed, so a host could write an old
    /// signed entry again under a new version to undo a newer one.
    pub fn rank(&self) -> (u64, &Version) {
        (self.deployment.ts, &self.version)
    }

    pub fn action(&self) -> Action {
        self.deployment.action
    }

    /// Whether its target selects the node `name` with `tags`.
    pub fn targets(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        self.target.as_ref().is_none_or(|t| t.matches(name, tags))
    }

    /// Whether it is in force for node `name`: it targets it, and a
    /// rollout has released it there (a reverted one is in force nowhere).
    pub fn in_force_for(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        self.targets(name, tags)
            && match &self.deployment.rollout {
                None => true,
                Some(r) => match r.state {
                    RolloutState::Reverted => false,
                    RolloutState::Done => true,
                    RolloutState::Rolling | RolloutState::Paused => placement(name, &self.id) < r.released,
                },
            }
    }

    /// Whether `self` makes `older` pointless: the same module and target,
    /// newer, and settled.
    fn supersedes(&self, older: &Row) -> bool {
        self.module() == older.module()
            && self.deployment.target == older.deployment.target
            && self.rank() > older.rank()
            && self.deployment.settled()
    }
}

/// An entry id: what `deploy` makes (a UUID), or any short word of
/// letters, digits, `-` and `_`.
fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an entry id (1 to 64 letters, digits, - or _)",
            id.chars().take(80).collect::<String>()
        ))
    }
}

/// Where node `name` stands in the rollout of entry `id`: a number in
/// [0, 1) that every node computes alike, so which nodes form a wave needs
/// no list and no agreement.
pub fn placement(name: &str, id: &str) -> f64 {
    let h = combine(mix(fnv1a(name.as_bytes())), mix(fnv1a(id.as_bytes())));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Every entry of the table that reads, with the ones that do not.
pub fn read_all<'a>(entries: impl IntoIterator<Item = &'a Arc<Entry>>) -> (Vec<Row>, Vec<(Arc<str>, String)>) {
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for e in entries {
        match Row::read(e) {
            Ok(row) => rows.push(row),
            Err(why) => bad.push((e.key.clone(), why)),
        }
    }
    (rows, bad)
}

/// For node `name` with `tags`: the winning entry of every module that some
/// entry in force here names (an undeploy winner included).
pub fn winners<'a>(rows: &'a [Row], name: &str, tags: &BTreeMap<String, String>) -> BTreeMap<&'a str, &'a Row> {
    let mut won: BTreeMap<&str, &Row> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.in_force_for(name, tags)) {
        let better = won.get(row.module()).is_none_or(|held| row.rank() > held.rank());
        if better {
            won.insert(row.module(), row);
        }
    }
    won
}

/// The rules by which a node holds deployments-table entries. Entries it
/// has read are kept read (by key and version), so checking an entry
/// against a table of a thousand does not parse a thousand bodies.
#[derive(Default)]
pub struct DeploymentRules {
    read: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<Row>>>,
    admit: Option<Admit>,
}

/// A further check an entry passes before the table holds it (the node's
/// operator keys: see `deploy::command::admit_entry`).
/// It sees the entry and the version of it held now, if any.
pub type Admit = Box<dyn Fn(&Row, Option<&Row>) -> Result<(), String> + Send + Sync>;

impl DeploymentRules {
    /// Rules that also hold an entry only if `admit` takes it.
    pub fn admitting(admit: Admit) -> DeploymentRules {
        DeploymentRules {
            admit: Some(admit),
            ..DeploymentRules::default()
        }
    }

    /// Every held entry, read (entries that do not read are left out:
    /// they were checked when taken).
    fn rows(&self, held: &KeyedSet) -> Vec<Arc<Row>> {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.retain(|key, row| held.get(key).is_some_and(|e| e.version == row.version));
        held.iter()
            .filter_map(|e| match read.get(&e.key) {
                Some(row) => Some(row.clone()),
                None => {
                    let row = Arc::new(Row::read(e).ok()?);
                    read.insert(e.key.clone(), row.clone());
                    Some(row)
                }
            })
            .collect()
    }
}

impl EntryRules for DeploymentRules {
    fn check(&self, entry: &Entry, held: &KeyedSet, now_ms: u64) -> Result<(), Refused> {
        let row = Row::read(entry).map_err(Refused::Invalid)?;
        let rows = self.rows(held);
        if let Some(admit) = &self.admit {
            let held_row = rows.iter().find(|r| r.id == entry.key);
            admit(&row, held_row.map(|r| &**r)).map_err(Refused::Invalid)?;
        }
        if entry.version.clock > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Err(Refused::Invalid(format!(
                "its version {} is more than a day ahead of this node's clock ({now_ms}); is a clock wrong?",
                entry.version.clock
            )));
        }
        if row.deployment.ts > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Err(Refused::Invalid(format!(
                "its time {} is more than a day ahead of this node's clock ({now_ms}); is a clock wrong?",
                row.deployment.ts
            )));
        }
        let superseded = rows.iter().any(|newer| newer.id != row.id && newer.supersedes(&row));
        if superseded {
            return Err(Refused::Obsolete);
        }
        Ok(())
    }

    fn obsolete(&self, held: &KeyedSet, now_ms: u64) -> Vec<Arc<str>> {
        let rows = self.rows(held);
        // The newest settled entry of each module and target.
        let mut newest: std::collections::HashMap<(&str, Option<&str>), (u64, &Version)> = Default::default();
        for row in rows.iter().filter(|r| r.deployment.settled()) {
            let key = (row.module(), row.deployment.target.as_deref());
            let v = newest.entry(key).or_insert(row.rank());
            if row.rank() > *v {
                *v = row.rank();
            }
        }
        rows.iter()
            .filter(|row| {
                let key = (row.module(), row.deployment.target.as_deref());
                let superseded = newest.get(&key).is_some_and(|v| *v > row.rank());
                let expired = row.action() == Action::Undeploy
                    && row.deployment.settled()
                    && now_ms.saturating_sub(row.deployment.ts) > KEEP_UNDEPLOYS_MS;
                superseded || expired
            })
            .map(|row| row.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
