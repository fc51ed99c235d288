//! Rolling out a deploy or undeploy from the origin node, and gathering one
//! result per targeted node (SPEC §6 `POST /v1/deploy`, `/v1/undeploy`).
//!
//! Without a batch, one order goes to every targeted node at once over the
//! ClusterBus. With `batch = N` it is a rolling window: each node gets its
//! own order straight over its link, at most N at a time, and after a
//! failure (or a silent node) no new node is started unless
//! `continue_on_error` is set; the nodes never started are `skipped`.
//! A silent node is `missing`, never a success.

use super::order::DeployStatus;
use crate::actors::cluster_bus::{ListMembers, MemberStatus};
use crate::actors::deployer::DEPLOYER_ADDRESS;
use crate::actors::transponder::{NodeReply, RequestCluster};
use crate::actors::ModuleContext;
use crate::wire::{MessageType, Target};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::info;
use uuid::Uuid;

/// One rollout to run.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// `deploy` or `undeploy`.
    pub kind: MessageType,
    /// The order every node gets (a `DeployOrder` or `UndeployOrder`).
    pub order: Value,
    pub target: Option<String>,
    pub batch: Option<usize>,
    pub continue_on_error: bool,
    /// How long one node may take.
    pub timeout: Duration,
}

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
    fn from_reply(reply: NodeReply) -> NodeResult {
        let text = |key: &str| reply.body.get(key).and_then(Value::as_str).map(str::to_string);
        match reply.error {
            Some(error) => NodeResult {
                node: reply.node.clone(),
                status: DeployStatus::Failed,
                error: Some(error),
                code: reply.code.clone(),
                version: None,
                sha256: None,
                elapsed_ms: reply.elapsed_ms,
            },
            None => match reply
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
                // Never taken for a success: a node that answers what this
                // one cannot read is reported failed, with what it said.
                _ => NodeResult {
                    node: reply.node.clone(),
                    status: DeployStatus::Failed,
                    error: Some(format!(
                        "the node answered without a known status: {}",
                        reply.body.to_string().chars().take(200).collect::<String>()
                    )),
                    code: Some("bad_reply".into()),
                    version: None,
                    sha256: None,
                    elapsed_ms: reply.elapsed_ms,
                },
            },
        }
    }

    pub fn failed(&self) -> bool {
        self.status == DeployStatus::Failed
    }
}

/// The whole rollout's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutOutcome {
    pub id: Uuid,
    pub results: Vec<NodeResult>,
    /// Targeted nodes that did not answer in time.
    pub missing: Vec<String>,
    /// Targeted nodes never started because an earlier batch failed.
    pub skipped: Vec<String>,
}

/// What a watcher sees while a rollout runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Start { expected: Vec<String> },
    Result(NodeResult),
}

/// Runs a rollout from this node. `Err` only for a bad target or a node
/// that cannot send (its Transponder is down).
pub async fn run(
    ctx: &ModuleContext,
    rollout: Rollout,
    progress: Option<mpsc::UnboundedSender<Progress>>,
) -> Result<RolloutOutcome, String> {
    let target = rollout
        .target
        .as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let members = ctx
        .cluster
        .members
        .send(ListMembers)
        .await
        .map_err(|_| "the cluster bus is not running".to_string())?;
    let mut expected: Vec<String> = members
        .into_iter()
        .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
        .filter(|m| target.as_ref().is_none_or(|t| t.matches(&m.name, &m.tags)))
        .map(|m| m.name)
        .collect();
    expected.sort();
    let send = |p: Progress| {
        if let Some(tx) = &progress {
            let _ = tx.send(p);
        }
    };
    send(Progress::Start {
        expected: expected.clone(),
    });
    let span = ctx.identity.span("rollout");
    span.in_scope(|| {
        info!(kind = %rollout.kind, target = ?rollout.target, batch = ?rollout.batch, nodes = expected.len(),
            "rollout starting")
    });
    let outcome = match rollout.batch {
        Some(batch) if batch < expected.len() => rolling(ctx, &rollout, expected, batch, &send).await?,
        _ => all_at_once(ctx, &rollout, &send).await?,
    };
    span.in_scope(|| {
        info!(id = %outcome.id, results = outcome.results.len(), failed = outcome.results.iter().filter(|r| r.failed()).count(),
            missing = ?outcome.missing, skipped = ?outcome.skipped, "rollout done")
    });
    Ok(outcome)
}

fn order(rollout: &Rollout, to: Option<String>, progress: Option<mpsc::UnboundedSender<NodeReply>>) -> RequestCluster {
    let mut ask = RequestCluster::new(
        "api",
        DEPLOYER_ADDRESS,
        rollout.target.clone(),
        rollout.order.clone(),
        rollout.timeout,
    );
    ask.kind = rollout.kind.clone();
    ask.to = to;
    ask.progress = progress;
    ask
}

async fn all_at_once(
    ctx: &ModuleContext,
    rollout: &Rollout,
    send: &impl Fn(Progress),
) -> Result<RolloutOutcome, String> {
    let transponder = ctx
        .transponder()
        .ok_or("the transponder is restarting; try again in a moment")?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ask = transponder.send(order(rollout, None, Some(tx)));
    tokio::pin!(ask);
    // Pass each result on as it arrives, until the gather ends.
    let outcome = loop {
        tokio::select! {
            outcome = &mut ask => break outcome,
            Some(reply) = rx.recv() => send(Progress::Result(NodeResult::from_reply(reply))),
        }
    };
    while let Ok(reply) = rx.try_recv() {
        send(Progress::Result(NodeResult::from_reply(reply)));
    }
    let outcome = outcome.map_err(|_| "the transponder stopped during the rollout".to_string())??;
    Ok(RolloutOutcome {
        id: outcome.id,
        results: outcome.replies.into_iter().map(NodeResult::from_reply).collect(),
        missing: outcome.missing,
        skipped: Vec::new(),
    })
}

async fn rolling(
    ctx: &ModuleContext,
    rollout: &Rollout,
    expected: Vec<String>,
    batch: usize,
    send: &impl Fn(Progress),
) -> Result<RolloutOutcome, String> {
    let batch = batch.max(1);
    let mut waiting: VecDeque<String> = expected.into();
    let mut running = FuturesUnordered::new();
    let mut outcome = RolloutOutcome {
        id: Uuid::now_v7(),
        results: Vec::new(),
        missing: Vec::new(),
        skipped: Vec::new(),
    };
    let mut halted = false;
    loop {
        while !halted && running.len() < batch {
            let Some(next) = waiting.pop_front() else { break };
            let transponder = ctx
                .transponder()
                .ok_or("the transponder is restarting; try again in a moment")?;
            let ask = transponder.send(order(rollout, Some(next.clone()), None));
            running.push(async move { (next, ask.await) });
        }
        let Some((name, answer)) = running.next().await else {
            break;
        };
        let answer = answer.map_err(|_| "the transponder stopped during the rollout".to_string())??;
        // A node that left before it was asked is as silent as one that did not answer.
        let answered = answer.replies.iter().any(|r| r.node == name);
        let mut bad = !answered;
        for reply in answer.replies {
            let result = NodeResult::from_reply(reply);
            bad |= result.failed();
            send(Progress::Result(result.clone()));
            outcome.results.push(result);
        }
        if !answered {
            outcome.missing.push(name);
        }
        if bad && !rollout.continue_on_error && !halted {
            halted = true;
            info!("a node failed; starting no more nodes (use continue_on_error to go on)");
        }
    }
    outcome.skipped = waiting.into_iter().collect();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::transponder::NodeReply;
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
            (ok.status, ok.failed(), ok.version.as_deref()),
            (DeployStatus::Deployed, false, Some("1.0"))
        );
        let gone = NodeResult::from_reply(reply(json!({"status": "not_installed", "module": "m"})));
        assert_eq!(gone.status, DeployStatus::NotInstalled);
        // What this node cannot read is never a success.
        for body in [json!({"status": "installed-ish"}), json!({"module": "m"}), json!(null)] {
            let r = NodeResult::from_reply(reply(body.clone()));
            assert!(r.failed(), "{body}");
            assert_eq!(r.code.as_deref(), Some("bad_reply"), "{body}");
        }
        // The wire form is unchanged: the status as a word.
        assert_eq!(serde_json::to_value(&ok).unwrap()["status"], "deployed");
    }
}
