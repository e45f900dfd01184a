//! Everything a node runs, declared in one place: the start order ([`start_node`]) and the
//! supervision tree.
//!
//! # Start order
//! ```text
//!  1. process         rustls crypto provider, Prometheus recorder, data directory
//!  2. api keys        the API token (config, file or generated) and HTTPS certificate:
//!                     a bad one stops the node before anything listens
//!  3. edge            the trunk table (channels and health shared by calls and trunk
//!                     actors), the trusted peers (`[security] trusted` and the trunks'
//!                     gateways), the flood and scanner guard
//!  4. sip sockets     the SIP sockets (`sip.listen`, TLS certificate loaded or made) with
//!                     the guard (bans, scanners, connections per source; its sweeper
//!                     task): bound, nothing received yet
//!  5. calls           the call context: timers, the transports, the call settings
//!  6. media           relay threads, RTP port pool, recording keys (recordings the last
//!                     run left unfinished settled first), prompts and music
//!  7. contact centre  queues' and agents' shared context over the location service
//!  8. actors          the root supervisor with store_writer … calls (below)
//!  9. live config     routes, numbers, users, queues and trunks changed through the API
//!                     put in force over the file's (SQLite, or etcd in a cluster)
//! 10. router          admission, routes, numbers, the registrar link, who is trusted: the
//!                     SIP handler
//! 11. http socket     bound (a cluster node announces its address); served at step 13,
//!     and cluster     the inter-node port, then membership in etcd (cluster mode only)
//! 12. sip             the listeners join the tree under `sip`: SIP is received from now
//! 13. http            the API server joins the tree as `http`
//! 14. upkeep          metrics upkeep and queue statistics snapshots (tasks)
//! ```
//! Each step is a function of `infra.rs` (or of its module) taking what it needs as
//! arguments; later steps get what earlier ones returned, so nothing is bound late except
//! the two true cycles: a call's media events and the contact centre point back at the
//! call context (`CallContext::media`, `CallContext::cc`).
//!
//! # The tree
//! ```text
//! root (one_for_one, 5 restarts / 10 s)
//! ├── store_writer   permanent   the SQLite writer (CDRs)
//! ├── registrar      permanent   REGISTER, digest auth, bindings (the location service is
//! │                              shared memory that survives its restarts)
//! ├── trunks         permanent   one_for_one supervisor, 10 restarts / 10 s
//! │   └── trunk/<id>             one per carrier trunk (channels live in a shared table);
//! │                              trunks put or deleted through the API are started and
//! │                              stopped here at run time (see [`Catalog`])
//! ├── tenants        permanent   one_for_one supervisor, 3 restarts / 10 s
//! │   └── tenant/<id>            rest_for_one supervisor per tenant (tenants put or
//! │                              deleted through the API are added and removed at run time)
//! │       ├── tenant actor       permanent
//! │       ├── queues             one_for_one, 10 restarts / 10 s: queue/<tenant>/<id>
//! │       │                      (built at each start from the queues in force: queues
//! │       │                      added or deleted through the API, see [`Catalog`])
//! │       └── agents             one_for_one, 50 restarts / 10 s: agent/<tenant>/<id>
//! │           (a queue crash restarts that queue only; the tenant actor's restarts its
//! │           queues and agents, which resume from their checkpoints)
//! ├── calls          permanent   one_for_one supervisor, 100 restarts / 10 s
//! │   └── call actors            transient, one per call, started by the router
//! ├── sip            permanent   one_for_one supervisor, 10 restarts / 60 s, restarts
//! │   │                          after 0.5 s doubling to 10 s (a loop that keeps dying
//! │   │                          does not spin)
//! │   └── listener udp:IP:PORT[#N] | tcp:IP:PORT | tls:IP:PORT
//! │                  permanent   one receive loop per bound socket (UDP: per SO_REUSEPORT
//! │                              worker); restarted on the same socket, so the address
//! │                              stays; `GET /health` reports one that is down
//! └── http           permanent   the API server, restarted on the same socket
//! ```
//! Stream connections (TCP/TLS readers and writers) are tasks of their own that outlive a
//! restart of their listener; a panic while handling one message costs that message only
//! (`transport::isolate`).

use ractor::{Actor, ActorRef};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::catalog::{self, name, Singletons};
use super::infra::{self, StartResult};
use super::{
    start_child_sync, Backoff, ChildSpec, Intensity, Restart, Strategy, Supervisor, SupervisorArgs,
    SupervisorMsg,
};
use crate::actors::alarms::AlarmSink;
use crate::actors::call::CallContext;
use crate::actors::queue::CcContext;
use crate::actors::registrar::{Location, RegistrarActor, RegistrarArgs};
use crate::actors::router::{Admission, Numbers, Router, Routes};
use crate::actors::store_writer::{StoreWriterActor, StoreWriterArgs, StoreWriterMsg};
use crate::actors::trunk::LiveTrunks;
use crate::config::Config;
use crate::routing::auth::Authenticator;
use crate::transport::{ListenerActor, ListenerArgs, Transports};

pub use super::catalog::{
    calls_name, queue_key, store_name, tenant_key, trunk_key, Catalog, TenantSpec,
};

/// The long-lived actors of a node: the root by reference, the others by their stable
/// names (a restarted actor is found again under the same name).
pub struct Tree {
    pub root: ActorRef<SupervisorMsg>,
    pub registrar_name: String,
    pub calls_name: String,
    pub store_name: String,
    /// The singletons (tenants with their queues and agents, trunks) this node can run.
    pub singletons: Catalog,
}

impl Tree {
    pub fn calls(&self) -> Option<ActorRef<SupervisorMsg>> {
        ractor::registry::where_is(self.calls_name.clone()).map(Into::into)
    }

    pub fn store(&self) -> Option<ActorRef<StoreWriterMsg>> {
        ractor::registry::where_is(self.store_name.clone()).map(Into::into)
    }
}

/// How the tree differs between a node alone and a cluster node.
#[derive(Clone)]
pub struct TreeOptions {
    pub placement: Singletons,
    /// Where CDRs go: the node's SQLite file, or the cluster's PostgreSQL.
    pub database: crate::store::Database,
    /// Where trunk alarms go.
    pub alarms: AlarmSink,
}

/// What a started node consists of (`server::Node` holds it).
pub struct Started {
    pub name: String,
    pub transports: Transports,
    pub http_addr: std::net::SocketAddr,
    pub tls_fingerprint: Option<String>,
    pub ctx: Arc<CallContext>,
    pub location: Arc<Location>,
    pub cc: Arc<CcContext>,
    pub tree: Tree,
    pub trust: Arc<crate::security::trust::Trust>,
    pub membership: Option<Arc<crate::cluster::membership::Membership>>,
    pub port: Option<Arc<crate::cluster::port::Port>>,
}

/// Starts everything `config` describes, in the order of the module documentation.
pub async fn start_node(config: Config) -> StartResult<Started> {
    // 1. process
    crate::transport::tls::install_crypto_provider();
    let metrics = crate::metrics::install()?;
    metrics::gauge!(crate::demo::DEMO_TENANT).set(if config.demo { 1.0 } else { 0.0 });
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("data directory {}: {e}", config.data_dir.display()))?;
    // 2. api keys
    let keys = infra::api_keys(&config)?;
    let node = infra::node_name(&config);
    // 3. edge
    let trunks = infra::trunks(&config);
    let trust = infra::trust(&config, &trunks)?;
    let guard = infra::edge_guard(&config, &trust);
    // 4. sip sockets
    let sip = infra::bind_sip(&config, guard.clone()).await?;
    // 5. calls
    let ctx = infra::call_context(&config, &node, sip.transports.clone(), trunks.clone());
    // 6. media
    let recording_keys = infra::start_media(&config, &ctx)?;
    // 7. contact centre
    let auth = Arc::new(
        Authenticator::new(&config.registrar, &config.tenants)?
            .with_own_hosts(crate::routing::auth::OwnHosts::of(&config)),
    );
    let location = Arc::new(Location::new());
    let cc = infra::contact_centre(&node, &location, &ctx);
    let tenants = infra::tenants(&config, &auth)?;
    // 8. actors
    let database = infra::database(&config);
    // The risk desk (lists and attempt counts in the store) before the first call.
    let _ = ctx.risk.set(infra::risk(&config, &database).await?);
    let tree = start(
        &config.data_dir,
        &node,
        &tenants.specs,
        infra::registrar(
            &config,
            auth.clone(),
            location.clone(),
            &sip.transports,
            database.clone(),
        ),
        cc.clone(),
        trunks.clone(),
        TreeOptions {
            alarms: AlarmSink::start(&config.alarms, &node)
                .map_err(|e| format!("alarms.webhook_url: {e}"))?,
            placement: if config.cluster.is_some() {
                Singletons::OnClaim
            } else {
                Singletons::All
            },
            database: database.clone(),
        },
    )
    .await?;
    // What fails from here on stops the actors already started.
    let root = tree.root.clone();
    let started = async move {
        // 9. live config (before the first call)
        let routes = Arc::new(Routes::new(&config.routes, &trunks.current()));
        let numbers = Arc::new(Numbers::new(tenants.numbers));
        let shared_config = crate::cluster::shared_config::SharedConfig::start(
            &config,
            routes.clone(),
            numbers.clone(),
            trunks.clone(),
            auth.clone(),
            crate::cluster::shared_config::LiveQueues {
                catalog: tree.singletons.clone(),
                agents: tenants.agents,
            },
        )
        .await?;
        // 10. router
        let router = Arc::new(
            Router::new(
                ctx.clone(),
                routes,
                Admission::new(config.admission.clone()),
                tree.calls_name.clone(),
            )
            .with_registrar(
                auth,
                location.clone(),
                tree.registrar_name.clone(),
                config.registrar.authenticate_invites,
            )
            .with_numbers(numbers)
            .with_trust(trust.clone()),
        );
        let handler: Arc<dyn crate::transport::Handler> = if config.fault_injection {
            Arc::new(crate::transport::PanicInjector(router))
        } else {
            router
        };
        sip.transports.set_handler(handler);
        // 11. http socket and cluster (a connection accepted from here on waits for step 13)
        let http = infra::bind_http(&config).await?;
        let http_addr = http.local_addr()?;
        let cluster = match &config.cluster {
            Some(c) => Some(
                infra::join_cluster(
                    c,
                    &sip.transports,
                    http_addr,
                    tree.singletons.clone(),
                    trunks.clone(),
                    cc.clone(),
                )
                .await?,
            ),
            None => None,
        };
        // 12. sip
        start_child_sync(&tree.root, sip_listeners(&node, &sip.transports)).await?;
        for l in sip.transports.local_addrs() {
            tracing::info!(listen = %l, "SIP listening");
        }
        // 13. http
        infra::announce_token(&config, &keys);
        let root = tree.root.clone();
        let mut health = crate::api::Health::new().with_check("supervision", move || {
            root.get_status() == ractor::ActorStatus::Running
        });
        for l in sip.transports.listeners() {
            health = health.with_check(format!("listener {}", l.name()), move || l.is_up());
        }
        let mut state = crate::api::ApiState::new(metrics.clone(), health)
            .with_token(keys.token)
            // Queues added or deleted through the API are listed as the tree runs them.
            .with_contact_centre(
                cc.clone(),
                tenants.directory.with_live_queues(tree.singletons.clone()),
            )
            .with_recordings(crate::api::recordings::Recordings::new(
                config.data_dir.join("switchyard.db"),
                recording_keys,
            ))
            // Tenants' tokens (the file's `api_token`s and the API's) come with it.
            .with_config(shared_config)
            .with_security(guard)
            // CDRs, reports and the audit log (the CDRs' database: PostgreSQL in a cluster).
            .with_store(database.clone())
            // Tenants' access keys, sealed under `data_dir/access-keys.key`.
            .with_access_keys(crate::api::keys::load_seal_key(&config.data_dir)?);
        if let Some(c) = &cluster {
            state = state.with_cluster(c.membership.clone());
        }
        if keys.tls.is_some() {
            state = state.with_https();
        }
        start_child_sync(
            &tree.root,
            api_server(
                &node,
                crate::api::ApiServerArgs {
                    listener: http,
                    state,
                    tls: keys.tls,
                },
            ),
        )
        .await?;
        tracing::info!(%http_addr, "HTTP listening (/metrics, /health, /queues, /agents)");
        // 14. upkeep
        crate::metrics::spawn_upkeep(metrics);
        infra::spawn_queue_stats(&config, &cc, database);
        Ok(Started {
            name: node,
            transports: sip.transports,
            http_addr,
            tls_fingerprint: sip.tls_fingerprint,
            ctx,
            location,
            cc,
            tree,
            trust,
            membership: cluster.as_ref().map(|c| c.membership.clone()),
            port: cluster.map(|c| c.port),
        })
    }
    .await;
    if started.is_err() {
        root.stop(None);
    }
    started
}

/// The `sip` supervisor: one listener actor per bound socket, restarted on that socket.
pub fn sip_listeners(node: &str, transports: &Transports) -> ChildSpec {
    let mut sup = SupervisorArgs::new(name("sip", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(10, Duration::from_secs(60)))
        .with_backoff(Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
        });
    for listener in transports.listeners() {
        let args = ListenerArgs {
            listener: listener.clone(),
            transports: transports.clone(),
        };
        sup = sup.with_child(ChildSpec::actor(
            format!("listener {}", listener.name()),
            "listener",
            Restart::Permanent,
            ListenerActor,
            move || args.clone(),
        ));
    }
    ChildSpec::named_supervisor(name("sip", node), sup)
}

/// The `http` child: the API server on its bound socket.
pub fn api_server(node: &str, args: crate::api::ApiServerArgs) -> ChildSpec {
    ChildSpec::named_actor(
        name("http", node),
        "api_server",
        Restart::Permanent,
        crate::api::ApiServerActor,
        move || args.clone(),
    )
    .with_shutdown(Duration::from_secs(10))
}

/// Starts the actors of the tree up to `calls` (step 7). `node` makes actor names unique
/// within the process; `tenants` pairs each tenant's config with its number of users;
/// `trunks` are the node's trunks (a trunk actor takes its trunk from there at every start).
pub async fn start(
    data_dir: &Path,
    node: &str,
    tenants: &[TenantSpec],
    registrar: RegistrarArgs,
    cc: Arc<CcContext>,
    trunks: Arc<LiveTrunks>,
    options: TreeOptions,
) -> StartResult<Tree> {
    let TreeOptions {
        placement,
        database,
        alarms,
    } = options;
    let registrar_name = name("registrar", node);
    let db = data_dir.join("switchyard.db");
    let store_name = store_name(node);
    let calls_name = calls_name(node);
    let calls = SupervisorArgs::new(calls_name.clone(), Strategy::OneForOne)
        .with_intensity(Intensity::new(100, Duration::from_secs(10)));
    let singletons = catalog::build(node, tenants, cc, trunks, alarms, placement);
    let root_args = SupervisorArgs::new(name("root", node), Strategy::OneForOne)
        .with_intensity(Intensity::new(5, Duration::from_secs(10)))
        .with_child(ChildSpec::named_actor(
            store_name.clone(),
            "store_writer",
            Restart::Permanent,
            StoreWriterActor,
            move || StoreWriterArgs::with_database(db.clone(), database.clone()),
        ))
        .with_child(ChildSpec::named_actor(
            registrar_name.clone(),
            "registrar",
            Restart::Permanent,
            RegistrarActor,
            move || registrar.clone(),
        ))
        // Registered by name: cluster mode starts and stops singletons under them.
        .with_child(ChildSpec::named_supervisor(
            name("trunks", node),
            singletons.trunks,
        ))
        .with_child(ChildSpec::named_supervisor(
            name("tenants", node),
            singletons.tenants,
        ))
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
        singletons: singletons.catalog,
    };
    tree.calls().ok_or("calls supervisor not registered")?;
    tree.store().ok_or("store writer not registered")?;
    Ok(tree)
}
