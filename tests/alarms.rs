//! Trunk alarms reach a webhook: a test HTTP server on loopback receives the JSON POSTs of a
//! real node whose carriers are test user agents. A failed delivery (500) is retried; a
//! trunk taken down by failed calls and an answer rate falling from its baseline each
//! arrive as an alarm.

mod common;

use common::*;
use std::time::Duration;
use switchyard::config::{Config, TrunkConfig};
use switchyard::server::Node;
use switchyard::sip::message::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A node whose route `9` goes to `trunks`, posting alarms to `hook` with `alarms` settings.
async fn node(dir: &std::path::Path, trunks: Vec<TrunkConfig>, hook: &str, alarms: &str) -> Node {
    let mut c = trunk_config(dir, trunks, "priority");
    c.alarms = toml::from_str(&format!("webhook_url = \"{hook}\"\n{alarms}")).unwrap();
    start_with(c).await
}

/// The carrier's INVITE for `number` (retransmissions of earlier calls are skipped).
async fn expect_invite(gw: &Ua, number: &str) -> Message {
    gw.expect(&format!("INVITE for {number}"), |m| {
        m.method().is_some_and(|x| x.to_string() == "INVITE") && header(m, "To").contains(number)
    })
    .await
    .0
}

/// The caller's final response of call `id` with `status`.
async fn expect_final(caller: &Ua, id: &str, status: u16) {
    caller
        .expect(&format!("{status} for {id}"), |m| {
            m.status() == Some(status) && header(m, "Call-ID") == id
        })
        .await;
}

/// One request as the webhook server saw it.
#[derive(Debug)]
struct Hook {
    head: String,
    body: String,
    /// The status it was answered with.
    status: u16,
}

/// A webhook server on 127.0.0.1:0: answers the first POST 500 (to make the sender retry)
/// and the others 200, and hands every request to the test.
async fn webhook_server() -> (String, mpsc::UnboundedReceiver<Hook>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let Some((head, body)) = read_request(&mut s).await else {
                continue;
            };
            let status = if std::mem::take(&mut first) { 500 } else { 200 };
            let reason = if status == 200 {
                "OK"
            } else {
                "Internal Server Error"
            };
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                )
                .await;
            let _ = tx.send(Hook { head, body, status });
        }
    });
    (url, rx)
}

/// Reads one HTTP request: the head, then `Content-Length` bytes of body (bounded).
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let read = async {
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let pos = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
            let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= pos + 4 + len {
                let body = String::from_utf8_lossy(&buf[pos + 4..pos + 4 + len]).into_owned();
                return Some((head, body));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// Waits (bounded) for the next accepted request whose body names `alarm`; the ones before
/// it are returned too, in order.
async fn expect_alarm(rx: &mut mpsc::UnboundedReceiver<Hook>, alarm: &str) -> Vec<Hook> {
    let needle = format!("\"alarm\":\"{alarm}\"");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(h)) => {
                // The alarm counts once it was accepted (a 500 is retried).
                let hit = h.body.contains(&needle) && h.status == 200;
                seen.push(h);
                if hit {
                    return seen;
                }
            }
            _ => panic!("no {alarm} alarm posted; got {seen:#?}"),
        }
    }
}

/// The value of a top-level JSON field as written by the sender (flat object, no nesting).
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let start = body.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &body[start..];
    let end = if let Some(r) = rest.strip_prefix('"') {
        r.find('"')? + 2
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim_matches('"'))
}

fn metrics_text() -> String {
    switchyard::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_down_is_posted_to_the_webhook_and_a_500_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut hooks) = webhook_server().await;
    let gw = Ua::new().await;
    let node = node(
        dir.path(),
        vec![trunk(
            "down-a",
            gw.addr,
            "down_after_failed_calls = 3\ndown_hold_secs = 1",
        )],
        &url,
        "failure_streak = 2",
    )
    .await;
    let sw = udp_addr(&node);
    let table = node.ctx.trunks.get().unwrap().clone();
    let caller = Ua::new().await;
    // Three calls, each refused 503 by the carrier: a failover cause, so the trunk goes down.
    for i in 0..3 {
        let (id, number) = (format!("al-down-{i}"), format!("10{i}"));
        caller
            .send(sw, &invite(&id, &format!("9{number}"), caller.addr, sw))
            .await;
        let inv = expect_invite(&gw, &number).await;
        gw.send(
            sw,
            &answer(&inv, 503, "Service Unavailable", "gw", gw.addr, ""),
        )
        .await;
        expect_final(&caller, &id, 503).await;
    }
    assert!(
        wait_until(Duration::from_secs(3), || !table
            .get("down-a")
            .unwrap()
            .is_up())
        .await,
        "trunk down after 3 failed calls"
    );
    // The streak alarm (2 in a row) comes first and is refused once, then retried; the
    // down alarm follows.
    let seen = expect_alarm(&mut hooks, "trunk-down").await;
    assert!(seen.len() >= 3, "{seen:#?}");
    let (refused, retried) = (&seen[0], &seen[1]);
    assert_eq!(refused.status, 500);
    assert_eq!(retried.status, 200);
    assert_eq!(refused.body, retried.body, "a retry sends the same alarm");
    assert_eq!(field(&refused.body, "alarm"), Some("consecutive-failures"));
    assert_eq!(field(&refused.body, "count"), Some("2"));
    assert!(refused.head.starts_with("POST /hook HTTP/1.1\r\n"));
    assert!(refused
        .head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let down = seen.last().unwrap();
    assert_eq!(down.status, 200);
    assert_eq!(field(&down.body, "trunk"), Some("down-a"));
    assert_eq!(field(&down.body, "kind"), Some("trunk-down"));
    assert_eq!(field(&down.body, "raised"), Some("true"));
    assert_eq!(field(&down.body, "reason"), Some("failed-calls"));
    assert_eq!(field(&down.body, "node"), Some(node.name.as_str()));
    let at: u64 = field(&down.body, "at_ms").unwrap().parse().unwrap();
    assert!(at > 1_600_000_000_000, "unix ms: {at}");
    let m = metrics_text();
    assert!(
        m.lines().any(|l| l.starts_with("switchyard_alarms_total")
            && l.contains("kind=\"trunk-down\"")
            && l.contains("trunk=\"down-a\"")),
        "alarm counted"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("switchyard_webhook_deliveries_total")
                && l.contains("result=\"retried\"")),
        "retry counted"
    );
    // Without probes the hold-down brings the trunk back: the down alarm clears.
    let seen = expect_alarm(&mut hooks, "trunk-up").await;
    let up = seen.last().unwrap();
    assert_eq!(field(&up.body, "kind"), Some("trunk-down"));
    assert_eq!(field(&up.body, "raised"), Some("false"));
    let down_ms: u64 = field(&up.body, "down_ms").unwrap().parse().unwrap();
    assert!(down_ms >= 900, "down {down_ms} ms, hold-down 1 s");
    assert!(table.get("down-a").unwrap().is_up());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_rate_falling_from_its_baseline_is_posted() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut hooks) = webhook_server().await;
    let gw = Ua::new().await;
    let node = node(
        dir.path(),
        vec![trunk("asr-a", gw.addr, "")],
        &url,
        "asr_min_calls = 10\nasr_deviation = 0.2",
    )
    .await;
    let sw = udp_addr(&node);
    let table = node.ctx.trunks.get().unwrap().clone();
    let caller = Ua::new().await;
    // Ten answered calls set the baseline (ASR 1.0). An answered call reaches the trunk's
    // statistics when it ends, so each is hung up.
    for i in 0..10 {
        let (id, number) = (format!("al-asr-ok-{i}"), format!("20{i}"));
        caller
            .send(sw, &invite(&id, &format!("9{number}"), caller.addr, sw))
            .await;
        let inv = expect_invite(&gw, &number).await;
        gw.send(sw, &answer(&inv, 200, "OK", "gw", gw.addr, SDP))
            .await;
        expect_final(&caller, &id, 200).await;
        node.ctx
            .directory
            .lookup(id.as_bytes())
            .expect("call running")
            .cast(switchyard::actors::call::CallMsg::Hangup(
                "test over".into(),
            ))
            .unwrap();
        let (bye, _) = gw
            .expect("BYE", |m| {
                m.method().is_some_and(|x| x.to_string() == "BYE")
                    && header(m, "Call-ID") == header(&inv, "Call-ID")
            })
            .await;
        gw.send(sw, &answer(&bye, 200, "OK", "", gw.addr, "")).await;
    }
    // Now the carrier answers 480 (the callee's word, not a failover): the trunk stays up,
    // the answer rate drops. 10/13 is 0.77, more than 0.2 below the baseline.
    for i in 0..6 {
        let (id, number) = (format!("al-asr-no-{i}"), format!("30{i}"));
        caller
            .send(sw, &invite(&id, &format!("9{number}"), caller.addr, sw))
            .await;
        let inv = expect_invite(&gw, &number).await;
        gw.send(
            sw,
            &answer(&inv, 480, "Temporarily Unavailable", "gw", gw.addr, ""),
        )
        .await;
        expect_final(&caller, &id, 480).await;
    }
    let seen = expect_alarm(&mut hooks, "asr-deviation").await;
    assert!(
        seen.iter().all(|h| !h.body.contains("trunk-down")),
        "a callee's 480 never takes the trunk down: {seen:#?}"
    );
    assert!(table.get("asr-a").unwrap().is_up());
    let hit = seen.last().unwrap();
    assert_eq!(field(&hit.body, "trunk"), Some("asr-a"));
    assert_eq!(field(&hit.body, "raised"), Some("true"));
    let asr: f64 = field(&hit.body, "asr").unwrap().parse().unwrap();
    let baseline: f64 = field(&hit.body, "baseline").unwrap().parse().unwrap();
    assert!((baseline - 1.0).abs() < 1e-3, "baseline {baseline}");
    assert!(asr < baseline - 0.2 && asr > 0.5, "asr {asr}");
    // The first POST was refused (500) and retried: the alarm arrived all the same.
    assert_eq!(seen[0].status, 500, "{seen:#?}");
    assert_eq!(hit.status, 200);
    node.shutdown().await;
}

#[test]
fn webhook_urls_must_be_plain_http() {
    let check = |url: &str| {
        let c: Config = toml::from_str(&format!("[alarms]\nwebhook_url = \"{url}\"")).unwrap();
        c.validate()
    };
    assert!(check("http://127.0.0.1:8080/hook").is_ok());
    let errs = check("https://alarms.example/hook").unwrap_err();
    assert_eq!(errs[0].place, "alarms.webhook_url");
    assert!(errs[0].message.contains("https is not supported yet"));
    assert!(check("ftp://x/").is_err());
    assert!(check("http:///hook").is_err());
    let c: Config = toml::from_str("[alarms]\nasr_deviation = 1.5").unwrap();
    assert!(c.validate().is_err());
    let d = Config::default().alarms;
    assert_eq!(
        (
            d.webhook_url,
            d.asr_deviation,
            d.asr_min_calls,
            d.failure_streak
        ),
        (None, 0.2, 30, 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_trunk_raises_and_clears_the_channels_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut hooks) = webhook_server().await;
    let gw = Ua::new().await;
    let node = node(
        dir.path(),
        vec![trunk("sat-a", gw.addr, "max_channels = 1")],
        &url,
        "",
    )
    .await;
    let sw = udp_addr(&node);
    let table = node.ctx.trunks.get().unwrap().clone();
    let caller = Ua::new().await;
    // Call 1 rings and holds the only channel; call 2 finds the trunk full.
    caller
        .send(sw, &invite("al-sat-1", "9401", caller.addr, sw))
        .await;
    let inv = expect_invite(&gw, "401").await;
    gw.send(sw, &answer(&inv, 180, "Ringing", "gw", gw.addr, ""))
        .await;
    assert!(
        wait_until(Duration::from_secs(2), || table
            .get("sat-a")
            .unwrap()
            .channels()
            == 1)
        .await
    );
    caller
        .send(sw, &invite("al-sat-2", "9402", caller.addr, sw))
        .await;
    expect_final(&caller, "al-sat-2", 503).await;
    let seen = expect_alarm(&mut hooks, "saturated").await;
    let hit = seen.last().unwrap();
    assert_eq!(field(&hit.body, "kind"), Some("channels-saturated"));
    assert_eq!(field(&hit.body, "resource"), Some("channels"));
    assert_eq!(field(&hit.body, "max"), Some("1"));
    // The ringing call ends: the channel is free and the alarm clears.
    node.ctx
        .directory
        .lookup(b"al-sat-1")
        .expect("call running")
        .cast(switchyard::actors::call::CallMsg::Hangup(
            "test over".into(),
        ))
        .unwrap();
    let seen = expect_alarm(&mut hooks, "saturation-cleared").await;
    let hit = seen.last().unwrap();
    assert_eq!(field(&hit.body, "kind"), Some("channels-saturated"));
    assert_eq!(field(&hit.body, "used"), Some("0"));
    node.shutdown().await;
}
