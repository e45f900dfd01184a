//! OTP-style supervision on ractor.
//!
//! ractor links actors and tells a supervisor when a linked child starts, stops or fails
//! ([`ractor::SupervisionEvent`]), but has no restart policies; this module supplies them,
//! in the shape Erlang/OTP engineers know.
//!
//! # Model
//! - A [`Supervisor`] is an ordinary ractor actor. Its children are described by
//!   [`ChildSpec`]s: a stable `id`, an actor `kind` (metric label), a [`Restart`] type and a
//!   factory that spawns the child linked to the supervisor. The factory is called again
//!   on every restart, so a restarted actor gets fresh arguments: that is where a call actor
//!   reads its checkpoint. [`ChildSpec::actor`] / [`ChildSpec::named_actor`] build the
//!   factory from an `Actor` value and an arguments closure; [`ChildSpec::supervisor`] nests
//!   a supervisor.
//! - Static children ([`SupervisorArgs::children`]) start in order while the supervisor
//!   starts (in its `pre_start`): when `Actor::spawn` of a supervisor returns, its subtree
//!   is up, and if a static child cannot start, the spawn fails after stopping the ones
//!   already started.
//! - When a child ends, its [`Restart`] type decides whether it comes back: `Permanent`
//!   always, `Transient` only after an abnormal exit (panic, handler `Err`, killed; a
//!   `stop()` is normal), `Temporary` never. The [`Strategy`] decides what else restarts:
//!   `OneForOne` only that child; `OneForAll` all children (the others are stopped in
//!   reverse start order, then all start again in order); `RestForOne` that child and those
//!   started after it. Temporary siblings caught in a group restart are stopped, not
//!   restarted.
//! - [`Intensity`]: more than `max_restarts` restarts within `period` and the supervisor
//!   gives up: it stops its children and fails with
//!   [`SupervisorError::IntensityExceeded`], which its own supervisor receives as
//!   `ActorFailed` and handles by its own policy (escalation). The default is 5 per 10 s
//!   (STYLE.md); nested supervisors should allow fewer, and a supervisor of thousands of
//!   one-off children may allow more (the calls supervisor, e.g. 100 per 10 s), since one
//!   crashing call should not take down every other call.
//! - [`Backoff`] (optional) delays restarts, doubling per consecutive restart of the same
//!   child up to a maximum. While the delay runs the child is listed without an actor.
//!   A factory that fails during a restart counts as another restart and is retried.
//! - Stopping a supervisor normally stops its children first, in reverse start order, each
//!   within its [`ChildSpec::shutdown`] grace period and then killed.
//!
//! # Dynamic children and the hot path
//! The calls supervisor holds 10,000+ live transient children and starts 500–2,000 a
//! second. Children are kept in a `HashMap` keyed by slot with an `ActorId → slot` index, so
//! a start and an exit are O(1); order is only materialised (by sorting slots) on the rare
//! group restart of `OneForAll`/`RestForOne`. There is no task per child. [`start_child`]
//! runs the factory in the CALLER's task, so many callers spawn in parallel and the
//! supervisor only files the spec it is sent afterwards; because ractor delivers
//! supervision events ahead of ordinary messages, a child may end before its spec arrives,
//! so the supervisor keeps such early exits in a small set and applies the policy when the
//! spec comes (entries nobody claims are swept after a minute). [`start_child_sync`]
//! instead starts the child inside the supervisor (OTP's `start_child`), serialised, for
//! low-rate use. [`terminate_child`], [`count_children`], [`which_children`] are the other
//! wrappers.
//!
//! # Metrics and logs
//! Every start (first start and restarts), stop and restart of a child is counted per actor
//! kind ([`ACTOR_STARTS_TOTAL`], [`ACTOR_STOPS_TOTAL`], [`ACTOR_RESTARTS_TOTAL`]), and every
//! escalation per supervisor ([`SUPERVISOR_ESCALATIONS_TOTAL`]). Restarts and escalations are
//! logged at `warn` with the child id and kind; normal ends of children are not logged.
//!
//! The tree itself is declared in `tree.rs`.

pub mod catalog;
mod infra;
mod spec;
mod supervisor;
pub mod tree;

#[cfg(test)]
mod tests;

pub use spec::{
    Backoff, ChildSpec, Intensity, Restart, StartFn, StartFuture, Strategy, DEFAULT_SHUTDOWN,
};
pub use supervisor::{
    count_children, start_child, start_child_sync, terminate_child, which_children, ChildCounts,
    ChildInfo, Supervisor, SupervisorArgs, SupervisorError, SupervisorMsg, SupervisorState,
};

/// Counter, label `kind`: actors started by a supervisor (first starts and restarts).
pub const ACTOR_STARTS_TOTAL: &str = "switchyard_actor_starts_total";
/// Counter, label `kind`: supervised actors that ended (any reason, including stops the
/// supervisor made).
pub const ACTOR_STOPS_TOTAL: &str = "switchyard_actor_stops_total";
/// Counter, label `kind`: actors restarted by a supervisor.
pub const ACTOR_RESTARTS_TOTAL: &str = "switchyard_actor_restarts_total";
/// Counter, label `supervisor`: supervisors that exceeded their restart intensity and failed.
pub const SUPERVISOR_ESCALATIONS_TOTAL: &str = "switchyard_supervisor_escalations_total";

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        ACTOR_STARTS_TOTAL,
        "Actors started by a supervisor (first starts and restarts), by actor kind."
    );
    metrics::describe_counter!(
        ACTOR_STOPS_TOTAL,
        "Supervised actors that ended, by actor kind."
    );
    metrics::describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        "Actors restarted by a supervisor, by actor kind."
    );
    metrics::describe_counter!(
        SUPERVISOR_ESCALATIONS_TOTAL,
        "Supervisors that exceeded their restart intensity and failed to their parent."
    );
}
