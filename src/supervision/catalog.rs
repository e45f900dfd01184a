//! The node's singletons and how their actors start: tenants (each with its queues and
//! agents) and trunks, kept in a [`Catalog`] so that the API can add, change and remove them
//! while the node runs and cluster mode can start and stop them as this node claims and
//! releases them. The tree they hang in is declared in `tree.rs`.

use ractor::ActorRef;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{ChildSpec, Intensity, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::agent::{AgentActor, AgentArgs};
use crate::actors::alarms::AlarmSink;
use crate::actors::queue::{CcContext, QueueActor, QueueArgs, QueueSpec};
use crate::actors::tenant::{self, TenantActor, TenantArgs};
use crate::actors::trunk::{LiveTrunks, TrunkActor, TrunkArgs, TrunkShared};
use crate::config::{AgentConfig, TenantConfig};

/// A tenant to start: its config, user count, queues and agents.
pub struct TenantSpec {
    pub config: TenantConfig,
    pub users: usize,
    pub queues: Vec<QueueSpec>,
    pub agents: Vec<AgentConfig>,
}

/// One singleton: its key, the keys owned with it (a tenant's queues), the supervisor it
/// runs under and how to start it.
#[derive(Clone)]
struct Entry {
    also: Vec<String>,
    /// A tenant's agent ids, sorted (the API's directory lists them); empty for trunks.
    agents: Vec<String>,
    supervisor: String,
    spec: ChildSpec,
}

/// A queue's spec as its actor's every start reads it, and where the actor runs: a
/// configuration change replaces the spec and restarts the actor, which resumes its waiting
/// callers from its checkpoint.
#[derive(Clone)]
struct QueueSlot {
    spec: Arc<RwLock<QueueSpec>>,
    /// The tenant's queues supervisor (registered by name).
    supervisor: String,
    child: ChildSpec,
}

/// What a queue actor's spec needs, for queues added while the node runs.
struct QueueSpawner {
    node: String,
    cc: Arc<CcContext>,
}

impl QueueSpawner {
    /// The slot of `tenant`'s queue `spec`: its actor's every start reads the spec then.
    fn slot(&self, tenant: &str, spec: QueueSpec) -> QueueSlot {
        queue_slot(&self.cc, tenant, &self.node, spec)
    }
}

/// The slot of `tenant`'s queue `spec` on `node`.
fn queue_slot(cc: &Arc<CcContext>, tenant: &str, node: &str, spec: QueueSpec) -> QueueSlot {
    let id = spec.config.id.clone();
    let current = Arc::new(RwLock::new(spec));
    let (cc, tenant_id, read) = (cc.clone(), Arc::<str>::from(tenant), current.clone());
    let child = ChildSpec::named_actor(
        crate::actors::queue::actor_name(tenant, &id, node),
        "queue",
        Restart::Permanent,
        QueueActor,
        move || {
            let q = read.read().unwrap_or_else(|e| e.into_inner()).clone();
            QueueArgs {
                cc: cc.clone(),
                tenant: tenant_id.clone(),
                config: q.config,
                members: q.members,
                overflow_wait: q.overflow_wait,
                overflow_full: q.overflow_full,
            }
        },
    );
    QueueSlot {
        spec: current,
        supervisor: queues_name(tenant, node),
        child,
    }
}

/// The registered name of `tenant`'s queues supervisor on `node`.
fn queues_name(tenant: &str, node: &str) -> String {
    format!("queues/{tenant}@{node}")
}

/// The queues by [`queue_key`] (sorted, so a tenant's are one range).
type QueueSlots = Arc<RwLock<BTreeMap<String, QueueSlot>>>;

/// `tenant`'s queue slots, in key order.
fn slots_of(slots: &BTreeMap<String, QueueSlot>, tenant: &str) -> Vec<(String, QueueSlot)> {
    let start = queue_key(tenant, "");
    slots
        .range(start.clone()..)
        .take_while(|(k, _)| k.starts_with(&start))
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect()
}

/// What a trunk actor's spec needs, for trunks added while the node runs.
struct TrunkSpawner {
    node: String,
    ctx: Arc<crate::actors::call::CallContext>,
    checkpoints: Arc<dashmap::DashMap<Arc<str>, crate::actors::trunk::TrunkCheckpoint>>,
    alarms: AlarmSink,
    live: Arc<LiveTrunks>,
}

impl TrunkSpawner {
    /// The spec of trunk `id`'s actor: every start takes the trunk in force then (a changed
    /// trunk's actor restarts with its new configuration), or `last` once it is gone.
    fn spec(&self, id: &str, last: Arc<TrunkShared>) -> ChildSpec {
        let (ctx, checkpoints, alarms) = (
            self.ctx.clone(),
            self.checkpoints.clone(),
            self.alarms.clone(),
        );
        let (live, id) = (self.live.clone(), id.to_string());
        ChildSpec::named_actor(
            crate::actors::trunk::actor_name(&id, &self.node),
            "trunk",
            Restart::Permanent,
            TrunkActor,
            move || TrunkArgs {
                shared: live.get(&id).unwrap_or_else(|| last.clone()),
                ctx: ctx.clone(),
                checkpoints: checkpoints.clone(),
                alarms: alarms.clone(),
            },
        )
    }
}

/// The singletons by cluster key (`tenant/<id>`, `trunk/<id>`), and the tenants' queues by
/// [`queue_key`]. Trunks may be added and removed while the node runs (configuration
/// changes through the API). Cheap to clone; cluster mode starts and stops the singletons
/// as this node claims and releases them, and is woken ([`Catalog::waker`]) when the set of
/// singletons changes.
#[derive(Clone, Default)]
pub struct Catalog {
    singletons: Arc<RwLock<BTreeMap<String, Entry>>>,
    /// Removed singletons whose actor may still run somewhere here, so that stopping them
    /// (alone: at once; in a cluster: also by the membership's release) still finds them.
    removed: Arc<RwLock<BTreeMap<String, Entry>>>,
    /// Every queue of the tenants (file and API), which the tenants' queues supervisors
    /// start from at each of their starts (a tenant restart or takeover included).
    queues: QueueSlots,
    queue_spawner: Option<Arc<QueueSpawner>>,
    trunks: Option<Arc<TrunkSpawner>>,
    changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

impl Catalog {
    /// Every singleton key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Whether `key` is a singleton of the configuration in force.
    pub fn contains(&self, key: &str) -> bool {
        self.read().contains_key(key)
    }

    /// The keys owned together with `key` (a tenant's queues: `queue/<tenant>/<id>`).
    pub fn also(&self, key: &str) -> Vec<String> {
        self.read()
            .get(key)
            .map_or_else(Vec::new, |e| e.also.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.singletons.read().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, key: &str) -> Option<Entry> {
        self.read().get(key).cloned()
    }

    /// Notified when singletons are added or removed (the cluster membership reconciles).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Whether a singleton's actor (its supervisor, for a tenant) runs on this node.
    pub fn running(&self, key: &str) -> bool {
        self.entry(key)
            .is_some_and(|e| ractor::registry::where_is(e.spec.id.clone()).is_some())
    }

    /// Starts a singleton under its supervisor (on claiming it). Its actors resume from the
    /// checkpoints this node holds, if any; idempotent.
    pub async fn start(&self, key: &str) -> Result<(), String> {
        let e = self
            .entry(key)
            .ok_or_else(|| format!("unknown singleton {key}"))?;
        if ractor::registry::where_is(e.spec.id.clone()).is_some() {
            return Ok(());
        }
        let sup: ActorRef<SupervisorMsg> = ractor::registry::where_is(e.supervisor.clone())
            .ok_or_else(|| format!("supervisor {} not running", e.supervisor))?
            .into();
        super::start_child_sync(&sup, e.spec.clone())
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    /// Adds trunk `id` (already in the node's [`LiveTrunks`]) as a singleton, or keeps the
    /// one there; it starts with [`Catalog::start`] (alone at once, in a cluster on claim).
    /// False if the node cannot run trunks added later (a tree without them).
    pub fn add_trunk(&self, id: &str) -> bool {
        let Some(spawner) = &self.trunks else {
            return false;
        };
        let Some(last) = spawner.live.get(id) else {
            return false;
        };
        let key = trunk_key(id);
        {
            let mut map = self.singletons.write().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(&key) {
                return true;
            }
            map.insert(
                key.clone(),
                Entry {
                    also: Vec::new(),
                    agents: Vec::new(),
                    supervisor: name("trunks", &spawner.node),
                    spec: spawner.spec(id, last),
                },
            );
        }
        self.configured(&key);
        true
    }

    /// `key` is in the configuration (again): no longer removed, and the reconciler is told.
    fn configured(&self, key: &str) {
        self.removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        self.changed.notify_one();
    }

    /// Removes a singleton from the configuration; its actor, if it runs here, is stopped
    /// with [`Catalog::stop`] (which still finds it), and in a cluster the membership then
    /// releases its owner key. Whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        let gone = self
            .singletons
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let Some(e) = gone else {
            return false;
        };
        self.removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), e);
        self.changed.notify_one();
        true
    }

    /// Restarts a singleton's actor if it runs on this node, so that it takes its current
    /// configuration (a changed trunk); whether it ran.
    pub async fn restart(&self, key: &str) -> Result<bool, String> {
        let e = self
            .entry(key)
            .ok_or_else(|| format!("unknown singleton {key}"))?;
        restart_child(&e.supervisor, &e.spec).await
    }

    /// Every tenant id in force (file and API), sorted.
    pub fn tenants(&self) -> Vec<String> {
        let prefix = tenant_key("");
        self.read()
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// `tenant`'s agent ids, sorted; None if there is no such tenant.
    pub fn tenant_agents(&self, tenant: &str) -> Option<Vec<String>> {
        self.read()
            .get(&tenant_key(tenant))
            .map(|e| e.agents.clone())
    }

    /// Adds a tenant (put through the API) as a singleton with its queues and agents; it
    /// starts with [`Catalog::start`] (alone at once, in a cluster on claim). Keeps the one
    /// there if the tenant exists. False if the node cannot run tenants added later.
    pub fn add_tenant(&self, spec: &TenantSpec) -> bool {
        let Some(spawner) = &self.queue_spawner else {
            return false;
        };
        let key = tenant_key(&spec.config.id);
        if self.contains(&key) {
            return true;
        }
        let entry = tenant_entry(spec, &spawner.node, &spawner.cc, &self.queues);
        self.singletons
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), entry);
        self.configured(&key);
        true
    }

    /// Removes a tenant from the configuration: its singleton (see [`Catalog::remove`]; its
    /// actors stop with [`Catalog::stop_tenant`]), its queue slots and its agents' users.
    /// Returns its queue ids, or None if there was no such tenant.
    pub fn remove_tenant(&self, tenant: &str) -> Option<Vec<String>> {
        let queues = self.queues_of(tenant);
        if !self.remove(&tenant_key(tenant)) {
            return None;
        }
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !k.starts_with(&queue_key(tenant, "")));
        if let Some(spawner) = &self.queue_spawner {
            spawner.cc.agents_by_user.retain(|(t, _), _| &**t != tenant);
        }
        Some(queues)
    }

    /// Stops a removed tenant's supervisor (its queues and agents) if it runs here, and
    /// forgets its queues' in-memory checkpoints, so a tenant added again under the same id
    /// starts from nothing.
    pub async fn stop_tenant(&self, tenant: &str, queues: &[String]) -> Result<(), String> {
        self.stop(&tenant_key(tenant)).await?;
        if let Some(spawner) = &self.queue_spawner {
            for q in queues {
                let id = crate::actors::queue::actor_name(tenant, q, &spawner.node);
                spawner.cc.queue_checkpoints.remove(&id);
            }
        }
        Ok(())
    }

    fn slot(&self, key: &str) -> Option<QueueSlot> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Puts `spec` in force for its queue of `tenant`: the queue actor's next start uses it
    /// (see [`Catalog::restart_queue`]). False if the node has no such queue.
    pub fn set_queue(&self, tenant: &str, spec: QueueSpec) -> bool {
        let Some(slot) = self.slot(&queue_key(tenant, &spec.config.id)) else {
            return false;
        };
        *slot.spec.write().unwrap_or_else(|e| e.into_inner()) = spec;
        true
    }

    /// Whether `tenant` has queue `queue` in the configuration in force.
    pub fn has_queue(&self, tenant: &str, queue: &str) -> bool {
        self.slot(&queue_key(tenant, queue)).is_some()
    }

    /// `tenant`'s queue ids in force, sorted.
    pub fn queues_of(&self, tenant: &str) -> Vec<String> {
        let slots = self.queues.read().unwrap_or_else(|e| e.into_inner());
        let prefix = queue_key(tenant, "");
        slots_of(&slots, tenant)
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect()
    }

    /// Adds a queue to `tenant` (a queue put through the API), or gives an existing one
    /// `spec`: its slot is added to the tenant's queues supervisor (whose every start, a
    /// tenant restart or takeover included, starts it) and its key to the keys owned with
    /// the tenant. Its actor starts with [`Catalog::start_queue`]. False if the node has no
    /// such tenant (or cannot run queues added later).
    pub fn add_queue(&self, tenant: &str, spec: QueueSpec) -> bool {
        let (Some(spawner), tkey) = (&self.queue_spawner, tenant_key(tenant)) else {
            return false;
        };
        let key = queue_key(tenant, &spec.config.id);
        let mut map = self.singletons.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(&tkey) else {
            return false;
        };
        let mut slots = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(&key) {
            *slot.spec.write().unwrap_or_else(|e| e.into_inner()) = spec;
            return true;
        }
        slots.insert(key.clone(), spawner.slot(tenant, spec));
        entry.also.push(key);
        entry.also.sort();
        drop((slots, map));
        self.changed.notify_one();
        true
    }

    /// Removes `tenant`'s queue from the configuration (its slot and its key owned with the
    /// tenant); its actor, if it runs here, is stopped with [`Catalog::stop_queue`]. Whether
    /// it was there.
    pub fn remove_queue(&self, tenant: &str, queue: &str) -> bool {
        let key = queue_key(tenant, queue);
        let mut map = self.singletons.write().unwrap_or_else(|e| e.into_inner());
        let gone = self
            .queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .is_some();
        if let Some(entry) = map.get_mut(&tenant_key(tenant)) {
            entry.also.retain(|k| *k != key);
        }
        drop(map);
        if gone {
            self.changed.notify_one();
        }
        gone
    }

    /// Starts `tenant`'s queue under the tenant's queues supervisor if the tenant runs on
    /// this node and the queue does not run yet; whether it started it.
    pub async fn start_queue(&self, tenant: &str, queue: &str) -> Result<bool, String> {
        let key = queue_key(tenant, queue);
        let slot = self
            .slot(&key)
            .ok_or_else(|| format!("unknown queue {key}"))?;
        if ractor::registry::where_is(slot.child.id.clone()).is_some() {
            return Ok(false); // the tenant's start took it already
        }
        let Some(sup) = ractor::registry::where_is(slot.supervisor.clone()) else {
            return Ok(false); // the tenant runs elsewhere (or not yet)
        };
        super::start_child_sync(&sup.into(), slot.child.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Stops `tenant`'s queue actor if it runs on this node (a queue removed); Ok if not.
    /// Its in-memory checkpoint goes too, so a queue added again under the same id starts
    /// from nothing, not from the deleted one's figures.
    pub async fn stop_queue(&self, tenant: &str, queue: &str) -> Result<(), String> {
        let Some(spawner) = &self.queue_spawner else {
            return Ok(());
        };
        let id = crate::actors::queue::actor_name(tenant, queue, &spawner.node);
        if let Some(sup) = ractor::registry::where_is(queues_name(tenant, &spawner.node)) {
            super::terminate_child(&sup.into(), &id)
                .await
                .map_err(|e| e.to_string())?;
        }
        spawner.cc.queue_checkpoints.remove(&id);
        Ok(())
    }

    /// How many callers wait in `tenant`'s queue, if its actor runs on this node.
    pub async fn queue_waiting(&self, tenant: &str, queue: &str) -> Option<usize> {
        let node = &self.queue_spawner.as_ref()?.node;
        let actor = crate::actors::queue::lookup(tenant, queue, node)?;
        crate::actors::queue::stats(&actor)
            .await
            .ok()
            .map(|s| s.waiting)
    }

    /// Restarts a queue's actor if it runs on this node, so that it takes the spec last
    /// set; it resumes its waiting callers and offers from its checkpoint. Whether it ran.
    pub async fn restart_queue(&self, tenant: &str, queue: &str) -> Result<bool, String> {
        let key = queue_key(tenant, queue);
        let slot = self
            .slot(&key)
            .ok_or_else(|| format!("unknown queue {key}"))?;
        // Not running here: another node's tenant, or not claimed yet.
        restart_child(&slot.supervisor, &slot.child).await
    }

    /// Stops a singleton (before giving it to another node, or once removed); idempotent,
    /// and Ok for a key the node never had.
    pub async fn stop(&self, key: &str) -> Result<(), String> {
        let e = self.entry(key).or_else(|| {
            self.removed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .cloned()
        });
        let Some(e) = e else {
            return Ok(());
        };
        let Some(sup) = ractor::registry::where_is(e.supervisor.clone()) else {
            return Ok(()); // the node is stopping
        };
        super::terminate_child(&sup.into(), &e.spec.id)
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

/// The singleton of tenant `spec` on `node`: its rest_for_one supervisor (tenant actor,
/// queues, agents), its queues' slots added to `queue_slots` and its agents to the
/// contact centre's user map. Used at start and for tenants added through the API.
fn tenant_entry(
    spec: &TenantSpec,
    node: &str,
    cc: &Arc<CcContext>,
    queue_slots: &QueueSlots,
) -> Entry {
    let id = spec.config.id.clone();
    let (config, users) = (spec.config.clone(), spec.users);
    let tenant_id: Arc<str> = Arc::from(id.as_str());
    let queues_name = queues_name(&id, node);
    {
        let mut slots = queue_slots.write().unwrap_or_else(|e| e.into_inner());
        for q in &spec.queues {
            let key = queue_key(&id, &q.config.id);
            slots.insert(key, queue_slot(cc, &id, node, q.clone()));
        }
    }
    // Built at each start from the queues in force, so that a tenant restart or a
    // takeover starts the queues added through the API too (and not removed ones).
    let (slots, sup_name, tenant_name) = (queue_slots.clone(), queues_name.clone(), id.clone());
    let queues = move || {
        let slots = slots.read().unwrap_or_else(|e| e.into_inner());
        slots_of(&slots, &tenant_name).into_iter().fold(
            SupervisorArgs::new(sup_name.clone(), Strategy::OneForOne)
                .with_intensity(Intensity::new(10, Duration::from_secs(10))),
            |args, (_, slot)| args.with_child(slot.child),
        )
    };
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
    let spec_queues: Vec<&str> = spec.queues.iter().map(|q| q.config.id.as_str()).collect();
    // Named: a queue whose configuration changes is restarted under it.
    let queues_child = ChildSpec::named_actor(
        queues_name,
        "supervisor",
        Restart::Permanent,
        Supervisor,
        queues,
    )
    .with_shutdown(Duration::from_secs(30));
    let per_tenant = SupervisorArgs::new(format!("tenant-sup/{id}@{node}"), Strategy::RestForOne)
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
        .with_child(queues_child)
        .with_child(ChildSpec::supervisor(format!("agents/{id}@{node}"), agents));
    let child = ChildSpec::named_supervisor(format!("tenant-sup/{id}@{node}"), per_tenant);
    let mut agent_ids: Vec<String> = spec.agents.iter().map(|a| a.id.clone()).collect();
    agent_ids.sort_unstable();
    Entry {
        also: spec_queues.iter().map(|q| queue_key(&id, q)).collect(),
        agents: agent_ids,
        supervisor: name("tenants", node),
        spec: child,
    }
}

/// Which singletons the tree starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Singletons {
    /// All of them (a node alone).
    All,
    /// None: cluster mode starts each one when this node claims it in etcd.
    OnClaim,
}

/// Registered names, unique per node (a process may run several nodes in tests, so the
/// names carry a per-node suffix).
pub(super) fn name(base: &str, node: &str) -> String {
    format!("{base}@{node}")
}

/// Stops `spec`'s actor under its supervisor `supervisor` and starts it again from `spec`, if
/// it runs on this node; whether it ran.
async fn restart_child(supervisor: &str, spec: &ChildSpec) -> Result<bool, String> {
    if ractor::registry::where_is(spec.id.clone()).is_none() {
        return Ok(false);
    }
    let Some(sup) = ractor::registry::where_is(supervisor.to_string()) else {
        return Ok(false);
    };
    let sup: ActorRef<SupervisorMsg> = sup.into();
    super::terminate_child(&sup, &spec.id)
        .await
        .map_err(|e| e.to_string())?;
    super::start_child_sync(&sup, spec.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// A tenant's singleton key (cluster ownership in etcd: `owners/tenant/<id>`); its queues
/// and agents run where the tenant runs.
pub fn tenant_key(tenant: &str) -> String {
    format!("tenant/{tenant}")
}

/// A queue's key (owned together with its tenant's).
pub fn queue_key(tenant: &str, queue: &str) -> String {
    format!("queue/{tenant}/{queue}")
}

/// A trunk's singleton key.
pub fn trunk_key(trunk: &str) -> String {
    format!("trunk/{trunk}")
}

/// The calls supervisor's registered name on a node (call actors are started under it).
pub fn calls_name(node: &str) -> String {
    name("calls", node)
}

/// The store writer's registered name on a node.
pub fn store_name(node: &str) -> String {
    name("store_writer", node)
}

/// A node's singletons: the catalog, and the `tenants` and `trunks` supervisors' arguments
/// (with every singleton as a child for a node alone; none in a cluster, where each starts
/// when this node claims it).
pub(super) struct Built {
    pub catalog: Catalog,
    pub tenants: SupervisorArgs,
    pub trunks: SupervisorArgs,
}

/// The singletons of `node`: `tenants` with their queues and agents, the trunks of
/// `trunks` (a trunk actor takes its trunk from there at every start).
pub(super) fn build(
    node: &str,
    tenants: &[TenantSpec],
    cc: Arc<CcContext>,
    trunks: Arc<LiveTrunks>,
    alarms: AlarmSink,
    placement: Singletons,
) -> Built {
    let mut singletons = BTreeMap::new();
    let queue_slots: QueueSlots = Arc::default();
    let mut tenants_sup = SupervisorArgs::new(name("tenants", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(3, Duration::from_secs(10)));
    for spec in tenants {
        let entry = tenant_entry(spec, node, &cc, &queue_slots);
        if placement == Singletons::All {
            tenants_sup = tenants_sup.with_child(entry.spec.clone());
        }
        singletons.insert(tenant_key(&spec.config.id), entry);
    }
    let spawner = Arc::new(TrunkSpawner {
        node: node.to_string(),
        ctx: cc.calls.clone(),
        checkpoints: Arc::new(dashmap::DashMap::new()),
        alarms,
        live: trunks.clone(),
    });
    let mut trunks_sup = SupervisorArgs::new(name("trunks", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(10, Duration::from_secs(10)));
    let mut table: Vec<Arc<TrunkShared>> = trunks.current().values().cloned().collect();
    table.sort_by(|a, b| a.id.cmp(&b.id));
    for t in table {
        let spec = spawner.spec(&t.id, t.clone());
        singletons.insert(
            trunk_key(&t.id),
            Entry {
                also: Vec::new(),
                agents: Vec::new(),
                supervisor: name("trunks", node),
                spec: spec.clone(),
            },
        );
        if placement == Singletons::All {
            trunks_sup = trunks_sup.with_child(spec);
        }
    }
    Built {
        catalog: Catalog {
            singletons: Arc::new(RwLock::new(singletons)),
            removed: Arc::default(),
            queues: queue_slots,
            queue_spawner: Some(Arc::new(QueueSpawner {
                node: node.to_string(),
                cc,
            })),
            trunks: Some(spawner),
            changed: Arc::default(),
        },
        tenants: tenants_sup,
        trunks: trunks_sup,
    }
}
