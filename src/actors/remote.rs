//! The way out of this node for contact-centre messages and trunk reports (cluster mode).
//!
//! Queues and agents are singletons placed with their tenant on one node of a cluster, while
//! the call actors that talk to them run on whichever node took the caller's INVITE. The
//! three choke points where actors reach each other ([`super::queue::tell`],
//! [`super::agent::tell`] and [`super::queue::CcContext::tell_call`]) look the target up on
//! this node first; only when it is not here do they hand the message to the [`Remote`] hook
//! in [`super::queue::CcContext::remote`], which `cluster::port` installs. A node alone never
//! sets it, so its path stays one registry lookup.
//!
//! The hook lives here, not in `cluster`, so that `actors` does not import `cluster`
//! (imports flow downward; `cluster` implements this trait).

use super::agent::AgentMsg;
use super::call::CallMsg;
use super::queue::QueueMsg;
use super::trunk::AttemptReport;

/// Carries a message to an actor that does not run on this node.
///
/// Each method returns true when the message was taken for delivery (delivery itself is
/// asynchronous: a message whose target has no live owner is retried for a bounded time,
/// then dropped, counted and logged by the implementation), and false when it cannot be
/// delivered at all: the message cannot cross nodes (it carries an `RpcReplyPort`, like the
/// API's `GetStats`), or, for a call, no node is known to run it.
pub trait Remote: Send + Sync {
    /// A message for queue `queue` of `tenant`, wherever its owner runs it.
    fn queue(&self, tenant: &str, queue: &str, msg: QueueMsg) -> bool;
    /// A message for agent `agent` of `tenant`, wherever its owner runs it.
    fn agent(&self, tenant: &str, agent: &str, msg: AgentMsg) -> bool;
    /// How an attempt on trunk `trunk` ended, for the trunk's actor on its owner node.
    fn trunk(&self, trunk: &str, report: AttemptReport) -> bool;
    /// A message for the call actor of `call_id` (its A-leg Call-ID) on the node it runs on.
    fn call(&self, call_id: &str, msg: CallMsg) -> bool;
    /// Whether `call_id` is known to run on another live node. An agent on call cannot
    /// monitor a call actor on another node: not finding it here must not end its call
    /// (the call's node reports the end, or the hook does when that node dies).
    fn call_elsewhere(&self, call_id: &str) -> bool;
    /// Asks every live node, this one included, whether one of its call actors holds agent
    /// `agent` of `tenant` (offered or answered). A node that finds it answers the agent with
    /// [`AgentMsg::Resume`]; a node that does not stays silent. Sent by an agent actor that
    /// starts after a takeover, whose state stayed on the previous owner. False when it could
    /// not be sent.
    fn find_agent_call(&self, tenant: &str, agent: &str) -> bool;
}
