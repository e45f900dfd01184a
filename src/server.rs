//! Starts a node: metrics, the supervision tree, the call context and router, the SIP
//! transports and the HTTP API. `main` and the integration tests both use [`Node::start`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

use crate::actors::call::CallContext;
use crate::actors::queue::CcContext;
use crate::actors::registrar::{Location, RegistrarArgs};
use crate::actors::router::{Admission, NumberRoute, Numbers, Router, Routes};
use crate::actors::store_writer;
use crate::actors::trunk::{trunk_table, LiveTrunks};
use crate::config::Config;
use crate::routing::auth::Authenticator;
use crate::supervision::tree::{self, TenantSpec, Tree};
use crate::timer::TimerService;
use crate::transport::{ListenSpec, TransportConfig, Transports};
use std::collections::HashMap;

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
    shutdown: watch::Sender<bool>,
}

static NODE_SEQ: AtomicU64 = AtomicU64::new(1);

/// Settles recordings an earlier run left unfinished (before any call records).
fn recover_recordings(
    config: &Config,
    dir: &std::path::Path,
    keys: &crate::media::recording::KeyRing,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
fn start_media(
    config: &Config,
    ctx: &Arc<CallContext>,
) -> Result<Arc<crate::media::recording::KeyRing>, Box<dyn std::error::Error + Send + Sync>> {
    use crate::media::{prompts, relay, tone, wav};
    let m = &config.media;
    let advertise = m
        .advertise
        .or(config.sip.advertise)
        .unwrap_or(if m.bind.is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
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
        weak.upgrade()
            .is_none_or(|ctx| ctx.directory.lookup(call).is_some())
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

/// The edge's flood and scanner defence. Never banned: the trusted peers and the trunks'
/// gateways (kept current as trunks change), and the static routes' targets (the PBXs and
/// proxies calls are sent to, whose answers are as many as the calls).
fn edge_guard(
    config: &Config,
    trust: &Arc<crate::security::trust::Trust>,
) -> Arc<crate::security::EdgeGuard> {
    let guard = Arc::new(crate::security::EdgeGuard::new(
        config.security.flood_settings(),
        config.security.scanner_settings(),
    ));
    let targets: std::collections::HashSet<std::net::IpAddr> = config
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

/// The inter-node TLS of `cluster.toml`'s `[tls]`.
fn cluster_tls(
    t: &crate::cluster::config::TlsConfig,
) -> Result<crate::cluster::port::PortTls, Box<dyn std::error::Error + Send + Sync>> {
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

impl Node {
    /// Starts everything the config describes. Listen sockets may use port 0.
    pub async fn start(config: Config) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
        crate::transport::tls::install_crypto_provider();
        let handle = crate::metrics::install()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("data directory {}: {e}", config.data_dir.display()))?;
        // The API's token and certificate first: a short or malformed token stops the node
        // before anything listens.
        let (token, origin) =
            crate::api::load_token(config.http.token.as_deref(), &config.data_dir)
                .map_err(|e| format!("API token: {e}"))?;
        // HTTPS when configured: a certificate that does not load stops the node as early.
        let api_tls = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) => Some(
                crate::api::tls::server_config(cert, key)
                    .map_err(|e| format!("http.tls_cert / http.tls_key: {e}"))?,
            ),
            _ => None,
        };
        // In a cluster the node's name is its cluster name (actor names carry it, so several
        // nodes of one process, as in tests, stay apart); alone, a per-process sequence.
        let node_name = match &config.cluster {
            Some(c) => c.name.clone(),
            None => format!("n{}", NODE_SEQ.fetch_add(1, Ordering::Relaxed)),
        };
        let auth = Arc::new(Authenticator::new(&config.registrar, &config.tenants)?);
        let location = Arc::new(Location::new());
        let registrar_transports = Arc::new(OnceLock::new());
        let mut registrar = RegistrarArgs::new(
            config.registrar.clone(),
            auth.clone(),
            location.clone(),
            registrar_transports.clone(),
            config.data_dir.join("switchyard.db"),
        );
        registrar.server = Some(config.sip.user_agent.clone());
        // Registrations, CDRs and statistics: the node's SQLite file, or in a cluster the
        // shared PostgreSQL (bindings made through one node reach the others by NOTIFY).
        let database = match config.cluster.as_ref().and_then(|c| c.database.as_ref()) {
            Some(db) => crate::store::Database::Postgres(db.url.clone()),
            None => crate::store::Database::Sqlite(config.data_dir.join("switchyard.db")),
        };
        registrar.database = database.clone();
        if let Some(c) = &config.cluster {
            registrar.node = c.name.clone();
        }
        let timers = TimerService::new();
        let max_duration = match config.calls.max_duration_secs {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        let ctx = Arc::new(CallContext::new(
            timers,
            config.timer_config(),
            Some(tree::store_name(&node_name)),
            Duration::from_secs(config.calls.no_answer_timeout_secs),
            max_duration,
            &config.sip.user_agent,
            config.sip.advertise,
        ));
        let keys = start_media(&config, &ctx)?;
        // Trunks: budgets and health flags shared by calls and trunk actors; replaced when
        // trunks change through the API.
        let trunk_table = trunk_table(&config.trunks);
        if config.cluster.is_some() {
            // A trunk's limits are the cluster's: no channel is used here before this node's
            // part is known (cluster::channels).
            for t in trunk_table.values() {
                t.set_caps(0, 0);
            }
        }
        let trunk_table = Arc::new(LiveTrunks::new(trunk_table));
        // The edge: trusted peers and the trunks' gateways (kept current as trunks change).
        let trust = Arc::new(
            crate::security::trust::Trust::from_config(&config.security.trusted)
                .map_err(|e| format!("security.trusted: {e}"))?,
        );
        trunk_table.keep_gateways(trust.clone());
        let _ = ctx.trunks.set(trunk_table.clone());
        // The contact centre: queues and agents share one context with the calls.
        let cc = Arc::new(CcContext::new(
            node_name.clone(),
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
        let mut tenants = Vec::with_capacity(config.tenants.len());
        let mut numbers = HashMap::new();
        let mut directory = crate::api::Directory::new();
        // Each tenant's agents, for re-planning a queue changed through the API.
        let mut tenant_agents = HashMap::new();
        for t in &config.tenants {
            let agents = t.all_agents()?;
            tenant_agents.insert(t.id.clone(), agents.clone());
            directory.insert(
                &t.id,
                t.queues.iter().map(|q| q.id.as_str()),
                agents.iter().map(|a| a.id.as_str()),
            );
            let queues = crate::actors::queue::plan(t, &agents);
            for n in &t.numbers {
                if let Some(route) = NumberRoute::from_config(t, &n.target, n.priority) {
                    numbers.insert(n.number.clone(), route);
                }
            }
            tenants.push(TenantSpec {
                config: t.clone(),
                users: auth.tenant(&t.id).map_or(0, |u| u.user_count()),
                queues,
                agents,
            });
        }
        let tree = tree::start(
            &config.data_dir,
            &node_name,
            &tenants,
            registrar,
            cc.clone(),
            trunk_table.clone(),
            tree::TreeOptions {
                alarms: crate::actors::alarms::AlarmSink::start(&config.alarms, &node_name)
                    .map_err(|e| format!("alarms.webhook_url: {e}"))?,
                placement: if config.cluster.is_some() {
                    tree::Singletons::OnClaim
                } else {
                    tree::Singletons::All
                },
                database: database.clone(),
            },
        )
        .await?;
        let routes = Arc::new(Routes::new(&config.routes, &trunk_table.current()));
        let numbers = Arc::new(Numbers::new(numbers));
        // Routes, numbers, users and queues changed through the API (kept in SQLite, or in
        // etcd for a cluster) are put in force over the file's before the first call.
        let shared_config = crate::cluster::shared_config::SharedConfig::start(
            &config,
            routes.clone(),
            numbers.clone(),
            trunk_table.clone(),
            auth.clone(),
            crate::cluster::shared_config::LiveQueues {
                catalog: tree.singletons.clone(),
                agents: tenant_agents,
            },
        )
        .await?;
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
        let guard = edge_guard(&config, &trust);
        let mut tconf = TransportConfig {
            max_tcp_connections: config.sip.max_tcp_connections,
            tcp_idle_timeout: Duration::from_secs(config.sip.tcp_idle_timeout_secs),
            udp_workers: config.sip.udp_workers,
            force_rport: config.sip.force_rport,
            guard: Some(guard.clone()),
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
        let handler: Arc<dyn crate::transport::Handler> = if config.fault_injection {
            Arc::new(crate::transport::PanicInjector(router))
        } else {
            router
        };
        let transports = Transports::start(&specs, tconf, handler).await?;
        ctx.set_transports(transports.clone());
        let _ = registrar_transports.set(transports.clone());

        let (shutdown, mut rx) = watch::channel(false);
        let listener = crate::api::bind(config.http.listen).await?;
        let http_addr = listener.local_addr()?;
        if origin == crate::api::TokenOrigin::Generated {
            let path = config.data_dir.join(crate::api::TOKEN_FILE);
            // Shown once, like the TLS fingerprint; the log line names the file, not the
            // secret, so the token does not end up in log storage.
            tracing::info!(path = %path.display(), "API token generated");
            println!(
                "API token (Authorization: Bearer, kept in {}): {}",
                path.display(),
                token.expose()
            );
        }
        // Tenants' tokens (the file's `api_token`s and the API's) come with the live
        // configuration (`with_config`).
        let recordings =
            crate::api::recordings::Recordings::new(config.data_dir.join("switchyard.db"), keys);
        let mut port = None;
        let membership = match &config.cluster {
            Some(c) => {
                let directory = crate::cluster::Directory::new(&c.name);
                // The port listens before the node is announced, so peers that see it can
                // reach it at once.
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
                let p = crate::cluster::port::start(port_config).await?;
                let sip = transports
                    .local_addrs()
                    .first()
                    .map_or_else(String::new, |l| format!("{}:{}", l.protocol, l.addr));
                let info = crate::cluster::NodeInfo {
                    name: c.name.clone(),
                    sip,
                    http: http_addr.to_string(),
                    cluster: p.listen_addr(),
                    state: crate::cluster::NodeState::Up,
                    since_ms: crate::store::now_unix_ms() as u64,
                };
                let m = crate::cluster::membership::Membership::join(
                    c,
                    info,
                    directory,
                    tree.singletons.clone(),
                    trunk_table.clone(),
                    cc.clone(),
                )
                .await?;
                tracing::info!(node = %c.name, etcd = ?c.etcd.endpoints, "joined the cluster");
                port = Some(p);
                Some(Arc::new(m))
            }
            None => None,
        };
        let mut state = crate::api::ApiState::new(handle.clone(), crate::api::Health::new())
            .with_token(token)
            // Queues added or deleted through the API are listed as the tree runs them.
            .with_contact_centre(
                cc.clone(),
                directory.with_live_queues(tree.singletons.clone()),
            )
            .with_recordings(recordings)
            .with_config(shared_config)
            .with_security(guard);
        if let Some(m) = &membership {
            state = state.with_cluster(m.clone());
        }
        if api_tls.is_some() {
            state = state.with_https();
        }
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let served = match api_tls {
                Some(tls) => match crate::api::tls::TlsListener::new(listener, tls) {
                    Ok(l) => crate::api::serve(l, state, stop).await,
                    Err(e) => Err(e),
                },
                None => crate::api::serve(listener, state, stop).await,
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "http server failed");
            }
        });
        crate::metrics::spawn_upkeep(handle);
        let queues: Vec<(String, String)> = config
            .tenants
            .iter()
            .flat_map(|t| t.queues.iter().map(|q| (t.id.clone(), q.id.clone())))
            .collect();
        if !queues.is_empty() {
            tokio::spawn(crate::actors::queue::snapshot_stats(
                cc.clone(),
                queues,
                database.clone(),
                Duration::from_secs(config.calls.queue_stats_secs.max(1)),
            ));
        }
        for l in transports.local_addrs() {
            tracing::info!(listen = %l, "SIP listening");
        }
        tracing::info!(%http_addr, "HTTP listening (/metrics, /health, /queues, /agents)");
        Ok(Node {
            name: node_name,
            transports,
            http_addr,
            tls_fingerprint,
            ctx,
            location,
            cc,
            tree,
            trust,
            membership,
            port,
            shutdown,
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

    /// Stops the node: pending CDRs are committed before the tree stops.
    pub async fn shutdown(self) {
        if let Some(m) = &self.membership {
            // Hand the singletons over now rather than after the lease expires.
            m.leave().await;
        }
        if let Some(p) = &self.port {
            p.stop().await;
        }
        let _ = self.shutdown.send(true);
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
