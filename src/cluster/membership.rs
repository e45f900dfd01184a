//! The node's place in the cluster, kept in etcd (a real consensus store decides who is
//! alive and who owns what; nothing here is home-made consensus).
//!
//! Keys under the configured prefix:
//! - `nodes/<name>`: the node's [`NodeInfo`] (JSON), bound to the node's lease;
//! - `owners/tenant/<id>`, `owners/queue/<tenant>/<id>`, `owners/trunk/<id>`: the owning node's
//!   name, bound to the owner's lease, so a dead node's singletons are released by etcd itself
//!   when its lease expires.
//!
//! One task per node watches both prefixes and reconciles after every change and every
//! half second: for each singleton of the configuration, the owner should be the
//! [`ownership::owner`] among the live `up` nodes. A node claims a free singleton it should
//! own with a transaction (create the key only if it does not exist, with the tenant's queue
//! keys), and only then starts its actor; it gives a singleton away (to a node that joined, or
//! because it drains) by stopping the actor first and deleting the key after, so two nodes
//! never run one singleton at the same time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::checkpoints::Checkpoints;
use super::{channels, ownership, ClusterConfig, Directory, NodeInfo, NodeState};
use crate::actors::queue::CcContext;
use crate::actors::trunk::LiveTrunks;
use crate::supervision::catalog::Catalog;

/// Live nodes by state (`up`, `draining`).
pub const CLUSTER_NODES: &str = "switchyard_cluster_nodes";
/// Nodes seen joining and leaving (`change` = `joined` / `left`).
pub const CLUSTER_MEMBERSHIP_CHANGES: &str = "switchyard_cluster_membership_changes_total";
/// Singletons this node owns and runs, by kind (`tenant`, `trunk`).
pub const CLUSTER_SINGLETONS_OWNED: &str = "switchyard_cluster_singletons_owned";
/// Ownership moves seen from this node (`kind`, `move` = `claimed` / `released`).
pub const CLUSTER_OWNERSHIP_MOVES: &str = "switchyard_cluster_ownership_moves_total";
/// From the moment this node saw a singleton's owner go (its key deleted: lease expired or
/// released) to its actor running here.
pub const CLUSTER_TAKEOVER_SECONDS: &str = "switchyard_cluster_takeover_seconds";
/// etcd operations that failed, by `op`.
pub const CLUSTER_ETCD_ERRORS: &str = "switchyard_cluster_etcd_errors_total";
/// Times this node's lease was found expired (it then owned nothing until it rejoined).
pub const CLUSTER_LEASE_LOST: &str = "switchyard_cluster_lease_lost_total";
/// 1 while this node drains (gives its singletons away and claims none).
pub const CLUSTER_DRAINING: &str = "switchyard_cluster_draining";
/// This node's part of a trunk's `max_channels` (see `cluster::channels`).
pub const CLUSTER_TRUNK_CHANNEL_CAP: &str = "switchyard_cluster_trunk_channel_cap";

/// Describes the membership metrics (called once by `metrics::describe_all`).
pub fn describe() {
    metrics::describe_gauge!(CLUSTER_NODES, "Live cluster nodes by state (up, draining).");
    metrics::describe_counter!(
        CLUSTER_MEMBERSHIP_CHANGES,
        "Cluster nodes seen joining and leaving (change = joined/left)."
    );
    metrics::describe_gauge!(
        CLUSTER_SINGLETONS_OWNED,
        "Singletons (tenants with their queues and agents, trunks) this node owns and runs."
    );
    metrics::describe_counter!(
        CLUSTER_OWNERSHIP_MOVES,
        "Singletons claimed or released by this node (kind, move = claimed/released)."
    );
    metrics::describe_histogram!(
        CLUSTER_TAKEOVER_SECONDS,
        metrics::Unit::Seconds,
        "From a singleton's owner going (lease expired or released) to its actor running here."
    );
    metrics::describe_counter!(CLUSTER_ETCD_ERRORS, "etcd operations that failed, by op.");
    metrics::describe_counter!(
        CLUSTER_LEASE_LOST,
        "Times this node's etcd lease expired under it (it released everything and rejoined)."
    );
    metrics::describe_gauge!(CLUSTER_DRAINING, "1 while this node drains its singletons.");
    metrics::describe_gauge!(
        CLUSTER_TRUNK_CHANNEL_CAP,
        "This node's part of a trunk's max_channels, so the limit holds cluster-wide."
    );
}

/// The least time between two publications of this node's trunk usage.
const USAGE_MIN_INTERVAL: Duration = Duration::from_millis(500);
/// Usage is published again after this long even when unchanged.
const USAGE_REFRESH: Duration = Duration::from_secs(2);

/// What the API asks of the membership task.
enum Cmd {
    /// Become `state`; for `Draining`, answer once every singleton here is released.
    SetState(NodeState, oneshot::Sender<()>),
    /// Leave the cluster: stop the singletons, revoke the lease (the others take over at
    /// once instead of after the lease's time to live).
    Leave(oneshot::Sender<()>),
}

/// A node's membership: the running task and its handle.
#[derive(Debug)]
pub struct Membership {
    cmd: mpsc::UnboundedSender<Cmd>,
    directory: Arc<Directory>,
    catalog: Catalog,
    state: Arc<Mutex<NodeState>>,
}

/// `GET /cluster`'s body.
#[derive(Debug, serde::Serialize)]
pub struct ClusterView {
    pub node: String,
    pub state: NodeState,
    pub nodes: Vec<NodeView>,
    /// Singletons of this node's configuration that no live node owns right now.
    pub unowned: Vec<String>,
}

/// One node in [`ClusterView`].
#[derive(Debug, serde::Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// The singleton keys it owns, sorted.
    pub owns: Vec<String>,
}

impl Membership {
    /// Joins the cluster: connects to etcd, takes a lease, announces `info`, reads the
    /// current nodes and owners, and starts the task that claims and releases `catalog`'s
    /// singletons (handing their checkpoints over through etcd, see `cluster::checkpoints`;
    /// `cc` holds the queues' checkpoints). Fails (so the node does not start) when etcd
    /// cannot be reached.
    pub async fn join(
        cfg: &ClusterConfig,
        info: NodeInfo,
        directory: Arc<Directory>,
        catalog: Catalog,
        trunks: Arc<LiveTrunks>,
        cc: Arc<CcContext>,
    ) -> Result<Membership, String> {
        let client = super::etcd_connect(cfg).await?;
        let checkpoints = Checkpoints::new(
            client.clone(),
            &cfg.etcd.prefix,
            directory.clone(),
            catalog.clone(),
            cc,
            trunks.clone(),
        );
        let mut task = Task {
            client,
            prefix: cfg.etcd.prefix.clone(),
            ttl: cfg.etcd.lease_ttl_secs.max(1) as i64,
            info,
            lease: 0,
            directory: directory.clone(),
            catalog: catalog.clone(),
            owned: HashSet::new(),
            also_written: HashMap::new(),
            vacated: HashMap::new(),
            revision: 0,
            draining_reply: None,
            trunks,
            usage: HashMap::new(),
            held: Vec::new(),
            hold: Duration::from_secs(cfg.channel_hold_secs),
            published: (HashMap::new(), Instant::now()),
            checkpoints: checkpoints.clone(),
        };
        let lost = task.take_lease().await?;
        task.load().await?;
        checkpoints.spawn_writer();
        checkpoints.spawn_follower();
        let state = Arc::new(Mutex::new(NodeState::Up));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(task.run(rx, lost, state.clone()));
        Ok(Membership {
            cmd: tx,
            directory,
            catalog,
            state,
        })
    }

    /// The shared view of the cluster.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// This node's state.
    pub fn state(&self) -> NodeState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drains this node: it gives every singleton away and claims none until
    /// [`Membership::undrain`]. Returns once every singleton runs on another node, or fails
    /// after `limit`.
    pub async fn drain(&self, limit: Duration) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::SetState(NodeState::Draining, tx))
            .map_err(|_| "the membership task has stopped".to_string())?;
        tokio::time::timeout(limit, rx)
            .await
            .map_err(|_| format!("still releasing after {limit:?}"))?
            .map_err(|_| "the membership task has stopped".to_string())
    }

    /// Ends a drain: the node takes its fair share again.
    pub async fn undrain(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::SetState(NodeState::Up, tx))
            .map_err(|_| "the membership task has stopped".to_string())?;
        rx.await
            .map_err(|_| "the membership task has stopped".to_string())
    }

    /// Leaves the cluster (graceful stop): singletons stopped, lease revoked.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }

    /// `GET /cluster`: nodes, their states and what each owns.
    pub fn view(&self) -> ClusterView {
        let owners = self.directory.owners();
        let nodes = self
            .directory
            .nodes()
            .into_iter()
            .map(|info| NodeView {
                owns: owners
                    .iter()
                    .filter(|(_, n)| *n == info.name)
                    .map(|(k, _)| k.clone())
                    .collect(),
                info,
            })
            .collect();
        ClusterView {
            node: self.directory.me().to_string(),
            state: self.state(),
            nodes,
            unowned: self
                .catalog
                .keys()
                .into_iter()
                .filter(|k| self.directory.owner(k).is_none())
                .collect(),
        }
    }
}

struct Task {
    client: Client,
    prefix: String,
    ttl: i64,
    info: NodeInfo,
    lease: i64,
    directory: Arc<Directory>,
    catalog: Catalog,
    /// Keys this node holds in etcd and runs.
    owned: HashSet<String>,
    /// The keys written with each owned singleton (a tenant's queues), so that queues added
    /// or deleted through the API while the tenant is owned here get or lose theirs.
    also_written: HashMap<String, Vec<String>>,
    /// When each singleton's owner was seen to go (for the takeover histogram).
    vacated: HashMap<String, Instant>,
    /// The etcd revision the directory reflects.
    revision: i64,
    draining_reply: Option<oneshot::Sender<()>>,
    trunks: Arc<LiveTrunks>,
    /// Channels in use per trunk, as each live node last published them.
    usage: HashMap<String, HashMap<String, u32>>,
    /// What dead nodes last held, counted against the limits until the deadline.
    held: Vec<(Instant, HashMap<String, u32>)>,
    hold: Duration,
    /// What this node last published, and when.
    published: (HashMap<String, u32>, Instant),
    /// The owned singletons' checkpoints in etcd.
    checkpoints: Checkpoints,
}

fn kind_of(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

impl Task {
    fn node_key(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }

    fn usage_key(&self) -> String {
        format!("{}/usage/{}", self.prefix, self.info.name)
    }

    fn owner_key(&self, key: &str) -> String {
        format!("{}/owners/{key}", self.prefix)
    }

    /// Takes a fresh lease, announces the node under it and keeps it alive; the returned
    /// receiver turns true when the lease is lost.
    async fn take_lease(&mut self) -> Result<watch::Receiver<bool>, String> {
        let lease = self
            .client
            .lease_grant(self.ttl, None)
            .await
            .map_err(|e| format!("etcd lease: {e}"))?;
        self.lease = lease.id();
        let (mut keeper, mut stream) = self
            .client
            .lease_keep_alive(self.lease)
            .await
            .map_err(|e| format!("etcd keep-alive: {e}"))?;
        self.announce().await?;
        let (lost_tx, lost_rx) = watch::channel(false);
        let period = Duration::from_millis((self.ttl as u64 * 1000 / 3).max(300));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let alive = match keeper.keep_alive().await {
                    Ok(()) => matches!(stream.message().await, Ok(Some(r)) if r.ttl() > 0),
                    Err(_) => false,
                };
                if !alive {
                    metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "keep_alive").increment(1);
                    let _ = lost_tx.send(true);
                    return;
                }
                if lost_tx.is_closed() {
                    return; // the task took another lease or stopped
                }
            }
        });
        Ok(lost_rx)
    }

    /// Writes this node's key (its info and state) under its lease.
    async fn announce(&mut self) -> Result<(), String> {
        let value = serde_json::to_string(&self.info).map_err(|e| e.to_string())?;
        self.client
            .put(
                self.node_key(&self.info.name),
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .map_err(|e| format!("etcd put node: {e}"))?;
        self.directory.set_node(self.info.clone());
        Ok(())
    }

    /// Reads every node and owner key (at start, and when the watch had to be recreated).
    async fn load(&mut self) -> Result<(), String> {
        let resp = self
            .client
            .get(
                format!("{}/", self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| format!("etcd get: {e}"))?;
        self.revision = resp.header().map_or(0, |h| h.revision());
        let mut nodes = HashSet::new();
        let mut owners = HashSet::new();
        for kv in resp.kvs() {
            if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
                match self.classify(k) {
                    Some(Key::Node(_)) => {
                        if let Ok(info) = serde_json::from_str::<NodeInfo>(v) {
                            nodes.insert(info.name.clone());
                            self.directory.set_node(info);
                        }
                    }
                    Some(Key::Owner(key)) => {
                        owners.insert(key.to_string());
                        self.directory.set_owner(key, v);
                    }
                    Some(Key::Usage(node)) => {
                        if let Ok(u) = serde_json::from_str(v) {
                            self.usage.insert(node.to_string(), u);
                        }
                    }
                    None => {}
                }
            }
        }
        for n in self.directory.nodes() {
            if !nodes.contains(&n.name) {
                self.directory.remove_node(&n.name);
            }
        }
        for (k, _) in self.directory.owners() {
            if !owners.contains(&k) {
                self.directory.remove_owner(&k);
            }
        }
        self.publish_nodes();
        Ok(())
    }

    fn classify<'k>(&self, key: &'k str) -> Option<Key<'k>> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        if let Some(name) = rest.strip_prefix("nodes/") {
            Some(Key::Node(name))
        } else if let Some(name) = rest.strip_prefix("usage/") {
            Some(Key::Usage(name))
        } else {
            rest.strip_prefix("owners/").map(Key::Owner)
        }
    }

    async fn watch(&mut self) -> Result<etcd_client::WatchStream, String> {
        self.client
            .watch(
                format!("{}/", self.prefix),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_start_revision(self.revision + 1),
                ),
            )
            .await
            .map_err(|e| format!("etcd watch: {e}"))
    }

    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut lost: watch::Receiver<bool>,
        state: Arc<Mutex<NodeState>>,
    ) {
        let mut stream = None;
        let wake = self.catalog.waker();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Whether this round may have changed who should own what: the watch also sees
            // the checkpoints and the shared configuration under the prefix, which do not.
            let mut relevant = true;
            if stream.is_none() {
                match self.watch().await {
                    Ok(s) => stream = Some(s),
                    Err(e) => {
                        metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "watch").increment(1);
                        tracing::warn!(error = %e, "cluster watch failed; retrying");
                    }
                }
            }
            tokio::select! {
                msg = async { stream.as_mut().unwrap().message().await }, if stream.is_some() => {
                    match msg {
                        Ok(Some(resp)) if resp.compact_revision() > 0 || resp.canceled() => {
                            // Too far behind (compacted) or cancelled: read everything again.
                            stream = None;
                            if let Err(e) = self.load().await {
                                tracing::warn!(error = %e, "cluster reload failed");
                            }
                        }
                        Ok(Some(resp)) => relevant = self.apply(&resp),
                        Ok(None) | Err(_) => {
                            metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "watch").increment(1);
                            stream = None;
                            let _ = self.load().await;
                        }
                    }
                }
                _ = tick.tick() => {}
                // Singletons added or removed (configuration changed through the API).
                _ = wake.notified() => {}
                changed = lost.changed() => {
                    if changed.is_err() || *lost.borrow() {
                        lost = self.rejoin().await;
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::SetState(s, reply)) => {
                        *state.lock().unwrap_or_else(|p| p.into_inner()) = s;
                        self.info.state = s;
                        metrics::gauge!(CLUSTER_DRAINING).set(f64::from(u8::from(s == NodeState::Draining)));
                        if let Err(e) = self.announce().await {
                            metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "put").increment(1);
                            tracing::warn!(error = %e, "cluster state change not written");
                        }
                        tracing::info!(state = ?s, "cluster node state");
                        if s == NodeState::Draining {
                            self.draining_reply = Some(reply);
                        } else {
                            let _ = reply.send(());
                        }
                    }
                    Some(Cmd::Leave(reply)) => {
                        self.leave().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.leave().await;
                        return;
                    }
                },
            }
            if relevant {
                self.reconcile().await;
            }
        }
    }

    /// Applies watch events to the directory.
    /// Applies a watch response; whether any of its events is about membership (nodes,
    /// owners, usage).
    fn apply(&mut self, resp: &etcd_client::WatchResponse) -> bool {
        if let Some(h) = resp.header() {
            self.revision = self.revision.max(h.revision());
        }
        let mut nodes_changed = false;
        let mut relevant = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(k) = kv.key_str() else { continue };
            let key = self.classify(k);
            relevant |= key.is_some();
            match (key, ev.event_type()) {
                (Some(Key::Node(name)), EventType::Put) => {
                    if let Ok(info) = serde_json::from_str::<NodeInfo>(kv.value_str().unwrap_or(""))
                    {
                        if self.directory.node(name).is_none() {
                            metrics::counter!(CLUSTER_MEMBERSHIP_CHANGES, "change" => "joined")
                                .increment(1);
                            tracing::info!(node = %name, "cluster node joined");
                        }
                        self.directory.set_node(info);
                        nodes_changed = true;
                    }
                }
                (Some(Key::Node(name)), EventType::Delete) => {
                    if name == self.info.name {
                        continue; // our own lease: the keep-alive task reports it
                    }
                    metrics::counter!(CLUSTER_MEMBERSHIP_CHANGES, "change" => "left").increment(1);
                    tracing::warn!(node = %name, "cluster node left");
                    self.directory.remove_node(name);
                    nodes_changed = true;
                    if let Some(u) = self.usage.remove(name) {
                        self.held.push((Instant::now() + self.hold, u));
                    }
                    let now = Instant::now();
                    for (key, owner) in self.directory.owners() {
                        if owner == name {
                            self.vacated.entry(key).or_insert(now);
                        }
                    }
                }
                (Some(Key::Owner(key)), EventType::Put) => {
                    let v = kv.value_str().unwrap_or("");
                    if v != self.info.name {
                        self.vacated.remove(key);
                    }
                    self.directory.set_owner(key, v);
                }
                (Some(Key::Usage(node)), EventType::Put) => {
                    if let Ok(u) = serde_json::from_str(kv.value_str().unwrap_or("")) {
                        self.usage.insert(node.to_string(), u);
                    }
                }
                (Some(Key::Owner(key)), EventType::Delete) => {
                    self.vacated
                        .entry(key.to_string())
                        .or_insert_with(Instant::now);
                    if self.directory.remove_owner(key).as_deref() == Some(&self.info.name)
                        && self.owned.contains(key)
                    {
                        // Our key went without our asking (lease trouble): stop running it.
                        tracing::warn!(key, "owned singleton's key vanished");
                    }
                }
                _ => {}
            }
        }
        if nodes_changed {
            self.publish_nodes();
        }
        relevant
    }

    fn publish_nodes(&self) {
        let nodes = self.directory.nodes();
        let up = nodes.iter().filter(|n| n.state == NodeState::Up).count();
        metrics::gauge!(CLUSTER_NODES, "state" => "up").set(up as f64);
        metrics::gauge!(CLUSTER_NODES, "state" => "draining").set((nodes.len() - up) as f64);
    }

    /// Claims what this node should own and is free; releases what it owns and should not;
    /// stops what it runs without owning.
    async fn reconcile(&mut self) {
        let up: Vec<String> = self
            .directory
            .nodes()
            .into_iter()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.name)
            .collect();
        let keys: Vec<String> = self.catalog.keys();
        // Removed from the configuration (a trunk deleted through the API): its actor was
        // stopped on removal; the key is given up.
        let removed: Vec<String> = self
            .owned
            .iter()
            .filter(|k| !self.catalog.contains(k))
            .cloned()
            .collect();
        for key in removed {
            self.release(&key).await;
        }
        for key in keys {
            let desired = ownership::owner(&key, &up);
            let mine = desired == Some(self.info.name.as_str());
            let holder = self.directory.owners_raw(&key);
            if self.owned.contains(&key) && holder.as_deref() != Some(self.info.name.as_str()) {
                // The key is gone or someone else's (our lease expired): stop at once.
                self.owned.remove(&key);
                let _ = self.catalog.stop(&key).await;
                self.count_owned();
                continue;
            }
            if mine && holder.is_none() {
                self.claim(&key).await;
            } else if !mine && self.owned.contains(&key) {
                self.release(&key).await;
            } else if self.owned.contains(&key) && !self.catalog.running(&key) {
                // Its supervisor gave up on it (restart intensity): start it again.
                if let Err(e) = self.catalog.start(&key).await {
                    tracing::warn!(key, error = %e, "owned singleton would not start");
                }
            }
        }
        self.sync_also().await;
        self.share_trunks().await;
        // A drain is done when nothing is ours and every singleton has a new owner (or no
        // node is up to take it), so the operator may stop the node right after.
        let taken = up.is_empty()
            || self
                .catalog
                .keys()
                .iter()
                .all(|k| self.directory.owner(k).is_some_and(|o| o != self.info.name));
        if self.draining_reply.is_some() && self.owned.is_empty() && taken {
            if let Some(reply) = self.draining_reply.take() {
                let _ = reply.send(());
            }
        }
    }

    async fn claim(&mut self, key: &str) {
        let okey = self.owner_key(key);
        let put = PutOptions::new().with_lease(self.lease);
        let mut ops = vec![TxnOp::put(
            okey.clone(),
            self.info.name.clone(),
            Some(put.clone()),
        )];
        let also_keys = self.catalog.also(key);
        for also in also_keys.clone() {
            ops.push(TxnOp::put(
                self.owner_key(&also),
                self.info.name.clone(),
                Some(put.clone()),
            ));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(okey, CompareOp::Equal, 0)])
            .and_then(ops);
        match self.client.txn(txn).await {
            Ok(r) if r.succeeded() => {}
            Ok(_) => return, // someone else was faster; the watch will tell us who
            Err(e) => {
                metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "claim").increment(1);
                tracing::warn!(key, error = %e, "claim failed");
                return;
            }
        }
        self.owned.insert(key.to_string());
        self.directory.set_owner(key, &self.info.name);
        for also in &also_keys {
            self.directory.set_owner(also, &self.info.name);
        }
        self.also_written.insert(key.to_string(), also_keys);
        // Before the actor starts, so it resumes from where its previous owner left it.
        self.checkpoints.restore(key).await;
        match self.catalog.start(key).await {
            Ok(()) => {
                let kind = kind_of(key).to_string();
                metrics::counter!(CLUSTER_OWNERSHIP_MOVES, "kind" => kind, "move" => "claimed")
                    .increment(1);
                if let Some(since) = self.vacated.remove(key) {
                    let secs = since.elapsed().as_secs_f64();
                    metrics::histogram!(CLUSTER_TAKEOVER_SECONDS).record(secs);
                    tracing::info!(key, secs, "singleton taken over");
                } else {
                    tracing::info!(key, "singleton claimed");
                }
            }
            Err(e) => tracing::error!(key, error = %e, "claimed singleton would not start"),
        }
        self.count_owned();
    }

    /// Writes the keys owned with each owned singleton that the configuration added since
    /// they were written (a queue added to an owned tenant through the API) and deletes those
    /// it removed (with their checkpoints), while the singleton's key is still ours.
    async fn sync_also(&mut self) {
        let owned: Vec<String> = self.owned.iter().cloned().collect();
        for key in owned {
            let now = self.catalog.also(&key);
            let before = self.also_written.get(&key).cloned().unwrap_or_default();
            if now == before {
                continue;
            }
            let put = PutOptions::new().with_lease(self.lease);
            let mut ops = Vec::new();
            for k in now.iter().filter(|k| !before.contains(k)) {
                ops.push(TxnOp::put(
                    self.owner_key(k),
                    self.info.name.clone(),
                    Some(put.clone()),
                ));
            }
            let gone: Vec<&String> = before.iter().filter(|k| !now.contains(k)).collect();
            for k in &gone {
                ops.push(TxnOp::delete(self.owner_key(k), None));
                // A queue added again later under the same id starts afresh.
                ops.push(TxnOp::delete(
                    format!("{}/checkpoints/{k}", self.prefix),
                    None,
                ));
            }
            let txn = Txn::new()
                .when([Compare::value(
                    self.owner_key(&key),
                    CompareOp::Equal,
                    self.info.name.clone(),
                )])
                .and_then(ops);
            match self.client.txn(txn).await {
                Ok(r) if r.succeeded() => {
                    for k in now.iter().filter(|k| !before.contains(k)) {
                        self.directory.set_owner(k, &self.info.name);
                    }
                    for k in gone {
                        self.directory.remove_owner(k);
                    }
                    self.also_written.insert(key, now);
                }
                // No longer ours: the next round stops it.
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "claim").increment(1);
                    tracing::warn!(key, error = %e, "owned keys not updated; retrying");
                }
            }
        }
    }

    /// Gives a singleton away: stop its actor, then delete the key (only if still ours).
    async fn release(&mut self, key: &str) {
        if let Err(e) = self.catalog.stop(key).await {
            tracing::warn!(key, error = %e, "stopping a released singleton failed");
        }
        // Stopped, still ours: the next owner resumes from exactly here.
        self.checkpoints.write_final(&[key.to_string()]).await;
        let okey = self.owner_key(key);
        let mut ops = vec![TxnOp::delete(okey.clone(), None)];
        let mut also_keys = self.catalog.also(key);
        also_keys.extend(self.also_written.remove(key).unwrap_or_default());
        also_keys.sort();
        also_keys.dedup();
        for also in &also_keys {
            ops.push(TxnOp::delete(self.owner_key(also), None));
        }
        if !self.catalog.contains(key) {
            // Removed from the configuration: a trunk or tenant added again later under the
            // same id starts afresh, not from this one's health or its queues' figures.
            for k in std::iter::once(key).chain(also_keys.iter().map(String::as_str)) {
                ops.push(TxnOp::delete(
                    format!("{}/checkpoints/{k}", self.prefix),
                    None,
                ));
            }
        }
        let txn = Txn::new()
            .when([Compare::value(
                okey,
                CompareOp::Equal,
                self.info.name.clone(),
            )])
            .and_then(ops);
        if let Err(e) = self.client.txn(txn).await {
            metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "release").increment(1);
            tracing::warn!(key, error = %e, "release failed; the lease will free it");
        }
        self.owned.remove(key);
        let kind = kind_of(key).to_string();
        metrics::counter!(CLUSTER_OWNERSHIP_MOVES, "kind" => kind, "move" => "released")
            .increment(1);
        tracing::info!(key, "singleton released");
        self.count_owned();
    }

    /// Publishes this node's trunk usage and sets its part of every trunk's limits.
    async fn share_trunks(&mut self) {
        let limited: Vec<_> = self
            .trunks
            .current()
            .values()
            .filter(|t| t.config.max_channels > 0 || t.config.max_cps > 0)
            .cloned()
            .collect();
        if limited.is_empty() {
            return;
        }
        let mine: HashMap<String, u32> = limited
            .iter()
            .map(|t| (t.id.to_string(), t.channels()))
            .collect();
        // At most every half second (reconciling runs after every watch event, and the other
        // nodes' usage puts are such events), and at least every 2 s. A late figure is safe:
        // a node above its share takes no new channel, so its usage only falls meanwhile.
        let since = self.published.1.elapsed();
        let due = since >= USAGE_MIN_INTERVAL && mine != self.published.0;
        if due || since > USAGE_REFRESH {
            let value = serde_json::to_string(&mine).unwrap_or_default();
            let put = PutOptions::new().with_lease(self.lease);
            match self.client.put(self.usage_key(), value, Some(put)).await {
                Ok(_) => self.published = (mine.clone(), Instant::now()),
                Err(_) => {
                    metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "usage").increment(1);
                }
            }
        }
        self.usage.insert(self.info.name.clone(), mine);
        let now = Instant::now();
        self.held.retain(|(until, _)| *until > now);
        let live_names: Vec<String> = self.directory.nodes().into_iter().map(|n| n.name).collect();
        let live: Vec<&str> = live_names.iter().map(String::as_str).collect();
        for t in limited {
            let id = t.id.as_ref();
            let usage: std::collections::BTreeMap<&str, u32> = live
                .iter()
                .map(|n| {
                    let u = self.usage.get(*n).and_then(|u| u.get(id)).copied();
                    (*n, u.unwrap_or(0))
                })
                .collect();
            let held: u32 = self.held.iter().filter_map(|(_, u)| u.get(id)).sum();
            let me = self.info.name.as_str();
            let ch = channels::cap(t.config.max_channels, me, &live, &usage, held);
            let cps = channels::shares(t.config.max_cps, &live)
                .get(me)
                .copied()
                .unwrap_or(0);
            t.set_caps(ch, cps);
            metrics::gauge!(CLUSTER_TRUNK_CHANNEL_CAP, "trunk" => id.to_string())
                .set(f64::from(ch));
        }
    }

    fn count_owned(&self) {
        for kind in ["tenant", "trunk"] {
            let n = self.owned.iter().filter(|k| kind_of(k) == kind).count();
            metrics::gauge!(CLUSTER_SINGLETONS_OWNED, "kind" => kind).set(n as f64);
        }
    }

    /// The lease expired under us (etcd unreachable for longer than its time to live): the
    /// singletons are no longer ours, so they stop here before anything else; then the node
    /// takes a new lease and announces itself again, retrying until etcd answers.
    async fn rejoin(&mut self) -> watch::Receiver<bool> {
        metrics::counter!(CLUSTER_LEASE_LOST).increment(1);
        tracing::error!("cluster lease lost: stopping owned singletons and rejoining");
        for key in std::mem::take(&mut self.owned) {
            let _ = self.catalog.stop(&key).await;
        }
        self.count_owned();
        loop {
            match self.take_lease().await {
                Ok(lost) => {
                    let _ = self.load().await;
                    return lost;
                }
                Err(e) => {
                    metrics::counter!(CLUSTER_ETCD_ERRORS, "op" => "lease").increment(1);
                    tracing::warn!(error = %e, "rejoin failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn leave(&mut self) {
        let owned: Vec<String> = std::mem::take(&mut self.owned).into_iter().collect();
        for key in &owned {
            let _ = self.catalog.stop(key).await;
        }
        // Before the lease (and with it the owner keys) goes; batched, as a node may own many.
        self.checkpoints.write_final(&owned).await;
        self.count_owned();
        if let Err(e) = self.client.lease_revoke(self.lease).await {
            tracing::warn!(error = %e, "lease revoke failed; it expires by itself");
        }
        tracing::info!("left the cluster");
    }
}

enum Key<'k> {
    Node(&'k str),
    Owner(&'k str),
    Usage(&'k str),
}
