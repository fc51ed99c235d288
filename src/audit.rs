//! The audit trail: each command a node took as its origin, carried out or
//! refused, as one JSON line in `<data-dir>/audit.jsonl` (mode 0600). The
//! file is rotated by size: past [`MAX_BYTES`] it becomes `audit.jsonl.1`
//! (replacing the one before) and a new file starts, so a node keeps
//! between one and two files' worth. `conjoiner audit` gathers the lines
//! of the fleet (see `cli/audit.rs`); `GET /v1/audit` answers one node's.
//!
//! Commands are rare, so a line is written at once, synchronously, with
//! the file opened for appending each time (a file removed or rotated by
//! hand is simply started again).

use serde::{Deserialize, Serialize};
use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const AUDIT_FILE: &str = "audit.jsonl";
/// The size past which the file is rotated.
pub const MAX_BYTES: u64 = 8 * 1024 * 1024;
/// The most lines one answer carries (the newest).
pub const MAX_LINES: usize = 1000;

/// What the node decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// As the origin: checked, and written into the deployments table.
    Taken,
    /// A step for it ran here (its `status` says how it ended).
    CarriedOut,
    /// Not done here (`reason` says why).
    Refused,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Taken => "taken",
            Decision::CarriedOut => "carried_out",
            Decision::Refused => "refused",
        }
    }
}

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditLine {
    /// When (ms since the epoch).
    pub ts: u64,
    /// The node that wrote the line.
    pub node: String,
    /// The command's id (its table entry's key), if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `deploy`, `undeploy`, `keyring` or `tags`.
    #[serde(rename = "type")]
    pub kind: String,
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The node that took the command from its operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The operator key id that signed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub decision: Decision,
    /// The result of a step carried out (`deployed`, `failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why it was refused, or why a step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which lines to answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub since_ms: Option<u64>,
    #[serde(default)]
    pub module: Option<String>,
}

impl AuditQuery {
    fn keeps(&self, line: &AuditLine) -> bool {
        self.since_ms.is_none_or(|t| line.ts >= t) && self.module.as_ref().is_none_or(|m| *m == line.module)
    }
}

/// A node's audit file.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    write: Mutex<()>,
}

impl AuditLog {
    pub fn open(data_dir: &Path) -> AuditLog {
        AuditLog::with_limit(data_dir, MAX_BYTES)
    }

    pub fn with_limit(data_dir: &Path, max_bytes: u64) -> AuditLog {
        AuditLog {
            path: data_dir.join(AUDIT_FILE),
            max_bytes,
            write: Mutex::new(()),
        }
    }

    fn rotated(&self) -> PathBuf {
        self.path.with_extension("jsonl.1")
    }

    /// Appends `line`; a failure is logged (the command goes on: a full
    /// disk must not stop a node from refusing a forged deploy).
    pub fn append(&self, line: &AuditLine) {
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.try_append(line) {
            tracing::error!(file = %self.path.display(), error = %e, "cannot write the audit line");
        }
    }

    fn try_append(&self, line: &AuditLine) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.max_bytes) {
            std::fs::rename(&self.path, self.rotated())?;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?;
        // A file made by hand (or by an older build) is made private too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        file.write_all(&text)
    }

    /// The newest [`MAX_LINES`] lines that `query` keeps, oldest first. A
    /// line that does not read is skipped.
    pub fn read(&self, query: &AuditQuery) -> Vec<AuditLine> {
        let mut lines = Vec::new();
        for path in [self.rotated(), self.path.clone()] {
            let Ok(file) = std::fs::File::open(&path) else { continue };
            for text in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                if let Ok(line) = serde_json::from_str::<AuditLine>(&text) {
                    if query.keeps(&line) {
                        lines.push(line);
                    }
                }
            }
        }
        let skip = lines.len().saturating_sub(MAX_LINES);
        lines.split_off(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: u64, module: &str) -> AuditLine {
        AuditLine {
            ts,
            node: "n1".into(),
            id: Some(format!("id-{ts}")),
            kind: "deploy".into(),
            module: module.into(),
            target: None,
            origin: Some("n2".into()),
            key: Some("0123456789abcdef".into()),
            decision: Decision::Refused,
            status: None,
            reason: Some("unsigned".into()),
        }
    }

    #[test]
    fn lines_are_private_filtered_and_rotated_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::with_limit(dir.path(), 600);
        for ts in 1..=6 {
            log.append(&line(ts, if ts % 2 == 0 { "web" } else { "db" }));
        }
        let mode = std::fs::metadata(dir.path().join(AUDIT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.path().join("audit.jsonl.1").exists(), "rotated past the limit");
        let all = log.read(&AuditQuery::default());
        let times: Vec<u64> = all.iter().map(|l| l.ts).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first: {times:?}");
        assert_eq!(times.last(), Some(&6));
        let web = log.read(&AuditQuery {
            since_ms: Some(4),
            module: Some("web".into()),
        });
        assert!(web.iter().all(|l| l.module == "web" && l.ts >= 4) && !web.is_empty());
        std::fs::write(dir.path().join(AUDIT_FILE), "not json\n").unwrap();
        log.append(&line(7, "web"));
        assert_eq!(
            log.read(&AuditQuery::default()).last().map(|l| l.ts),
            Some(7),
            "a bad line is skipped"
        );
    }
}
