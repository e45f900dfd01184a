//! The configuration file: serde structs, the embedded default, and `validate()`, which
//! runs before anything starts and names the place of each fault.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::transport::{ListenSpec, Protocol};

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
    /// Tenants with their SIP domains and users (agents' SIP accounts).
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub registrar: RegistrarConfig,
}

/// A tenant: a SIP domain and its users. Tenants never see each other's users or bindings.
#[derive(Clone, Debug, Deserialize)]
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
}

impl TenantConfig {
    pub fn realm(&self) -> &str {
        self.realm.as_deref().unwrap_or(&self.domain)
    }
}

/// A user's credentials as digest HA1 hashes (never the password):
/// `ha1_md5 = hex(MD5(username:realm:password))`, `ha1_sha256 = hex(SHA-256(...))`.
/// `switchyard ha1` computes them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    #[serde(default)]
    pub ha1_md5: Option<String>,
    #[serde(default)]
    pub ha1_sha256: Option<String>,
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
    /// Failed authentications in a row (per source IP, or per user) before a lock.
    #[serde(default = "default_max_failures")]
    pub max_auth_failures: u32,
    /// How long a lock lasts; locked sources and users get 403.
    #[serde(default = "default_lock")]
    pub lock_secs: u32,
    /// Challenge INVITEs from a tenant's users (407) before routing them.
    #[serde(default = "default_true")]
    pub authenticate_invites: bool,
    /// Digest algorithms offered in challenges, in order: "SHA-256", "MD5".
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
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
    /// New calls per second from one source IP (0 = off).
    #[serde(default)]
    pub per_source_cps: u32,
    /// Seconds in Retry-After of a 503.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Request-URI user prefix ("" matches everything).
    #[serde(default)]
    pub prefix: String,
    /// Where the B leg goes: `sip:HOST:PORT[;transport=tcp]`.
    pub target: String,
    /// Digits removed from the start of the user before dialling.
    #[serde(default)]
    pub strip: usize,
    /// Digits put in front of the user (after stripping).
    #[serde(default)]
    pub prepend: String,
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
        for (i, r) in self.routes.iter().enumerate() {
            if let Err(e) = RouteTarget::parse(&r.target) {
                err(format!("routes[{i}].target"), e);
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
        if r.nonce_ttl_secs == 0 || r.max_auth_failures == 0 {
            err(
                "registrar".into(),
                "nonce_ttl_secs and max_auth_failures must be > 0".into(),
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
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
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

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
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
