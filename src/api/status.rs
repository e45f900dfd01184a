//! The node at a glance, what `switchyard ctl status` shows; behind the node's token.
//!
//! | route | answer |
//! |---|---|
//! | `GET /status` | `{"node", "version", "uptime_secs", "calls_active", "calls_per_second", "registrations", "agents": {state: n}, "trunks": {"up", "down", "down_ids"}, "cluster": null or {"state", "nodes": [{"name", "owns"}], "unowned"}, "log_filter"}` |
//!
//! `calls_per_second` averages the calls admitted over the last ten whole seconds; `agents`
//! counts the agents this node runs by state.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{route, ApiState};

/// When this process's API was first built (the node's uptime).
static STARTED: OnceLock<Instant> = OnceLock::new();

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    STARTED.get_or_init(Instant::now);
    route(router, "/status", get(status))
}

#[derive(Serialize)]
struct Status {
    node: Option<String>,
    version: &'static str,
    uptime_secs: u64,
    calls_active: usize,
    calls_per_second: f64,
    registrations: usize,
    agents: BTreeMap<&'static str, usize>,
    trunks: Trunks,
    cluster: Option<Cluster>,
    log_filter: Option<String>,
}

#[derive(Serialize, Default)]
struct Trunks {
    up: usize,
    down: usize,
    down_ids: Vec<String>,
}

#[derive(Serialize)]
struct Cluster {
    state: crate::cluster::NodeState,
    nodes: Vec<ClusterNode>,
    unowned: Vec<String>,
}

#[derive(Serialize)]
struct ClusterNode {
    name: String,
    owns: usize,
}

async fn status(State(state): State<ApiState>) -> Json<impl Serialize> {
    let mut s = Status {
        node: None,
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: STARTED.get().map_or(0, |t| t.elapsed().as_secs()),
        calls_active: 0,
        calls_per_second: 0.0,
        registrations: 0,
        agents: crate::actors::agent::Status::LABELS
            .iter()
            .map(|l| (*l, 0))
            .collect(),
        trunks: Trunks::default(),
        cluster: None,
        log_filter: super::log::current(),
    };
    if let Some(cc) = &state.cc {
        let cc = cc.context();
        s.node = Some(cc.node.clone());
        let calls = &cc.calls;
        s.calls_active = calls.active.load(std::sync::atomic::Ordering::Relaxed);
        s.calls_per_second = calls
            .rate
            .per_second(crate::actors::call::rate::unix_secs());
        s.registrations = cc.location.total();
        for a in cc.agent_checkpoints.iter() {
            *s.agents.entry(a.value().status_label()).or_default() += 1;
        }
        if let Some(trunks) = calls.trunks.get() {
            let mut table: Vec<_> = trunks.current().values().cloned().collect();
            table.sort_by(|a, b| a.id.cmp(&b.id));
            for t in table {
                if t.is_up() {
                    s.trunks.up += 1;
                } else {
                    s.trunks.down += 1;
                    s.trunks.down_ids.push(t.id.to_string());
                }
            }
        }
    }
    if let Some(m) = &state.cluster {
        let view = m.view();
        s.cluster = Some(Cluster {
            state: view.state,
            nodes: view
                .nodes
                .into_iter()
                .map(|n| ClusterNode {
                    name: n.info.name.clone(),
                    owns: n.owns.len(),
                })
                .collect(),
            unowned: view.unowned,
        });
    }
    Json(s)
}
