//! A listener that dies is restarted (issue 16, item 5): the receive loops run under the
//! node's `sip` supervisor, a loop that panics outside the per-message isolation (fault
//! injection: `Transports::break_listener`) comes back on the same socket, `/health`
//! names it while it is down, and the restart is counted.

mod common;

use common::*;
use std::time::Duration;
use switchyard::server::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RESTARTS: &str = "switchyard_actor_restarts_total{kind=\"listener\"}";

async fn metric(node: &Node, series: &str) -> f64 {
    let r = http_request(node.http_addr, "GET", "/metrics", None, "").await;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// `/health`'s status and its check for `name`.
async fn health(node: &Node, name: &str) -> (u16, String) {
    let r = http_request(node.http_addr, "GET", "/health", None, "").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON health");
    let check = v["checks"][name].as_str().unwrap_or("absent").to_string();
    (r.status, check)
}

/// Polls `/health` until the check `name` reads `want` (and the status agrees); whether it
/// did within `wait`.
async fn health_becomes(node: &Node, name: &str, want: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        let (status, check) = health(node, name).await;
        let agrees = if want == "ok" {
            status == 200
        } else {
            status == 503
        };
        if check == want && agrees {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Sends an OPTIONS every 100 ms until one is answered 200; whether one was within `wait`.
async fn udp_answers(ua: &Ua, node: &Node, tag: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        let call_id = format!("{tag}-{i}");
        i += 1;
        ua.send(udp_addr(node), &options(&call_id, ua.addr, "UDP"))
            .await;
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Some((m, _)) = ua
            .recv(until.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if m.status() == Some(200) && call_id_of(&m).starts_with(tag) {
                return true;
            }
        }
    }
    false
}

fn call_id_of(m: &switchyard::sip::message::Message) -> String {
    m.call_id()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// An OPTIONS over a TCP connection; its status, or None if nothing came within `wait`.
async fn tcp_options(conn: &mut TcpStream, call_id: &str, wait: Duration) -> Option<u16> {
    let me = conn.local_addr().unwrap();
    conn.write_all(options(call_id, me, "TCP").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            return text[..end].split(' ').nth(1).and_then(|s| s.parse().ok());
        }
    }
}

async fn node_with_faults(dir: &std::path::Path) -> Node {
    let mut c = config(dir, &[]);
    c.fault_injection = true;
    start_with(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_receive_loop_that_dies_is_restarted_on_the_same_socket() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_faults(dir.path()).await;
    let sw = udp_addr(&node);
    let name = format!("udp:{sw}");
    let check = format!("listener {name}");
    let ua = Ua::new().await;
    assert!(udp_answers(&ua, &node, "before", Duration::from_secs(5)).await);
    assert_eq!(health(&node, &check).await, (200, "ok".to_string()));
    let restarts = metric(&node, RESTARTS).await;

    // The loop panics at its next datagram, outside the per-message isolation.
    assert!(node.transports.break_listener(&name));
    ua.send(sw, &options("kill", ua.addr, "UDP")).await;
    assert!(
        health_becomes(&node, &check, "failing", Duration::from_secs(3)).await,
        "/health names the UDP listener while it is down"
    );
    // Back on the same socket: the same address answers again, /health is ok again.
    assert!(
        udp_answers(&ua, &node, "after", Duration::from_secs(10)).await,
        "UDP answers again after the restart"
    );
    assert!(health_becomes(&node, &check, "ok", Duration::from_secs(3)).await);
    assert_eq!(udp_addr(&node), sw);
    assert!(metric(&node, RESTARTS).await >= restarts + 1.0);
    // A listener that does not exist cannot be broken.
    assert!(!node.transports.break_listener("udp:192.0.2.1:5060"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_accept_loop_that_dies_is_restarted_and_open_connections_live_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_faults(dir.path()).await;
    let sw = tcp_addr(&node);
    let name = format!("tcp:{sw}");
    let check = format!("listener {name}");
    let mut open = TcpStream::connect(sw).await.unwrap();
    assert_eq!(
        tcp_options(&mut open, "open-1", Duration::from_secs(5)).await,
        Some(200)
    );
    let restarts = metric(&node, RESTARTS).await;

    // The accept loop panics at its next connection (which it drops).
    assert!(node.transports.break_listener(&name));
    let mut victim = TcpStream::connect(sw).await.unwrap();
    assert_eq!(
        tcp_options(&mut victim, "victim", Duration::from_secs(2)).await,
        None,
        "the connection accepted by the dying loop is dropped"
    );
    assert!(
        health_becomes(&node, &check, "failing", Duration::from_secs(3)).await,
        "/health names the TCP listener while it is down"
    );
    // A connection opened before lives on while its listener is down and after.
    assert_eq!(
        tcp_options(&mut open, "open-2", Duration::from_secs(5)).await,
        Some(200)
    );
    assert!(health_becomes(&node, &check, "ok", Duration::from_secs(10)).await);
    let mut fresh = TcpStream::connect(sw).await.unwrap();
    assert_eq!(
        tcp_options(&mut fresh, "fresh", Duration::from_secs(5)).await,
        Some(200),
        "new connections are accepted again"
    );
    assert!(metric(&node, RESTARTS).await >= restarts + 1.0);
    // UDP was never down.
    assert_eq!(
        health(&node, &format!("listener udp:{}", udp_addr(&node))).await,
        (200, "ok".to_string())
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_not_breakable_without_fault_injection() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]).await;
    let name = format!("udp:{}", udp_addr(&node));
    assert!(!node.transports.break_listener(&name));
    let (status, check) = health(&node, &format!("listener {name}")).await;
    assert_eq!((status, check.as_str()), (200, "ok"));
    node.shutdown().await;
}
