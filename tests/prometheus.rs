//! A real Prometheus (Debian's `prometheus` package, which `.ci/run`
//! installs) scrapes a three-node cluster through each node's metrics
//! listener (`agent --metrics`), which serves `GET /metrics` alone, with
//! no token and no Host check.

mod common;

use common::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// Killed when dropped, so a failing test leaves no Prometheus behind.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(addr: &str, path: &str, host: &str) -> (u16, String) {
    http_with_headers(addr, "GET", path, &[("Host", host)], None).expect("GET")
}

#[test]
fn a_real_prometheus_scrapes_three_nodes_through_their_metrics_listeners() {
    let key = conjoiner::cluster::ClusterKey::generate();
    let env = vec![("CONJOINER_KEY".to_string(), key.to_base64())];
    let mut nodes: Vec<TestNode> = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let mut extra = vec!["--metrics".to_string(), "127.0.0.1:0".to_string()];
        if let Some(seed) = nodes.first() {
            extra.extend(["--join".to_string(), seed.cluster_addr()]);
        }
        nodes.push(TestNode::launch(
            name,
            Launch {
                env: env.clone(),
                extra,
                ..Launch::default()
            },
        ));
    }
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2]], 3);
    let targets: Vec<String> = nodes
        .iter()
        .map(|n| {
            wait_for(LIMIT, "the metrics address", || {
                std::fs::read_to_string(n.data_dir().join("metrics.addr"))
                    .ok()
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty())
            })
        })
        .collect();

    // Any Host name, no token: metrics; nothing else is served there.
    let (status, text) = get(&targets[0], "/metrics", "node-1.example.internal");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("conjoiner_build_info"), "{text}");
    assert_eq!(get(&targets[0], "/v1/status", "localhost").0, 404);
    let posted = http_with_headers(&targets[0], "POST", "/v1/deploy", &[("Host", "localhost")], Some(b"{}"))
        .expect("POST")
        .0;
    assert_eq!(posted, 404, "the metrics listener takes no commands");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    let listed: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: conjoiner\n    static_configs:\n      - targets: [{}]\n",
            listed.join(", ")
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (Debian's `prometheus` package; .ci/run installs it)");
    let _prometheus = Prometheus(child);

    let up = wait_for(LIMIT, "Prometheus to scrape all three nodes", || {
        let (status, body) = http_with_headers(&web, "GET", "/api/v1/targets", &[("Host", "localhost")], None).ok()?;
        let answer: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        let active = answer["data"]["activeTargets"].as_array()?.clone();
        (active.len() == 3 && active.iter().all(|t| t["health"] == "up")).then_some(active)
    });
    assert!(up.iter().all(|t| t["lastError"] == ""), "{up:?}");
    let members = wait_for(LIMIT, "the scraped member counts", || {
        let (_, body) = get(
            &web,
            "/api/v1/query?query=conjoiner_members%7Bstatus%3D%22alive%22%7D",
            "localhost",
        );
        let answer: Value = serde_json::from_str(&body).ok()?;
        let result = answer["data"]["result"].as_array()?.clone();
        (result.len() == 3).then_some(result)
    });
    for series in &members {
        assert_eq!(
            series["value"][1], "3",
            "every node counts three alive members: {series}"
        );
    }
}
