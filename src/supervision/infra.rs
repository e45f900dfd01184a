//! The pieces of a node that `tree.rs` starts, one function each: what they need is in
//! their arguments, what they give back is what later steps use. `tree::start_node` calls
//! them in order.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::catalog::TenantSpec;
use crate::actors::call::CallContext;
use crate::actors::queue::CcContext;
use crate::actors::registrar::{Location, RegistrarArgs};
use crate::actors::router::NumberRoute;
use crate::config::Config;
use crate::routing::auth::Authenticator;
use crate::transport::{ListenSpec, TransportConfig, Transports};

/// What a step that can fail returns.
pub type StartResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The API's credentials: its token (and where it came from) and the HTTPS configuration.
/// A short or malformed token, or a certificate that does not load, stops the node here,
/// before anything listens.
pub struct ApiKeys {
    pub token: crate::api::Token,
    pub origin: crate::api::TokenOrigin,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub fn api_keys(config: &Config) -> StartResult<ApiKeys> {
    let (token, origin) = crate::api::load_token(config.http.token.as_deref(), &config.data_dir)
        .map_err(|e| format!("API token: {e}"))?;
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::api::tls::server_config(cert, key)
                .map_err(|e| format!("http.tls_cert / http.tls_key: {e}"))?,
        ),
        _ => None,
    };
    Ok(ApiKeys { token, origin, tls })
}

/// A generated API token is shown once, like the TLS fingerprint; the log line names the
/// file, not the secret, so the token does not end up in log storage.
pub fn announce_token(config: &Config, keys: &ApiKeys) {
    if keys.origin == crate::api::TokenOrigin::Generated {
        let path = config.data_dir.join(crate::api::TOKEN_FILE);
        tracing::info!(path = %path.display(), "API token generated");
        println!(
            "API token (Authorization: Bearer, kept in {}): {}",
            path.display(),
            keys.token.expose()
        );
    }
}

/// In a cluster the node's name is its cluster name (actor names carry it, so several
/// nodes of one process, as in tests, stay apart); alone, a per-process sequence.
pub fn node_name(config: &Config) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NODE_SEQ: AtomicU64 = AtomicU64::new(1);
    match &config.cluster {
        Some(c) => c.name.clone(),
        None => format!("n{}", NODE_SEQ.fetch_add(1, Ordering::Relaxed)),
    }
}

/// The risk desk of outbound calls, on `database` (its lists and attempt counts).
pub async fn risk(
    config: &Config,
    database: &crate::store::Database,
) -> Result<Arc<crate::actors::risk::RiskDesk>, String> {
    let (risk, db) = (config.risk.clone(), database.clone());
    let desk = tokio::task::spawn_blocking(move || crate::actors::risk::RiskDesk::open(&risk, &db))
        .await
        .map_err(|e| format!("risk desk: {e}"))?
        .map_err(|e| format!("risk desk: {e}"))?;
    let desk = Arc::new(desk);
    // In a cluster other nodes change the shared lists too.
    if database.is_postgres() {
        crate::actors::risk::spawn_refresh(&desk);
    }
    Ok(desk)
}

/// Registrations, CDRs and statistics: the node's SQLite file, or in a cluster the shared
/// PostgreSQL (bindings made through one node reach the others by NOTIFY).
pub fn database(config: &Config) -> crate::store::Database {
    match config.cluster.as_ref().and_then(|c| c.database.as_ref()) {
        Some(db) => crate::store::Database::Postgres(db.url.clone()),
        None => crate::store::Database::Sqlite(config.data_dir.join("switchyard.db")),
    }
}

/// Who is trusted: `[security] trusted` and the trunks' gateways (kept current as trunks
/// change through the API).
pub fn trust(
    config: &Config,
    trunks: &crate::actors::trunk::LiveTrunks,
) -> StartResult<Arc<crate::security::trust::Trust>> {
    let trust = Arc::new(
        crate::security::trust::Trust::from_config(&config.security.trusted)
            .map_err(|e| format!("security.trusted: {e}"))?,
    );
    trunks.keep_gateways(trust.clone());
    Ok(trust)
}

/// The edge's flood and scanner defence. Never banned: the trusted peers and the trunks'
/// gateways (kept current as trunks change), and the static routes' targets (the PBXs and
/// proxies calls are sent to, whose answers are as many as the calls).
pub fn edge_guard(
    config: &Config,
    trust: &Arc<crate::security::trust::Trust>,
) -> Arc<crate::security::EdgeGuard> {
    let guard = Arc::new(crate::security::EdgeGuard::new(
        config.security.flood_settings(),
        config.security.scanner_settings(),
    ));
    let targets: std::collections::HashSet<IpAddr> = config
        .routes
        .iter()
        .filter_map(|r| crate::config::RouteTarget::parse(&r.target).ok())
        .map(|t| t.addr.ip().to_canonical())
        .collect();
    let trusted = trust.exemption();
    guard.set_exempt(Arc::new(move |ip| {
        trusted(ip) || targets.contains(&ip.to_canonical())
    }));
    guard
}

/// The bound SIP sockets and the TLS certificate's fingerprint (when a TLS listener runs).
pub struct Sockets {
    pub transports: Transports,
    pub tls_fingerprint: Option<String>,
}

/// Binds every `sip.listen` socket (port 0 allowed), with the limits, the edge `guard` and
/// the TLS certificate (loaded, or made and kept in the data directory). Nothing is
/// received until the listeners run; sends work at once.
pub async fn bind_sip(
    config: &Config,
    guard: Arc<crate::security::EdgeGuard>,
) -> StartResult<Sockets> {
    let mut tconf = TransportConfig {
        max_tcp_connections: config.sip.max_tcp_connections,
        tcp_idle_timeout: Duration::from_secs(config.sip.tcp_idle_timeout_secs),
        udp_workers: config.sip.udp_workers,
        force_rport: config.sip.force_rport,
        guard: Some(guard),
        fault_injection: config.fault_injection,
        ..TransportConfig::default()
    };
    tconf.limits.max_body_bytes = config
        .sip
        .max_message_bytes
        .saturating_sub(tconf.limits.max_header_bytes)
        .max(1024);
    let specs: Vec<ListenSpec> = config.listen_specs();
    let (cert, key) = (
        config.sip.tls_cert.as_deref(),
        config.sip.tls_key.as_deref(),
    );
    let ca: Vec<&std::path::Path> = config.sip.tls_ca.iter().map(|p| p.as_path()).collect();
    let mut tls_fingerprint = None;
    if let Some(tls) = crate::transport::tls::setup(&specs, cert, key, &ca, &config.data_dir)? {
        tls_fingerprint = Some(tls.cert.fingerprint.clone());
        (tconf.tls_server, tconf.tls_client) = (Some(tls.server), Some(tls.client));
    }
    let transports = Transports::bind(&specs, tconf).await?;
    Ok(Sockets {
        transports,
        tls_fingerprint,
    })
}

/// Binds the HTTP API's socket (port 0 allowed); the API server serves it later.
pub async fn bind_http(config: &Config) -> StartResult<Arc<std::net::TcpListener>> {
    let listener = crate::api::bind(config.http.listen).await?;
    Ok(Arc::new(listener.into_std()?))
}

/// The call context: timers, the transports, the call settings and the trunk table.
pub fn call_context(
    config: &Config,
    node: &str,
    transports: Transports,
    trunks: Arc<crate::actors::trunk::LiveTrunks>,
) -> Arc<CallContext> {
    let max_duration = match config.calls.max_duration_secs {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let ctx = Arc::new(CallContext::new(
        crate::timer::TimerService::new(),
        config.timer_config(),
        Some(super::catalog::store_name(node)),
        Duration::from_secs(config.calls.no_answer_timeout_secs),
        max_duration,
        &config.sip.user_agent,
        config.sip.advertise,
        transports,
    ));
    let _ = ctx.trunks.set(trunks);
    ctx
}

/// The trunks: budgets and health flags shared by calls and trunk actors; replaced when
/// trunks change through the API. In a cluster, a trunk's limits are the cluster's: no
/// channel is used here before this node's part is known (cluster::channels).
pub fn trunks(config: &Config) -> Arc<crate::actors::trunk::LiveTrunks> {
    let table = crate::actors::trunk::trunk_table(&config.trunks);
    if config.cluster.is_some() {
        for t in table.values() {
            t.set_caps(0, 0);
        }
    }
    Arc::new(crate::actors::trunk::LiveTrunks::new(table))
}

/// Settles recordings an earlier run left unfinished (before any call records).
fn recover_recordings(
    config: &Config,
    dir: &std::path::Path,
    keys: &crate::media::recording::KeyRing,
) -> StartResult<()> {
    let mut store = crate::store::Store::open(&config.data_dir.join("switchyard.db"))?;
    let report = crate::store::recordings::recover(&mut store, dir, keys)?;
    if report != Default::default() {
        tracing::warn!(
            completed = report.completed.len(),
            failed = report.failed.len(),
            stray = report.stray_tmp_removed,
            skipped = report.skipped.len(),
            "recordings interrupted by the last stop settled"
        );
    }
    Ok(())
}

/// Starts the media relay (threads, port pool, recording keys, prompts and music) and
/// hands it to the calls. Unfinished recordings of an earlier run are settled first.
pub fn start_media(
    config: &Config,
    ctx: &Arc<CallContext>,
) -> StartResult<Arc<crate::media::recording::KeyRing>> {
    use crate::media::{prompts, relay, tone, wav};
    let m = &config.media;
    let advertise = m
        .advertise
        .or(config.sip.advertise)
        .unwrap_or(if m.bind.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            m.bind
        });
    let keys = crate::media::recording::KeyRing::from_config(
        &m.recording_keys,
        m.recording_key.as_deref(),
        &config.data_dir,
    )
    .map_err(|e| format!("media.recording_keys: {e}"))?;
    let recordings_dir = m
        .recordings_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("recordings"));
    let keys = Arc::new(keys);
    recover_recordings(config, &recordings_dir, &keys)?;
    let (first, last) = m.port_range().ok_or("media.rtp_ports: FIRST-LAST")?;
    let engine = relay::MediaEngine::start(relay::EngineConfig {
        bind: m.bind,
        advertise,
        ports: (first, last),
        threads: m.relay_threads,
        recordings_dir,
        keys: Some(keys.clone()),
        inband_dtmf: m.inband_dtmf,
        rtp_timeout: (m.rtp_timeout_secs > 0).then(|| Duration::from_secs(m.rtp_timeout_secs)),
    })?;
    engine.set_sink(crate::actors::call::event_sink(ctx));
    let weak = Arc::downgrade(ctx);
    engine.set_alive_check(Arc::new(move |call| {
        // A call's second session (consultation, three-way, monitor) lives while the call.
        weak.upgrade().is_none_or(|ctx| {
            ctx.directory.lookup(call).is_some()
                || crate::actors::call::consult_owner(call)
                    .is_some_and(|owner| ctx.directory.lookup(owner).is_some())
        })
    }));
    let dir = m.prompts_dir.clone().unwrap_or_else(prompts::default_dir);
    let mut library = match prompts::PromptLibrary::load(&dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no prompts: announcements are silent");
            prompts::PromptLibrary::new()
        }
    };
    for (id, text) in &m.tts {
        match prompts::speak(text, &config.data_dir.join("tts-cache")) {
            Ok(samples) => library.insert(id, samples),
            Err(e) => return Err(format!("media.tts.{id}: {e}").into()),
        }
    }
    let music: Arc<[i16]> = match &m.music {
        Some(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("media.music {}: {e}", path.display()))?;
            wav::read_8k_mono(&bytes)
                .map_err(|e| format!("media.music {}: {e}", path.display()))?
                .into()
        }
        None => tone::melody().into(),
    };
    tracing::info!(prompts = library.len(), ports = %m.rtp_ports, %advertise, "media relay started");
    let _ = ctx.media.set(Arc::new(crate::actors::call::MediaCtx {
        engine,
        anchor_all: m.anchor_all,
        record_all: m.record_all,
        prompts: Arc::new(library),
        music,
    }));
    Ok(keys)
}

/// The contact centre: queues and agents share one context with the calls, and hear of
/// phones that register or go.
pub fn contact_centre(
    node: &str,
    location: &Arc<Location>,
    ctx: &Arc<CallContext>,
) -> Arc<CcContext> {
    let cc = Arc::new(CcContext::new(
        node.to_string(),
        location.clone(),
        ctx.clone(),
    ));
    let _ = ctx.cc.set(Arc::downgrade(&cc));
    let weak = Arc::downgrade(&cc);
    location.observe(Arc::new(move |key, reachable| {
        if let Some(cc) = weak.upgrade() {
            cc.phone_changed(&key.tenant, &key.user, reachable);
        }
    }));
    cc
}

/// The tenants of the file: what their actors start with, their numbers (DIDs), the API's
/// directory of queues and agents, and each tenant's agents (for re-planning a queue
/// changed through the API).
pub struct Tenants {
    pub specs: Vec<TenantSpec>,
    pub numbers: HashMap<String, NumberRoute>,
    pub directory: crate::api::Directory,
    pub agents: HashMap<String, Vec<crate::config::AgentConfig>>,
}

pub fn tenants(config: &Config, auth: &Authenticator) -> StartResult<Tenants> {
    let mut out = Tenants {
        specs: Vec::with_capacity(config.tenants.len()),
        numbers: HashMap::new(),
        directory: crate::api::Directory::new(),
        agents: HashMap::new(),
    };
    for t in &config.tenants {
        let agents = t.all_agents()?;
        out.agents.insert(t.id.clone(), agents.clone());
        out.directory.insert(
            &t.id,
            t.queues.iter().map(|q| q.id.as_str()),
            agents.iter().map(|a| a.id.as_str()),
        );
        let queues = crate::actors::queue::plan(t, &agents);
        for n in &t.numbers {
            if let Some(route) = NumberRoute::from_config(t, &n.target, n.priority) {
                out.numbers.insert(n.number.clone(), route);
            }
        }
        out.specs.push(TenantSpec {
            config: t.clone(),
            users: auth.tenant(&t.id).map_or(0, |u| u.user_count()),
            queues,
            agents,
        });
    }
    Ok(out)
}

/// The registrar's arguments: its settings, the authenticator, the location service, the
/// transports it answers through and where bindings are kept.
pub fn registrar(
    config: &Config,
    auth: Arc<Authenticator>,
    location: Arc<Location>,
    transports: &Transports,
    database: crate::store::Database,
) -> RegistrarArgs {
    let mut registrar = RegistrarArgs::new(
        config.registrar.clone(),
        auth,
        location,
        Arc::new(OnceLock::from(transports.clone())),
        config.data_dir.join("switchyard.db"),
    );
    registrar.server = Some(config.sip.user_agent.clone());
    registrar.database = database;
    if let Some(c) = &config.cluster {
        registrar.node = c.name.clone();
    }
    registrar
}

/// The inter-node TLS of `cluster.toml`'s `[tls]`.
fn cluster_tls(
    t: &crate::cluster::config::TlsConfig,
) -> StartResult<crate::cluster::port::PortTls> {
    use crate::transport::tls;
    let server = tls::server_config(&t.cert, &t.key).map_err(|e| format!("cluster tls: {e}"))?;
    let ca = t.ca.as_deref().unwrap_or(&t.cert);
    let client = tls::client_config(&[ca]).map_err(|e| format!("cluster tls.ca: {e}"))?;
    let server_name = rustls_pki_types::ServerName::try_from(t.server_name.clone())
        .map_err(|e| format!("cluster tls.server_name {:?}: {e}", t.server_name))?;
    Ok(crate::cluster::port::PortTls {
        acceptor: tokio_rustls::TlsAcceptor::from(server),
        connector: tokio_rustls::TlsConnector::from(client),
        server_name,
    })
}

/// A cluster node's links to the others: the port for actor messages, and membership.
pub struct ClusterLinks {
    pub port: Arc<crate::cluster::port::Port>,
    pub membership: Arc<crate::cluster::membership::Membership>,
}

/// Joins the cluster: the port listens first, so that peers that see this node announced
/// can reach it at once; then membership in etcd (which claims singletons and starts
/// them through the `catalog`).
pub async fn join_cluster(
    c: &crate::cluster::config::ClusterConfig,
    sip: &Transports,
    http: SocketAddr,
    catalog: super::catalog::Catalog,
    trunks: Arc<crate::actors::trunk::LiveTrunks>,
    cc: Arc<CcContext>,
) -> StartResult<ClusterLinks> {
    let directory = crate::cluster::Directory::new(&c.name);
    let mut port_config = crate::cluster::port::PortConfig::new(
        &c.name,
        c.listen,
        c.secret(),
        directory.clone(),
        cc.clone(),
    );
    if let Some(t) = &c.tls {
        port_config.tls = Some(cluster_tls(t)?);
    }
    let port = crate::cluster::port::start(port_config).await?;
    let sip = sip
        .local_addrs()
        .first()
        .map_or_else(String::new, |l| format!("{}:{}", l.protocol, l.addr));
    let info = crate::cluster::NodeInfo {
        name: c.name.clone(),
        sip,
        http: http.to_string(),
        cluster: port.listen_addr(),
        state: crate::cluster::NodeState::Up,
        since_ms: crate::store::now_unix_ms() as u64,
    };
    let membership =
        crate::cluster::membership::Membership::join(c, info, directory, catalog, trunks, cc)
            .await?;
    tracing::info!(node = %c.name, etcd = ?c.etcd.endpoints, "joined the cluster");
    Ok(ClusterLinks {
        port,
        membership: Arc::new(membership),
    })
}

/// Queue statistics snapshots, every `calls.queue_stats_secs`, for the file's queues.
pub fn spawn_queue_stats(config: &Config, cc: &Arc<CcContext>, database: crate::store::Database) {
    let queues: Vec<(String, String)> = config
        .tenants
        .iter()
        .flat_map(|t| t.queues.iter().map(|q| (t.id.clone(), q.id.clone())))
        .collect();
    if !queues.is_empty() {
        tokio::spawn(crate::actors::queue::snapshot_stats(
            cc.clone(),
            queues,
            database,
            Duration::from_secs(config.calls.queue_stats_secs.max(1)),
        ));
    }
}
