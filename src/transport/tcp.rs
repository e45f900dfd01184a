//! TCP: accepted and outbound connections, each with a reader task (framing by
//! Content-Length) and a writer task fed by a bounded queue.

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{
    count_send_error, deliver, Dest, Handler, Inner, Protocol, Source, TransportConfig, Transports,
};
use super::{KEEPALIVES, SIP_DROPPED, TCP_ACCEPTED, TCP_CONNECTIONS, TCP_REFUSED};
use crate::sip::parse::{check_stream, Framing, StreamCheck};

/// Messages queued per connection before sends are refused (a stuck peer cannot make the
/// switch buffer without limit).
const WRITE_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    remote: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

/// All TCP connections of the node, by id and by remote address (for reuse).
pub(crate) struct TcpRegistry {
    config: Arc<TransportConfig>,
    handler: Arc<dyn Handler>,
    conns: DashMap<u64, Conn>,
    by_remote: DashMap<SocketAddr, u64>,
    next_id: AtomicU64,
    transports: OnceLock<Weak<Inner>>,
    local: OnceLock<SocketAddr>,
}

impl TcpRegistry {
    pub(crate) fn new(config: Arc<TransportConfig>, handler: Arc<dyn Handler>) -> Arc<TcpRegistry> {
        Arc::new(TcpRegistry {
            config,
            handler,
            conns: DashMap::new(),
            by_remote: DashMap::new(),
            next_id: AtomicU64::new(1),
            transports: OnceLock::new(),
            local: OnceLock::new(),
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

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Binds a listener and starts accepting.
    pub(crate) async fn listen(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let _ = self.local.set(local);
        let reg = self.clone();
        tokio::spawn(async move { reg.accept_loop(listener, local).await });
        Ok(local)
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, local: SocketAddr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    backoff = Duration::from_millis(5);
                    if self.conns.len() >= self.config.max_tcp_connections {
                        metrics::counter!(TCP_REFUSED).increment(1);
                        tracing::warn!(%remote, "tcp connection refused: limit reached");
                        drop(stream);
                        continue;
                    }
                    metrics::counter!(TCP_ACCEPTED).increment(1);
                    let _ = stream.set_nodelay(true);
                    let (rd, wr) = stream.into_split();
                    let (id, rx) = self.register(remote);
                    self.clone()
                        .spawn_writer(id, remote, WriterStart::Accepted(wr), rx);
                    self.clone().spawn_reader(id, rd, remote, local);
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off, never stop accepting.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Creates the connection entry (with its queue) before any I/O, so sends made while an
    /// outbound connection is being set up are queued rather than opening a second one.
    fn register(&self, remote: SocketAddr) -> (u64, mpsc::Receiver<Bytes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        self.conns.insert(id, Conn { remote, tx });
        self.by_remote.insert(remote, id);
        metrics::gauge!(TCP_CONNECTIONS).set(self.conns.len() as f64);
        (id, rx)
    }

    fn unregister(&self, id: u64) {
        if let Some((_, conn)) = self.conns.remove(&id) {
            self.by_remote.remove_if(&conn.remote, |_, v| *v == id);
        }
        metrics::gauge!(TCP_CONNECTIONS).set(self.conns.len() as f64);
    }

    /// Queues bytes on the preferred connection, any connection to the address, or a new one.
    pub(crate) fn send(self: &Arc<Self>, dest: Dest, bytes: Bytes) {
        let id = dest
            .conn
            .filter(|id| self.conns.contains_key(id))
            .or_else(|| self.by_remote.get(&dest.addr).map(|e| *e.value()));
        let id = match id {
            Some(id) => id,
            None => {
                let (id, rx) = self.register(dest.addr);
                self.clone()
                    .spawn_writer(id, dest.addr, WriterStart::Connect, rx);
                id
            }
        };
        let tx = self.conns.get(&id).map(|c| c.tx.clone());
        match tx {
            Some(tx) => {
                if tx.try_send(bytes).is_err() {
                    count_send_error(Protocol::Tcp);
                    tracing::debug!(remote = %dest.addr, "tcp write queue full or closed");
                }
            }
            None => count_send_error(Protocol::Tcp),
        }
    }

    fn spawn_writer(
        self: Arc<Self>,
        id: u64,
        remote: SocketAddr,
        start: WriterStart,
        mut rx: mpsc::Receiver<Bytes>,
    ) {
        tokio::spawn(async move {
            let mut wr = match start {
                WriterStart::Accepted(wr) => wr,
                WriterStart::Connect => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await {
                        Ok(Ok(stream)) => {
                            let _ = stream.set_nodelay(true);
                            let local = stream
                                .local_addr()
                                .unwrap_or_else(|_| *self.local.get().unwrap_or(&remote));
                            let (rd, wr) = stream.into_split();
                            self.clone().spawn_reader(id, rd, remote, local);
                            wr
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "tcp connect failed");
                            count_send_error(Protocol::Tcp);
                            self.unregister(id);
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "tcp connect timed out");
                            count_send_error(Protocol::Tcp);
                            self.unregister(id);
                            return;
                        }
                    }
                }
            };
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
                if let Err(e) = wr.write_all(&batch).await {
                    tracing::debug!(%remote, error = %e, "tcp write failed");
                    count_send_error(Protocol::Tcp);
                    break;
                }
                batch.clear();
            }
            let _ = wr.shutdown().await;
            self.unregister(id);
        });
    }

    fn spawn_reader(
        self: Arc<Self>,
        id: u64,
        mut rd: OwnedReadHalf,
        remote: SocketAddr,
        local: SocketAddr,
    ) {
        tokio::spawn(async move {
            let source = Source {
                protocol: Protocol::Tcp,
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
                        tracing::debug!(%remote, error = %e, "tcp read failed");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "tcp connection idle: closing");
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
                                        protocol: Protocol::Tcp,
                                        addr: remote,
                                        conn: Some(id),
                                    },
                                    Bytes::from_static(b"\r\n"),
                                );
                            }
                        }
                        Ok(StreamCheck::Complete { len }) => {
                            // A copy of exactly this message: a slice of the read buffer would
                            // pin the whole buffer for as long as a call keeps the message.
                            let msg = Bytes::copy_from_slice(&buf[..len]);
                            buf.advance(len);
                            let Some(transports) = self.transports() else {
                                break 'conn;
                            };
                            if !deliver(
                                msg,
                                source,
                                Framing::Stream,
                                &self.config.limits,
                                self.handler.as_ref(),
                                &transports,
                            ) {
                                break 'conn;
                            }
                        }
                        Ok(StreamCheck::Incomplete) => break,
                        Err(e) => {
                            // Framing is lost: answer what can be answered, then close.
                            metrics::counter!(SIP_DROPPED, "reason" => e.label()).increment(1);
                            if let Some(transports) = self.transports() {
                                let rest = buf.split().freeze();
                                deliver(
                                    rest,
                                    source,
                                    Framing::Datagram,
                                    &self.config.limits,
                                    self.handler.as_ref(),
                                    &transports,
                                );
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

enum WriterStart {
    Accepted(OwnedWriteHalf),
    Connect,
}
