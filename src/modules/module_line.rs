//! The lines a process module writes on stdout, parsed once into a type
//! (the protocol is in `docs/modules.md`). The actor then only acts on a
//! [`ModuleLine`]; what a line got wrong is a [`LineError`], worded for the
//! node's log. Pure: no I/O, no state.

use crate::wire::MessageType;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

/// One well-formed line from a module.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleLine {
    /// Send an envelope to `address` (the cluster, or this node's
    /// `<node>.local` on the ModBus), to the nodes `target` selects.
    Publish {
        address: String,
        target: Option<String>,
        kind: MessageType,
        body: Value,
    },
    /// The answer to request `to`.
    Reply { to: Uuid, body: Value },
    /// The module's status, answering every status request waiting.
    Status { body: Value },
    /// Deliver envelopes sent to `address` to this module too.
    Subscribe { address: String },
    /// A line for the node's log.
    Log { level: LogLevel, msg: String },
}

/// The level of a `log` line; anything else is info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Why a line was ignored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("no `op`")]
    NoOp,
    #[error("unknown op `{0}`")]
    UnknownOp(String),
    #[error("`{0}` needs an `address`")]
    NoAddress(&'static str),
    /// A `reply` the caller cannot be matched to by `to`; `line` is kept so
    /// the actor can look for the request id elsewhere in it.
    #[error("{why}")]
    ReplyWithoutTo { why: String, line: Value },
    #[error("malformed `{op}` line: {reason}")]
    Malformed { op: &'static str, reason: String },
    /// A `reply` to request `to` without a `body` (`data` is a common slip).
    #[error("{why}")]
    ReplyWithoutBody { to: Uuid, why: String },
}

/// The fields each op may carry, as written; [`parse`] checks them.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Raw {
    Publish {
        address: Option<String>,
        target: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        body: Value,
    },
    Reply {
        #[serde(default)]
        body: Value,
    },
    Status {
        #[serde(default)]
        body: Value,
    },
    Subscribe {
        address: Option<String>,
    },
    Log {
        level: Option<String>,
        msg: Option<String>,
    },
}

const OPS: [&str; 5] = ["publish", "reply", "status", "subscribe", "log"];

/// Parses one stdout line.
pub fn parse(line: &str) -> Result<ModuleLine, LineError> {
    let value: Value = serde_json::from_str(line).map_err(|e| LineError::NotJson(e.to_string()))?;
    let op = match value.get("op") {
        None => return Err(LineError::NoOp),
        Some(Value::String(op)) if OPS.contains(&op.as_str()) => op.clone(),
        Some(Value::String(op)) if op.is_empty() => return Err(LineError::NoOp),
        Some(Value::String(op)) => return Err(LineError::UnknownOp(op.clone())),
        Some(other) => return Err(LineError::UnknownOp(other.to_string())),
    };
    if op == "reply" {
        let to = match value.get("to") {
            None => Err("`reply` needs `to`, the id of the request".to_string()),
            Some(to) => to
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or_else(|| format!("`reply` has `to` = {to}, which is not a request id")),
        };
        if let Err(why) = to {
            return Err(LineError::ReplyWithoutTo { why, line: value });
        }
    }
    let to = value
        .get("to")
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok());
    if let (Some(to), "reply", None) = (to, op.as_str(), value.get("body")) {
        let others: Vec<String> = value
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| *k != "op" && *k != "to")
                    .map(|k| format!("`{k}`"))
                    .collect()
            })
            .unwrap_or_default();
        let had = if others.is_empty() {
            "nothing else".to_string()
        } else {
            others.join(", ")
        };
        return Err(LineError::ReplyWithoutBody {
            to,
            why: format!("`reply` needs `body`, the answer; it has {had}"),
        });
    }
    let raw: Raw = serde_json::from_value(value).map_err(|e| LineError::Malformed {
        op: OPS.into_iter().find(|o| *o == op).unwrap_or("?"),
        reason: e.to_string(),
    })?;
    let address = |a: Option<String>, op| a.filter(|a| !a.is_empty()).ok_or(LineError::NoAddress(op));
    Ok(match raw {
        Raw::Publish {
            address: a,
            target,
            kind,
            body,
        } => ModuleLine::Publish {
            address: address(a, "publish")?,
            target,
            kind: kind
                .as_deref()
                .and_then(MessageType::parse)
                .unwrap_or(MessageType::Event),
            body,
        },
        Raw::Reply { body } => ModuleLine::Reply {
            to: to.expect("checked above"),
            body,
        },
        Raw::Status { body } => ModuleLine::Status { body },
        Raw::Subscribe { address: a } => ModuleLine::Subscribe {
            address: address(a, "subscribe")?,
        },
        Raw::Log { level, msg } => ModuleLine::Log {
            level: match level.as_deref() {
                Some("error") => LogLevel::Error,
                Some("warn") => LogLevel::Warn,
                Some("debug") | Some("trace") => LogLevel::Debug,
                _ => LogLevel::Info,
            },
            msg: msg.unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_op_parses_into_its_variant() {
        let id = Uuid::now_v7();
        let cases = [
            (
                json!({"op":"publish","address":"a.b","target":"tag:x=1","type":"request","body":{"n":1}}),
                ModuleLine::Publish {
                    address: "a.b".into(),
                    target: Some("tag:x=1".into()),
                    kind: MessageType::Request,
                    body: json!({"n":1}),
                },
            ),
            (
                json!({"op":"publish","address":"a.b"}),
                ModuleLine::Publish {
                    address: "a.b".into(),
                    target: None,
                    kind: MessageType::Event,
                    body: Value::Null,
                },
            ),
            (
                json!({"op":"reply","to":id.to_string(),"body":"pong"}),
                ModuleLine::Reply {
                    to: id,
                    body: json!("pong"),
                },
            ),
            (
                json!({"op":"status","body":{"health":"degraded"}}),
                ModuleLine::Status {
                    body: json!({"health":"degraded"}),
                },
            ),
            (
                json!({"op":"subscribe","address":"n1.local"}),
                ModuleLine::Subscribe {
                    address: "n1.local".into(),
                },
            ),
            (
                json!({"op":"log","level":"trace","msg":"hi"}),
                ModuleLine::Log {
                    level: LogLevel::Debug,
                    msg: "hi".into(),
                },
            ),
            (
                json!({"op":"log","level":"loud"}),
                ModuleLine::Log {
                    level: LogLevel::Info,
                    msg: String::new(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(&line.to_string()), Ok(want), "{line}");
        }
    }

    #[test]
    fn a_bad_line_says_what_is_wrong() {
        let cases = [
            ("{not json", "not JSON"),
            (r#"{"body":1}"#, "no `op`"),
            (r#"{"op":""}"#, "no `op`"),
            (r#"{"op":"explode"}"#, "unknown op `explode`"),
            (r#"{"op":7}"#, "unknown op `7`"),
            (r#"{"op":"publish","body":1}"#, "`publish` needs an `address`"),
            (r#"{"op":"publish","address":""}"#, "`publish` needs an `address`"),
            (r#"{"op":"subscribe"}"#, "`subscribe` needs an `address`"),
            (
                r#"{"op":"reply","body":1}"#,
                "`reply` needs `to`, the id of the request",
            ),
            (
                r#"{"op":"reply","to":"x"}"#,
                "`reply` has `to` = \"x\", which is not a request id",
            ),
            (
                r#"{"op":"publish","address":5}"#,
                "malformed `publish` line: invalid type",
            ),
            (r#"{"op":"log","msg":["a"]}"#, "malformed `log` line: invalid type"),
        ];
        for (line, want) in cases {
            let err = parse(line).expect_err(line).to_string();
            assert!(err.starts_with(want), "{line}: {err}");
        }
    }

    proptest::proptest! {
        /// Whatever a module writes, noise or a real line with characters
        /// changed, parsing ends in a line or a named error.
        #[test]
        fn any_line_parses_or_is_an_error(
            noise in ".{0,200}",
            pick in 0usize..5,
            flips in proptest::collection::vec((0usize..200, proptest::prelude::any::<char>()), 0..4),
        ) {
            // Never a panic, and `not JSON` exactly when it is not JSON.
            let consistent = |line: &str| {
                let json = serde_json::from_str::<Value>(line).is_ok();
                matches!(parse(line), Err(LineError::NotJson(_))) != json
            };
            proptest::prop_assert!(consistent(&noise), "{noise}");
            let lines = [
                r#"{"op":"publish","address":"a.b","target":"*","type":"event","body":{"n":[1,2]}}"#,
                r#"{"op":"reply","to":"0190b3c4-0000-7000-8000-000000000000","body":"pong"}"#,
                r#"{"op":"status","body":{"health":"ok"}}"#,
                r#"{"op":"subscribe","address":"n1.local"}"#,
                r#"{"op":"log","level":"warn","msg":"hi"}"#,
            ];
            let mut line: Vec<char> = lines[pick].chars().collect();
            for (at, c) in flips {
                let at = at % line.len();
                line[at] = c;
            }
            let line: String = line.into_iter().collect();
            proptest::prop_assert!(consistent(&line), "{line}");
        }
    }

    #[test]
    fn a_reply_without_to_keeps_the_line_to_find_the_request_elsewhere() {
        let Err(LineError::ReplyWithoutTo { line, .. }) = parse(r#"{"op":"reply","reply_to":"abc"}"#) else {
            panic!("a reply without `to` is its own error");
        };
        assert_eq!(line["reply_to"], "abc");
    }
}
