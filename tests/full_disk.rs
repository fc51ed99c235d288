//! A full disk is named as such: a deploy that cannot be written for want
//! of space fails with `disk_full`, never `bad_package`, and the node keeps
//! running. The disk is a small tmpfs mounted over the node's module store
//! and package cache, so the test needs root (CI runs as root).

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted at `at`, lazily unmounted when the test ends
/// however it ends.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_named_and_the_package_is_not_blamed() {
    if !is_root() {
        eprintln!("skipped: mounting a small disk needs root; CI runs as root");
        return;
    }
    let node = TestNode::start("fulldisk", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // 8 MB of zeros: a package of a few KB that unpacks past a 1 MB disk.
    let dir = module_dir(tmp.path(), "roomy", "1.0.0", "#!/bin/sh\nexec cat\n", json!({}));
    std::fs::write(dir.join("blob"), vec![0u8; 8 << 20]).unwrap();
    let _store = SmallDisk::mount(&node.data_dir().join("mods"), "1m");

    let (code, out) = cli_json(&node, &["deploy", "roomy", "--from", dir.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    let result = &out["results"][0];
    assert_eq!(
        (result["status"].as_str(), result["code"].as_str()),
        (Some("failed"), Some("disk_full")),
        "{out}"
    );
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the disk is full") && error.contains("No space left on device"),
        "{out}"
    );

    // The package was fine, so it stays cached for the next try.
    let cache = node.data_dir().join("packages");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
        .collect();
    assert_eq!(cached.len(), 1, "the package is kept in {}", cache.display());

    // An upload that does not fit in the package cache is the node's
    // fault too: 507, not a bad package.
    let _cache = SmallDisk::mount(&node.data_dir().join("packages"), "1m");
    let (status, answer) = node.http("POST", "/v1/packages", Some(&noise(2 << 20, 0x2545_f491_4f6c_dd1d)));
    assert_eq!((status, answer["code"].as_str()), (507, Some("disk_full")), "{answer}");

    // The node is still up, and the table says why it is behind.
    let (status, health) = node.http("GET", "/v1/health", None);
    assert_eq!(status, 200, "{health}");
    let (status, table) = node.http("GET", "/v1/deployments", None);
    assert_eq!(status, 200, "{table}");
    assert!(table.to_string().contains("the disk is full"), "{table}");
    assert!(
        node.log_text().contains("the disk is full"),
        "and its log names the cause"
    );
}
