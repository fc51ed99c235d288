//! Messages shared by several actors, and the node identity they all carry.
//!
//! Messages owned by a single actor live beside that actor; what is here is
//! the vocabulary every module speaks: take an envelope, stop, dump your state.

use crate::wire::Envelope;
use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Who this node is: its name, cluster and tags. Handed to every actor at
/// construction (no global registry), so several nodes can share a process.
#[derive(Debug, Clone, Serialize)]
pub struct NodeIdentity {
    pub name: String,
    pub cluster: String,
    pub tags: Tags,
}

/// The node's tags, live: every clone of the identity sees a change at
/// once (selectors, the Monitor's report, the Deployer), and a watcher is
/// woken by it (the Deployer reconciles against the new tags).
#[derive(Clone)]
pub struct Tags(Arc<tokio::sync::watch::Sender<BTreeMap<String, String>>>);

impl std::fmt::Debug for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with(|tags| f.debug_tuple("Tags").field(tags).finish())
    }
}

/// `role=web,zone=a`, or `none`: as logs and the CLI show tags.
impl std::fmt::Display for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with(|tags| {
            if tags.is_empty() {
                return f.write_str("none");
            }
            let mut first = true;
            for (k, v) in tags {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{k}={v}")?;
            }
            Ok(())
        })
    }
}

impl Tags {
    pub fn new(tags: BTreeMap<String, String>) -> Tags {
        Tags(Arc::new(tokio::sync::watch::Sender::new(tags)))
    }

    /// The tags now.
    pub fn get(&self) -> BTreeMap<String, String> {
        self.0.borrow().clone()
    }

    /// Runs `f` on the tags now, without copying them (the hot path of
    /// matching every arriving envelope's target).
    pub fn with<R>(&self, f: impl FnOnce(&BTreeMap<String, String>) -> R) -> R {
        f(&self.0.borrow())
    }

    /// Replaces the tags; answers whether they changed.
    pub fn set(&self, tags: BTreeMap<String, String>) -> bool {
        self.0.send_if_modified(|held| {
            let changed = *held != tags;
            *held = tags;
            changed
        })
    }

    /// Woken at every change.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<BTreeMap<String, String>> {
        self.0.subscribe()
    }
}

impl Default for Tags {
    fn default() -> Tags {
        Tags::new(BTreeMap::new())
    }
}

impl From<BTreeMap<String, String>> for Tags {
    fn from(tags: BTreeMap<String, String>) -> Tags {
        Tags::new(tags)
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl NodeIdentity {
    /// The address of this node's Transponder.
    pub fn host_address(&self) -> String {
        format!("{}.host", self.name)
    }

    /// The address of this node's local notification topic.
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
/// The ticket counts the envelope in the module's queue depth until the
/// handler drops the message.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver {
    pub envelope: Envelope,
    pub ticket: QueueTicket,
}

/// Counts messages sent to an actor and not yet handled: the mailbox depth,
/// which actix keeps private. The sender takes a [`QueueTicket`] per message;
/// the ticket travels inside the message and gives itself back when the
/// handler is done with it, so receivers need do nothing.
#[derive(Debug, Clone, Default)]
pub struct QueueGauge(Arc<AtomicUsize>);

impl QueueGauge {
    pub fn ticket(&self) -> QueueTicket {
        self.0.fetch_add(1, Ordering::Relaxed);
        QueueTicket(self.0.clone())
    }

    /// Messages taken and not yet handled.
    pub fn depth(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One message counted by a [`QueueGauge`]; dropping it uncounts it.
#[derive(Debug)]
pub struct QueueTicket(Arc<AtomicUsize>);

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ask an actor to log one line with a snapshot of its state (SIGUSR1) and
/// return the same snapshot as JSON.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Snapshot")]
pub struct DumpState;

/// An actor's state snapshot, as JSON.
#[derive(MessageResponse, Debug, Clone, PartialEq)]
pub struct Snapshot(pub Value);

/// An actor that can show its state: the span its lines go in, and a
/// snapshot for `debug dump` and SIGUSR1. With [`state_handlers!`] it
/// answers [`DumpState`] (and, as a module, [`StopModule`]) the same way as
/// every other actor.
pub trait ShowState {
    fn span(&self) -> &tracing::Span;
    fn state(&self) -> Value;
}

/// Logs one line with `actor`'s state, in its span, and answers it.
pub fn dump_state(actor: &impl ShowState) -> Snapshot {
    let state = actor.state();
    actor
        .span()
        .in_scope(|| tracing::info!(state = %state, "state snapshot"));
    Snapshot(state)
}

/// `state_handlers!(Actor)` implements `Handler<DumpState>` with
/// [`dump_state`]; `state_handlers!(Actor, stop)` also `Handler<StopModule>`
/// that stops the actor at once (a module with a child process to stop
/// writes its own).
macro_rules! state_handlers {
    ($actor:ty) => {
        impl ::actix::Handler<$crate::actors::messages::DumpState> for $actor {
            type Result = $crate::actors::messages::Snapshot;
            fn handle(
                &mut self,
                _msg: $crate::actors::messages::DumpState,
                _ctx: &mut Self::Context,
            ) -> $crate::actors::messages::Snapshot {
                $crate::actors::messages::dump_state(self)
            }
        }
    };
    ($actor:ty, stop) => {
        $crate::actors::messages::state_handlers!($actor);
        impl ::actix::Handler<$crate::actors::messages::StopModule> for $actor {
            type Result = ();
            fn handle(&mut self, _msg: $crate::actors::messages::StopModule, ctx: &mut Self::Context) {
                ::actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(crate) use state_handlers;

/// Ask a module to stop cleanly (the supervisor does this on shutdown or
/// undeploy; a module that stops on request is not restarted).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopModule;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_count_until_dropped() {
        let gauge = QueueGauge::default();
        let a = gauge.ticket();
        let b = gauge.ticket();
        assert_eq!(gauge.depth(), 2);
        drop(a);
        assert_eq!(gauge.depth(), 1);
        drop(b);
        assert_eq!(gauge.depth(), 0);
    }

    #[test]
    fn tags_read_as_people_write_them() {
        let tags = Tags::default();
        assert_eq!(tags.to_string(), "none");
        tags.set(
            [
                ("zone".to_string(), "a".to_string()),
                ("role".to_string(), "web".to_string()),
            ]
            .into(),
        );
        assert_eq!(tags.to_string(), "role=web,zone=a");
        assert_eq!(format!("{tags:?}"), r#"Tags({"role": "web", "zone": "a"})"#);
    }
}
