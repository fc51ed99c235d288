//! Deploying modules to real node processes: targeted deploys fetched peer
//! to peer, `unchanged` and undeploy; hostile and broken packages; crashing
//! modules, restarts and `failed`; installs that survive a node crash; slow
//! package URLs; and the deployments table across restarts. How a running
//! process module is treated is in `module_runtime.rs`.

mod common;

use common::*;
use conjoiner::cluster::ClusterKey;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// `conjoiner package DIR -o OUT`; answers the printed sha256.
fn package(node: &TestNode, dir: &Path, out: &Path) -> String {
    let output = node.cli(&["package", dir.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(output.status.success(), "package failed: {}", stderr(&output));
    let text = stdout(&output);
    let sha = text.split_whitespace().next().unwrap().to_string();
    assert_eq!(sha.len(), 64, "{text}");
    sha
}

fn installed_sha(node: &TestNode, name: &str) -> Option<String> {
    let record = std::fs::read(node.data_dir().join("mods").join(name).join("install.json")).ok()?;
    let record: Value = serde_json::from_slice(&record).ok()?;
    record["sha256"].as_str().map(str::to_string)
}

fn process_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_targeted_deploy_reaches_exactly_its_nodes_peer_to_peer() {
    let key = ClusterKey::generate();
    let nodes = start_cluster(&[("web-1", "web"), ("web-2", "web"), ("db-1", "db")], &key);
    let [web1, web2, db1] = [&nodes[0], &nodes[1], &nodes[2]];
    wait_converged(&[web1, web2, db1], 3);
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("hello.tar.gz");
    let sha = package(db1, &hello_dir(), &pkg);

    // The origin, db-1, is not targeted: web-1 and web-2 fetch the package
    // from it over the cluster links; no HTTP server runs anywhere.
    let (code, outcome) = cli_json(
        db1,
        &[
            "deploy",
            "hello",
            "--from",
            pkg.to_str().unwrap(),
            "--target",
            "tag.role=web",
            "--config",
            r#"{"greeting":"hej"}"#,
        ],
    );
    assert_eq!(code, 0, "{outcome}");
    let deployed: Vec<_> = deploy_results(&outcome).into_iter().map(|(n, s, _)| (n, s)).collect();
    assert_eq!(
        deployed,
        [
            ("web-1".to_string(), "deployed".to_string()),
            ("web-2".to_string(), "deployed".to_string())
        ]
    );
    assert_eq!(outcome["missing"], json!([]));
    assert_eq!(installed_sha(web1, "hello").as_deref(), Some(sha.as_str()));
    assert_eq!(installed_sha(web2, "hello").as_deref(), Some(sha.as_str()));
    assert!(installed_sha(db1, "hello").is_none(), "the origin was not targeted");
    let config: Value =
        serde_json::from_slice(&std::fs::read(web1.data_dir().join("mods/hello/config.json")).unwrap()).unwrap();
    assert_eq!(
        config,
        json!({"greeting": "hej"}),
        "the deploy's config is merged over the manifest's"
    );

    // Both answer requests; db-1 has no such module.
    let (code, asked) = cli_json(db1, &["request", "mod.hello", r#"{"n":1}"#]);
    assert_eq!(code, 3, "db-1 answers with an error: {asked}");
    let mut greeted: Vec<(String, Value)> = asked["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["node"].as_str().unwrap().to_string(), r["body"]["greeting"].clone()))
        .collect();
    greeted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        greeted,
        [
            ("db-1".to_string(), Value::Null),
            ("web-1".to_string(), json!("hej")),
            ("web-2".to_string(), json!("hej"))
        ]
    );
    let pids: Vec<u64> = [web1, web2]
        .iter()
        .map(|n| ask_node(n, "mod.hello").unwrap()["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.iter().all(|p| process_alive(*p)));

    // The same package and config again: nothing to do.
    let (code, again) = cli_json(
        db1,
        &[
            "deploy",
            "hello",
            "--from",
            pkg.to_str().unwrap(),
            "--target",
            "tag.role=web",
            "--config",
            r#"{"greeting":"hej"}"#,
        ],
    );
    assert_eq!(code, 0, "{again}");
    assert!(
        deploy_results(&again).iter().all(|(_, s, _)| s == "unchanged"),
        "{again}"
    );

    // `modules` on any node lists the module on the two web nodes (from the
    // status reports, which follow a deploy at once).
    wait_for(LIMIT, "modules to list hello on the web nodes", || {
        let (code, listed) = cli_json(web1, &["modules"]);
        let hello_on: Vec<String> = listed
            .as_array()?
            .iter()
            .filter(|n| {
                n["modules"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["name"] == "hello" && m["state"] == "running"))
            })
            .filter_map(|n| n["node"].as_str().map(str::to_string))
            .collect();
        (code == 0 && hello_on == ["web-1", "web-2"]).then_some(())
    });

    // Undeploy: gone from disk, processes stopped.
    let (code, removed) = cli_json(db1, &["undeploy", "hello", "--target", "tag.role=web"]);
    assert_eq!(code, 0, "{removed}");
    assert!(
        deploy_results(&removed).iter().all(|(_, s, _)| s == "undeployed"),
        "{removed}"
    );
    for node in [web1, web2] {
        assert!(!node.data_dir().join("mods/hello").exists());
    }
    for pid in pids {
        wait_for(LIMIT, "the module process to exit", || {
            (!process_alive(pid)).then_some(())
        });
    }

    // A rollout of a module that cannot start on web-1: whichever web node
    // its one-node canary is, the rollout ends reverted if it was web-1,
    // and the other never ran it; or it goes on to web-1 and is reverted
    // there. Either way web-1 fails and nothing stays on it.
    let picky = module_dir(
        tmp.path(),
        "picky",
        "1.0.0",
        "#!/bin/sh\n[ \"$CONJOINER_NODE\" = web-1 ] && exit 7\nwhile IFS= read -r line; do\n  case \"$line\" in *status_request*) echo '{\"op\":\"status\",\"body\":{}}' ;; esac\ndone\n",
        json!({}),
    );
    let picky = picky.to_str().unwrap();
    let rollout = [
        "deploy",
        "picky",
        "--from",
        picky,
        "--target",
        "tag.role=web",
        "--canary",
        "1",
        "--health-window",
        "1s",
    ];
    let (code, reverted) = cli_json(db1, &rollout);
    assert_eq!(code, 3, "{reverted}");
    assert_eq!(reverted["rollout"]["state"], "reverted", "{reverted}");
    let reason = reverted["rollout"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("web-1: start_failed"), "{reason}");
    wait_for(LIMIT, "picky gone from both web nodes", || {
        (!web1.data_dir().join("mods/picky").exists() && !web2.data_dir().join("mods/picky").exists()).then_some(())
    });
}

#[test]
fn bad_packages_are_refused_and_the_running_version_stays() {
    // The node may read `file://` packages from `tmp` only.
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        "solo",
        &["--max-package", "64K", "--package-dir", tmp.path().to_str().unwrap()],
    );
    let good = tmp.path().join("hello.tar.gz");
    let sha = package(&node, &hello_dir(), &good);
    let url = |p: &Path| format!("file://{}", p.display());
    let (code, out) = cli_json(&node, &["deploy", "hello", "--from", &url(&good), "--sha256", &sha]);
    assert_eq!(code, 0, "{out}");
    // Once the deploy has answered, the Deployer's progress has cleared.
    let (_, state) = node.http("GET", "/v1/debug/state", None);
    let goals = &state["modules"]["deployer"]["goals"];
    assert_eq!(goals[0]["module"], "hello", "{goals}");
    assert_eq!(
        (&goals[0]["state"], goals[0].get("reason")),
        (&json!("converged"), None),
        "{goals}"
    );
    let pid = ask_node(&node, "mod.hello").expect("hello answers")["pid"]
        .as_u64()
        .unwrap();

    // What the origin can see is wrong is refused before any entry is
    // written (exit 2, the code in the message)...
    let refused = |from: &str, extra: &[&str], expect: &str| {
        let mut args = vec!["deploy", "hello", "--from", from];
        args.extend_from_slice(extra);
        let out = node.cli(&args);
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{from}: {said}");
        assert!(said.contains(expect), "{from}: expected `{expect}` in {said}");
    };
    // ...and what only installing shows fails on the node, with the reason.
    let deploy_fails = |from: &str, extra: &[&str], expect: &str| {
        let mut args = vec!["deploy", "hello", "--from", from];
        args.extend_from_slice(extra);
        let (code, out) = cli_json(&node, &args);
        let r = deploy_results(&out);
        assert_eq!(code, 1, "{from}: {out}");
        assert_eq!(r.len(), 1, "{out}");
        assert_eq!(r[0].1, "failed");
        assert!(r[0].2.contains(expect), "{from}: expected `{expect}` in {:?}", r[0].2);
    };

    // A wrong sha256.
    refused(&url(&good), &["--sha256", &"0".repeat(64)], "checksum_mismatch");
    // A table entry over its limit (a config of 300 KB).
    let huge = tmp.path().join("huge.json");
    std::fs::write(&huge, json!({"pad": "x".repeat(300 * 1024)}).to_string()).unwrap();
    refused(&url(&good), &["--config", &format!("@{}", huge.display())], "too_large");
    // The node audits it as refused, with why, and not as taken: only the
    // good deploy above was.
    let (code, trail) = cli_json(&node, &["audit", "--module", "hello", "--since", "1h"]);
    assert_eq!(code, 0, "{trail}");
    let lines = trail["lines"].as_array().cloned().unwrap_or_default();
    let taken = lines.iter().filter(|l| l["decision"] == "taken").count();
    assert_eq!(taken, 1, "{trail}");
    let too_large =
        |l: &&Value| l["decision"] == "refused" && l["reason"].as_str().unwrap_or_default().contains("over the limit");
    assert!(lines.iter().any(|l| too_large(&l)), "{trail}");

    // Files outside `--package-dir` are not even opened: neither a file://
    // source, nor a path given to the API, however it is spelled.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.tar.gz");
    std::fs::copy(&good, &secret).unwrap();
    refused(&url(&secret), &[], "path_not_allowed");
    refused("file:///etc/shadow", &[], "path_not_allowed");
    // Both temporary folders share a parent.
    let dotted = tmp
        .path()
        .join("..")
        .join(outside.path().file_name().unwrap())
        .join("secret.tar.gz");
    for path in [
        secret.display().to_string(),
        dotted.display().to_string(),
        "/proc/self/environ".to_string(),
    ] {
        let body = json!({"module": "hello", "source": {"path": path}}).to_string();
        let (status, answer) = node.http("POST", "/v1/deploy", Some(body.as_bytes()));
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("path_not_allowed")),
            "{path}: {answer}"
        );
    }
    // Inside it, a path is read by the node itself.
    let body = json!({"module": "hello", "source": {"path": good}}).to_string();
    let (status, answer) = node.http("POST", "/v1/deploy", Some(body.as_bytes()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], "unchanged", "{answer}");
    // A local path is uploaded by the CLI, as the user running it, so the
    // node needs no --package-dir for it; an upload that is not a package is
    // refused and not kept.
    let (code, out) = cli_json(&node, &["deploy", "hello", "--from", secret.to_str().unwrap()]);
    assert_eq!((code, deploy_results(&out)[0].1.as_str()), (0, "unchanged"), "{out}");
    let (status, answer) = node.http("POST", "/v1/packages", Some(b"not a package at all"));
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("bad_package")),
        "{answer}"
    );

    // Hostile packages, each fetched by the node itself.
    let hostile = |name: &str, build: &dyn Fn(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>)| {
        let path = tmp.path().join(name);
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        ));
        build(&mut tar);
        tar.into_inner().unwrap().finish().unwrap();
        path
    };
    let manifest = br#"{"name":"hello","version":"9","main":"run"}"#;
    let add = |t: &mut tar::Builder<_>, name: &str, data: &[u8], kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(kind);
        h.set_cksum();
        t.append(&h, data).unwrap();
    };
    let dotdot = hostile("dotdot.tar.gz", &|t| {
        add(t, "mod.json", manifest, tar::EntryType::Regular);
        add(t, "../x", b"escape", tar::EntryType::Regular);
    });
    deploy_fails(&url(&dotdot), &[], "`..`");
    let absolute = hostile("abs.tar.gz", &|t| {
        add(t, "mod.json", manifest, tar::EntryType::Regular);
        add(t, "/tmp/conjoiner-abs", b"abs", tar::EntryType::Regular);
    });
    deploy_fails(&url(&absolute), &[], "absolute path");
    let symlink = hostile("link.tar.gz", &|t| {
        add(t, "mod.json", manifest, tar::EntryType::Regular);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        t.append_link(&mut h, "run", "/bin/sh").unwrap();
    });
    deploy_fails(&url(&symlink), &[], "links are refused");
    let big = hostile("big.tar.gz", &|t| {
        add(t, "mod.json", manifest, tar::EntryType::Regular);
        // Random bytes do not compress: the package is over the 64 KiB limit.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        add(t, "run", &noise, tar::EntryType::Regular);
    });
    refused(&url(&big), &[], "too_large");
    let bad_manifest = hostile("manifest.tar.gz", &|t| {
        add(
            t,
            "mod.json",
            br#"{"name":"hello","version":"2"}"#,
            tar::EntryType::Regular,
        );
    });
    refused(&url(&bad_manifest), &[], "`main` is missing");

    // A new version that cannot start is rolled back.
    let broken = module_dir(
        tmp.path(),
        "hello",
        "2.0.0",
        "#!/bin/sh\necho broken >&2\nexit 7\n",
        json!({}),
    );
    let broken_pkg = tmp.path().join("broken.tar.gz");
    package(&node, &broken, &broken_pkg);
    deploy_fails(&url(&broken_pkg), &[], "exited with code 7");
    // Once the deploy has answered, the node's modules say what runs now:
    // version 1, not the failed upgrade restarting.
    let shown = module_state(&node, "hello").expect("hello is listed");
    assert_eq!(
        (&shown["version"], &shown["state"]),
        (&json!("1.0.0"), &json!("running")),
        "{shown}"
    );

    // Through all of it, version 1 stayed installed and answers; the failed
    // upgrade restarted it from its own install.
    assert_eq!(installed_sha(&node, "hello").as_deref(), Some(sha.as_str()));
    let after = ask_node(&node, "mod.hello").expect("hello still answers");
    assert!(after["greeting"] == "hello");
    let _ = pid;
    let leftovers: Vec<String> = std::fs::read_dir(node.data_dir().join("mods"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["hello"], "no staging folders or other installs remain");
    assert!(!Path::new("/tmp/conjoiner-abs").exists());

    // The cache keeps only valid packages, private to the node's user: a
    // refused file (it could have been /etc/shadow) leaves no copy.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let cache = node.data_dir().join("packages");
    assert_eq!(mode(&node.data_dir()), 0o700, "the data dir is private");
    assert_eq!(mode(&cache), 0o700, "the package cache is private");
    let sha_of = |p: &Path| conjoiner::deploy::package::sha256_file(p).unwrap();
    let mut cached: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        assert_eq!(mode(&entry.path()), 0o600, "{:?} is private", entry.file_name());
        cached.push(entry.file_name().to_string_lossy().into_owned());
    }
    cached.sort();
    let mut expected = vec![format!("{sha}.tar.gz"), format!("{}.tar.gz", sha_of(&broken_pkg))];
    expected.sort();
    assert_eq!(
        cached,
        expected,
        "only the two valid packages are cached (refused: {})",
        [&dotdot, &absolute, &symlink, &bad_manifest]
            .iter()
            .map(|p| sha_of(p))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn crashing_modules_are_restarted_then_failed_and_installs_survive_a_node_crash() {
    let mut node = TestNode::start("phoenix", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // Exits 3 whenever it gets a request.
    let crashy = module_dir(
        tmp.path(),
        "crashy",
        "1.0.0",
        "#!/bin/sh\nwhile IFS= read -r line; do case \"$line\" in *'\"type\":\"request\"'*) exit 3;; esac; done\n",
        json!({"restart": {"policy": "on-failure", "max_restarts": 2, "period_secs": 60}}),
    );
    for (name, dir) in [("crashy", crashy.as_path()), ("hello", hello_dir().as_path())] {
        let (code, out) = cli_json(&node, &["deploy", name, "--from", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
    }
    for restarts in 1..=2u64 {
        let _ = cli_json(&node, &["request", "mod.crashy", "{}", "--timeout", "300ms"]);
        wait_module(&node, "crashy", &format!("running after {restarts} restarts"), |m| {
            m["restarts"] == restarts && m["state"] == "running"
        });
    }
    let _ = cli_json(&node, &["request", "mod.crashy", "{}", "--timeout", "300ms"]);
    let failed = wait_module(&node, "crashy", "failed", |m| m["state"] == "failed");
    assert_eq!(failed["restarts"], 2);
    let table = stdout(&node.cli(&["modules"]));
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("crashy"))
        .expect("crashy listed");
    assert!(line.contains("failed"), "{table}");
    assert!(node.log_text().contains("module failed"), "the failure is logged");

    // Crash the node: its module processes die with it. Leave the debris of
    // a deploy cut short, then start it again on the same data dir.
    let pid = ask_node(&node, "mod.hello").unwrap()["pid"].as_u64().unwrap();
    node.kill9();
    wait_for(LIMIT, "the module process to die with its node", || {
        (!process_alive(pid)).then_some(())
    });
    let mods = node.data_dir().join("mods");
    std::fs::create_dir_all(mods.join(".staging-cut-short/bin")).unwrap();
    std::fs::create_dir_all(mods.join("half")).unwrap();
    std::fs::write(mods.join("half/mod.json"), "{}").unwrap();
    node.restart();
    let back = wait_for(LIMIT, "hello to answer after the restart", || {
        ask_node(&node, "mod.hello")
    });
    assert_ne!(back["pid"].as_u64().unwrap(), pid, "a new process");
    wait_module(&node, "crashy", "running again", |m| {
        m["state"] == "running" && m["restarts"] == 0
    });
    let mut left: Vec<String> = std::fs::read_dir(&mods)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["crashy", "hello"], "the half-written installs were cleaned up");
    assert!(node.log_text().contains("removed the half-written install of half"));
}

/// Serves an endless body one byte a second, as a broken or hostile
/// server would; answers the URL.
fn trickling_server() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
                while conn.write_all(b"x").is_ok() {
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    format!("http://{addr}/slow.tar.gz")
}

#[test]
fn a_slow_package_url_holds_only_its_own_module_and_fails_as_stalled() {
    let node = TestNode::start("patient", &[]);
    let url = trickling_server();
    let mut slow = node.cli_spawn(&["--json", "deploy", "slowpoke", "--from", &url]);
    wait_for(LIMIT, "the slow deploy to start fetching", || {
        node.log_text().contains("module_name=slowpoke").then_some(())
    });

    // Another module deploys meanwhile.
    let hello = hello_dir();
    let (code, out) = cli_json(&node, &["deploy", "hello", "--from", hello.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(deploy_results(&out)[0].1, "deployed", "{out}");
    assert!(
        slow.child.try_wait().unwrap().is_none(),
        "the slow deploy is still fetching"
    );

    // The trickle is judged a stall (16 KiB in 15 s), not waited on for
    // 300 s; the origin fetches a package before it writes the entry, so
    // the deploy is refused there, and no node is asked to fetch it.
    let status = wait_for(Duration::from_secs(60), "the slow deploy to end", || {
        slow.child.try_wait().unwrap()
    });
    let said: String = slow.stderr.try_iter().collect::<Vec<_>>().join("\n");
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains("fetch_failed") && said.contains("stalled"), "{said}");
    let (_, table) = cli_json(&node, &["deployments", "--module", "slowpoke"]);
    assert_eq!(table, json!([]), "no entry was written");
}

/// A module whose package holds `files` data files, so unpacking it takes a
/// while; answers requests with nothing but is listed with its version.
fn bulky_dir(root: &Path, version: &str, files: usize) -> std::path::PathBuf {
    let script = "#!/bin/sh\nwhile IFS= read -r line; do :; done\n";
    let dir = module_dir(root, "bulky", version, script, json!({}));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for i in 0..files {
        std::fs::write(dir.join("data").join(format!("f{i}")), format!("{version} {i}\n")).unwrap();
    }
    dir
}

#[test]
fn a_node_killed_during_a_deploy_keeps_one_whole_version() {
    let mut node = TestNode::start("sturdy", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let versions = [("1.0.0", 20usize), ("2.0.0", 3000usize)];
    let dirs: Vec<std::path::PathBuf> = versions
        .iter()
        .map(|(v, n)| bulky_dir(&tmp.path().join(v), v, *n))
        .collect();
    let (code, out) = cli_json(&node, &["deploy", "bulky", "--from", dirs[0].to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // How long a whole upgrade takes here (packaging, fetch, unpack, swap,
    // one second of probation), and back.
    let started = std::time::Instant::now();
    let (code, out) = cli_json(&node, &["deploy", "bulky", "--from", dirs[1].to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let whole = started.elapsed();
    let (code, out) = cli_json(&node, &["deploy", "bulky", "--from", dirs[0].to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let mods = node.data_dir().join("mods");
    // Kill at moments spread over packaging, fetch, unpack, swap and
    // probation.
    let delays = [0.15, 0.4, 0.6, 0.8, 0.95].map(|f| whole.mul_f64(f).as_millis() as u64);
    for (round, delay_ms) in delays.into_iter().enumerate() {
        let installed = installed_version(&mods).expect("a whole install before the round");
        let next = if installed == "1.0.0" { 1 } else { 0 };
        let mut deploy = node.cli_spawn(&["--json", "deploy", "bulky", "--from", dirs[next].to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill9();
        let _ = deploy.child.kill();
        let _ = deploy.child.wait();
        node.restart();

        // Exactly one whole version is installed, and it is the one running:
        // the one the newest table entry names (the deploy was written to
        // the table before the kill, or not), which the node converged to
        // on its own after the restart.
        let version = wait_for(LIMIT, &format!("round {round}: bulky to run as the table asks"), || {
            let running = module_state(&node, "bulky").filter(|m| m["state"] == "running")?;
            let version = running["version"].as_str()?.to_string();
            let (_, table) = cli_json(&node, &["deployments", "--module", "bulky"]);
            let newest = table.as_array()?.first()?.clone();
            let converged = newest["converged"] == 1 && newest["nodes"] == 1;
            let record: Value = serde_json::from_slice(&std::fs::read(mods.join("bulky/install.json")).ok()?).ok()?;
            (converged && record["sha256"] == newest["sha256"] && installed_version(&mods) == Some(version.clone()))
                .then_some(version)
        });
        let expected_files = versions.iter().find(|(v, _)| *v == version).unwrap().1;
        let files = std::fs::read_dir(mods.join("bulky/data")).unwrap().count();
        assert_eq!(
            files, expected_files,
            "round {round}: all of {version}, none of the other"
        );
        let mut left: Vec<String> = std::fs::read_dir(&mods)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["bulky"],
            "round {round} (killed after {delay_ms} ms): no leftovers"
        );
        eprintln!(
            "round {round}: killed {delay_ms} ms into {installed} → {}: {version} runs",
            versions[next].0
        );
    }
}

/// The version in an install whose record says it is complete.
fn installed_version(mods: &Path) -> Option<String> {
    let record: Value = serde_json::from_slice(&std::fs::read(mods.join("bulky/install.json")).ok()?).ok()?;
    let manifest: Value = serde_json::from_slice(&std::fs::read(mods.join("bulky/mod.json")).ok()?).ok()?;
    let version = record["version"].as_str()?;
    (manifest["version"].as_str() == Some(version)).then(|| version.to_string())
}

#[test]
fn a_node_killed_during_a_deploy_converges_when_it_restarts_with_no_command() {
    let key = ClusterKey::generate();
    let mut nodes = start_cluster(&[("k-1", "web"), ("k-2", "web"), ("k-3", "web")], &key);
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2]], 3);
    nodes[2].kill9();
    wait_for(LIMIT, "k-1 to see k-3 dead", || {
        (member_status(&nodes[0], "k-3").as_deref() == Some("dead")).then_some(())
    });
    let (code, outcome) = cli_json(&nodes[0], &["deploy", "hello", "--from", hello_dir().to_str().unwrap()]);
    assert_eq!(code, 3, "{outcome}");
    assert_eq!(outcome["absent"][0]["node"], "k-3", "k-3 is named: {outcome}");
    assert!(outcome["absent"][0]["note"]
        .as_str()
        .unwrap()
        .contains("when it returns"));
    assert_eq!(deploy_results(&outcome).len(), 2, "{outcome}");
    assert!(installed_sha(&nodes[2], "hello").is_none());

    nodes[2].restart();
    let k3 = &nodes[2];
    wait_for(LIMIT, "k-3 to run hello after its restart", || {
        module_state(k3, "hello")
            .filter(|m| m["state"] == "running")
            .map(|_| ())
    });
    assert_eq!(installed_sha(k3, "hello"), installed_sha(&nodes[0], "hello"));
    let (code, table) = cli_json(k3, &["deployments"]);
    assert_eq!(code, 0, "{table}");
    wait_for(LIMIT, "the table to show hello converged on all three", || {
        let (_, table) = cli_json(k3, &["deployments"]);
        let e = table.as_array()?.first()?.clone();
        (e["converged"] == 3 && e["nodes"] == 3).then_some(())
    });
}

#[test]
fn a_corrupt_table_file_is_kept_aside_and_the_table_learnt_from_the_peers() {
    let key = ClusterKey::generate();
    let mut nodes = start_cluster(&[("f-1", "web"), ("f-2", "web")], &key);
    wait_converged(&[&nodes[0], &nodes[1]], 2);
    let (code, out) = cli_json(&nodes[0], &["deploy", "hello", "--from", hello_dir().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let table = nodes[1].data_dir().join("deployments.json");
    wait_for(LIMIT, "f-2 to keep the table on disk", || table.exists().then_some(()));

    nodes[1].kill9();
    std::fs::write(&table, b"{\"format\":1,\"entries\":[{\"key\": oops").unwrap();
    nodes[1].restart();
    let f2 = &nodes[1];
    wait_for(LIMIT, "f-2 to say the table file does not read", || {
        f2.log_text()
            .contains("the deployments table file does not read")
            .then_some(())
    });
    let kept: Vec<String> = std::fs::read_dir(f2.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("deployments.json.bad-"))
        .collect();
    assert_eq!(kept.len(), 1, "the bad file is kept aside, not deleted");
    // The table comes back from f-1, and hello was never removed.
    wait_for(LIMIT, "f-2 to hold the table again", || {
        let (_, table) = cli_json(f2, &["deployments"]);
        (table.as_array()?.len() == 1).then_some(())
    });
    assert!(installed_sha(f2, "hello").is_some());
    wait_for(LIMIT, "f-2 to write the table anew", || {
        let text = std::fs::read_to_string(f2.data_dir().join("deployments.json")).ok()?;
        text.contains("\"module\":\"hello\"").then_some(())
    });
    let (code, _) = cli_json(f2, &["status"]);
    assert_eq!(code, 0, "the node is healthy");
}
