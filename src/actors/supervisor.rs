//! The NodeSupervisor: owns every module actor of a node and keeps it running.
//!
//! actix's own `Supervisor` does not restart an actor whose handler panicked,
//! so this one watches each child's *task* instead: every module is spawned by
//! [`spawn_module`] as its own task, and the task's `JoinHandle` tells us when
//! the actor stopped and whether it panicked. On an unexpected exit the
//! supervisor restarts the module through its factory with exponential
//! backoff, and gives up after `max_restarts` restarts within `period`
//! (OTP's intensity/period), marking the module `failed`. Those decisions
//! are [`super::restart::RestartHistory`]'s, tested there on a mocked clock.
//!
//! On shutdown it stops modules one by one in reverse start order, waiting
//! for each to exit (or aborting it after a grace period) before the next.

use super::messages::{DumpState, Snapshot, StopModule};
use super::modbus::{ModBus, Publish};
use super::restart::{RestartDecision, RestartHistory};
pub use super::restart::{RestartMode, RestartPolicy};
use super::NodeIdentity;
use crate::wire::{Envelope, MessageType, Source};
use actix::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{error, info, warn};

/// How the supervisor reaches a running module.
#[derive(Clone)]
pub struct ModuleControl {
    pub stop: Recipient<StopModule>,
    pub dump: Recipient<DumpState>,
}

/// A started module: its control handles and the task that runs it.
pub struct RunningModule {
    pub control: ModuleControl,
    pub task: JoinHandle<()>,
    /// Why the module failed, if it stopped itself because of a failure
    /// (a process module whose child exited non-zero).
    pub exit_note: ExitNote,
}

impl RunningModule {
    /// Shares `note` with the actor, which fills it before stopping on a failure.
    pub fn with_exit_note(mut self, note: ExitNote) -> RunningModule {
        self.exit_note = note;
        self
    }
}

/// A module's own account of why it stopped. An actor that stops itself on
/// a failure writes the reason here first; a stop with a note counts as a
/// failure for the restart policy, one without is a clean exit.
#[derive(Debug, Clone, Default)]
pub struct ExitNote(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl ExitNote {
    pub fn fail(&self, reason: impl Into<String>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(reason.into());
        }
    }

    fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Builds (or rebuilds, on restart) a module. An `Err` counts as a failed
/// start and goes through the same restart policy as a crash.
pub type ModuleFactory = Box<dyn Fn() -> anyhow::Result<RunningModule> + Send>;

/// Everything the supervisor needs to run one module.
pub struct ModuleSpec {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub restart: RestartPolicy,
    /// How long the module may take to stop before its task is aborted.
    pub stop_grace: Duration,
    pub factory: ModuleFactory,
}

/// Starts an actor as a module: in its own task, so its exit can be watched.
pub fn spawn_module<A>(actor: A) -> (Addr<A>, RunningModule)
where
    A: Actor<Context = Context<A>> + Handler<StopModule> + Handler<DumpState>,
{
    let mut ctx = Context::<A>::new();
    ctx.set_mailbox_capacity(1024);
    let addr = ctx.address();
    let task = actix_rt::spawn(ctx.into_future(actor));
    let control = ModuleControl {
        stop: addr.clone().recipient(),
        dump: addr.clone().recipient(),
    };
    (
        addr,
        RunningModule {
            control,
            task,
            exit_note: ExitNote::default(),
        },
    )
}

/// The lifecycle state of a module, as `conjoiner modules` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleState {
    Starting,
    Running,
    /// Waiting for the backoff delay before the next restart.
    Restarting,
    Stopping,
    Stopped,
    /// Gave up: too many restarts, or it failed under policy `never`.
    Failed,
}

/// What one module looks like from outside.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub state: ModuleState,
    pub restarts: u32,
    pub uptime_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// Start a module under supervision. Fails if the name is taken.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct StartModule(pub ModuleSpec);

/// Stop one module and forget it (undeploy).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct RemoveModule(pub String);

/// List every module with its state.
#[derive(Message)]
#[rtype(result = "Vec<ModuleInfo>")]
pub struct ListModules;

/// Stop every module in reverse start order; answers when all are down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

#[derive(Debug, Clone)]
enum ExitOutcome {
    /// The actor stopped (on its own, or because it was asked to).
    Clean,
    Panicked(String),
    /// The module stopped itself and said why (an [`ExitNote`]).
    Failed(String),
    Cancelled,
    StartFailed(String),
}

impl ExitOutcome {
    fn is_failure(&self) -> bool {
        !matches!(self, ExitOutcome::Clean)
    }

    fn describe(&self) -> String {
        match self {
            ExitOutcome::Clean => "stopped".into(),
            ExitOutcome::Panicked(m) => format!("panicked: {m}"),
            ExitOutcome::Failed(m) => m.clone(),
            ExitOutcome::Cancelled => "task cancelled".into(),
            ExitOutcome::StartFailed(m) => format!("failed to start: {m}"),
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited {
    name: String,
    generation: u64,
    outcome: ExitOutcome,
}

struct Child {
    spec: ModuleSpec,
    state: ModuleState,
    /// Bumped at every start, so a late exit notice of an old run is ignored.
    generation: u64,
    control: Option<ModuleControl>,
    abort: Option<AbortHandle>,
    restarts: RestartHistory,
    started_at: Option<Instant>,
    last_exit: Option<String>,
    /// Set when the module is removed: once it is down, forget it.
    remove_when_stopped: Option<oneshot::Sender<()>>,
}

impl Child {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: self.spec.name.clone(),
            kind: self.spec.kind.clone(),
            version: self.spec.version.clone(),
            state: self.state.clone(),
            restarts: self.restarts.total(),
            uptime_ms: match (&self.state, self.started_at) {
                (ModuleState::Running, Some(t)) => t.elapsed().as_millis() as u64,
                _ => 0,
            },
            last_exit: self.last_exit.clone(),
        }
    }
}

/// The per-node supervisor actor.
pub struct NodeSupervisor {
    identity: NodeIdentity,
    span: tracing::Span,
    bus: Option<Addr<ModBus>>,
    children: Vec<Child>,
    shutting_down: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

impl NodeSupervisor {
    pub fn new(identity: &NodeIdentity) -> NodeSupervisor {
        NodeSupervisor {
            identity: identity.clone(),
            span: identity.span("supervisor"),
            bus: None,
            children: Vec::new(),
            shutting_down: false,
            shutdown_waiters: Vec::new(),
        }
    }

    /// Tells the node's modules on the ModBus (`<node>.local`) when a
    /// module exits unexpectedly (`module_restarting`), runs again after a
    /// restart (`module_restarted`), or is given up on (`module_failed`),
    /// so the Monitor reports it at once instead of on its next round.
    pub fn with_bus(mut self, bus: Addr<ModBus>) -> NodeSupervisor {
        self.bus = Some(bus);
        self
    }

    fn report_module_event(&self, event: &str, name: &str, reason: &str) {
        let Some(bus) = &self.bus else { return };
        let envelope = Envelope::new(
            MessageType::Event,
            Source {
                node: self.identity.name.clone(),
                module: "supervisor".into(),
            },
            self.identity.local_address(),
            None,
            json!({"event": event, "module": name, "reason": reason}),
        );
        // Nobody listening is normal; the failure is in the log and the module list.
        bus.do_send(Publish(envelope));
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.spec.name == name)
    }

    /// Runs the factory and starts watching the new task.
    fn start_child(&mut self, name: &str, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let Some(child) = self.child_mut(name) else { return };
        child.generation += 1;
        let generation = child.generation;
        child.state = ModuleState::Starting;
        // A factory that panics (say, on a config value it did not expect)
        // fails this module's start; it must not take the supervisor, and
        // with it every other module, down.
        let started =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (child.spec.factory)())).unwrap_or_else(|panic| {
                Err(anyhow::anyhow!(
                    "the module panicked while starting: {}",
                    panic_message(panic)
                ))
            });
        match started {
            Ok(running) => {
                child.control = Some(running.control);
                child.abort = Some(running.task.abort_handle());
                child.started_at = Some(Instant::now());
                child.state = ModuleState::Running;
                info!(module_name = %name, kind = %child.spec.kind, generation, restarts = child.restarts.total(),
                    "module running");
                if child.restarts.total() > 0 {
                    let restarts = child.restarts.total();
                    self.report_module_event(
                        "module_restarted",
                        name,
                        &format!("running again after {restarts} restarts"),
                    );
                }
                let name = name.to_string();
                let note = running.exit_note;
                actix_rt::spawn(async move {
                    let outcome = match running.task.await {
                        Ok(()) => match note.take() {
                            Some(reason) => ExitOutcome::Failed(reason),
                            None => ExitOutcome::Clean,
                        },
                        Err(e) if e.is_panic() => ExitOutcome::Panicked(panic_message(e.into_panic())),
                        Err(_) => ExitOutcome::Cancelled,
                    };
                    me.do_send(ChildExited {
                        name,
                        generation,
                        outcome,
                    });
                });
            }
            Err(e) => {
                let outcome = ExitOutcome::StartFailed(format!("{e:#}"));
                self.on_exit(name.to_string(), generation, outcome, ctx);
            }
        }
    }

    fn on_exit(&mut self, name: String, generation: u64, outcome: ExitOutcome, ctx: &mut Context<Self>) {
        let shutting_down = self.shutting_down;
        let Some(index) = self.children.iter().position(|c| c.spec.name == name) else {
            return;
        };
        let child = &mut self.children[index];
        if child.generation != generation {
            return;
        }
        child.control = None;
        child.abort = None;
        child.last_exit = Some(outcome.describe());

        if child.state == ModuleState::Stopping || shutting_down {
            child.state = ModuleState::Stopped;
            info!(module_name = %name, exit = %outcome.describe(), "module stopped");
            if let Some(done) = child.remove_when_stopped.take() {
                self.children.remove(index);
                let _ = done.send(());
                info!(module_name = %name, "module removed");
            }
            if shutting_down {
                self.stop_next(ctx);
            }
            return;
        }

        let policy = child.spec.restart;
        let delay = match child.restarts.decide(&policy, outcome.is_failure(), Instant::now()) {
            RestartDecision::Stay { failed } => {
                child.state = if failed {
                    ModuleState::Failed
                } else {
                    ModuleState::Stopped
                };
                warn!(module_name = %name, exit = %outcome.describe(), state = ?child.state,
                    policy = ?policy.mode, "module exited and its policy does not restart it");
                if failed {
                    let reason = format!("{} (restart policy {:?})", outcome.describe(), policy.mode);
                    self.report_module_event("module_failed", &name, &reason);
                }
                return;
            }
            RestartDecision::GiveUp => {
                child.state = ModuleState::Failed;
                error!(module_name = %name, exit = %outcome.describe(), max_restarts = policy.max_restarts,
                    period_secs = policy.period.as_secs_f64(),
                    "module failed: it exited again after {} restarts within {:?}; giving up",
                    policy.max_restarts, policy.period);
                let reason = format!(
                    "{}; gave up after {} restarts within {} s",
                    outcome.describe(),
                    policy.max_restarts,
                    policy.period.as_secs()
                );
                self.report_module_event("module_failed", &name, &reason);
                return;
            }
            RestartDecision::Restart { delay } => delay,
        };
        child.state = ModuleState::Restarting;
        warn!(module_name = %name, exit = %outcome.describe(), restarts = child.restarts.total(),
            backoff_ms = delay.as_millis() as u64, "module exited unexpectedly; restarting after backoff");
        self.report_module_event("module_restarting", &name, &outcome.describe());
        ctx.run_later(delay, move |act, ctx| {
            let still_waiting = act
                .child_mut(&name)
                .is_some_and(|c| c.generation == generation && c.state == ModuleState::Restarting);
            if still_waiting && !act.shutting_down {
                let _g = act.span.clone().entered();
                act.start_child(&name, ctx);
            }
        });
    }

    /// Asks one module to stop; aborts its task if it takes too long.
    fn stop_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        let child = &mut self.children[index];
        let grace = child.spec.stop_grace;
        let name = child.spec.name.clone();
        let generation = child.generation;
        match child.control.take() {
            Some(control) => {
                child.state = ModuleState::Stopping;
                info!(module_name = %name, "stopping module");
                if control.stop.try_send(StopModule).is_err() {
                    if let Some(abort) = &child.abort {
                        abort.abort();
                    }
                }
                ctx.run_later(grace, move |act, _ctx| {
                    let _g = act.span.clone().entered();
                    if let Some(c) = act.child_mut(&name) {
                        if c.generation == generation && c.state == ModuleState::Stopping {
                            warn!(module_name = %name, grace_ms = grace.as_millis() as u64,
                                "module did not stop in time; aborting its task");
                            if let Some(abort) = &c.abort {
                                abort.abort();
                            }
                        }
                    }
                });
            }
            None => {
                // Not running (restarting, failed, stopped): nothing to wait for.
                child.state = ModuleState::Stopped;
                child.generation += 1;
                let name = child.spec.name.clone();
                if let Some(done) = child.remove_when_stopped.take() {
                    self.children.remove(index);
                    let _ = done.send(());
                    info!(module_name = %name, "module removed");
                }
                if self.shutting_down {
                    self.stop_next(ctx);
                }
            }
        }
    }

    /// During shutdown: stop the last module that is not down yet, or finish.
    fn stop_next(&mut self, ctx: &mut Context<Self>) {
        if self.children.iter().any(|c| c.state == ModuleState::Stopping) {
            return;
        }
        let next = self
            .children
            .iter()
            .rposition(|c| !matches!(c.state, ModuleState::Stopped | ModuleState::Failed));
        match next {
            Some(index) => self.stop_child(index, ctx),
            None => {
                info!(modules = self.children.len(), "all modules stopped");
                for waiter in self.shutdown_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
    }

    fn snapshot(&self) -> Value {
        json!({
            "shutting_down": self.shutting_down,
            "modules": self.children.iter().map(|c| {
                let info = c.info();
                json!({
                    "name": info.name,
                    "kind": info.kind,
                    "state": info.state,
                    "restarts": info.restarts,
                    "restarts_in_period": c.restarts.in_period(),
                    "generation": c.generation,
                    "uptime_ms": info.uptime_ms,
                    "last_exit": info.last_exit,
                })
            }).collect::<Vec<_>>(),
        })
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

impl Actor for NodeSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        info!("supervisor started");
    }
}

impl Handler<StartModule> for NodeSupervisor {
    type Result = Result<(), String>;

    fn handle(&mut self, StartModule(spec): StartModule, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        if self.shutting_down {
            return Err("the node is shutting down".into());
        }
        if self.children.iter().any(|c| c.spec.name == spec.name) {
            return Err(format!("a module named `{}` is already supervised", spec.name));
        }
        let name = spec.name.clone();
        info!(module_name = %name, kind = %spec.kind, policy = ?spec.restart.mode,
            max_restarts = spec.restart.max_restarts, "supervising module");
        self.children.push(Child {
            spec,
            state: ModuleState::Starting,
            generation: 0,
            control: None,
            abort: None,
            restarts: RestartHistory::default(),
            started_at: None,
            last_exit: None,
            remove_when_stopped: None,
        });
        self.start_child(&name, ctx);
        Ok(())
    }
}

impl Handler<RemoveModule> for NodeSupervisor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, RemoveModule(name): RemoveModule, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let Some(index) = self.children.iter().position(|c| c.spec.name == name) else {
            return Box::pin(async move { Err(format!("no module named `{name}`")) });
        };
        let (tx, rx) = oneshot::channel();
        self.children[index].remove_when_stopped = Some(tx);
        if self.children[index].state != ModuleState::Stopping {
            self.stop_child(index, ctx);
        }
        Box::pin(async move { rx.await.map_err(|_| "the supervisor stopped".to_string()) })
    }
}

impl Handler<ChildExited> for NodeSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.on_exit(msg.name, msg.generation, msg.outcome, ctx);
    }
}

impl Handler<ListModules> for NodeSupervisor {
    type Result = Vec<ModuleInfo>;

    fn handle(&mut self, _msg: ListModules, _ctx: &mut Self::Context) -> Self::Result {
        self.children.iter().map(Child::info).collect()
    }
}

impl Handler<Shutdown> for NodeSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let (tx, rx) = oneshot::channel();
        self.shutdown_waiters.push(tx);
        if !self.shutting_down {
            info!(
                modules = self.children.len(),
                "shutting down: stopping modules in reverse start order"
            );
            self.shutting_down = true;
        }
        self.stop_next(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<DumpState> for NodeSupervisor {
    type Result = ResponseFuture<Snapshot>;

    /// Logs the supervisor's own snapshot, then asks every running module to
    /// log its own, and answers with all of them keyed by module name.
    fn handle(&mut self, _msg: DumpState, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let own = self.snapshot();
        info!(state = %own, "state snapshot");
        let asks: Vec<(String, ModuleControl)> = self
            .children
            .iter()
            .filter_map(|c| c.control.clone().map(|ctl| (c.spec.name.clone(), ctl)))
            .collect();
        Box::pin(async move {
            let mut modules = serde_json::Map::new();
            for (name, control) in asks {
                let state = match tokio::time::timeout(Duration::from_secs(2), control.dump.send(DumpState)).await {
                    Ok(Ok(Snapshot(v))) => v,
                    Ok(Err(_)) => json!({"error": "module is gone"}),
                    Err(_) => json!({"error": "module did not answer within 2 s"}),
                };
                modules.insert(name, state);
            }
            Snapshot(json!({"supervisor": own, "modules": modules}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    fn identity() -> NodeIdentity {
        NodeIdentity {
            name: "n1".into(),
            cluster: "test".into(),
            tags: Default::default(),
        }
    }

    /// How a test actor misbehaves.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Runs until asked to stop.
        Steady,
        /// Stops itself right after starting.
        StopsItself,
        /// Panics in a handler right after starting.
        Panics,
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Boom;

    struct TestActor {
        name: &'static str,
        behaviour: Behaviour,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Actor for TestActor {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Self::Context) {
            self.log.lock().unwrap().push(format!("start {}", self.name));
            match self.behaviour {
                Behaviour::Steady => {}
                Behaviour::StopsItself => ctx.stop(),
                Behaviour::Panics => ctx.notify(Boom),
            }
        }
        fn stopped(&mut self, _ctx: &mut Self::Context) {
            self.log.lock().unwrap().push(format!("stop {}", self.name));
        }
    }

    impl Handler<Boom> for TestActor {
        type Result = ();
        fn handle(&mut self, _: Boom, _ctx: &mut Self::Context) {
            panic!("test actor {} panics on purpose", self.name);
        }
    }

    impl Handler<StopModule> for TestActor {
        type Result = ();
        fn handle(&mut self, _: StopModule, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    impl Handler<DumpState> for TestActor {
        type Result = Snapshot;
        fn handle(&mut self, _: DumpState, _ctx: &mut Self::Context) -> Snapshot {
            Snapshot(json!({"name": self.name}))
        }
    }

    fn fast_policy(mode: RestartMode, max_restarts: u32) -> RestartPolicy {
        RestartPolicy::quick(mode, max_restarts)
    }

    fn spec(
        name: &'static str,
        behaviour: Behaviour,
        policy: RestartPolicy,
        log: &Arc<Mutex<Vec<String>>>,
        starts: &Arc<AtomicU32>,
    ) -> ModuleSpec {
        let log = log.clone();
        let starts = starts.clone();
        ModuleSpec {
            name: name.into(),
            kind: "test".into(),
            version: "0".into(),
            restart: policy,
            stop_grace: Duration::from_secs(5),
            factory: Box::new(move || {
                starts.fetch_add(1, Ordering::SeqCst);
                Ok(spawn_module(TestActor {
                    name,
                    behaviour,
                    log: log.clone(),
                })
                .1)
            }),
        }
    }

    /// A supervisor plus the shared start log and start counter of its test modules.
    struct Fixture {
        sup: Addr<NodeSupervisor>,
        log: Arc<Mutex<Vec<String>>>,
        starts: Arc<AtomicU32>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                sup: NodeSupervisor::new(&identity()).start(),
                log: Arc::new(Mutex::new(Vec::new())),
                starts: Arc::new(AtomicU32::new(0)),
            }
        }

        async fn add(&self, name: &'static str, behaviour: Behaviour, policy: RestartPolicy) -> Result<(), String> {
            let spec = spec(name, behaviour, policy, &self.log, &self.starts);
            self.sup.send(StartModule(spec)).await.unwrap()
        }

        fn starts(&self) -> u32 {
            self.starts.load(Ordering::SeqCst)
        }
    }

    async fn module(sup: &Addr<NodeSupervisor>, name: &str) -> ModuleInfo {
        sup.send(ListModules)
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.name == name)
            .expect("module is listed")
    }

    /// Polls until `pred` holds for the module, or fails after a deadline.
    async fn wait_for(sup: &Addr<NodeSupervisor>, name: &str, pred: impl Fn(&ModuleInfo) -> bool) -> ModuleInfo {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = module(sup, name).await;
            if pred(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on module {name}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn a_panicking_module_is_restarted() {
        let f = Fixture::new();
        let sup = &f.sup;
        // Panics at every start; allowed 2 restarts, so: start, 2 restarts, failed.
        f.add("crasher", Behaviour::Panics, fast_policy(RestartMode::Always, 2))
            .await
            .unwrap();
        let info = wait_for(sup, "crasher", |m| m.state == ModuleState::Failed).await;
        assert_eq!(info.restarts, 2);
        assert_eq!(f.starts(), 3, "one start plus two restarts");
        assert!(info.last_exit.unwrap().contains("panics on purpose"));
    }

    #[actix_rt::test]
    async fn a_factory_that_panics_fails_its_module_and_the_supervisor_keeps_running() {
        let f = Fixture::new();
        let sup = &f.sup;
        let mut spec = spec(
            "bad",
            Behaviour::Panics,
            fast_policy(RestartMode::Never, 0),
            &f.log,
            &f.starts,
        );
        spec.factory = Box::new(|| panic!("config value out of range"));
        sup.send(StartModule(spec)).await.unwrap().unwrap();
        let info = wait_for(sup, "bad", |m| m.state == ModuleState::Failed).await;
        let exit = info.last_exit.unwrap_or_default();
        assert!(
            exit.contains("panicked while starting: config value out of range"),
            "{exit}"
        );
        // The supervisor still answers and starts other modules.
        f.add("fine", Behaviour::StopsItself, fast_policy(RestartMode::OnFailure, 0))
            .await
            .unwrap();
        wait_for(sup, "fine", |m| m.state == ModuleState::Stopped).await;
    }

    #[actix_rt::test]
    async fn a_module_that_stops_is_restarted_with_growing_backoff() {
        let f = Fixture::new();
        let sup = &f.sup;
        let t0 = Instant::now();
        f.add("quitter", Behaviour::StopsItself, fast_policy(RestartMode::Always, 4))
            .await
            .unwrap();
        let info = wait_for(sup, "quitter", |m| m.state == ModuleState::Failed).await;
        assert_eq!(info.restarts, 4);
        assert_eq!(f.starts(), 5);
        // The four backoffs are 10 + 20 + 40 + 80 ms: at least that much passed.
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "backoff was honoured: {:?}",
            t0.elapsed()
        );
    }

    #[actix_rt::test]
    async fn policies_on_failure_and_never() {
        let f = Fixture::new();
        let sup = &f.sup;
        // on-failure: a clean stop is not a failure, so no restart.
        f.add("clean", Behaviour::StopsItself, fast_policy(RestartMode::OnFailure, 3))
            .await
            .unwrap();
        let info = wait_for(sup, "clean", |m| m.state == ModuleState::Stopped).await;
        assert_eq!(info.restarts, 0);
        // never: a panic marks it failed at once.
        f.add("once", Behaviour::Panics, fast_policy(RestartMode::Never, 3))
            .await
            .unwrap();
        let info = wait_for(sup, "once", |m| m.state == ModuleState::Failed).await;
        assert_eq!((info.restarts, f.starts()), (0, 2), "one start each, no restart");
    }

    #[actix_rt::test]
    async fn restarts_outside_the_period_do_not_count() {
        let f = Fixture::new();
        let sup = &f.sup;
        let mut policy = fast_policy(RestartMode::Always, 1);
        // With a period shorter than the backoff, each restart has left the
        // window before the next exit, so the module is never given up on.
        policy.period = Duration::from_millis(1);
        policy.backoff_initial = Duration::from_millis(5);
        f.add("slowloop", Behaviour::StopsItself, policy).await.unwrap();
        let info = wait_for(sup, "slowloop", |m| m.restarts >= 5).await;
        assert_ne!(info.state, ModuleState::Failed);
    }

    #[actix_rt::test]
    async fn shutdown_stops_modules_in_reverse_start_order() {
        let f = Fixture::new();
        let sup = &f.sup;
        for name in ["first", "second", "third"] {
            f.add(name, Behaviour::Steady, RestartPolicy::default()).await.unwrap();
        }
        wait_for(sup, "third", |m| m.state == ModuleState::Running).await;
        sup.send(Shutdown).await.unwrap();
        let stops: Vec<String> = f
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("stop"))
            .cloned()
            .collect();
        assert_eq!(stops, ["stop third", "stop second", "stop first"]);
        for m in sup.send(ListModules).await.unwrap() {
            assert_eq!(m.state, ModuleState::Stopped, "{m:?}");
        }
        assert_eq!(f.starts(), 3, "nothing restarted during shutdown");
    }

    #[actix_rt::test]
    async fn remove_module_stops_it_and_forgets_it() {
        let f = Fixture::new();
        let sup = &f.sup;
        f.add("temp", Behaviour::Steady, RestartPolicy::default())
            .await
            .unwrap();
        let dup = f.add("temp", Behaviour::Steady, RestartPolicy::default()).await;
        assert!(dup.unwrap_err().contains("already supervised"));
        sup.send(RemoveModule("temp".into())).await.unwrap().unwrap();
        assert!(sup.send(ListModules).await.unwrap().is_empty());
        assert_eq!(f.starts(), 1, "a requested stop is not restarted");
        assert!(f.log.lock().unwrap().contains(&"stop temp".to_string()));
    }

    #[actix_rt::test]
    async fn dump_state_covers_every_module() {
        let f = Fixture::new();
        let sup = &f.sup;
        f.add("alpha", Behaviour::Steady, RestartPolicy::default())
            .await
            .unwrap();
        let Snapshot(dump) = sup.send(DumpState).await.unwrap();
        assert_eq!(dump["modules"]["alpha"], json!({"name": "alpha"}));
        assert_eq!(dump["supervisor"]["modules"][0]["state"], "running");
    }
}
