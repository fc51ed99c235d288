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
use crate::cluster::core::keyed::{EntryRules, HeldSet, Refused, Taken};
use crate::cluster::protocol::{Entry, SetId};
use crate::wire::now_ms;
use actix::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often a node alone prunes its datasets.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

pub struct LoopbackCluster {
    identity: NodeIdentity,
    span: tracing::Span,
    transponder: Option<Recipient<FromCluster>>,
    started: std::time::Instant,
    broadcasts: u64,
    directs: u64,
    undeliverable: u64,
    /// The keyed datasets a node alone holds (the deployments table), and
    /// who is told of their changes.
    held: HashMap<SetId, HeldSet>,
    watchers: HashMap<SetId, Recipient<EntriesChanged>>,
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
            held: HashMap::new(),
            watchers: HashMap::new(),
        }
    }

    /// Holds keyed dataset `set` (the deployments table) under `rules`.
    pub fn holding(mut self, set: SetId, rules: Box<dyn EntryRules>) -> LoopbackCluster {
        self.held.insert(set, HeldSet::new(rules));
        self
    }

    fn changed(&self, set: SetId, changed: Vec<Arc<Entry>>, removed: Vec<Arc<str>>) {
        if let Some(watcher) = self.watchers.get(&set) {
            watcher.do_send(EntriesChanged {
                set,
                changed,
                removed,
                refused: Vec::new(),
            });
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
        ctx.run_interval(PRUNE_EVERY, |act, _ctx| {
            let now = now_ms();
            let pruned: Vec<(SetId, Vec<Arc<str>>)> =
                act.held.iter_mut().map(|(set, h)| (*set, h.prune(now))).collect();
            for (set, removed) in pruned.into_iter().filter(|(_, r)| !r.is_empty()) {
                act.changed(set, Vec::new(), removed);
            }
        });
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

impl Handler<WriteEntry> for LoopbackCluster {
    type Result = Result<Arc<Entry>, String>;
    fn handle(&mut self, msg: WriteEntry, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let me: Arc<str> = self.identity.name.as_str().into();
        let held = self
            .held
            .get_mut(&msg.set)
            .ok_or_else(|| format!("this node holds no dataset {}", msg.set))?;
        let entry = held
            .write(&msg.key, msg.body, &me, now_ms(), msg.clock)
            .map_err(|why| match why {
                Refused::Invalid(why) => format!("the entry is refused: {why}"),
                Refused::Obsolete => "the entry is refused: a newer entry already supersedes it".to_string(),
            })?;
        info!(set = msg.set, key = %msg.key, "wrote a dataset entry");
        self.changed(msg.set, vec![entry.clone()], Vec::new());
        Ok(entry)
    }
}

impl Handler<LoadEntries> for LoopbackCluster {
    type Result = usize;
    fn handle(&mut self, msg: LoadEntries, _ctx: &mut Self::Context) -> usize {
        let _g = self.span.clone().entered();
        let Some(held) = self.held.get_mut(&msg.set) else {
            return 0;
        };
        let now = now_ms();
        let taken: Vec<Arc<Entry>> = msg
            .entries
            .into_iter()
            .filter(|e| matches!(held.take(e.clone(), now), Taken::New))
            .collect();
        let count = taken.len();
        self.changed(msg.set, taken, Vec::new());
        count
    }
}

impl Handler<ListEntries> for LoopbackCluster {
    type Result = Vec<Arc<Entry>>;
    fn handle(&mut self, ListEntries(set): ListEntries, _ctx: &mut Self::Context) -> Self::Result {
        self.held
            .get(&set)
            .map(|h| h.entries.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Handler<WatchEntries> for LoopbackCluster {
    type Result = ();
    /// The watcher gets what is held now first (see the bridge's).
    fn handle(&mut self, msg: WatchEntries, _ctx: &mut Self::Context) {
        let held: Vec<Arc<Entry>> = self
            .held
            .get(&msg.set)
            .map(|h| h.entries.iter().cloned().collect())
            .unwrap_or_default();
        if !held.is_empty() {
            msg.watcher.do_send(EntriesChanged {
                set: msg.set,
                changed: held,
                removed: Vec::new(),
                refused: Vec::new(),
            });
        }
        self.watchers.insert(msg.set, msg.watcher);
    }
}

impl Handler<SetTags> for LoopbackCluster {
    type Result = ();
    /// Alone, the identity's live tags are all there is to change.
    fn handle(&mut self, _msg: SetTags, _ctx: &mut Self::Context) {}
}

impl Handler<ListMembers> for LoopbackCluster {
    type Result = Vec<Member>;
    fn handle(&mut self, _msg: ListMembers, _ctx: &mut Self::Context) -> Self::Result {
        vec![Member {
            name: self.identity.name.clone(),
            addr: None,
            status: MemberStatus::Alive,
            tags: self.identity.tags.get(),
            incarnation: 0,
            since_ms: self.started.elapsed().as_millis() as u64,
            boot_ms: 0,
            identity: None,
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
