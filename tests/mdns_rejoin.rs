//! A node refused its name (another live node holds it) gets into the
//! cluster by mDNS alone soon after the holder leaves: three "hosts" in
//! network namespaces, no `--join`. Before peers were offered again, this
//! took about 82 s, waiting for mdns-sd to resolve a peer anew.
//!
//! Needs root and iproute2 (`.ci/run` installs it). Without them the test
//! fails with the reason; it never skips silently.

mod common;

use common::netlab::Netlab;
use common::*;
use conjoiner::cluster::ClusterKey;
use std::time::{Duration, Instant};

#[test]
fn a_refused_duplicate_joins_by_mdns_soon_after_the_holder_leaves() {
    let lab = Netlab::new(3)
        .unwrap_or_else(|e| panic!("cannot build the network namespace lab (this test needs root and iproute2): {e}"));
    let key = ClusterKey::generate();
    let host = |i: usize, name: &str| {
        TestNode::launch(
            name,
            Launch {
                netns: Some(lab.namespace(i)),
                http: Some(format!("{}:7373", lab.ip(i))),
                env: vec![("CONJOINER_KEY".into(), key.to_base64())],
                extra: vec!["--bind".into(), "0.0.0.0:7946".into()],
                no_loopback_defaults: true,
                umask: None,
            },
        )
    };
    let mut holder = host(1, "dup");
    let keeper = host(2, "keeper");
    for node in [&holder, &keeper] {
        wait_for(Duration::from_secs(30), "the two to find each other", || {
            (alive_names(node) == ["dup", "keeper"]).then_some(())
        });
    }
    let duplicate = host(3, "dup");
    wait_for(Duration::from_secs(30), "the duplicate to be refused", || {
        let (_, status) = duplicate.http("GET", "/v1/status", None);
        status["refused"].is_object().then_some(())
    });

    // The holder stays a while, as in real life: long enough that the
    // duplicate's first mDNS answers are old news.
    let refused = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the duplicate to stay refused for 30 s",
        || {
            let (_, status) = duplicate.http("GET", "/v1/status", None);
            assert!(
                status["refused"].is_object(),
                "let in while the holder lives: {status}\n{}",
                duplicate.log_text()
            );
            (refused.elapsed() > Duration::from_secs(30)).then_some(())
        },
    );
    holder.signal(libc::SIGTERM);
    assert!(holder.wait_exit(Duration::from_secs(15)).success());
    let left = Instant::now();
    // Peers are offered again (each address at most every 15 s), and a
    // peer that links to it hands it the table: in well within the old 82 s.
    let deadline = left + Duration::from_secs(40);
    loop {
        let (_, status) = duplicate.http("GET", "/v1/status", None);
        if status["refused"].is_null() && alive_names(&duplicate) == ["dup", "keeper"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the duplicate did not join within 40 s of the holder leaving: {status}\n--- duplicate log ---\n{}\n--- keeper log ---\n{}",
            duplicate.log_text(),
            keeper.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the duplicate joined {:?} after the holder left", left.elapsed());
    wait_for(Duration::from_secs(30), "the keeper to list the new dup alive", || {
        (alive_names(&keeper) == ["dup", "keeper"]).then_some(())
    });
}
