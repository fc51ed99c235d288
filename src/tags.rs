//! A node's tags: the `KEY=VALUE` pairs selectors match. They are given at
//! start (`--tag`), and changed at run time (`conjoiner tags`); the changes
//! are kept in `<data-dir>/tags.json`, as what was set and what was
//! deleted, and laid over the tags given at start at every start, so a
//! restart keeps them and a later `--tag` still applies where no change
//! overrides it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The file the changes are kept in, in the data dir.
pub const TAGS_FILE: &str = "tags.json";
use crate::cluster::identity::check_tag_value;
pub use crate::cluster::identity::{check_tag_key as check_key, MAX_TAGS, MAX_TAG_BYTES};

/// Parses `KEY=VALUE`, under the rules every node holds peers' tags to.
pub fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("tag `{text}` must be KEY=VALUE"))?;
    check_key(key)?;
    check_tag_value(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// The changes made at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagChanges {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub delete: BTreeSet<String>,
}

impl TagChanges {
    /// The tags given at start with these changes laid over them.
    pub fn apply(&self, given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut tags: BTreeMap<String, String> = given
            .iter()
            .filter(|(k, _)| !self.delete.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.extend(self.set.clone());
        tags
    }

    /// Adds a change: `set` wins over an earlier delete of the same key,
    /// and `delete` over an earlier set.
    pub fn change(&mut self, set: &BTreeMap<String, String>, delete: &[String]) {
        for key in delete {
            self.set.remove(key);
            self.delete.insert(key.clone());
        }
        for (k, v) in set {
            self.delete.remove(k);
            self.set.insert(k.clone(), v.clone());
        }
    }

    /// Reads the changes kept in `dir` (none if there is no file).
    pub fn load(dir: &Path) -> Result<TagChanges, String> {
        let path = dir.join(TAGS_FILE);
        match crate::private_file::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{} does not read: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TagChanges::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Keeps the changes in `dir` (written whole, or not at all).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::private_file::write(&dir.join(TAGS_FILE), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn changes_lie_over_the_tags_given_at_start_and_survive_a_restart() {
        let given = map(&[("role", "web"), ("dc", "ams")]);
        let mut c = TagChanges::default();
        c.change(&map(&[("tier", "gold")]), &["dc".to_string()]);
        assert_eq!(c.apply(&given), map(&[("role", "web"), ("tier", "gold")]));
        c.change(&map(&[("dc", "fra")]), &["tier".to_string()]);
        assert_eq!(c.apply(&given), map(&[("role", "web"), ("dc", "fra")]));
        // A tag given later at start still applies where no change overrides it.
        let later = map(&[("role", "web"), ("dc", "ams"), ("zone", "b")]);
        assert_eq!(c.apply(&later), map(&[("role", "web"), ("dc", "fra"), ("zone", "b")]));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TagChanges::load(dir.path()).unwrap(), TagChanges::default());
        c.save(dir.path()).unwrap();
        assert_eq!(TagChanges::load(dir.path()).unwrap(), c);
        std::fs::write(dir.path().join(TAGS_FILE), b"{bad").unwrap();
        assert!(TagChanges::load(dir.path()).unwrap_err().contains("does not read"));
    }

    #[test]
    fn tags_and_names() {
        assert_eq!(parse_tag("dc=ams").unwrap(), ("dc".into(), "ams".into()));
        assert_eq!(parse_tag("role=").unwrap(), ("role".into(), "".into()));
        assert!(parse_tag("dc").is_err());
        assert!(parse_tag("=x").is_err());
        assert!(parse_tag("d c=x").is_err());
        assert!(parse_tag("k=a,b").is_err());
        assert!(parse_tag(&format!("k={}", "x".repeat(200))).is_err());
    }
}
