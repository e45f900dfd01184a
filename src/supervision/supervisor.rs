//! The [`Supervisor`] actor: starts children from [`ChildSpec`]s, watches ractor's
//! supervision events for them and restarts them per [`Strategy`], [`Restart`],
//! [`Intensity`] and [`Backoff`]. See the module docs of [`crate::supervision`] for the model.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use tokio::time::Instant;
use tracing::warn;

use super::spec::{Backoff, ChildSpec, Intensity, Restart, Strategy};
use super::{
    ACTOR_RESTARTS_TOTAL, ACTOR_STARTS_TOTAL, ACTOR_STOPS_TOTAL, SUPERVISOR_ESCALATIONS_TOTAL,
};

/// Timeout of the query wrappers ([`count_children`], [`which_children`], [`start_child_sync`]).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of [`terminate_child`]: the supervisor waits for the child's shutdown grace period.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Exits of unknown children are kept this long waiting for their `ChildSpawned` message.
const EARLY_EXIT_TTL: Duration = Duration::from_secs(60);
/// Size of the early-exit set below which it is never swept.
const EARLY_EXIT_SWEEP_MIN: usize = 1024;

/// Errors of the supervision layer.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A child's factory failed (its `pre_start` returned `Err` or panicked, or its name is
    /// taken).
    #[error("child {id} failed to start: {source}")]
    StartFailed {
        /// The child's spec id.
        id: String,
        /// What ractor reported.
        #[source]
        source: SpawnErr,
    },
    /// Two static children share an id.
    #[error("duplicate child id {0}")]
    DuplicateId(String),
    /// The supervisor is not running (stopped, or stopping).
    #[error("supervisor unavailable")]
    Unavailable,
    /// The supervisor did not answer in time.
    #[error("supervisor did not answer in time")]
    Timeout,
    /// More restarts than the intensity allows: the supervisor gave up (escalation).
    #[error("supervisor {supervisor}: more than {max_restarts} restarts in {period:?}")]
    IntensityExceeded {
        /// The supervisor's name.
        supervisor: String,
        /// The configured limit.
        max_restarts: u32,
        /// The configured window.
        period: Duration,
    },
}

/// Arguments of a [`Supervisor`].
#[derive(Clone, Debug)]
pub struct SupervisorArgs {
    /// Name for logs and the `supervisor` label of the escalation counter.
    pub name: String,
    /// How a restart affects the other children.
    pub strategy: Strategy,
    /// How many restarts per period before giving up.
    pub intensity: Intensity,
    /// Optional delay before restarts.
    pub backoff: Option<Backoff>,
    /// Static children, started in this order before the supervisor runs.
    pub children: Vec<ChildSpec>,
}

impl SupervisorArgs {
    /// A supervisor with the default intensity (5 per 10 s), no backoff and no children.
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        Self {
            name: name.into(),
            strategy,
            intensity: Intensity::default(),
            backoff: None,
            children: Vec::new(),
        }
    }

    /// Replace the restart intensity.
    pub fn with_intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Delay restarts with a doubling backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Append a static child (started after the ones already added).
    pub fn with_child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }
}

/// Messages of the [`Supervisor`]. Use the wrapper functions of this module rather than
/// sending them by hand.
pub enum SupervisorMsg {
    /// Start a dynamic child from inside the supervisor and reply with its cell
    /// (see [`start_child_sync`]).
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, SupervisorError>>),
    /// A dynamic child was spawned, linked, by another task (see [`start_child`]): take it
    /// under supervision.
    ChildSpawned(ChildSpec, ActorCell),
    /// Stop every child whose spec id is this and forget them; replies how many there were.
    TerminateChild(String, RpcReplyPort<usize>),
    /// Count the children.
    CountChildren(RpcReplyPort<ChildCounts>),
    /// List the children in start order.
    WhichChildren(RpcReplyPort<Vec<ChildInfo>>),
    /// Internal: a backoff delay (or a failed restart's retry) has elapsed for these slots.
    RestartTimerFired(Vec<u64>),
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for SupervisorMsg {}

/// Answer of [`count_children`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildCounts {
    /// Children the supervisor knows, running or waiting to be restarted.
    pub specs: usize,
    /// Children currently running.
    pub active: usize,
}

/// One child in the answer of [`which_children`].
#[derive(Debug, Clone)]
pub struct ChildInfo {
    /// Spec id.
    pub id: String,
    /// Actor kind.
    pub kind: &'static str,
    /// Restart type.
    pub restart: Restart,
    /// The running actor, or `None` while a restart is pending.
    pub cell: Option<ActorCell>,
}

/// The supervisor actor. Spawn it with `Actor::spawn(name, Supervisor, args)`, or nest it
/// with [`ChildSpec::supervisor`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

/// Why a child ended, as far as restart decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// `stop()`, with or without a reason, or drained.
    Normal,
    /// Panic, handler `Err`, or killed.
    Abnormal,
}

struct Child {
    spec: ChildSpec,
    /// `None` while a restart is pending (backoff, or a failed restart being retried).
    cell: Option<ActorCell>,
    started_at: Instant,
    /// Restarts of this child in a row, for the backoff exponent.
    consecutive: u32,
}

/// State of a [`Supervisor`].
pub struct SupervisorState {
    name: String,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Option<Backoff>,
    /// Children by slot. Slots are handed out in increasing order and kept across restarts,
    /// so ascending slot order is start order (needed only by one_for_all / rest_for_one,
    /// which sort on their rare restart path; the hot path stays O(1)).
    children: HashMap<u64, Child>,
    /// Running children's actor ids to their slot: the O(1) lookup of every exit event.
    by_actor: HashMap<ActorId, u64>,
    next_slot: u64,
    /// Times of recent restarts, for the intensity window.
    restarts: VecDeque<Instant>,
    /// Exits of linked actors that were not (yet) known: a child spawned by [`start_child`]
    /// can end before its `ChildSpawned` message is handled, since supervision events
    /// overtake ordinary messages. Swept of stale entries as it grows.
    early_exits: HashMap<ActorId, (Exit, Option<String>, Instant)>,
    early_exit_sweep_at: usize,
}

// ---------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------

/// Start a dynamic child without a round trip through the supervisor: the factory runs in
/// the caller's task (so children's `pre_start`s run in parallel across callers instead of
/// one at a time inside the supervisor), the child is linked to the supervisor, and the spec
/// is then cast to it. If the child ends before the supervisor has read the spec, the
/// supervisor remembers the exit and applies the restart policy when the spec arrives.
/// This is the path for high-rate children such as calls.
pub async fn start_child(
    sup: &ActorRef<SupervisorMsg>,
    spec: ChildSpec,
) -> Result<ActorCell, SupervisorError> {
    let cell =
        (spec.start)(sup.get_cell())
            .await
            .map_err(|source| SupervisorError::StartFailed {
                id: spec.id.clone(),
                source,
            })?;
    if sup
        .cast(SupervisorMsg::ChildSpawned(spec, cell.clone()))
        .is_err()
    {
        // Nobody will supervise it: do not leave it running unsupervised.
        cell.stop(Some("supervisor unavailable".into()));
        return Err(SupervisorError::Unavailable);
    }
    Ok(cell)
}

/// Start a dynamic child from inside the supervisor (OTP's `start_child`): serialised with
/// the supervisor's other work, so use it for low-rate children only.
pub async fn start_child_sync(
    sup: &ActorRef<SupervisorMsg>,
    spec: ChildSpec,
) -> Result<ActorCell, SupervisorError> {
    rpc(
        sup,
        |reply| SupervisorMsg::StartChild(spec, reply),
        CALL_TIMEOUT,
    )
    .await?
}

/// Stop the children whose spec id is `id` (waiting for each up to its shutdown grace
/// period) and forget them; returns how many there were. O(number of children): meant for
/// operations, not the hot path (a call ends by stopping itself).
pub async fn terminate_child(
    sup: &ActorRef<SupervisorMsg>,
    id: &str,
) -> Result<usize, SupervisorError> {
    let id = id.to_owned();
    rpc(
        sup,
        |reply| SupervisorMsg::TerminateChild(id, reply),
        TERMINATE_TIMEOUT,
    )
    .await
}

/// Count the supervisor's children.
pub async fn count_children(sup: &ActorRef<SupervisorMsg>) -> Result<ChildCounts, SupervisorError> {
    rpc(sup, SupervisorMsg::CountChildren, CALL_TIMEOUT).await
}

/// List the supervisor's children in start order.
pub async fn which_children(
    sup: &ActorRef<SupervisorMsg>,
) -> Result<Vec<ChildInfo>, SupervisorError> {
    rpc(sup, SupervisorMsg::WhichChildren, CALL_TIMEOUT).await
}

async fn rpc<T: Send + 'static>(
    sup: &ActorRef<SupervisorMsg>,
    build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMsg,
    timeout: Duration,
) -> Result<T, SupervisorError> {
    match sup.call(build, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(ractor::rpc::CallResult::Timeout) => Err(SupervisorError::Timeout),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(SupervisorError::Unavailable),
    }
}

// ---------------------------------------------------------------------------------------
// impl Actor
// ---------------------------------------------------------------------------------------

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    /// Starts the static children in order here rather than in `post_start`, so that when
    /// spawning a supervisor returns, its whole subtree is up (named children can be looked
    /// up at once), and a child that cannot start makes the spawn itself fail, as OTP's
    /// `start_link` does. The children link to this cell before it runs; their events wait
    /// in its supervision port.
    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut seen = std::collections::HashSet::new();
        for c in &args.children {
            if !seen.insert(c.id.as_str()) {
                return Err(SupervisorError::DuplicateId(c.id.clone()).into());
            }
        }
        let mut state = SupervisorState {
            name: args.name,
            strategy: args.strategy,
            intensity: args.intensity,
            backoff: args.backoff,
            children: HashMap::with_capacity(args.children.len()),
            by_actor: HashMap::with_capacity(args.children.len()),
            next_slot: 0,
            restarts: VecDeque::new(),
            early_exits: HashMap::new(),
            early_exit_sweep_at: EARLY_EXIT_SWEEP_MIN,
        };
        let me = myself.get_cell();
        for spec in args.children {
            match (spec.start)(me.clone()).await {
                Ok(cell) => {
                    state.insert(spec, cell);
                }
                Err(source) => {
                    warn!(supervisor = %state.name, child = %spec.id, kind = spec.kind,
                        error = %source, "static child failed to start; supervisor not started");
                    state.shutdown_all(&me).await;
                    return Err(SupervisorError::StartFailed {
                        id: spec.id,
                        source,
                    }
                    .into());
                }
            }
        }
        Ok(state)
    }

    /// A normal stop of the supervisor stops its children first (reverse start order), each
    /// within its grace period, so their `post_stop`s run.
    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.shutdown_all(&myself.get_cell()).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let me = myself.get_cell();
        match message {
            SupervisorMsg::StartChild(spec, reply) => match (spec.start)(me.clone()).await {
                Ok(cell) => {
                    // Its exit cannot have been handled yet: this handler runs first.
                    state.insert(spec, cell.clone());
                    let _ = reply.send(Ok(cell));
                }
                Err(source) => {
                    let _ = reply.send(Err(SupervisorError::StartFailed {
                        id: spec.id,
                        source,
                    }));
                }
            },
            SupervisorMsg::ChildSpawned(spec, cell) => {
                let id = cell.get_id();
                let slot = state.insert(spec, cell);
                if let Some((exit, reason, _)) = state.early_exits.remove(&id) {
                    state.by_actor.remove(&id);
                    state.child_exited(&myself, slot, exit, reason).await?;
                }
            }
            SupervisorMsg::TerminateChild(id, reply) => {
                let mut slots: Vec<u64> = state
                    .children
                    .iter()
                    .filter(|(_, c)| c.spec.id == id)
                    .map(|(s, _)| *s)
                    .collect();
                slots.sort_unstable();
                for slot in &slots {
                    state.stop_and_forget(&me, *slot).await;
                }
                let _ = reply.send(slots.len());
            }
            SupervisorMsg::CountChildren(reply) => {
                let active = state.by_actor.len();
                let _ = reply.send(ChildCounts {
                    specs: state.children.len(),
                    active,
                });
            }
            SupervisorMsg::WhichChildren(reply) => {
                let list = state
                    .slots_in_order(|_| true)
                    .into_iter()
                    .map(|s| {
                        let c = &state.children[&s];
                        ChildInfo {
                            id: c.spec.id.clone(),
                            kind: c.spec.kind,
                            restart: c.spec.restart,
                            cell: c.cell.clone(),
                        }
                    })
                    .collect();
                let _ = reply.send(list);
            }
            SupervisorMsg::RestartTimerFired(slots) => {
                state.restart_slots(&myself, slots).await?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (id, exit, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                (cell.get_id(), Exit::Abnormal, Some(err.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // ractor reports a Kill signal as a termination with this reason; OTP counts
                // `kill` as abnormal, and so do we (a transient child killed is restarted).
                let exit = if reason.as_deref() == Some("killed") {
                    Exit::Abnormal
                } else {
                    Exit::Normal
                };
                (cell.get_id(), exit, reason)
            }
            // Starts are counted when the factory returns; nothing else concerns us.
            _ => return Ok(()),
        };
        match state.by_actor.remove(&id) {
            Some(slot) => state.child_exited(&myself, slot, exit, reason).await,
            None => {
                state.remember_early_exit(id, exit, reason);
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

impl SupervisorState {
    /// Take a freshly started child under supervision; counts the start.
    fn insert(&mut self, spec: ChildSpec, cell: ActorCell) -> u64 {
        let slot = self.next_slot;
        self.next_slot += 1;
        metrics::counter!(ACTOR_STARTS_TOTAL, "kind" => spec.kind).increment(1);
        self.by_actor.insert(cell.get_id(), slot);
        self.children.insert(
            slot,
            Child {
                spec,
                cell: Some(cell),
                started_at: Instant::now(),
                consecutive: 0,
            },
        );
        slot
    }

    /// Slots matching `keep`, in start order.
    fn slots_in_order(&self, keep: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut v: Vec<u64> = self.children.keys().copied().filter(|s| keep(*s)).collect();
        v.sort_unstable();
        v
    }

    /// A known child ended (its `by_actor` entry is already removed).
    async fn child_exited(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        slot: u64,
        exit: Exit,
        reason: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let Some(child) = self.children.get_mut(&slot) else {
            return Ok(());
        };
        let old = child.cell.take();
        metrics::counter!(ACTOR_STOPS_TOTAL, "kind" => child.spec.kind).increment(1);
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => exit == Exit::Abnormal,
            Restart::Temporary => false,
        };
        if !restart {
            if exit == Exit::Abnormal {
                warn!(supervisor = %self.name, child = %child.spec.id, kind = child.spec.kind,
                    reason = reason.as_deref().unwrap_or(""), "temporary child failed; not restarted");
            }
            self.children.remove(&slot);
            return Ok(());
        }
        let delay = match self.backoff {
            Some(b) => {
                if now.duration_since(child.started_at) >= b.max {
                    child.consecutive = 0;
                }
                b.delay(child.consecutive)
            }
            None => Duration::ZERO,
        };
        warn!(supervisor = %self.name, child = %child.spec.id, kind = child.spec.kind,
            reason = reason.as_deref().unwrap_or(""), ?exit, ?delay, strategy = ?self.strategy,
            "child exited; restarting");
        child.consecutive = child.consecutive.saturating_add(1);
        let (id, kind) = (child.spec.id.clone(), child.spec.kind);
        if !self.record_restart(now) {
            return Err(self.escalate(&myself.get_cell(), &id, kind).await);
        }
        // A restarted named child must not race its predecessor's name registration, which
        // ractor releases only as the old actor finishes stopping.
        if let Some(old) = old {
            wait_stopped(&old, Duration::from_secs(1)).await;
        }
        let group = match self.strategy {
            Strategy::OneForOne => vec![slot],
            Strategy::OneForAll => self.slots_in_order(|_| true),
            Strategy::RestForOne => self.slots_in_order(|s| s >= slot),
        };
        let me = myself.get_cell();
        let mut to_restart = Vec::with_capacity(group.len());
        for &s in group.iter().rev() {
            if s != slot {
                let temporary = self.children[&s].spec.restart == Restart::Temporary;
                if temporary {
                    // OTP: temporary siblings are stopped with the group but not restarted.
                    self.stop_and_forget(&me, s).await;
                    continue;
                }
                self.stop_running(&me, s).await;
            }
            to_restart.push(s);
        }
        to_restart.reverse();
        if delay.is_zero() {
            self.restart_slots(myself, to_restart).await
        } else {
            myself.send_after(delay, move || SupervisorMsg::RestartTimerFired(to_restart));
            Ok(())
        }
    }

    /// (Re)start the given slots in start order, skipping those already running or gone.
    /// A slot whose factory fails counts as another restart and is retried (after the
    /// backoff delay if any); intensity bounds the retries.
    async fn restart_slots(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        mut slots: Vec<u64>,
    ) -> Result<(), ActorProcessingErr> {
        slots.sort_unstable();
        let me = myself.get_cell();
        let mut failed = Vec::new();
        for slot in slots {
            let Some(child) = self.children.get_mut(&slot) else {
                continue;
            };
            if child.cell.is_some() {
                continue;
            }
            match (child.spec.start)(me.clone()).await {
                Ok(cell) => {
                    metrics::counter!(ACTOR_STARTS_TOTAL, "kind" => child.spec.kind).increment(1);
                    metrics::counter!(ACTOR_RESTARTS_TOTAL, "kind" => child.spec.kind).increment(1);
                    // The decision was logged at warn with the reason; this confirms it.
                    tracing::info!(supervisor = %self.name, child = %child.spec.id,
                        kind = child.spec.kind, "child restarted");
                    self.by_actor.insert(cell.get_id(), slot);
                    child.cell = Some(cell);
                    child.started_at = Instant::now();
                }
                Err(e) => {
                    warn!(supervisor = %self.name, child = %child.spec.id,
                        kind = child.spec.kind, error = %e, "child restart failed; will retry");
                    failed.push(slot);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if !self.record_restart(Instant::now()) {
            let c = &self.children[&failed[0]];
            let (id, kind) = (c.spec.id.clone(), c.spec.kind);
            return Err(self.escalate(&me, &id, kind).await);
        }
        let delay = self.backoff.map_or(Duration::ZERO, |b| {
            let c = &self.children[&failed[0]];
            b.delay(c.consecutive)
        });
        for s in &failed {
            if let Some(c) = self.children.get_mut(s) {
                c.consecutive = c.consecutive.saturating_add(1);
            }
        }
        if delay.is_zero() {
            // Through the mailbox rather than a loop here, so queries and exits interleave.
            myself
                .cast(SupervisorMsg::RestartTimerFired(failed))
                .map_err(|e| -> ActorProcessingErr { e.to_string().into() })?;
        } else {
            myself.send_after(delay, move || SupervisorMsg::RestartTimerFired(failed));
        }
        Ok(())
    }

    /// Note a restart; false if it is one more than the intensity allows.
    fn record_restart(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.restarts.front() {
            if now.duration_since(t) >= self.intensity.period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.push_back(now);
        self.restarts.len() <= self.intensity.max_restarts as usize
    }

    /// Give up: stop all children and return the error that fails this supervisor, which its
    /// own supervisor then sees as `ActorFailed`.
    async fn escalate(
        &mut self,
        me: &ActorCell,
        id: &str,
        kind: &'static str,
    ) -> ActorProcessingErr {
        warn!(supervisor = %self.name, child = %id, kind,
            max_restarts = self.intensity.max_restarts, period = ?self.intensity.period,
            "restart intensity exceeded; escalating to parent");
        metrics::counter!(SUPERVISOR_ESCALATIONS_TOTAL, "supervisor" => self.name.clone())
            .increment(1);
        self.shutdown_all(me).await;
        SupervisorError::IntensityExceeded {
            supervisor: self.name.clone(),
            max_restarts: self.intensity.max_restarts,
            period: self.intensity.period,
        }
        .into()
    }

    /// Stop the running actor of `slot` (if any) but keep the child for a restart.
    async fn stop_running(&mut self, me: &ActorCell, slot: u64) {
        let Some(child) = self.children.get_mut(&slot) else {
            return;
        };
        if let Some(cell) = child.cell.take() {
            self.by_actor.remove(&cell.get_id());
            metrics::counter!(ACTOR_STOPS_TOTAL, "kind" => child.spec.kind).increment(1);
            stop_cell(me, &cell, child.spec.shutdown).await;
        }
    }

    /// Stop the child of `slot` (if running) and forget it.
    async fn stop_and_forget(&mut self, me: &ActorCell, slot: u64) {
        self.stop_running(me, slot).await;
        self.children.remove(&slot);
    }

    /// Stop every child, in reverse start order. one_for_one children are independent, so
    /// they are all told to stop first and then awaited, which keeps shutting down thousands
    /// of calls fast; ordered strategies stop one at a time, as dependants go first.
    async fn shutdown_all(&mut self, me: &ActorCell) {
        let mut slots = self.slots_in_order(|_| true);
        slots.reverse();
        if self.strategy == Strategy::OneForOne {
            let mut running = Vec::with_capacity(slots.len());
            for s in &slots {
                let c = self.children.get_mut(s).expect("slot listed");
                if let Some(cell) = c.cell.take() {
                    metrics::counter!(ACTOR_STOPS_TOTAL, "kind" => c.spec.kind).increment(1);
                    cell.unlink(me.clone());
                    cell.stop(Some("supervisor shutdown".into()));
                    running.push((cell, c.spec.shutdown));
                }
            }
            for (cell, grace) in running {
                if !wait_stopped(&cell, grace).await {
                    cell.kill();
                    wait_stopped(&cell, grace).await;
                }
            }
        } else {
            for s in &slots {
                self.stop_running(me, *s).await;
            }
        }
        self.children.clear();
        self.by_actor.clear();
    }

    fn remember_early_exit(&mut self, id: ActorId, exit: Exit, reason: Option<String>) {
        let now = Instant::now();
        if self.early_exits.len() >= self.early_exit_sweep_at {
            self.early_exits
                .retain(|_, (_, _, at)| now.duration_since(*at) < EARLY_EXIT_TTL);
            self.early_exit_sweep_at = (self.early_exits.len() * 2).max(EARLY_EXIT_SWEEP_MIN);
        }
        self.early_exits.insert(id, (exit, reason, now));
    }
}

/// Stop a child we decided to stop: unlinked first, so its exit is not reported back to us
/// as if it had failed; killed if it overstays `grace`.
async fn stop_cell(me: &ActorCell, cell: &ActorCell, grace: Duration) {
    cell.unlink(me.clone());
    cell.stop(Some("supervisor shutdown".into()));
    if !wait_stopped(cell, grace).await {
        cell.kill();
        wait_stopped(cell, grace).await;
    }
}

/// Wait until `cell` is fully stopped, at most `limit`; true if it is.
async fn wait_stopped(cell: &ActorCell, limit: Duration) -> bool {
    if cell.get_status() == ActorStatus::Stopped {
        return true;
    }
    // ractor keeps one wake-up permit for a late waiter; the status check after the timeout
    // covers the case where someone else consumed it.
    let _ = cell.wait(Some(limit)).await;
    cell.get_status() == ActorStatus::Stopped
}
