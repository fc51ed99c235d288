//! Admission, with real processes: nodes that require it link only with
//! hosts an operator admitted (`conjoiner admit`, `agent --join-token`),
//! so a host that holds only the cluster key gets no link, and a token
//! taken from another node is no use to it.

mod common;

use common::*;
use conjoiner::cluster::node_key::NodePublicKey;
use conjoiner::cluster::ClusterKey;
use conjoiner::command::operator_key::OperatorSecret;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn identity(node: &TestNode) -> NodePublicKey {
    // `/v1/status` answers even while the node is refused (`/v1/health` then says 503).
    let (_, status) = node.http("GET", "/v1/status", None);
    NodePublicKey::parse(status["identity"].as_str().unwrap_or_default()).expect("the node shows its identity")
}

/// `conjoiner admit` for `node`, as the operator runs it; the token file.
fn admit(node: &TestNode, operator_key: &Path, dir: &Path) -> String {
    let token = dir.join(format!("{}.token", node.name));
    let out = node.cli(&[
        "admit",
        &identity(node).to_string(),
        "--name",
        &node.name,
        "--operator-key",
        operator_key.to_str().unwrap(),
        "-o",
        token.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    token.display().to_string()
}

fn metric(node: &TestNode, line: &str) -> Option<u64> {
    let (_, metrics) = node.http("GET", "/metrics", None);
    metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn only_admitted_hosts_link_with_nodes_that_require_admission() {
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.key");
    OperatorSecret::generate().write_pair(&alice).unwrap();
    let trust = format!("@{}.pub", alice.display());
    let key = ClusterKey::generate();
    let strict = |join: Option<&TestNode>| {
        let mut flags = vec![
            "--require-admission".to_string(),
            "--trust-operator".into(),
            trust.clone(),
        ];
        if let Some(seed) = join {
            flags.extend(["--join".to_string(), seed.cluster_addr()]);
        }
        flags
    };

    // Each node makes its identity key at its first start; the operator
    // admits it, and it starts again with its token.
    let mut n1 = with_key("n1", &key, strict(None));
    assert!(
        n1.log_text().contains("this node holds no admission"),
        "{}",
        n1.log_text()
    );
    let token1 = admit(&n1, &alice, dir.path());
    n1.set_extra_flags(&[strict(None), vec!["--join-token".into(), token1]].concat());
    n1.restart();
    let mut n2 = with_key("n2", &key, strict(Some(&n1)));
    let token2 = admit(&n2, &alice, dir.path());
    n2.set_extra_flags(&[strict(Some(&n1)), vec!["--join-token".into(), token2.clone()]].concat());
    n2.restart();
    wait_converged(&[&n1, &n2], 2);
    assert!(n2.log_text().contains("this node shows its admission to every peer"));

    // A host with the cluster key and no admission gets no link.
    let mut n3 = with_key("n3", &key, vec!["--join".into(), n1.cluster_addr()]);
    wait_for(LIMIT, "n1 to refuse n3", || {
        n1.log_text()
            .contains("refused a node that is not admitted")
            .then_some(())
    });
    wait_for(LIMIT, "n3 to be told why", || {
        n3.log_text().contains("not admitted").then_some(())
    });
    let refused = metric(&n1, "conjoiner_cluster_input_refused_total{reason=\"not_admitted\"} ");
    assert!(refused >= Some(1), "counted: {refused:?}");
    for node in [&n1, &n2] {
        assert_eq!(alive_names(node), ["n1", "n2"], "{} let n3 in", node.name);
    }
    // n3 says it is out, and why, everywhere its operator looks.
    let (code, health) = n3.http("GET", "/v1/health", None);
    assert_eq!((code, health["code"].as_str()), (503, Some("refused")), "{health}");
    let out = n3.cli(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("not admitted"), "{}", stderr(&out));
    assert_eq!(alive_names(&n3), ["n3"]);

    // Another node's token is no use to it: it names another key.
    n3.kill9();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conjoiner"))
        .args([
            "agent",
            "--name",
            "n3",
            "--bind",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .arg("--data-dir")
        .arg(n3.data_dir())
        .args(["--join-token", &token2])
        .env("CONJOINER_KEY", key.to_base64())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not this node's"), "{}", stderr(&out));

    // Admitted, it gets in.
    n3.set_extra_flags(&["--join".into(), n1.cluster_addr()]);
    n3.restart();
    let token3 = admit(&n3, &alice, dir.path());
    n3.set_extra_flags(&["--join".into(), n1.cluster_addr(), "--join-token".into(), token3]);
    n3.restart();
    wait_converged(&[&n1, &n2, &n3], 3);
}
