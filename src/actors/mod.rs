//! Actor kinds, one file each.
//!
//! - [`agent`]: one per agent: state, skills, counters; monitors its bridged call.
//! - [`alarms`]: not an actor but a task: trunk alarms to the log, metrics and a webhook.
//! - [`queue`]: one per queue, the single writer of its waiting list; strategies via
//!   `routing::acd`.
//! - [`remote`]: the hook through which messages reach queues, agents and calls on other
//!   nodes (cluster mode).
//! - [`risk`]: not an actor but a shared service: the risk decision point of every outbound
//!   call (lists, windows, frequency caps counted in the store).
//! - [`call`]: one per call, a B2BUA owning both legs.
//! - [`router`]: not an actor but the transport's handler: Call-ID directory, admission
//!   control, stateless answers, call actor start.
//! - [`store_writer`]: the single writer of the SQLite store.
//! - [`trunk`]: one per carrier trunk: health, probes, statistics; shared channel budgets.
//! - [`tenant`]: one per tenant, its identity and (later) limits, rules and numbers.
pub mod agent;
pub mod alarms;
pub mod call;
pub mod conference;
pub mod queue;
pub mod registrar;
pub mod remote;
pub mod risk;
pub mod router;
pub mod store_writer;
pub mod tenant;
pub mod trunk;
