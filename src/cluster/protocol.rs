//! What travels inside an encrypted link.
//!
//! One link frame is a kind byte, then its payload:
//!
//! - `1` [`Hello`], postcard: the first frame each side sends;
//! - `2` a batch of [`Msg`]s, postcard: membership, probes, the broadcast
//!   tree, anti-entropy;
//! - `3` envelope JSON for this node only (a direct message), as is.
//!
//! The core batches every message for one peer that one input produced into
//! one frame per lane, so a burst of membership news costs one frame, not
//! one per update.

use super::identity::NodeId;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// The link protocol version, checked in [`Hello`] and bound into the Noise
/// prologue. Version 2 replaced foca's packets with this protocol.
pub const PROTOCOL_VERSION: u32 = 2;

const KIND_HELLO: u8 = 1;
const KIND_MSGS: u8 = 2;
const KIND_DIRECT: u8 = 3;

/// A broadcast's identity: an envelope's UUID, or a hash of a membership or
/// state update (so the same news from two nodes is one message).
pub type MsgId = u128;

/// The first frame each side sends on a new link: who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub cluster: String,
    pub id: Arc<NodeId>,
    /// The sender's current incarnation, so a receiver learns it with the link.
    pub incarnation: u32,
}

/// A member's status (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
            Status::Dead => "dead",
            Status::Left => "left",
        }
    }

    /// Alive or suspect: still a member that is probed and asked.
    pub fn is_up(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }
}

/// What one node holds about one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: Arc<NodeId>,
    pub incarnation: u32,
    pub status: Status,
    /// The version of the member's state (its status report) the sender
    /// holds; 0 for none.
    pub state_version: u64,
}

/// One node's published state (its Monitor's status envelope), versioned
/// per boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    pub name: Arc<str>,
    pub boot: u64,
    pub version: u64,
    pub data: Bytes,
}

/// What a broadcast carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// News about a member. `accuser` names who suspects it (Lifeguard counts
    /// independent accusers as confirmations).
    Update { record: Record, accuser: Option<Arc<str>> },
    /// A node's new state (shared: every node holds the same bytes).
    State(Arc<StateRecord>),
    /// A ClusterBus envelope (JSON).
    Envelope(Bytes),
}

impl Payload {
    /// Whether the tree announces it lazily (and caches it) for quick
    /// repair. Envelopes and news of trouble (suspicions, deaths, leaves,
    /// refutations) are; plain joins and states are repaired by
    /// anti-entropy, which keeps a simultaneous start of many nodes cheap.
    pub fn announced(&self) -> bool {
        match self {
            Payload::Envelope(_) => true,
            Payload::State(_) => false,
            Payload::Update { record, .. } => record.status != Status::Alive || record.incarnation > 0,
        }
    }

    /// Envelopes and states are bulk: they wait behind membership traffic.
    pub fn lane(&self) -> Lane {
        match self {
            Payload::Update { .. } => Lane::Control,
            Payload::State(_) | Payload::Envelope(_) => Lane::Bulk,
        }
    }
}

/// Why a peer refuses a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Another live process holds this name (started earlier, at `holder`).
    NameTaken {
        name: Arc<str>,
        holder: SocketAddr,
        holder_boot: u64,
    },
    /// The peer belongs to another cluster.
    OtherCluster { cluster: String },
    /// The peer speaks another protocol version.
    Protocol { theirs: u32 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NameTaken { name, holder, .. } => write!(
                f,
                "the name `{name}` is held by a live node at {holder}, which started earlier; \
                 give this node another --name, or stop the other one"
            ),
            Refusal::OtherCluster { cluster } => write!(f, "the node there belongs to cluster `{cluster}`"),
            Refusal::Protocol { theirs } => write!(
                f,
                "the node there speaks link protocol {theirs}, this one {PROTOCOL_VERSION}"
            ),
        }
    }
}

/// One message of the cluster protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A probe from an observer; answered with [`Msg::Ack`].
    Ping {
        seq: u32,
    },
    Ack {
        seq: u32,
    },
    /// Please probe `target` for me (an indirect probe).
    PingReq {
        seq: u32,
        target: Arc<str>,
    },
    /// The answer to a [`Msg::PingReq`]: whether `target` answered.
    PingReqAck {
        seq: u32,
        reached: bool,
    },
    /// Sent by a joining node: send me your member table.
    Join,
    /// Member records: a join snapshot (`snapshot`), or anti-entropy entries.
    Members {
        records: Vec<Record>,
        snapshot: bool,
    },
    /// The whole snapshot was sent: a joiner that does not need this link
    /// for its overlay closes it, so a seed is not left holding a link per
    /// node that joined through it.
    JoinDone,
    /// Whether the sender counts this link as part of its overlay (its ring
    /// neighbours); either side wanting it makes it a broadcast-tree link.
    Neighbour {
        wanted: bool,
    },
    /// The broadcast tree's beacon: `root` (at ring-0 position `rank`, boot
    /// `boot`) started round `round`; the sender is `hops` from it.
    Beacon {
        root: Arc<str>,
        rank: u64,
        boot: u64,
        round: u64,
        hops: u16,
    },
    /// The sender takes (or no longer takes) this node as its tree parent.
    Parent {
        yes: bool,
    },
    /// A broadcast, whole (along the tree).
    Gossip {
        id: MsgId,
        hops: u16,
        payload: Payload,
    },
    /// Ids of broadcasts the sender has, and at how many hops (lazy push).
    IHave {
        ids: Vec<(MsgId, u16)>,
    },
    /// Repair: send me these, and push to me eagerly from now on.
    Graft {
        ids: Vec<MsgId>,
    },
    /// Stop pushing to me eagerly over this grafted link: I had it already.
    Prune,
    /// The sender lost its parent and has no neighbour nearer the root:
    /// its children look for another parent, the rest send their beacon.
    Orphan,
    /// Anti-entropy: a hash per bucket of the sender's live members.
    Digest {
        buckets: Vec<u64>,
    },
    /// The buckets that differ, and the sender's records in them; the
    /// receiver answers with its own records for those buckets.
    DigestReply {
        differing: Vec<u16>,
        records: Vec<Record>,
    },
    /// Send me these nodes' states.
    StateWant {
        names: Vec<Arc<str>>,
    },
    States {
        states: Vec<Arc<StateRecord>>,
    },
    /// The link is refused, and why; the sender closes it.
    Refused(Refusal),
    /// The sender holds its link cap and closes this new link. `peers` are
    /// live members it knows: a joiner asks one of them instead, so a mass
    /// start spreads over the cluster instead of queueing at one seed. The
    /// answer also proves the sender's process is alive.
    Busy {
        peers: Vec<(Arc<str>, SocketAddr)>,
    },
}

impl Msg {
    /// The queue this message waits in. Liveness (probes, membership news,
    /// the tree's shape) goes first; payloads and the lazy repair ids that
    /// grow with the broadcast rate wait behind, so a flood of broadcasts
    /// never delays an ack.
    pub fn lane(&self) -> Lane {
        match self {
            Msg::Gossip { payload, .. } => payload.lane(),
            Msg::Members { .. } | Msg::States { .. } | Msg::IHave { .. } => Lane::Bulk,
            _ => Lane::Control,
        }
    }
}

/// Which queue of a link a frame waits in: control frames go first, so
/// probes and membership news never wait behind bulk envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Control,
    Bulk,
}

/// One frame on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Msgs(Vec<Msg>),
    /// Envelope JSON for this node only.
    Direct(Bytes),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
}

impl Frame {
    pub fn encode(&self) -> Bytes {
        match self {
            Frame::Hello(h) => with_kind(KIND_HELLO, &postcard::to_allocvec(h).expect("hello serializes")),
            Frame::Msgs(m) => with_kind(KIND_MSGS, &postcard::to_allocvec(m).expect("messages serialize")),
            Frame::Direct(b) => with_kind(KIND_DIRECT, b),
        }
    }

    /// The encoded length, without encoding (the simulator counts bytes).
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Frame::Hello(h) => postcard::experimental::serialized_size(h).unwrap_or(0),
            Frame::Msgs(m) => postcard::experimental::serialized_size(m).unwrap_or(0),
            Frame::Direct(b) => b.len(),
        }
    }

    pub fn decode(frame: Bytes) -> Result<Frame, ProtocolError> {
        let kind = *frame.first().ok_or(ProtocolError::Empty)?;
        let payload = frame.slice(1..);
        let malformed = |kind: &'static str, e: postcard::Error| ProtocolError::Malformed {
            kind,
            reason: e.to_string(),
        };
        Ok(match kind {
            KIND_HELLO => Frame::Hello(postcard::from_bytes(&payload).map_err(|e| malformed("hello", e))?),
            KIND_MSGS => Frame::Msgs(postcard::from_bytes(&payload).map_err(|e| malformed("messages", e))?),
            KIND_DIRECT => Frame::Direct(payload),
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Msgs(_) => "messages",
            Frame::Direct(_) => "direct",
        }
    }
}

fn with_kind(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + payload.len());
    out.put_u8(kind);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Arc<NodeId> {
        Arc::new(NodeId::new(
            "a",
            "10.0.0.1:7946".parse().unwrap(),
            5,
            [("dc".to_string(), "ams".to_string())].into(),
        ))
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_named() {
        let record = Record {
            id: id(),
            incarnation: 3,
            status: Status::Suspect,
            state_version: 7,
        };
        let frames = [
            Frame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                cluster: "c".into(),
                id: id(),
                incarnation: 2,
            }),
            Frame::Msgs(vec![
                Msg::Ping { seq: 1 },
                Msg::Gossip {
                    id: u128::MAX,
                    hops: 3,
                    payload: Payload::Update {
                        record: record.clone(),
                        accuser: Some("b".into()),
                    },
                },
                Msg::Gossip {
                    id: 9,
                    hops: 0,
                    payload: Payload::Envelope(Bytes::from_static(b"{}")),
                },
                Msg::Members {
                    records: vec![record],
                    snapshot: true,
                },
                Msg::Refused(Refusal::NameTaken {
                    name: "a".into(),
                    holder: "10.0.0.2:7946".parse().unwrap(),
                    holder_boot: 1,
                }),
                Msg::Busy {
                    peers: vec![("b".into(), "10.0.0.3:7946".parse().unwrap())],
                },
            ]),
            Frame::Direct(Bytes::from_static(b"{\"v\":1}")),
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(bytes.len(), f.encoded_len(), "{}", f.kind());
            assert_eq!(Frame::decode(bytes).unwrap(), f);
        }
        assert!(matches!(Frame::decode(Bytes::new()), Err(ProtocolError::Empty)));
        assert!(matches!(
            Frame::decode(Bytes::from_static(b"\x09x")),
            Err(ProtocolError::UnknownKind(9))
        ));
        let err = Frame::decode(Bytes::from_static(b"\x01\xff\xff")).unwrap_err();
        assert!(err.to_string().starts_with("malformed hello frame"), "{err}");
    }

    #[test]
    fn a_truncated_or_hostile_batch_is_an_error_not_a_panic() {
        let good = Frame::Msgs(vec![Msg::IHave {
            ids: vec![(1, 1), (2, 2)],
        }])
        .encode();
        for cut in 1..good.len() {
            let _ = Frame::decode(good.slice(..cut));
        }
        // A length prefix that claims four billion entries.
        let hostile = Bytes::from_static(b"\x02\xff\xff\xff\xff\x0f");
        assert!(Frame::decode(hostile).is_err());
    }
}
