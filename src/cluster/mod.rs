//! Cluster mode (DESIGN.md, "Cluster"): nodes that share the work.
//!
//! - [`config`]: `cluster.toml` (this node's name and addresses, etcd, the inter-node listener,
//!   the shared secret, the shared database).
//! - [`ownership`]: pure placement: which live node should own each singleton (rendezvous
//!   hashing), so every node computes the same answer from the same membership.
//! - [`membership`]: the node's lease in etcd, the watch of nodes and owners, claiming and
//!   releasing singletons (starting and stopping their actors), draining, `GET /cluster`.
//! - [`port`] and [`wire`]: actor messages between nodes over ractor_cluster.
//! - [`channels`]: a trunk's limits split over the nodes so they hold cluster-wide.
//! - [`shared_config`]: routes and numbers changed through any node's API, shared in etcd.
//! - [`checkpoints`]: queue statistics and trunk health carried to a singleton's next owner.
//!
//! etcd decides who is alive and who owns what; ractor_cluster's own failure detection is not
//! relied on. The [`Directory`] is this node's view of both, shared with the message port.

pub mod channels;
pub mod checkpoints;
pub mod config;
pub mod membership;
pub mod ownership;
pub mod port;
pub mod shared_config;
pub mod wire;

pub use config::ClusterConfig;

use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// HTTP/2 keep-alive pings to etcd: etcd answers a client that pings more often than every
/// 5 s (`--grpc-keepalive-min-time`) on an idle connection with GOAWAY ("too many pings"),
/// which ends its watches (seen every ~8 s with a 2 s interval).
const ETCD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// A client of the cluster's etcd (membership and the shared configuration each hold one):
/// 3 s to connect and per request, keep-alive pings as etcd accepts them.
pub(crate) async fn etcd_connect(cfg: &ClusterConfig) -> Result<etcd_client::Client, String> {
    use std::time::Duration;
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(3))
        .with_keep_alive(ETCD_KEEP_ALIVE, Duration::from_secs(5));
    etcd_client::Client::connect(&cfg.etcd.endpoints, Some(opts))
        .await
        .map_err(|e| format!("etcd {:?}: {e}", cfg.etcd.endpoints))
}

/// A node as it announces itself in etcd (`<prefix>/nodes/<name>`, bound to its lease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// SIP address callers and phones use (informational; `GET /cluster`).
    pub sip: String,
    /// HTTP API address.
    pub http: String,
    /// Inter-node (ractor_cluster) listener.
    pub cluster: SocketAddr,
    pub state: NodeState,
    /// When the node joined (Unix ms).
    pub since_ms: u64,
}

/// A live node's state: `up` nodes are given singletons, `draining` ones give theirs away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Draining,
}

/// Singleton keys (declared with the tree, which starts and stops their actors).
pub use crate::supervision::catalog::{queue_key, tenant_key, trunk_key};

/// This node's view of the cluster: live nodes and who owns each singleton, as last seen in
/// etcd. Written by the membership task only; read by anyone (the message port, the API).
#[derive(Debug)]
pub struct Directory {
    me: String,
    nodes: DashMap<String, NodeInfo>,
    owners: DashMap<String, String>,
    changes: watch::Sender<u64>,
}

impl Directory {
    pub fn new(me: &str) -> Arc<Directory> {
        Arc::new(Directory {
            me: me.to_string(),
            nodes: DashMap::new(),
            owners: DashMap::new(),
            changes: watch::channel(0).0,
        })
    }

    /// This node's cluster name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The live node owning a singleton key (see [`tenant_key`], [`queue_key`],
    /// [`trunk_key`]), if any owns it right now (none during a takeover).
    pub fn owner(&self, key: &str) -> Option<String> {
        let owner = self.owners.get(key)?.clone();
        self.nodes.contains_key(&owner).then_some(owner)
    }

    /// Who holds a singleton key in etcd, live or not (membership's reconciliation).
    pub(crate) fn owners_raw(&self, key: &str) -> Option<String> {
        self.owners.get(key).map(|o| o.clone())
    }

    /// A live node.
    pub fn node(&self, name: &str) -> Option<NodeInfo> {
        self.nodes.get(name).map(|n| n.clone())
    }

    /// Live nodes, sorted by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self.nodes.iter().map(|n| n.value().clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every owned singleton key with its owner, sorted by key.
    pub fn owners(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .owners
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort();
        v
    }

    /// A receiver that changes whenever nodes or owners change (its value counts changes).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn set_node(&self, info: NodeInfo) {
        self.nodes.insert(info.name.clone(), info);
        self.bump();
    }

    pub fn remove_node(&self, name: &str) -> Option<NodeInfo> {
        let gone = self.nodes.remove(name).map(|(_, n)| n);
        self.bump();
        gone
    }

    pub fn set_owner(&self, key: &str, node: &str) {
        self.owners.insert(key.to_string(), node.to_string());
        self.bump();
    }

    pub fn remove_owner(&self, key: &str) -> Option<String> {
        let gone = self.owners.remove(key).map(|(_, n)| n);
        self.bump();
        gone
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}
