//! `GET /metrics`: Prometheus text. Counters are kept as events happen;
//! levels (members, peers, queues, modules, the process) are read now.

use super::error::{list_members, ApiError};
use crate::actors::cluster_bus::{ClusterStatus, MemberStatus};
use crate::actors::ModuleState;
use crate::monitor::board::Health;
use crate::node::NodeHandle;
use actix_web::{web, HttpResponse};
use std::time::Instant;

pub async fn metrics(node: web::Data<NodeHandle>) -> Result<HttpResponse, ApiError> {
    let m = &node.ctx.metrics;
    let members = list_members(&node).await?;
    for status in [
        MemberStatus::Alive,
        MemberStatus::Suspect,
        MemberStatus::Dead,
        MemberStatus::Left,
    ] {
        let count = members.iter().filter(|x| x.status == status).count();
        m.set_level("conjoiner_members", &[("status", status.as_str())], count as f64);
    }
    if let Ok(cluster) = node.ctx.cluster.status.send(ClusterStatus).await {
        m.set_level("conjoiner_peers", &[], cluster.peers as f64);
        for link in &cluster.links {
            m.set_level(
                "conjoiner_peer_queue_bytes",
                &[("peer", &link.peer)],
                link.queued_bytes as f64,
            );
        }
    }
    let gauge = &node.ctx.cluster.backpressure;
    m.set_level("conjoiner_congested", &[], if gauge.is_congested() { 1.0 } else { 0.0 });
    m.set_total("conjoiner_congested_episodes_total", &[], gauge.episodes());
    let modules = node.modules().await;
    for state in ["starting", "running", "restarting", "stopping", "stopped", "failed"] {
        let count = modules.iter().filter(|x| module_state_name(&x.state) == state).count();
        m.set_level("conjoiner_modules", &[("state", state)], count as f64);
    }
    for module in &modules {
        let name = module.name.as_str();
        m.set_total(
            "conjoiner_module_restarts_total",
            &[("module", name)],
            u64::from(module.restarts),
        );
        let up = if module.state == ModuleState::Running { 1.0 } else { 0.0 };
        m.set_level("conjoiner_module_up", &[("module", name)], up);
    }
    // A module's own word on its health, from this node's latest round: a
    // degraded module is still up.
    let me = node.ctx.identity.name.as_str();
    if let Some((report, _)) = node
        .status
        .reports(Instant::now())
        .into_iter()
        .find(|(r, _)| r.node == me)
    {
        for module in &report.modules {
            // Every health a node's own report can give, so each series
            // exists and reads 0 when it is not the one (`unknown` is only
            // ever said of other nodes' modules).
            for health in Health::ALL.into_iter().filter(|h| *h != Health::Unknown) {
                let value = if module.health == health { 1.0 } else { 0.0 };
                m.set_level(
                    "conjoiner_module_health",
                    &[("module", module.name.as_str()), ("health", health.as_str())],
                    value,
                );
            }
        }
    }
    m.set_level(
        "conjoiner_uptime_seconds",
        &[],
        node.ctx.started.elapsed().as_secs_f64(),
    );
    m.set_level("conjoiner_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    m.set_level("conjoiner_event_streams", &[], node.tap.listeners() as f64);
    m.set_total("conjoiner_event_streams_dropped_total", &[], node.tap.dropped());
    let mut text = m.render();
    if let Some(process) = ProcessFigures::read() {
        text.push_str(&process.exposition(node.ctx.started_ms));
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

fn module_state_name(state: &ModuleState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// This process's CPU time and resident memory, from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: u64,
}

impl ProcessFigures {
    /// The standard `process_*` families, in the text format. Written here
    /// rather than through the recorder, whose counters hold integers.
    fn exposition(&self, started_ms: u64) -> String {
        format!(
            "# HELP process_cpu_seconds_total User and system CPU time this process has used.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total {}\n\
             # HELP process_resident_memory_bytes Resident memory of this process.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes {}\n\
             # HELP process_start_time_seconds When this process started, in seconds since the epoch.\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds {}\n",
            self.cpu_seconds,
            self.resident_bytes,
            started_ms as f64 / 1000.0
        )
    }

    fn read() -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        // SAFETY: sysconf only reads a system setting.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        ProcessFigures::parse(&stat, &statm, ticks.max(1) as u64, page.max(1) as u64)
    }

    /// `stat`'s utime and stime (fields 14 and 15, counted after the
    /// command name, which may hold spaces and parentheses) in clock
    /// ticks, and `statm`'s resident pages.
    fn parse(stat: &str, statm: &str, ticks_per_second: u64, page_bytes: u64) -> Option<ProcessFigures> {
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // After the name: state is field 3, so utime (14) is index 11.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(ProcessFigures {
            cpu_seconds: (utime + stime) as f64 / ticks_per_second as f64,
            resident_bytes: resident_pages * page_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read_past_a_command_name_with_spaces() {
        let stat = "4242 (conj (oiner) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 150 0 0 20 0 9 0 100 200000000 2000 18446744073709551615";
        let figures = ProcessFigures::parse(stat, "50000 2000 300 10 0 900 0\n", 100, 4096).unwrap();
        assert_eq!(
            figures,
            ProcessFigures {
                cpu_seconds: 4.0,
                resident_bytes: 2000 * 4096
            }
        );
        assert_eq!(ProcessFigures::parse("garbage", "", 100, 4096), None);
        assert!(ProcessFigures::read().is_some_and(|p| p.resident_bytes > 0));
    }
}
