//! Whom this node's own settings told it to obey: the operator keys it
//! trusts and the tags its settings give. Neither is anyone's command, but
//! a change of either changes who may command the node, or which table
//! entries it runs, so each change is a `carried_out` line in the node's
//! signed audit trail, whether a reload (SIGHUP) made it or the node was
//! restarted with other settings.
//!
//! To see a change made between runs, the node keeps what it started or
//! last reloaded with in `<data-dir>/trust_record.json` (0600). A node's
//! first start has nothing to compare with and writes no line.

use crate::audit::{AuditLine, Decision};
use crate::command::trust::Trust;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The record's file in the data dir.
pub const TRUST_RECORD_FILE: &str = "trust_record.json";

/// The audit type of a change of the trusted operator keys.
pub const OPERATORS_KIND: &str = "operators";

/// The audit type of a change of the tags the settings give.
pub const TAGS_KIND: &str = "tags";

/// What the settings gave the node, as its audit lines name it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRecord {
    /// Each trusted key as shown at start: its id and its scope.
    pub operators: Vec<String>,
    /// The tags the settings give (run-time changes lie over them).
    pub tags: BTreeMap<String, String>,
}

/// When a change was seen, which its audit line's status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// At a reload of the settings: status `reloaded`.
    Reload,
    /// At a start, against the record of the run before: status `started`.
    Start,
}

impl Seen {
    fn status(self) -> &'static str {
        match self {
            Seen::Reload => "reloaded",
            Seen::Start => "started",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Seen::Reload => "the settings changed",
            Seen::Start => "since the last start, the settings changed",
        }
    }
}

impl TrustRecord {
    pub fn of(trust: &Trust, tags: &BTreeMap<String, String>) -> Self {
        TrustRecord {
            operators: trust.keys.iter().map(|k| k.describe()).collect(),
            tags: tags.clone(),
        }
    }

    /// The record of the run before, if there is one. One that does not
    /// read is an error, which the caller logs: the node then cannot say
    /// what changed, and says that instead.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, String> {
        let path = data_dir.join(TRUST_RECORD_FILE);
        match crate::private_file::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} does not read: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::private_file::write(&data_dir.join(TRUST_RECORD_FILE), &text)
    }

    /// The audit lines of `node` for what changed from `was` to `self`, one
    /// per kind that changed. `effective_tags` are the tags the node has
    /// with run-time changes laid over the given ones, shown beside them.
    pub fn changes_since(
        &self,
        was: &TrustRecord,
        seen: Seen,
        node: &str,
        effective_tags: &BTreeMap<String, String>,
        ts: u64,
    ) -> Vec<AuditLine> {
        let mut lines = Vec::new();
        if self.operators != was.operators {
            let added = not_in(&self.operators, &was.operators);
            let removed = not_in(&was.operators, &self.operators);
            lines.push(line(
                node,
                OPERATORS_KIND,
                seen,
                ts,
                format!(
                    "{} the trusted operator keys: added {}; removed {}{}",
                    seen.words(),
                    none_or(&added),
                    none_or(&removed),
                    if self.operators.is_empty() {
                        " (it now trusts none)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if self.tags != was.tags {
            lines.push(line(
                node,
                TAGS_KIND,
                seen,
                ts,
                format!(
                    "{} the tags they give from {{{}}} to {{{}}} (run-time changes lie over them): {{{}}}",
                    seen.words(),
                    show(&was.tags),
                    show(&self.tags),
                    show(effective_tags)
                ),
            ));
        }
        lines
    }
}

/// The entries of `these` that `those` does not have.
fn not_in<'a>(these: &'a [String], those: &[String]) -> Vec<&'a str> {
    these
        .iter()
        .filter(|k| !those.contains(k))
        .map(String::as_str)
        .collect()
}

fn show(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn none_or(list: &[&str]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join("; ")
    }
}

/// A `carried_out` line of the node's own: its settings are its origin.
fn line(node: &str, kind: &str, seen: Seen, ts: u64, reason: String) -> AuditLine {
    AuditLine {
        ts,
        origin: Some(node.to_string()),
        status: Some(seen.status().into()),
        reason: Some(reason),
        ..AuditLine::of(node, kind, kind, Decision::CarriedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(operators: &[&str], tags: &[(&str, &str)]) -> TrustRecord {
        TrustRecord {
            operators: operators.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn the_same_settings_make_no_line() {
        let r = record(&["cjop1-a"], &[("role", "web")]);
        assert!(r.changes_since(&r.clone(), Seen::Start, "n1", &r.tags, 1).is_empty());
    }

    #[test]
    fn a_change_of_keys_names_what_was_added_and_removed_with_when_it_was_seen() {
        let was = record(&["cjop1-a", "cjop1-b"], &[]);
        let now = record(&["cjop1-b", "cjop1-c modules web-*"], &[]);
        let lines = now.changes_since(&was, Seen::Start, "n1", &BTreeMap::new(), 7);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!((l.kind.as_str(), l.status.as_deref()), ("operators", Some("started")));
        assert_eq!((l.node.as_str(), l.origin.as_deref(), l.ts), ("n1", Some("n1"), 7));
        assert_eq!(l.decision, Decision::CarriedOut);
        assert_eq!(
            l.reason.as_deref(),
            Some("since the last start, the settings changed the trusted operator keys: added cjop1-c modules web-*; removed cjop1-a")
        );
        let open = record(&[], &[]);
        let lines = open.changes_since(&was, Seen::Reload, "n1", &BTreeMap::new(), 7);
        assert_eq!(lines[0].status.as_deref(), Some("reloaded"));
        assert!(
            lines[0]
                .reason
                .as_deref()
                .unwrap()
                .ends_with("removed cjop1-a; cjop1-b (it now trusts none)"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_change_of_tags_shows_both_sets_and_the_effective_tags() {
        let was = record(&["k"], &[("role", "web")]);
        let now = record(&["k"], &[("role", "db"), ("dc", "ams")]);
        let effective = record(&[], &[("role", "db"), ("dc", "ams"), ("zone", "b")]).tags;
        let lines = now.changes_since(&was, Seen::Reload, "n1", &effective, 1);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].kind, "tags");
        assert_eq!(
            lines[0].reason.as_deref(),
            Some("the settings changed the tags they give from {role=web} to {dc=ams,role=db} (run-time changes lie over them): {dc=ams,role=db,zone=b}")
        );
    }

    #[test]
    fn the_record_survives_a_restart_and_a_broken_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TrustRecord::load(dir.path()), Ok(None));
        let r = record(&["cjop1-a"], &[("role", "web")]);
        r.save(dir.path()).unwrap();
        assert_eq!(TrustRecord::load(dir.path()), Ok(Some(r)));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(TRUST_RECORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(TRUST_RECORD_FILE), "{not json").unwrap();
        let err = TrustRecord::load(dir.path()).unwrap_err();
        assert!(err.contains("does not read"), "{err}");
    }
}
