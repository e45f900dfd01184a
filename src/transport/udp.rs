//! UDP: one or more sockets per listen address (SO_REUSEPORT), each with a receive task.
//! Each datagram passes the edge's ban check and density count before it is copied or
//! parsed, and its handling runs with panics caught (one bad message never ends the loop).

use bytes::Bytes;
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;

use super::listener::Listener;
use super::{count_send_error, deliver, isolate, Protocol, Source, TransportConfig, Transports};
use crate::sip::parse::Framing;

/// One UDP listen address: the sockets bound to it.
pub(crate) struct UdpEndpoint {
    pub(crate) local: SocketAddr,
    pub(crate) sockets: Vec<Arc<UdpSocket>>,
}

fn bind_socket(
    addr: SocketAddr,
    buffer: usize,
    reuse: bool,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if reuse {
        socket.set_reuse_port(true)?;
    }
    // Bigger buffers absorb bursts; the kernel caps them at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl UdpEndpoint {
    /// Binds `udp_workers` sockets to `addr` (the first resolves port 0 for the others).
    pub(crate) fn bind(addr: SocketAddr, config: &TransportConfig) -> std::io::Result<UdpEndpoint> {
        let workers = config.udp_workers.max(1);
        let first = bind_socket(addr, config.udp_buffer_bytes, workers > 1)?;
        let local = first.local_addr()?;
        let mut sockets = vec![Arc::new(UdpSocket::from_std(first)?)];
        for _ in 1..workers {
            let s = bind_socket(local, config.udp_buffer_bytes, true)?;
            sockets.push(Arc::new(UdpSocket::from_std(s)?));
        }
        Ok(UdpEndpoint { local, sockets })
    }

    /// Sends without waiting; if the socket buffer is full, the send is retried on a task.
    pub(crate) fn send(&self, to: SocketAddr, bytes: Bytes) {
        let socket = &self.sockets[0];
        match socket.try_send_to(&bytes, to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Err(e) = socket.send_to(&bytes, to).await {
                        count_send_error(Protocol::Udp);
                        tracing::debug!(%to, error = %e, "udp send failed");
                    }
                });
            }
            Err(e) => {
                count_send_error(Protocol::Udp);
                tracing::debug!(%to, error = %e, "udp send failed");
            }
        }
    }
}

const DATAGRAM_MAX: usize = 65_535;

/// Receives on one socket until aborted: the receive loop of a UDP [`Listener`].
pub(crate) async fn recv_loop(
    socket: Arc<UdpSocket>,
    listener: Arc<Listener>,
    transports: Transports,
) {
    let config = transports.inner.config.clone();
    let local = listener.local_addr();
    // One reusable receive buffer; each datagram is copied into an allocation of its own
    // size. Slicing datagrams out of a shared chunk would be copy-free, but a call keeps its
    // INVITE for its whole life, and one retained slice pins the whole chunk: at 500 CAPS
    // that held about 90 MiB of mostly dead buffer.
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let res = socket.recv_from(&mut buf).await;
        match res {
            Ok((n, remote)) => {
                listener.check_fault();
                if n == 0 {
                    continue;
                }
                // The edge first: a banned source's datagram costs one lookup, not a copy
                // and a parse.
                if let Some(guard) = &config.guard {
                    if !guard.admit(remote.ip(), Instant::now()).pass() {
                        continue;
                    }
                }
                let datagram = Bytes::copy_from_slice(&buf[..n]);
                if datagram.iter().all(|&c| c == b'\r' || c == b'\n') {
                    // RFC 5626 keep-alive on UDP is STUN; a bare CRLF is just ignored.
                    continue;
                }
                if n > config.limits.max_header_bytes + config.limits.max_body_bytes {
                    metrics::counter!(super::SIP_DROPPED, "reason" => "datagram_too_large")
                        .increment(1);
                    continue;
                }
                let source = Source {
                    protocol: Protocol::Udp,
                    remote,
                    local,
                    conn: None,
                };
                let Some(handler) = transports.handler() else {
                    continue; // not serving yet: peers retransmit
                };
                isolate("udp", &buf[..n], || {
                    deliver(
                        datagram,
                        source,
                        Framing::Datagram,
                        &config.limits,
                        config.guard.as_deref(),
                        handler,
                        &transports,
                    )
                });
            }
            Err(e) => {
                // ICMP port unreachable surfaces as ECONNREFUSED on some systems: not fatal.
                tracing::debug!(error = %e, "udp receive error");
                tokio::task::yield_now().await;
            }
        }
    }
}
