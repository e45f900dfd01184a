//! The supervision tree, declared in one place.
//!
//! ```text
//! root (one_for_one, 5 restarts / 10 s)
//! ├── store_writer   permanent   the SQLite writer (CDRs)
//! ├── registrar      permanent   REGISTER, digest auth, bindings (the location service is
//! │                              shared memory that survives its restarts)
//! ├── tenants        permanent   one_for_one supervisor, 3 restarts / 10 s
//! │   └── tenant/<id>            rest_for_one supervisor per tenant
//! │       └── tenant actor       permanent (queues, agents, campaigns follow it later)
//! └── calls          permanent   one_for_one supervisor, 100 restarts / 10 s
//!     └── call actors            transient, one per call, started by the router
//! ```
//! The transport receive loops and the HTTP server are tasks owned by the node; they hold
//! no state a restart could restore.

use ractor::{Actor, ActorRef};
use std::path::Path;
use std::time::Duration;

use super::{ChildSpec, Intensity, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::registrar::{RegistrarActor, RegistrarArgs};
use crate::actors::store_writer::{StoreWriterActor, StoreWriterArgs, StoreWriterMsg};
use crate::actors::tenant::{self, TenantActor, TenantArgs};
use crate::config::TenantConfig;

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

/// Starts the tree. `node` makes actor names unique within the process; `tenants` pairs each
/// tenant's config with its number of users.
pub async fn start(
    data_dir: &Path,
    node: &str,
    tenants: &[(TenantConfig, usize)],
    registrar: RegistrarArgs,
) -> Result<Tree, Box<dyn std::error::Error + Send + Sync>> {
    let registrar_name = name("registrar", node);
    let db = data_dir.join("switchyard.db");
    let store_name = name("store_writer", node);
    let calls_name = name("calls", node);
    let calls = SupervisorArgs::new(calls_name.clone(), Strategy::OneForOne)
        .with_intensity(Intensity::new(100, Duration::from_secs(10)));
    let mut tenants_sup = SupervisorArgs::new(name("tenants", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(3, Duration::from_secs(10)));
    for (config, users) in tenants {
        let id = config.id.clone();
        let (config, users) = (config.clone(), *users);
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
                ));
        tenants_sup = tenants_sup.with_child(ChildSpec::supervisor(
            format!("tenant-sup/{id}@{node}"),
            per_tenant,
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
