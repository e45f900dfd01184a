//! The contact-centre HTTP API on a real node: queues and agents listed from their actors,
//! agent commands behind the bearer token, problem bodies for what is refused or missing.
//! Spoken to in raw HTTP/1.1 over a loopback TCP socket.

mod common;

use common::{http_request, Reply};

use std::time::Duration;

use switchyard::config::Config;
use switchyard::server::Node;
use switchyard::sip::auth::{ha1, Algorithm};

const TOKEN: &str = "s3cret-token-for-the-api-cc-tests-0123";

/// Bound on every network step, so a hung server fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(5);

const DOMAIN: &str = "t.test";

/// Tenant `t` with queue `q` and agents `a1`, `a2` (users 1001, 1002, password `pw`) in it;
/// `token` set or not.
fn cc_config(dir: &std::path::Path, token: Option<&str>) -> Config {
    let ha1 = |user| ha1(Algorithm::Md5, user, DOMAIN, "pw");
    let (h1, h2) = (ha1("1001"), ha1("1002"));
    let text = format!(
        r#"
[registrar]
algorithms = ["MD5"]

[[tenants]]
id = "t"
domain = "{DOMAIN}"
users = [
  {{ username = "1001", ha1_md5 = "{h1}" }},
  {{ username = "1002", ha1_md5 = "{h2}" }},
]

[[tenants.queues]]
id = "q"

[[tenants.agents]]
id = "a1"
user = "1001"
queues = [{{ queue = "q" }}]

[[tenants.agents]]
id = "a2"
user = "1002"
queues = [{{ queue = "q" }}]
"#
    );
    let mut c = Config::from_toml(&text).expect("test config parses");
    let base = common::config(dir, &[]);
    c.sip.listen = base.sip.listen;
    c.http.listen = base.http.listen;
    c.http.token = token.map(str::to_owned);
    c.data_dir = base.data_dir;
    c
}

async fn start(dir: &std::path::Path, token: Option<&str>) -> Node {
    common::start_with(cc_config(dir, token)).await
}

/// A GET with the node's token (reads need it too).
async fn get(node: &Node, path: &str) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    http_request(node.http_addr, "GET", path, Some(&auth), "").await
}

/// A POST with `Authorization: Bearer <token>` when a token is given.
async fn post(node: &Node, path: &str, token: Option<&str>, body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    http_request(node.http_addr, "POST", path, auth.as_deref(), body).await
}

fn assert_has(reply: &Reply, fragments: &[&str]) {
    for f in fragments {
        assert!(reply.body.contains(f), "{f} in {}", reply.body);
    }
}

/// A problem body (RFC 9457) with `status`, its media type and `detail_part` in its detail.
fn assert_problem(reply: &Reply, status: u16, detail_part: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_has(reply, &[&format!(r#""status":{status}"#), detail_part]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_agents_are_listed_from_their_actors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), Some(TOKEN)).await;

    let r = get(&node, "/queues").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.body.starts_with('['), "a list: {}", r.body);
    assert_has(&r, &[r#""tenant":"t""#, r#""queue":"q""#, r#""members":2"#]);
    assert_eq!(r.body.matches(r#""queue":"#).count(), 1, "{}", r.body);

    let r = get(&node, "/queues?tenant=t").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(&r, &[r#""members":2"#]);
    assert_problem(&get(&node, "/queues?tenant=nope").await, 404, "nope");

    let r = get(&node, "/queues/t/q").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with('{'), "one queue: {}", r.body);
    assert_has(&r, &[r#""queue":"q""#, r#""waiting":0"#]);
    let r = get(&node, "/queues/t/q/waiting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let r = get(&node, "/queues/t/q/decisions").await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    assert_problem(&get(&node, "/queues/t/nope").await, 404, "no queue");
    assert_problem(&get(&node, "/queues/x/q/waiting").await, 404, "no tenant");

    let r = get(&node, "/agents").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(
        &r,
        &[
            r#""total":2"#,
            r#""unanswered":0"#,
            r#""id":"a1""#,
            r#""id":"a2""#,
            r#""state":"logged_out""#,
        ],
    );
    assert_eq!(r.body.matches(r#""tenant":"t""#).count(), 2, "{}", r.body);

    // Pages are in agent id order; the total counts every page.
    let r = get(&node, "/agents?tenant=t&limit=1&offset=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(&r, &[r#""total":2"#, r#""id":"a2""#]);
    assert!(!r.body.contains(r#""id":"a1""#), "{}", r.body);

    let r = get(&node, "/agents?state=available").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(&r, &[r#""total":0"#, r#""agents":[]"#]);

    let r = get(&node, "/agents/t/a2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(
        &r,
        &[r#""id":"a2""#, r#""user":"1002""#, r#""queues":["q"]"#],
    );

    assert_problem(&get(&node, "/agents/t/nobody").await, 404, "no agent");
    assert_problem(&get(&node, "/agents?state=asleep").await, 400, "asleep");
    assert_problem(&get(&node, "/agents?limt=5").await, 400, "limt");
    assert_problem(&get(&node, "/agents?tenant=nope").await, 404, "nope");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_commands_need_the_token_and_report_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), Some(TOKEN)).await;
    let lunch = r#"{"reason":"lunch"}"#;

    // No credentials: 401 with a challenge, before anything else is looked at.
    let r = post(&node, "/agents/t/a1/not-ready", None, lunch).await;
    assert_problem(&r, 401, "Bearer");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let r = post(&node, "/agents/t/nobody/login", None, "").await;
    assert_eq!(r.status, 401, "{}", r.body);

    // A wrong token (or a different scheme) gets nowhere either.
    let r = post(&node, "/agents/t/a1/not-ready", Some("guess"), lunch).await;
    assert_problem(&r, 403, "not valid");
    let basic = format!("Basic {TOKEN}");
    let r = http_request(
        node.http_addr,
        "POST",
        "/agents/t/a1/not-ready",
        Some(&basic),
        "",
    )
    .await;
    assert_problem(&r, 401, "Bearer");
    let r = get(&node, "/agents/t/a1").await;
    assert_has(&r, &[r#""state":"logged_out""#]);

    // The token works: the agent's figures after the change come back.
    let r = post(&node, "/agents/t/a1/not-ready", Some(TOKEN), lunch).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), "application/json");
    assert_has(
        &r,
        &[
            r#""id":"a1""#,
            r#""state":"not_ready""#,
            r#""detail":"lunch""#,
        ],
    );
    let r = get(&node, "/agents?state=not_ready").await;
    assert_has(&r, &[r#""total":1"#, r#""id":"a1""#]);

    // Without a body the reason is "break".
    let r = post(&node, "/agents/t/a2/not-ready", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(&r, &[r#""state":"not_ready""#, r#""detail":"break""#]);
    let r = post(&node, "/agents/t/a2/not-ready", Some(TOKEN), r#"{"why":1}"#).await;
    assert_problem(&r, 400, "why");

    // The agent refuses to be ready without a registered phone: 409 with its reason.
    let r = post(&node, "/agents/t/a1/ready", Some(TOKEN), "").await;
    assert_problem(&r, 409, "no registered phone");
    let r = post(&node, "/agents/t/a1/login", Some(TOKEN), "").await;
    assert_problem(&r, 409, "no registered phone");
    let r = post(&node, "/agents/t/a1/logout", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(&r, &[r#""state":"logged_out""#]);

    let r = post(&node, "/agents/t/nobody/logout", Some(TOKEN), "").await;
    assert_problem(&r, 404, "no agent");
    let r = post(&node, "/agents/x/a1/logout", Some(TOKEN), "").await;
    assert_problem(&r, 404, "no tenant");
    // Commands are POST only.
    let r = get(&node, "/agents/t/a1/logout").await;
    assert_problem(&r, 405, "GET");

    // Every command outcome is counted, by command and result; refusals for the token by
    // reason before any command is looked at.
    let r = get(&node, "/metrics").await;
    for reason in ["missing", "invalid"] {
        let series = format!(r#"switchyard_api_auth_refused_total{{reason="{reason}"}}"#);
        assert!(r.body.contains(&series), "{series} in {}", r.body);
    }
    for (command, result) in [
        ("not_ready", "ok"),
        ("not_ready", "bad_request"),
        ("ready", "refused"),
        ("logout", "not_found"),
    ] {
        let found = r.body.lines().any(|l| {
            l.starts_with("switchyard_api_agent_commands_total{")
                && l.contains(&format!(r#"command="{command}""#))
                && l.contains(&format!(r#"result="{result}""#))
        });
        assert!(found, "{command}/{result} counted in {}", r.body);
    }
    assert_has(&r, &["# HELP switchyard_api_agent_commands_total"]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_generated_into_the_data_dir_when_none_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), None).await;
    let path = dir.path().join(switchyard::api::TOKEN_FILE);
    let saved = std::fs::read_to_string(&path).expect("token file written");
    let token = saved.trim();
    assert_eq!(token.len(), 32, "{token:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let r = post(&node, "/agents/t/a1/not-ready", Some(token), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&node, "/agents/t/a1/not-ready", Some(TOKEN), "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_registered_phone_can_be_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), Some(TOKEN)).await;
    let phone = common::Ua::new().await;
    common::register_udp(&phone, common::udp_addr(&node), DOMAIN, "1001", "pw").await;

    // The registrar tells the agent by message: wait for it, bounded.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let r = get(&node, "/agents/t/a1").await;
        if r.body.contains(r#""phone_registered":true"#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phone never registered: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = post(&node, "/agents/t/a1/ready", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(&r, &[r#""state":"available""#, r#""offerable":true"#]);
    let r = get(&node, "/agents?state=available").await;
    assert_has(&r, &[r#""total":1"#, r#""id":"a1""#]);
    // The queue hears of its available member by message too.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let r = get(&node, "/queues/t/q").await;
        if r.body.contains(r#""available":1"#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never saw the agent: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = post(
        &node,
        "/agents/t/a1/not-ready",
        Some(TOKEN),
        r#"{"reason":"lunch"}"#,
    )
    .await;
    assert_has(&r, &[r#""state":"not_ready""#, r#""detail":"lunch""#]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_are_asked_concurrently_and_paged_in_order() {
    // More agents than the API asks at once, from a CSV as large tenants configure them.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("agents.csv");
    let rows: String = (0..300).map(|i| format!("m{i:04},u{i:04},q,,\n")).collect();
    std::fs::write(&csv, rows).unwrap();
    let mut c = cc_config(dir.path(), Some(TOKEN));
    c.tenants[0].agents_csv = Some(csv);
    let node = common::start_with(c).await;

    let r = get(&node, "/agents?tenant=t&limit=100&offset=250").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_has(&r, &[r#""total":302"#, r#""unanswered":0"#]);
    // a1, a2, then m0000..m0299: offset 250 is m0248, and the page runs to the end.
    assert_eq!(r.body.matches(r#""tenant":"t""#).count(), 52, "{}", r.body);
    let first = r.body.find(r#""id":"m0248""#).expect("m0248 first");
    let last = r.body.find(r#""id":"m0299""#).expect("m0299 last");
    assert!(first < last, "in id order");
    assert!(!r.body.contains(r#""id":"m0247""#), "{}", r.body);

    let r = post(&node, "/agents/t/m0123/not-ready", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&node, "/agents?state=not_ready").await;
    assert_has(&r, &[r#""total":1"#, r#""id":"m0123""#]);
    let r = get(&node, "/agents?state=logged_out&limit=10&offset=295").await;
    assert_has(&r, &[r#""total":301"#, r#""unanswered":0"#]);
    assert_eq!(r.body.matches(r#""tenant":"t""#).count(), 6, "{}", r.body);
    node.shutdown().await;
}
