//! The declarative half of supervision: strategies, restart types, intensity, backoff and
//! child specifications. Nothing here runs; [`super::Supervisor`] executes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, SpawnErr};

use super::supervisor::{Supervisor, SupervisorArgs};

/// How a supervisor reacts when one child must be restarted (OTP names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Restart only the child that exited. Children are independent (calls, trunks).
    OneForOne,
    /// Stop every other child and restart all of them in start order. For children that
    /// cannot work without each other.
    OneForAll,
    /// Stop the children started after the one that exited, then restart it and them in
    /// start order. For a chain where later children depend on earlier ones (a tenant actor,
    /// then its queues, then its agents).
    RestForOne,
}

/// When a child is restarted after it ends (OTP restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, even after a normal stop.
    Permanent,
    /// Restarted only after an abnormal exit: a panic, an `Err` from a handler, a failed
    /// `post_start`/`post_stop`, or being killed. A plain `stop()` (with or without a
    /// reason) is normal and ends the child for good: per-call actors are transient.
    Transient,
    /// Never restarted; the supervisor just forgets it when it ends.
    Temporary,
}

/// Restart intensity: more than `max_restarts` restarts within `period` makes the supervisor
/// give up, stop its children and fail, so that its own supervisor sees the failure
/// (escalation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts tolerated within `period`; one more escalates. `0` escalates on the first.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    pub period: Duration,
}

impl Intensity {
    /// An intensity of `max_restarts` per `period`.
    pub const fn new(max_restarts: u32, period: Duration) -> Self {
        Self {
            max_restarts,
            period,
        }
    }
}

impl Default for Intensity {
    /// 5 restarts per 10 s, the house default (STYLE.md); nested supervisors should use less,
    /// and a supervisor of thousands of one-off children (calls) may allow more.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(10))
    }
}

/// Optional delay before a restart, doubling for each consecutive restart of the same child
/// from `initial` up to `max`. The count resets once the child has stayed up for at least
/// `max`, so a child that crashes rarely always restarts after `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before the restart that follows `consecutive` earlier ones (0 = first).
    pub fn delay(&self, consecutive: u32) -> Duration {
        // 2^31 * any useful `initial` overflows; saturate instead of panicking.
        let factor = 1u32.checked_shl(consecutive.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// The future a [`StartFn`] returns: the started child's cell, or why it did not start.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// A child factory. It is given the supervisor's cell and must spawn the child LINKED to it
/// (`Actor::spawn_linked`), so that the supervisor receives the child's exit. It is called
/// again for every restart, which is where a restarted actor gets the arguments that let it
/// resume (e.g. a call actor reading its checkpoint).
pub type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

/// How to start (and restart) one child.
#[derive(Clone)]
pub struct ChildSpec {
    /// Stable name of the child within its supervisor (for `terminate_child`, logs, listings);
    /// also the ractor registry name when built with [`ChildSpec::named_actor`].
    pub id: String,
    /// Actor kind, the `kind` label of the start/stop/restart counters (e.g. `"call"`).
    pub kind: &'static str,
    /// When the child is restarted.
    pub restart: Restart,
    /// How long a supervisor-initiated stop waits for the child before killing it.
    pub shutdown: Duration,
    /// The factory; see [`StartFn`].
    pub start: StartFn,
}

/// Default grace period for a supervisor-initiated stop, after which the child is killed.
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);

impl ChildSpec {
    /// A spec from a hand-written factory.
    pub fn new(
        id: impl Into<String>,
        kind: &'static str,
        restart: Restart,
        start: StartFn,
    ) -> Self {
        Self {
            id: id.into(),
            kind,
            restart,
            shutdown: DEFAULT_SHUTDOWN,
            start,
        }
    }

    /// A spec for an unnamed actor: each (re)start spawns a clone of `actor` with the
    /// arguments `args()` returns at that moment, linked to the supervisor.
    pub fn actor<A, F>(
        id: impl Into<String>,
        kind: &'static str,
        restart: Restart,
        actor: A,
        args: F,
    ) -> Self
    where
        A: Actor + Clone,
        F: Fn() -> A::Arguments + Send + Sync + 'static,
    {
        Self::new(id, kind, restart, factory(None, actor, args))
    }

    /// Like [`ChildSpec::actor`], but the actor is registered in ractor's registry under `id`
    /// (found with `ractor::registry::where_is(id)`), so a restarted child is found again by
    /// name.
    pub fn named_actor<A, F>(
        id: impl Into<String>,
        kind: &'static str,
        restart: Restart,
        actor: A,
        args: F,
    ) -> Self
    where
        A: Actor + Clone,
        F: Fn() -> A::Arguments + Send + Sync + 'static,
    {
        let id = id.into();
        Self::new(id.clone(), kind, restart, factory(Some(id), actor, args))
    }

    /// A nested supervisor as a permanent child of kind `"supervisor"`; every restart starts
    /// it afresh from a clone of `args`.
    pub fn supervisor(id: impl Into<String>, args: SupervisorArgs) -> Self {
        Self::nested(id.into(), args, false)
    }

    /// Like [`ChildSpec::supervisor`], registered in ractor's registry under `id` so children
    /// can be started and stopped under it by name (cluster mode's singletons).
    pub fn named_supervisor(id: impl Into<String>, args: SupervisorArgs) -> Self {
        Self::nested(id.into(), args, true)
    }

    fn nested(id: String, args: SupervisorArgs, named: bool) -> Self {
        let name = named.then(|| id.clone());
        Self::new(
            id,
            "supervisor",
            Restart::Permanent,
            factory(name, Supervisor, move || args.clone()),
        )
        .with_shutdown(Duration::from_secs(30))
    }

    /// Replace the shutdown grace period.
    pub fn with_shutdown(mut self, shutdown: Duration) -> Self {
        self.shutdown = shutdown;
        self
    }
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

fn factory<A, F>(name: Option<String>, actor: A, args: F) -> StartFn
where
    A: Actor + Clone,
    F: Fn() -> A::Arguments + Send + Sync + 'static,
{
    Arc::new(move |sup: ActorCell| -> StartFuture {
        let actor = actor.clone();
        let args = args();
        let name = name.clone();
        Box::pin(async move {
            let (actor_ref, _join) = A::spawn_linked(name, actor, args, sup).await?;
            Ok(actor_ref.get_cell())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(2), Duration::from_millis(400));
        assert_eq!(b.delay(3), Duration::from_millis(500));
        assert_eq!(b.delay(1000), Duration::from_millis(500));
    }

    #[test]
    fn default_intensity_is_house_default() {
        assert_eq!(
            Intensity::default(),
            Intensity::new(5, Duration::from_secs(10))
        );
    }
}
