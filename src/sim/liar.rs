//! One lying node among many (`conjoiner-sim N --liar SECS`): a member that
//! holds the cluster key, and every second tells each of its neighbours,
//! about every other node, that it left, that it is dead at the top
//! incarnation, and that it moved to another address, in table exchanges
//! and down the broadcast tree. What counts is what the honest nodes
//! believe meanwhile: false deaths, and members they no longer list alive
//! or list at another address.

use super::measure::ms;
use super::Sim;
use crate::cluster::protocol::{Items, Msg, Payload, Record, Status, SyncMsg, TreeMsg, SET_MEMBERS};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize)]
pub struct LiarReport {
    /// Whether the nodes had identity keys and signed their own records.
    pub keyed: bool,
    pub seconds: f64,
    /// Forged records the liar sent (each to every neighbour).
    pub lies: u64,
    pub neighbours: usize,
    /// Dead verdicts about live nodes meanwhile and for 10 s after.
    pub false_dead: u64,
    /// The most (observer, member) pairs of honest nodes in which the
    /// observer did not list the member alive at its own address, at any
    /// one-second look; and at the end, 10 s after the last lie.
    pub lost_pairs_max: u64,
    pub lost_pairs_end: u64,
    /// Records the honest nodes refused as unproven.
    pub refused: u64,
    /// How long the run took on the simulator's clock, in ms.
    pub run_ms: f64,
}

/// Pairs of honest running nodes in which the observer does not list the
/// member alive (or suspect) at the member's own address.
fn lost_pairs(sim: &Sim, liar: usize) -> u64 {
    let honest: Vec<usize> = (0..sim.nodes.len()).filter(|&i| i != liar && sim.nodes[i].up).collect();
    let mut lost = 0;
    for &observer in &honest {
        for &member in &honest {
            if observer == member {
                continue;
            }
            let node = &sim.nodes[member];
            let held = sim.nodes[observer].core.member(&node.name);
            if !held.is_some_and(|m| m.status.is_up() && m.id.addr == node.addr) {
                lost += 1;
            }
        }
    }
    lost
}

/// The lies about every other member the liar lists, as it lists them.
fn lies(sim: &Sim, liar: usize) -> Vec<Record> {
    let mut out = Vec::new();
    for (i, node) in sim.nodes.iter().enumerate() {
        if i == liar {
            continue;
        }
        let Some(m) = sim.nodes[liar].core.member(&node.name) else {
            continue;
        };
        let mut moved = (*m.id).clone();
        moved.addr = SocketAddr::new(moved.addr.ip(), moved.addr.port().wrapping_add(1));
        out.push(Record {
            id: m.id.clone(),
            incarnation: m.incarnation,
            status: Status::Left,
        });
        out.push(Record {
            id: m.id.clone(),
            incarnation: u32::MAX,
            status: Status::Dead,
        });
        out.push(Record {
            id: Arc::new(moved),
            incarnation: m.incarnation.saturating_add(1),
            status: Status::Alive,
        });
    }
    out
}

/// Node `liar` lies for `duration`, then the cluster has 10 s to recover.
pub fn run(sim: &mut Sim, liar: usize, duration: Duration, progress: &impl Fn(&str)) -> LiarReport {
    progress(&format!(
        "node {} lies about every other node for {duration:?}",
        sim.nodes[liar].name
    ));
    let refused = |sim: &Sim| -> u64 {
        (0..sim.nodes.len())
            .filter(|&i| i != liar)
            .map(|i| sim.nodes[i].core.counters.records_unproven)
            .sum()
    };
    let (f0, r0, t0) = (sim.false_deaths, refused(sim), sim.now());
    let mut report = LiarReport {
        keyed: sim.config.keyed,
        seconds: duration.as_secs_f64(),
        neighbours: sim.nodes[liar].core.link_count(),
        ..LiarReport::default()
    };
    let mut round = 0u128;
    while sim.now() < t0 + duration {
        let records = lies(sim, liar);
        report.lies += records.len() as u64;
        let mut msgs: Vec<Msg> = records
            .iter()
            .enumerate()
            .map(|(k, record)| {
                Msg::Tree(TreeMsg::Gossip {
                    id: (0x11a7 << 64) | (round << 32) | k as u128,
                    hops: 0,
                    payload: Payload::Update {
                        record: record.clone(),
                        accuser: None,
                    },
                })
            })
            .collect();
        msgs.push(Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(records),
        }));
        sim.send_from(liar, msgs);
        round += 1;
        sim.run_for(Duration::from_secs(1));
        report.lost_pairs_max = report.lost_pairs_max.max(lost_pairs(sim, liar));
    }
    sim.run_for(Duration::from_secs(10));
    report.lost_pairs_end = lost_pairs(sim, liar);
    report.lost_pairs_max = report.lost_pairs_max.max(report.lost_pairs_end);
    report.false_dead = sim.false_deaths - f0;
    report.refused = refused(sim) - r0;
    report.run_ms = ms(sim.now() - t0);
    report
}
