//! Stream transports: accepted and outbound TCP and TLS connections, each with a reader
//! task (framing by Content-Length) and a writer task fed by a bounded queue. TLS
//! connections live in the same registry as plain TCP ones (same limit, same reuse by
//! connection id and remote address), tagged with their protocol; the reader and writer
//! are generic over the stream, so a TLS stream is split and run by the same code.

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::listener::Listener;
use super::{
    count_send_error, deliver, isolate, ConnId, Dest, Inner, Protocol, Source, TransportConfig,
    Transports,
};
use super::{KEEPALIVES, SIP_DROPPED, TCP_ACCEPTED, TCP_CONNECTIONS, TCP_REFUSED, TLS_CONNECTIONS};
use crate::security::conns::ConnSlot;
use crate::sip::parse::{check_stream, Framing, StreamCheck};

/// Messages queued per connection before sends are refused (a stuck peer cannot make the
/// switch buffer without limit).
const WRITE_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    protocol: Protocol,
    remote: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    /// The source's connection slot (inbound connections under the edge's per-source cap);
    /// given back when the connection is unregistered.
    _slot: Option<ConnSlot>,
}

/// All stream connections of the node (TCP and TLS), by id and by protocol and remote
/// address (for reuse).
pub(crate) struct TcpRegistry {
    config: Arc<TransportConfig>,
    conns: DashMap<ConnId, Conn>,
    by_remote: DashMap<(Protocol, SocketAddr), ConnId>,
    next_id: AtomicU64,
    open_tcp: AtomicUsize,
    open_tls: AtomicUsize,
    transports: OnceLock<Weak<Inner>>,
    local: OnceLock<SocketAddr>,
    tls_acceptor: Option<TlsAcceptor>,
    tls_connector: Option<TlsConnector>,
}

impl TcpRegistry {
    pub(crate) fn new(config: Arc<TransportConfig>) -> Arc<TcpRegistry> {
        let tls_acceptor = config.tls_server.clone().map(TlsAcceptor::from);
        let tls_connector = config.tls_client.clone().map(TlsConnector::from);
        Arc::new(TcpRegistry {
            config,
            conns: DashMap::new(),
            by_remote: DashMap::new(),
            next_id: AtomicU64::new(1),
            open_tcp: AtomicUsize::new(0),
            open_tls: AtomicUsize::new(0),
            transports: OnceLock::new(),
            local: OnceLock::new(),
            tls_acceptor,
            tls_connector,
        })
    }

    pub(crate) fn set_transports(&self, t: &Transports) {
        let _ = self.transports.set(Arc::downgrade(&t.inner));
    }

    fn transports(&self) -> Option<Transports> {
        self.transports
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| Transports { inner })
    }

    /// Open connections, TCP and TLS together (they share the limit).
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Open connections of one protocol.
    pub(crate) fn count(&self, protocol: Protocol) -> usize {
        match protocol {
            Protocol::Tcp => self.open_tcp.load(Ordering::Relaxed),
            Protocol::Tls => self.open_tls.load(Ordering::Relaxed),
            Protocol::Udp => 0,
        }
    }

    /// Binds a TCP or TLS listen socket; its [`Listener`] accepts on it.
    pub(crate) async fn listen(
        self: &Arc<Self>,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> std::io::Result<(SocketAddr, Arc<TcpListener>)> {
        if protocol == Protocol::Tls && self.tls_acceptor.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("tls:{addr}: no TLS certificate configured"),
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let _ = self.local.set(local);
        Ok((local, Arc::new(listener)))
    }

    /// Accepts connections until aborted: the receive loop of a TCP or TLS [`Listener`].
    /// Each connection runs in tasks of its own, which outlive a restart of this loop.
    pub(crate) async fn accept_loop(
        self: Arc<Self>,
        listener: Arc<TcpListener>,
        me: Arc<Listener>,
        protocol: Protocol,
    ) {
        let local = me.local_addr();
        let mut backoff = Duration::from_millis(5);
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    me.check_fault();
                    backoff = Duration::from_millis(5);
                    // A banned source is closed before any TLS handshake or read (counted).
                    if let Some(guard) = &self.config.guard {
                        if guard.is_banned(remote.ip(), Instant::now()) {
                            drop(stream);
                            continue;
                        }
                    }
                    if self.conns.len() >= self.config.max_tcp_connections {
                        metrics::counter!(TCP_REFUSED, "transport" => protocol.as_str())
                            .increment(1);
                        tracing::warn!(%remote, %protocol, "connection refused: limit reached");
                        drop(stream);
                        continue;
                    }
                    let slot = match &self.config.guard {
                        Some(guard) => match guard.open_connection(remote.ip()) {
                            Some(slot) => Some(slot),
                            None => {
                                tracing::debug!(%remote, %protocol, "connection refused: per-source cap");
                                drop(stream);
                                continue;
                            }
                        },
                        None => None,
                    };
                    let _ = stream.set_nodelay(true);
                    match (&self.tls_acceptor, protocol) {
                        (Some(acceptor), Protocol::Tls) => {
                            // The handshake runs in the connection's own task: a slow or
                            // silent peer must never hold up the accept loop.
                            let acceptor = acceptor.clone();
                            let (id, rx) = self.register(Protocol::Tls, remote, slot);
                            let reg = self.clone();
                            tokio::spawn(async move {
                                let timeout = reg.config.tls_handshake_timeout;
                                match super::tls::accept(&acceptor, stream, remote, timeout).await {
                                    Some(tls) => {
                                        let (rd, wr) = tokio::io::split(tls);
                                        reg.clone().spawn_reader(
                                            id,
                                            Protocol::Tls,
                                            rd,
                                            remote,
                                            local,
                                        );
                                        reg.run_writer(id, Protocol::Tls, remote, wr, rx).await;
                                    }
                                    None => reg.unregister(id),
                                }
                            });
                        }
                        _ => {
                            metrics::counter!(TCP_ACCEPTED).increment(1);
                            let (rd, wr) = stream.into_split();
                            let (id, rx) = self.register(Protocol::Tcp, remote, slot);
                            tokio::spawn(self.clone().run_writer(
                                id,
                                Protocol::Tcp,
                                remote,
                                wr,
                                rx,
                            ));
                            self.clone()
                                .spawn_reader(id, Protocol::Tcp, rd, remote, local);
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off, never stop accepting.
                    tracing::warn!(error = %e, %protocol, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Creates the connection entry (with its queue) before any I/O, so sends made while a
    /// connection is being set up (connect, TLS handshake) are queued rather than opening a
    /// second one.
    fn register(
        &self,
        protocol: Protocol,
        remote: SocketAddr,
        slot: Option<ConnSlot>,
    ) -> (ConnId, mpsc::Receiver<Bytes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        self.conns.insert(
            id,
            Conn {
                protocol,
                remote,
                tx,
                _slot: slot,
            },
        );
        self.by_remote.insert((protocol, remote), id);
        self.open(protocol).fetch_add(1, Ordering::Relaxed);
        // By deltas, so several nodes in one process add up.
        metrics::gauge!(gauge_name(protocol)).increment(1.0);
        (id, rx)
    }

    fn unregister(&self, id: ConnId) {
        if let Some((_, conn)) = self.conns.remove(&id) {
            self.by_remote
                .remove_if(&(conn.protocol, conn.remote), |_, v| *v == id);
            self.open(conn.protocol).fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(gauge_name(conn.protocol)).decrement(1.0);
        }
    }

    fn open(&self, protocol: Protocol) -> &AtomicUsize {
        match protocol {
            Protocol::Tls => &self.open_tls,
            _ => &self.open_tcp,
        }
    }

    /// Queues bytes on the preferred connection, any connection of the protocol to the
    /// address, or a new one.
    pub(crate) fn send(self: &Arc<Self>, dest: Dest, bytes: Bytes) {
        let protocol = dest.protocol;
        let id = dest
            .conn
            .filter(|id| self.conns.get(id).is_some_and(|c| c.protocol == protocol))
            .or_else(|| {
                self.by_remote
                    .get(&(protocol, dest.addr))
                    .map(|e| *e.value())
            });
        let id = match id.or_else(|| self.connect(protocol, dest.addr)) {
            Some(id) => id,
            None => {
                count_send_error(protocol);
                return;
            }
        };
        let tx = self.conns.get(&id).map(|c| c.tx.clone());
        match tx {
            Some(tx) => {
                if tx.try_send(bytes).is_err() {
                    count_send_error(protocol);
                    tracing::debug!(remote = %dest.addr, %protocol, "write queue full or closed");
                }
            }
            None => count_send_error(protocol),
        }
    }

    /// Starts an outbound connection; `None` when TLS is asked for but no client
    /// configuration (whom to trust) was given.
    fn connect(self: &Arc<Self>, protocol: Protocol, remote: SocketAddr) -> Option<ConnId> {
        let connector = match protocol {
            Protocol::Tls => match &self.tls_connector {
                Some(c) => Some(c.clone()),
                None => {
                    tracing::warn!(%remote, "no outbound TLS configuration: cannot connect");
                    return None;
                }
            },
            _ => None,
        };
        let (id, rx) = self.register(protocol, remote, None);
        tokio::spawn(
            self.clone()
                .connect_and_write(id, protocol, remote, connector, rx),
        );
        Some(id)
    }

    async fn connect_and_write(
        self: Arc<Self>,
        id: ConnId,
        protocol: Protocol,
        remote: SocketAddr,
        connector: Option<TlsConnector>,
        rx: mpsc::Receiver<Bytes>,
    ) {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%remote, %protocol, error = %e, "connect failed");
                count_send_error(protocol);
                self.unregister(id);
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, %protocol, "connect timed out");
                count_send_error(protocol);
                self.unregister(id);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| *self.local.get().unwrap_or(&remote));
        match connector {
            None => {
                let (rd, wr) = stream.into_split();
                self.clone().spawn_reader(id, protocol, rd, remote, local);
                self.run_writer(id, protocol, remote, wr, rx).await;
            }
            Some(connector) => {
                let timeout = self.config.tls_handshake_timeout;
                match super::tls::connect(&connector, stream, remote, timeout).await {
                    Some(tls) => {
                        let (rd, wr) = tokio::io::split(tls);
                        self.clone().spawn_reader(id, protocol, rd, remote, local);
                        self.run_writer(id, protocol, remote, wr, rx).await;
                    }
                    None => {
                        count_send_error(protocol);
                        self.unregister(id);
                    }
                }
            }
        }
    }

    /// Writes queued messages until the queue closes (the connection was unregistered) or a
    /// write fails.
    async fn run_writer<W: AsyncWrite + Unpin + Send>(
        self: Arc<Self>,
        id: ConnId,
        protocol: Protocol,
        remote: SocketAddr,
        mut wr: W,
        mut rx: mpsc::Receiver<Bytes>,
    ) {
        let mut batch = BytesMut::new();
        while let Some(first) = rx.recv().await {
            // Coalesce whatever is already queued into one write.
            batch.extend_from_slice(&first);
            while batch.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            let written = async {
                wr.write_all(&batch).await?;
                // TLS buffers records in the session; flush pushes them to the socket.
                wr.flush().await
            };
            if let Err(e) = written.await {
                tracing::debug!(%remote, %protocol, error = %e, "write failed");
                count_send_error(protocol);
                break;
            }
            batch.clear();
        }
        let _ = wr.shutdown().await;
        self.unregister(id);
    }

    fn spawn_reader<R: AsyncRead + Unpin + Send + 'static>(
        self: Arc<Self>,
        id: ConnId,
        protocol: Protocol,
        mut rd: R,
        remote: SocketAddr,
        local: SocketAddr,
    ) {
        tokio::spawn(async move {
            let source = Source {
                protocol,
                remote,
                local,
                conn: Some(id),
            };
            let mut buf = BytesMut::with_capacity(8 * 1024);
            let idle = self.config.tcp_idle_timeout;
            'conn: loop {
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(8 * 1024);
                }
                let n = match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, %protocol, error = %e, "read failed");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, %protocol, "connection idle: closing");
                        break;
                    }
                };
                let _ = n;
                loop {
                    match check_stream(&buf, &self.config.limits) {
                        Ok(StreamCheck::KeepAlive { consumed, ping }) => {
                            let _ = buf.split_to(consumed);
                            metrics::counter!(KEEPALIVES).increment(1);
                            if ping {
                                // RFC 5626 §3.5.1: a double-CRLF ping gets a CRLF pong.
                                self.send(
                                    Dest {
                                        protocol,
                                        addr: remote,
                                        conn: Some(id),
                                    },
                                    Bytes::from_static(b"\r\n"),
                                );
                            }
                        }
                        Ok(StreamCheck::Complete { len }) => {
                            // The edge first: a source banned (now or while this connection
                            // was open) loses the connection before the message is parsed.
                            if let Some(guard) = &self.config.guard {
                                if !guard.admit(remote.ip(), Instant::now()).pass() {
                                    break 'conn;
                                }
                            }
                            // A copy of exactly this message: a slice of the read buffer would
                            // pin the whole buffer for as long as a call keeps the message.
                            let msg = Bytes::copy_from_slice(&buf[..len]);
                            let Some(transports) = self.transports() else {
                                break 'conn;
                            };
                            let Some(handler) = transports.handler() else {
                                // Not serving yet (an outbound connection of a starting node).
                                buf.advance(len);
                                continue;
                            };
                            let keep = isolate(protocol.as_str(), &buf[..len], || {
                                deliver(
                                    msg,
                                    source,
                                    Framing::Stream,
                                    &self.config.limits,
                                    self.config.guard.as_deref(),
                                    handler,
                                    &transports,
                                )
                            });
                            buf.advance(len);
                            // A panic cost the message; the framing is intact, so the
                            // connection goes on.
                            if keep == Some(false) {
                                break 'conn;
                            }
                        }
                        Ok(StreamCheck::Incomplete) => break,
                        Err(e) => {
                            // Framing is lost: answer what can be answered, then close.
                            metrics::counter!(SIP_DROPPED, "reason" => e.label()).increment(1);
                            if let Some(transports) = self.transports() {
                                let rest = buf.split().freeze();
                                let line = rest.clone();
                                if let Some(handler) = transports.handler() {
                                    isolate(protocol.as_str(), &line, || {
                                        deliver(
                                            rest,
                                            source,
                                            Framing::Datagram,
                                            &self.config.limits,
                                            self.config.guard.as_deref(),
                                            handler,
                                            &transports,
                                        )
                                    });
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break 'conn;
                        }
                    }
                }
            }
            self.unregister(id);
        });
    }
}

fn gauge_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tls => TLS_CONNECTIONS,
        _ => TCP_CONNECTIONS,
    }
}
