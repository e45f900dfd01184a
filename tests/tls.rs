//! SIP over TLS: a node answering on a `tls:` listener, stream framing inside TLS, failed
//! and timed-out handshakes counted, outbound connections that verify the peer, connection
//! reuse in both directions, and the self-signed certificate helper.

mod common;

use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard::sip::message::Message;
use switchyard::sip::parse::{parse, Framing, Limits};
use switchyard::sip::validate::Passed;
use switchyard::transport::tls::{self, ensure_self_signed, CertFiles};
use switchyard::transport::{
    Dest, Handler, Inbound, ListenSpec, Protocol, TransportConfig, Transports,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(5);

/// A TLS client config that trusts exactly `cert` (nothing else).
fn trusting(cert: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in tls::load_certs(cert).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_connect(to: SocketAddr, cert: &Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(to).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, TlsConnector::from(trusting(cert)).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake succeeds")
}

/// Reads one Content-Length framed message from a stream, keeping leftovers in `buf`.
async fn read_message<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let cl = String::from_utf8_lossy(&buf[..end])
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Content-Length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            let total = end + 4 + cl;
            if buf.len() >= total {
                let rest = buf.split_off(total);
                let msg = std::mem::replace(buf, rest);
                return parse(Bytes::from(msg), Framing::Stream, &Limits::default()).ok();
            }
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn call_id(m: &Message) -> String {
    String::from_utf8_lossy(m.call_id().unwrap().as_ref()).to_string()
}

/// The value of a counter series in the Prometheus text (0 when absent).
fn counter(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = switchyard::metrics::handle().unwrap().render();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn handshakes(side: &str, result: &str) -> f64 {
    counter(
        "switchyard_tls_handshakes_total",
        &[("side", side), ("result", result)],
    )
}

/// A node with UDP, TCP and TLS listeners on loopback, using `cert`.
async fn tls_node(data: &Path, cert: &CertFiles) -> switchyard::server::Node {
    let mut c = common::config(data, &[]);
    c.sip.listen.push("tls:127.0.0.1:0".into());
    c.sip.tls_cert = Some(cert.cert.clone());
    c.sip.tls_key = Some(cert.key.clone());
    common::start_with(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_over_tls_are_answered_on_the_same_connection() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert = ensure_self_signed(certs.path()).unwrap();
    let node = tls_node(data.path(), &cert).await;
    let addr = node.sip_addr(Protocol::Tls).expect("a TLS listener");

    let mut s = tls_connect(addr, &cert.cert).await;
    let me = s.get_ref().0.local_addr().unwrap();
    s.write_all(common::options("tls-1", me, "TLS").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_message(&mut s, &mut buf).await.expect("a response");
    assert_eq!(r.status(), Some(200));
    assert_eq!(call_id(&r), "tls-1");
    let via = r.top_via().unwrap();
    assert!(
        via.transport.as_ref().eq_ignore_ascii_case(b"TLS"),
        "Via says TLS: {:?}",
        String::from_utf8_lossy(via.transport.as_ref())
    );

    // Two requests in one write: the stream framing inside TLS splits them.
    let two = format!(
        "{}{}",
        common::options("tls-2", me, "TLS"),
        common::options("tls-3", me, "TLS")
    );
    s.write_all(two.as_bytes()).await.unwrap();
    let a = read_message(&mut s, &mut buf).await.expect("first answer");
    let b = read_message(&mut s, &mut buf).await.expect("second answer");
    let mut ids = [call_id(&a), call_id(&b)];
    ids.sort();
    assert_eq!(ids, ["tls-2", "tls-3"]);
    assert_eq!((a.status(), b.status()), (Some(200), Some(200)));
    assert_eq!(node.transports.connections(Protocol::Tls), 1);

    drop(s);
    assert!(
        common::wait_until(WAIT, || node.transports.connections(Protocol::Tls) == 0).await,
        "a closed connection leaves the registry"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_on_the_tls_port_fails_the_handshake_and_is_counted() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert = ensure_self_signed(certs.path()).unwrap();
    let node = tls_node(data.path(), &cert).await;
    let addr = node.sip_addr(Protocol::Tls).unwrap();
    let before = handshakes("inbound", "failed");

    let mut s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(common::options("plain-1", me, "TCP").as_bytes())
        .await
        .unwrap();
    // The server closes (perhaps after a TLS alert); it never answers in SIP.
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    assert!(
        !String::from_utf8_lossy(&got).contains("SIP/2.0"),
        "no SIP answer to plain text"
    );
    assert!(
        common::wait_until(WAIT, || handshakes("inbound", "failed") >= before + 1.0).await,
        "the failed handshake is counted"
    );
    assert!(common::wait_until(WAIT, || node.transports.connections(Protocol::Tls) == 0).await);

    // The listener still serves TLS afterwards.
    let mut ok = tls_connect(addr, &cert.cert).await;
    let me = ok.get_ref().0.local_addr().unwrap();
    ok.write_all(common::options("after-plain", me, "TLS").as_bytes())
        .await
        .unwrap();
    let r = read_message(&mut ok, &mut Vec::new()).await.unwrap();
    assert_eq!(r.status(), Some(200));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_without_a_certificate_uses_a_self_signed_one() {
    let data = tempfile::tempdir().unwrap();
    let mut c = common::config(data.path(), &[]);
    c.sip.listen.push("tls:127.0.0.1:0".into());
    let node = common::start_with(c).await;
    let cert = data.path().join("tls/cert.pem");
    assert!(cert.is_file(), "generated into the data directory");
    let addr = node.sip_addr(Protocol::Tls).unwrap();
    let mut s = tls_connect(addr, &cert).await;
    let me = s.get_ref().0.local_addr().unwrap();
    s.write_all(common::options("self-signed", me, "TLS").as_bytes())
        .await
        .unwrap();
    let r = read_message(&mut s, &mut Vec::new()).await.unwrap();
    assert_eq!(r.status(), Some(200));
    node.shutdown().await;
}

#[test]
fn the_fingerprint_is_stable_across_calls() {
    let dir = tempfile::tempdir().unwrap();
    let a = ensure_self_signed(dir.path()).unwrap();
    let b = ensure_self_signed(dir.path()).unwrap();
    assert!(a.generated && !b.generated);
    assert_eq!(
        a,
        CertFiles {
            generated: true,
            ..b.clone()
        }
    );
    assert_eq!(tls::fingerprint_file(&a.cert).unwrap(), a.fingerprint);
    assert_eq!(a.fingerprint.split(':').count(), 32);
}

// ---- transport level: outbound TLS, verification, flow reuse, handshake timeout ----

/// Hands every received message to the test.
struct Probe(mpsc::UnboundedSender<Inbound>);

impl Handler for Probe {
    fn handle(&self, inbound: Inbound<Passed>) {
        let _ = self.0.send(inbound.into_plain());
    }
}

async fn transports(
    listen: &[&str],
    config: TransportConfig,
) -> (Transports, mpsc::UnboundedReceiver<Inbound>) {
    switchyard::metrics::install().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let specs: Vec<ListenSpec> = listen.iter().map(|s| s.parse().unwrap()).collect();
    let t = Transports::start(&specs, config, Arc::new(Probe(tx)))
        .await
        .unwrap();
    (t, rx)
}

fn request(call_id: &str, from: SocketAddr) -> Bytes {
    Bytes::from(common::options(call_id, from, "TLS"))
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("the transport is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_tls_verifies_the_server_and_the_connection_is_reused_both_ways() {
    let certs = tempfile::tempdir().unwrap();
    let cert = ensure_self_signed(certs.path()).unwrap();
    let server_conf = TransportConfig {
        tls_server: Some(tls::server_config(&cert.cert, &cert.key).unwrap()),
        ..TransportConfig::default()
    };
    let (server, mut server_rx) = transports(&["tls:127.0.0.1:0"], server_conf).await;
    let server_addr = server.advertised(Protocol::Tls).unwrap();

    let client_conf = TransportConfig {
        tls_client: Some(tls::client_config(&[&cert.cert]).unwrap()),
        ..TransportConfig::default()
    };
    let (client, mut client_rx) = transports(&["udp:127.0.0.1:0"], client_conf).await;
    let to_server = Dest {
        protocol: Protocol::Tls,
        addr: server_addr,
        conn: None,
    };
    let ok_before = handshakes("outbound", "ok");
    client.send(to_server, request("out-1", server_addr));
    client.send(to_server, request("out-2", server_addr));
    let first = next(&mut server_rx).await;
    let second = next(&mut server_rx).await;
    assert_eq!(first.source.protocol, Protocol::Tls);
    assert_eq!(call_id(&first.msg), "out-1");
    assert_eq!(
        call_id(&second.msg),
        "out-2",
        "queued while connecting, in order"
    );
    assert_eq!(first.source.conn, second.source.conn, "one connection");
    assert_eq!(client.connections(Protocol::Tls), 1);
    assert!(handshakes("outbound", "ok") >= ok_before + 1.0);

    // The server answers through the connection the request came on (flow reuse), and
    // the client receives it on its outbound connection.
    let back = Dest {
        protocol: Protocol::Tls,
        addr: first.source.remote,
        conn: first.source.conn,
    };
    server.send(back, request("back-1", server_addr));
    let got = next(&mut client_rx).await;
    assert_eq!(call_id(&got.msg), "back-1");
    assert_eq!(got.source.protocol, Protocol::Tls);
    assert_eq!(got.source.remote, server_addr);
    assert_eq!(server.connections(Protocol::Tls), 1, "no second connection");
    assert_eq!(client.connections(Protocol::Tls), 1);
    // A plain TCP send to the same address is a different flow: never over the TLS one.
    assert_eq!(client.connections(Protocol::Tcp), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_tls_refuses_an_untrusted_server_and_needs_a_trust_config() {
    let certs = tempfile::tempdir().unwrap();
    let served = ensure_self_signed(&certs.path().join("a")).unwrap();
    let other = ensure_self_signed(&certs.path().join("b")).unwrap();
    let server_conf = TransportConfig {
        tls_server: Some(tls::server_config(&served.cert, &served.key).unwrap()),
        ..TransportConfig::default()
    };
    let (server, mut server_rx) = transports(&["tls:127.0.0.1:0"], server_conf).await;
    let addr = server.advertised(Protocol::Tls).unwrap();
    let dest = Dest {
        protocol: Protocol::Tls,
        addr,
        conn: None,
    };

    // Trusts another certificate: the handshake fails on the client side.
    let wrong = TransportConfig {
        tls_client: Some(tls::client_config(&[&other.cert]).unwrap()),
        ..TransportConfig::default()
    };
    let (client, _rx) = transports(&["udp:127.0.0.1:0"], wrong).await;
    let failed_before = handshakes("outbound", "failed");
    client.send(dest, request("untrusted", addr));
    assert!(
        common::wait_until(WAIT, || handshakes("outbound", "failed")
            >= failed_before + 1.0)
        .await,
        "the verification failure is counted"
    );
    assert!(common::wait_until(WAIT, || client.connections(Protocol::Tls) == 0).await);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server_rx.recv())
            .await
            .is_err(),
        "nothing is delivered over an unverified connection"
    );

    // No client configuration at all: no connection is attempted.
    let (bare, _rx2) = transports(&["udp:127.0.0.1:0"], TransportConfig::default()).await;
    let errors_before = counter("switchyard_sip_send_errors_total", &[("transport", "tls")]);
    bare.send(dest, request("no-trust", addr));
    assert_eq!(bare.connections(Protocol::Tls), 0);
    assert!(
        counter("switchyard_sip_send_errors_total", &[("transport", "tls")]) >= errors_before + 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_when_the_handshake_times_out() {
    let certs = tempfile::tempdir().unwrap();
    let cert = ensure_self_signed(certs.path()).unwrap();
    let conf = TransportConfig {
        tls_server: Some(tls::server_config(&cert.cert, &cert.key).unwrap()),
        tls_handshake_timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let (server, _rx) = transports(&["tls:127.0.0.1:0"], conf).await;
    let addr = server.advertised(Protocol::Tls).unwrap();
    let before = handshakes("inbound", "timeout");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(common::wait_until(WAIT, || server.connections(Protocol::Tls) == 1).await);
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the server closes the silent connection");
    assert!(common::wait_until(WAIT, || handshakes("inbound", "timeout") >= before + 1.0).await);
    assert!(common::wait_until(WAIT, || server.connections(Protocol::Tls) == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_needs_a_certificate() {
    switchyard::metrics::install().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let specs: Vec<ListenSpec> = vec!["tls:127.0.0.1:0".parse().unwrap()];
    let err = Transports::start(&specs, TransportConfig::default(), Arc::new(Probe(tx)))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("certificate"), "{err}");
}
