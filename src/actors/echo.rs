//! The `echo` built-in module: answers every `request` with its own body.
//!
//! The simplest module there is, so users and tests can watch a message make
//! a full round trip: CLI → control API → Transponder → ClusterBus → (target
//! check) → ModBus → echo → back the same way.

use super::context::ModuleArgs;
use super::messages::{state_handlers, Deliver, ShowState};
use super::modbus::answer_status;
use super::modbus::{ModBus, Publish, Subscribe, Unsubscribe};
use super::supervisor::{spawn_module, RunningModule};
use super::NodeIdentity;
use crate::wire::{Envelope, MessageType, Source};
use actix::prelude::*;
use serde_json::json;
use tracing::{debug, info};

pub struct Echo {
    identity: NodeIdentity,
    name: String,
    span: tracing::Span,
    bus: Addr<ModBus>,
    requests: u64,
    other: u64,
}

/// The registry's factory for kind `echo` (the config is not used).
pub fn start_module(args: &ModuleArgs<'_>) -> anyhow::Result<RunningModule> {
    let echo = Echo::new(&args.ctx.identity, args.name, args.ctx.bus.clone());
    Ok(spawn_module(echo).1)
}

impl Echo {
    /// An echo module named `name`, listening on `mod.<name>`.
    pub fn new(identity: &NodeIdentity, name: &str, bus: Addr<ModBus>) -> Echo {
        Echo {
            identity: identity.clone(),
            name: name.to_string(),
            span: identity.span(name),
            bus,
            requests: 0,
            other: 0,
        }
    }

    fn source(&self) -> Source {
        Source {
            node: self.identity.name.clone(),
            module: self.name.clone(),
        }
    }

    fn address(&self) -> String {
        format!("mod.{}", self.name)
    }
}

impl Actor for Echo {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.bus.do_send(Subscribe {
            address: self.address(),
            module: self.name.clone(),
            recipient: ctx.address().recipient(),
        });
        info!(address = %self.address(), "echo module started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.bus.do_send(Unsubscribe {
            address: None,
            module: self.name.clone(),
        });
        info!(requests = self.requests, "echo module stopped");
    }
}

impl Handler<Deliver> for Echo {
    type Result = ();

    fn handle(&mut self, Deliver { envelope, .. }: Deliver, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        if envelope.kind == MessageType::StatusRequest {
            let body = json!({"requests": self.requests, "other_envelopes": self.other});
            return answer_status(&self.bus, &envelope, self.source(), body);
        }
        if envelope.kind != MessageType::Request {
            self.other += 1;
            debug!(envelope = %envelope.id, kind = %envelope.kind, "not a request; nothing to echo");
            return;
        }
        self.requests += 1;
        let reply = Envelope::reply_to_request(&envelope, MessageType::Reply, self.source(), envelope.body.clone());
        debug!(envelope = %envelope.id, reply = %reply.id, "echoing request");
        self.bus.do_send(Publish(reply));
    }
}

impl ShowState for Echo {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> serde_json::Value {
        json!({"address": self.address(), "requests": self.requests, "other_envelopes": self.other})
    }
}

state_handlers!(Echo, stop);
