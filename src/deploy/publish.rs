//! A deploy or undeploy at the node where it is asked, its origin: the
//! deployments-table entry is written (it spreads to every node, and stays
//! for the nodes that are down or join later), and the results of the
//! alive nodes it is in force for are gathered as they arrive. A silent
//! node is `missing`, never a success; a targeted member that is not alive
//! now is named in `absent`, with what will become of it.

use super::order::DeployStatus;
use super::rollout::{first_wave, write_sealed};
use super::table::{placement, Deployment, RolloutPolicy};
use crate::actors::cluster_bus::{ListMembers, Member, MemberStatus};
use crate::actors::transponder::{AwaitReplies, NodeReply};
use crate::actors::ModuleContext;
use crate::audit::{AuditLine, AuditLog, Decision};
use crate::cluster::node_key::NodeKey;
use crate::wire::{MessageType, Target};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::info;
use uuid::Uuid;

/// One node's result, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub status: DeployStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub elapsed_ms: u64,
}

impl NodeResult {
    pub fn from_reply(reply: NodeReply) -> NodeResult {
        let text = |key: &str| reply.body.get(key).and_then(Value::as_str).map(str::to_string);
        let failed = |error: String, code: Option<String>| NodeResult {
            node: reply.node.clone(),
            status: DeployStatus::Failed,
            error: Some(error),
            code,
            version: None,
            sha256: None,
            elapsed_ms: reply.elapsed_ms,
        };
        if let Some(error) = reply.error.clone() {
            return failed(error, reply.code.clone());
        }
        match reply
            .body
            .get("status")
            .cloned()
            .map(serde_json::from_value::<DeployStatus>)
        {
            Some(Ok(status)) => NodeResult {
                node: reply.node.clone(),
                status,
                error: text("error"),
                code: text("code"),
                version: text("version"),
                sha256: text("sha256"),
                elapsed_ms: reply.elapsed_ms,
            },
            // Never taken for a success: a node that answers what this one
            // cannot read is reported failed, with what it said.
            _ => failed(
                format!(
                    "the node answered without a known status: {}",
                    reply.body.to_string().chars().take(200).collect::<String>()
                ),
                Some("bad_reply".into()),
            ),
        }
    }

    /// Whether the node did what was asked (a superseded entry did not).
    pub fn succeeded(&self) -> bool {
        matches!(
            self.status,
            DeployStatus::Deployed | DeployStatus::Unchanged | DeployStatus::Undeployed | DeployStatus::NotInstalled
        )
    }
}

/// A targeted member that is not alive now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Absent {
    pub node: String,
    pub member: MemberStatus,
    /// What becomes of it, in a sentence.
    pub note: String,
}

/// The whole outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishOutcome {
    /// The table entry's id.
    pub id: Uuid,
    pub results: Vec<NodeResult>,
    /// Nodes the entry is in force for that sent no result in time (they
    /// hold the entry, and carry it out on their own).
    pub missing: Vec<String>,
    /// Targeted members that are not alive now.
    pub absent: Vec<Absent>,
    /// Targeted nodes a rollout has not released yet.
    pub later: Vec<String>,
    /// The rollout as written, if the deploy is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::table::Rollout>,
}

/// What a watcher sees while results come in.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Start {
        id: Uuid,
        expected: Vec<String>,
        absent: Vec<Absent>,
        later: Vec<String>,
    },
    Result(NodeResult),
}

/// Which targeted members `deployment` reaches now: the alive ones it is
/// in force for, those a rollout holds back, and those not alive.
pub fn reach(deployment: &Deployment, id: &str, members: &[Member]) -> Result<Reach, String> {
    let target = deployment
        .target
        .as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut reach = Reach::default();
    for m in members
        .iter()
        .filter(|m| target.as_ref().is_none_or(|t| t.matches(&m.name, &m.tags)))
    {
        match m.status {
            MemberStatus::Alive | MemberStatus::Suspect => {
                let released = deployment
                    .rollout
                    .as_ref()
                    .is_none_or(|r| placement(&m.name, id) < r.released);
                if released {
                    reach.now.insert(m.name.clone());
                } else {
                    reach.later.push(m.name.clone());
                }
            }
            status => reach.absent.push(Absent {
                node: m.name.clone(),
                member: status,
                note: match status {
                    MemberStatus::Left => "left the cluster: it carries the entry out if it joins again".into(),
                    _ => "not reachable now: it carries the entry out when it returns".into(),
                },
            }),
        }
    }
    reach.later.sort();
    reach.absent.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(reach)
}

/// Which targeted members an entry reaches (see [`reach`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reach {
    pub now: BTreeSet<String>,
    pub later: Vec<String>,
    pub absent: Vec<Absent>,
}

/// The origin's audit line for a command it took, appended as `taken`
/// the moment the table takes the entry (before any result comes back),
/// or as `refused`, with why, if the entry is not written.
pub struct OriginAudit<'a> {
    pub log: &'a AuditLog,
    pub line: AuditLine,
}

impl OriginAudit<'_> {
    fn append(mut self, written: Result<(), &str>) {
        match written {
            Ok(()) => self.line.decision = Decision::Taken,
            Err(why) => self.line.reason = Some(why.to_string()),
        }
        self.log.append(&self.line);
    }
}

/// Writes `deployment` into the table under `id` (released to its first
/// wave only, with a `rollout` policy), and gathers the results of the
/// nodes it is in force for now, for up to `timeout`. The command's
/// `audit` line is appended as soon as it is known whether the table took
/// the entry.
pub async fn publish(
    ctx: &ModuleContext,
    key: &NodeKey,
    (id, audit): (Uuid, OriginAudit<'_>),
    mut deployment: Deployment,
    rollout: Option<RolloutPolicy>,
    timeout: Duration,
    progress: Option<mpsc::UnboundedSender<Progress>>,
) -> Result<PublishOutcome, String> {
    let mut audit = Some(audit);
    let mut not_written = |why: String| {
        if let Some(audit) = audit.take() {
            audit.append(Err(&why));
        }
        why
    };
    let members = match ctx.cluster.members.send(ListMembers).await {
        Ok(members) => members,
        Err(_) => return Err(not_written("the cluster side is not running".into())),
    };
    if let Some(policy) = rollout {
        deployment.rollout = Some(first_wave(&deployment, &id.to_string(), &members, policy));
    }
    let reach = reach(&deployment, &id.to_string(), &members).map_err(&mut not_written)?;
    let Some(transponder) = ctx.transponder() else {
        return Err(not_written(
            "the transponder is restarting; try again in a moment".into(),
        ));
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let kind = match &deployment.action {
        super::table::Action::Deploy => MessageType::Deploy,
        super::table::Action::Undeploy => MessageType::Undeploy,
    };
    let gathered = transponder.send(AwaitReplies {
        id,
        kind,
        expected: reach.now.clone(),
        timeout,
        progress: Some(tx),
    });
    let span = ctx.identity.span("publish");
    span.in_scope(|| {
        info!(entry = %id, module = %deployment.module, action = deployment.action.as_str(),
            target = ?deployment.target, now = reach.now.len(), later = reach.later.len(), absent = reach.absent.len(),
            "writing a deployments-table entry")
    });
    let send = |p: Progress| {
        if let Some(tx) = &progress {
            let _ = tx.send(p);
        }
    };
    send(Progress::Start {
        id,
        expected: reach.now.iter().cloned().collect(),
        absent: reach.absent.clone(),
        later: reach.later.clone(),
    });
    if let Err(e) = write_sealed(ctx, key, &id.to_string(), deployment.clone()).await {
        return Err(not_written(format!("the table did not take the entry: {e}")));
    }
    if let Some(audit) = audit.take() {
        audit.append(Ok(()));
    }
    tokio::pin!(gathered);
    let outcome = loop {
        tokio::select! {
            outcome = &mut gathered => break outcome,
            Some(reply) = rx.recv() => send(Progress::Result(NodeResult::from_reply(reply))),
        }
    };
    while let Ok(reply) = rx.try_recv() {
        send(Progress::Result(NodeResult::from_reply(reply)));
    }
    let outcome = outcome.map_err(|_| "the transponder stopped while results came in".to_string())??;
    let outcome = PublishOutcome {
        id,
        results: outcome.replies.into_iter().map(NodeResult::from_reply).collect(),
        missing: outcome.missing,
        absent: reach.absent,
        later: reach.later,
        rollout: deployment.rollout.clone(),
    };
    span.in_scope(|| {
        info!(entry = %id, results = outcome.results.len(),
            failed = outcome.results.iter().filter(|r| !r.succeeded()).count(),
            missing = ?outcome.missing, absent = outcome.absent.len(), "results gathered")
    });
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::transponder::NodeReply;
    use crate::deploy::table::{Action, Amount, Rollout, RolloutPolicy, RolloutState};
    use serde_json::json;

    fn reply(body: Value) -> NodeReply {
        NodeReply {
            node: "n1".into(),
            body,
            error: None,
            code: None,
            elapsed_ms: 3,
        }
    }

    #[test]
    fn a_node_result_is_read_once_into_a_typed_status() {
        let ok = NodeResult::from_reply(reply(
            json!({"status": "deployed", "module": "m", "version": "1.0", "sha256": "ab"}),
        ));
        assert_eq!(
            (ok.status, ok.succeeded(), ok.version.as_deref()),
            (DeployStatus::Deployed, true, Some("1.0"))
        );
        let gone = NodeResult::from_reply(reply(json!({"status": "not_installed", "module": "m"})));
        assert_eq!(gone.status, DeployStatus::NotInstalled);
        let lost = NodeResult::from_reply(reply(json!({"status": "superseded", "module": "m"})));
        assert!(!lost.succeeded(), "a superseded entry did not do what was asked");
        // What this node cannot read is never a success.
        for body in [json!({"status": "installed-ish"}), json!({"module": "m"}), json!(null)] {
            let r = NodeResult::from_reply(reply(body.clone()));
            assert!(!r.succeeded(), "{body}");
            assert_eq!(r.code.as_deref(), Some("bad_reply"), "{body}");
        }
        assert_eq!(serde_json::to_value(&ok).unwrap()["status"], "deployed");
    }

    fn member(name: &str, status: MemberStatus, role: &str) -> Member {
        Member {
            name: name.into(),
            addr: None,
            status,
            tags: [("role".to_string(), role.to_string())].into(),
            incarnation: 0,
            since_ms: 0,
            boot_ms: 0,
            identity: None,
        }
    }

    #[test]
    fn an_entry_reaches_the_alive_targeted_members_and_names_the_rest() {
        let members = [
            member("a", MemberStatus::Alive, "web"),
            member("b", MemberStatus::Suspect, "web"),
            member("c", MemberStatus::Dead, "web"),
            member("d", MemberStatus::Left, "web"),
            member("e", MemberStatus::Alive, "db"),
        ];
        let mut d = Deployment {
            module: "m".into(),
            target: Some("tag.role=web".into()),
            action: Action::Undeploy,
            source: None,
            sha256: None,
            config: None,
            ts: 0,
            rollout: None,
            driver: None,
            signature: None,
        };
        let r = reach(&d, "id", &members).unwrap();
        assert_eq!(r.now.iter().collect::<Vec<_>>(), ["a", "b"]);
        let absent: Vec<(&str, MemberStatus)> = r.absent.iter().map(|a| (a.node.as_str(), a.member)).collect();
        assert_eq!(absent, [("c", MemberStatus::Dead), ("d", MemberStatus::Left)]);
        assert!(r.absent[0].note.contains("when it returns"));
        assert!(r.absent[1].note.contains("joins again"));
        // A rollout released to no one yet holds every alive node back.
        d.rollout = Some(Rollout {
            released: 0.0,
            state: RolloutState::Rolling,
            policy: RolloutPolicy {
                canary: Amount::Nodes(1),
                batch: Amount::Nodes(1),
                health_window_ms: 0,
                max_failed: Amount::Nodes(0),
                revert: true,
            },
            wave_at_ms: 0,
            wave: 1,
            reason: None,
            steer: None,
            seal: None,
        });
        let r = reach(&d, "id", &members).unwrap();
        assert!(r.now.is_empty());
        assert_eq!(r.later, ["a", "b"]);
        d.target = Some("tag.=x".into());
        assert!(reach(&d, "id", &members).is_err());
    }
}
