//! LoopbackCluster: the ClusterBus of a node that is alone.
//!
//! Every broadcast comes straight back to this node's Transponder, a direct
//! envelope reaches this node only, and the member list is this node. It is
//! what a single node runs until the ClusterBridge links it to others, and it
//! lets the Transponder's filtering, stamping and request gathering run for
//! real in one process.

use super::cluster_bus::*;
use super::messages::{state_handlers, ShowState};
use super::NodeIdentity;
use actix::prelude::*;
use serde_json::json;
use tracing::{debug, info, warn};

pub struct LoopbackCluster {
    identity: NodeIdentity,
    span: tracing::Span,
    transponder: Option<Recipient<FromCluster>>,
    started: std::time::Instant,
    broadcasts: u64,
    directs: u64,
    undeliverable: u64,
}

impl LoopbackCluster {
    pub fn new(identity: &NodeIdentity) -> LoopbackCluster {
        LoopbackCluster {
            identity: identity.clone(),
            span: identity.span("cluster"),
            transponder: None,
            started: std::time::Instant::now(),
            broadcasts: 0,
            directs: 0,
            undeliverable: 0,
        }
    }

    fn deliver(&mut self, envelope: crate::wire::Envelope) {
        match &self.transponder {
            Some(t) => {
                debug!(envelope = %envelope.id, kind = %envelope.kind, address = %envelope.dst.address,
                    "loopback delivery to transponder");
                t.do_send(FromCluster(envelope));
            }
            None => {
                self.undeliverable += 1;
                warn!(envelope = %envelope.id, "no transponder attached; envelope dropped");
            }
        }
    }
}

impl Actor for LoopbackCluster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        let _g = self.span.clone().entered();
        info!("cluster bus started (loopback: this node alone)");
    }
}

impl Handler<AttachTransponder> for LoopbackCluster {
    type Result = ();
    fn handle(&mut self, msg: AttachTransponder, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        info!("transponder attached");
        self.transponder = Some(msg.0);
    }
}

impl Handler<Broadcast> for LoopbackCluster {
    type Result = ();
    fn handle(&mut self, Broadcast(envelope): Broadcast, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.broadcasts += 1;
        self.deliver(envelope);
    }
}

impl Handler<Direct> for LoopbackCluster {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: Direct, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        if msg.node != self.identity.name {
            self.undeliverable += 1;
            warn!(envelope = %msg.envelope.id, to = %msg.node, "direct envelope to an unknown node dropped");
            return Err(format!("node `{}` is not a member of this cluster", msg.node));
        }
        self.directs += 1;
        self.deliver(msg.envelope);
        Ok(())
    }
}

impl Handler<SetNodeState> for LoopbackCluster {
    type Result = Result<(), String>;
    fn handle(&mut self, SetNodeState(envelope): SetNodeState, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        self.deliver(envelope);
        Ok(())
    }
}

impl Handler<ListMembers> for LoopbackCluster {
    type Result = Vec<Member>;
    fn handle(&mut self, _msg: ListMembers, _ctx: &mut Self::Context) -> Self::Result {
        vec![Member {
            name: self.identity.name.clone(),
            addr: None,
            status: MemberStatus::Alive,
            tags: self.identity.tags.clone(),
            incarnation: 0,
            since_ms: self.started.elapsed().as_millis() as u64,
        }]
    }
}

impl Handler<ClusterStatus> for LoopbackCluster {
    type Result = ClusterSummary;
    fn handle(&mut self, _msg: ClusterStatus, _ctx: &mut Self::Context) -> ClusterSummary {
        ClusterSummary {
            members: [("alive".to_string(), 1)].into(),
            standing: "alone".into(),
            ..ClusterSummary::default()
        }
    }
}

impl ShowState for LoopbackCluster {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> serde_json::Value {
        json!({
            "kind": "loopback",
            "members": 1,
            "transponder_attached": self.transponder.as_ref().is_some_and(|t| t.connected()),
            "broadcasts": self.broadcasts,
            "directs": self.directs,
            "undeliverable": self.undeliverable,
        })
    }
}

state_handlers!(LoopbackCluster);
