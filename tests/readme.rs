//! The README's quick-start transcript is a real demo run (`make readme`
//! copies it). This test runs the demo and checks that the README still
//! shows the same commands, in the same order, with the same table headers
//! and the same summary lines, so the two cannot drift apart unnoticed.
//! Figures that change on every run (ports, times, pids) are not compared.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_conjoiner");

/// The lines that say what was run and what shape its answer had: the
/// commands, the table headers, and the lines that sum a result up, each
/// with its figures masked.
fn shape(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter(|l| {
            l.starts_with("$ ")
                || l.starts_with("NAME ")
                || l.starts_with("NODE ")
                || l.starts_with("ID ")
                // Only the rollout's end: how many waves a poll catches
                // on the way depends on the machine's pace.
                || (l.starts_with("rollout ") && l.contains(", done,"))
                || l.ends_with("targeted")
                || l.contains(" deployed")
                || l.contains(" failing;")
        })
        .map(|l| {
            // A rollout's id is random hex: only its place is compared.
            let l = match l.strip_prefix("rollout ").and_then(|rest| rest.split_once(':')) {
                Some((_, rest)) => format!("rollout ID:{rest}"),
                None => l.to_string(),
            };
            // Each run of digits becomes one `9`: "deployed 1.0.0 (1025 ms)"
            // and "(987 ms)" have the same shape.
            let mut masked = String::new();
            for c in l.chars() {
                if !c.is_ascii_digit() {
                    masked.push(c);
                } else if !masked.ends_with('#') {
                    masked.push('#');
                }
            }
            masked.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect()
}

#[test]
fn the_readme_transcript_shows_what_the_demo_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("<!-- demo output")
        .expect("README.md marks the demo transcript");
    let end = readme[start..]
        .find("<!-- end of demo output -->")
        .map(|e| start + e)
        .expect("README.md marks the end of the demo transcript");
    let in_readme = shape(&readme[start..end]);

    // Both streams, as a person running it sees them (and as `make readme`
    // copies them): deploy progress goes to stderr.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("scripts/demo.sh {BIN} 2>&1"))
        .current_dir(root)
        .output()
        .expect("run scripts/demo.sh");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the demo failed: {printed}");
    let from_demo = shape(&printed);
    assert!(from_demo.len() >= 10, "the demo printed too little: {printed}");
    assert_eq!(
        in_readme, from_demo,
        "README.md's demo transcript no longer matches the demo: run `make readme`"
    );
}
