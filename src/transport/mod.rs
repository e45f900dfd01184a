//! SIP transports: UDP sockets, TCP and TLS connections, and where responses go.
//!
//! Each listener owns a receive loop that turns bytes into screened messages and hands
//! them to the [`Handler`] (the router). Sending is synchronous and never blocks the caller:
//! UDP uses a non-blocking send on a socket with a large buffer; TCP and TLS queue the bytes
//! to the connection's writer task.

pub mod listener;
pub mod tcp;
pub mod tls;
pub mod udp;

pub use listener::{Listener, ListenerActor, ListenerArgs, ListenerMsg};

use bytes::Bytes;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use crate::security::EdgeGuard;
use crate::sip::headers::Via;
use crate::sip::message::{HeaderName, Message};
use crate::sip::parse::Limits;
use crate::sip::validate::Passed;

pub const SIP_RECEIVED: &str = "switchyard_sip_messages_received_total";
pub const SIP_SENT: &str = "switchyard_sip_messages_sent_total";
pub const SIP_PARSE_ERRORS: &str = "switchyard_sip_parse_errors_total";
pub const SIP_REJECTED: &str = "switchyard_sip_rejected_total";
pub const SIP_DROPPED: &str = "switchyard_sip_dropped_total";
pub const SEND_ERRORS: &str = "switchyard_sip_send_errors_total";
pub const TCP_CONNECTIONS: &str = "switchyard_tcp_connections";
pub const TCP_ACCEPTED: &str = "switchyard_tcp_connections_accepted_total";
pub const TCP_REFUSED: &str = "switchyard_tcp_connections_refused_total";
pub const KEEPALIVES: &str = "switchyard_sip_keepalives_total";
pub const TLS_CONNECTIONS: &str = "switchyard_tls_connections";
pub const TLS_HANDSHAKES: &str = "switchyard_tls_handshakes_total";
/// Counter, label `where` (`udp`, `tcp`, `tls`): panics caught while handling one message.
pub const PANICS: &str = "switchyard_panics_total";

/// How often the edge's ban table is swept (ended bans leave the gauge).
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Describes the transport metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        SIP_RECEIVED,
        "SIP messages received, by transport and method or status class"
    );
    describe_counter!(
        SIP_SENT,
        "SIP messages sent, by transport and method or status class"
    );
    describe_counter!(
        SIP_PARSE_ERRORS,
        "Received bytes that did not parse as SIP, by fault"
    );
    describe_counter!(
        SIP_REJECTED,
        "Requests answered statelessly with an error, by status and fault"
    );
    describe_counter!(SIP_DROPPED, "Messages dropped without an answer, by reason");
    describe_counter!(SEND_ERRORS, "SIP sends that failed, by transport");
    describe_gauge!(
        TCP_CONNECTIONS,
        "Open TCP connections (plain; TLS ones are counted apart)"
    );
    describe_counter!(TCP_ACCEPTED, "TCP connections accepted (plain)");
    describe_counter!(
        TCP_REFUSED,
        "TCP and TLS connections refused because the shared limit was reached, by transport"
    );
    describe_gauge!(
        TLS_CONNECTIONS,
        "Open TLS connections, in handshake or established"
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes by side (inbound, outbound) and result (ok, failed, timeout)"
    );
    describe_counter!(KEEPALIVES, "CRLF keep-alives received on streams");
    describe_counter!(
        PANICS,
        "Panics caught while handling one received message (the message is dropped, the receive loop goes on), by where"
    );
}

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
    Tls,
}

impl Protocol {
    /// The `;transport=` URI parameter that names this transport ("" for UDP, the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Protocol::Udp => "",
            Protocol::Tcp => ";transport=tcp",
            Protocol::Tls => ";transport=tls",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
        }
    }

    /// The Via transport token.
    pub fn via_token(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
        }
    }

    pub fn is_reliable(self) -> bool {
        !matches!(self, Protocol::Udp)
    }

    /// From a Via transport token or a URI `transport=` value.
    pub fn from_token(t: &[u8]) -> Option<Protocol> {
        if t.eq_ignore_ascii_case(b"udp") {
            Some(Protocol::Udp)
        } else if t.eq_ignore_ascii_case(b"tcp") {
            Some(Protocol::Tcp)
        } else if t.eq_ignore_ascii_case(b"tls") {
            Some(Protocol::Tls)
        } else {
            None
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listen socket as given on the command line: `udp:IP:PORT`, `tcp:IP:PORT` or
/// `tls:IP:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, addr) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected PROTO:IP:PORT"))?;
        let protocol = Protocol::from_token(proto.as_bytes())
            .ok_or_else(|| format!("{s:?}: unknown transport {proto:?} (udp, tcp or tls)"))?;
        let addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ListenSpec { protocol, addr })
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol, self.addr)
    }
}

/// Identifies one stream (TCP or TLS) connection for its lifetime.
pub type ConnId = u64;

/// Where a message came from: enough to answer it and to reach the sender again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub protocol: Protocol,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The connection it arrived on (stream transports).
    pub conn: Option<ConnId>,
}

/// A message and where it came from. The transports hand the handler an
/// `Inbound<Passed>` (a request with its screened From/To/Call-ID/CSeq, or a response);
/// the actors it reaches take the plain message.
#[derive(Debug)]
pub struct Inbound<M = Message> {
    pub msg: M,
    pub source: Source,
}

impl Inbound<Passed> {
    /// The plain message and its source (what a call or the registrar takes).
    pub fn into_plain(self) -> Inbound {
        Inbound {
            msg: self.msg.into_message(),
            source: self.source,
        }
    }
}

/// Receives every well-formed message. Must not block: it runs on the receive loop.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, inbound: Inbound<Passed>);
}

/// Where to send a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// Prefer this connection (stream transports); a new one is opened if it is gone.
    pub conn: Option<ConnId>,
}

/// Settings shared by all transports.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub limits: Limits,
    pub max_tcp_connections: usize,
    pub tcp_idle_timeout: std::time::Duration,
    /// Receive tasks per UDP listen address (SO_REUSEPORT sockets).
    pub udp_workers: usize,
    /// Socket buffer size for UDP (both directions).
    pub udp_buffer_bytes: usize,
    /// Answer every UDP request at its source port, as if it carried `rport` (symmetric
    /// response routing for NATed phones, like Kamailio's `force_rport()`); off gives strict
    /// RFC 3261 §18.2.2 (the Via sent-by port).
    pub force_rport: bool,
    /// Certificate and key for `tls:` listeners (see [`tls::setup`]); a `tls:` listen
    /// socket without it fails to start.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Whom outbound TLS connections trust; without it, sends to TLS destinations with no
    /// open connection fail (counted as send errors).
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// How long a TLS peer has to finish its handshake.
    pub tls_handshake_timeout: std::time::Duration,
    /// The edge: the pre-parse ban check and density count of every received message, the
    /// scanner check after parsing, connections per source. None: no defence (tests of the
    /// transports alone).
    pub guard: Option<Arc<EdgeGuard>>,
    /// Lets tests break a listener ([`Transports::break_listener`]); never from a file.
    pub fault_injection: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            limits: Limits::default(),
            max_tcp_connections: 10_000,
            tcp_idle_timeout: std::time::Duration::from_secs(900),
            udp_workers: 1,
            udp_buffer_bytes: 4 * 1024 * 1024,
            force_rport: true,
            tls_server: None,
            tls_client: None,
            tls_handshake_timeout: tls::HANDSHAKE_TIMEOUT,
            guard: None,
            fault_injection: false,
        }
    }
}

/// The running transports: a cheap handle to send through any of them.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<Inner>,
}

struct Inner {
    force_rport: bool,
    config: Arc<TransportConfig>,
    udp: Vec<udp::UdpEndpoint>,
    tcp: Arc<tcp::TcpRegistry>,
    tcp_listen: Vec<SocketAddr>,
    tls_listen: Vec<SocketAddr>,
    /// One per receive loop, in bind order.
    listeners: Vec<Arc<Listener>>,
    /// Where received messages go, from [`Transports::set_handler`] on: the router, which
    /// needs the bound transports to exist first (it answers through them).
    handler: OnceLock<Arc<dyn Handler>>,
}

impl Transports {
    /// Binds every listen socket and runs the receive loops as plain tasks (no supervisor):
    /// the transports alone, as tests use them. A node binds ([`Transports::bind`]) and
    /// runs its listeners under its supervision tree instead.
    pub async fn start(
        specs: &[ListenSpec],
        config: TransportConfig,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<Transports> {
        let transports = Transports::bind(specs, config).await?;
        transports.set_handler(handler);
        for l in transports.listeners() {
            l.spawn(transports.clone());
        }
        Ok(transports)
    }

    /// Binds every listen socket; nothing is received until the handler is set and the
    /// listeners run (each a [`ListenerActor`], or [`Transports::start`]'s tasks). Sends
    /// work at once.
    pub async fn bind(
        specs: &[ListenSpec],
        config: TransportConfig,
    ) -> std::io::Result<Transports> {
        let force_rport = config.force_rport;
        let config = Arc::new(config);
        let tcp = tcp::TcpRegistry::new(config.clone());
        let mut udp_eps = Vec::new();
        let mut tcp_listen = Vec::new();
        let mut tls_listen = Vec::new();
        let mut listeners = Vec::new();
        for spec in specs {
            match spec.protocol {
                Protocol::Udp => {
                    let ep = udp::UdpEndpoint::bind(spec.addr, &config)?;
                    for (i, socket) in ep.sockets.iter().enumerate() {
                        let bound = ListenSpec {
                            protocol: Protocol::Udp,
                            addr: ep.local,
                        };
                        let io = listener::Io::Udp(socket.clone());
                        listeners.push(Arc::new(Listener::new(bound, Some(i), io)));
                    }
                    udp_eps.push(ep);
                }
                Protocol::Tcp | Protocol::Tls => {
                    let (local, socket) = tcp.listen(spec.addr, spec.protocol).await?;
                    match spec.protocol {
                        Protocol::Tls => tls_listen.push(local),
                        _ => tcp_listen.push(local),
                    }
                    let bound = ListenSpec {
                        protocol: spec.protocol,
                        addr: local,
                    };
                    let io = listener::Io::Stream(socket);
                    listeners.push(Arc::new(Listener::new(bound, None, io)));
                }
            }
        }
        let transports = Transports {
            inner: Arc::new(Inner {
                force_rport,
                config: config.clone(),
                udp: udp_eps,
                tcp,
                tcp_listen,
                tls_listen,
                listeners,
                handler: OnceLock::new(),
            }),
        };
        transports.inner.tcp.set_transports(&transports);
        if let Some(guard) = &config.guard {
            spawn_sweeper(Arc::downgrade(guard));
        }
        Ok(transports)
    }

    /// Sets where received messages go (once; later calls are ignored).
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        let _ = self.inner.handler.set(handler);
    }

    /// Whether the handler is set (received messages go somewhere).
    pub fn serving(&self) -> bool {
        self.inner.handler.get().is_some()
    }

    pub(crate) fn handler(&self) -> Option<&dyn Handler> {
        self.inner.handler.get().map(|h| h.as_ref())
    }

    /// The receive loops to run, one per bound socket, in bind order.
    pub fn listeners(&self) -> Vec<Arc<Listener>> {
        self.inner.listeners.clone()
    }

    /// Fault injection (only with [`TransportConfig::fault_injection`]): the receive loop of
    /// the listener named `name` ([`Listener::name`]) panics at its next datagram or accepted
    /// connection, outside the per-message isolation, as a bug in the loop would. Whether
    /// such a listener exists.
    pub fn break_listener(&self, name: &str) -> bool {
        if !self.inner.config.fault_injection {
            return false;
        }
        match self.inner.listeners.iter().find(|l| l.name() == name) {
            Some(l) => {
                l.break_next();
                true
            }
            None => false,
        }
    }

    /// The bound addresses (useful with port 0).
    pub fn local_addrs(&self) -> Vec<ListenSpec> {
        let mut v: Vec<ListenSpec> = self
            .inner
            .udp
            .iter()
            .map(|e| ListenSpec {
                protocol: Protocol::Udp,
                addr: e.local,
            })
            .collect();
        v.extend(self.inner.tcp_listen.iter().map(|&addr| ListenSpec {
            protocol: Protocol::Tcp,
            addr,
        }));
        v.extend(self.inner.tls_listen.iter().map(|&addr| ListenSpec {
            protocol: Protocol::Tls,
            addr,
        }));
        v
    }

    /// The local address to advertise (Via / Contact / Record-Route) for a protocol.
    pub fn advertised(&self, protocol: Protocol) -> Option<SocketAddr> {
        match protocol {
            Protocol::Udp => self.inner.udp.first().map(|e| e.local),
            Protocol::Tcp => self.inner.tcp_listen.first().copied(),
            Protocol::Tls => self.inner.tls_listen.first().copied(),
        }
    }

    /// Sends bytes; never blocks. Failures are counted and logged.
    pub fn send(&self, dest: Dest, bytes: Bytes) {
        match dest.protocol {
            Protocol::Udp => match self.inner.udp.first() {
                Some(ep) => ep.send(dest.addr, bytes),
                None => count_send_error(Protocol::Udp),
            },
            Protocol::Tcp | Protocol::Tls => self.inner.tcp.send(dest, bytes),
        }
    }

    /// Sends a message and counts it.
    pub fn send_message(&self, dest: Dest, msg: &Message) {
        count_sent(dest.protocol, msg);
        self.send(dest, msg.encode());
    }

    /// Sends a response along the path RFC 3261 §18.2.2 (with RFC 3581) names for the
    /// request that came from `source`.
    pub fn send_response(&self, source: &Source, resp: &Message) {
        self.send_message(self.response_dest(source, resp.top_via().as_ref()), resp);
    }

    /// Where responses to a request from `source` with top Via `via` go.
    pub fn response_dest(&self, source: &Source, via: Option<&Via>) -> Dest {
        if self.inner.force_rport {
            return Dest {
                protocol: source.protocol,
                addr: source.remote,
                conn: source.conn,
            };
        }
        response_dest(source, via)
    }

    /// Whether requests are stamped with `rport` as if they had asked for it.
    pub fn force_rport(&self) -> bool {
        self.inner.force_rport
    }

    /// Open stream connections (TCP and TLS).
    pub fn tcp_connections(&self) -> usize {
        self.inner.tcp.len()
    }

    /// Open connections of one stream protocol (TLS ones count from accept, before their
    /// handshake ends).
    pub fn connections(&self, protocol: Protocol) -> usize {
        self.inner.tcp.count(protocol)
    }
}

/// Sweeps the edge's ban table every few seconds while the guard lives.
fn spawn_sweeper(guard: std::sync::Weak<EdgeGuard>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match guard.upgrade() {
                Some(g) => g.sweep(std::time::Instant::now()),
                None => return,
            }
        }
    });
}

/// Runs the handling of one received message (parse → screen → router), catching a panic
/// in it: the panic is counted in [`PANICS`] and logged with the message's first line
/// (`bytes`), the message is dropped and the receive loop goes on. None when it panicked.
pub(crate) fn isolate<T>(place: &'static str, bytes: &[u8], f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(payload) => {
            metrics::counter!(PANICS, "where" => place).increment(1);
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(
                place,
                first_line = %first_line(bytes),
                panic = %what,
                "panic while handling a message: message dropped, receive loop goes on"
            );
            None
        }
    }
}

/// The start line of a message for a log: at most 200 bytes, control characters escaped.
fn first_line(bytes: &[u8]) -> String {
    let end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len()).min(200);
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .escape_debug()
        .to_string()
}

/// Fault injection for tests (`Config::fault_injection`, which only code can set, never a
/// config file): a request carrying an `X-Switchyard-Panic` header panics here, where the
/// router would handle it; everything else goes to the handler it wraps.
pub struct PanicInjector(pub Arc<dyn Handler>);

/// The header that makes [`PanicInjector`] panic.
pub const PANIC_HEADER: &str = "X-Switchyard-Panic";

impl Handler for PanicInjector {
    fn handle(&self, inbound: Inbound<Passed>) {
        if inbound.msg.is_request() && inbound.msg.other(PANIC_HEADER).is_some() {
            panic!("fault injection: {PANIC_HEADER}");
        }
        self.0.handle(inbound)
    }
}

/// The destination of a response (RFC 3261 §18.2.2, RFC 3581 §4): over a stream, the
/// connection the request came on; over UDP, the source address when `rport` was asked for
/// or the host differs, otherwise the Via sent-by.
pub fn response_dest(source: &Source, via: Option<&Via>) -> Dest {
    if source.protocol.is_reliable() {
        return Dest {
            protocol: source.protocol,
            addr: source.remote,
            conn: source.conn,
        };
    }
    let addr = match via {
        Some(v) if v.rport().is_none() => {
            // received = source IP (we always answer the IP the packet came from); the port
            // is the sent-by port or 5060.
            SocketAddr::new(source.remote.ip(), v.port.unwrap_or(5060))
        }
        _ => source.remote,
    };
    Dest {
        protocol: Protocol::Udp,
        addr,
        conn: None,
    }
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: tags the top Via with `received` when the sent-by host
/// is not the source IP, and fills in `rport` when the client asked for it. Returns true when
/// the Via was changed.
pub fn stamp_via(msg: &mut Message, source: &Source, force_rport: bool) -> bool {
    use crate::sip::message::HeaderName;
    let Some(idx) = msg.headers.iter().position(|h| h.name == HeaderName::Via) else {
        return false;
    };
    let value = msg.headers[idx].value.clone();
    let mut items = crate::sip::headers::split_list(&value);
    let Some(top) = items.next() else {
        return false;
    };
    let Ok(via) = Via::parse(&top) else {
        return false;
    };
    let src_ip = source.remote.ip();
    let host_matches = std::str::from_utf8(via.host.as_ref())
        .ok()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        == Some(src_ip);
    let wants_rport =
        via.rport() == Some(None) || (force_rport && source.protocol == Protocol::Udp);
    if host_matches && !wants_rport {
        return false;
    }
    let mut out = Vec::with_capacity(value.len() + 40);
    // Rebuild the top value with the parameters stamped; keep the rest of the line as is.
    let params_at = top.iter().position(|&c| c == b';').unwrap_or(top.len());
    out.extend_from_slice(&top[..params_at]);
    for (name, v) in via.params.iter() {
        if name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport") {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(&name);
        if let Some(v) = v {
            out.push(b'=');
            out.extend_from_slice(&v);
        }
    }
    if wants_rport {
        out.extend_from_slice(format!(";rport={}", source.remote.port()).as_bytes());
    }
    if !host_matches || wants_rport {
        out.extend_from_slice(format!(";received={src_ip}").as_bytes());
    }
    // Whatever followed the top value in this header line (further Via values): `top` is a
    // slice of `value`, so its end offset is known.
    let top_end = top.as_ptr() as usize - value.as_ptr() as usize + top.len();
    out.extend_from_slice(&value[top_end..]);
    msg.headers[idx].value = Bytes::from(out);
    true
}

pub(crate) fn count_sent(protocol: Protocol, msg: &Message) {
    let kind = message_kind(msg);
    metrics::counter!(SIP_SENT, "transport" => protocol.as_str(), "kind" => kind).increment(1);
}

pub(crate) fn count_received(protocol: Protocol, msg: &Message) {
    let kind = message_kind(msg);
    metrics::counter!(SIP_RECEIVED, "transport" => protocol.as_str(), "kind" => kind).increment(1);
}

pub(crate) fn count_send_error(protocol: Protocol) {
    metrics::counter!(SEND_ERRORS, "transport" => protocol.as_str()).increment(1);
}

/// The method for requests, the status class (`1xx` … `6xx`) for responses.
pub fn message_kind(msg: &Message) -> &'static str {
    match msg.status() {
        None => msg.method().map(|m| m.label()).unwrap_or("other"),
        Some(s) => match s / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "6xx",
        },
    }
}

/// Screens received bytes and either hands the message on, answers it, or drops it;
/// shared by the UDP and TCP receive paths. Returns false when a stream should be closed
/// (its framing can no longer be trusted).
pub(crate) fn deliver(
    bytes: Bytes,
    source: Source,
    framing: crate::sip::parse::Framing,
    limits: &Limits,
    guard: Option<&EdgeGuard>,
    handler: &dyn Handler,
    transports: &Transports,
) -> bool {
    use crate::sip::validate::{screen, Screened};
    match screen(bytes, framing, limits) {
        Screened::Pass(mut msg) => {
            count_received(source.protocol, &msg);
            if from_scanner(guard, &msg, &source) {
                return !source.protocol.is_reliable();
            }
            if let Passed::Request(req) = &mut msg {
                stamp_via(req.message_mut(), &source, transports.force_rport());
            }
            handler.handle(Inbound { msg, source });
            true
        }
        Screened::Answer {
            request,
            rejection,
            unsupported,
        } => {
            count_received(source.protocol, &request);
            if from_scanner(guard, &request, &source) {
                return !source.protocol.is_reliable();
            }
            metrics::counter!(SIP_PARSE_ERRORS, "kind" => rejection.label).increment(1);
            metrics::counter!(SIP_REJECTED, "status" => status_label(rejection.status), "kind" => rejection.label)
                .increment(1);
            tracing::debug!(remote = %source.remote, status = rejection.status, reason = rejection.reason, "rejected");
            let mut resp = crate::sip::message::response_to(
                &request,
                rejection.status,
                rejection.reason,
                None,
            );
            if !unsupported.is_empty() {
                resp.push(
                    crate::sip::message::HeaderName::Unsupported,
                    crate::sip::validate::join_values(&unsupported),
                );
            }
            transports.send_response(&source, &resp);
            true
        }
        Screened::Drop { label } => {
            metrics::counter!(SIP_PARSE_ERRORS, "kind" => label).increment(1);
            metrics::counter!(SIP_DROPPED, "reason" => label).increment(1);
            tracing::debug!(remote = %source.remote, reason = label, "dropped unparseable message");
            !source.protocol.is_reliable()
        }
    }
}

/// Whether `msg` is a request from a scanner (by its User-Agent): if so it is dropped
/// unanswered, counted, and its source banned (unless exempt).
fn from_scanner(guard: Option<&EdgeGuard>, msg: &Message, source: &Source) -> bool {
    let Some(guard) = guard else {
        return false;
    };
    if !msg.is_request()
        || !msg
            .headers_named(HeaderName::UserAgent)
            .any(|h| guard.is_scanner(&h.value))
    {
        return false;
    }
    let banned = guard.scanner(source.remote.ip(), std::time::Instant::now());
    tracing::debug!(remote = %source.remote, ?banned, "scanner request dropped");
    true
}

/// A bounded label for a status code.
pub fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        415 => "415",
        416 => "416",
        420 => "420",
        480 => "480",
        481 => "481",
        482 => "482",
        483 => "483",
        486 => "486",
        487 => "487",
        500 => "500",
        501 => "501",
        503 => "503",
        505 => "505",
        513 => "513",
        _ => match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "6xx",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse::{parse, Framing};

    fn src(remote: &str) -> Source {
        Source {
            protocol: Protocol::Udp,
            remote: remote.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        }
    }

    fn req(via: &str) -> Message {
        let raw = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        parse(Bytes::from(raw), Framing::Datagram, &Limits::default()).unwrap()
    }

    #[test]
    fn listen_spec_parses() {
        let s: ListenSpec = "udp:127.0.0.1:5070".parse().unwrap();
        assert_eq!(s.protocol, Protocol::Udp);
        assert_eq!(s.addr.port(), 5070);
        assert!("sctp:1.2.3.4:5".parse::<ListenSpec>().is_err());
        let t: ListenSpec = "tls:0.0.0.0:5061".parse().unwrap();
        assert_eq!(t.protocol, Protocol::Tls);
        assert_eq!(t.to_string(), "tls:0.0.0.0:5061");
        assert!(Protocol::Tls.is_reliable());
        assert_eq!(Protocol::Tls.via_token(), "TLS");
        assert_eq!(Protocol::from_token(b"TLS"), Some(Protocol::Tls));
        assert!("udp:nonsense".parse::<ListenSpec>().is_err());
    }

    #[test]
    fn rport_and_received_are_stamped() {
        let mut m = req(
            "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP other;branch=z9hG4bKb",
        );
        assert!(stamp_via(&mut m, &src("192.0.2.7:40000"), false));
        let v = m.top_via().unwrap();
        assert_eq!(v.rport(), Some(Some(40000)));
        assert_eq!(v.received().unwrap().as_ref(), b"192.0.2.7");
        assert_eq!(v.branch().unwrap().as_ref(), b"z9hG4bKa");
        assert_eq!(m.vias().count(), 2, "the second Via value survives");
        let d = response_dest(&src("192.0.2.7:40000"), Some(&v));
        assert_eq!(d.addr, "192.0.2.7:40000".parse().unwrap());
    }

    #[test]
    fn no_rport_answers_the_sent_by_port_at_the_source_ip() {
        let mut m = req("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa");
        assert!(stamp_via(&mut m, &src("192.0.2.7:40000"), false));
        let v = m.top_via().unwrap();
        assert_eq!(v.received().unwrap().as_ref(), b"192.0.2.7");
        assert_eq!(
            response_dest(&src("192.0.2.7:40000"), Some(&v)).addr,
            "192.0.2.7:5070".parse().unwrap()
        );
        let mut same = req("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKa");
        assert!(
            !stamp_via(&mut same, &src("192.0.2.7:5070"), false),
            "nothing to stamp"
        );
        let mut forced = req("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKa");
        assert!(stamp_via(&mut forced, &src("192.0.2.7:5070"), true));
        assert_eq!(forced.top_via().unwrap().rport(), Some(Some(5070)));
    }
}
