//! What travels inside an encrypted link.
//!
//! One link frame is a kind byte, then its payload:
//!
//! - `1` [`Hello`], postcard: the first frame each side sends;
//! - `2` a batch of [`Msg`]s: a count, then each message as its length and
//!   its postcard bytes;
//! - `3` envelope JSON for this node only (a direct message), as is.
//!
//! Messages are grouped by sub-protocol ([`LinkMsg`], [`ProbeMsg`],
//! [`TreeMsg`], [`SyncMsg`]). Each message of a batch is framed on its own,
//! so a node reads the messages it knows and skips, counts and logs the
//! ones it does not (a newer node's new kind, or a new variant inside a
//! known one) as [`Msg::Skipped`], without closing the link. Fields are
//! only ever appended to a message, and a reader ignores bytes past the
//! fields it knows. A fleet can so be upgraded one host at a time.
//!
//! The core batches every message for one peer that one input produced into
//! one frame per lane, so a burst of membership news costs one frame, not
//! one per update.

use super::identity::NodeId;
use super::member_proof::{MemberProof, StateSeal};
use super::node_key::NodePublicKey;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// The link protocol versions this node speaks, lowest and highest; two
/// nodes use the highest that both speak. Version 2 was a flat message set
/// with one version; version 3 groups messages by sub-protocol, frames each
/// on its own, carries this range in the hello, and replicates datasets
/// (members, node states, the deployments table) by one mechanism.
/// Version 4 sends each member's signed proof about itself (see
/// `member_proof`) beside the records about it; a version-3 link gets the
/// records alone.
pub const PROTOCOL_MIN: u32 = 3;
pub const PROTOCOL_MAX: u32 = 4;

const KIND_HELLO: u8 = 1;
const KIND_MSGS: u8 = 2;
const KIND_DIRECT: u8 = 3;

/// A broadcast's identity: an envelope's UUID, or a hash of a membership or
/// state update (so the same news from two nodes is one message).
pub type MsgId = u128;

/// The versions a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProtocolRange {
    pub min: u32,
    pub max: u32,
}

impl ProtocolRange {
    /// What this build speaks.
    pub const OURS: ProtocolRange = ProtocolRange {
        min: PROTOCOL_MIN,
        max: PROTOCOL_MAX,
    };

    /// The highest version both ranges hold, if any.
    pub fn agree(self, theirs: ProtocolRange) -> Option<u32> {
        let version = self.max.min(theirs.max);
        (version >= self.min.max(theirs.min)).then_some(version)
    }
}

impl std::fmt::Display for ProtocolRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

/// The first frame each side sends on a new link: who it is, and which
/// protocol versions it speaks.
///
/// On the wire the highest version comes first and the lowest is appended
/// after the fields of version 2's hello, so a node of version 2 reads a
/// newer hello far enough to refuse it by version, and a newer node reads a
/// version-2 hello as the range 2 to 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol: ProtocolRange,
    pub cluster: String,
    pub id: Arc<NodeId>,
    /// The sender's current incarnation, so a receiver learns it with the link.
    pub incarnation: u32,
    /// The sender's identity key. The receiver checks it against the static
    /// key the link's handshake proved (see `cluster::node_key`); none from
    /// a node of an earlier release.
    pub identity: Option<NodePublicKey>,
    /// The sender's admission (an operator's signed word that its identity
    /// key may be this node), as text, for peers that require one.
    pub admission: Option<String>,
    /// The sender's signed word that it is alive at `incarnation` (see
    /// `member_proof`), which the receiver passes on with its record.
    pub proof: Option<Arc<MemberProof>>,
}

/// The fields of a hello that every version has, in their order.
#[derive(Serialize, Deserialize)]
struct HelloHead {
    max: u32,
    cluster: String,
    id: Arc<NodeId>,
    incarnation: u32,
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let head = HelloHead {
            max: self.protocol.max,
            cluster: self.cluster.clone(),
            id: self.id.clone(),
            incarnation: self.incarnation,
        };
        let mut out = postcard::to_allocvec(&head).expect("hello serializes");
        out.extend(postcard::to_allocvec(&self.protocol.min).expect("a number serializes"));
        out.extend(postcard::to_allocvec(&self.identity).expect("a key serializes"));
        out.extend(postcard::to_allocvec(&self.admission).expect("text serializes"));
        out.extend(postcard::to_allocvec(&self.proof).expect("a proof serializes"));
        out
    }

    fn decode(bytes: &[u8]) -> Result<Hello, postcard::Error> {
        let (head, rest): (HelloHead, &[u8]) = postcard::take_from_bytes(bytes)?;
        // A version-2 hello ends here; later fields follow `min`, each
        // absent from the hellos of the releases before it.
        let (min, rest) = if rest.is_empty() {
            (head.max, rest)
        } else {
            postcard::take_from_bytes::<u32>(rest)?
        };
        let (identity, rest) = if rest.is_empty() {
            (None, rest)
        } else {
            postcard::take_from_bytes::<Option<NodePublicKey>>(rest)?
        };
        let (admission, rest) = if rest.is_empty() {
            (None, rest)
        } else {
            postcard::take_from_bytes::<Option<String>>(rest)?
        };
        let proof = if rest.is_empty() {
            None
        } else {
            postcard::take_from_bytes::<Option<Arc<MemberProof>>>(rest)?.0
        };
        Ok(Hello {
            protocol: ProtocolRange { min, max: head.max },
            cluster: head.cluster,
            id: head.id,
            incarnation: head.incarnation,
            identity,
            admission,
            proof,
        })
    }
}

/// A member's status.
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

/// Which replicated dataset a sync message is about. The numbers are fixed
/// on the wire; a node skips the sets it does not hold.
pub type SetId = u16;

/// The member table.
pub const SET_MEMBERS: SetId = 0;
/// Every node's published state (its status report).
pub const SET_STATES: SetId = 1;
/// The deployments table: what every node should run.
pub const SET_DEPLOYMENTS: SetId = 2;

/// The version of an entry of a keyed dataset: the higher `clock` wins,
/// then the higher `origin` (the node that wrote it), so every node picks
/// the same winner whatever order the versions arrive in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub clock: u64,
    pub origin: Arc<str>,
}

/// One entry of a keyed dataset (the deployments table): its key, version
/// and body. The core replicates the body as it is; what it means, and
/// which entries are admitted, is the dataset's owner's to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: Arc<str>,
    pub version: Version,
    pub body: Bytes,
}

/// What a sync message carries of one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Items {
    Records(Vec<Record>),
    States(Vec<Arc<StateRecord>>),
    Entries(Vec<Arc<Entry>>),
    /// Keys with a hash of the version held of each: enough to tell which
    /// entries differ, at a fraction of their size.
    Versions(Vec<(Arc<str>, u64)>),
}

impl Items {
    pub fn len(&self) -> usize {
        match self {
            Items::Records(r) => r.len(),
            Items::States(s) => s.len(),
            Items::Entries(e) => e.len(),
            Items::Versions(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cheap upper guess of the encoded size.
    pub fn size_hint(&self) -> usize {
        match self {
            Items::Records(r) => r.len() * 128,
            Items::States(s) => s.iter().map(|s| s.data.len() + 64).sum(),
            Items::Entries(e) => e.iter().map(|e| e.body.len() + e.key.len() + 48).sum(),
            Items::Versions(v) => v.iter().map(|(k, _)| k.len() + 10).sum(),
        }
    }
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
    /// A new version of an entry of a keyed dataset.
    Entry { set: SetId, entry: Arc<Entry> },
}

impl Payload {
    /// Whether the tree announces it lazily (and caches it) for quick
    /// repair. Envelopes, dataset entries and news of trouble (suspicions,
    /// deaths, leaves, refutations) are; plain joins and states are
    /// repaired by anti-entropy, which keeps a simultaneous start of many
    /// nodes cheap.
    pub fn announced(&self) -> bool {
        match self {
            Payload::Envelope(_) | Payload::Entry { .. } => true,
            Payload::State(_) => false,
            Payload::Update { record, .. } => record.status != Status::Alive || record.incarnation > 0,
        }
    }

    /// Envelopes, states and entries are bulk: they wait behind membership
    /// traffic.
    pub fn lane(&self) -> Lane {
        match self {
            Payload::Update { .. } => Lane::Control,
            Payload::State(_) | Payload::Envelope(_) | Payload::Entry { .. } => Lane::Bulk,
        }
    }
}

/// Why a peer refuses a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Another live process holds this name (at `holder`): it started
    /// earlier, or its identity key holds the name.
    NameTaken {
        name: Arc<str>,
        holder: SocketAddr,
        holder_boot: u64,
    },
    /// The peer belongs to another cluster.
    OtherCluster { cluster: String },
    /// The two nodes share no protocol version: the refusing node speaks
    /// `min` to `max`.
    Protocol { min: u32, max: u32 },
    /// The refusing node requires an admission, and the hello had none
    /// that it accepts (why).
    NotAdmitted { reason: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NameTaken { name, holder, .. } => write!(
                f,
                "the name `{name}` is held by a live node at {holder}; \
                 give this node another --name, or stop the other one"
            ),
            Refusal::OtherCluster { cluster } => write!(f, "the node there belongs to cluster `{cluster}`"),
            Refusal::Protocol { min, max } => write!(
                f,
                "the node there speaks link protocol {}, this one {}: no version in common; \
                 upgrade the older node",
                ProtocolRange { min: *min, max: *max },
                ProtocolRange::OURS
            ),
            Refusal::NotAdmitted { reason } => write!(
                f,
                "not admitted: {reason}; an operator admits this node with \
                 `conjoiner admit <its identity key> --name <its name>`, given to it by --join-token"
            ),
        }
    }
}

/// One message of the cluster protocol, by sub-protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Link(LinkMsg),
    Probe(ProbeMsg),
    Tree(TreeMsg),
    Sync(SyncMsg),
    /// A message this node could not read (a newer kind, or a variant it
    /// does not know inside a known one): counted, logged and skipped. Only
    /// ever made by decoding; never sent.
    #[serde(skip)]
    Skipped {
        group: u32,
        kind: u32,
        reason: String,
    },
}

/// How many kinds each group has, in the order of [`Msg`]'s variants; a
/// message whose group or kind lies past these is a newer node's.
const KINDS_PER_GROUP: [u32; 4] = [6, 4, 7, 5];

/// Links and joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMsg {
    /// Sent by a joining node: send me your member table.
    Join,
    /// The member table, in answer to a join (in chunks).
    JoinTable { records: Vec<Record> },
    /// The whole table was sent: a joiner that does not need this link for
    /// its overlay closes it, so a seed is not left holding a link per node
    /// that joined through it.
    JoinDone,
    /// Whether the sender counts this link as part of its overlay (its ring
    /// neighbours); either side wanting it makes it a broadcast-tree link.
    Neighbour { wanted: bool },
    /// The link is refused, and why; the sender closes it.
    Refused(Refusal),
    /// The sender holds its link cap and closes this new link. `peers` are
    /// live members it knows: a joiner asks one of them instead, so a mass
    /// start spreads over the cluster instead of queueing at one seed. The
    /// answer also proves the sender's process is alive.
    Busy { peers: Vec<(Arc<str>, SocketAddr)> },
}

/// The failure detector's probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeMsg {
    /// A probe from an observer; answered with [`ProbeMsg::Ack`].
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
    /// The answer to a [`ProbeMsg::PingReq`]: whether `target` answered.
    PingReqAck {
        seq: u32,
        reached: bool,
    },
}

/// The broadcast tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeMsg {
    /// The tree's beacon: `root` (at ring-0 position `rank`, boot `boot`)
    /// started round `round`; the sender is `hops` from it.
    Beacon {
        root: Arc<str>,
        rank: u64,
        boot: u64,
        round: u64,
        hops: u16,
    },
    /// The sender takes (or no longer takes) this node as its tree parent.
    Parent { yes: bool },
    /// A broadcast, whole (along the tree).
    Gossip { id: MsgId, hops: u16, payload: Payload },
    /// Ids of broadcasts the sender has, and at how many hops (lazy push).
    IHave { ids: Vec<(MsgId, u16)> },
    /// Repair: send me these, and push to me eagerly from now on.
    Graft { ids: Vec<MsgId> },
    /// Stop pushing to me eagerly over this grafted link: I had it already.
    Prune,
    /// The sender lost its parent and has no neighbour nearer the root:
    /// its children look for another parent, the rest send their beacon.
    Orphan,
}

/// Anti-entropy of the replicated datasets: a digest, the parts that
/// differ, and the entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// Opens an exchange, or asks for a closer look: per dataset, either
    /// one root hash or one hash per digest bucket.
    Digest { sets: Vec<(SetId, Vec<u64>)> },
    /// The buckets of `set` that differ from the digest received, and what
    /// the sender holds in them: the entries themselves, or their versions.
    Differ { set: SetId, buckets: Vec<u16>, have: Items },
    /// Entries, to apply: the answer to a [`SyncMsg::Differ`] or a
    /// [`SyncMsg::Want`], or news for a member that must refute.
    Items { set: SetId, items: Items },
    /// Send me these keys' entries.
    Want { set: SetId, keys: Vec<Arc<str>> },
    /// The members' own signed proofs about themselves, and the seals of
    /// their states, for the records and states that follow in the same
    /// frame (link protocol 4 and later).
    Proofs {
        proofs: Vec<Arc<MemberProof>>,
        seals: Vec<StateSeal>,
    },
}

impl Msg {
    /// The queue this message waits in. Liveness (probes, membership news,
    /// the tree's shape) goes first; payloads, tables and the lazy repair
    /// ids that grow with the broadcast rate wait behind, so a flood of
    /// broadcasts never delays an ack.
    pub fn lane(&self) -> Lane {
        match self {
            Msg::Tree(TreeMsg::Gossip { payload, .. }) => payload.lane(),
            Msg::Tree(TreeMsg::IHave { .. })
            | Msg::Link(LinkMsg::JoinTable { .. })
            | Msg::Sync(SyncMsg::Items { .. }) => Lane::Bulk,
            _ => Lane::Control,
        }
    }

    /// The group and kind, as numbered on the wire: for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Link(m) => match m {
                LinkMsg::Join => "join",
                LinkMsg::JoinTable { .. } => "join_table",
                LinkMsg::JoinDone => "join_done",
                LinkMsg::Neighbour { .. } => "neighbour",
                LinkMsg::Refused(_) => "refused",
                LinkMsg::Busy { .. } => "busy",
            },
            Msg::Probe(m) => match m {
                ProbeMsg::Ping { .. } => "ping",
                ProbeMsg::Ack { .. } => "ack",
                ProbeMsg::PingReq { .. } => "ping_req",
                ProbeMsg::PingReqAck { .. } => "ping_req_ack",
            },
            Msg::Tree(m) => match m {
                TreeMsg::Beacon { .. } => "beacon",
                TreeMsg::Parent { .. } => "parent",
                TreeMsg::Gossip { .. } => "gossip",
                TreeMsg::IHave { .. } => "ihave",
                TreeMsg::Graft { .. } => "graft",
                TreeMsg::Prune => "prune",
                TreeMsg::Orphan => "orphan",
            },
            Msg::Sync(m) => match m {
                SyncMsg::Digest { .. } => "digest",
                SyncMsg::Differ { .. } => "differ",
                SyncMsg::Items { .. } => "items",
                SyncMsg::Want { .. } => "want",
                SyncMsg::Proofs { .. } => "proofs",
            },
            Msg::Skipped { .. } => "skipped",
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

/// The most messages one batch may claim, so a hostile count cannot make
/// the reader reserve room for billions.
const MAX_BATCH: usize = 1 << 20;

impl Frame {
    /// How many ClusterBus envelopes the frame carries: what is lost with
    /// it should it be shed.
    pub fn envelopes(&self) -> u32 {
        match self {
            Frame::Hello(_) => 0,
            Frame::Direct(_) => 1,
            Frame::Msgs(msgs) => msgs
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        Msg::Tree(TreeMsg::Gossip {
                            payload: Payload::Envelope(_),
                            ..
                        })
                    )
                })
                .count() as u32,
        }
    }

    pub fn encode(&self) -> Bytes {
        match self {
            Frame::Hello(h) => with_kind(KIND_HELLO, &h.encode()),
            Frame::Msgs(msgs) => {
                let mut out = vec![KIND_MSGS];
                let sent: Vec<Vec<u8>> = msgs
                    .iter()
                    .filter(|m| !matches!(m, Msg::Skipped { .. }))
                    .map(|m| postcard::to_allocvec(m).expect("messages serialize"))
                    .collect();
                put_varint(&mut out, sent.len() as u64);
                for m in sent {
                    put_varint(&mut out, m.len() as u64);
                    out.extend_from_slice(&m);
                }
                Bytes::from(out)
            }
            Frame::Direct(b) => with_kind(KIND_DIRECT, b),
        }
    }

    /// The encoded length, without encoding (the simulator counts bytes).
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Frame::Hello(h) => h.encode().len(),
            Frame::Msgs(msgs) => {
                let sizes: Vec<usize> = msgs
                    .iter()
                    .filter(|m| !matches!(m, Msg::Skipped { .. }))
                    .map(|m| postcard::experimental::serialized_size(m).unwrap_or(0))
                    .collect();
                varint_len(sizes.len() as u64) + sizes.iter().map(|s| varint_len(*s as u64) + s).sum::<usize>()
            }
            Frame::Direct(b) => b.len(),
        }
    }

    pub fn decode(frame: Bytes) -> Result<Frame, ProtocolError> {
        let kind = *frame.first().ok_or(ProtocolError::Empty)?;
        let payload = frame.slice(1..);
        Ok(match kind {
            KIND_HELLO => Frame::Hello(Hello::decode(&payload).map_err(|e| ProtocolError::Malformed {
                kind: "hello",
                reason: e.to_string(),
            })?),
            KIND_MSGS => Frame::Msgs(decode_batch(&payload)?),
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

/// Reads a batch: the count, then each message by its length. A message
/// that does not decode becomes [`Msg::Skipped`]; only a batch whose
/// framing is broken is an error.
fn decode_batch(mut bytes: &[u8]) -> Result<Vec<Msg>, ProtocolError> {
    let broken = |reason: &str| ProtocolError::Malformed {
        kind: "messages",
        reason: reason.to_string(),
    };
    let count = take_varint(&mut bytes).ok_or_else(|| broken("no message count"))? as usize;
    if count > MAX_BATCH || count > bytes.len() {
        return Err(broken(&format!("a count of {count} messages in {} bytes", bytes.len())));
    }
    let mut msgs = Vec::with_capacity(count);
    for _ in 0..count {
        let len = take_varint(&mut bytes).ok_or_else(|| broken("a message without its length"))? as usize;
        if len > bytes.len() {
            return Err(broken(&format!("a message of {len} bytes with {} left", bytes.len())));
        }
        let (one, rest) = bytes.split_at(len);
        bytes = rest;
        msgs.push(decode_msg(one));
    }
    if !bytes.is_empty() {
        return Err(broken(&format!("{} bytes after the last message", bytes.len())));
    }
    Ok(msgs)
}

/// One message, or what made it unreadable: its group and kind numbers,
/// and whether they are past what this node knows.
fn decode_msg(bytes: &[u8]) -> Msg {
    match postcard::from_bytes::<Msg>(bytes) {
        Ok(msg) => msg,
        Err(e) => {
            let mut rest = bytes;
            let group = take_varint(&mut rest).unwrap_or(u64::MAX).min(u64::from(u32::MAX)) as u32;
            let kind = take_varint(&mut rest).unwrap_or(u64::MAX).min(u64::from(u32::MAX)) as u32;
            let known = KINDS_PER_GROUP.get(group as usize).is_some_and(|n| kind < *n);
            let reason = if known {
                format!("unreadable: {e}")
            } else {
                "a kind this node does not know".to_string()
            };
            Msg::Skipped { group, kind, reason }
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads a LEB128 varint of at most ten bytes off the front of `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *bytes.get(i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(v);
        }
    }
    None
}

fn with_kind(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + payload.len());
    out.put_u8(kind);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests;
