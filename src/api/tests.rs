//! The API server on a real loopback socket, spoken to in raw HTTP/1.1.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::*;

/// Bound on every network step, so a hung server fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(5);

/// The node's token of [`start`]ed servers.
const NODE: &str = "node-token-for-the-api-unit-tests-0123";
/// Tenant `t1`'s token (as a config file's `api_token`).
const T1: &str = "tenant-one-token-for-the-api-unit-tests";

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

async fn start(health: Health) -> Server {
    let handle = crate::metrics::install().expect("install recorder");
    let state = ApiState::new(handle, health)
        .with_token(Token::new(NODE).expect("valid"))
        .with_tenant_token("t1", T1);
    start_with(state).await
}

async fn start_with(state: ApiState) -> Server {
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Server { addr, stop, task }
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// One request on a fresh connection (`Connection: close`), read to the end.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    request_with(addr, method, path, "").await
}

/// [`request`] with `Authorization: Bearer <token>`.
async fn request_as(addr: SocketAddr, method: &str, path: &str, token: &str) -> Reply {
    request_with(
        addr,
        method,
        path,
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await
}

/// [`request`] with `extra` header lines (each ending in CRLF).
async fn request_with(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    timeout(STEP, stream.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head/body separator");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // The parsing above is only right for sized bodies; catch a chunked reply loudly.
    assert!(
        !headers.contains_key("transfer-encoding"),
        "unexpected chunked reply: {headers:?}"
    );
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().expect("length"), body.len());
    }
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn metrics_renders_recorded_counters_and_build_info() {
    let server = start(Health::new()).await;
    metrics::counter!("switchyard_test_api_probe_total").increment(7);

    let reply = request(server.addr, "GET", "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], PROMETHEUS_TEXT);
    assert!(
        reply.body.contains("switchyard_test_api_probe_total 7"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains(&format!(
            "switchyard_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        reply.body
    );
    // Descriptions from describe_all() are rendered as HELP lines.
    assert!(
        reply.body.contains("# HELP switchyard_build_info Always 1"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn health_is_ok_json() {
    let server = start(Health::new()).await;
    let reply = request(server.addr, "GET", "/health").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(reply.body.contains(r#""status":"ok""#), "{}", reply.body);
    assert!(
        reply
            .body
            .contains(&format!(r#""version":"{}""#, env!("CARGO_PKG_VERSION"))),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains(r#""uptime_seconds":"#),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn health_with_a_failing_check_is_503() {
    let server = start(Health::new().with_check("store", || false)).await;
    let reply = request(server.addr, "GET", "/health").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains(r#""status":"unavailable""#),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains(r#""checks":{"store":"failing"}"#),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn unknown_path_is_a_404_problem() {
    let server = start(Health::new()).await;
    let reply = request_as(server.addr, "GET", "/nope", NODE).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], PROBLEM_JSON);
    for field in [
        r#""type":"about:blank""#,
        r#""title":"Not Found""#,
        r#""status":404"#,
        r#""detail":"no route for GET /nope""#,
    ] {
        assert!(reply.body.contains(field), "{field} in {}", reply.body);
    }
}

#[tokio::test]
async fn wrong_method_is_a_405_problem() {
    let server = start(Health::new()).await;
    let reply = request(server.addr, "POST", "/metrics").await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], PROBLEM_JSON);
    assert!(reply.body.contains(r#""status":405"#), "{}", reply.body);
    // RFC 9110 §15.5.6: a 405 lists the methods the resource does support.
    let allow = reply.headers.get("allow").expect("Allow header");
    assert!(allow.contains("GET"), "Allow: {allow}");
}

#[tokio::test]
async fn requests_are_counted_by_route_with_bounded_paths() {
    let server = start(Health::new()).await;
    request(server.addr, "GET", "/health").await;
    request_as(server.addr, "GET", "/scanner/probe-12345", NODE).await;
    request(server.addr, "POST", "/metrics").await;

    let reply = request(server.addr, "GET", "/metrics").await;
    // Other tests share the global recorder, so only presence is asserted, not counts.
    for series in [
        r#"switchyard_http_requests_total{path="/health",status="200"}"#,
        r#"switchyard_http_requests_total{path="other",status="404"}"#,
        r#"switchyard_http_requests_total{path="/metrics",status="405"}"#,
    ] {
        assert!(reply.body.contains(series), "{series} in {}", reply.body);
    }
    assert!(
        !reply.body.contains("probe-12345"),
        "an unknown path must not become a label: {}",
        reply.body
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let server = start(Health::new()).await;
    assert_eq!(request(server.addr, "GET", "/health").await.status, 200);
    server.stop.send(()).expect("server still running");
    timeout(STEP, server.task)
        .await
        .expect("server stops in time")
        .expect("server task did not panic")
        .expect("serve returned Ok");
    // The listener is closed: connecting now fails (or is reset before any reply).
    let refused = match TcpStream::connect(server.addr).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\n\r\n").await;
            let mut buf = Vec::new();
            matches!(
                timeout(STEP, s.read_to_end(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    };
    assert!(refused, "server still answers after shutdown");
}

#[test]
fn bearer_credential_needs_the_scheme_and_a_value() {
    assert_eq!(bearer_credential("Bearer abc"), Some("abc"));
    assert_eq!(bearer_credential("bearer  abc "), Some("abc"));
    assert_eq!(bearer_credential("Basic abc"), None);
    assert_eq!(bearer_credential("Bearer"), None);
    assert_eq!(bearer_credential("Bearer  "), None);
    assert_eq!(bearer_credential("abc"), None);
}

#[test]
fn token_matches_only_itself_and_hides_in_debug() {
    let secret = "s3cret-0123456789-0123456789-0123456789";
    let token = Token::new(secret).expect("valid");
    assert!(token.matches(secret));
    assert!(!token.matches(&secret[1..]));
    assert!(!token.matches(&format!("{secret} ")));
    assert!(!token.matches(""));
    assert!(!format!("{token:?}").contains(secret));
    assert!(Token::new("").is_none());
    assert!(Token::new("has space 0123456789-0123456789-0123").is_none());
    assert!(Token::new("tab\t0123456789-0123456789-0123456789").is_none());
    // Shorter than 32 characters: guessable, refused.
    assert!(Token::new("s3cret").is_none());
    assert!(Token::new(&"x".repeat(MIN_TOKEN_LEN - 1)).is_none());
    assert!(Token::new(&"x".repeat(MIN_TOKEN_LEN)).is_some());

    let a = Token::generate();
    let b = Token::generate();
    assert_eq!(a.expose().len(), 32);
    assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a.expose(), b.expose());
}

#[test]
fn token_is_configured_or_generated_once_then_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(TOKEN_FILE);

    let configured = "from-config-0123456789-0123456789-0123";
    let (token, origin) = load_token(Some(configured), dir.path()).expect("configured");
    assert_eq!((token.expose(), origin), (configured, TokenOrigin::Config));
    assert!(
        load_token(Some("short"), dir.path()).is_err(),
        "a short configured token is refused"
    );
    assert!(!path.exists(), "a configured token writes no file");

    let (first, origin) = load_token(None, dir.path()).expect("generated");
    assert_eq!(origin, TokenOrigin::Generated);
    assert_eq!(
        std::fs::read_to_string(&path).expect("file").trim(),
        first.expose()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let (again, origin) = load_token(None, dir.path()).expect("read back");
    assert_eq!(
        (again.expose(), origin),
        (first.expose(), TokenOrigin::File)
    );

    assert!(load_token(Some(""), dir.path()).is_err());
    std::fs::write(&path, "\n").expect("empty the file");
    assert!(
        load_token(None, dir.path()).is_err(),
        "an empty token file is an error, not an open API"
    );
    std::fs::write(&path, "short\n").expect("a short token in the file");
    assert!(load_token(None, dir.path()).is_err(), "a short token file");
}

#[tokio::test]
async fn without_a_contact_centre_lists_are_empty_and_items_unknown() {
    let server = start(Health::new()).await;
    let reply = request_as(server.addr, "GET", "/queues", NODE).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "[]"));
    let reply = request_as(server.addr, "GET", "/agents", NODE).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains(r#""total":0"#), "{}", reply.body);
    let reply = request_as(server.addr, "GET", "/agents/t/a1", NODE).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], PROBLEM_JSON);
}

#[tokio::test]
async fn every_route_but_health_and_metrics_needs_a_token() {
    let server = start(Health::new()).await;
    // No Authorization at all: 401 with the challenge, reads, mutations and unknown paths
    // alike (the routes cannot be mapped without a token).
    for (method, path) in [
        ("GET", "/queues"),
        ("GET", "/queues/t1/q/waiting"),
        ("GET", "/agents"),
        ("GET", "/trunks"),
        ("GET", "/recordings"),
        ("POST", "/agents/t/a1/logout"),
        ("GET", "/nope"),
        ("GET", "/health/"),
    ] {
        let reply = request(server.addr, method, path).await;
        assert_eq!(reply.status, 401, "{method} {path}: {}", reply.body);
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
        assert_eq!(reply.headers["content-type"], PROBLEM_JSON);
    }
    // Another scheme is no bearer credential.
    let basic = format!("Authorization: Basic {NODE}\r\n");
    let reply = request_with(server.addr, "GET", "/queues", &basic).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    // A token the node does not know: 403.
    let reply = request_as(server.addr, "GET", "/queues", "anything").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], PROBLEM_JSON);
    // Open: health and metrics.
    assert_eq!(request(server.addr, "GET", "/health").await.status, 200);
    assert_eq!(request(server.addr, "GET", "/metrics").await.status, 200);

    let metrics = request(server.addr, "GET", "/metrics").await.body;
    for reason in ["missing", "invalid"] {
        let series = format!(r#"switchyard_api_auth_refused_total{{reason="{reason}"}}"#);
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test]
async fn a_node_without_a_token_fails_closed() {
    let handle = crate::metrics::install().expect("install recorder");
    let server = start_with(ApiState::new(handle, Health::new())).await;
    let reply = request_as(server.addr, "POST", "/agents/t/a1/logout", "anything").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = request_as(server.addr, "GET", "/queues", "anything").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
}

#[tokio::test]
async fn a_tenant_token_sees_its_tenant_only() {
    let server = start(Health::new()).await;
    // Its own listing (no contact centre here: empty), another tenant's: 404 as unknown.
    let reply = request_as(server.addr, "GET", "/queues", T1).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "[]"));
    let reply = request_as(server.addr, "GET", "/queues?tenant=t1", T1).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = request_as(server.addr, "GET", "/queues?tenant=t2", T1).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(reply.body.contains(r#"no tenant \"t2\""#), "{}", reply.body);
    // A path of another tenant: 404, before its handler runs.
    for path in ["/queues/t2/q/waiting", "/agents/t2/a1", "/tenants/t2/users"] {
        let reply = request_as(server.addr, "GET", path, T1).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert!(reply.body.contains(r#"no tenant \"t2\""#), "{}", reply.body);
    }
    // Node-wide routes: 403, whatever the method; unknown paths stay 404.
    for (method, path) in [
        ("GET", "/trunks"),
        ("GET", "/routes"),
        ("GET", "/cluster"),
        ("GET", "/tenants"),
        ("PUT", "/routes/x"),
        ("POST", "/tenants/t1/tokens"),
        ("DELETE", "/tenants/t1/tokens/0123456789abcdef"),
        ("PUT", "/tenants/t1/users/u"),
        ("POST", "/calls/c1/recording/start"),
        ("GET", "/status"),
        ("GET", "/log"),
        ("PUT", "/log"),
    ] {
        let reply = request_as(server.addr, method, path, T1).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body);
        assert!(reply.body.contains("node's token"), "{}", reply.body);
    }
    assert_eq!(
        request_as(server.addr, "GET", "/nope", T1).await.status,
        404
    );

    let metrics = request(server.addr, "GET", "/metrics").await.body;
    for reason in ["node_only", "other_tenant"] {
        let series = format!(r#"switchyard_api_auth_refused_total{{reason="{reason}"}}"#);
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

/// Every method of every route the router serves is in the OpenAPI document, and every
/// operation the document lists is served (not a 405): a route added without its row in
/// [`openapi::OPERATIONS`] fails here.
#[tokio::test]
async fn the_openapi_document_lists_every_route_the_router_serves() {
    let server = start(Health::new()).await;
    let documented: std::collections::BTreeSet<(String, String)> = openapi::OPERATIONS
        .iter()
        .map(|(m, t, _)| (m.to_string(), t.to_string()))
        .collect();
    let mut served = std::collections::BTreeSet::new();
    let templates = registered_routes();
    assert!(templates.len() > 50, "{templates:?}");
    for template in templates {
        let path: String = template
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let reply = request_as(server.addr, method, &path, NODE).await;
            if reply.status != 405 {
                served.insert((method.to_string(), template.to_string()));
            }
        }
    }
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "served but not in the OpenAPI document: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(stale.is_empty(), "documented but not served: {stale:?}");
    let doc = request_as(server.addr, "GET", "/openapi.json", NODE).await;
    assert_eq!(doc.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        request_as(server.addr, "GET", "/openapi.json", T1)
            .await
            .status,
        200,
        "a tenant's token may read it"
    );
    assert_eq!(
        request(server.addr, "GET", "/openapi.json").await.status,
        401
    );
    let _ = server.stop.send(());
}
