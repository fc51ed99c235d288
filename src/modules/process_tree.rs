//! Everything a module process started, found through `/proc`, so that
//! stopping a module leaves nothing running: children that ignore SIGTERM,
//! or that start a session of their own, were reparented to PID 1 and kept
//! running after an undeploy.
//!
//! A module's main process runs in a session of its own, so its pid is the
//! session id of everything it starts. Its *tree* is every process of that
//! session, plus every descendant of its pid by parent links (which finds a
//! child that left the session while its parent lives). The tree is read
//! when a stop begins and kept, so a process found then is still killed
//! after its parent has gone. Not found: a process that leaves the session
//! and whose parent exited before the stop (a double-forked daemon); only a
//! cgroup would hold that one.
//!
//! Pure parsing and tree walking; the reading and signalling are thin.

use std::collections::BTreeSet;

/// One process as `/proc/<pid>/stat` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: i32,
    pub parent: i32,
    pub session: i32,
    /// Clock ticks after boot: with the pid, names one process even if the
    /// pid is used again later.
    pub start_time: u64,
    pub zombie: bool,
}

/// A process, named so a reused pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcessRef {
    pub pid: i32,
    pub start_time: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name sits in
/// parentheses and may hold spaces and parentheses itself, so the fields
/// are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcEntry> {
    let pid = line.split_once(' ')?.0.parse().ok()?;
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) session(6) … starttime(22).
    Some(ProcEntry {
        pid,
        parent: fields.get(1)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
        zombie: matches!(*fields.first()?, "Z" | "X"),
    })
}

/// Every process `/proc` lists now (ones that vanish while being read are
/// skipped).
pub fn read_processes() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|text| parse_stat(&text))
        .collect()
}

/// The live processes of `root`'s tree (see the module doc), `root`
/// included while it lives.
pub fn tree_of(root: i32, processes: &[ProcEntry]) -> BTreeSet<ProcessRef> {
    let mut pids: BTreeSet<i32> = processes
        .iter()
        .filter(|p| p.pid == root || p.session == root)
        .map(|p| p.pid)
        .collect();
    loop {
        let before = pids.len();
        for p in processes {
            if pids.contains(&p.parent) {
                pids.insert(p.pid);
            }
        }
        if pids.len() == before {
            break;
        }
    }
    processes
        .iter()
        .filter(|p| pids.contains(&p.pid) && !p.zombie)
        .map(|p| ProcessRef {
            pid: p.pid,
            start_time: p.start_time,
        })
        .collect()
}

/// Sends `signal` to each of `targets` that is still the same live process;
/// answers how many were signalled.
pub fn signal_all(targets: &BTreeSet<ProcessRef>, signal: i32) -> usize {
    let live: BTreeSet<ProcessRef> = read_processes()
        .iter()
        .filter(|p| !p.zombie)
        .map(|p| ProcessRef {
            pid: p.pid,
            start_time: p.start_time,
        })
        .collect();
    let mut sent = 0;
    for target in targets.intersection(&live) {
        // SAFETY: kill(2) on a pid just checked to be the process we mean.
        if unsafe { libc::kill(target.pid, signal) } == 0 {
            sent += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: i32, parent: i32, session: i32) -> ProcEntry {
        ProcEntry {
            pid,
            parent,
            session,
            start_time: pid as u64 * 10,
            zombie: false,
        }
    }

    #[test]
    fn a_stat_line_is_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (a (weird) name) S 4200 4242 4242 0 -1 4194560 91 0 0 0 0 0 0 0 20 0 1 0 987654 2355200 200";
        assert_eq!(
            parse_stat(line),
            Some(ProcEntry {
                pid: 4242,
                parent: 4200,
                session: 4242,
                start_time: 987654,
                zombie: false,
            })
        );
        assert!(
            parse_stat("17 (sh) Z 1 17 17 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0")
                .unwrap()
                .zombie
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (short) S 1"), None);
    }

    #[test]
    fn the_tree_holds_the_session_and_every_descendant_but_no_stranger() {
        let processes = [
            entry(100, 1, 100), // the module
            entry(101, 100, 100),
            entry(102, 1, 100),   // orphaned, still in the session
            entry(103, 100, 103), // left the session, parent alive
            entry(104, 103, 103), // its child
            entry(200, 1, 200),   // another module
            entry(201, 200, 200),
            ProcEntry {
                zombie: true,
                ..entry(105, 100, 100)
            },
        ];
        let pids: Vec<i32> = tree_of(100, &processes).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [100, 101, 102, 103, 104]);
        assert!(tree_of(999, &processes).is_empty());
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        let me = std::process::id() as i32;
        let mine = tree_of(me, &read_processes());
        let me_now = mine
            .iter()
            .find(|p| p.pid == me)
            .copied()
            .expect("this process is listed");
        let stranger = BTreeSet::from([ProcessRef {
            pid: me,
            start_time: me_now.start_time + 1,
        }]);
        assert_eq!(signal_all(&stranger, 0), 0);
        assert_eq!(signal_all(&BTreeSet::from([me_now]), 0), 1);
    }
}
