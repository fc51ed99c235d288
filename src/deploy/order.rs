//! The deploy protocol, parsed once: orders as they arrive in `deploy` and
//! `undeploy` envelopes, and each node's answer (`deploy_result`).

use super::fetch::FetchError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The body of a `deploy` envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOrder {
    pub module: String,
    pub source: OrderSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// Where targeted nodes get the package: a URL each fetches itself, or a
/// peer (the origin) that offers it by sha256 over the cluster links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The body of an `undeploy` envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndeployOrder {
    pub module: String,
}

/// How one node carried out an order, as `status` of its `deploy_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Deploy: installed and started.
    Deployed,
    /// Deploy: that version with that checksum was already running.
    Unchanged,
    /// Undeploy: stopped and removed.
    Undeployed,
    /// Undeploy: there was nothing to remove.
    NotInstalled,
    /// Either: not done; the report's `code` and `error` say why.
    Failed,
    /// Either: a newer entry of the module wins on this node, so this one
    /// is not carried out there.
    Superseded,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Deployed => "deployed",
            DeployStatus::Unchanged => "unchanged",
            DeployStatus::Undeployed => "undeployed",
            DeployStatus::NotInstalled => "not_installed",
            DeployStatus::Failed => "failed",
            DeployStatus::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for DeployStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's answer to an order: the body of its `deploy_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    pub status: DeployStatus,
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl DeployReport {
    pub(crate) fn ok(status: DeployStatus, module: &str, version: &str, sha256: &str) -> DeployReport {
        DeployReport {
            status,
            module: module.into(),
            version: Some(version.into()),
            sha256: Some(sha256.into()),
            error: None,
            code: None,
        }
    }

    pub(crate) fn failed(module: &str, code: &str, error: impl Into<String>) -> DeployReport {
        DeployReport {
            status: DeployStatus::Failed,
            module: module.into(),
            version: None,
            sha256: None,
            error: Some(error.into()),
            code: Some(code.into()),
        }
    }
}

/// Why an order failed. `code()` is the stable `code` of its
/// `deploy_result`; the message is its `error`.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    InvalidOrder(String),
    #[error("`{0}` is a core module of every node and cannot be deployed over")]
    Reserved(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("fetching the package took longer than {0} s")]
    FetchTimeout(u64),
    #[error("{0}")]
    BadPackage(String),
    #[error("{0}")]
    InstallFailed(String),
    /// The node's disk is full; the package may be fine, and stays cached.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("{0}")]
    StartFailed(String),
}

impl DeployError {
    pub fn code(&self) -> &'static str {
        match self {
            DeployError::InvalidOrder(_) => "invalid_order",
            DeployError::Reserved(_) => "reserved",
            DeployError::Fetch(e) => e.code(),
            DeployError::FetchTimeout(_) => "fetch_failed",
            DeployError::BadPackage(_) => "bad_package",
            DeployError::InstallFailed(_) => "install_failed",
            DeployError::DiskFull(_) => "disk_full",
            DeployError::StartFailed(_) => "start_failed",
        }
    }
}

/// The code of a chunk refused because the asked node does not hold the
/// package (yet: a node that has just fetched it is still checking it).
pub const NOT_HELD: &str = "not_held";

/// What one Deployer asks of another (`request` envelopes to
/// `mod.deployer`), parsed once by its `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerRequest {
    /// A piece of a package the asked node holds.
    Chunk { sha256: String, offset: u64, len: u64 },
    /// This node's audit lines (`conjoiner audit`).
    Audit {
        #[serde(flatten)]
        query: crate::audit::AuditQuery,
    },
    /// List or change this node's cluster keys (`conjoiner keys`).
    Keyring {
        change: crate::command::keyring_change::KeyringChange,
    },
    /// An op this node does not serve.
    #[serde(other)]
    Unknown,
}

/// What one Deployer tells the others (`event` envelopes to
/// `mod.deployer`), parsed once by its `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerNews {
    /// The sender holds a package now, so others may fetch it from it.
    Have { sha256: String },
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peer_requests_and_news_are_parsed_by_op() {
        let chunk = json!({"op": "chunk", "sha256": "ab", "offset": 0, "len": 10});
        assert_eq!(
            serde_json::from_value::<PeerRequest>(chunk.clone()).unwrap(),
            PeerRequest::Chunk {
                sha256: "ab".into(),
                offset: 0,
                len: 10
            }
        );
        let back = PeerRequest::Chunk {
            sha256: "ab".into(),
            offset: 0,
            len: 10,
        };
        assert_eq!(serde_json::to_value(back).unwrap(), chunk, "the wire form is unchanged");
        assert_eq!(
            serde_json::from_value::<PeerRequest>(json!({"op": "drop_tables"})).unwrap(),
            PeerRequest::Unknown
        );
        let missing = serde_json::from_value::<PeerRequest>(json!({"op": "chunk", "sha256": "ab"})).unwrap_err();
        assert!(missing.to_string().contains("offset"), "{missing}");
        assert!(
            serde_json::from_value::<PeerRequest>(json!({"sha256": "ab"})).is_err(),
            "no op"
        );
        assert_eq!(
            serde_json::from_value::<PeerNews>(json!({"op": "have", "sha256": "cd"})).unwrap(),
            PeerNews::Have { sha256: "cd".into() }
        );
        assert_eq!(
            serde_json::from_value::<PeerNews>(json!({"op": "gossip"})).unwrap(),
            PeerNews::Unknown
        );
    }
}
