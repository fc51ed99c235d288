//! Who a member is, as the membership protocol sees it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A member's identity: its name, where to reach it, which boot of it this
/// is, and its tags.
///
/// The name is the member: the table holds one entry per name. `boot`
/// (milliseconds since the epoch when the process started) tells two
/// processes of one name apart: a restarted node takes over from its old
/// boot, and of two live processes claiming one name the older boot keeps
/// it (see `core::members`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: Arc<str>,
    /// The address other nodes dial to reach this one.
    pub addr: SocketAddr,
    /// Milliseconds since the epoch when this process started.
    pub boot: u64,
    /// The node's `--tag K=V` pairs; carried in the identity so they reach
    /// every member with the first packet about it.
    pub tags: BTreeMap<String, String>,
}

/// The longest node name, in bytes. Every member's name sits in every
/// node's member table and travels in every record about it, so a peer
/// must not be able to make it large.
pub const MAX_NAME_BYTES: usize = 64;
/// The most tags a node may carry, for the same reason.
pub const MAX_TAGS: usize = 64;
/// The longest tag key or value, in bytes.
pub const MAX_TAG_BYTES: usize = 128;

/// The most heap bytes ([`NodeId::heap_bytes`]) an identity within the
/// bounds on names and tags can take.
pub const MAX_ID_HEAP_BYTES: usize =
    std::mem::size_of::<NodeId>() + MAX_NAME_BYTES + MAX_TAGS * (2 * MAX_TAG_BYTES + 48);

/// A node name: 1 to 64 letters, digits, `_`, `-` or `.`; it goes into
/// addresses (`<node>.host`) and selectors.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name `{}` must be 1 to {MAX_NAME_BYTES} letters, digits, `_`, `-` or `.`",
            cut(name)
        ))
    }
}

/// A tag key: 1 to 128 letters, digits, `_`, `-` or `.`.
pub fn check_tag_key(key: &str) -> Result<(), String> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return Err(format!(
            "tag key `{}` must be non-empty letters, digits, `_`, `-` or `.`",
            cut(key)
        ));
    }
    if key.len() > MAX_TAG_BYTES {
        return Err(format!("tag key `{}` is longer than {MAX_TAG_BYTES} bytes", cut(key)));
    }
    Ok(())
}

/// A tag value: at most 128 bytes, with no spaces, `,` or `|` (selectors
/// use those).
pub fn check_tag_value(key: &str, value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_whitespace() || c == ',' || c == '|') {
        return Err(format!(
            "tag value `{}` must not contain spaces, `,` or `|`",
            cut(value)
        ));
    }
    if value.len() > MAX_TAG_BYTES {
        return Err(format!(
            "tag value of `{}` is longer than {MAX_TAG_BYTES} bytes",
            cut(key)
        ));
    }
    Ok(())
}

/// A node's whole set of tags.
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("{} tags; a node carries at most {MAX_TAGS}", tags.len()));
    }
    for (key, value) in tags {
        check_tag_key(key)?;
        check_tag_value(key, value)?;
    }
    Ok(())
}

/// The start of a text for an error message, marked when cut: what a peer
/// sent may be a megabyte long.
pub fn cut(text: &str) -> String {
    crate::shown::shown(text, 40)
}

impl NodeId {
    /// Whether this identity keeps within the bounds every node enforces
    /// on the records it holds (`check_name`, `check_tags`).
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        check_tags(&self.tags)
    }

    pub fn new(name: &str, addr: SocketAddr, boot: u64, tags: BTreeMap<String, String>) -> NodeId {
        NodeId {
            name: Arc::from(name),
            addr,
            boot,
            tags,
        }
    }

    /// Roughly what this identity costs in memory, for the simulator's and
    /// the debug dump's accounting.
    pub fn heap_bytes(&self) -> usize {
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
        std::mem::size_of::<NodeId>() + self.name.len() + tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_are_held_to_their_bounds_and_errors_show_only_the_start() {
        assert!(check_name("web-1.eu").is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME_BYTES)).is_ok());
        for bad in ["", "web 1", "web*", "n|2"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let huge = "n".repeat(900_000);
        let error = check_name(&huge).unwrap_err();
        assert!(error.len() < 200, "the error repeats the name: {} bytes", error.len());
        assert!(error.contains("900000 bytes"), "{error}");

        let tags = |n: usize| -> BTreeMap<String, String> { (0..n).map(|i| (format!("k{i}"), "v".into())).collect() };
        assert!(check_tags(&tags(MAX_TAGS)).is_ok());
        let largest = NodeId::new(
            &"n".repeat(MAX_NAME_BYTES),
            "10.0.0.1:1".parse().unwrap(),
            1,
            (0..MAX_TAGS)
                .map(|i| {
                    (
                        format!("{i:0>width$}", width = MAX_TAG_BYTES),
                        "v".repeat(MAX_TAG_BYTES),
                    )
                })
                .collect(),
        );
        assert!(largest.check().is_ok());
        assert_eq!(
            largest.heap_bytes(),
            MAX_ID_HEAP_BYTES,
            "the bound is the largest identity's size"
        );
        assert!(check_tags(&tags(MAX_TAGS + 1)).is_err());
        assert!(check_tags(&BTreeMap::from([("role".into(), "v".repeat(MAX_TAG_BYTES + 1))])).is_err());
        assert!(check_tags(&BTreeMap::from([("bad key".into(), "v".into())])).is_err());
        assert!(check_tags(&BTreeMap::from([("role".into(), "a,b".into())])).is_err());
    }
}
