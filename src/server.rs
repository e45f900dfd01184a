//! A running node. [`Node::start`] is the entry `main` and the integration tests use; what
//! it starts, in which order and under which supervisor is declared in
//! `supervision::tree` ([`tree::start_node`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::actors::call::CallContext;
use crate::actors::queue::CcContext;
use crate::actors::registrar::Location;
use crate::actors::store_writer;
use crate::config::Config;
use crate::supervision::tree::{self, Tree};
use crate::transport::Transports;

/// A running node.
pub struct Node {
    /// This node's name within the process (actor names carry it).
    pub name: String,
    pub transports: Transports,
    pub http_addr: SocketAddr,
    /// SHA-256 fingerprint of the TLS certificate, when a TLS listener runs.
    pub tls_fingerprint: Option<String>,
    pub ctx: Arc<CallContext>,
    /// Registered phones (read by call routing).
    pub location: Arc<Location>,
    /// Queues and agents.
    pub cc: Arc<CcContext>,
    pub tree: Tree,
    /// The edge's trusted peers and trunk gateways (the router's).
    pub trust: Arc<crate::security::trust::Trust>,
    /// Cluster membership (None for a node alone).
    pub membership: Option<Arc<crate::cluster::membership::Membership>>,
    /// Actor messages to and from the other nodes (cluster mode).
    pub port: Option<Arc<crate::cluster::port::Port>>,
}

impl Node {
    /// Starts everything the config describes. Listen sockets may use port 0.
    pub async fn start(config: Config) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
        let s = tree::start_node(config).await?;
        Ok(Node {
            name: s.name,
            transports: s.transports,
            http_addr: s.http_addr,
            tls_fingerprint: s.tls_fingerprint,
            ctx: s.ctx,
            location: s.location,
            cc: s.cc,
            tree: s.tree,
            trust: s.trust,
            membership: s.membership,
            port: s.port,
        })
    }

    /// The first bound address of a protocol (tests use port 0).
    pub fn sip_addr(&self, protocol: crate::transport::Protocol) -> Option<SocketAddr> {
        self.transports
            .local_addrs()
            .into_iter()
            .find(|l| l.protocol == protocol)
            .map(|l| l.addr)
    }

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.ctx.active.load(Ordering::Relaxed)
    }

    /// Stops the node: pending CDRs are committed before the tree stops (the API server and
    /// the SIP listeners with it).
    pub async fn shutdown(self) {
        if let Some(m) = &self.membership {
            // Hand the singletons over now rather than after the lease expires.
            m.leave().await;
        }
        if let Some(p) = &self.port {
            p.stop().await;
        }
        if let Some(store) = self.tree.store() {
            if let Err(e) = store_writer::flush(&store).await {
                tracing::error!(error = %e, "CDR flush at shutdown failed");
            }
        }
        self.tree.root.stop(None);
        if let Some(store) = self.tree.store() {
            let _ = store_writer::shutdown(&store).await;
        }
    }
}
