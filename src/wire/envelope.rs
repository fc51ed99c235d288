//! The envelope: the one standard payload every message travels in,
//! on the ModBus, on the ClusterBus, over the control API and (later) on the
//! wire between nodes.
//!
//! Parsing is done by hand from a `serde_json::Value` rather than by a derived
//! `Deserialize`, so that a malformed envelope yields an [`EnvelopeError`] that
//! names the exact field that is wrong. Serialising uses serde as usual.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The envelope format version this build speaks.
pub const ENVELOPE_VERSION: u64 = 1;

/// The largest envelope body, and so the largest API request body: 1 MiB.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// What kind of message an envelope carries. Unknown types are kept as
/// [`MessageType::Other`] so that newer nodes can add types without breaking
/// older ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    Event,
    Request,
    Reply,
    Error,
    Heartbeat,
    Deploy,
    Undeploy,
    DeployResult,
    StatusRequest,
    Status,
    Other(String),
}

impl MessageType {
    /// The wire name of this type (`"deploy_result"`, …).
    pub fn as_str(&self) -> &str {
        match self {
            MessageType::Event => "event",
            MessageType::Request => "request",
            MessageType::Reply => "reply",
            MessageType::Error => "error",
            MessageType::Heartbeat => "heartbeat",
            MessageType::Deploy => "deploy",
            MessageType::Undeploy => "undeploy",
            MessageType::DeployResult => "deploy_result",
            MessageType::StatusRequest => "status_request",
            MessageType::Status => "status",
            MessageType::Other(s) => s,
        }
    }

    /// Parses a wire name. Any non-empty name is accepted; unknown ones become
    /// [`MessageType::Other`].
    pub fn parse(s: &str) -> Option<MessageType> {
        Some(match s {
            "" => return None,
            "event" => MessageType::Event,
            "request" => MessageType::Request,
            "reply" => MessageType::Reply,
            "error" => MessageType::Error,
            "heartbeat" => MessageType::Heartbeat,
            "deploy" => MessageType::Deploy,
            "undeploy" => MessageType::Undeploy,
            "deploy_result" => MessageType::DeployResult,
            "status_request" => MessageType::StatusRequest,
            "status" => MessageType::Status,
            other => MessageType::Other(other.to_string()),
        })
    }

    /// Whether this is an order to install or remove a module. Orders
    /// travel only as deployments-table entries, which pass the command
    /// gate on every node; an envelope of an order's type is published by
    /// no one and taken from no peer, so the gate has no way around it.
    pub fn is_order(&self) -> bool {
        matches!(self, MessageType::Deploy | MessageType::Undeploy)
    }
}

/// Why no envelope may carry an order: the answer a publisher gets.
pub const ORDER_AS_ENVELOPE: &str = "a deploy or undeploy is not an envelope: it travels only as a \
     deployments-table entry, through `conjoiner deploy` / `conjoiner undeploy` or `POST /v1/deploy` / \
     `POST /v1/undeploy` (signed where a node trusts operator keys)";

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MessageType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MessageType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MessageType::parse(&s).ok_or_else(|| serde::de::Error::custom("empty message type"))
    }
}

/// Who sent an envelope: the node (stamped by its Transponder) and the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub node: String,
    pub module: String,
}

/// Where an envelope goes: an address and an optional target
/// selector naming the nodes it is meant for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One envelope, its fields in the order of its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub src: Source,
    pub dst: Destination,
    pub ts: u64,
    pub lamport: u64,
    pub hops: u32,
    pub reply_to: Option<Uuid>,
    pub body: Value,
    /// Fields this build does not know. They are kept, so an envelope passed
    /// on by an older node loses nothing a newer node put there.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why an envelope could not be parsed. Every variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON: {0}")]
    Json(String),
    #[error("envelope must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("envelope field `{0}` is missing")]
    MissingField(&'static str),
    #[error("envelope field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl EnvelopeError {
    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            EnvelopeError::MissingField(f) => Some(f),
            EnvelopeError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch, as used in `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Envelope {
    /// A fresh envelope with a new UUIDv7 id and the current time. The
    /// Transponder stamps `src.node`, `ts` and `lamport` again when the
    /// envelope leaves for the cluster.
    pub fn new(
        kind: MessageType,
        src: Source,
        address: impl Into<String>,
        target: Option<String>,
        body: Value,
    ) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: Uuid::now_v7(),
            kind,
            src,
            dst: Destination {
                address: address.into(),
                target,
            },
            ts: now_ms(),
            lamport: 0,
            hops: 0,
            reply_to: None,
            body,
            extra: Map::new(),
        }
    }

    /// A reply (or error, by `kind`) to `request`, addressed back to the
    /// requesting node's Transponder (`<node>.host`).
    pub fn reply_to_request(request: &Envelope, kind: MessageType, src: Source, body: Value) -> Envelope {
        let mut reply = Envelope::new(
            kind,
            src,
            format!("{}.host", request.src.node),
            Some(format!("name={}", request.src.node)),
            body,
        );
        reply.reply_to = Some(request.id);
        reply
    }

    /// Parses an envelope from JSON bytes, naming the field at fault on error.
    pub fn from_slice(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        Envelope::from_value(value)
    }

    /// Parses an envelope from an already decoded JSON value.
    pub fn from_value(value: Value) -> Result<Envelope, EnvelopeError> {
        let mut map = match value {
            Value::Object(map) => map,
            other => return Err(EnvelopeError::NotAnObject(json_kind(&other))),
        };
        let v = take_u64(&mut map, "v")?;
        if v != ENVELOPE_VERSION {
            return Err(invalid(
                "v",
                format!("version {v} is not supported (this node speaks {ENVELOPE_VERSION})"),
            ));
        }
        let id = take_uuid(&mut map, "id")?;
        let kind_name = take_string(&mut map, "type")?;
        let kind = MessageType::parse(&kind_name).ok_or_else(|| invalid("type", "must not be empty"))?;
        let src = take_object(&mut map, "src")?;
        let src = Source {
            node: nested_string(&src, "node", "src.node")?,
            module: nested_string(&src, "module", "src.module")?,
        };
        let dst = take_object(&mut map, "dst")?;
        let dst = Destination {
            address: nested_string(&dst, "address", "dst.address")?,
            target: match dst.get("target") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(invalid(
                        "dst.target",
                        format!("expected a string or null, got {}", json_kind(other)),
                    ))
                }
            },
        };
        if dst.address.is_empty() {
            return Err(invalid("dst.address", "must not be empty"));
        }
        let ts = take_u64(&mut map, "ts")?;
        let lamport = take_u64(&mut map, "lamport")?;
        let hops = take_u64(&mut map, "hops")?;
        let hops = u32::try_from(hops).map_err(|_| invalid("hops", "too large"))?;
        let reply_to = match map.remove("reply_to") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Uuid::parse_str(&s).map_err(|e| invalid("reply_to", e.to_string()))?),
            Some(other) => {
                return Err(invalid(
                    "reply_to",
                    format!("expected a UUID string or null, got {}", json_kind(&other)),
                ))
            }
        };
        let body = map.remove("body").ok_or(EnvelopeError::MissingField("body"))?;
        Ok(Envelope {
            v,
            id,
            kind,
            src,
            dst,
            ts,
            lamport,
            hops,
            reply_to,
            body,
            extra: map,
        })
    }

    /// Serialises to compact JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn take(map: &mut Map<String, Value>, field: &'static str) -> Result<Value, EnvelopeError> {
    map.remove(field).ok_or(EnvelopeError::MissingField(field))
}

fn take_u64(map: &mut Map<String, Value>, field: &'static str) -> Result<u64, EnvelopeError> {
    let value = take(map, field)?;
    value.as_u64().ok_or_else(|| {
        invalid(
            field,
            format!("expected a non-negative integer, got {}", json_kind(&value)),
        )
    })
}

fn take_string(map: &mut Map<String, Value>, field: &'static str) -> Result<String, EnvelopeError> {
    match take(map, field)? {
        Value::String(s) => Ok(s),
        other => Err(invalid(field, format!("expected a string, got {}", json_kind(&other)))),
    }
}

fn take_uuid(map: &mut Map<String, Value>, field: &'static str) -> Result<Uuid, EnvelopeError> {
    let s = take_string(map, field)?;
    Uuid::parse_str(&s).map_err(|e| invalid(field, e.to_string()))
}

fn take_object(map: &mut Map<String, Value>, field: &'static str) -> Result<Map<String, Value>, EnvelopeError> {
    match take(map, field)? {
        Value::Object(m) => Ok(m),
        other => Err(invalid(field, format!("expected an object, got {}", json_kind(&other)))),
    }
}

fn nested_string(map: &Map<String, Value>, key: &str, field: &'static str) -> Result<String, EnvelopeError> {
    match map.get(key) {
        None => Err(EnvelopeError::MissingField(field)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(invalid(field, format!("expected a string, got {}", json_kind(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "v": 1,
            "id": "0192f1e4-7b7c-7d2a-9a51-0a1b2c3d4e5f",
            "type": "event",
            "src": {"node": "web-1", "module": "cli"},
            "dst": {"address": "mod.echo", "target": "name=web-*"},
            "ts": 1764000000000u64,
            "lamport": 17,
            "hops": 0,
            "reply_to": null,
            "body": {}
        })
    }

    #[test]
    fn parses_the_spec_example() {
        let env = Envelope::from_value(sample()).unwrap();
        assert_eq!(env.kind, MessageType::Event);
        assert_eq!(env.src.node, "web-1");
        assert_eq!(env.dst.target.as_deref(), Some("name=web-*"));
        assert_eq!(env.lamport, 17);
        assert!(env.extra.is_empty());
    }

    #[test]
    fn each_missing_field_is_named() {
        for field in ["v", "id", "type", "src", "dst", "ts", "lamport", "hops", "body"] {
            let mut v = sample();
            v.as_object_mut().unwrap().remove(field);
            let err = Envelope::from_value(v).unwrap_err();
            assert_eq!(err, EnvelopeError::MissingField(field), "field {field}");
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn nested_fields_are_named() {
        let mut v = sample();
        v["src"].as_object_mut().unwrap().remove("node");
        assert_eq!(Envelope::from_value(v).unwrap_err().field(), Some("src.node"));
        let mut v = sample();
        v["dst"]["address"] = json!(5);
        assert_eq!(Envelope::from_value(v).unwrap_err().field(), Some("dst.address"));
        let mut v = sample();
        v["dst"]["target"] = json!([1]);
        assert_eq!(Envelope::from_value(v).unwrap_err().field(), Some("dst.target"));
    }

    #[test]
    fn wrong_types_are_named() {
        let cases = [
            ("id", json!("not-a-uuid")),
            ("lamport", json!(-1)),
            ("ts", json!("yesterday")),
            ("type", json!("")),
            ("reply_to", json!(12)),
            ("v", json!(2)),
            ("src", json!("web-1")),
        ];
        for (field, bad) in cases {
            let mut v = sample();
            v[field] = bad;
            let err = Envelope::from_value(v).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        assert!(matches!(Envelope::from_slice(b"{nope"), Err(EnvelopeError::Json(_))));
        assert!(matches!(
            Envelope::from_slice(b"[1,2]"),
            Err(EnvelopeError::NotAnObject(_))
        ));
        assert!(matches!(Envelope::from_slice(b""), Err(EnvelopeError::Json(_))));
    }

    #[test]
    fn unknown_fields_and_types_are_kept() {
        let mut v = sample();
        v["type"] = json!("custom_thing");
        v["trace"] = json!({"span": 3});
        let env = Envelope::from_value(v).unwrap();
        assert_eq!(env.kind, MessageType::Other("custom_thing".into()));
        let back: Value = serde_json::from_slice(&env.to_vec()).unwrap();
        assert_eq!(back["trace"], json!({"span": 3}));
        assert_eq!(back["type"], json!("custom_thing"));
    }

    fn arb_type() -> impl Strategy<Value = MessageType> {
        prop_oneof![
            Just(MessageType::Event),
            Just(MessageType::Request),
            Just(MessageType::Reply),
            Just(MessageType::Error),
            Just(MessageType::Heartbeat),
            Just(MessageType::Deploy),
            Just(MessageType::Undeploy),
            Just(MessageType::DeployResult),
            Just(MessageType::StatusRequest),
            Just(MessageType::Status),
            "[a-z][a-z_]{0,12}".prop_map(|s| MessageType::parse(&s).unwrap()),
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,16}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trips(
            kind in arb_type(),
            node in "[a-z0-9-]{1,12}",
            module in "[a-z]{1,8}",
            address in "[a-z.]{1,20}",
            target in proptest::option::of("name=[a-z*]{1,8}"),
            ts in any::<u64>(),
            lamport in any::<u64>(),
            hops in any::<u32>(),
            reply in any::<bool>(),
            body in arb_json(),
        ) {
            let mut env = Envelope::new(kind, Source { node, module }, address, target, body);
            env.ts = ts;
            env.lamport = lamport;
            env.hops = hops;
            if reply { env.reply_to = Some(Uuid::now_v7()); }
            let parsed = Envelope::from_slice(&env.to_vec()).unwrap();
            prop_assert_eq!(parsed, env);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::from_slice(&bytes);
        }
    }
}
