//! Known peers, kept in `<data-dir>/peers.json`: a restarted node whose
//! `--join` seeds are down, where mDNS does not reach, could never find its
//! cluster again (Serf users hit the same: hashicorp/serf#333,
//! hashicorp/consul#7750). A node now writes the addresses of up to
//! [`MAX_KNOWN_PEERS`] live members whenever they change, and at start
//! dials them, one after another with backoff and for ever, until it is in
//! a cluster again.
//!
//! The list only grows stale, never wrong in a harmful way: an address
//! that no longer holds a member fails its dial, and the next is tried.

use crate::actors::cluster_bridge::JoinSeed;
use crate::actors::cluster_bus::{ClusterStatus, ListMembers, Member, MemberStatus};
use actix::Recipient;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument as _};

/// The file in the data dir.
pub const PEERS_FILE: &str = "peers.json";
/// The most addresses kept: enough that some still answer after a
/// restart of much of the fleet, small enough to dial in turn.
pub const MAX_KNOWN_PEERS: usize = 32;
/// How often the live members are compared with the file.
const SAVE_CHECK: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct PeersFile {
    peers: Vec<SocketAddr>,
}

/// The addresses in `path`; none if it is missing or unreadable (a bad
/// file is logged, and replaced at the next save).
pub fn load(path: &Path) -> Vec<SocketAddr> {
    let bytes = match crate::private_file::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the known peers");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<PeersFile>(&bytes) {
        Ok(file) => file.peers.into_iter().take(MAX_KNOWN_PEERS).collect(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "the known peers file is not valid; ignoring it");
            Vec::new()
        }
    }
}

/// Writes `peers` to `path` whole or not at all (a temporary file, then a
/// rename), readable by the node's user only.
pub fn save(path: &Path, peers: &[SocketAddr]) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(&PeersFile { peers: peers.to_vec() })?;
    crate::private_file::write(path, &text)
}

/// The addresses worth keeping from a member list: live members other
/// than `me`, at most [`MAX_KNOWN_PEERS`], the same ones every time for
/// the same list (sorted), so an unchanged cluster is not written again.
pub fn worth_keeping(members: &[Member], me: &str) -> Vec<SocketAddr> {
    let live: BTreeSet<SocketAddr> = members
        .iter()
        .filter(|m| m.name != me && m.status == MemberStatus::Alive)
        .filter_map(|m| m.addr.as_deref()?.parse().ok())
        .collect();
    live.into_iter().take(MAX_KNOWN_PEERS).collect()
}

fn has_peers(members: &[Member], me: &str) -> bool {
    members.iter().any(|m| m.name != me && m.status == MemberStatus::Alive)
}

/// Keeps `<data_dir>/peers.json` up to date, and while the node is alone,
/// dials the peers it held at start. Both end when the node stops.
pub fn spawn(
    data_dir: &Path,
    me: &str,
    members: Recipient<ListMembers>,
    join: Recipient<JoinSeed>,
    status: Recipient<ClusterStatus>,
    span: tracing::Span,
) -> Vec<JoinHandle<()>> {
    let path = data_dir.join(PEERS_FILE);
    let known = load(&path);
    let mut tasks = vec![tokio::spawn(
        keep_saved(path, me.to_string(), members.clone()).instrument(span.clone()),
    )];
    if !known.is_empty() {
        span.in_scope(|| {
            info!(
                peers = known.len(),
                "dialing the peers known from the last run until one answers"
            )
        });
        tasks.push(tokio::spawn(
            rejoin(known, me.to_string(), members, join, status).instrument(span),
        ));
    }
    tasks
}

async fn keep_saved(path: PathBuf, me: String, members: Recipient<ListMembers>) {
    let mut saved = load(&path);
    let mut tick = tokio::time::interval(SAVE_CHECK);
    loop {
        tick.tick().await;
        let Ok(list) = members.send(ListMembers).await else {
            return;
        };
        let keep = worth_keeping(&list, &me);
        // Alone now: keep what we knew, it is how we get back in.
        if keep.is_empty() || keep == saved {
            continue;
        }
        match save(&path, &keep) {
            Ok(()) => {
                debug!(peers = keep.len(), file = %path.display(), "known peers saved");
                saved = keep;
            }
            Err(e) => warn!(file = %path.display(), error = %e, "cannot save the known peers"),
        }
    }
}

/// Dials each known peer in turn, with backoff between rounds, until the
/// node lists a live peer (by this or any other way in) and is not refused.
/// A node restarted before the others declared its last run dead is
/// refused its own name for a moment, yet lists the peer that refused it:
/// it must keep dialing, or nothing leads it back once that run is dead.
async fn rejoin(
    known: Vec<SocketAddr>,
    me: String,
    members: Recipient<ListMembers>,
    join: Recipient<JoinSeed>,
    status: Recipient<ClusterStatus>,
) {
    let mut backoff = super::seeds::FIRST_BACKOFF;
    let mut rounds = 0u32;
    loop {
        for addr in &known {
            let Ok(list) = members.send(ListMembers).await else {
                return;
            };
            let refused = match status.send(ClusterStatus).await {
                Ok(cluster) => cluster.refused.is_some(),
                Err(_) => return,
            };
            if has_peers(&list, &me) && !refused {
                debug!("in a cluster; no more dialing of known peers");
                return;
            }
            match join.send(JoinSeed(*addr)).await {
                Ok(Ok(node)) => {
                    info!(%addr, %node, "rejoined the cluster through a peer known from the last run");
                    return;
                }
                Ok(Err(e)) => debug!(%addr, error = %e, "known peer did not answer"),
                Err(_) => return,
            }
        }
        rounds += 1;
        if rounds == 1 || rounds.is_multiple_of(10) {
            warn!(
                peers = known.len(),
                rounds,
                retry_in_ms = backoff.as_millis() as u64,
                "no peer known from the last run answers yet; retrying"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(super::seeds::MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, addr: &str, status: MemberStatus) -> Member {
        Member {
            name: name.into(),
            addr: Some(addr.into()),
            status,
            tags: Default::default(),
            incarnation: 0,
            since_ms: 0,
            boot_ms: 0,
            identity: None,
        }
    }

    #[test]
    fn only_live_others_are_kept_sorted_and_bounded() {
        let mut members = vec![
            member("me", "10.0.0.1:7946", MemberStatus::Alive),
            member("b", "10.0.0.3:7946", MemberStatus::Alive),
            member("c", "10.0.0.2:7946", MemberStatus::Alive),
            member("d", "10.0.0.4:7946", MemberStatus::Dead),
            member("e", "10.0.0.5:7946", MemberStatus::Left),
            member("f", "not an address", MemberStatus::Alive),
        ];
        let keep = worth_keeping(&members, "me");
        let expected: Vec<SocketAddr> = vec!["10.0.0.2:7946".parse().unwrap(), "10.0.0.3:7946".parse().unwrap()];
        assert_eq!(keep, expected);
        for i in 0..100 {
            members.push(member(
                &format!("n{i}"),
                &format!("10.1.0.{i}:7946"),
                MemberStatus::Alive,
            ));
        }
        assert_eq!(worth_keeping(&members, "me").len(), MAX_KNOWN_PEERS);
    }

    #[test]
    fn saved_peers_load_back_and_a_bad_file_is_ignored() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_FILE);
        assert!(load(&path).is_empty(), "no file yet");
        let peers: Vec<SocketAddr> = vec!["10.0.0.2:7946".parse().unwrap(), "[fd00::1]:7946".parse().unwrap()];
        save(&path, &peers).unwrap();
        assert_eq!(load(&path), peers);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "{not json").unwrap();
        assert!(load(&path).is_empty());
    }
}
