//! The `uptime` built-in module: reports the host's load and uptime.
//!
//! Ask it with a request to `mod.uptime` (any body); with `"publish_secs"` in
//! its config it also publishes the figures as an event on `uptime` every so
//! often. It is also the worked example in `docs/modules.md` ("Built-in modules in Rust"):
//! an actor, a `start_module` factory, and one line in the registry.

use super::context::ModuleArgs;
use super::messages::{state_handlers, Deliver, ShowState};
use super::modbus::answer_status;
use super::modbus::{ModBus, Publish, Subscribe, Unsubscribe};
use super::supervisor::{spawn_module, RunningModule};
use super::transponder::{PublishToCluster, TransponderSlot};
use super::NodeIdentity;
use crate::wire::{Envelope, MessageType, Source};
use actix::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;
use tracing::{debug, info, warn};

pub struct Uptime {
    identity: NodeIdentity,
    name: String,
    span: tracing::Span,
    bus: Addr<ModBus>,
    transponder: TransponderSlot,
    /// Publish the figures cluster-wide this often (config `publish_secs`).
    publish_every: Option<Duration>,
    answered: u64,
}

/// A day: longer is a typo (`1e30` made `Duration::from_secs_f64` panic).
const MAX_PUBLISH_SECS: f64 = 86_400.0;

/// The config's `publish_secs`, checked: a refusal is a clear start error,
/// where an unchecked `1e30` panicked the supervisor.
fn publish_interval(config: &Value) -> anyhow::Result<Option<Duration>> {
    match config.get("publish_secs") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let secs = v
                .as_f64()
                .filter(|s| (0.1..=MAX_PUBLISH_SECS).contains(s))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "config `publish_secs` must be a number of seconds from 0.1 to {MAX_PUBLISH_SECS}, not {v}"
                    )
                })?;
            Ok(Some(Duration::from_secs_f64(secs)))
        }
    }
}

/// The registry's factory for kind `uptime`.
pub fn start_module(args: &ModuleArgs<'_>) -> anyhow::Result<RunningModule> {
    let publish_every = publish_interval(args.config)?;
    let uptime = Uptime {
        identity: args.ctx.identity.clone(),
        name: args.name.to_string(),
        span: args.ctx.identity.span(args.name),
        bus: args.ctx.bus.clone(),
        transponder: args.ctx.transponder.clone(),
        publish_every,
        answered: 0,
    };
    Ok(spawn_module(uptime).1)
}

/// The host's figures from `/proc`: load averages and seconds since boot.
pub fn host_figures() -> Value {
    let load: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    let uptime_secs: Option<f64> = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |field: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let rss = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    });
    json!({
        "load": load,
        "uptime_secs": uptime_secs,
        "memory": {
            "total_bytes": kib("MemTotal:"),
            "available_bytes": kib("MemAvailable:"),
            "node_rss_bytes": rss,
        },
    })
}

impl Uptime {
    fn source(&self) -> Source {
        Source {
            node: self.identity.name.clone(),
            module: self.name.clone(),
        }
    }
}

impl Actor for Uptime {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.bus.do_send(Subscribe {
            address: format!("mod.{}", self.name),
            module: self.name.clone(),
            recipient: ctx.address().recipient(),
        });
        if let Some(every) = self.publish_every {
            ctx.run_interval(every, |act, _ctx| {
                let Some(transponder) = act.transponder.get() else {
                    return;
                };
                transponder.do_send(PublishToCluster {
                    kind: MessageType::Event,
                    module: act.name.clone(),
                    address: "uptime".into(),
                    target: None,
                    body: host_figures(),
                });
            });
        }
        info!(publish_every = ?self.publish_every, "uptime module started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.bus.do_send(Unsubscribe {
            address: None,
            module: self.name.clone(),
        });
    }
}

impl Handler<Deliver> for Uptime {
    type Result = ();

    fn handle(&mut self, Deliver { envelope, .. }: Deliver, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        if envelope.kind == MessageType::StatusRequest {
            let body = json!({"answered": self.answered, "host": host_figures()});
            return answer_status(&self.bus, &envelope, self.source(), body);
        }
        if envelope.kind != MessageType::Request {
            return debug!(envelope = %envelope.id, kind = %envelope.kind, "ignoring a non-request");
        }
        self.answered += 1;
        let reply = Envelope::reply_to_request(&envelope, MessageType::Reply, self.source(), host_figures());
        if self.bus.try_send(Publish(reply)).is_err() {
            warn!(envelope = %envelope.id, "modbus is full; reply dropped");
        }
    }
}

impl ShowState for Uptime {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> Value {
        json!({"answered": self.answered, "publish_every_ms": self.publish_every.map(|d| d.as_millis() as u64)})
    }
}

state_handlers!(Uptime, stop);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_secs_is_checked_not_trusted() {
        assert_eq!(publish_interval(&json!({})).unwrap(), None);
        assert_eq!(
            publish_interval(&json!({"publish_secs": 5})).unwrap(),
            Some(Duration::from_secs(5))
        );
        for bad in [json!(1e30), json!(0.01), json!(-1), json!("5")] {
            let err = publish_interval(&json!({ "publish_secs": bad }))
                .unwrap_err()
                .to_string();
            assert!(err.contains("from 0.1 to 86400"), "{bad}: {err}");
        }
    }
}
