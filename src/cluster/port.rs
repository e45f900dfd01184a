//! The message port: actor messages between nodes over ractor_cluster.
//!
//! Each node runs one port actor and one ractor_cluster `NodeServer` on its inter-node
//! listen address, authenticated by the cluster's shared secret (ractor_cluster's cookie)
//! and over TLS when configured. The port joins the process group `switchyard-port/<node>`
//! (`ractor::pg`), which ractor_cluster mirrors to connected peers, so a peer's port is
//! found by the peer's name. The port watches the [`Directory`] and connects to every live
//! node it is not connected to (the node whose name sorts first dials, so a pair has one
//! connection); a node that leaves the Directory is disconnected and forgotten. etcd decides
//! who is alive, not ractor_cluster's own pings.
//!
//! Outbound: actors reach queues, agents and calls through the [`Remote`] hook this module
//! installs in [`CcContext::remote`]; the port finds the target's node (the owner of the
//! queue's or tenant's singleton key; for a call, the node it was heard from) and casts an
//! [`Envelope`] to that node's port. A message whose target has no live owner, or whose
//! owner's port is not connected, waits and is retried (in order per target) against
//! whichever node owns it next, for up to `retry_for`; then it is dropped, counted by cause
//! and logged. Nothing is dropped silently.
//!
//! Inbound: the envelope is decoded and delivered to the local actor by the same lookups the
//! actors use. The port remembers which node each remote call runs on (from the calls' own
//! messages), so that queues can offer it agents and agents can tell it ended; when a node
//! leaves the Directory, the queues and agents here are told its calls are over (an agent
//! cannot monitor a call actor on another node).
//!
//! After a takeover: an agent actor starting here asks every live node for a call that holds
//! it ([`Remote::find_agent_call`]); each node answers from its `CcContext::agent_calls`
//! index with an `AgentMsg::Resume`, sent straight back to the asking node.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use tokio_rustls::rustls::pki_types::ServerName;

use super::wire::{self, Envelope, Payload, PortMsg, WireAgentMsg, WireCallMsg, WireQueueMsg};
use super::{queue_key, tenant_key, trunk_key, Directory};
use crate::actors::agent::{self, AgentMsg, OfferOutcome};
use crate::actors::call::CallMsg;
use crate::actors::queue::{self, CcContext, QueueMsg};
use crate::actors::remote::Remote;
use crate::actors::trunk::{self, AttemptReport, TrunkMsg};

pub const MESSAGES_SENT: &str = "switchyard_cluster_messages_sent_total";
pub const MESSAGES_RECEIVED: &str = "switchyard_cluster_messages_received_total";
pub const MESSAGE_FAILURES: &str = "switchyard_cluster_message_failures_total";
pub const MESSAGE_RETRIES: &str = "switchyard_cluster_message_retries_total";
pub const MESSAGE_LATENCY: &str = "switchyard_cluster_message_latency_seconds";
pub const PEERS: &str = "switchyard_cluster_peers";

/// Describes the message port's metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        MESSAGES_SENT,
        "Actor messages sent to another node's port, by kind (queue.join, call.offer, ...)"
    );
    describe_counter!(
        MESSAGES_RECEIVED,
        "Actor messages received from another node's port, by kind"
    );
    describe_counter!(
        MESSAGE_FAILURES,
        "Inter-node messages dropped, by cause: no_owner (no live owner within the retry \
         time), unreachable (the owner's port not connected), expired (the owner node had no \
         running actor for it), gone (the call ended or its node died), decode (bytes from a \
         peer that were not an envelope), overflow (too many messages waiting)"
    );
    describe_counter!(
        MESSAGE_RETRIES,
        "Inter-node messages held for a retry (once per message) because their target had no \
         reachable owner"
    );
    describe_histogram!(
        MESSAGE_LATENCY,
        Unit::Seconds,
        "Send-to-delivery time of inter-node messages, from the sender's timestamp and the \
         receiver's clock (nodes on one machine share the clock; across machines it includes \
         their clock offset)"
    );
    describe_gauge!(
        PEERS,
        "Live nodes (per the Directory) this node's port is connected to"
    );
}

/// How long a message to an unreachable target is retried by default.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(5);
/// How often waiting messages are retried.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// Ticks between connection checks (1 s).
const DIAL_TICKS: u64 = 5;
/// Ticks between sweeps of the remote-call map (60 s).
const SWEEP_TICKS: u64 = 300;
/// A dial is not repeated sooner than this (the handshake follows the TCP connect).
const DIAL_BACKOFF: Duration = Duration::from_secs(2);
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// A failing peer is logged at most this often.
const DIAL_WARN_EVERY: Duration = Duration::from_secs(30);
/// Messages waiting for a retry at most; beyond, new ones are dropped (counted).
const MAX_PENDING: usize = 50_000;
/// Remote calls remembered at most (a node carries ~10,000 calls; a cluster some multiple).
const MAX_TRACKED_CALLS: usize = 200_000;
/// A remembered call not heard of for this long is forgotten (it ended without telling).
const CALL_IDLE: Duration = Duration::from_secs(12 * 3600);

/// How long an agent's call lookup waits for a live peer that is not connected yet (a node
/// that just joined and took tenants over may start their agents before its connections
/// are up); the agent takes an answer for 5 s after its start.
const LOOKUP_WAIT: Duration = Duration::from_secs(4);

/// The process group a node's port joins.
pub fn group(node: &str) -> String {
    format!("switchyard-port/{node}")
}

/// TLS between nodes: the listener accepts with `acceptor`, dials go out with `connector`
/// checking the peer's certificate against `server_name`. Whether a dialing peer must show
/// a certificate too is the acceptor's configuration; the shared secret authenticates peers
/// either way.
#[derive(Clone)]
pub struct PortTls {
    /// Incoming connections.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Outgoing connections.
    pub connector: tokio_rustls::TlsConnector,
    /// The name peers' certificates are checked against.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for PortTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What a port starts from.
pub struct PortConfig {
    /// This node's cluster name (as in the Directory).
    pub me: String,
    /// The inter-node listen address (port 0: a free one is picked; see [`Port::listen_addr`]).
    pub listen: SocketAddr,
    /// The shared secret (ractor_cluster's cookie): a peer without it is refused.
    pub secret: String,
    pub directory: Arc<Directory>,
    pub cc: Arc<CcContext>,
    /// How long a message to an unreachable singleton is retried before it is dropped.
    pub retry_for: Duration,
    /// TLS between nodes; None for plain TCP (the default).
    pub tls: Option<PortTls>,
}

impl PortConfig {
    /// A plain-TCP port with the default retry time.
    pub fn new(
        me: &str,
        listen: SocketAddr,
        secret: &str,
        directory: Arc<Directory>,
        cc: Arc<CcContext>,
    ) -> PortConfig {
        PortConfig {
            me: me.to_string(),
            listen,
            secret: secret.to_string(),
            directory,
            cc,
            retry_for: DEFAULT_RETRY_FOR,
            tls: None,
        }
    }
}

/// Why a port did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a cluster port already runs for this node")]
    AlreadyStarted,
    #[error("inter-node listener {0}: {1}")]
    Listen(SocketAddr, String),
    #[error("cluster port actor: {0}")]
    Spawn(String),
}

/// A running port.
pub struct Port {
    listen: SocketAddr,
    actor: ActorRef<PortMsg>,
    server: ActorRef<NodeServerMessage>,
    shared: Arc<Shared>,
    watcher: tokio::task::JoinHandle<()>,
}

/// The port's figures (tests, `GET /cluster`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub sent: u64,
    pub received: u64,
    /// Messages that waited for a retry (once each).
    pub retried: u64,
    /// Dropped messages by cause.
    pub failed: BTreeMap<&'static str, u64>,
    /// Remote calls remembered now.
    pub calls: usize,
    /// Connected peers, sorted.
    pub peers: Vec<String>,
}

impl Port {
    /// The inter-node address the port listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The port's figures now.
    pub fn stats(&self) -> PortStats {
        let s = &self.shared;
        PortStats {
            sent: s.sent.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            failed: s.failed.lock().map(|f| f.clone()).unwrap_or_default(),
            calls: s.calls.len(),
            peers: s.peers.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }

    /// Stops the port and closes its connections. Messages to other nodes are refused from
    /// then on (the hook stays installed but its port is gone).
    pub async fn stop(&self) {
        self.watcher.abort();
        let _ = self.actor.stop_and_wait(None, Some(DIAL_TIMEOUT)).await;
        if let Ok(sessions) = ractor::call_t!(self.server, NodeServerMessage::GetSessions, 1000) {
            for s in sessions.values() {
                s.actor.stop(Some("node stopping".into()));
            }
        }
        let _ = self.server.stop_and_wait(None, Some(DIAL_TIMEOUT)).await;
    }
}

/// Starts the port: the NodeServer on `cfg.listen`, the port actor in its process group, the
/// Directory watch, and the [`Remote`] hook in `cfg.cc.remote`.
pub async fn start(cfg: PortConfig) -> Result<Arc<Port>, Error> {
    if cfg.cc.remote.get().is_some() {
        return Err(Error::AlreadyStarted);
    }
    // ractor_cluster cannot tell which port it bound for port 0, so a free one is picked
    // here (bound and released: a race only tests with port 0 could lose).
    let mut listen = cfg.listen;
    if listen.port() == 0 {
        let probe = std::net::TcpListener::bind(listen)
            .map_err(|e| Error::Listen(listen, e.to_string()))?;
        listen = probe
            .local_addr()
            .map_err(|e| Error::Listen(listen, e.to_string()))?;
    }
    let encryption = cfg
        .tls
        .as_ref()
        .map(|t| IncomingEncryptionMode::Tls(t.acceptor.clone()));
    let server = NodeServer::new(
        listen.port(),
        cfg.secret.clone(),
        cfg.me.clone(),
        // ractor_cluster takes a peer whose "host:port" equals its own for itself and drops
        // the session ("self_connection"): nodes on one port of different addresses (as on
        // 127.0.0.1/2/3) must differ here, so the host is the listen address.
        listen.ip().to_string(),
        encryption,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(listen.ip());
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| Error::Listen(listen, e.to_string()))?;
    let shared = Arc::new(Shared::default());
    let args = PortArgs {
        me: cfg.me.clone(),
        directory: cfg.directory.clone(),
        cc: cfg.cc.clone(),
        retry_for: cfg.retry_for,
        tls: cfg.tls.clone(),
        server: server.clone(),
        shared: shared.clone(),
    };
    let (actor, _) = match Actor::spawn(None, PortActor, args).await {
        Ok(a) => a,
        Err(e) => {
            server.stop(None);
            return Err(Error::Spawn(e.to_string()));
        }
    };
    ractor::pg::join(group(&cfg.me), vec![actor.get_cell()]);
    let _ = server.cast(NodeServerMessage::SubscribeToEvents {
        id: "switchyard-port".into(),
        subscription: Box::new(Events {
            port: actor.clone(),
        }),
    });
    let hook = Hook {
        me: cfg.me.clone(),
        shared: shared.clone(),
        port: actor.clone(),
    };
    if cfg.cc.remote.set(Arc::new(hook)).is_err() {
        actor.stop(None);
        server.stop(None);
        return Err(Error::AlreadyStarted);
    }
    let mut changes = cfg.directory.subscribe();
    let watched = actor.clone();
    let watcher = tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            if watched
                .cast(PortMsg::Local(Control::DirectoryChanged))
                .is_err()
            {
                break;
            }
        }
    });
    let _ = actor.cast(PortMsg::Local(Control::DirectoryChanged));
    tracing::info!(node = %cfg.me, %listen, tls = cfg.tls.is_some(), "cluster port listening");
    Ok(Arc::new(Port {
        listen,
        actor,
        server,
        shared,
        watcher,
    }))
}

/// The port's own messages (this node only; see [`PortMsg::Local`]).
pub enum Control {
    /// A message from this node's actors for an actor elsewhere (through [`Remote`]).
    Send(Box<Envelope>),
    /// Retry waiting messages; now and then, connect and sweep.
    Tick,
    /// Nodes or owners changed in the Directory.
    DirectoryChanged,
    /// A connection to a peer finished its handshake (the peer, its session actor).
    PeerUp(String, ActorCell),
    /// A connection to a peer closed.
    PeerDown(String, ActorCell),
    /// A dial attempt's result.
    Dialed(String, Result<(), String>),
    /// An agent actor starting here asks every live node for a call that holds it
    /// (tenant, agent): see [`Remote::find_agent_call`].
    FindAgentCall(String, String),
}

/// What the hook and the port actor share.
#[derive(Default)]
struct Shared {
    /// Calls running on other nodes that this node's queues and agents deal with.
    calls: DashMap<Arc<str>, CallEntry>,
    sent: AtomicU64,
    received: AtomicU64,
    retried: AtomicU64,
    failed: Mutex<BTreeMap<&'static str, u64>>,
    peers: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, cause: &'static str, n: u64) {
        metrics::counter!(MESSAGE_FAILURES, "cause" => cause).increment(n);
        if let Ok(mut f) = self.failed.lock() {
            *f.entry(cause).or_default() += n;
        }
    }
}

/// A call on another node, as this node knows it.
struct CallEntry {
    node: String,
    tenant: Arc<str>,
    queue: Option<Arc<str>>,
    /// Agents offered the call (and the offer), until the offer ends unanswered.
    agents: Vec<(Arc<str>, u64)>,
    touched: Instant,
}

/// The [`Remote`] hook: converts and hands messages to the port actor.
struct Hook {
    me: String,
    shared: Arc<Shared>,
    port: ActorRef<PortMsg>,
}

impl Hook {
    fn send(&self, to: Payload) -> bool {
        let env = Envelope {
            v: wire::VERSION,
            from: self.me.clone(),
            sent_us: now_us(),
            to,
        };
        self.port
            .cast(PortMsg::Local(Control::Send(Box::new(env))))
            .is_ok()
    }
}

impl Remote for Hook {
    fn queue(&self, tenant: &str, queue: &str, msg: QueueMsg) -> bool {
        let Some(msg) = WireQueueMsg::from_local(msg) else {
            return false;
        };
        self.send(Payload::Queue {
            tenant: tenant.to_string(),
            queue: queue.to_string(),
            msg,
        })
    }

    fn agent(&self, tenant: &str, agent: &str, msg: AgentMsg) -> bool {
        let Some(msg) = WireAgentMsg::from_local(msg) else {
            return false;
        };
        self.send(Payload::Agent {
            tenant: tenant.to_string(),
            agent: agent.to_string(),
            msg,
        })
    }

    fn trunk(&self, trunk: &str, report: AttemptReport) -> bool {
        self.send(Payload::Trunk {
            trunk: trunk.to_string(),
            report,
        })
    }

    fn call(&self, call_id: &str, msg: CallMsg) -> bool {
        let Some(mut entry) = self.shared.calls.get_mut(call_id) else {
            return false; // runs nowhere we know of: gone
        };
        let Some(msg) = WireCallMsg::from_local(msg) else {
            return false;
        };
        if let WireCallMsg::Offer(o) = &msg {
            // Remembered so that the agent is freed if the call's node dies.
            if entry.agents.len() < 64 {
                entry.agents.push((Arc::from(o.agent.as_str()), o.offer));
            }
        }
        entry.touched = Instant::now();
        drop(entry);
        self.send(Payload::Call {
            call_id: call_id.to_string(),
            msg,
        })
    }

    fn call_elsewhere(&self, call_id: &str) -> bool {
        self.shared.calls.contains_key(call_id)
    }

    fn find_agent_call(&self, tenant: &str, agent: &str) -> bool {
        self.port
            .cast(PortMsg::Local(Control::FindAgentCall(
                tenant.to_string(),
                agent.to_string(),
            )))
            .is_ok()
    }
}

/// ractor_cluster's session events, as port messages.
struct Events {
    port: ActorRef<PortMsg>,
}

fn peer_name(ses: &NodeServerSessionInformation) -> Option<String> {
    let name = &ses.peer_name.as_ref()?.name;
    Some(
        name.rsplit_once('@')
            .map_or(name.as_str(), |(n, _)| n)
            .to_string(),
    )
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        if let Some(n) = peer_name(&ses) {
            let _ = self
                .port
                .cast(PortMsg::Local(Control::PeerDown(n, ses.actor.get_cell())));
        }
    }

    fn node_session_authenicated(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        if let Some(n) = peer_name(&ses) {
            let _ = self
                .port
                .cast(PortMsg::Local(Control::PeerUp(n, ses.actor.get_cell())));
        }
    }
}

struct PortActor;

struct PortArgs {
    me: String,
    directory: Arc<Directory>,
    cc: Arc<CcContext>,
    retry_for: Duration,
    tls: Option<PortTls>,
    server: ActorRef<NodeServerMessage>,
    shared: Arc<Shared>,
}

/// A message waiting for its target to become reachable.
struct Pending {
    env: Box<Envelope>,
    /// Order is kept per target: later messages to it wait behind this one.
    key: String,
    since: Instant,
    /// Received from a peer: delivered here or not at all (never forwarded on).
    local_only: bool,
    /// Why the last attempt failed.
    cause: &'static str,
}

struct PortState {
    a: PortArgs,
    myself: ActorRef<PortMsg>,
    pending: VecDeque<Pending>,
    pending_keys: HashMap<String, usize>,
    /// Live nodes at the last Directory change, with their start time.
    live: HashMap<String, u64>,
    /// This node's ready session with each connected peer.
    sessions: HashMap<String, ActorCell>,
    dialing: HashSet<String>,
    last_dial: HashMap<String, Instant>,
    last_warn: HashMap<String, Instant>,
    ticks: u64,
    tick: Option<tokio::task::JoinHandle<()>>,
    /// Agent call lookups still to send to live peers that were not connected when asked.
    lookups: Vec<WaitingLookup>,
}

/// An agent's call lookup (see [`Remote::find_agent_call`]) waiting for peers to connect.
struct WaitingLookup {
    tenant: String,
    agent: String,
    since: Instant,
    /// The live peers not asked yet.
    missing: Vec<String>,
}

impl Actor for PortActor {
    type Msg = PortMsg;
    type State = PortState;
    type Arguments = PortArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PortMsg>,
        a: PortArgs,
    ) -> Result<PortState, ActorProcessingErr> {
        let tick = myself.send_interval(RETRY_EVERY, || PortMsg::Local(Control::Tick));
        Ok(PortState {
            a,
            myself,
            pending: VecDeque::new(),
            pending_keys: HashMap::new(),
            live: HashMap::new(),
            sessions: HashMap::new(),
            dialing: HashSet::new(),
            last_dial: HashMap::new(),
            last_warn: HashMap::new(),
            ticks: 0,
            tick: Some(tick),
            lookups: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PortMsg>,
        msg: PortMsg,
        state: &mut PortState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PortMsg::Envelope(env) => state.inbound(env),
            PortMsg::Undecodable(why) => {
                state.a.shared.fail("decode", 1);
                tracing::warn!(error = %why, "inter-node message that is not an envelope dropped");
            }
            PortMsg::Local(Control::Send(env)) => state.outbound(env),
            PortMsg::Local(Control::Tick) => {
                state.ticks += 1;
                state.flush();
                if !state.lookups.is_empty() {
                    state
                        .lookups
                        .retain(|l| l.since.elapsed() < LOOKUP_WAIT && !l.missing.is_empty());
                }
                if state.ticks % DIAL_TICKS == 0 {
                    state.dial();
                    state.publish_peers();
                }
                if state.ticks % SWEEP_TICKS == 0 {
                    state.sweep();
                }
            }
            PortMsg::Local(Control::DirectoryChanged) => {
                state.on_directory().await;
                state.flush();
            }
            PortMsg::Local(Control::PeerUp(n, session)) => {
                tracing::info!(peer = %n, "cluster peer connected");
                state.sessions.insert(n.clone(), session);
                state.publish_peers();
                state.flush();
                state.send_waiting_lookups(&n);
            }
            PortMsg::Local(Control::PeerDown(n, session)) => {
                tracing::info!(peer = %n, "cluster peer disconnected");
                // Only that session: a newer one with the same peer may be up already.
                if state
                    .sessions
                    .get(&n)
                    .is_some_and(|s| s.get_id() == session.get_id())
                {
                    state.sessions.remove(&n);
                }
                state.publish_peers();
            }
            PortMsg::Local(Control::Dialed(n, r)) => {
                state.dialing.remove(&n);
                if let Err(e) = r {
                    state.warn_peer(&n, &e);
                }
            }
            PortMsg::Local(Control::FindAgentCall(tenant, agent)) => {
                state.find_agent_call(tenant, agent)
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PortMsg>,
        state: &mut PortState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.tick.take() {
            t.abort();
        }
        let n = state.pending.len() as u64;
        if n > 0 {
            state.a.shared.fail("unreachable", n);
            tracing::warn!(
                messages = n,
                "cluster port stopped with messages waiting: dropped"
            );
        }
        Ok(())
    }
}

impl PortState {
    /// An envelope from a peer.
    fn inbound(&mut self, env: Box<Envelope>) {
        let kind = env.to.kind();
        self.a.shared.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(MESSAGES_RECEIVED, "kind" => kind).increment(1);
        let now = now_us();
        if now >= env.sent_us {
            metrics::histogram!(MESSAGE_LATENCY).record((now - env.sent_us) as f64 / 1e6);
        }
        self.note_call(&env);
        self.submit(env, true);
    }

    /// A message from this node's actors.
    fn outbound(&mut self, env: Box<Envelope>) {
        self.submit(env, false);
    }

    /// Sends now, or queues behind earlier messages to the same target, or for a retry.
    fn submit(&mut self, env: Box<Envelope>, local_only: bool) {
        if !self.pending.is_empty() {
            let key = target_key(&env.to);
            if self.pending_keys.contains_key(&key) {
                return self.defer(env, key, local_only, "unreachable");
            }
        }
        match self.attempt(&env, local_only) {
            Ok(()) => {}
            Err(cause @ ("gone" | "decode")) => self.drop_now(&env, cause),
            Err(cause) => {
                let key = target_key(&env.to);
                self.defer(env, key, local_only, cause);
            }
        }
    }

    /// One delivery attempt: here, or to the owner node's port.
    fn attempt(&self, env: &Envelope, local_only: bool) -> Result<(), &'static str> {
        if local_only {
            return self.deliver_local(env);
        }
        let node = self.destination(&env.to)?;
        if node == self.a.me {
            return self.deliver_local(env);
        }
        let port = peer_port(self.sessions.get(&node), &node).ok_or("unreachable")?;
        port.cast(PortMsg::Envelope(Box::new(env.clone())))
            .map_err(|_| "unreachable")?;
        self.a.shared.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(MESSAGES_SENT, "kind" => env.to.kind()).increment(1);
        Ok(())
    }

    /// The node that runs a message's target now.
    fn destination(&self, to: &Payload) -> Result<String, &'static str> {
        let dir = &self.a.directory;
        match to {
            Payload::Queue { tenant, queue, .. } => dir
                .owner(&queue_key(tenant, queue))
                .or_else(|| dir.owner(&tenant_key(tenant)))
                .ok_or("no_owner"),
            Payload::Agent { tenant, .. } => dir.owner(&tenant_key(tenant)).ok_or("no_owner"),
            Payload::Trunk { trunk, .. } => dir.owner(&trunk_key(trunk)).ok_or("no_owner"),
            // Sent to each peer directly (find_agent_call), never routed.
            Payload::FindAgentCall { .. } => Err("gone"),
            Payload::Call { call_id, .. } => {
                let node = self
                    .a
                    .shared
                    .calls
                    .get(call_id.as_str())
                    .map(|e| e.node.clone())
                    .ok_or("gone")?;
                // A call on a dead node is gone with it. A node connected to us that this
                // node's Directory does not show yet (the etcd watch lags) is not dead.
                if dir.node(&node).is_some() || self.sessions.contains_key(&node) {
                    Ok(node)
                } else {
                    Err("gone")
                }
            }
        }
    }

    /// Delivers to the actor on this node (the actors' own lookups, never their remote
    /// fallback: a message must not bounce between nodes).
    fn deliver_local(&self, env: &Envelope) -> Result<(), &'static str> {
        let node = &self.a.cc.node;
        match &env.to {
            Payload::Queue { tenant, queue, msg } => queue::lookup(tenant, queue, node)
                .ok_or("expired")?
                .cast(msg.to_local())
                .map_err(|_| "expired"),
            Payload::Agent { tenant, agent, msg } => agent::lookup(tenant, agent, node)
                .ok_or("expired")?
                .cast(msg.to_local())
                .map_err(|_| "expired"),
            Payload::Call { call_id, msg } => {
                let local = msg.to_local().map_err(|e| {
                    tracing::warn!(call_id = %call_id, error = %e, "inter-node call message not understood");
                    "decode"
                })?;
                self.a
                    .cc
                    .calls
                    .directory
                    .lookup(call_id.as_bytes())
                    .ok_or("gone")?
                    .cast(local)
                    .map_err(|_| "gone")
            }
            Payload::FindAgentCall { tenant, agent } => {
                self.answer_agent_call(tenant, agent, &env.from);
                Ok(())
            }
            Payload::Trunk { trunk, report } => trunk::lookup(trunk, node)
                .ok_or("expired")?
                .cast(TrunkMsg::Attempt(report.clone()))
                .map_err(|_| "expired"),
        }
    }

    /// Asks every live peer, and this node, for a call that holds an agent.
    /// A live peer not connected yet is asked when it connects, for up to [`LOOKUP_WAIT`].
    fn find_agent_call(&mut self, tenant: String, agent: String) {
        let me = self.a.me.clone();
        self.answer_agent_call(&tenant, &agent, &me);
        let missing: Vec<String> = self
            .live
            .keys()
            .filter(|n| **n != me && !self.send_lookup(n, &tenant, &agent))
            .cloned()
            .collect();
        if !missing.is_empty() && self.lookups.len() < MAX_PENDING {
            self.lookups.push(WaitingLookup {
                tenant,
                agent,
                since: Instant::now(),
                missing,
            });
        }
    }

    /// Sends the lookups that waited for `node` to connect.
    fn send_waiting_lookups(&mut self, node: &str) {
        let mut lookups = std::mem::take(&mut self.lookups);
        for l in &mut lookups {
            if l.since.elapsed() < LOOKUP_WAIT
                && l.missing.iter().any(|m| m == node)
                && self.send_lookup(node, &l.tenant, &l.agent)
            {
                l.missing.retain(|m| m != node);
            }
        }
        lookups.retain(|l| l.since.elapsed() < LOOKUP_WAIT && !l.missing.is_empty());
        self.lookups = lookups;
    }

    /// One agent call lookup to a connected peer's port; false when it is not connected.
    fn send_lookup(&self, node: &str, tenant: &str, agent: &str) -> bool {
        let Some(port) = peer_port(self.sessions.get(node), node) else {
            return false;
        };
        let env = Envelope {
            v: wire::VERSION,
            from: self.a.me.clone(),
            sent_us: now_us(),
            to: Payload::FindAgentCall {
                tenant: tenant.to_string(),
                agent: agent.to_string(),
            },
        };
        let kind = env.to.kind();
        if port.cast(PortMsg::Envelope(Box::new(env))).is_err() {
            return false;
        }
        self.a.shared.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(MESSAGES_SENT, "kind" => kind).increment(1);
        true
    }

    /// Answers a lookup from node `asker` (or this node) for a call that holds an agent:
    /// when a call actor here rings or talks to it, the agent is sent
    /// [`AgentMsg::Resume`], straight to the asker's port (the asker runs the agent, even if
    /// this node's Directory does not show it as the tenant's owner yet), or else through
    /// the owner. An entry whose call actor is gone is stale: dropped, not reported.
    fn answer_agent_call(&self, tenant: &str, agent: &str, asker: &str) {
        let cc = &self.a.cc;
        let key = (Arc::<str>::from(tenant), Arc::<str>::from(agent));
        let Some(found) = cc.agent_calls.get(&key).map(|c| c.clone()) else {
            return;
        };
        if cc
            .calls
            .directory
            .lookup(found.call_id.as_bytes())
            .is_none()
        {
            agent::forget_call(&cc.agent_calls, &key.0, &key.1, &found.call_id);
            return;
        }
        tracing::debug!(tenant, agent, call_id = %found.call_id, asker, "agent's call found here");
        let resume = wire::WireAgentMsg::Resume {
            call_id: found.call_id.to_string(),
            queue: found.queue.to_string(),
            offer: found.offer,
            answered: found.answered,
        };
        if asker != self.a.me {
            let env = Envelope {
                v: wire::VERSION,
                from: self.a.me.clone(),
                sent_us: now_us(),
                to: Payload::Agent {
                    tenant: tenant.to_string(),
                    agent: agent.to_string(),
                    msg: resume.clone(),
                },
            };
            let direct = peer_port(self.sessions.get(asker), asker)
                .is_some_and(|p| p.cast(PortMsg::Envelope(Box::new(env))).is_ok());
            if direct {
                self.a.shared.sent.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(MESSAGES_SENT, "kind" => "agent.resume").increment(1);
                return;
            }
        }
        agent::tell(cc, tenant, agent, resume.to_local());
    }

    /// A message no retry can help: its call ended (or its node died), or it does not
    /// convert back.
    fn drop_now(&self, env: &Envelope, cause: &'static str) {
        self.a.shared.fail(cause, 1);
        tracing::debug!(
            cause,
            target = %describe_target(&env.to),
            "inter-node message dropped"
        );
    }

    fn defer(&mut self, env: Box<Envelope>, key: String, local_only: bool, cause: &'static str) {
        if self.pending.len() >= MAX_PENDING {
            self.a.shared.fail("overflow", 1);
            tracing::warn!(kind = env.to.kind(), target = %describe_target(&env.to), "inter-node retry list full: message dropped");
            return;
        }
        self.a.shared.retried.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(MESSAGE_RETRIES).increment(1);
        *self.pending_keys.entry(key.clone()).or_default() += 1;
        self.pending.push_back(Pending {
            env,
            key,
            since: Instant::now(),
            local_only,
            cause,
        });
    }

    /// Retries waiting messages in order (per target); drops those out of time.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let old = std::mem::take(&mut self.pending);
        let mut blocked: HashMap<String, &'static str> = HashMap::new();
        // Dropped messages by cause: a count and one example for the log line.
        let mut dropped: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
        for mut p in old {
            let done = match blocked.get(&p.key) {
                Some(cause) => {
                    p.cause = cause;
                    false
                }
                None => match self.attempt(&p.env, p.local_only) {
                    Ok(()) => true,
                    Err(cause @ ("gone" | "decode")) => {
                        self.drop_now(&p.env, cause);
                        true
                    }
                    Err(cause) => {
                        p.cause = cause;
                        blocked.insert(p.key.clone(), cause);
                        false
                    }
                },
            };
            let expired = !done && now.duration_since(p.since) >= self.a.retry_for;
            if expired {
                let d = dropped
                    .entry(p.cause)
                    .or_insert_with(|| (0, describe_target(&p.env.to)));
                d.0 += 1;
                self.a.shared.fail(p.cause, 1);
            }
            if done || expired {
                if let Some(n) = self.pending_keys.get_mut(&p.key) {
                    *n -= 1;
                    if *n == 0 {
                        self.pending_keys.remove(&p.key);
                    }
                }
            } else {
                self.pending.push_back(p);
            }
        }
        for (cause, (n, example)) in dropped {
            tracing::warn!(
                cause,
                messages = n,
                example = %example,
                waited_ms = self.a.retry_for.as_millis() as u64,
                "inter-node messages dropped: target unreachable for the whole retry time"
            );
        }
    }

    /// Remembers (or forgets) the remote call a peer's message is about.
    fn note_call(&self, env: &Envelope) {
        let calls = &self.a.shared.calls;
        match &env.to {
            Payload::Queue { tenant, queue, msg } => {
                let Some(call_id) = msg.call_id() else {
                    return;
                };
                match msg {
                    WireQueueMsg::Leave { .. }
                    | WireQueueMsg::CallerState {
                        state: wire::WireCallerState::Gone { .. },
                        ..
                    } => {
                        // Left the queue; an agent still on the call keeps the entry.
                        calls.remove_if(call_id, |_, e| e.agents.is_empty());
                    }
                    WireQueueMsg::OfferEnded { agent, outcome, .. }
                        if *outcome != wire::WireOutcome::Answered =>
                    {
                        if let Some(mut e) = calls.get_mut(call_id) {
                            e.agents.retain(|(a, _)| **a != **agent);
                            e.touched = Instant::now();
                        }
                    }
                    _ => {
                        if let Some(mut e) = calls.get_mut(call_id) {
                            e.touched = Instant::now();
                            if e.node != env.from {
                                e.node = env.from.clone();
                            }
                            return;
                        }
                        if calls.len() >= MAX_TRACKED_CALLS {
                            tracing::warn!(
                                call_id,
                                "too many remote calls remembered: this one is not"
                            );
                            return;
                        }
                        calls.insert(
                            Arc::from(call_id),
                            CallEntry {
                                node: env.from.clone(),
                                tenant: Arc::from(tenant.as_str()),
                                queue: Some(Arc::from(queue.as_str())),
                                agents: Vec::new(),
                                touched: Instant::now(),
                            },
                        );
                    }
                }
            }
            Payload::Agent {
                msg: WireAgentMsg::CallEnded { call_id },
                ..
            } => {
                calls.remove(call_id.as_str());
            }
            Payload::Agent {
                tenant,
                agent,
                msg: WireAgentMsg::Resume { call_id, offer, .. },
            } => {
                // The agent takes over a call that runs on the sender: remembered so that
                // the agent knows it runs elsewhere, and is freed if that node dies.
                let agent: Arc<str> = Arc::from(agent.as_str());
                if let Some(mut e) = calls.get_mut(call_id.as_str()) {
                    e.node = env.from.clone();
                    e.touched = Instant::now();
                    if !e.agents.iter().any(|(a, _)| *a == agent) {
                        e.agents.push((agent, *offer));
                    }
                    return;
                }
                if calls.len() < MAX_TRACKED_CALLS {
                    calls.insert(
                        Arc::from(call_id.as_str()),
                        CallEntry {
                            node: env.from.clone(),
                            tenant: Arc::from(tenant.as_str()),
                            queue: None,
                            agents: vec![(agent, *offer)],
                            touched: Instant::now(),
                        },
                    );
                }
            }
            Payload::Agent { .. }
            | Payload::Call { .. }
            | Payload::FindAgentCall { .. }
            | Payload::Trunk { .. } => {}
        }
    }

    /// Follows the Directory: forgets nodes that left (and their calls), connects to new ones.
    async fn on_directory(&mut self) {
        let live: HashMap<String, u64> = self
            .a
            .directory
            .nodes()
            .into_iter()
            .map(|n| (n.name, n.since_ms))
            .collect();
        // Gone, or back under the same name with another start time (restarted within its
        // lease's time to live): either way the calls it ran died with the old process.
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(n, since)| live.get(*n) != Some(since))
            .map(|(n, _)| n.clone())
            .collect();
        self.live = live;
        for node in gone {
            self.node_gone(&node).await;
        }
        self.dial();
        self.publish_peers();
    }

    /// A node left the cluster: its connection is closed, and the queues and agents here
    /// are told that the calls it ran are over.
    async fn node_gone(&mut self, node: &str) {
        if let Some(s) = self.sessions.remove(node) {
            s.stop(Some("node left the cluster".into()));
        }
        // Also sessions that never finished their handshake.
        if let Ok(sessions) = ractor::call_t!(self.a.server, NodeServerMessage::GetSessions, 1000) {
            for s in sessions.values() {
                if peer_name(s).as_deref() == Some(node) {
                    s.actor.stop(Some("node left the cluster".into()));
                }
            }
        }
        self.last_dial.remove(node);
        self.last_warn.remove(node);
        let ended: Vec<(Arc<str>, CallEntry)> = {
            let ids: Vec<Arc<str>> = self
                .a
                .shared
                .calls
                .iter()
                .filter(|e| e.node == node)
                .map(|e| e.key().clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| self.a.shared.calls.remove(&id))
                .collect()
        };
        let cc = &self.a.cc;
        for (call_id, e) in &ended {
            if let Some(q) = &e.queue {
                queue::tell(
                    cc,
                    &e.tenant,
                    q,
                    QueueMsg::Leave {
                        call_id: call_id.clone(),
                        abandoned: false,
                    },
                );
            }
            for (a, offer) in &e.agents {
                // Whichever applies: a ringing offer is withdrawn, a call in progress ends.
                agent::tell(
                    cc,
                    &e.tenant,
                    a,
                    AgentMsg::OfferEnded {
                        offer: *offer,
                        outcome: OfferOutcome::Cancelled,
                    },
                );
                agent::tell(
                    cc,
                    &e.tenant,
                    a,
                    AgentMsg::CallEnded {
                        call_id: call_id.clone(),
                    },
                );
            }
        }
        tracing::info!(
            node,
            calls = ended.len(),
            "cluster node left: connection closed, its calls released here"
        );
    }

    /// Connects to live nodes not connected yet (the node whose name sorts first dials).
    fn dial(&mut self) {
        let now = Instant::now();
        for n in self.a.directory.nodes() {
            if n.name <= self.a.me
                || self.dialing.contains(&n.name)
                || self.connected(&n.name)
                || self
                    .last_dial
                    .get(&n.name)
                    .is_some_and(|t| now.duration_since(*t) < DIAL_BACKOFF)
            {
                continue;
            }
            self.dialing.insert(n.name.clone());
            self.last_dial.insert(n.name.clone(), now);
            let (server, port, tls) = (
                self.a.server.clone(),
                self.myself.clone(),
                self.a.tls.clone(),
            );
            let (name, addr) = (n.name, n.cluster);
            tokio::spawn(async move {
                let connect = async {
                    match tls {
                        Some(t) => {
                            ractor_cluster::client_connect_enc(
                                &server,
                                addr,
                                t.connector,
                                t.server_name,
                            )
                            .await
                        }
                        None => ractor_cluster::client_connect(&server, addr).await,
                    }
                };
                let r = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{addr}: {e}")),
                    Err(_) => Err(format!("{addr}: connect timed out")),
                };
                let _ = port.cast(PortMsg::Local(Control::Dialed(name, r)));
            });
        }
    }

    fn warn_peer(&mut self, node: &str, error: &str) {
        let now = Instant::now();
        let due = self
            .last_warn
            .get(node)
            .is_none_or(|t| now.duration_since(*t) >= DIAL_WARN_EVERY);
        if due {
            self.last_warn.insert(node.to_string(), now);
            tracing::warn!(
                peer = node,
                error,
                "cannot connect to cluster peer (retrying)"
            );
        }
    }

    fn connected(&self, node: &str) -> bool {
        peer_port(self.sessions.get(node), node).is_some()
    }

    /// Connected live peers: the gauge and the stats.
    fn publish_peers(&self) {
        let mut peers: Vec<String> = self
            .live
            .keys()
            .filter(|n| **n != self.a.me && self.connected(n))
            .cloned()
            .collect();
        peers.sort();
        metrics::gauge!(PEERS).set(peers.len() as f64);
        if let Ok(mut p) = self.a.shared.peers.lock() {
            *p = peers;
        }
    }

    /// Forgets remote calls not heard of for a long time (they ended without telling).
    fn sweep(&self) {
        let now = Instant::now();
        self.a
            .shared
            .calls
            .retain(|_, e| now.duration_since(e.touched) < CALL_IDLE);
    }
}

/// A connected peer's port, through this node's own session with that peer: the session's
/// stand-in (`RemoteActor`) for the actor that the peer's process group names.
///
/// Not just any remote member of the group: ractor's registry and process groups are
/// process-wide, so when several nodes share a process (tests) every node's sessions mirror
/// every group, and a stand-in owned by another node's session (whose ids can even collide
/// with ours, node ids being per NodeServer) would route through someone else's connection.
fn peer_port(session: Option<&ActorCell>, node: &str) -> Option<ActorRef<PortMsg>> {
    let session = session?;
    let pids: HashSet<u64> = ractor::pg::get_members(&group(node))
        .iter()
        .map(|c| c.get_id().pid())
        .collect();
    session
        .get_children()
        .into_iter()
        .find(|c| !c.get_id().is_local() && pids.contains(&c.get_id().pid()))
        .map(ActorRef::from)
}

/// The retry-order key of a target.
fn target_key(to: &Payload) -> String {
    match to {
        Payload::Queue { tenant, queue, .. } => format!("q/{tenant}/{queue}"),
        Payload::Agent { tenant, agent, .. } => format!("a/{tenant}/{agent}"),
        Payload::Call { call_id, .. } => format!("c/{call_id}"),
        Payload::FindAgentCall { tenant, agent } => format!("f/{tenant}/{agent}"),
        Payload::Trunk { trunk, .. } => format!("t/{trunk}"),
    }
}

/// A target for log lines: `queue t1/sales (queue.join)`.
fn describe_target(to: &Payload) -> String {
    match to {
        Payload::Queue { tenant, queue, .. } => format!("queue {tenant}/{queue} ({})", to.kind()),
        Payload::Agent { tenant, agent, .. } => format!("agent {tenant}/{agent} ({})", to.kind()),
        Payload::Call { call_id, .. } => format!("call {call_id} ({})", to.kind()),
        Payload::FindAgentCall { tenant, agent } => {
            format!("lookup for agent {tenant}/{agent} ({})", to.kind())
        }
        Payload::Trunk { trunk, .. } => format!("trunk {trunk} ({})", to.kind()),
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
