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
//!
//! Each line is signed by the node that wrote it, with its identity key
//! (`cluster::node_key`), over the line's other fields in canonical JSON.
//! `conjoiner audit` checks every line against the identity key that the
//! writer proved on a link, so a line altered after it was written, or
//! made up by another host in the writer's name, shows as such.

use crate::cluster::node_key::{NodeKey, NodePublicKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// `deploy`, `undeploy`, `pause`, `resume`, `revert`, `keyring` or
    /// `tags`; `operators` for a reload or a restart that changed the
    /// trusted keys;
    /// `entry` for a table entry a peer offered that does not read as any
    /// of them.
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
    /// The writing node's ed25519 signature (base64) over
    /// [`AuditLine::signed_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// The first line of the bytes a node signs for an audit line, so the
/// signature means nothing anywhere else.
const LINE_DOMAIN: &[u8] = b"conjoiner audit line v1\n";

/// What a line's signature says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineCheck {
    /// Signed by the identity key its node proved.
    Valid,
    /// No signature, or one that does not verify against that key: the
    /// line was altered, or another host made it up.
    Invalid,
    /// The node's identity key is not known to the node asked.
    Unchecked,
}

impl LineCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            LineCheck::Valid => "valid",
            LineCheck::Invalid => "INVALID",
            LineCheck::Unchecked => "unchecked",
        }
    }
}

impl AuditLine {
    /// A line of `node`, now, about `kind` on `module`, with every other
    /// field empty for the caller to fill (`..AuditLine::of(…)`).
    pub fn of(node: &str, kind: &str, module: &str, decision: Decision) -> AuditLine {
        AuditLine {
            ts: crate::wire::now_ms(),
            node: node.to_string(),
            id: None,
            kind: kind.to_string(),
            module: module.to_string(),
            target: None,
            origin: None,
            key: None,
            decision,
            status: None,
            reason: None,
            sig: None,
        }
    }

    /// The bytes signed: a domain line, then every field but `sig` in
    /// canonical JSON.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut fields = serde_json::to_value(AuditLine {
            sig: None,
            ..self.clone()
        })
        .unwrap_or_default();
        if let Some(map) = fields.as_object_mut() {
            map.remove("sig");
        }
        let mut bytes = LINE_DOMAIN.to_vec();
        bytes.extend_from_slice(crate::command::canonical::canonical_json(&fields).as_bytes());
        bytes
    }

    /// Signs the line as its node, `key`.
    pub fn sign(&mut self, key: &NodeKey) {
        self.sig = Some(b64().encode(key.sign(&self.signed_bytes())));
    }

    /// Checks the line against its node's identity key, if known.
    pub fn check(&self, key: Option<&NodePublicKey>) -> LineCheck {
        let Some(key) = key else { return LineCheck::Unchecked };
        let sig: Option<[u8; 64]> = self
            .sig
            .as_deref()
            .and_then(|s| b64().decode(s).ok())
            .and_then(|b| b.try_into().ok());
        match sig {
            Some(sig) if key.verifies(&self.signed_bytes(), &sig) => LineCheck::Valid,
            _ => LineCheck::Invalid,
        }
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
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
    /// The node's identity key, which signs each line it appends.
    signer: Option<Arc<NodeKey>>,
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
            signer: None,
        }
    }

    /// Signs every line appended from now on with `key`.
    pub fn signed_by(mut self, key: Arc<NodeKey>) -> AuditLog {
        self.signer = Some(key);
        self
    }

    fn rotated(&self) -> PathBuf {
        self.path.with_extension("jsonl.1")
    }

    /// Appends `line`; a failure is logged (the command goes on: a full
    /// disk must not stop a node from refusing a forged deploy).
    pub fn append(&self, line: &AuditLine) {
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = line.clone();
        if let Some(key) = &self.signer {
            line.sign(key);
        }
        if let Err(e) = self.try_append(&line) {
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
            sig: None,
        }
    }

    #[test]
    fn a_line_signed_by_its_node_checks_and_any_change_shows() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(NodeKey::generate());
        let log = AuditLog::open(dir.path()).signed_by(key.clone());
        log.append(&line(1, "web"));
        let read = log.read(&AuditQuery::default());
        let [written] = &read[..] else { panic!("{read:?}") };
        let public = key.public();
        assert_eq!(written.check(Some(&public)), LineCheck::Valid);
        assert_eq!(written.check(None), LineCheck::Unchecked);
        assert_eq!(written.check(Some(&NodeKey::generate().public())), LineCheck::Invalid);
        // Each field is covered: a change to any of them breaks the check.
        let changes: Vec<fn(&mut AuditLine)> = vec![
            |l| l.ts += 1,
            |l| l.node = "n2".into(),
            |l| l.id = None,
            |l| l.kind = "undeploy".into(),
            |l| l.module = "db".into(),
            |l| l.target = Some("*".into()),
            |l| l.origin = Some("n3".into()),
            |l| l.key = None,
            |l| l.decision = Decision::CarriedOut,
            |l| l.status = Some("deployed".into()),
            |l| l.reason = None,
            |l| l.sig = None,
            |l| l.sig = Some("AAAA".into()),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut altered = written.clone();
            change(&mut altered);
            assert_eq!(altered.check(Some(&public)), LineCheck::Invalid, "change {i}");
        }
        // A line of the file edited by hand reads back, and fails.
        let text = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        std::fs::write(
            dir.path().join(AUDIT_FILE),
            text.replace("\"refused\"", "\"carried_out\""),
        )
        .unwrap();
        let edited = log.read(&AuditQuery::default());
        assert_eq!(edited[0].decision, Decision::CarriedOut);
        assert_eq!(edited[0].check(Some(&public)), LineCheck::Invalid);
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
