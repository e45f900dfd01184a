//! The configuration file: serde structs, the embedded default, and `validate()`, which
//! runs before anything starts and names the place of each fault.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::transport::{ListenSpec, Protocol};

pub mod flow;

/// The whole configuration. Every section has defaults, so an empty file is valid.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub sip: SipConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Where the database and generated files live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub timers: TimersConfig,
    #[serde(default)]
    pub calls: CallsConfig,
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Static routes, matched on the Request-URI user by longest prefix.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Carrier gateways (SIP trunks) that routes send calls to.
    #[serde(default)]
    pub trunks: Vec<TrunkConfig>,
    /// Tenants with their SIP domains and users (agents' SIP accounts).
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub registrar: RegistrarConfig,
    /// Trunk alarms: thresholds and the webhook they are posted to.
    #[serde(default)]
    pub alarms: AlarmsConfig,
    /// Media anchoring, recording and prompts.
    #[serde(default)]
    pub media: MediaConfig,
    /// The edge: trusted peers, flood and scanner bans, connections per source.
    #[serde(default)]
    pub security: SecurityConfig,
    /// Risk rules of outbound calls: forbidden windows and frequency caps per tenant and
    /// route, list bounds (the lists themselves are managed through the API).
    #[serde(default)]
    pub risk: RiskConfig,
    /// Cluster membership (`--cluster cluster.toml`); None for a node alone.
    #[serde(skip)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Fault injection for tests, settable from code only (never from a file): a request
    /// carrying `X-Switchyard-Panic` panics in the handler (see `transport::PanicInjector`).
    #[serde(skip)]
    pub fault_injection: bool,
    /// The demo tenant of the embedded default is in `tenants` (see `crate::demo`); set by
    /// the binary only, never from a file.
    #[serde(skip)]
    pub demo: bool,
}

/// How a route, queue or trunk treats a call's audio.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MediaMode {
    /// SDP untouched; audio flows between the phones (the default).
    #[default]
    Pass,
    /// The switch allocates ports per leg, rewrites SDP and relays the audio.
    Anchor,
}

/// `[media]`: the RTP port range, where recordings and prompts live, recording keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// RTP ports `FIRST-LAST`; each leg takes an even RTP port and the odd one above for RTCP.
    #[serde(default = "default_rtp_ports")]
    pub rtp_ports: String,
    /// The address the RTP sockets bind to.
    #[serde(default = "default_media_bind")]
    pub bind: std::net::IpAddr,
    /// The address written in rewritten SDP (default: `sip.advertise`, else the bind
    /// address, else 127.0.0.1 when bound to the unspecified address).
    #[serde(default)]
    pub advertise: Option<std::net::IpAddr>,
    /// Relay threads (each polls its share of the sockets).
    #[serde(default = "one_usize")]
    pub relay_threads: usize,
    /// Where recordings are written (default: `data_dir/recordings`).
    #[serde(default)]
    pub recordings_dir: Option<PathBuf>,
    /// Prompt WAVs (default: the shipped `prompts/` directory).
    #[serde(default)]
    pub prompts_dir: Option<PathBuf>,
    /// Music on hold WAV (default: a generated melody).
    #[serde(default)]
    pub music: Option<PathBuf>,
    /// Prompts given as text, spoken by espeak-ng at start (id = text).
    #[serde(default)]
    pub tts: std::collections::BTreeMap<String, String>,
    /// Recording master keys by id: `hex:<64 hex digits>`, `file:<path>` (32 raw bytes or
    /// 64 hex digits) or `env:<VAR>`. Empty: a key `k1` is generated into
    /// `data_dir/recording-keys/k1` (0600) at first start.
    #[serde(default)]
    pub recording_keys: std::collections::BTreeMap<String, String>,
    /// The key id new recordings are wrapped with (default: the last id in order).
    #[serde(default)]
    pub recording_key: Option<String>,
    /// Anchor media on every call (routes, queues and trunks may also ask for it).
    #[serde(default)]
    pub anchor_all: bool,
    /// Record every anchored call.
    #[serde(default)]
    pub record_all: bool,
    /// Listen for in-band DTMF tones (Goertzel) on every anchored G.711 leg. Off by
    /// default: it decodes every packet (RFC 4733 and SIP INFO digits are always detected).
    #[serde(default)]
    pub inband_dtmf: bool,
    /// An answered anchored call from whose two legs no RTP or RTCP arrived for this many
    /// seconds is ended (BYE to both, CDR reason "rtp timeout"); held calls (an SDP
    /// direction other than sendrecv, `c=0.0.0.0`) and legs hearing music or prompts are
    /// excepted. 0: never.
    #[serde(default = "default_rtp_timeout_secs")]
    pub rtp_timeout_secs: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_ports: default_rtp_ports(),
            bind: default_media_bind(),
            advertise: None,
            relay_threads: 1,
            recordings_dir: None,
            prompts_dir: None,
            music: None,
            tts: Default::default(),
            recording_keys: Default::default(),
            recording_key: None,
            anchor_all: false,
            record_all: false,
            inband_dtmf: false,
            rtp_timeout_secs: default_rtp_timeout_secs(),
        }
    }
}

impl MediaConfig {
    /// The port range as (first, last), both inclusive.
    pub fn port_range(&self) -> Option<(u16, u16)> {
        let (a, b) = self.rtp_ports.split_once('-')?;
        let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a < b && a >= 1024).then_some((a, b))
    }
}

/// Below Linux's ephemeral ports (32768-60999), so outgoing connections never hold one.
fn default_rtp_ports() -> String {
    "16384-32767".into()
}

fn default_media_bind() -> std::net::IpAddr {
    std::net::IpAddr::from([0, 0, 0, 0])
}

fn default_rtp_timeout_secs() -> u64 {
    60
}

fn one_usize() -> usize {
    1
}

/// A tenant: a SIP domain and its users. Tenants never see each other's users or bindings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Stable id (letters, digits, '-', '_').
    pub id: String,
    /// The SIP domain users register under (`sip:user@domain`).
    pub domain: String,
    /// Digest realm (defaults to the domain).
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// More users from a CSV file: `username,ha1_md5,ha1_sha256` per line (either hash may be
    /// empty), `#` comments allowed. Relative paths are relative to the working directory.
    #[serde(default)]
    pub users_csv: Option<PathBuf>,
    /// The tenant's queues (contact centre).
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
    /// The tenant's agents.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// More agents from a CSV file: `id,user,queues,skills,state` per line, queues as
    /// `queue:tier[:penalty]|...`, skills as `name:level|...`, state `available` or
    /// `logged_out` (empty: logged_out); `#` comments allowed.
    #[serde(default)]
    pub agents_csv: Option<PathBuf>,
    /// Numbers (DIDs) that lead to this tenant's queues or users.
    #[serde(default)]
    pub numbers: Vec<NumberConfig>,
    /// Call flows (IVR) numbers may lead to (`target = "flow:<id>"`), see [`flow`].
    #[serde(default)]
    pub flows: Vec<flow::FlowConfig>,
    /// The tenant's time zone (IANA name, e.g. `Asia/Shanghai`; default UTC): its flows'
    /// schedule steps read the time there.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The tenant's holidays (`YYYY-MM-DD`): schedule steps take their `holiday` branch.
    #[serde(default)]
    pub holidays: Vec<String>,
    /// Where its flows' webhook steps POST (http:// or https://) and the HMAC-SHA256 key
    /// they sign with (at least 16 characters).
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Record every call of this tenant's queues (anchors their media).
    #[serde(default)]
    pub record: bool,
    /// A bearer token of this tenant's (at least 32 characters): it reaches this tenant's
    /// queues, agents, users, numbers and recordings only, like one made with
    /// `POST /tenants/{id}/tokens` (listed there with the id `file`); the node's token
    /// (`http.token`) reaches every tenant.
    #[serde(default)]
    pub api_token: Option<String>,
    /// The routes (by id: a route's `id`, else its prefix) the tenant's authenticated users
    /// may dial out through. Empty: none (its users reach numbers and users only).
    #[serde(default)]
    pub outbound: Vec<String>,
}

impl TenantConfig {
    pub fn realm(&self) -> &str {
        self.realm.as_deref().unwrap_or(&self.domain)
    }

    /// The tenant's time zone and holidays (errors placed under `tenants[i]`).
    pub fn calendar(&self, i: usize) -> Result<flow::Calendar, Vec<(String, String)>> {
        flow::Calendar::parse(
            &format!("tenants[{i}]"),
            self.time_zone.as_deref(),
            &self.holidays,
        )
    }

    /// The tenant's webhook (errors placed under `tenants[i]`).
    pub fn webhook(&self, i: usize) -> Result<Option<flow::WebhookTarget>, Vec<(String, String)>> {
        flow::WebhookTarget::parse(
            &format!("tenants[{i}]"),
            self.webhook_url.as_deref(),
            self.webhook_secret.as_deref(),
        )
    }

    /// The tenant's flows compiled (`prompts`: the prompt ids that exist, None: not
    /// checked); errors with their place (`tenants[i].flows[j]...`).
    pub fn compile_flows(
        &self,
        i: usize,
        prompts: Option<&std::collections::BTreeSet<String>>,
        err: &mut impl FnMut(String, String),
    ) -> Vec<flow::Flow> {
        let queues = self.queues.iter().map(|q| q.id.clone()).collect();
        let calendar = match self.calendar(i) {
            Ok(c) => c,
            Err(es) => {
                es.into_iter().for_each(|(p, m)| err(p, m));
                return Vec::new();
            }
        };
        let webhook = match self.webhook(i) {
            Ok(w) => w.map(std::sync::Arc::new),
            Err(es) => {
                es.into_iter().for_each(|(p, m)| err(p, m));
                return Vec::new();
            }
        };
        let scope = flow::FlowScope {
            queues: &queues,
            calendar: &calendar,
            webhook: webhook.as_ref(),
            prompts,
        };
        let mut ids = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (j, f) in self.flows.iter().enumerate() {
            let place = format!("tenants[{i}].flows[{j}]");
            if !ids.insert(f.id.as_str()) {
                err(
                    format!("{place}.id"),
                    format!("{:?}: unique in the tenant", f.id),
                );
            }
            match flow::compile(&place, f, &scope) {
                Ok(c) => out.push(c),
                Err(es) => es.into_iter().for_each(|(p, m)| err(p, m)),
            }
        }
        out
    }
}

/// A user's credentials as digest HA1 hashes (never the password):
/// `ha1_md5 = hex(MD5(username:realm:password))`, `ha1_sha256 = hex(SHA-256(...))`.
/// `switchyard ha1` computes them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    #[serde(default)]
    pub ha1_md5: Option<String>,
    #[serde(default)]
    pub ha1_sha256: Option<String>,
    /// Narrows the tenant's `outbound` for this user: a route must be in both lists. Unset:
    /// the tenant's list.
    #[serde(default)]
    pub outbound: Option<Vec<String>>,
}

/// Registrar and authentication settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Shorter registrations get 423 with Min-Expires.
    #[serde(default = "default_min_expires")]
    pub min_expires_secs: u32,
    /// Longer registrations are cut to this.
    #[serde(default = "default_max_expires")]
    pub max_expires_secs: u32,
    /// When neither the Expires header nor the contact's parameter says.
    #[serde(default = "default_expires")]
    pub default_expires_secs: u32,
    /// A nonce older than this gets `stale=true`.
    #[serde(default = "default_nonce_ttl")]
    pub nonce_ttl_secs: u32,
    /// Failed authentications in a row before a lock: per source address (any users), and
    /// per user from one source address (never per user alone, so that no one can lock a
    /// user out of its own phone from elsewhere).
    #[serde(default = "default_max_failures")]
    pub max_auth_failures: u32,
    /// How long a lock lasts; a locked source, or a user from that source, gets 403.
    #[serde(default = "default_lock")]
    pub lock_secs: u32,
    /// Challenge INVITEs from a tenant's users (407) before routing them.
    #[serde(default = "default_true")]
    pub authenticate_invites: bool,
    /// Digest algorithms offered in challenges, in order: "SHA-256", "MD5".
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Nonces whose counts are remembered at most (replay protection); when every entry is
    /// still live, a new nonce's first use gets `stale=true` until one expires.
    #[serde(default = "default_max_nonces")]
    pub max_nonces: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// Listen sockets, `udp:IP:PORT` or `tcp:IP:PORT`.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Address written into Via/Contact/Record-Route when listening on 0.0.0.0.
    #[serde(default)]
    pub advertise: Option<std::net::IpAddr>,
    /// Largest accepted message (header + body), bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    #[serde(default = "default_max_tcp")]
    pub max_tcp_connections: usize,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_secs: u64,
    /// Receive sockets (SO_REUSEPORT) per UDP listen address.
    #[serde(default = "default_udp_workers")]
    pub udp_workers: usize,
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// Answer UDP requests at their source port (symmetric responses, for NAT); false is
    /// strict RFC 3261 §18.2.2.
    #[serde(default = "default_true")]
    pub force_rport: bool,
    /// TLS certificate chain (PEM) for `tls:` listeners.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `tls:` listeners.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Certificates (PEM) trusted for outbound TLS (B legs to `;transport=tls` targets),
    /// besides this node's own certificate.
    #[serde(default)]
    pub tls_ca: Vec<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// The node's bearer token: every API route but `/health` and `/metrics` needs it or a
    /// tenant's token. At least 32 characters. Unset: one is generated into
    /// `data_dir/api-token` at first start (and printed), and read from there afterwards.
    #[serde(default)]
    pub token: Option<String>,
    /// TLS certificate chain (PEM): with `tls_key`, the API listener speaks HTTPS only.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// RFC 3261 timer bases (milliseconds).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersConfig {
    #[serde(default = "default_t1")]
    pub t1_ms: u64,
    #[serde(default = "default_t2")]
    pub t2_ms: u64,
    #[serde(default = "default_t4")]
    pub t4_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsConfig {
    /// Longest call, seconds (0 = no limit).
    #[serde(default = "default_max_duration")]
    pub max_duration_secs: u64,
    /// Time the callee may ring before the call is given up, seconds.
    #[serde(default = "default_no_answer")]
    pub no_answer_timeout_secs: u64,
    /// How often queue statistics are snapshotted into the store (`queue_stats` table).
    #[serde(default = "default_queue_stats")]
    pub queue_stats_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Concurrent calls at most.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// New calls per second (token bucket rate; 0 = unlimited).
    #[serde(default = "default_cps")]
    pub cps: u32,
    /// Token bucket depth (0 = one second's worth).
    #[serde(default)]
    pub cps_burst: u32,
    /// New calls per second from one source IP that is neither a trusted peer nor a trunk
    /// gateway (0 = off).
    #[serde(default = "default_per_source_cps")]
    pub per_source_cps: u32,
    /// Seconds in Retry-After of a 503.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
}

/// The edge (`[security]`): who is shut out before the switch spends work on them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Trusted peers (`"CIDR"` or a bare address): their calls may use every static route,
    /// as a trunk gateway's may use numbers and users, and they are exempt from per-source
    /// limits. The trunks' gateway addresses are added to these by themselves.
    #[serde(default)]
    pub trusted: Vec<String>,
    /// Flood defence: request density per source, bans, connections per source.
    #[serde(default)]
    pub flood: FloodConfig,
    /// Scanner defence: requests from known scanners' User-Agents.
    #[serde(default)]
    pub scanners: ScannerConfig,
}

/// `[security.flood]`: Kamailio `pike`'s density check with bans (on by default).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The sliding window, seconds (pike's `sampling_time_unit`).
    #[serde(default = "default_flood_window")]
    pub window_secs: u64,
    /// Messages per window one source may send (pike's `reqs_density_per_unit`).
    #[serde(default = "default_flood_limit")]
    pub limit: u32,
    /// The first ban's length, seconds; each repeat doubles it.
    #[serde(default = "default_ban_secs")]
    pub ban_secs: u64,
    /// The longest ban, seconds; a source is remembered this long after its ban ends.
    #[serde(default = "default_max_ban_secs")]
    pub max_ban_secs: u64,
    /// Addresses or CIDRs never banned nor capped (besides trusted peers and trunk gateways).
    #[serde(default)]
    pub exempt: Vec<String>,
    /// NAT gateways carrying many phones: `nat_limit` instead of `limit`, no scanner bans,
    /// no connection cap.
    #[serde(default)]
    pub nat_gateways: Vec<String>,
    #[serde(default = "default_nat_limit")]
    pub nat_limit: u32,
    /// Sources tracked at most (least recently seen evicted first).
    #[serde(default = "default_edge_table")]
    pub max_sources: usize,
    /// Bans held at most (least recently hit evicted first).
    #[serde(default = "default_edge_table")]
    pub max_bans: usize,
    /// Concurrent inbound TCP/TLS connections per source (0: no cap).
    #[serde(default = "default_conns_per_source")]
    pub max_connections_per_source: u32,
}

/// `[security.scanners]`: Kamailio `secfilter`'s User-Agent list (on by default).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Case-insensitive substrings of scanners' User-Agents (replaces the shipped list).
    #[serde(default = "default_scanner_agents")]
    pub user_agents: Vec<String>,
}

impl SecurityConfig {
    /// Checks the section; faults are named `security.…`.
    fn validate(&self, err: &mut impl FnMut(String, String)) {
        let f = &self.flood;
        if !(1..=3600).contains(&f.window_secs) {
            err(
                "security.flood.window_secs".into(),
                "must be between 1 and 3600".into(),
            );
        }
        if f.limit == 0 {
            err("security.flood.limit".into(), "must be > 0".into());
        }
        if f.nat_limit < f.limit {
            err(
                "security.flood.nat_limit".into(),
                "must be at least security.flood.limit".into(),
            );
        }
        if f.ban_secs == 0 || f.max_ban_secs < f.ban_secs {
            err(
                "security.flood.ban_secs".into(),
                "need 0 < ban_secs <= max_ban_secs".into(),
            );
        }
        if f.max_ban_secs > 30 * 86_400 {
            err(
                "security.flood.max_ban_secs".into(),
                "at most 30 days (2592000)".into(),
            );
        }
        for (key, n) in [("max_sources", f.max_sources), ("max_bans", f.max_bans)] {
            if !(1..=10_000_000).contains(&n) {
                err(
                    format!("security.flood.{key}"),
                    "must be between 1 and 10000000".into(),
                );
            }
        }
        for (key, list) in [("exempt", &f.exempt), ("nat_gateways", &f.nat_gateways)] {
            for (i, net) in list.iter().enumerate() {
                if let Err(e) = crate::security::parse_net(net) {
                    err(format!("security.flood.{key}[{i}]"), e);
                }
            }
        }
        for (i, ua) in self.scanners.user_agents.iter().enumerate() {
            if ua.trim().is_empty() {
                err(
                    format!("security.scanners.user_agents[{i}]"),
                    "an empty pattern would match every request".into(),
                );
            }
        }
    }

    /// The flood defence's settings (call after `validate`).
    pub fn flood_settings(&self) -> crate::security::FloodSettings {
        let f = &self.flood;
        let nets = |list: &[String]| {
            list.iter()
                .filter_map(|n| crate::security::parse_net(n).ok())
                .collect()
        };
        crate::security::FloodSettings {
            enabled: f.enabled,
            window: Duration::from_secs(f.window_secs),
            limit: f.limit,
            ban: Duration::from_secs(f.ban_secs),
            max_ban: Duration::from_secs(f.max_ban_secs),
            exempt: nets(&f.exempt),
            nat_gateways: nets(&f.nat_gateways),
            nat_limit: f.nat_limit,
            max_sources: f.max_sources,
            max_bans: f.max_bans,
            max_connections_per_source: f.max_connections_per_source,
        }
    }

    /// The scanner defence's settings.
    pub fn scanner_settings(&self) -> crate::security::ScannerSettings {
        crate::security::ScannerSettings {
            enabled: self.scanners.enabled,
            user_agents: self.scanners.user_agents.clone(),
        }
    }
}

fn default_flood_window() -> u64 {
    2
}
fn default_flood_limit() -> u32 {
    30
}
fn default_ban_secs() -> u64 {
    60
}
fn default_max_ban_secs() -> u64 {
    3600
}
fn default_nat_limit() -> u32 {
    300
}
fn default_edge_table() -> usize {
    65_536
}
fn default_conns_per_source() -> u32 {
    32
}
fn default_scanner_agents() -> Vec<String> {
    crate::security::scanners::DEFAULT_USER_AGENTS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A stable name for the route in the API (`/routes/{id}`); the prefix when not given.
    #[serde(default)]
    pub id: Option<String>,
    /// Request-URI user prefix ("" matches everything).
    #[serde(default)]
    pub prefix: String,
    /// Where the B leg goes: `sip:HOST:PORT[;transport=tcp]` (or `trunks` instead).
    #[serde(default)]
    pub target: String,
    /// A trunk group instead of a target: these trunks (by id), ordered per call by `policy`,
    /// tried in turn on failover causes (503, 500, timeout, ...).
    #[serde(default)]
    pub trunks: Vec<String>,
    /// How the group's trunks are ordered: `priority`, `weighted-round-robin`,
    /// `least-cost`, `answer-rate`, `quality`, or `{ weighted = { asr, quality, cost } }`.
    #[serde(default = "default_policy")]
    pub policy: crate::routing::trunks::Policy,
    /// The most trunks one call tries.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
    /// Digits removed from the start of the user before dialling.
    #[serde(default)]
    pub strip: usize,
    /// Digits put in front of the user (after stripping).
    #[serde(default)]
    pub prepend: String,
    /// `pass` (SDP untouched) or `anchor` (audio relayed by the switch).
    #[serde(default)]
    pub media: MediaMode,
    /// Record calls on this route (anchors their media).
    #[serde(default)]
    pub record: bool,
    /// Calls arriving from a trunk's gateway may take this route (a carrier's call sent out
    /// again through a trunk, or on to a target). Off: such calls reach numbers and users
    /// only.
    #[serde(default)]
    pub from_trunks: bool,
}

impl RouteConfig {
    /// The route's stable id: `id`, else its prefix, else `default` (the catch-all route).
    pub fn key(&self) -> &str {
        match (&self.id, self.prefix.as_str()) {
            (Some(id), _) => id,
            (None, "") => "default",
            (None, prefix) => prefix,
        }
    }
}

/// A carrier's SIP trunk (one gateway or several, tried in turn per attempt).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Stable id (letters, digits, '-', '_').
    pub id: String,
    /// Gateway addresses, `sip:IP:PORT[;transport=udp|tcp|tls]`; calls rotate over them.
    pub gateways: Vec<String>,
    /// Concurrent calls at most (0: unlimited).
    #[serde(default)]
    pub max_channels: u32,
    /// Call attempts per second at most (0: unlimited).
    #[serde(default)]
    pub max_cps: u32,
    /// Lower first under the `priority` policy, and the tie-break of the others.
    #[serde(default = "one")]
    pub priority: u32,
    /// Share under `weighted-round-robin`.
    #[serde(default = "one")]
    pub weight: u32,
    /// No response at all (not even 100 Trying) within this time: fail over.
    #[serde(default = "default_invite_timeout")]
    pub invite_timeout_ms: u64,
    /// OPTIONS probe interval (0: no probes; the trunk then comes back up on its own after
    /// `down_hold_secs`).
    #[serde(default = "default_probe_interval")]
    pub probe_interval_secs: u64,
    /// How long a trunk taken down by failed calls stays down before good probes count
    /// (doubling when it falls again soon after coming back); with probes off, it comes
    /// back by itself after this.
    #[serde(default = "default_down_hold")]
    pub down_hold_secs: u64,
    #[serde(default = "default_failed_probes")]
    pub down_after_failed_probes: u32,
    #[serde(default = "default_failed_calls")]
    pub down_after_failed_calls: u32,
    #[serde(default = "default_good_probes")]
    pub up_after_good_probes: u32,
    /// Digits removed from the dialled number for this carrier, then `prefix` put in front.
    #[serde(default)]
    pub strip: usize,
    #[serde(default)]
    pub prefix: String,
    /// Per-minute rates by destination prefix (least-cost routing and CDR cost).
    #[serde(default)]
    pub costs: Vec<crate::routing::trunks::CostEntry>,
    /// Digest credentials for the carrier's 401/407 challenges (the switch's own account
    /// with the carrier, so a password, not an HA1).
    #[serde(default)]
    pub auth_username: Option<String>,
    #[serde(default)]
    pub auth_password: Option<String>,
    /// Caller-ID presented to this carrier: the From user is replaced by it.
    #[serde(default)]
    pub caller_id: Option<String>,
    /// `pass` or `anchor`: calls through this trunk have their media anchored (RTCP quality
    /// then feeds the trunk's quality score).
    #[serde(default)]
    pub media: MediaMode,
    /// The switch REGISTERs `auth_username` with the carrier (at the first gateway) and
    /// keeps the binding fresh; while it is not registered the trunk is down.
    #[serde(default)]
    pub register: bool,
    /// The binding asked for (a registrar's 423 raises it), 60 to 86400 seconds.
    #[serde(default = "default_register_expires")]
    pub register_expires_secs: u32,
    /// The registrar's domain (Request-URI, To and From of the REGISTER); the first
    /// gateway's address when not set.
    #[serde(default)]
    pub register_domain: Option<String>,
}

fn default_register_expires() -> u32 {
    3600
}

/// Trunk alarms (answer-rate deviation, failure streaks, down/up, saturation): each is logged,
/// counted, and POSTed as JSON to `webhook_url` when one is set.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlarmsConfig {
    /// `http://host[:port]/path` (https is not supported yet). None: log and count only.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Raise when a trunk's answer rate leaves its own baseline by more than this (ASR
    /// points, 0..1).
    #[serde(default = "default_asr_deviation")]
    pub asr_deviation: f64,
    /// Answer rates backed by fewer calls are ignored (no baseline, no alarm).
    #[serde(default = "default_asr_min_calls")]
    pub asr_min_calls: u64,
    /// Raise after this many calls in a row failed over.
    #[serde(default = "default_failure_streak")]
    pub failure_streak: u32,
}

fn default_asr_deviation() -> f64 {
    0.2
}
fn default_asr_min_calls() -> u64 {
    30
}
fn default_failure_streak() -> u32 {
    10
}

fn default_policy() -> crate::routing::trunks::Policy {
    crate::routing::trunks::Policy::Priority
}
fn default_max_attempts() -> usize {
    3
}
fn default_invite_timeout() -> u64 {
    3000
}
fn default_probe_interval() -> u64 {
    10
}
fn default_down_hold() -> u64 {
    30
}
fn default_failed_probes() -> u32 {
    3
}
fn default_failed_calls() -> u32 {
    5
}
fn default_good_probes() -> u32 {
    3
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_listen() -> Vec<String> {
    vec![
        "udp:0.0.0.0:5060".into(),
        "tcp:0.0.0.0:5060".into(),
        "tls:0.0.0.0:5061".into(),
    ]
}
fn default_max_message() -> usize {
    65_535
}
fn default_max_tcp() -> usize {
    10_000
}
fn default_tcp_idle() -> u64 {
    900
}
fn default_udp_workers() -> usize {
    1
}
fn default_user_agent() -> String {
    format!("Switchyard/{}", env!("CARGO_PKG_VERSION"))
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    7200
}
fn default_expires() -> u32 {
    3600
}
fn default_nonce_ttl() -> u32 {
    300
}
fn default_max_failures() -> u32 {
    10
}
fn default_lock() -> u32 {
    300
}
fn default_algorithms() -> Vec<String> {
    vec!["SHA-256".into(), "MD5".into()]
}
fn default_true() -> bool {
    true
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_t1() -> u64 {
    500
}
fn default_t2() -> u64 {
    4000
}
fn default_t4() -> u64 {
    5000
}
fn default_max_duration() -> u64 {
    4 * 3600
}
fn default_no_answer() -> u64 {
    60
}
fn default_max_calls() -> usize {
    20_000
}
fn default_cps() -> u32 {
    1000
}
fn default_per_source_cps() -> u32 {
    10
}
fn default_max_nonces() -> usize {
    500_000
}
fn default_retry_after() -> u32 {
    5
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("defaults deserialize")
            }
        }
    )*};
}
default_from_serde!(
    SipConfig,
    HttpConfig,
    TimersConfig,
    CallsConfig,
    AdmissionConfig,
    RegistrarConfig,
    AlarmsConfig,
    SecurityConfig,
    FloodConfig,
    ScannerConfig,
    Config
);

/// A fault in the configuration and where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct ConfigError {
    /// A key path such as `routes[2].target`, or `line L, column C` for syntax errors.
    pub place: String,
    pub message: String,
}

impl Config {
    /// Parses TOML text; syntax and type errors carry their line and column.
    pub fn from_toml(text: &str) -> Result<Config, Vec<ConfigError>> {
        toml::from_str::<Config>(text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                    format!("line {line}, column {col}")
                }
                None => "config".into(),
            };
            vec![ConfigError {
                place,
                message: e.message().to_string(),
            }]
        })
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                place: path.display().to_string(),
                message: e.to_string(),
            }]
        })?;
        let config = Config::from_toml(&text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that serde cannot; all faults are returned, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |place: String, message: String| errors.push(ConfigError { place, message });
        if self.sip.listen.is_empty() {
            err(
                "sip.listen".into(),
                "at least one listen socket is needed".into(),
            );
        }
        for (i, l) in self.sip.listen.iter().enumerate() {
            if let Err(e) = l.parse::<ListenSpec>() {
                err(format!("sip.listen[{i}]"), e);
            }
        }
        if !(1024..=1_048_576).contains(&self.sip.max_message_bytes) {
            err(
                "sip.max_message_bytes".into(),
                "must be between 1024 and 1048576".into(),
            );
        }
        if self.sip.udp_workers == 0 || self.sip.udp_workers > 64 {
            err("sip.udp_workers".into(), "must be between 1 and 64".into());
        }
        if self.timers.t1_ms == 0 || self.timers.t2_ms < self.timers.t1_ms {
            err(
                "timers".into(),
                "t1_ms must be > 0 and t2_ms >= t1_ms".into(),
            );
        }
        if self.timers.t4_ms == 0 {
            err("timers.t4_ms".into(), "must be > 0".into());
        }
        if self.calls.no_answer_timeout_secs == 0 {
            err("calls.no_answer_timeout_secs".into(), "must be > 0".into());
        }
        if self.admission.max_calls == 0 {
            err("admission.max_calls".into(), "must be > 0".into());
        }
        let mut prefixes = std::collections::HashSet::new();
        let mut route_ids = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            // The id names the route in the API path and in etcd keys. A route without one
            // is named by its prefix, whose clash is reported as the prefix's.
            let id = r.key();
            let clash = !route_ids.insert(id) && r.id.is_some();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+*#-._".contains(c))
                || clash
            {
                err(
                    format!("routes[{i}].id"),
                    format!("{id:?}: letters, digits, + * # - . _ only, unique"),
                );
            }
            if r.trunks.is_empty() {
                if let Err(e) = RouteTarget::parse(&r.target) {
                    err(format!("routes[{i}].target"), e);
                }
            } else {
                if !r.target.is_empty() {
                    err(
                        format!("routes[{i}].target"),
                        "a route has a target or trunks, not both".into(),
                    );
                }
                for t in &r.trunks {
                    if !self.trunks.iter().any(|x| &x.id == t) {
                        err(format!("routes[{i}].trunks"), format!("no trunk {t:?}"));
                    }
                }
                if r.max_attempts == 0 {
                    err(format!("routes[{i}].max_attempts"), "must be > 0".into());
                }
            }
            if !r
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+*#-._".contains(c))
            {
                err(
                    format!("routes[{i}].prefix"),
                    format!("{:?} has characters a user part cannot have", r.prefix),
                );
            }
            if !prefixes.insert(r.prefix.as_str()) {
                err(
                    format!("routes[{i}].prefix"),
                    format!("prefix {:?} is already routed", r.prefix),
                );
            }
        }
        if (self.sip.tls_cert.is_some()) != (self.sip.tls_key.is_some()) {
            err(
                "sip.tls_cert".into(),
                "tls_cert and tls_key go together".into(),
            );
        }
        self.validate_api_tokens(&mut err);
        let r = &self.registrar;
        if r.min_expires_secs == 0 || r.min_expires_secs > r.max_expires_secs {
            err(
                "registrar".into(),
                "need 0 < min_expires_secs <= max_expires_secs".into(),
            );
        }
        if !(r.min_expires_secs..=r.max_expires_secs).contains(&r.default_expires_secs) {
            err(
                "registrar.default_expires_secs".into(),
                "must lie between min and max".into(),
            );
        }
        if r.algorithms.is_empty() {
            err(
                "registrar.algorithms".into(),
                "offer at least one of \"SHA-256\", \"MD5\"".into(),
            );
        }
        for (i, a) in r.algorithms.iter().enumerate() {
            if crate::sip::auth::Algorithm::from_token(a.as_bytes()).is_none() {
                err(
                    format!("registrar.algorithms[{i}]"),
                    format!("{a:?}: \"SHA-256\" or \"MD5\""),
                );
            }
        }
        if r.nonce_ttl_secs == 0 || r.max_auth_failures == 0 || r.max_nonces == 0 {
            err(
                "registrar".into(),
                "nonce_ttl_secs, max_auth_failures and max_nonces must be > 0".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        let mut domains = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.id.is_empty()
                || !t
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                err(
                    format!("tenants[{i}].id"),
                    format!("{:?}: letters, digits, '-' and '_' only", t.id),
                );
            }
            if !ids.insert(t.id.as_str()) {
                err(
                    format!("tenants[{i}].id"),
                    format!("{:?} is used twice", t.id),
                );
            }
            if t.domain.is_empty() || !crate::sip::uri::is_valid_host(t.domain.as_bytes()) {
                err(
                    format!("tenants[{i}].domain"),
                    format!("{:?} is not a host name", t.domain),
                );
            }
            if !domains.insert(t.domain.to_ascii_lowercase()) {
                err(
                    format!("tenants[{i}].domain"),
                    format!("{:?} belongs to another tenant", t.domain),
                );
            }
            let mut users = std::collections::HashSet::new();
            for (j, u) in t.users.iter().enumerate() {
                let place = format!("tenants[{i}].users[{j}]");
                if u.username.is_empty() || !users.insert(u.username.as_str()) {
                    err(
                        place.clone(),
                        format!("username {:?} is empty or used twice", u.username),
                    );
                }
                if u.ha1_md5.is_none() && u.ha1_sha256.is_none() {
                    err(place.clone(), "needs ha1_md5 or ha1_sha256".into());
                }
                if u.ha1_md5.as_ref().is_some_and(|h| !is_hex(h, 32)) {
                    err(format!("{place}.ha1_md5"), "must be 32 hex digits".into());
                }
                if u.ha1_sha256.as_ref().is_some_and(|h| !is_hex(h, 64)) {
                    err(
                        format!("{place}.ha1_sha256"),
                        "must be 64 hex digits".into(),
                    );
                }
            }
        }
        let m = &self.media;
        match m.port_range() {
            Some((a, b)) if b - a >= 3 => {}
            _ => err(
                "media.rtp_ports".into(),
                format!(
                    "{:?}: FIRST-LAST with 1024 <= FIRST, at least 4 ports",
                    m.rtp_ports
                ),
            ),
        }
        if m.relay_threads == 0 || m.relay_threads > 64 {
            err("media.relay_threads".into(), "1 to 64".into());
        }
        for (id, spec) in &m.recording_keys {
            let ok_id = !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            let ok_spec = spec
                .strip_prefix("hex:")
                .map(|h| is_hex(h, 64))
                .or_else(|| spec.strip_prefix("file:").map(|p| !p.is_empty()))
                .or_else(|| spec.strip_prefix("env:").map(|v| !v.is_empty()))
                .unwrap_or(false);
            if !ok_id || !ok_spec {
                err(
                    format!("media.recording_keys.{id}"),
                    "id of letters, digits, '-', '_'; value hex:<64 hex>, file:<path> or env:<VAR>"
                        .into(),
                );
            }
        }
        if let Some(k) = &m.recording_key {
            if !m.recording_keys.contains_key(k) {
                err(
                    "media.recording_key".into(),
                    format!("{k:?} is not in media.recording_keys"),
                );
            }
        }
        let mut trunk_ids = std::collections::HashSet::new();
        for (i, t) in self.trunks.iter().enumerate() {
            let place = format!("trunks[{i}]");
            if t.id.is_empty()
                || !t
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                || !trunk_ids.insert(t.id.as_str())
            {
                err(
                    format!("{place}.id"),
                    format!("{:?}: letters, digits, '-', '_', unique", t.id),
                );
            }
            if t.gateways.is_empty() {
                err(format!("{place}.gateways"), "at least one gateway".into());
            }
            for (j, g) in t.gateways.iter().enumerate() {
                if let Err(e) = RouteTarget::parse(g) {
                    err(format!("{place}.gateways[{j}]"), e);
                }
            }
            if let Err(e) = crate::routing::trunks::CostTable::new(t.costs.clone()) {
                err(format!("{place}.costs"), e.to_string());
            }
            if t.register && (t.auth_username.is_none() || t.auth_password.is_none()) {
                err(
                    format!("{place}.register"),
                    "registration needs auth_username and auth_password".into(),
                );
            }
            if !(60..=86_400).contains(&t.register_expires_secs) {
                err(
                    format!("{place}.register_expires_secs"),
                    "60 to 86400 seconds".into(),
                );
            }
            if let Some(d) = &t.register_domain {
                if d.is_empty()
                    || !d
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
                {
                    err(
                        format!("{place}.register_domain"),
                        format!("{d:?}: a host name or address"),
                    );
                }
            }
            if t.invite_timeout_ms == 0
                || t.down_after_failed_probes == 0
                || t.down_after_failed_calls == 0
                || t.up_after_good_probes == 0
            {
                err(
                    place.clone(),
                    "invite_timeout_ms and the health thresholds must be > 0".into(),
                );
            }
        }
        let a = &self.alarms;
        if let Some(url) = &a.webhook_url {
            // Only plain HTTP is spoken by the webhook sender; say so before start.
            let host = url
                .strip_prefix("http://")
                .map(|r| r.split('/').next().unwrap_or(""));
            match host {
                None if url.starts_with("https://") => err(
                    "alarms.webhook_url".into(),
                    "https is not supported yet: use http://".into(),
                ),
                None => err(
                    "alarms.webhook_url".into(),
                    format!("{url:?}: must start with http://"),
                ),
                Some(h) if h.is_empty() || h.contains(['@', ' ', '?', '#']) => err(
                    "alarms.webhook_url".into(),
                    format!("{url:?}: needs a host[:port] and no user info"),
                ),
                Some(_) => {}
            }
        }
        if !(a.asr_deviation > 0.0 && a.asr_deviation < 1.0) {
            err(
                "alarms.asr_deviation".into(),
                "must lie between 0 and 1 (exclusive)".into(),
            );
        }
        if a.asr_min_calls == 0 || a.failure_streak == 0 {
            err(
                "alarms".into(),
                "asr_min_calls and failure_streak must be > 0".into(),
            );
        }
        let mut numbers = std::collections::HashSet::new();
        let prompts = self.tenants.iter().any(|t| !t.flows.is_empty()).then(|| {
            let dir =
                (self.media.prompts_dir.clone()).unwrap_or_else(crate::media::prompts::default_dir);
            flow::known_prompts(&dir, &self.media.tts)
        });
        for (i, t) in self.tenants.iter().enumerate() {
            validate_contact_centre(i, t, &mut numbers, &mut err);
            // Also without flows: the tenant's time zone, holidays and webhook are checked.
            t.compile_flows(i, prompts.as_ref(), &mut err);
        }
        self.security.validate(&mut err);
        self.validate_edge(&mut err);
        self.risk.validate(&mut err);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The API's tokens: `http.token` and every tenant's `api_token` at least
    /// [`crate::store::tokens::MIN_TOKEN_LEN`] characters of printable ASCII, none used twice;
    /// `http.tls_cert` and `http.tls_key` together.
    fn validate_api_tokens(&self, err: &mut impl FnMut(String, String)) {
        let rule = format!(
            "at least {} characters of printable ASCII without spaces (e.g. `openssl rand -hex 32`)",
            crate::store::tokens::MIN_TOKEN_LEN
        );
        if self
            .http
            .token
            .as_deref()
            .is_some_and(|t| !crate::store::tokens::is_valid_token(t))
        {
            err("http.token".into(), rule.clone());
        }
        let mut seen: Vec<&str> = self.http.token.iter().map(String::as_str).collect();
        for (i, t) in self.tenants.iter().enumerate() {
            let Some(token) = t.api_token.as_deref() else {
                continue;
            };
            if !crate::store::tokens::is_valid_token(token) {
                err(format!("tenants[{i}].api_token"), rule.clone());
            } else if seen.contains(&token) {
                err(
                    format!("tenants[{i}].api_token"),
                    "is the node's or another tenant's token".into(),
                );
            }
            seen.push(token);
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            err(
                "http.tls_cert".into(),
                "tls_cert and tls_key go together".into(),
            );
        }
    }

    /// `[security]` and who may dial out where: trusted peers parse as CIDRs, and every
    /// route a tenant's or a user's `outbound` names exists (by id, else prefix).
    fn validate_edge(&self, err: &mut impl FnMut(String, String)) {
        for (i, c) in self.security.trusted.iter().enumerate() {
            if let Err(e) = crate::security::trust::parse_cidr(c) {
                err(format!("security.trusted[{i}]"), e);
            }
        }
        let routes: std::collections::HashSet<&str> =
            self.routes.iter().map(RouteConfig::key).collect();
        let mut check = |place: String, list: &[String]| {
            for (k, id) in list.iter().enumerate() {
                if !routes.contains(id.as_str()) {
                    err(format!("{place}[{k}]"), format!("no route {id:?}"));
                }
            }
        };
        for (i, t) in self.tenants.iter().enumerate() {
            check(format!("tenants[{i}].outbound"), &t.outbound);
            for (j, u) in t.users.iter().enumerate() {
                if let Some(list) = &u.outbound {
                    check(format!("tenants[{i}].users[{j}].outbound"), list);
                }
            }
        }
    }

    /// The listen sockets, parsed (call after `validate`).
    pub fn listen_specs(&self) -> Vec<ListenSpec> {
        self.sip
            .listen
            .iter()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    pub fn timer_config(&self) -> crate::sip::transaction::TimerConfig {
        crate::sip::transaction::TimerConfig {
            t1: Duration::from_millis(self.timers.t1_ms),
            t2: Duration::from_millis(self.timers.t2_ms),
            t4: Duration::from_millis(self.timers.t4_ms),
        }
    }
}

/// `[risk]`: risk rules of outbound calls (see `routing::risk`). The black and white lists
/// are not here: they are managed through the API and kept in the database.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Most entries one list (one scope, black or white) may hold.
    #[serde(default = "default_risk_max_list_entries")]
    pub max_list_entries: usize,
    /// Decisions kept in memory for `GET /risk/decisions` (the newest).
    #[serde(default = "default_risk_decisions_kept")]
    pub decisions_kept: usize,
    /// Rules per tenant.
    #[serde(default)]
    pub tenants: Vec<RiskTenantConfig>,
    /// Frequency caps per route (trunk group), counting every tenant's calls through it.
    #[serde(default)]
    pub routes: Vec<RiskRouteConfig>,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            max_list_entries: default_risk_max_list_entries(),
            decisions_kept: default_risk_decisions_kept(),
            tenants: Vec::new(),
            routes: Vec::new(),
        }
    }
}

fn default_risk_max_list_entries() -> usize {
    100_000
}

fn default_risk_decisions_kept() -> usize {
    1000
}

/// `[[risk.tenants]]`: one tenant's risk rules.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskTenantConfig {
    pub tenant: String,
    /// Tags whose lists (managed by the operator) apply to this tenant too.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The tenant's IANA zone (`Europe/London`): the callee's unless `zones` says otherwise.
    /// Default UTC.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Callees' zones by number prefix (`"1" = "America/New_York"`), longest prefix first.
    #[serde(default)]
    pub zones: std::collections::BTreeMap<String, String>,
    /// Dates (`YYYY-MM-DD`, the callee's) on which no call may be made.
    #[serde(default)]
    pub holidays: Vec<String>,
    /// Forbidden windows (the callee's local time).
    #[serde(default)]
    pub forbidden: Vec<RiskWindowConfig>,
    /// Frequency caps per callee number over this tenant's calls.
    #[serde(default)]
    pub caps: Vec<RiskCapConfig>,
}

/// A forbidden window: `days` (`mon` … `sun`; empty: every day) from `from` to `to`
/// (`HH:MM`, `to` may be `24:00`; `to` before `from` wraps over midnight).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskWindowConfig {
    #[serde(default)]
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
}

impl RiskWindowConfig {
    /// The window, or why it does not parse.
    pub fn window(&self) -> Result<crate::routing::risk::Window, String> {
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let mut days = 0u8;
        for d in &self.days {
            let i = DAYS
                .iter()
                .position(|x| x.eq_ignore_ascii_case(d))
                .ok_or_else(|| format!("{d:?}: one of {}", DAYS.join(", ")))?;
            days |= 1 << i;
        }
        if self.days.is_empty() {
            days = 0x7f;
        }
        let minute = |t: &str| -> Result<u16, String> {
            let bad = || format!("{t:?}: HH:MM from 00:00 to 24:00");
            let (h, m) = t.split_once(':').ok_or_else(bad)?;
            let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if m > 59 || h * 60 + m > 24 * 60 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (from, to) = (minute(&self.from)?, minute(&self.to)?);
        if from == to || from == 24 * 60 {
            return Err("from and to must differ, from before 24:00".into());
        }
        Ok(crate::routing::risk::Window { days, from, to })
    }
}

/// A frequency cap: at most `max` calls to one number within `window` (`1d`, `7d`, `12h`,
/// `30m`; at most 400 days).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskCapConfig {
    pub window: String,
    pub max: u32,
}

/// `[[risk.routes]]`: frequency caps of one route (trunk group), by the route's id.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskRouteConfig {
    pub route: String,
    pub caps: Vec<RiskCapConfig>,
}

/// Seconds of a cap's window: `<n>d`, `<n>h`, `<n>m` or `<n>s`, at most 400 days.
pub fn parse_risk_window(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?}: a number and d, h, m or s (1d, 7d, 12h), at most 400d");
    let t = text.trim();
    let unit = match t.chars().last() {
        Some('d') => 86_400,
        Some('h') => 3_600,
        Some('m') => 60,
        Some('s') => 1,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
    let secs = n.checked_mul(unit).ok_or_else(bad)?;
    if secs == 0 || secs > 400 * 86_400 {
        return Err(bad());
    }
    Ok(secs)
}

impl RiskConfig {
    /// Zones, dates, windows and caps parse; tenants and routes named once.
    fn validate(&self, err: &mut impl FnMut(String, String)) {
        if !(1..=10_000_000).contains(&self.max_list_entries) {
            err(
                "risk.max_list_entries".into(),
                "must be between 1 and 10000000".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.decisions_kept) {
            err(
                "risk.decisions_kept".into(),
                "must be between 1 and 1000000".into(),
            );
        }
        let caps = |place: String, caps: &[RiskCapConfig], err: &mut dyn FnMut(String, String)| {
            for (k, c) in caps.iter().enumerate() {
                if let Err(e) = parse_risk_window(&c.window) {
                    err(format!("{place}[{k}].window"), e);
                }
                if c.max == 0 {
                    err(format!("{place}[{k}].max"), "must be > 0".into());
                }
            }
        };
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let place = format!("risk.tenants[{i}]");
            if t.tenant.is_empty() || !seen.insert(t.tenant.as_str()) {
                err(
                    format!("{place}.tenant"),
                    "a tenant's id, named once".into(),
                );
            }
            for (k, tag) in t.tags.iter().enumerate() {
                if !valid_risk_name(tag) {
                    err(
                        format!("{place}.tags[{k}]"),
                        format!("{tag:?}: 1-64 letters, digits, - _ ."),
                    );
                }
            }
            let zone = |z: &str| {
                jiff::tz::TimeZone::get(z)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            if let Some(z) = &t.time_zone {
                if let Err(e) = zone(z) {
                    err(format!("{place}.time_zone"), e);
                }
            }
            for (p, z) in &t.zones {
                if crate::routing::risk::Entry::parse(p).is_err() {
                    err(format!("{place}.zones.{p}"), "a prefix is digits".into());
                }
                if let Err(e) = zone(z) {
                    err(format!("{place}.zones.{p}"), e);
                }
            }
            for (k, d) in t.holidays.iter().enumerate() {
                if d.parse::<jiff::civil::Date>().is_err() {
                    err(
                        format!("{place}.holidays[{k}]"),
                        format!("{d:?}: YYYY-MM-DD"),
                    );
                }
            }
            for (k, w) in t.forbidden.iter().enumerate() {
                if let Err(e) = w.window() {
                    err(format!("{place}.forbidden[{k}]"), e);
                }
            }
            caps(format!("{place}.caps"), &t.caps, err);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if r.route.is_empty() || !seen.insert(r.route.as_str()) {
                err(
                    format!("risk.routes[{i}].route"),
                    "a route's id, named once".into(),
                );
            }
            caps(format!("risk.routes[{i}].caps"), &r.caps, err);
        }
    }
}

/// A tag's name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn valid_risk_name(name: &str) -> bool {
    valid_conference_id(name)
}

/// Queues, agents and numbers of one tenant.
fn validate_contact_centre<'a>(
    i: usize,
    t: &'a TenantConfig,
    numbers: &mut std::collections::HashSet<&'a str>,
    err: &mut impl FnMut(String, String),
) {
    let valid_id = |id: &str| {
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let mut queues = std::collections::HashSet::new();
    for (j, q) in t.queues.iter().enumerate() {
        let place = format!("tenants[{i}].queues[{j}]");
        if !valid_id(&q.id) || !queues.insert(q.id.as_str()) {
            err(
                format!("{place}.id"),
                format!("{:?}: letters, digits, '-', '_', unique", q.id),
            );
        }
        if q.ring_timeout_secs == 0 || q.max_no_answer == 0 {
            err(
                place.clone(),
                "ring_timeout_secs and max_no_answer must be > 0".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (k, s) in q.supervisors.iter().enumerate() {
            // Users from a CSV file are read later: only the file's own users are checked.
            let known = t.users_csv.is_some() || t.users.iter().any(|u| &u.username == s);
            if s.is_empty() || !known || !seen.insert(s.as_str()) {
                err(
                    format!("{place}.supervisors[{k}]"),
                    format!("{s:?}: a user of this tenant, listed once"),
                );
            }
        }
        for (k, r) in q.required_skills.iter().enumerate() {
            if !(1..=10).contains(&r.level) {
                err(
                    format!("{place}.required_skills[{k}].level"),
                    "must be 1-10".into(),
                );
            }
        }
        for (name, v) in [
            ("overflow_wait", &q.overflow_wait),
            ("overflow_full", &q.overflow_full),
        ] {
            match v.as_deref().map(CcTarget::parse) {
                Some(Err(e)) => err(format!("{place}.{name}"), e),
                Some(Ok(CcTarget::Echo | CcTarget::Music)) => err(
                    format!("{place}.{name}"),
                    "an overflow goes to queue:, user:, number: or status:".into(),
                ),
                _ => {}
            }
        }
    }
    for (j, q) in t.queues.iter().enumerate() {
        for (name, v) in [
            ("overflow_wait", &q.overflow_wait),
            ("overflow_full", &q.overflow_full),
        ] {
            if let Some(Ok(CcTarget::Queue(other))) = v.as_deref().map(CcTarget::parse) {
                if !queues.contains(other.as_str()) || other == q.id {
                    err(
                        format!("tenants[{i}].queues[{j}].{name}"),
                        format!("{other:?} is not another queue of this tenant"),
                    );
                }
            }
        }
    }
    for (j, n) in t.numbers.iter().enumerate() {
        let place = format!("tenants[{i}].numbers[{j}]");
        if n.number.is_empty()
            || !n
                .number
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+*#-._".contains(c))
            || !numbers.insert(n.number.as_str())
        {
            err(
                format!("{place}.number"),
                format!("{:?}: a user part, unique across tenants", n.number),
            );
        }
        match CcTarget::parse(&n.target) {
            Ok(CcTarget::Queue(q)) if !queues.contains(q.as_str()) => {
                err(format!("{place}.target"), format!("no queue {q:?}"))
            }
            Ok(CcTarget::Flow(f)) if !t.flows.iter().any(|x| x.id == f) => {
                err(format!("{place}.target"), format!("no flow {f:?}"))
            }
            Ok(
                CcTarget::Queue(_)
                | CcTarget::User(_)
                | CcTarget::Echo
                | CcTarget::Music
                | CcTarget::Conference(_)
                | CcTarget::Flow(_),
            ) => {}
            Ok(_) => err(
                format!("{place}.target"),
                "a number leads to queue:<id>, user:<name>, flow:<id>, conference:<id>, echo or music".into(),
            ),
            Err(e) => err(format!("{place}.target"), e),
        }
    }
    match t.all_agents() {
        Err(e) => err(format!("tenants[{i}].agents_csv"), e),
        Ok(agents) => {
            let mut ids = std::collections::HashSet::new();
            let mut users = std::collections::HashSet::new();
            for (j, a) in agents.iter().enumerate() {
                let place = format!("tenants[{i}].agents[{j}]");
                if !a.user.is_empty() && !users.insert(a.user.as_str()) {
                    err(
                        format!("{place}.user"),
                        format!("{:?} is already another agent's phone user", a.user),
                    );
                }
                if !valid_id(&a.id) || !ids.insert(a.id.clone()) {
                    err(
                        format!("{place}.id"),
                        format!("{:?}: letters, digits, '-', '_', unique", a.id),
                    );
                }
                if a.user.is_empty() {
                    err(
                        format!("{place}.user"),
                        "the agent's SIP user is needed".into(),
                    );
                }
                for m in &a.queues {
                    if !queues.contains(m.queue.as_str()) {
                        err(format!("{place}.queues"), format!("no queue {:?}", m.queue));
                    }
                }
                if a.skills.values().any(|l| !(1..=10).contains(l)) {
                    err(format!("{place}.skills"), "levels are 1-10".into());
                }
                if !matches!(
                    a.state.as_deref(),
                    None | Some("available") | Some("logged_out")
                ) {
                    err(
                        format!("{place}.state"),
                        "\"available\" or \"logged_out\"".into(),
                    );
                }
            }
        }
    }
}

fn default_announce_secs() -> u64 {
    30
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// A queue: callers wait here for an agent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Id within the tenant (letters, digits, '-', '_').
    pub id: String,
    #[serde(default = "default_strategy")]
    pub strategy: crate::routing::acd::Strategy,
    /// How long an agent's phone rings before the offer goes back to the queue.
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout_secs: u64,
    /// After-call work before the agent is offered the next call (the agent's own setting
    /// wins when it has one).
    #[serde(default)]
    pub wrap_up_secs: u64,
    /// The longest a caller waits before `overflow_wait` (0: no limit).
    #[serde(default)]
    pub max_wait_secs: u64,
    /// The most callers waiting; the next one goes to `overflow_full` (0: no limit).
    #[serde(default)]
    pub max_length: usize,
    /// Where a caller goes after `max_wait_secs`: `queue:<id>`, `user:<name>`,
    /// `number:<n>` or `status:<code>` (default `status:480`).
    #[serde(default)]
    pub overflow_wait: Option<String>,
    /// Where a caller goes when the queue is full (default `status:503`).
    #[serde(default)]
    pub overflow_full: Option<String>,
    /// Whether a caller may join when no agent is logged in (default yes).
    #[serde(default = "yes")]
    pub join_empty: bool,
    /// Whether waiting callers are sent to `overflow_wait` when the last agent logs out.
    #[serde(default)]
    pub leave_empty: bool,
    /// Answered within this many seconds counts toward the service level.
    #[serde(default = "default_service_level")]
    pub service_level_secs: u64,
    /// Skills a caller of this queue needs, with minimum levels.
    #[serde(default)]
    pub required_skills: Vec<crate::routing::acd::Requirement>,
    /// How the required levels relax as the caller waits.
    #[serde(default)]
    pub relax: Vec<crate::routing::acd::Relax>,
    /// Answer the caller on joining (media anchored): the caller hears music and position
    /// announcements while waiting, and the agent is bridged into the call on answer.
    /// Otherwise callers hear ringing (180) until an agent answers.
    #[serde(default)]
    pub answer_first: bool,
    /// Record this queue's calls (anchors their media).
    #[serde(default)]
    pub record: bool,
    /// Seconds between position / estimated-wait announcements (0: none) while answered
    /// callers wait.
    #[serde(default = "default_announce_secs")]
    pub announce_secs: u64,
    /// Consecutive unanswered offers after which an agent goes not-ready ("no-answer").
    #[serde(default = "default_max_no_answer")]
    pub max_no_answer: u32,
    /// Pause before the next offer to an agent that let an offer ring out.
    #[serde(default)]
    pub no_answer_delay_secs: u64,
    /// Pause before the next offer to an agent that rejected one (486/603 from the phone).
    #[serde(default = "default_reject_delay")]
    pub reject_delay_secs: u64,
    /// Pause before the next offer to an agent whose phone was busy (486 Busy Here).
    #[serde(default = "default_busy_delay")]
    pub busy_delay_secs: u64,
    /// The tenant's users who supervise this queue: they may monitor its calls
    /// (`POST /calls/{id}/monitor`: listen, whisper, barge). Empty: nobody may.
    #[serde(default)]
    pub supervisors: Vec<String>,
}

/// An agent: a person with a SIP phone (a tenant user) who answers queue calls.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Id within the tenant.
    pub id: String,
    /// The tenant user whose registered phones ring for this agent.
    pub user: String,
    /// Queues with tier (lower first) and penalty.
    #[serde(default)]
    pub queues: Vec<MembershipConfig>,
    /// Skills with levels 1-10.
    #[serde(default)]
    pub skills: std::collections::BTreeMap<String, u8>,
    /// After-call work, overriding the queue's.
    #[serde(default)]
    pub wrap_up_secs: Option<u64>,
    /// The state at first start: `available` (ready once the phone registers) or
    /// `logged_out`.
    #[serde(default)]
    pub state: Option<String>,
}

/// An agent's membership in a queue.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MembershipConfig {
    pub queue: String,
    #[serde(default = "one")]
    pub tier: u32,
    #[serde(default)]
    pub penalty: u32,
}

/// A number (DID) of a tenant: where calls to it go.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    pub number: String,
    /// `queue:<id>`, `user:<name>`, `echo` (an echo test: the switch answers and sends
    /// every RTP packet back) or `music` (the switch answers and plays music on hold).
    pub target: String,
    /// Caller priority in the queue (higher first).
    #[serde(default)]
    pub priority: u32,
}

/// Where a number, or a queue's overflow, sends a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CcTarget {
    Queue(String),
    User(String),
    Number(String),
    Status(u16),
    /// The switch answers and sends back every RTP packet it receives (numbers only).
    Echo,
    /// The switch answers and plays music on hold (numbers only).
    Music,
    /// The switch answers and puts the caller in the tenant's conference of this id, made
    /// by its first caller (numbers only).
    Conference(String),
    /// The switch answers and runs the tenant's call flow (numbers only).
    Flow(String),
}

/// A conference id: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn valid_conference_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl CcTarget {
    pub fn parse(s: &str) -> Result<CcTarget, String> {
        match s {
            "echo" => return Ok(CcTarget::Echo),
            "music" => return Ok(CcTarget::Music),
            _ => {}
        }
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected kind:value"))?;
        if rest.is_empty() {
            return Err(format!("{s:?}: empty value"));
        }
        match kind {
            "queue" => Ok(CcTarget::Queue(rest.to_string())),
            "user" => Ok(CcTarget::User(rest.to_string())),
            "number" => Ok(CcTarget::Number(rest.to_string())),
            "conference" if valid_conference_id(rest) => Ok(CcTarget::Conference(rest.to_string())),
            "conference" => Err(format!(
                "{s:?}: a conference id is 1-64 letters, digits, - _ or ."
            )),
            "flow" => Ok(CcTarget::Flow(rest.to_string())),
            "status" => match rest.parse::<u16>() {
                Ok(c) if (400..700).contains(&c) => Ok(CcTarget::Status(c)),
                _ => Err(format!("{s:?}: a final failure status 400-699")),
            },
            _ => Err(format!(
                "{s:?}: queue:, user:, number:, flow:, status:, conference:, echo or music"
            )),
        }
    }
}

impl AgentConfig {
    /// Parses one agents CSV line (`id,user,queues,skills,state`); `None` for blank and
    /// comment lines.
    pub fn from_csv_line(line: &str) -> Option<Result<AgentConfig, String>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 2 {
            return Some(Err(format!("{line:?}: need at least id,user")));
        }
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        let mut queues = Vec::new();
        for q in field(2).split('|').filter(|q| !q.is_empty()) {
            let mut parts = q.split(':');
            let queue = parts.next().unwrap_or("").to_string();
            let num = |p: Option<&str>, d: u32| p.map_or(Ok(d), |v| v.parse::<u32>());
            match (num(parts.next(), 1), num(parts.next(), 0)) {
                (Ok(tier), Ok(penalty)) => queues.push(MembershipConfig {
                    queue,
                    tier,
                    penalty,
                }),
                _ => return Some(Err(format!("{q:?}: queue:tier[:penalty]"))),
            }
        }
        let mut skills = std::collections::BTreeMap::new();
        for s in field(3).split('|').filter(|s| !s.is_empty()) {
            match s.split_once(':').map(|(n, l)| (n, l.parse::<u8>())) {
                Some((n, Ok(l))) => {
                    skills.insert(n.to_string(), l);
                }
                _ => return Some(Err(format!("{s:?}: skill:level"))),
            }
        }
        let state = Some(field(4)).filter(|s| !s.is_empty()).map(str::to_string);
        Some(Ok(AgentConfig {
            id: field(0).to_string(),
            user: field(1).to_string(),
            queues,
            skills,
            wrap_up_secs: None,
            state,
        }))
    }
}

impl TenantConfig {
    /// The inline agents plus those of `agents_csv`.
    pub fn all_agents(&self) -> Result<Vec<AgentConfig>, String> {
        let mut out = self.agents.clone();
        if let Some(path) = &self.agents_csv {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("agents_csv {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                if let Some(a) = AgentConfig::from_csv_line(line) {
                    out.push(a.map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?);
                }
            }
        }
        Ok(out)
    }
}

fn default_queue_stats() -> u64 {
    10
}
fn default_strategy() -> crate::routing::acd::Strategy {
    crate::routing::acd::Strategy::LongestIdle
}
fn default_ring_timeout() -> u64 {
    15
}
fn default_service_level() -> u64 {
    20
}
fn default_max_no_answer() -> u32 {
    3
}
fn default_reject_delay() -> u64 {
    10
}
fn default_busy_delay() -> u64 {
    10
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

/// A route's target: where B legs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl RouteTarget {
    /// Parses `sip:IP:PORT[;transport=udp|tcp]` (an IP address: DNS comes with trunks).
    pub fn parse(s: &str) -> Result<RouteTarget, String> {
        let uri = crate::sip::uri::Uri::parse(&bytes::Bytes::copy_from_slice(s.as_bytes()))
            .map_err(|e| format!("{s:?} is not a SIP URI ({e})"))?;
        if !uri.is_sip() {
            return Err(format!("{s:?}: only sip: targets are supported"));
        }
        let host = std::str::from_utf8(&uri.host).unwrap_or("");
        let ip: std::net::IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?}: the host must be an IP address"))?;
        let protocol = match uri.transport() {
            None => Protocol::Udp,
            Some(t) => {
                Protocol::from_token(&t).ok_or_else(|| format!("{s:?}: unknown transport"))?
            }
        };
        Ok(RouteTarget {
            addr: SocketAddr::new(ip, uri.port.unwrap_or(5060)),
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = Config::from_toml("").unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.sip.listen,
            ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060", "tls:0.0.0.0:5061"]
        );
        assert_eq!(c.http.listen.port(), 8080);
        assert!(c.routes.is_empty(), "nothing is routed by default");
        assert_eq!(c.timers.t1_ms, 500);
    }

    #[test]
    fn risk_rules_are_validated_with_their_place() {
        let text = r#"
            [risk]
            max_list_entries = 0
            [[risk.tenants]]
            tenant = "acme"
            tags = ["ok", "not ok"]
            time_zone = "Mars/Olympus"
            zones = { "1x" = "America/New_York" }
            holidays = ["2026-13-01"]
            forbidden = [{ days = ["someday"], from = "09:00", to = "17:00" }, { from = "25:00", to = "01:00" }, { from = "09:00", to = "09:00" }]
            caps = [{ window = "1y", max = 1 }, { window = "1d", max = 0 }, { window = "401d", max = 1 }]
            [[risk.tenants]]
            tenant = "acme"
            [[risk.routes]]
            route = "9"
            caps = [{ window = "0d", max = 1 }]
        "#;
        let errors = Config::from_toml(text).unwrap().validate().unwrap_err();
        let places: Vec<&str> = errors.iter().map(|e| e.place.as_str()).collect();
        for place in [
            "risk.max_list_entries",
            "risk.tenants[0].tags[1]",
            "risk.tenants[0].time_zone",
            "risk.tenants[0].zones.1x",
            "risk.tenants[0].holidays[0]",
            "risk.tenants[0].forbidden[0]",
            "risk.tenants[0].forbidden[1]",
            "risk.tenants[0].forbidden[2]",
            "risk.tenants[0].caps[0].window",
            "risk.tenants[0].caps[1].max",
            "risk.tenants[0].caps[2].window",
            "risk.tenants[1].tenant",
            "risk.routes[0].caps[0].window",
        ] {
            assert!(places.contains(&place), "{place} not in {places:?}");
        }
        assert_eq!(parse_risk_window("7d"), Ok(7 * 86_400));
        assert_eq!(parse_risk_window("12h"), Ok(12 * 3_600));
        let w = RiskWindowConfig {
            days: vec!["Sat".into(), "sun".into()],
            from: "21:00".into(),
            to: "24:00".into(),
        }
        .window()
        .unwrap();
        assert_eq!((w.days, w.from, w.to), (0b110_0000, 21 * 60, 24 * 60));
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("switchyard.example.toml");
        Config::load(&path).unwrap();
    }

    #[test]
    fn unknown_keys_and_syntax_errors_name_their_place() {
        let e =
            Config::from_toml("[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\nbogus = 1\n").unwrap_err();
        assert!(e[0].place.starts_with("line 3"), "{e:?}");
        assert!(e[0].message.contains("bogus"), "{e:?}");
    }

    #[test]
    fn the_edge_is_on_by_default_with_pikes_figures() {
        let c = Config::from_toml("").unwrap();
        let f = c.security.flood_settings();
        assert!(f.enabled && c.security.scanners.enabled);
        assert_eq!((f.window.as_secs(), f.limit), (2, 30));
        assert_eq!((f.ban.as_secs(), f.max_ban.as_secs()), (60, 3600));
        assert!(
            f.exempt.is_empty(),
            "nothing is exempt by default, loopback included"
        );
        assert!(c
            .security
            .scanners
            .user_agents
            .iter()
            .any(|u| u == "friendly-scanner"));
        assert!(!c.fault_injection);
        let c = Config::from_toml(
            "[security.flood]\nlimit = 100\nexempt = [\"10.0.0.0/8\", \"192.0.2.7\"]\n[security.scanners]\nuser_agents = [\"evil\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        let f = c.security.flood_settings();
        assert_eq!(f.limit, 100);
        assert_eq!(f.exempt.len(), 2);
        assert_eq!(c.security.scanner_settings().user_agents, ["evil"]);
    }

    #[test]
    fn edge_faults_name_their_place() {
        let c = Config::from_toml(
            "[security.flood]\nwindow_secs = 0\nlimit = 50\nnat_limit = 10\nban_secs = 600\nmax_ban_secs = 60\nmax_bans = 0\nexempt = [\"10.0.0.0/33\"]\nnat_gateways = [\"gw.example\"]\n[security.scanners]\nuser_agents = [\"\"]\n",
        )
        .unwrap();
        let errs = c.validate().unwrap_err();
        let places: Vec<&str> = errs.iter().map(|e| e.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "security.flood.window_secs",
                "security.flood.nat_limit",
                "security.flood.ban_secs",
                "security.flood.max_bans",
                "security.flood.exempt[0]",
                "security.flood.nat_gateways[0]",
                "security.scanners.user_agents[0]",
            ]
        );
        let e = Config::from_toml("[security.flood]\nlimt = 3\n").unwrap_err();
        assert!(e[0].message.contains("limt"), "{e:?}");
        // The fault-injection hook is for code only: a file cannot switch it on.
        let e = Config::from_toml("fault_injection = true\n").unwrap_err();
        assert!(e[0].message.contains("fault_injection"), "{e:?}");
    }

    #[test]
    fn validation_collects_every_fault() {
        let c = Config::from_toml(
            "[sip]\nlisten = [\"sctp:1.2.3.4:5\"]\n[[routes]]\nprefix = \"1\"\ntarget = \"sip:example.com\"\n[[routes]]\nprefix = \"1\"\ntarget = \"sip:127.0.0.1:5090\"\n",
        )
        .unwrap();
        let errs = c.validate().unwrap_err();
        let places: Vec<&str> = errs.iter().map(|e| e.place.as_str()).collect();
        assert_eq!(
            places,
            ["sip.listen[0]", "routes[0].target", "routes[1].prefix"]
        );
    }

    #[test]
    fn contact_centre_faults_name_their_place() {
        let c = Config::from_toml(
            r#"
[[tenants]]
id = "t"
domain = "t.example"
[[tenants.queues]]
id = "q"
overflow_wait = "queue:nope"
[[tenants.agents]]
id = "a1"
user = "1001"
queues = [{ queue = "other" }]
skills = { english = 11 }
[[tenants.agents]]
id = "a2"
user = "1001"
[[tenants.numbers]]
number = "5000"
target = "queue:missing"
"#,
        )
        .unwrap();
        let errs = c.validate().unwrap_err();
        let places: Vec<&str> = errs.iter().map(|e| e.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "tenants[0].queues[0].overflow_wait",
                "tenants[0].numbers[0].target",
                "tenants[0].agents[0].queues",
                "tenants[0].agents[0].skills",
                "tenants[0].agents[1].user",
            ],
            "{errs:?}"
        );
        assert!(Config::from_toml("[[tenants]]\nid = \"t\"\ndomain = \"d\"\n[[tenants.queues]]\nid = \"q\"\nstrategy = \"fastest\"\n").is_err());
    }

    #[test]
    fn queue_supervisors_are_users_of_the_tenant_listed_once() {
        let with = |list: &str| {
            Config::from_toml(&format!(
                "[[tenants]]\nid = \"t\"\ndomain = \"d\"\n[[tenants.users]]\nusername = \"1009\"\nha1_md5 = \"00000000000000000000000000000000\"\n[[tenants.queues]]\nid = \"q\"\nsupervisors = {list}\n"
            ))
            .unwrap()
            .validate()
        };
        with(r#"["1009"]"#).unwrap();
        with("[]").unwrap();
        for bad in [r#"["1010"]"#, r#"["1009", "1009"]"#, r#"[""]"#] {
            let errs = with(bad).unwrap_err();
            assert!(
                errs.iter()
                    .any(|e| e.place.starts_with("tenants[0].queues[0].supervisors[")),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn trusted_peers_and_outbound_permissions_are_checked() {
        let c = Config::from_toml(
            r#"
[security]
trusted = ["10.0.0.0/8", "192.0.2.7", "not-an-address"]
[[routes]]
prefix = "9"
target = "sip:127.0.0.1:5090"
[[routes]]
id = "intl"
prefix = "00"
target = "sip:127.0.0.1:5090"
from_trunks = true
[[tenants]]
id = "t"
domain = "t.example"
outbound = ["9", "intl", "nope"]
[[tenants.users]]
username = "1001"
ha1_md5 = "00000000000000000000000000000000"
outbound = ["9", "00"]
"#,
        )
        .unwrap();
        assert!(c.routes[1].from_trunks && !c.routes[0].from_trunks);
        let errs = c.validate().unwrap_err();
        let places: Vec<&str> = errs.iter().map(|e| e.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "security.trusted[2]",
                "tenants[0].outbound[2]",
                "tenants[0].users[0].outbound[1]"
            ],
            "{errs:?}"
        );
        let d = Config::from_toml("").unwrap();
        assert!(
            d.security.trusted.is_empty(),
            "nothing is trusted by default"
        );
        assert_eq!(d.admission.per_source_cps, 10);
        assert!(Config::from_toml("[security]\nbogus = 1\n").is_err());
    }

    #[test]
    fn agents_csv_lines() {
        let a = AgentConfig::from_csv_line(
            "a1, 1001, sales:1|support:2:5, english:7|billing:3, available",
        )
        .unwrap()
        .unwrap();
        assert_eq!((a.id.as_str(), a.user.as_str()), ("a1", "1001"));
        assert_eq!(
            a.queues,
            vec![
                MembershipConfig {
                    queue: "sales".into(),
                    tier: 1,
                    penalty: 0
                },
                MembershipConfig {
                    queue: "support".into(),
                    tier: 2,
                    penalty: 5
                },
            ]
        );
        assert_eq!(a.skills.get("english"), Some(&7));
        assert_eq!(a.state.as_deref(), Some("available"));
        assert!(AgentConfig::from_csv_line("# comment").is_none());
        assert!(AgentConfig::from_csv_line("a2,1002,q:x").unwrap().is_err());
        assert!(AgentConfig::from_csv_line("a2,1002,,english:ten")
            .unwrap()
            .is_err());
        assert_eq!(CcTarget::parse("status:486"), Ok(CcTarget::Status(486)));
        assert!(CcTarget::parse("status:200").is_err());
        assert!(CcTarget::parse("trunk:x").is_err());
    }

    #[test]
    fn route_targets() {
        let t = RouteTarget::parse("sip:127.0.0.1:5090;transport=tcp").unwrap();
        assert_eq!(t.protocol, Protocol::Tcp);
        assert_eq!(t.addr.port(), 5090);
        assert_eq!(
            RouteTarget::parse("sip:127.0.0.1").unwrap().addr.port(),
            5060
        );
        assert!(RouteTarget::parse("tel:+123").is_err());
    }
}
