//! Messages shared by several actors, and the node identity they all carry.
//!
//! Messages owned by a single actor live beside that actor; what is here is
//! the vocabulary every module speaks: take an envelope, stop, dump your state.

use crate::wire::Envelope;
use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tokio::sync::broadcast;

/// Who this node is: its name, cluster and tags. Handed to every actor at
/// construction (no global registry), so several nodes can share a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeIdentity {
    pub name: String,
    pub cluster: String,
    pub tags: BTreeMap<String, String>,
}

impl NodeIdentity {
    /// The address of this node's Transponder (SPEC §2).
    pub fn host_address(&self) -> String {
        format!("{}.host", self.name)
    }

    /// The address of this node's local notification topic (SPEC §2).
    pub fn local_address(&self) -> String {
        format!("{}.local", self.name)
    }

    /// The tracing span every actor of this node logs under, so each line
    /// names the node and the module. A root span: actors outlive whatever
    /// started them, so they must not inherit its span.
    pub fn span(&self, module: &str) -> tracing::Span {
        tracing::info_span!(parent: None, "actor", node = %self.name, module = %module)
    }
}

/// The ModBus hands an envelope to a module that subscribed to its address.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Deliver(pub Envelope);

/// Ask an actor to log one line with a snapshot of its state (SIGUSR1) and
/// return the same snapshot as JSON.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Snapshot")]
pub struct DumpState;

/// An actor's state snapshot, as JSON.
#[derive(MessageResponse, Debug, Clone, PartialEq)]
pub struct Snapshot(pub Value);

/// Ask a module to stop cleanly (the supervisor does this on shutdown or
/// undeploy; a module that stops on request is not restarted).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopModule;

/// The node's live stream of envelopes (for `GET /v1/events` and
/// `conjoiner tail`). Cloning is cheap; emitting with no listener costs a
/// check and nothing more.
#[derive(Clone)]
pub struct EventTap {
    sender: broadcast::Sender<Envelope>,
}

impl EventTap {
    pub fn new(capacity: usize) -> EventTap {
        let (sender, _) = broadcast::channel(capacity);
        EventTap { sender }
    }

    /// Offers an envelope to every listener; slow listeners lose the oldest.
    pub fn emit(&self, envelope: &Envelope) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(envelope.clone());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.sender.subscribe()
    }

    pub fn listeners(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl Default for EventTap {
    fn default() -> Self {
        EventTap::new(1024)
    }
}
