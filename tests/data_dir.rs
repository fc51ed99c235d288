//! A data dir another user could have prepared is refused at start, and the
//! node touches nothing outside it: not a planted token, not the files that
//! planted links name.

mod common;

use common::*;
use std::os::unix::fs::{chown, symlink, MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;

/// An agent process, killed when the test ends however it ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_on(data: &Path) -> Agent {
    let child = Command::new(BIN)
        .args(["agent", "--name", "planted", "--bind", "127.0.0.1:0", "--no-mdns"])
        .args(["--http", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_remove("CONJOINER_HTTP")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn conjoiner agent");
    Agent(child)
}

/// Starts an agent on `data` and waits for it to give up: its exit code
/// and what it said.
fn refused(data: &Path) -> (Option<i32>, String) {
    let mut agent = agent_on(data);
    let status = wait_for(Duration::from_secs(20), "the agent to refuse its data dir", || {
        agent.0.try_wait().unwrap()
    });
    let mut said = String::new();
    std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut said).unwrap();
    (status.code(), said)
}

/// The refusal the operator guide shows, for a directory of `nobody`'s at
/// `/srv/shared`.
fn documented_refusal() -> String {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("read docs/operations.md");
    guide
        .lines()
        .find(|l| l.starts_with("conjoiner: /srv/shared is owned by uid 65534"))
        .expect("docs/operations.md shows the refusal of a data dir of nobody's")
        .to_string()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_data_dir_another_user_could_plant_is_refused_and_nothing_outside_is_touched() {
    if !is_root() {
        eprintln!("skipped: planting files of another user needs root; CI runs as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Two of root's files outside the data dir, which planted links name.
    let victims = [tmp.path().join("victim-http"), tmp.path().join("victim-cluster")];
    for v in &victims {
        std::fs::write(v, "precious").unwrap();
    }
    // The data dir as `nobody` left it: theirs, open to all, with a token
    // of their choosing and links where the node writes its addresses.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let token = data.join("api.token");
    std::fs::write(&token, "planted0planted0planted0planted0\n").unwrap();
    symlink(&victims[0], data.join("http.addr")).unwrap();
    symlink(&victims[1], data.join("cluster.addr")).unwrap();
    chown(&token, Some(NOBODY), Some(NOBODY)).unwrap();
    chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    set_mode(&data, 0o777);

    let (code, said) = refused(&data);
    assert_eq!(code, Some(1), "{said}");
    let documented = documented_refusal().replace("/srv/shared", &data.display().to_string());
    assert!(
        said.contains(&documented),
        "said {said}\nbut the guide shows {documented}"
    );
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (NOBODY, 0o777),
        "someone else's directory is not changed into use"
    );

    // Root's own now, but still open to everyone.
    chown(&data, Some(0), Some(0)).unwrap();
    let (code, said) = refused(&data);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("has mode 0777") && said.contains("chmod go-w"), "{said}");

    // Closed, but the token inside is still another user's.
    set_mode(&data, 0o700);
    let (code, said) = refused(&data);
    assert!(
        code == Some(1) && said.contains("api.token is owned by uid 65534"),
        "{said}"
    );

    // The token is the operator's now; the links are still there.
    chown(&token, Some(0), Some(0)).unwrap();
    let (code, said) = refused(&data);
    assert!(code == Some(1) && said.contains("is a symbolic link"), "{said}");
    for v in &victims {
        assert_eq!(std::fs::read_to_string(v).unwrap(), "precious", "{}", v.display());
    }

    // Without them it starts, and writes its own address files.
    std::fs::remove_file(data.join("http.addr")).unwrap();
    std::fs::remove_file(data.join("cluster.addr")).unwrap();
    let mut agent = agent_on(&data);
    wait_for(Duration::from_secs(20), "the node to write http.addr", || {
        if let Some(status) = agent.0.try_wait().unwrap() {
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut said);
            panic!("the agent exited with {status}: {said}");
        }
        std::fs::read_to_string(data.join("http.addr"))
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    for v in &victims {
        assert_eq!(std::fs::read_to_string(v).unwrap(), "precious", "{}", v.display());
    }
}

/// Under a umask of 000 the folders a node made in its data dir were open
/// to everyone, and its next start refused them. The node keeps its own
/// files private; its modules still get the umask it was started with.
#[test]
fn under_umask_000_the_node_keeps_its_files_private_and_starts_again() {
    let out = tempfile::tempdir().unwrap();
    let seen = out.path().join("module-umask");
    let mut node = TestNode::launch(
        "umask0",
        Launch {
            umask: Some(0),
            env: vec![("UMASK_SEEN".into(), seen.display().to_string())],
            ..Launch::default()
        },
    );
    let pkg = module_dir(
        out.path(),
        "masked",
        "1.0.0",
        "#!/bin/sh\numask > \"$UMASK_SEEN\"\nexec cat >/dev/null\n",
        serde_json::json!({}),
    );
    let deployed = node.cli(&["deploy", "masked", "--from", pkg.to_str().unwrap()]);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    let mask = wait_for(Duration::from_secs(30), "the module to write its umask", || {
        std::fs::read_to_string(&seen).ok().filter(|s| !s.trim().is_empty())
    });
    assert_eq!(
        u32::from_str_radix(mask.trim(), 8).ok(),
        Some(0),
        "the module runs under the umask the agent was given: {mask}"
    );

    // Nothing the node made may be written by others.
    let mut open = Vec::new();
    let mut dirs = vec![(node.data_dir(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.permissions().mode() & 0o022 != 0 {
                open.push(format!(
                    "{} {:o}",
                    entry.path().display(),
                    meta.permissions().mode() & 0o777
                ));
            }
            if meta.is_dir() && depth < 2 {
                dirs.push((entry.path(), depth + 1));
            }
        }
    }
    assert!(open.is_empty(), "writable by others: {open:?}");

    // And it starts again on the same data dir (before, it refused it).
    node.restart();
    let (code, _) = node.http("GET", "/v1/health", None);
    assert_eq!(code, 200);
}
