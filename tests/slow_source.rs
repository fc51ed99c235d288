//! A slow package URL must not hold a node's step slots: when peers hold
//! the package too, a node gives the URL a deadline by the package's size
//! and then fetches it from them, so another module's deploy still starts
//! within seconds.

mod common;

use common::*;
use conjoiner::cluster::ClusterKey;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves the files in `dir` by name: the first request for each whole
/// and at once (the origin's), every later one at 1.5 KB/s, above the
/// stall rule's 16 KiB in 15 s. Answers its address and how many slow
/// answers are being sent now.
fn fast_then_slow_server(files: HashMap<String, Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    let served: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
    let trickling = Arc::new(AtomicUsize::new(0));
    let now_trickling = trickling.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (files, served, trickling) = (files.clone(), served.clone(), trickling.clone());
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut request = [0u8; 4096];
                let n = conn.read(&mut request).unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..n]).to_string();
                let name = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_string();
                let Some(body) = files.get(&name) else {
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                let times = {
                    let mut served = served.lock().unwrap();
                    let count = served.entry(name).or_insert(0);
                    *count += 1;
                    *count
                };
                let _ = conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
                if times == 1 {
                    let _ = conn.write_all(body);
                    return;
                }
                trickling.fetch_add(1, Ordering::SeqCst);
                for piece in body.chunks(150) {
                    if conn.write_all(piece).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                trickling.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{addr}"), now_trickling)
}

/// A module folder with a 256 KB blob that does not compress.
fn module_with_blob(root: &Path, name: &str, seed: u64) -> std::path::PathBuf {
    let dir = module_dir(root, name, "1.0.0", "#!/bin/sh\nexec cat\n", json!({}));
    std::fs::write(dir.join("blob"), noise(256 * 1024, seed)).unwrap();
    dir
}

#[test]
fn four_slow_urls_do_not_hold_back_another_modules_deploy() {
    let key = ClusterKey::generate();
    let nodes = start_cluster(&[("origin", "web"), ("fetcher", "web")], &key);
    wait_converged(&[&nodes[0], &nodes[1]], 2);
    let (origin, fetcher) = (&nodes[0], &nodes[1]);
    let tmp = tempfile::tempdir().unwrap();

    let mut files = HashMap::new();
    let mut shas = Vec::new();
    for i in 1..=4 {
        let name = format!("slow{i}");
        let dir = module_with_blob(tmp.path(), &name, i);
        let out = tmp.path().join(format!("{name}.tar.gz"));
        let made = origin.cli(&["package", dir.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(made.status.success(), "{}", stderr(&made));
        shas.push(stdout(&made).split_whitespace().next().unwrap().to_string());
        files.insert(format!("{name}.tar.gz"), std::fs::read(&out).unwrap());
    }
    let (server, trickling) = fast_then_slow_server(files);

    // Four deploys from the URLs: the origin gets each at once, the other
    // node at 1.5 KB/s (about three minutes for each package).
    for (i, sha) in shas.iter().enumerate() {
        let name = format!("slow{}", i + 1);
        let url = format!("{server}/{name}.tar.gz");
        let _ = cli_json(
            origin,
            &["deploy", &name, "--from", &url, "--sha256", sha, "--timeout", "1s"],
        );
    }
    wait_for(
        Duration::from_secs(30),
        "the other node to fetch all four slowly",
        || (trickling.load(Ordering::SeqCst) == 4).then_some(()),
    );

    // Another module, from a folder: the other node runs it within
    // seconds, not after the slow downloads.
    let quick = module_dir(tmp.path(), "quick", "1.0.0", "#!/bin/sh\nexec cat\n", json!({}));
    let _ = cli_json(
        origin,
        &["deploy", "quick", "--from", quick.to_str().unwrap(), "--timeout", "1s"],
    );
    wait_module(fetcher, "quick", "running", |m| m["state"] == "running");
    // And the slow ones came from the peers instead.
    for i in 1..=4 {
        wait_module(fetcher, &format!("slow{i}"), "running", |m| m["state"] == "running");
    }
    assert!(
        fetcher
            .log_text()
            .contains("the URL did not deliver the package within"),
        "the node says why it left the URL"
    );
}
