//! The ModBus: a node's local publish/subscribe bus between its modules.
//! Nothing on it leaves the node unless the Transponder sends it.
//!
//! Three ways to send:
//! - [`Publish`]: to every subscriber of the address;
//! - [`SendOne`]: to one subscriber (round-robin among several);
//! - [`Request`]: to one subscriber, and the reply comes back to the caller,
//!   matched by its `reply_to`, or a timeout error.
//!
//! An envelope for an address nobody subscribed to is answered with
//! [`BusError::NoHandler`], never dropped silently. Any envelope whose
//! `reply_to` names a pending request goes to that request's caller,
//! whatever its address.

use super::event_tap::EventTap;
use super::messages::{state_handlers, Deliver, QueueGauge, ShowState};
use crate::metrics::{DropReason, Metrics};
use crate::shown::shown;
use crate::wire::Envelope;
use actix::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// The most of an unknown address an error or a log line repeats: an
/// address nobody handles comes from the sender, and a 1 MB one was
/// echoed whole in every reply.
const SHOWN_ADDRESS_CHARS: usize = 256;

/// Why the ModBus could not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("no module handles address `{address}` on node {node}")]
    NoHandler { node: String, address: String },
    #[error("no reply from `{address}` on node {node} within {after_ms} ms")]
    Timeout {
        node: String,
        address: String,
        after_ms: u64,
    },
    #[error("module `{module}` is overloaded (its mailbox is full); envelope to `{address}` dropped")]
    MailboxFull { module: String, address: String },
}

impl BusError {
    /// The stable snake_case code used in API errors and `error` envelopes.
    pub fn code(&self) -> &'static str {
        match self {
            BusError::NoHandler { .. } => "no_handler",
            BusError::Timeout { .. } => "timeout",
            BusError::MailboxFull { .. } => "overloaded",
        }
    }
}

/// Subscribe `module` to `address`. Subscribing twice is harmless.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub address: String,
    pub module: String,
    pub recipient: Recipient<Deliver>,
}

/// Remove `module`'s subscription to `address`, or to everything if `None`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub address: Option<String>,
    pub module: String,
}

/// Deliver to every subscriber. Answers how many got it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<usize, BusError>")]
pub struct Publish(pub Envelope);

/// Deliver to one subscriber.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), BusError>")]
pub struct SendOne(pub Envelope);

/// Deliver to one subscriber and wait for the envelope that replies to it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Envelope, BusError>")]
pub struct Request {
    pub envelope: Envelope,
    pub timeout: Duration,
}

struct Subscriber {
    module: String,
    recipient: Recipient<Deliver>,
    /// The module's queue depth, shared by all its subscriptions.
    queue: QueueGauge,
}

struct PendingRequest {
    address: String,
    started: Instant,
    reply: oneshot::Sender<Envelope>,
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
struct Counters {
    delivered: u64,
    no_handler: u64,
    mailbox_full: u64,
    replies_matched: u64,
    requests_timed_out: u64,
}

/// The ModBus actor. One per node.
pub struct ModBus {
    node: String,
    span: tracing::Span,
    subscriptions: BTreeMap<String, Vec<Subscriber>>,
    round_robin: HashMap<String, usize>,
    pending: HashMap<Uuid, PendingRequest>,
    tap: EventTap,
    counters: Counters,
    metrics: Metrics,
}

impl ModBus {
    /// Counts drops and request latencies in the node's metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> ModBus {
        self.metrics = metrics;
        self
    }

    pub fn new(identity: &super::NodeIdentity, tap: EventTap) -> ModBus {
        ModBus {
            node: identity.name.clone(),
            span: identity.span("modbus"),
            subscriptions: BTreeMap::new(),
            round_robin: HashMap::new(),
            pending: HashMap::new(),
            tap,
            counters: Counters::default(),
            metrics: Metrics::default(),
        }
    }

    /// If `envelope` answers a pending request, hand it over and say so.
    fn complete_pending(&mut self, envelope: &Envelope) -> bool {
        let Some(id) = envelope.reply_to else { return false };
        let Some(pending) = self.pending.remove(&id) else {
            return false;
        };
        self.counters.replies_matched += 1;
        self.metrics.modbus_request_answered(pending.started.elapsed());
        debug!(envelope = %envelope.id, request = %id, address = %pending.address,
            elapsed_ms = pending.started.elapsed().as_millis() as u64, "reply matched to pending request");
        let _ = pending.reply.send(envelope.clone());
        true
    }

    fn no_handler(&mut self, envelope: &Envelope) -> BusError {
        self.counters.no_handler += 1;
        self.metrics.dropped(DropReason::NoHandler);
        let address = shown(&envelope.dst.address, SHOWN_ADDRESS_CHARS);
        debug!(envelope = %envelope.id, address = %address, kind = %envelope.kind,
            "no subscriber for address");
        BusError::NoHandler {
            node: self.node.clone(),
            address,
        }
    }

    /// Hands `envelope` to one subscriber; drops subscribers whose actor is gone.
    fn deliver(&mut self, sub_index: usize, envelope: &Envelope) -> Result<(), BusError> {
        let address = envelope.dst.address.clone();
        let Some(subs) = self.subscriptions.get_mut(&address) else {
            return Err(self.no_handler(envelope));
        };
        let sub = &subs[sub_index];
        let deliver = Deliver {
            envelope: envelope.clone(),
            ticket: sub.queue.ticket(),
        };
        match sub.recipient.try_send(deliver) {
            Ok(()) => {
                self.counters.delivered += 1;
                debug!(envelope = %envelope.id, address = %address, to = %sub.module, kind = %envelope.kind,
                    "delivered");
                Ok(())
            }
            Err(SendError::Full(_)) => {
                self.counters.mailbox_full += 1;
                self.metrics.dropped(DropReason::Overloaded);
                let module = sub.module.clone();
                warn!(envelope = %envelope.id, address = %address, to = %module,
                    "module mailbox full, envelope dropped");
                Err(BusError::MailboxFull { module, address })
            }
            Err(SendError::Closed(_)) => {
                let module = subs.remove(sub_index).module;
                if subs.is_empty() {
                    self.subscriptions.remove(&address);
                }
                info!(address = %address, module = %module, "subscriber is gone; subscription removed");
                Err(self.no_handler(envelope))
            }
        }
    }

    /// Delivers to exactly one live subscriber, round-robin.
    fn deliver_one(&mut self, envelope: &Envelope) -> Result<(), BusError> {
        loop {
            let count = match self.subscriptions.get(&envelope.dst.address) {
                Some(subs) if !subs.is_empty() => subs.len(),
                _ => return Err(self.no_handler(envelope)),
            };
            let turn = self.round_robin.entry(envelope.dst.address.clone()).or_insert(0);
            let index = *turn % count;
            *turn = turn.wrapping_add(1);
            match self.deliver(index, envelope) {
                // A dead subscriber was removed: try the next one.
                Err(BusError::NoHandler { .. }) if self.subscriptions.contains_key(&envelope.dst.address) => continue,
                other => return other,
            }
        }
    }
}

impl Actor for ModBus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        let _g = self.span.clone().entered();
        info!("modbus started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        info!(pending_requests = self.pending.len(), "modbus stopped");
    }
}

impl Handler<Subscribe> for ModBus {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        let queue = self
            .subscriptions
            .values()
            .flatten()
            .find(|s| s.module == msg.module)
            .map(|s| s.queue.clone())
            .unwrap_or_default();
        let subs = self.subscriptions.entry(msg.address.clone()).or_default();
        subs.retain(|s| s.module != msg.module);
        subs.push(Subscriber {
            module: msg.module.clone(),
            recipient: msg.recipient,
            queue,
        });
        info!(address = %msg.address, subscriber = %msg.module, subscribers = subs.len(), "subscribed");
    }
}

impl Handler<Unsubscribe> for ModBus {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.subscriptions.retain(|address, subs| {
            if msg.address.as_ref().is_none_or(|a| a == address) {
                subs.retain(|s| s.module != msg.module);
            }
            !subs.is_empty()
        });
        info!(address = ?msg.address, subscriber = %msg.module, "unsubscribed");
    }
}

impl Handler<Publish> for ModBus {
    type Result = Result<usize, BusError>;

    fn handle(&mut self, Publish(envelope): Publish, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        self.tap.emit(&envelope);
        if self.complete_pending(&envelope) {
            return Ok(1);
        }
        let count = self.subscriptions.get(&envelope.dst.address).map_or(0, Vec::len);
        if count == 0 {
            return Err(self.no_handler(&envelope));
        }
        let mut delivered = 0;
        let mut last_error = None;
        // Walk backwards so a removed dead subscriber does not shift the rest.
        for index in (0..count).rev() {
            match self.deliver(index, &envelope) {
                Ok(()) => delivered += 1,
                Err(e) => last_error = Some(e),
            }
        }
        match (delivered, last_error) {
            (0, Some(e)) => Err(e),
            (n, _) => Ok(n),
        }
    }
}

impl Handler<SendOne> for ModBus {
    type Result = Result<(), BusError>;

    fn handle(&mut self, SendOne(envelope): SendOne, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        self.tap.emit(&envelope);
        if self.complete_pending(&envelope) {
            return Ok(());
        }
        self.deliver_one(&envelope)
    }
}

impl Handler<Request> for ModBus {
    type Result = ResponseActFuture<Self, Result<Envelope, BusError>>;

    fn handle(&mut self, msg: Request, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let envelope = msg.envelope;
        let id = envelope.id;
        let address = envelope.dst.address.clone();
        self.tap.emit(&envelope);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(
            id,
            PendingRequest {
                address: address.clone(),
                started: Instant::now(),
                reply: tx,
            },
        );
        if let Err(e) = self.deliver_one(&envelope) {
            self.pending.remove(&id);
            return Box::pin(fut::ready(Err(e)));
        }
        let timeout = msg.timeout;
        let node = self.node.clone();
        Box::pin(
            async move { tokio::time::timeout(timeout, rx).await }
                .into_actor(self)
                .map(move |result, act, _ctx| match result {
                    Ok(Ok(reply)) => Ok(reply),
                    _ => {
                        act.pending.remove(&id);
                        act.counters.requests_timed_out += 1;
                        let _g = act.span.clone().entered();
                        debug!(request = %id, address = %address, "request timed out");
                        Err(BusError::Timeout {
                            node,
                            address,
                            after_ms: timeout.as_millis() as u64,
                        })
                    }
                }),
        )
    }
}

impl ShowState for ModBus {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> Value {
        let subscriptions: BTreeMap<&String, Vec<&String>> = self
            .subscriptions
            .iter()
            .map(|(address, subs)| (address, subs.iter().map(|s| &s.module).collect()))
            .collect();
        let queue_depths: BTreeMap<&String, usize> = self
            .subscriptions
            .values()
            .flatten()
            .map(|s| (&s.module, s.queue.depth()))
            .collect();
        json!({
            "subscriptions": subscriptions,
            "queue_depths": queue_depths,
            "pending_requests": self.pending.len(),
            "tap_listeners": self.tap.listeners(),
            "counters": self.counters,
        })
    }
}

state_handlers!(ModBus);

/// Answers the Monitor's `status_request` with the module's own state, as a
/// `status` envelope that replies to it on the ModBus.
pub fn answer_status(bus: &Addr<ModBus>, request: &Envelope, source: crate::wire::Source, body: serde_json::Value) {
    let reply = Envelope::reply_to_request(request, crate::wire::MessageType::Status, source, body);
    if bus.try_send(Publish(reply)).is_err() {
        tracing::warn!(request = %request.id, "modbus is full; status answer dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::event_tap::ReaderWants;
    use crate::actors::{DumpState, NodeIdentity, Snapshot};
    use crate::wire::{MessageType, Source};
    use std::sync::{Arc, Mutex};

    /// A test module that records what it is given and answers requests.
    struct Probe {
        name: String,
        bus: Addr<ModBus>,
        seen: Arc<Mutex<Vec<(String, Envelope)>>>,
        answer: bool,
        /// Tickets of envelopes still "being worked on" (kept by the test).
        held: Vec<crate::actors::QueueTicket>,
    }

    /// Answered once every message sent before it was handled (FIFO mailbox).
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Barrier;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Release;

    impl Handler<Release> for Probe {
        type Result = ();
        fn handle(&mut self, _: Release, _ctx: &mut Self::Context) {
            self.held.clear();
        }
    }

    impl Handler<Barrier> for Probe {
        type Result = ();
        fn handle(&mut self, _: Barrier, _ctx: &mut Self::Context) {}
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<crate::actors::StopModule> for Probe {
        type Result = ();
        fn handle(&mut self, _: crate::actors::StopModule, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    impl Handler<Deliver> for Probe {
        type Result = ();
        fn handle(&mut self, Deliver { envelope: env, ticket }: Deliver, _ctx: &mut Self::Context) {
            self.seen.lock().unwrap().push((self.name.clone(), env.clone()));
            if env.dst.address == "slow" {
                self.held.push(ticket);
            }
            if self.answer && env.kind == MessageType::Request {
                let reply = Envelope::reply_to_request(&env, MessageType::Reply, source(&self.name), env.body.clone());
                self.bus.do_send(Publish(reply));
            }
        }
    }

    fn identity() -> NodeIdentity {
        NodeIdentity {
            name: "n1".into(),
            cluster: "test".into(),
            tags: Default::default(),
        }
    }

    fn source(module: &str) -> Source {
        Source {
            node: "n1".into(),
            module: module.into(),
        }
    }

    fn envelope(kind: MessageType, address: &str) -> Envelope {
        Envelope::new(kind, source("test"), address, None, json!({"n": 1}))
    }

    async fn probe(
        bus: &Addr<ModBus>,
        name: &str,
        address: &str,
        answer: bool,
        seen: &Arc<Mutex<Vec<(String, Envelope)>>>,
    ) -> Addr<Probe> {
        let addr = Probe {
            name: name.into(),
            bus: bus.clone(),
            seen: seen.clone(),
            answer,
            held: Vec::new(),
        }
        .start();
        bus.send(Subscribe {
            address: address.into(),
            module: name.into(),
            recipient: addr.clone().recipient(),
        })
        .await
        .unwrap();
        addr
    }

    async fn settle() {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[actix_rt::test]
    async fn publish_reaches_every_subscriber_and_send_reaches_one() {
        let bus = ModBus::new(&identity(), EventTap::default()).start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _a = probe(&bus, "a", "topic", false, &seen).await;
        let _b = probe(&bus, "b", "topic", false, &seen).await;

        let n = bus
            .send(Publish(envelope(MessageType::Event, "topic")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 2);
        settle().await;
        let mut got: Vec<String> = seen.lock().unwrap().iter().map(|(m, _)| m.clone()).collect();
        got.sort();
        assert_eq!(got, ["a", "b"]);

        seen.lock().unwrap().clear();
        for _ in 0..4 {
            bus.send(SendOne(envelope(MessageType::Event, "topic")))
                .await
                .unwrap()
                .unwrap();
        }
        settle().await;
        let got: Vec<String> = seen.lock().unwrap().iter().map(|(m, _)| m.clone()).collect();
        assert_eq!(got.len(), 4, "send reaches exactly one subscriber each time");
        assert_eq!(got.iter().filter(|m| *m == "a").count(), 2, "round-robin: {got:?}");
    }

    #[actix_rt::test]
    async fn nobody_listening_is_an_error_not_silence() {
        let bus = ModBus::new(&identity(), EventTap::default()).start();
        for result in [
            bus.send(Publish(envelope(MessageType::Event, "mod.nobody")))
                .await
                .unwrap()
                .map(|_| ()),
            bus.send(SendOne(envelope(MessageType::Event, "mod.nobody")))
                .await
                .unwrap(),
            bus.send(Request {
                envelope: envelope(MessageType::Request, "mod.nobody"),
                timeout: Duration::from_secs(1),
            })
            .await
            .unwrap()
            .map(|_| ()),
        ] {
            let err = result.unwrap_err();
            assert_eq!(err.code(), "no_handler");
            assert!(err.to_string().contains("no module handles address `mod.nobody`"));
        }
        // A huge unknown address is not echoed back whole.
        let huge = format!("mod.{}", "é".repeat(500_000));
        let err = bus
            .send(SendOne(envelope(MessageType::Event, &huge)))
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.len() < 600, "the error repeats {} bytes", err.len());
        assert!(err.contains("(1000004 bytes)"), "{err:.400}");
    }

    #[actix_rt::test]
    async fn request_gets_its_reply_by_reply_to() {
        let bus = ModBus::new(&identity(), EventTap::default()).start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _p = probe(&bus, "echoer", "mod.echoer", true, &seen).await;
        let req = envelope(MessageType::Request, "mod.echoer");
        let id = req.id;
        let reply = bus
            .send(Request {
                envelope: req,
                timeout: Duration::from_secs(5),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.reply_to, Some(id));
        assert_eq!(reply.body, json!({"n": 1}));
        assert_eq!(reply.kind, MessageType::Reply);
    }

    #[actix_rt::test]
    async fn request_times_out_when_nobody_answers() {
        let bus = ModBus::new(&identity(), EventTap::default()).start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _p = probe(&bus, "mute", "mod.mute", false, &seen).await;
        let err = bus
            .send(Request {
                envelope: envelope(MessageType::Request, "mod.mute"),
                timeout: Duration::from_millis(50),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), "timeout");
        let Snapshot(state) = bus.send(DumpState).await.unwrap();
        assert_eq!(state["pending_requests"], 0, "timed-out requests are forgotten");
        assert_eq!(state["counters"]["requests_timed_out"], 1);
    }

    #[actix_rt::test]
    async fn dead_subscribers_are_removed() {
        let bus = ModBus::new(&identity(), EventTap::default()).start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let p = probe(&bus, "short-lived", "topic", false, &seen).await;
        p.send(crate::actors::StopModule).await.unwrap();
        settle().await;
        let err = bus
            .send(Publish(envelope(MessageType::Event, "topic")))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), "no_handler");
        let Snapshot(state) = bus.send(DumpState).await.unwrap();
        assert_eq!(state["subscriptions"], json!({}));
    }

    #[actix_rt::test]
    async fn unsubscribe_and_tap() {
        let tap = EventTap::default();
        let mut events = tap
            .subscribe(ReaderWants {
                bodies: true,
                ..ReaderWants::default()
            })
            .unwrap();
        let bus = ModBus::new(&identity(), tap).start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _p = probe(&bus, "a", "topic", false, &seen).await;
        bus.send(Unsubscribe {
            address: None,
            module: "a".into(),
        })
        .await
        .unwrap();
        let env = envelope(MessageType::Event, "topic");
        assert!(bus.send(Publish(env.clone())).await.unwrap().is_err());
        let frame = futures_util::StreamExt::next(&mut events).await.unwrap();
        assert!(
            String::from_utf8_lossy(&frame).starts_with(&format!("id: {}\n", env.id)),
            "the tap sees even undeliverable envelopes"
        );
    }

    #[actix_rt::test]
    async fn queue_depth_counts_envelopes_until_handled() {
        let bus = ModBus::new(&identity(), EventTap::default()).start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = probe(&bus, "worker", "slow", false, &seen).await;
        for _ in 0..3 {
            bus.send(Publish(envelope(MessageType::Event, "slow")))
                .await
                .unwrap()
                .unwrap();
        }
        probe.send(Barrier).await.unwrap();
        let Snapshot(state) = bus.send(DumpState).await.unwrap();
        assert_eq!(state["queue_depths"]["worker"], 3, "{state}");
        probe.send(Release).await.unwrap();
        let Snapshot(state) = bus.send(DumpState).await.unwrap();
        assert_eq!(state["queue_depths"]["worker"], 0, "{state}");
    }
}
