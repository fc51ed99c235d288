//! The deployments table on disk, `<data-dir>/deployments.json`: written
//! whole through a temporary file and a rename, so a crash leaves the old
//! table or the new one; read at start, before anything is reconciled. A
//! file that does not read is kept aside, never deleted, and the node
//! starts from its peers' table.

use crate::cluster::protocol::{Entry, Version};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file's name in the data dir.
pub const TABLE_FILE: &str = "deployments.json";
/// The format written; a later one is refused rather than misread.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct FileEntry {
    key: Arc<str>,
    version: Version,
    /// The body, as the JSON it is.
    body: Box<RawValue>,
}

#[derive(Serialize, Deserialize)]
struct TableFile {
    format: u32,
    entries: Vec<FileEntry>,
}

/// What reading the file found.
#[derive(Debug)]
pub enum Loaded {
    /// The table as written last.
    Table(Vec<Arc<Entry>>),
    /// No file: a node that never held a table.
    Missing,
    /// The file does not read. It was moved to `kept_at`.
    Corrupt { error: String, kept_at: PathBuf },
}

/// The table as the file holds it.
pub fn encode(entries: &[Arc<Entry>]) -> Vec<u8> {
    let entries = entries
        .iter()
        .filter_map(|e| {
            let body = std::str::from_utf8(&e.body).ok()?;
            Some(FileEntry {
                key: e.key.clone(),
                version: e.version.clone(),
                body: RawValue::from_string(body.to_string()).ok()?,
            })
        })
        .collect();
    serde_json::to_vec_pretty(&TableFile {
        format: FORMAT,
        entries,
    })
    .unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<Vec<Arc<Entry>>, String> {
    let file: TableFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.format != FORMAT {
        return Err(format!("format {} is not the {FORMAT} this node reads", file.format));
    }
    Ok(file
        .entries
        .into_iter()
        .map(|e| {
            Arc::new(Entry {
                key: e.key,
                version: e.version,
                body: e.body.get().as_bytes().to_vec().into(),
            })
        })
        .collect())
}

/// Writes the table to `dir` (whole, or not at all).
pub fn save(dir: &Path, entries: &[Arc<Entry>]) -> std::io::Result<()> {
    crate::private_file::write(&dir.join(TABLE_FILE), &encode(entries))
}

/// Reads the table from `dir`; a file that does not read is renamed to
/// `deployments.json.bad-<ms>` so that it is neither lost nor read again.
pub fn load(dir: &Path, now_ms: u64) -> Loaded {
    let path = dir.join(TABLE_FILE);
    let bytes = match crate::private_file::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => {
            return Loaded::Corrupt {
                error: e.to_string(),
                kept_at: path,
            }
        }
    };
    match decode(&bytes) {
        Ok(entries) => Loaded::Table(entries),
        Err(error) => {
            let kept_at = dir.join(format!("{TABLE_FILE}.bad-{now_ms}"));
            let kept_at = match std::fs::rename(&path, &kept_at) {
                Ok(()) => kept_at,
                Err(_) => path,
            };
            Loaded::Corrupt { error, kept_at }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, body: &str) -> Arc<Entry> {
        Arc::new(Entry {
            key: key.into(),
            version: Version {
                clock: 7,
                origin: "n1".into(),
            },
            body: body.as_bytes().to_vec().into(),
        })
    }

    #[test]
    fn the_table_round_trips_and_a_corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path(), 1), Loaded::Missing));
        let entries = vec![
            entry("a", r#"{"module":"x"}"#),
            entry("b", r#"{"module":"y","n":[1,2]}"#),
        ];
        save(dir.path(), &entries).unwrap();
        match load(dir.path(), 1) {
            Loaded::Table(read) => assert_eq!(read, entries),
            other => panic!("{other:?}"),
        }
        // The file is readable by a person: bodies are JSON, not bytes.
        let text = std::fs::read_to_string(dir.path().join(TABLE_FILE)).unwrap();
        assert!(
            text.contains(r#""module": "x""#) || text.contains(r#""module":"x""#),
            "{text}"
        );

        std::fs::write(dir.path().join(TABLE_FILE), b"{\"format\":1,\"entries\":[{\"key\":").unwrap();
        match load(dir.path(), 42) {
            Loaded::Corrupt { error, kept_at } => {
                assert!(error.contains("EOF"), "{error}");
                assert_eq!(kept_at, dir.path().join("deployments.json.bad-42"));
                assert!(kept_at.exists());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(load(dir.path(), 43), Loaded::Missing),
            "moved aside, not read again"
        );
        std::fs::write(dir.path().join(TABLE_FILE), br#"{"format":9,"entries":[]}"#).unwrap();
        assert!(matches!(load(dir.path(), 44), Loaded::Corrupt { .. }));
    }
}
