//! HTTPS on the API listener: set `http.tls_cert` and `http.tls_key` (PEM) and the listener
//! speaks TLS (rustls, HTTP/1.1) instead of plain HTTP. Plain HTTP on 127.0.0.1 stays the
//! default.
//!
//! Handshakes run in tasks of their own, each bounded by
//! [`crate::transport::tls::HANDSHAKE_TIMEOUT`], and at most [`MAX_HANDSHAKES`] at once
//! (more connections are closed at once, counted): a client that opens a connection and never
//! speaks holds one handshake slot for five seconds, never the accept loop.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::transport::tls::{TlsError, HANDSHAKE_TIMEOUT};

/// Counter, label `result` (`ok`, `failed`, `timeout`, `busy`): TLS handshakes on the API
/// listener (`busy`: refused because [`MAX_HANDSHAKES`] were under way).
pub const API_TLS_HANDSHAKES_TOTAL: &str = "switchyard_api_tls_handshakes_total";

/// Handshakes under way at once; more connections wait in nothing, they are closed.
pub const MAX_HANDSHAKES: usize = 256;

/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Describe this module's metrics (called from [`super::describe`]).
pub fn describe() {
    metrics::describe_counter!(
        API_TLS_HANDSHAKES_TOTAL,
        "TLS handshakes on the HTTPS API listener, by result (ok, failed, timeout, busy)"
    );
}

/// The API's TLS configuration from a PEM certificate chain and key (HTTP/1.1 by ALPN).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = (*crate::transport::tls::server_config(cert, key)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections have completed a TLS handshake; serve it with
/// [`super::serve`].
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `listener` and runs handshakes with `config`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ends only when this listener goes: nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(5);
                    a
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum does.
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = ready.closed() => return,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!(API_TLS_HANDSHAKES_TOTAL, "result" => "busy").increment(1);
            continue; // dropping the stream closes it
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(slot);
            let result = match outcome {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, remote)).await;
                    "ok"
                }
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "HTTPS handshake failed");
                    "failed"
                }
                Err(_) => "timeout",
            };
            metrics::counter!(API_TLS_HANDSHAKES_TOTAL, "result" => result).increment(1);
        });
    }
}
