//! A flood of connections that never finish their handshake, from several
//! source addresses, must not keep a real node from joining: the node's
//! places for handshakes are shared fairly among sources, so one that has
//! none waiting always gets in.
//!
//! Needs root, iproute2 and python3 (`.ci/run` installs them); it fails
//! with the reason without them.

mod common;

use common::netlab::Netlab;
use common::*;
use conjoiner::cluster::ClusterKey;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Source addresses the flood comes from, each holding more connections
/// than its share, so that together they fill every place.
const FLOOD_SOURCES: usize = 9;
const PER_SOURCE: usize = 40;
/// The node's places for connections in their handshake.
const PLACES: usize = 256;
/// What the node logs when a source with fewer handshakes waiting takes
/// the place of the busiest source's oldest one.
const PUSHED_OUT: &str = "every handshake place was taken: ended the oldest handshake";

fn handshake_lines(node: &TestNode) -> String {
    node.log_text()
        .lines()
        .filter(|l| l.contains("handshake"))
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_node_joins_while_nine_sources_hold_every_handshake_place() {
    let lab = Netlab::new(3)
        .unwrap_or_else(|e| panic!("cannot build the network namespace lab (this test needs root and iproute2): {e}"));
    let key = ClusterKey::generate();
    let launch = |i: usize| Launch {
        netns: Some(lab.namespace(i)),
        http: Some(format!("{}:7373", lab.ip(i))),
        env: vec![("CONJOINER_KEY".into(), key.to_base64())],
        extra: vec!["--bind".into(), format!("{}:7946", lab.ip(i)), "--no-mdns".into()],
        no_loopback_defaults: true,
        umask: None,
    };
    let victim = TestNode::launch("victim", launch(1));

    // Host 3 floods from nine addresses of its own.
    let subnet = &lab.ip(3)[..lab.ip(3).rfind('.').unwrap()];
    let sources: Vec<String> = (0..FLOOD_SOURCES).map(|i| format!("{subnet}.{}", 200 + i)).collect();
    for source in &sources {
        let out = Command::new("ip")
            .args([
                "-n",
                &lab.namespace(3),
                "addr",
                "add",
                &format!("{source}/24"),
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flood/hold_handshakes.py");
    let mut flood = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.namespace(3),
            "python3",
            script,
            &lab.ip(1),
            "7946",
        ])
        .arg(PER_SOURCE.to_string())
        .args(&sources)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let flood = Streaming {
        stdout: lines(flood.stdout.take().unwrap()),
        stderr: lines(flood.stderr.take().unwrap()),
        child: flood,
    };
    // Every place is held (256), and has been for a second.
    Streaming::line_where(&flood.stdout, Duration::from_secs(20), |line| {
        line.strip_prefix("held ")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n >= PLACES - 8)
    });

    // The held count above includes connections still in the kernel's
    // accept queue; wait until the node itself says every place is taken,
    // so the join below really happens in a full house. It says so when it
    // pushes the busiest source out, or in a refusal line (one per 10 s)
    // that counts the handshakes waiting. The flood may settle with every
    // source within one of the others, where nothing is pushed out: a
    // source with none waiting still gets in, which the join shows.
    let filled = Instant::now() + Duration::from_secs(30);
    let full_house = format!("pending={PLACES}");
    while !victim
        .log_text()
        .lines()
        .any(|l| l.contains(PUSHED_OUT) || (l.contains("before their handshake") && l.contains(&full_house)))
    {
        assert!(
            Instant::now() < filled,
            "the flood never filled the places in 30 s; the victim's handshake lines:\n{}",
            handshake_lines(&victim)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut joiner_launch = launch(2);
    joiner_launch
        .extra
        .extend(["--join".into(), format!("{}:7946", lab.ip(1))]);
    let started = Instant::now();
    let joiner = TestNode::launch("joiner", joiner_launch);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(alive_names(&victim).contains(&"joiner".to_string())
        && alive_names(&joiner).contains(&"victim".to_string()))
    {
        assert!(
            Instant::now() < deadline,
            "the joiner is not in 30 s into the flood; the victim's log ends:\n{}",
            victim.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("joined in {:?} during the flood", started.elapsed());
    // The flood still fills the places the joiner does not need.
    let (_, status) = victim.http("GET", "/v1/health", None);
    assert_eq!(status["status"], "ok", "{status}");
}
