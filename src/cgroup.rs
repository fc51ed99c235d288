//! A cgroup for each process module, where the host gives the node one.
//!
//! A module runs in a session of its own, and stopping it kills its process
//! tree (`modules/process_tree.rs`), but a double-forked daemon that left
//! the session after its parent exited is in no tree: it kept running after
//! an undeploy. Everything a process in a cgroup starts stays in that
//! cgroup, so a module in one of its own is killed whole, daemons too,
//! through `cgroup.kill`.
//!
//! The node makes the groups in its own cgroup v2 directory. Where cgroup v2
//! is not mounted, or the node may not make groups there (not root, no
//! systemd `Delegate=yes`), it falls back to the process tree and says so:
//! [`Containment::ProcessTree`] carries the reason, which `status` shows.
//!
//! The parsing of `/proc` is pure; the rest is thin file I/O.

use serde::Serialize;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How a node keeps its modules' processes together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Containment {
    /// One cgroup per module under `parent`, killed whole on stop.
    Cgroup {
        #[serde(skip)]
        parent: PathBuf,
    },
    /// No cgroups: the module's process tree, found through `/proc` (a
    /// double-forked daemon escapes it). `why` says what was missing.
    ProcessTree { why: String },
}

impl Containment {
    /// For `status`: `cgroup`, or `process tree (why)`.
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup { .. } => "cgroup".into(),
            Containment::ProcessTree { why } => format!("process tree ({why})"),
        }
    }

    /// Finds where node `node` may make module cgroups, removes the groups
    /// that agents no longer running left there (killing what is still in
    /// them), and answers how its modules will be kept together.
    pub fn detect(node: &str) -> Containment {
        let containment = match node_cgroup() {
            Ok(parent) => match probe(&parent, node) {
                Ok(()) => {
                    sweep(&parent);
                    Containment::Cgroup { parent }
                }
                Err(e) => Containment::ProcessTree {
                    why: format!("cannot make a cgroup in {}: {e}", parent.display()),
                },
            },
            Err(why) => Containment::ProcessTree { why },
        };
        match &containment {
            Containment::Cgroup { parent } => {
                info!(parent = %parent.display(), "each process module runs in a cgroup of its own")
            }
            Containment::ProcessTree { why } => warn!(why = %why,
                "no cgroups for modules: a stopped module's process tree is killed, but a double-forked daemon escapes it"),
        }
        containment
    }
}

/// The cgroup v2 mount point in a `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fs_type = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fs_type == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// The process's cgroup v2 path in a `/proc/self/cgroup` text (`0::/path`).
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// mountinfo writes spaces and the like as `\040`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let code = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The node's own cgroup v2 directory, or why there is none.
fn node_cgroup() -> Result<PathBuf, String> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("cannot read mountinfo: {e}"))?;
    let mount = cgroup2_mount(&mountinfo).ok_or("cgroup v2 is not mounted")?;
    let own =
        std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own_cgroup(&own).ok_or("this process is in no cgroup v2 group")?;
    let dir = mount.join(own.trim_start_matches('/'));
    if !dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup v2 directory", dir.display()));
    }
    Ok(dir)
}

/// Every module group's name starts so.
const GROUP_PREFIX: &str = "conjoiner-";

/// This agent process, as group names carry it: its pid and its start
/// time, so that a pid used again by another process is not mistaken for
/// it. Several agents may share a host, even a node name (a refused
/// duplicate); a group is swept only when its agent is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentRef {
    pub pid: u32,
    pub start_time: u64,
}

impl AgentRef {
    fn me() -> AgentRef {
        let pid = std::process::id();
        AgentRef {
            pid,
            start_time: start_time_of(pid).unwrap_or(0),
        }
    }

    fn alive(&self) -> bool {
        start_time_of(self.pid) == Some(self.start_time)
    }
}

/// A process's start time (clock ticks after boot), from `/proc/PID/stat`.
fn start_time_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name may hold spaces: count from the last `)`; field 22 overall.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// A group's name: the agent that made it, then what it is for.
fn group_name(agent: AgentRef, what: &str) -> String {
    format!("{GROUP_PREFIX}{}-{}-{what}", agent.pid, agent.start_time)
}

/// The agent a group name says made it.
pub fn agent_of(group: &str) -> Option<AgentRef> {
    let mut fields = group.strip_prefix(GROUP_PREFIX)?.splitn(3, '-');
    Some(AgentRef {
        pid: fields.next()?.parse().ok()?,
        start_time: fields.next()?.parse().ok()?,
    })
}

/// Makes and removes a group, to know the node may.
fn probe(parent: &Path, node: &str) -> io::Result<()> {
    let dir = parent.join(group_name(AgentRef::me(), &format!("{node}-probe")));
    std::fs::create_dir(&dir)?;
    let kill_file = dir.join("cgroup.kill").exists();
    std::fs::remove_dir(&dir)?;
    if !kill_file {
        return Err(io::Error::other(
            "the kernel has no cgroup.kill (Linux 5.14 or later is needed)",
        ));
    }
    Ok(())
}

/// Removes the groups that agents no longer running left, killing what is
/// in them: an agent killed outright cannot stop its modules.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let gone = agent_of(&name).is_some_and(|agent| !agent.alive());
        if gone && entry.path().is_dir() {
            let group = ModuleCgroup {
                dir: entry.path(),
                procs: None,
            };
            let killed = group.kill_all();
            group.remove();
            info!(group = %name, processes = killed, "removed a module cgroup an earlier run left");
        }
    }
}

/// One module run's cgroup.
pub struct ModuleCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for the child to write itself into before exec.
    procs: Option<File>,
}

impl ModuleCgroup {
    /// A new group for one run of `module` on node `node`.
    pub fn create(parent: &Path, node: &str, module: &str) -> io::Result<ModuleCgroup> {
        let name = group_name(
            AgentRef::me(),
            &format!("{node}-{module}-{}", uuid::Uuid::now_v7().simple()),
        );
        let dir = parent.join(name);
        std::fs::create_dir(&dir)?;
        let procs = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"));
        match procs {
            Ok(procs) => Ok(ModuleCgroup {
                dir,
                procs: Some(procs),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The descriptor a child writes `0` to, between fork and exec, to
    /// enter the group (a write is async-signal-safe; opening is not).
    pub fn join_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The processes in the group now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Sends `signal` to every process in the group; answers how many.
    pub fn signal(&self, signal: i32) -> usize {
        let pids = self.pids();
        for pid in &pids {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(*pid, signal) };
        }
        pids.len()
    }

    /// Kills every process in the group at once (`cgroup.kill`); answers
    /// how many there were.
    pub fn kill_all(&self) -> usize {
        let count = self.pids().len();
        if count > 0 {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(self.dir.join("cgroup.kill"))
                .and_then(|mut f| f.write_all(b"1"));
            if let Err(e) = written {
                warn!(group = %self.dir.display(), error = %e, "cannot write cgroup.kill; signalling each process");
                self.signal(libc::SIGKILL);
            }
        }
        count
    }

    /// Removes the group once it is empty (killed processes take a moment
    /// to leave it); a group still busy after a second is left, and logged.
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return debug!(group = %self.dir.display(), "module cgroup removed"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    return warn!(group = %self.dir.display(), error = %e, "cannot remove a module cgroup")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for ModuleCgroup {
    /// Nothing of the module outlives its group.
    fn drop(&mut self) {
        self.procs = None;
        self.kill_all();
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_and_the_own_group_are_read_from_proc() {
        let mountinfo = "\
25 30 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
35 25 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 25 0:33 / /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/my unified"))
        );
        assert_eq!(cgroup2_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"), None);
        let own = "4:memory:/x\n1:name=systemd:/\n0::/system.slice/conjoiner.service\n";
        assert_eq!(own_cgroup(own).as_deref(), Some("/system.slice/conjoiner.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn a_group_name_says_which_agent_made_it() {
        let me = AgentRef::me();
        assert!(me.alive(), "this process is alive: {me:?}");
        let name = group_name(me, "web-1-api-0190");
        assert_eq!(agent_of(&name), Some(me));
        assert_eq!(agent_of("conjoiner-x-1-web"), None);
        assert_eq!(agent_of("other-1-2-web"), None);
        let gone = AgentRef {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!gone.alive(), "a pid used again is not the agent");
    }

    #[test]
    fn without_cgroups_the_reason_is_said() {
        let tree = Containment::ProcessTree {
            why: "cgroup v2 is not mounted".into(),
        };
        assert_eq!(tree.describe(), "process tree (cgroup v2 is not mounted)");
        assert_eq!(
            Containment::Cgroup {
                parent: PathBuf::from("/x")
            }
            .describe(),
            "cgroup"
        );
    }
}
