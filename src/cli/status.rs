//! `conjoiner status`: the fleet on one screen. Every node with its
//! membership (and since when), report age and module health, failing nodes
//! first, failing modules named, and a summary line. Exit code 3 when
//! anything is failing (a node, a module, or a step of the deployments
//! table), when the node is isolated (it has seeds or known peers and
//! reaches none of them), or when it is refused (another live node holds
//! its name; it says which). DEPLOYS says how many of the modules the table
//! names for each node run as asked.
//!
//! It reads the API's typed answer ([`StatusAnswer`]) and counts nothing
//! itself: which modules are ok, failing or unknown is the node's rule.

use super::client::ApiClient;
use super::members::{cell, format_table, visible};
use super::{CliError, EXIT_OK, EXIT_PARTIAL};
use crate::deploy::converge::GoalState;
use crate::deploy::view::short_id;
use crate::monitor::answer::StatusAnswer;
use crate::monitor::board::{ModuleCounts, NodeView};
use serde_json::Value;

pub async fn run(http: &str, json_out: bool) -> Result<i32, CliError> {
    let raw: Value = ApiClient::new(http).get("/v1/status", &[]).await?;
    let status: StatusAnswer = serde_json::from_value(raw.clone())
        .map_err(|e| CliError::error(format!("the node's status answer is not what this CLI reads: {e}")))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
    } else {
        print!("{}", screen(&status));
        for line in warnings(&status) {
            eprintln!("{line}");
        }
    }
    let failing = status.summary.failing_nodes + status.summary.failed_deploys;
    Ok(
        if failing == 0 && status.isolated.is_none() && status.refused.is_none() {
            EXIT_OK
        } else {
            EXIT_PARTIAL
        },
    )
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => super::modules::uptime(ms),
    }
}

/// The MODULES cell: `5/6 ok` while the node's report holds now; the
/// modules whose state is unknown (all of them on a dead, suspect or stale
/// node) are named as such, never counted ok.
fn modules_cell(c: &ModuleCounts) -> String {
    match c.unknown {
        0 => format!("{}/{} ok", c.ok, c.total),
        n if n == c.total => format!("{n} unknown"),
        n => format!("{}/{} ok, {n} unknown", c.ok, c.total),
    }
}

/// Why a failing module fails, whole: the node's own finding (no answer,
/// the last exit), else the reason the module gives, else its status.
fn why(m: &crate::monitor::board::ModuleReport) -> String {
    m.status_error
        .clone()
        .or_else(|| m.last_exit.clone())
        .or_else(|| m.health_reason.clone())
        .unwrap_or_else(|| m.status.to_string())
}

/// The DEPLOYS cell: how many of the modules the deployments table names
/// for the node run as asked (`2/3`, with the failed ones), `-` for none,
/// `?` when its report says nothing of now.
fn deploys_cell(n: &NodeView) -> String {
    let c = n.convergence();
    match (n.health.is_current(), c.total, c.failed) {
        (false, _, _) => "?".into(),
        (true, 0, _) => "-".into(),
        (true, total, 0) => format!("{}/{total}", c.converged),
        (true, total, failed) => format!("{}/{total} ({failed} failed)", c.converged),
    }
}

fn row(n: &NodeView) -> [String; 8] {
    let load = n.host["load"][0].as_f64().map_or("-".into(), |l| format!("{l:.2}"));
    [
        n.node.clone(),
        n.health.as_str().to_string(),
        n.member.map_or("unknown", |m| m.as_str()).to_string(),
        age(n.member_since_ms),
        age(n.status_age_ms),
        modules_cell(&n.module_counts),
        deploys_cell(n),
        load,
    ]
}

/// The lines `status` writes on stderr under its table: why the node is
/// out, open, uncontained or isolated. Every text from the answer is
/// shown with its control characters written out.
pub fn warnings(status: &StatusAnswer) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(refused) = &status.refused {
        lines.push(format!(
            "refused: {} is out of the cluster: {} (refused by {}); it keeps trying",
            visible(&status.node),
            visible(&refused.reason),
            visible(&refused.holder)
        ));
    }
    if status.operator_keys.is_empty() {
        lines.push(format!(
            "open: {} trusts no operator key, so anyone who holds the cluster key can deploy code to it \
             (`conjoiner keygen --operator`, then start the nodes with --trust-operator)",
            visible(&status.node)
        ));
    }
    if status.module_containment.starts_with("process tree") {
        lines.push(format!(
            "uncontained: {} keeps its modules' processes by their {}; a daemon a module double-forks \
             outlives it (run the agent as root, or under systemd with Delegate=yes)",
            visible(&status.node),
            visible(&status.module_containment)
        ));
    }
    if let Some(isolated) = &status.isolated {
        lines.push(format!(
            "isolated: {} reaches none of its seeds ({}) or {} known peers; it keeps trying \
             (is the cluster key the same? is the network open?)",
            visible(&status.node),
            if isolated.seeds.is_empty() {
                "none".to_string()
            } else {
                visible(&isolated.seeds.join(", ")).into_owned()
            },
            isolated.known_peers,
        ));
    }
    lines
}

/// The whole screen: the table, the failing nodes and modules, the summary.
pub fn screen(status: &StatusAnswer) -> String {
    let rows: Vec<[String; 8]> = status.nodes.iter().map(row).collect();
    let mut out = format_table(
        [
            "NODE", "HEALTH", "MEMBER", "SINCE", "REPORT", "MODULES", "DEPLOYS", "LOAD",
        ],
        &rows,
    );
    let mut problems = Vec::new();
    for n in &status.nodes {
        if let Some(error) = &n.error {
            problems.push(format!("  {}: {error}", n.node));
        }
        for m in n.modules.iter().filter(|m| m.health.is_failing()) {
            problems.push(format!("  {}/{}: {} ({})", n.node, m.name, m.health.as_str(), why(m)));
        }
        if n.health.is_current() {
            for g in n.desired.iter().filter(|g| g.state == GoalState::Failed) {
                problems.push(format!(
                    "  {}/{}: {} of entry {} failed: {}: {}{}",
                    n.node,
                    g.module,
                    g.action.as_str(),
                    short_id(&g.entry),
                    g.code.as_deref().unwrap_or("error"),
                    g.reason.as_deref().unwrap_or("no reason given"),
                    g.retry_in_ms
                        .map(|ms| format!(" (tried {} times; again in {} s)", g.failures, ms.div_ceil(1000)))
                        .unwrap_or_default()
                ));
            }
        }
    }
    if !problems.is_empty() {
        out.push_str("\nfailing:\n");
        for p in problems {
            out.push_str(&visible(&p));
            out.push('\n');
        }
    }
    let s = &status.summary;
    let behind = match (s.behind_nodes, s.failed_deploys) {
        (0, _) => String::new(),
        (n, 0) => format!("; {n} node(s) still converging"),
        (n, failed) => format!("; {n} node(s) behind the deployments table, {failed} step(s) failed"),
    };
    out.push_str(&format!(
        "\n{} nodes: {} ok, {} failing; {} modules: {} ok, {} failing, {} unknown{behind} (seen from {})\n",
        s.nodes,
        s.ok,
        s.failing_nodes,
        s.modules,
        s.ok_modules,
        s.failing_modules,
        s.unknown_modules,
        cell(&status.node),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::{Member, MemberStatus};
    use crate::monitor::board::{summarize, Health, ModuleReport, NodeReport, StatusBoard};
    use std::time::{Duration, Instant};

    fn report(node: &str, modules: &[(&str, Health)]) -> NodeReport {
        let modules = modules
            .iter()
            .map(|&(name, health)| ModuleReport {
                name: name.into(),
                kind: "process".into(),
                version: "1.0.0".into(),
                state: "running".into(),
                health,
                restarts: 0,
                uptime_ms: 1000,
                status: serde_json::json!({}),
                status_error: None,
                health_reason: None,
                sha256: None,
                last_exit: None,
                reported_health: None,
            })
            .collect();
        NodeReport {
            node: node.into(),
            tags: Default::default(),
            version: "0.1.0".into(),
            started_ms: 1,
            round: 1,
            uptime_ms: 1000,
            interval_ms: 1000,
            refresh_ms: 1000,
            host: Value::Null,
            cluster: Value::Null,
            modules,
            desired: Vec::new(),
        }
    }

    fn member(name: &str, status: MemberStatus) -> Member {
        Member {
            name: name.into(),
            addr: None,
            status,
            tags: Default::default(),
            incarnation: 0,
            since_ms: 2600,
            boot_ms: 0,
            identity: None,
        }
    }

    /// A dead node's modules are unknown on the screen: its row and the
    /// summary line say so, and never count them ok.
    #[test]
    fn a_dead_nodes_modules_show_as_unknown_not_ok() {
        let board = StatusBoard::default();
        let t0 = Instant::now();
        let four = [
            ("transponder", Health::Ok),
            ("deployer", Health::Ok),
            ("monitor", Health::Ok),
            ("echo", Health::Ok),
        ];
        board.record(report("n1", &four), t0);
        board.record(report("n2", &four), t0);
        let members = [member("n1", MemberStatus::Alive), member("n2", MemberStatus::Dead)];
        let nodes = board.view(&members, t0 + Duration::from_millis(100));
        let answer = StatusAnswer {
            node: "n1".into(),
            cluster: "c".into(),
            identity: String::new(),
            status_interval_ms: 1000,
            isolated: None,
            refused: None,
            operator_keys: Vec::new(),
            module_containment: "cgroup".into(),
            summary: summarize(&nodes),
            shown: nodes.len(),
            nodes,
        };
        let text = screen(&answer);
        let n1 = text.lines().find(|l| l.starts_with("n1 ")).unwrap();
        let n2 = text.lines().find(|l| l.starts_with("n2 ")).unwrap();
        assert!(n1.contains("4/4 ok"), "{text}");
        assert!(n2.contains("dead") && n2.contains("4 unknown"), "{text}");
        assert!(!n2.contains("ok"), "{text}");
        assert!(
            text.contains("2 nodes: 1 ok, 1 failing; 8 modules: 4 ok, 0 failing, 4 unknown (seen from n1)"),
            "{text}"
        );
        assert!(
            text.contains("n2: the node is dead; its last report is shown"),
            "{text}"
        );
    }

    /// A node that cannot carry out a deploy is flagged: its DEPLOYS cell,
    /// a line naming the entry and the reason, and the summary.
    #[test]
    fn a_node_behind_the_deployments_table_is_flagged() {
        use crate::deploy::converge::Goal;
        use crate::deploy::table::Action;
        let board = StatusBoard::default();
        let t0 = Instant::now();
        let goal = |module: &str, state: GoalState| Goal {
            module: module.into(),
            entry: "0192f1e4-7b7c-7d2a-9a51-0a1b2c3d4e5f".into(),
            clock: 1,
            action: Action::Deploy,
            state,
            reason: Some("no peer could send the package".into()),
            code: Some("fetch_failed".into()),
            failures: 2,
            retry_in_ms: Some(9_500),
        };
        let mut behind = report("n1", &[("transponder", Health::Ok)]);
        behind.desired = vec![goal("web", GoalState::Converged), goal("api", GoalState::Failed)];
        board.record(behind, t0);
        let mut dead = report("n2", &[("transponder", Health::Ok)]);
        dead.desired = vec![goal("api", GoalState::Failed)];
        board.record(dead, t0);
        let members = [member("n1", MemberStatus::Alive), member("n2", MemberStatus::Dead)];
        let nodes = board.view(&members, t0);
        let answer = StatusAnswer {
            node: "n1".into(),
            cluster: "c".into(),
            identity: String::new(),
            status_interval_ms: 1000,
            isolated: None,
            refused: None,
            operator_keys: Vec::new(),
            module_containment: "cgroup".into(),
            summary: summarize(&nodes),
            shown: nodes.len(),
            nodes,
        };
        let text = screen(&answer);
        let n1 = text.lines().find(|l| l.starts_with("n1 ")).unwrap();
        assert!(n1.contains("1/2 (1 failed)"), "{text}");
        let n2 = text.lines().find(|l| l.starts_with("n2 ")).unwrap();
        assert!(n2.contains(" ? "), "a dead node's deploys are unknown: {text}");
        assert!(
            text.contains("n1/api: deploy of entry 2c3d4e5f failed: fetch_failed: no peer could send the package (tried 2 times; again in 10 s)"),
            "{text}"
        );
        assert!(
            !text.contains("n2/api"),
            "a dead node's last word is not a failure now: {text}"
        );
        assert!(
            text.contains("1 node(s) behind the deployments table, 1 step(s) failed"),
            "{text}"
        );
        assert_eq!((answer.summary.behind_nodes, answer.summary.failed_deploys), (1, 1));
    }

    #[test]
    fn module_cells_name_what_is_unknown() {
        let c = |total, ok, failing, unknown| ModuleCounts {
            total,
            ok,
            failing,
            unknown,
        };
        assert_eq!(modules_cell(&c(6, 5, 1, 0)), "5/6 ok");
        assert_eq!(modules_cell(&c(4, 0, 0, 4)), "4 unknown");
        assert_eq!(modules_cell(&c(6, 3, 0, 2)), "3/6 ok, 2 unknown");
        assert_eq!(modules_cell(&c(0, 0, 0, 0)), "0/0 ok");
    }
}
