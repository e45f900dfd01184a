//! The supervision tree, declared in one place.
//!
//! ```text
//! root (one_for_one, 5 restarts / 10 s)
//! ├── store_writer   permanent   the SQLite writer (CDRs)
//! ├── registrar      permanent   REGISTER, digest auth, bindings (the location service is
//! │                              shared memory that survives its restarts)
//! ├── trunks         permanent   one_for_one supervisor, 10 restarts / 10 s
//! │   └── trunk/<id>             one per carrier trunk (channels live in a shared table)
//! ├── tenants        permanent   one_for_one supervisor, 3 restarts / 10 s
//! │   └── tenant/<id>            rest_for_one supervisor per tenant
//! │       ├── tenant actor       permanent
//! │       ├── queues             one_for_one, 10 restarts / 10 s: queue/<tenant>/<id>
//! │       └── agents             one_for_one, 50 restarts / 10 s: agent/<tenant>/<id>
//! │           (a queue crash restarts that queue only; the tenant actor's restarts its
//! │           queues and agents, which resume from their checkpoints)
//! └── calls          permanent   one_for_one supervisor, 100 restarts / 10 s
//!     └── call actors            transient, one per call, started by the router
//! ```
//! The transport receive loops and the HTTP server are tasks owned by the node; they hold
//! no state a restart could restore.

use ractor::{Actor, ActorRef};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{ChildSpec, Intensity, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::agent::{AgentActor, AgentArgs};
use crate::actors::alarms::AlarmSink;
use crate::actors::queue::{CcContext, QueueActor, QueueArgs, QueueSpec};
use crate::actors::registrar::{RegistrarActor, RegistrarArgs};
use crate::actors::store_writer::{StoreWriterActor, StoreWriterArgs, StoreWriterMsg};
use crate::actors::tenant::{self, TenantActor, TenantArgs};
use crate::actors::trunk::{TrunkActor, TrunkArgs, TrunkShared};
use crate::config::{AgentConfig, TenantConfig};

/// A tenant to start: its config, user count, queues and agents.
pub struct TenantSpec {
    pub config: TenantConfig,
    pub users: usize,
    pub queues: Vec<QueueSpec>,
    pub agents: Vec<AgentConfig>,
}

/// The long-lived actors of a node: the root by reference, the others by their stable
/// names (a restarted actor is found again under the same name).
pub struct Tree {
    pub root: ActorRef<SupervisorMsg>,
    pub registrar_name: String,
    pub calls_name: String,
    pub store_name: String,
}

impl Tree {
    pub fn calls(&self) -> Option<ActorRef<SupervisorMsg>> {
        ractor::registry::where_is(self.calls_name.clone()).map(Into::into)
    }

    pub fn store(&self) -> Option<ActorRef<StoreWriterMsg>> {
        ractor::registry::where_is(self.store_name.clone()).map(Into::into)
    }
}

/// Registered names, unique per node (a process may run several nodes in tests, so the
/// names carry a per-node suffix).
fn name(base: &str, node: &str) -> String {
    format!("{base}@{node}")
}

/// The calls supervisor's registered name on a node (call actors are started under it).
pub fn calls_name(node: &str) -> String {
    name("calls", node)
}

/// The store writer's registered name on a node.
pub fn store_name(node: &str) -> String {
    name("store_writer", node)
}

/// Starts the tree. `node` makes actor names unique within the process; `tenants` pairs each
/// tenant's config with its number of users.
pub async fn start(
    data_dir: &Path,
    node: &str,
    tenants: &[TenantSpec],
    registrar: RegistrarArgs,
    cc: Arc<CcContext>,
    trunks: Vec<Arc<TrunkShared>>,
    alarms: AlarmSink,
) -> Result<Tree, Box<dyn std::error::Error + Send + Sync>> {
    let registrar_name = name("registrar", node);
    let db = data_dir.join("switchyard.db");
    let store_name = store_name(node);
    let calls_name = calls_name(node);
    let calls = SupervisorArgs::new(calls_name.clone(), Strategy::OneForOne)
        .with_intensity(Intensity::new(100, Duration::from_secs(10)));
    let mut tenants_sup = SupervisorArgs::new(name("tenants", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(3, Duration::from_secs(10)));
    for spec in tenants {
        let id = spec.config.id.clone();
        let (config, users) = (spec.config.clone(), spec.users);
        let tenant_id: Arc<str> = Arc::from(id.as_str());
        let mut queues = SupervisorArgs::new(format!("queues/{id}@{node}"), Strategy::OneForOne)
            .with_intensity(Intensity::new(10, Duration::from_secs(10)));
        for q in &spec.queues {
            let (cc, tenant, q) = (cc.clone(), tenant_id.clone(), q.clone());
            queues = queues.with_child(ChildSpec::named_actor(
                crate::actors::queue::actor_name(&id, &q.config.id, node),
                "queue",
                Restart::Permanent,
                QueueActor,
                move || QueueArgs {
                    cc: cc.clone(),
                    tenant: tenant.clone(),
                    config: q.config.clone(),
                    members: q.members.clone(),
                    overflow_wait: q.overflow_wait.clone(),
                    overflow_full: q.overflow_full.clone(),
                },
            ));
        }
        let mut agents = SupervisorArgs::new(format!("agents/{id}@{node}"), Strategy::OneForOne)
            .with_intensity(Intensity::new(50, Duration::from_secs(10)));
        for a in &spec.agents {
            cc.agents_by_user.insert(
                (tenant_id.clone(), a.user.clone()),
                Arc::from(a.id.as_str()),
            );
            let (cc, tenant, a) = (cc.clone(), tenant_id.clone(), a.clone());
            agents = agents.with_child(ChildSpec::named_actor(
                crate::actors::agent::actor_name(&id, &a.id, node),
                "agent",
                Restart::Permanent,
                AgentActor,
                move || AgentArgs {
                    cc: cc.clone(),
                    tenant: tenant.clone(),
                    config: a.clone(),
                },
            ));
        }
        let per_tenant =
            SupervisorArgs::new(format!("tenant-sup/{id}@{node}"), Strategy::RestForOne)
                .with_intensity(Intensity::new(3, Duration::from_secs(10)))
                .with_child(ChildSpec::named_actor(
                    tenant::actor_name(&id, node),
                    "tenant",
                    Restart::Permanent,
                    TenantActor,
                    move || TenantArgs {
                        config: config.clone(),
                        users,
                    },
                ))
                .with_child(ChildSpec::supervisor(format!("queues/{id}@{node}"), queues))
                .with_child(ChildSpec::supervisor(format!("agents/{id}@{node}"), agents));
        tenants_sup = tenants_sup.with_child(ChildSpec::supervisor(
            format!("tenant-sup/{id}@{node}"),
            per_tenant,
        ));
    }
    let checkpoints = Arc::new(dashmap::DashMap::new());
    let mut trunks_sup = SupervisorArgs::new(name("trunks", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(10, Duration::from_secs(10)));
    for t in trunks {
        let (ctx, checkpoints, alarms) = (cc.calls.clone(), checkpoints.clone(), alarms.clone());
        trunks_sup = trunks_sup.with_child(ChildSpec::named_actor(
            crate::actors::trunk::actor_name(&t.id, node),
            "trunk",
            Restart::Permanent,
            TrunkActor,
            move || TrunkArgs {
                shared: t.clone(),
                ctx: ctx.clone(),
                checkpoints: checkpoints.clone(),
                alarms: alarms.clone(),
            },
        ));
    }
    let root_args = SupervisorArgs::new(name("root", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(5, Duration::from_secs(10)))
        .with_child(ChildSpec::named_actor(
            store_name.clone(),
            "store_writer",
            Restart::Permanent,
            StoreWriterActor,
            move || StoreWriterArgs::new(db.clone()),
        ))
        .with_child(ChildSpec::named_actor(
            registrar_name.clone(),
            "registrar",
            Restart::Permanent,
            RegistrarActor,
            move || registrar.clone(),
        ))
        .with_child(ChildSpec::supervisor(name("trunks", node), trunks_sup))
        .with_child(ChildSpec::supervisor(name("tenants", node), tenants_sup))
        .with_child(
            ChildSpec::named_actor(
                calls_name.clone(),
                "supervisor",
                Restart::Permanent,
                Supervisor,
                move || calls.clone(),
            )
            .with_shutdown(Duration::from_secs(10)),
        );
    let (root, _) = Actor::spawn(Some(name("root", node)), Supervisor, root_args).await?;
    let tree = Tree {
        root,
        registrar_name,
        calls_name,
        store_name,
    };
    tree.calls().ok_or("calls supervisor not registered")?;
    tree.store().ok_or("store writer not registered")?;
    Ok(tree)
}
