//! Whatever the answers hold, the CLI's screens print them and never
//! panic. A peer can report anything (names, tags, reasons, statuses,
//! counts), so every screen is fed real answers with their values swapped
//! at random for hostile ones: very long text, control characters, wide
//! and combining characters, extreme numbers, missing parts, many rows.
//! Table rows stay one line each, cut cells are marked `…`, and terminal
//! escapes are written out, never sent to the terminal.

use super::members::MAX_CELL_CHARS;
use super::{audit, deployments, members, modules, status};
use crate::actors::{Member, MemberStatus};
use crate::audit::{AuditLine, Decision};
use crate::deploy::converge::{Goal, GoalState};
use crate::deploy::table::Action;
use crate::deploy::view::EntryView;
use crate::monitor::answer::{Isolation, StatusAnswer};
use crate::monitor::board::{summarize, Health, ModuleReport, NodeReport, NodeView, StatusBoard};
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Cases per screen; each is a fresh mutation of the real answer.
const CASES: u64 = 200;

fn module(name: &str, health: Health, reason: Option<&str>) -> ModuleReport {
    ModuleReport {
        name: name.into(),
        kind: "process".into(),
        version: "1.2.0".into(),
        state: "running".into(),
        health,
        restarts: 2,
        uptime_ms: 93_000,
        status: json!({"health": "degraded", "queue": 3, "detail": {"peer": "db1"}}),
        status_error: None,
        health_reason: reason.map(Into::into),
        sha256: Some("ab".repeat(32)),
        last_exit: Some("exited with code 1".into()),
        reported_health: None,
    }
}

fn report(node: &str) -> NodeReport {
    NodeReport {
        node: node.into(),
        tags: [("role".to_string(), "web".to_string())].into(),
        version: "0.1.0".into(),
        started_ms: 1_764_000_000_000,
        round: 7,
        uptime_ms: 600_000,
        interval_ms: 1000,
        refresh_ms: 10_000,
        host: json!({"load": [0.5, 0.4, 0.3], "mem_used_bytes": 1_000_000}),
        cluster: json!({"links": 4}),
        modules: vec![
            module("transponder", Health::Ok, None),
            module("web", Health::Degraded, Some("the database answers slowly")),
            module("api", Health::Failing, Some("port 8080 is taken")),
        ],
        desired: vec![Goal {
            module: "api".into(),
            entry: "0192f1e4-7b7c-7d2a-9a51-0a1b2c3d4e5f".into(),
            clock: 3,
            action: Action::Deploy,
            state: GoalState::Failed,
            reason: Some("no peer could send the package".into()),
            code: Some("fetch_failed".into()),
            failures: 2,
            retry_in_ms: Some(9_500),
        }],
    }
}

fn member(name: &str, status: MemberStatus) -> Member {
    Member {
        name: name.into(),
        addr: Some("10.0.0.7:7946".into()),
        status,
        tags: [
            ("role".to_string(), "web".to_string()),
            ("dc".to_string(), "a".to_string()),
        ]
        .into(),
        incarnation: 4,
        since_ms: 2600,
        boot_ms: 1_764_000_000_000,
        identity: None,
    }
}

fn members_sample() -> Vec<Member> {
    vec![
        member("n1", MemberStatus::Alive),
        member("n2", MemberStatus::Dead),
        member("n3", MemberStatus::Suspect),
        member("n4", MemberStatus::Left),
    ]
}

fn nodes_sample() -> Vec<NodeView> {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    for n in ["n1", "n2", "n3"] {
        board.record(report(n), t0);
    }
    board.view(&members_sample(), t0 + Duration::from_millis(1500))
}

fn status_sample() -> StatusAnswer {
    let nodes = nodes_sample();
    StatusAnswer {
        node: "n1".into(),
        cluster: "prod".into(),
        identity: String::new(),
        status_interval_ms: 1000,
        isolated: Some(Isolation {
            seeds: vec!["10.0.0.2:7946".into()],
            known_peers: 3,
        }),
        refused: None,
        operator_keys: vec!["cjop1abc (deploy: *)".into()],
        module_containment: "process tree (cgroup v2 is not mounted)".into(),
        summary: summarize(&nodes),
        shown: nodes.len(),
        nodes,
    }
}

fn deployments_sample() -> Value {
    json!([{
        "id": "0192f1e4-7b7c-7d2a-9a51-0a1b2c3d4e5f", "module": "web", "target": "tag.role=web",
        "action": "deploy", "sha256": "ab".repeat(32),
        "version": {"clock": 7, "origin": "n1"}, "signed_by": "cjop1abc",
        "ts": 1_764_000_000_000u64, "age_ms": 2000,
        "rollout": {"released": 0.25, "state": "paused",
                    "policy": {"canary": {"nodes": 1}, "batch": {"percent": 25.0}, "health_window_ms": 30000,
                               "max_failed": {"nodes": 1}, "revert": true},
                    "wave_at_ms": 1_764_000_000_000u64, "wave": 2, "reason": "n3 failed its health window"},
        "converged": 2, "nodes": 3,
        "behind": [{"node": "n3", "reason": "port 8080 is taken", "failed": true}],
        "superseded_on": 0, "later": 4, "absent": ["n4"],
    }])
}

fn audit_sample() -> Vec<AuditLine> {
    vec![AuditLine {
        ts: 1_764_000_000_123,
        node: "n1".into(),
        id: Some("0192f1e4-7b7c-7d2a-9a51-0a1b2c3d4e5f".into()),
        kind: "deploy".into(),
        module: "web".into(),
        target: Some("tag.role=web".into()),
        origin: Some("n1".into()),
        key: Some("cjop1abc".into()),
        decision: Decision::Refused,
        status: Some("failed".into()),
        reason: Some("not_authorized: the key may not deploy web".into()),
        sig: None,
    }]
}

/// Text a peer might send: long, wide, combining, with controls and
/// terminal escapes.
fn hostile_text(rng: &mut SmallRng) -> String {
    const PIECES: [&str; 10] = [
        "n",
        "é",
        "\u{301}",
        "界",
        "🦀",
        "\n",
        "\u{1b}[31m",
        "\u{0}",
        "\t",
        "\u{202e}",
    ];
    let len = match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(1..20),
        2 => rng.random_range(MAX_CELL_CHARS - 2..MAX_CELL_CHARS + 3),
        _ => rng.random_range(10_000..120_000),
    };
    let piece = PIECES[rng.random_range(0..PIECES.len())];
    (0..len)
        .map(|i| {
            if i % 7 == 0 {
                PIECES[rng.random_range(0..PIECES.len())]
            } else {
                piece
            }
        })
        .collect()
}

/// One way to change a value of the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Text,
    Number(u8),
    Flip,
    Null,
    Empty,
    Grow,
}

const NUMBERS: u8 = 7;

/// Applies `change` to `value`.
fn apply(value: &mut Value, change: Change, rng: &mut SmallRng) {
    match (change, value) {
        (Change::Text, v) => *v = Value::String(hostile_text(rng)),
        (Change::Number(k), v) => *v = hostile_number(k),
        (Change::Flip, Value::Bool(b)) => *b = !*b,
        (Change::Null, v) => *v = Value::Null,
        (Change::Empty, Value::Array(items)) => items.clear(),
        (Change::Grow, Value::Array(items)) => {
            if let Some(first) = items.first().cloned() {
                let copies = rng.random_range(2..25);
                items.extend(std::iter::repeat_n(first, copies));
            }
        }
        _ => {}
    }
}

fn hostile_number(k: u8) -> Value {
    match k {
        0 => json!(0),
        1 => json!(u64::MAX),
        2 => json!(i64::MIN),
        3 => json!(f64::MAX),
        4 => json!(-1.5),
        5 => json!(u32::MAX),
        _ => json!(1u64 << 53),
    }
}

/// Where a value sits in the answer: object keys and array indexes.
type Path = Vec<String>;

fn at<'a>(value: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(value, |v, step| match v {
        Value::Array(items) => &mut items[step.parse::<usize>().unwrap()],
        other => &mut other[step.as_str()],
    })
}

/// Every value of `sample` with the changes the CLI's types accept there
/// (a field that must be `ok` or `dead` takes no free text: an answer
/// with another word is refused whole, with a clear error, which is not
/// what this test is about).
fn changes<T: DeserializeOwned>(sample: &Value) -> Vec<(Path, Vec<Change>)> {
    fn walk(v: &Value, path: &mut Path, out: &mut Vec<Path>) {
        out.push(path.clone());
        match v {
            Value::Array(items) => items.iter().enumerate().for_each(|(i, item)| {
                path.push(i.to_string());
                walk(item, path, out);
                path.pop();
            }),
            Value::Object(fields) => fields.iter().for_each(|(k, field)| {
                path.push(k.clone());
                walk(field, path, out);
                path.pop();
            }),
            _ => {}
        }
    }
    let mut paths = Vec::new();
    walk(sample, &mut Vec::new(), &mut paths);
    let mut candidates = vec![Change::Text, Change::Flip, Change::Null, Change::Empty, Change::Grow];
    candidates.extend((0..NUMBERS).map(Change::Number));
    let mut rng = SmallRng::seed_from_u64(0);
    paths
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|path| {
            let fits: Vec<Change> = candidates
                .iter()
                .copied()
                .filter(|&change| {
                    let mut probe = sample.clone();
                    let before = at(&mut probe, &path).clone();
                    apply(at(&mut probe, &path), change, &mut rng);
                    *at(&mut probe, &path) != before && serde_json::from_value::<T>(probe).is_ok()
                })
                .collect();
            (path, fits)
        })
        .filter(|(_, fits)| !fits.is_empty())
        .collect()
}

/// Feeds `CASES` changed copies of `sample` to `screen` (each value
/// changed with a chance of one in six): each must print with the table's
/// rules: rows of bounded width, cut cells marked, no control character.
fn check_screen<T: DeserializeOwned>(what: &str, sample: Value, screen: impl Fn(&T) -> String) {
    let changes = changes::<T>(&sample);
    assert!(changes.len() > 5, "{what}: the sample has too few values to change");
    let mut cut = 0;
    for seed in 0..CASES {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut answer = sample.clone();
        // Deepest first, so growing an array does not move what follows.
        for (path, fits) in changes.iter().rev() {
            if rng.random_bool(1.0 / 6.0) {
                let change = fits[rng.random_range(0..fits.len())];
                apply(at(&mut answer, path), change, &mut rng);
            }
        }
        let typed = serde_json::from_value::<T>(answer)
            .unwrap_or_else(|e| panic!("{what}, case {seed}: the changed answer does not read: {e}"));
        let text = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| screen(&typed)))
            .unwrap_or_else(|_| panic!("the {what} screen panicked on case {seed}"));
        let table = text.split("\n\n").next().unwrap_or_default();
        let columns = table.lines().next().map_or(0, |h| h.split_whitespace().count());
        for line in table.lines() {
            let chars = line.chars().count();
            assert!(
                chars <= columns * (MAX_CELL_CHARS + 2) + 64,
                "{what}, case {seed}: a table line of {chars} characters"
            );
        }
        if let Some(line) = text.lines().find(|l| l.chars().any(char::is_control)) {
            let shown: String = line.escape_debug().take(300).collect();
            panic!("{what}, case {seed}: a control character reached the screen: {shown}");
        }
        cut += u64::from(table.contains('…'));
    }
    assert!(cut > 0, "no {what} case was long enough to be cut");
}

#[test]
fn the_status_screen_prints_any_answer() {
    let sample = serde_json::to_value(status_sample()).unwrap();
    check_screen("status", sample, |s: &StatusAnswer| {
        // The warning lines come after the table, as on the terminal.
        format!("{}\n\n{}", status::screen(s), status::warnings(s).join("\n"))
    });
}

#[test]
fn the_members_screen_prints_any_answer() {
    let sample = serde_json::to_value(members_sample()).unwrap();
    check_screen("members", sample, |m: &Vec<Member>| members::screen(m));
}

#[test]
fn the_modules_screen_prints_any_answer() {
    let sample = serde_json::to_value(nodes_sample()).unwrap();
    check_screen("modules", sample.clone(), |n: &Vec<NodeView>| {
        modules::screen(n, usize::MAX)
    });
    check_screen("modules on a terminal", sample, |n: &Vec<NodeView>| {
        modules::screen(n, 60)
    });
}

#[test]
fn the_deployments_screen_prints_any_answer() {
    check_screen("deployments", deployments_sample(), |e: &Vec<EntryView>| {
        deployments::screen(e)
    });
}

#[test]
fn the_audit_screen_prints_any_answer() {
    let sample = serde_json::to_value(audit_sample()).unwrap();
    check_screen("audit", sample, |l: &Vec<AuditLine>| {
        let checked: Vec<_> = l.iter().map(|l| (l.clone(), l.check(None))).collect();
        audit::screen(&checked)
    });
}

/// A row is one line, whatever its text: a newline or a terminal escape in
/// a member's name is written out.
#[test]
fn control_characters_are_written_out_in_tables() {
    let mut m = member("evil\n\u{1b}[2Jname", MemberStatus::Alive);
    m.tags.clear();
    let text = members::screen(&[m]);
    assert_eq!(text.lines().count(), 2, "{text:?}");
    assert!(text.contains(r"evil\n\u{1b}[2Jname"), "{text:?}");
}
