//! What travels inside an encrypted link: one frame is one [`LinkFrame`],
//! a kind byte then its payload.

use super::identity::NodeId;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The link protocol version, checked in [`Hello`] (and bound into the Noise
/// prologue).
pub const PROTOCOL_VERSION: u32 = 1;

const KIND_HELLO: u8 = 1;
const KIND_SWIM: u8 = 2;
const KIND_BROADCAST: u8 = 3;
const KIND_DIRECT: u8 = 4;
const KIND_LEAVE: u8 = 5;

/// The first frame each side sends on a new link: who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub cluster: String,
    pub id: NodeId,
}

/// A node that is shutting down says so to every peer, so they list it as
/// `left` rather than `dead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    pub name: String,
    pub boot: u64,
}

/// One frame on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    Hello(Hello),
    /// A foca membership packet.
    Swim(Bytes),
    /// Envelope JSON for the ClusterBus: delivered, then relayed on.
    Broadcast(Bytes),
    /// Envelope JSON for this node only.
    Direct(Bytes),
    Leave(Leave),
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

impl LinkFrame {
    pub fn encode(&self) -> Bytes {
        let (kind, payload): (u8, Bytes) = match self {
            LinkFrame::Hello(h) => (KIND_HELLO, serde_json::to_vec(h).expect("hello serializes").into()),
            LinkFrame::Swim(b) => (KIND_SWIM, b.clone()),
            LinkFrame::Broadcast(b) => (KIND_BROADCAST, b.clone()),
            LinkFrame::Direct(b) => (KIND_DIRECT, b.clone()),
            LinkFrame::Leave(l) => (KIND_LEAVE, serde_json::to_vec(l).expect("leave serializes").into()),
        };
        let mut out = BytesMut::with_capacity(1 + payload.len());
        out.put_u8(kind);
        out.put_slice(&payload);
        out.freeze()
    }

    pub fn decode(frame: Bytes) -> Result<LinkFrame, ProtocolError> {
        let kind = *frame.first().ok_or(ProtocolError::Empty)?;
        let payload = frame.slice(1..);
        let json = |kind: &'static str, e: serde_json::Error| ProtocolError::Malformed {
            kind,
            reason: e.to_string(),
        };
        Ok(match kind {
            KIND_HELLO => LinkFrame::Hello(serde_json::from_slice(&payload).map_err(|e| json("hello", e))?),
            KIND_SWIM => LinkFrame::Swim(payload),
            KIND_BROADCAST => LinkFrame::Broadcast(payload),
            KIND_DIRECT => LinkFrame::Direct(payload),
            KIND_LEAVE => LinkFrame::Leave(serde_json::from_slice(&payload).map_err(|e| json("leave", e))?),
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkFrame::Hello(_) => "hello",
            LinkFrame::Swim(_) => "swim",
            LinkFrame::Broadcast(_) => "broadcast",
            LinkFrame::Direct(_) => "direct",
            LinkFrame::Leave(_) => "leave",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_named() {
        let id = NodeId {
            name: "a".into(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            boot: 5,
            renewal: 1,
            tags: [("dc".to_string(), "ams".to_string())].into(),
        };
        let frames = [
            LinkFrame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                cluster: "c".into(),
                id,
            }),
            LinkFrame::Swim(Bytes::from_static(b"\x00\x01")),
            LinkFrame::Broadcast(Bytes::from_static(b"{}")),
            LinkFrame::Direct(Bytes::from_static(b"{}")),
            LinkFrame::Leave(Leave {
                name: "a".into(),
                boot: 5,
            }),
        ];
        for f in frames {
            assert_eq!(LinkFrame::decode(f.encode()).unwrap(), f);
        }
        assert!(matches!(LinkFrame::decode(Bytes::new()), Err(ProtocolError::Empty)));
        assert!(matches!(
            LinkFrame::decode(Bytes::from_static(b"\x09x")),
            Err(ProtocolError::UnknownKind(9))
        ));
        let err = LinkFrame::decode(Bytes::from_static(b"\x01{nope")).unwrap_err();
        assert!(err.to_string().starts_with("malformed hello frame"), "{err}");
    }
}
