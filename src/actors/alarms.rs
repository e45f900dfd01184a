//! Trunk alarms leave the node here: each is logged, counted, and POSTed as JSON to the
//! configured webhook by one sender task that owns a bounded queue.
//!
//! The sender speaks plain HTTP/1.1 over a tokio `TcpStream` (`http://` URLs only; https is
//! not supported yet). A delivery is retried with backoff (1 s, 2 s, 4 s) on a connection
//! error, a timeout or a non-2xx answer; alarms arriving while the queue is full are dropped
//! and counted, so a dead webhook never slows a trunk actor down.
//!
//! Body: `{"alarm": name, "kind": kind, "raised": bool, "trunk": id, "node": name,
//! "at_ms": unix ms, ...the alarm's own fields}`, where `alarm` is the edge
//! (`trunk-down`, `trunk-up`, `asr-deviation`, `asr-recovered`, `consecutive-failures`,
//! `failures-cleared`, `saturated`, `saturation-cleared`) and `kind` names the alarm both
//! edges belong to (`trunk-down`, `asr-deviation`, `consecutive-failures`,
//! `channels-saturated`, `cps-saturated`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::AlarmsConfig;
use crate::routing::trunks::{AlarmEvent, AsrAlarmConfig, Resource};

pub const ALARMS: &str = "switchyard_alarms_total";
pub const WEBHOOK_DELIVERIES: &str = "switchyard_webhook_deliveries_total";

/// Alarms waiting for the webhook at most; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 256;

/// Waits before the retries of a failed delivery (so 4 tries in all).
pub const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// One try (connect, send, status line) gives up after this long.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Describes the alarm metrics.
pub fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        ALARMS,
        "Alarm edges raised or cleared, by alarm (trunk-down, asr-deviation, ...) and trunk"
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Alarm webhook POSTs, by result (ok, retried, failed, dropped)"
    );
}

/// A JSON value of an alarm field.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Num(f64),
    Str(String),
}

/// One alarm edge of one trunk, as logged, counted and posted.
#[derive(Clone, Debug, PartialEq)]
pub struct Alarm {
    /// The edge: "trunk-down", "asr-deviation", "asr-recovered", ...
    pub alarm: &'static str,
    /// The alarm both edges belong to (the raise's name).
    pub kind: &'static str,
    /// Raised (true) or cleared (false).
    pub raised: bool,
    pub trunk: Arc<str>,
    pub at_ms: u64,
    /// The edge's own figures, in order.
    pub fields: Vec<(&'static str, Value)>,
}

impl Alarm {
    /// The trunk went down (`reason`: "failed-probes" or "failed-calls").
    pub fn trunk_down(trunk: Arc<str>, reason: &'static str, at_ms: u64) -> Alarm {
        Alarm {
            alarm: "trunk-down",
            kind: "trunk-down",
            raised: true,
            trunk,
            at_ms,
            fields: vec![("reason", Value::Str(reason.into()))],
        }
    }

    /// The trunk's registration with its carrier failed (`detail` says how): it is down.
    pub fn trunk_unregistered(trunk: Arc<str>, detail: String, at_ms: u64) -> Alarm {
        Alarm {
            alarm: "trunk-down",
            kind: "trunk-down",
            raised: true,
            trunk,
            at_ms,
            fields: vec![
                ("reason", Value::Str("registration".into())),
                ("detail", Value::Str(detail)),
            ],
        }
    }

    /// The trunk came back after `down_ms` down.
    pub fn trunk_up(trunk: Arc<str>, down_ms: u64, at_ms: u64) -> Alarm {
        Alarm {
            alarm: "trunk-up",
            kind: "trunk-down",
            raised: false,
            trunk,
            at_ms,
            fields: vec![("down_ms", Value::Int(down_ms))],
        }
    }

    /// An edge from one of the pure alarms of [`crate::routing::trunks`].
    pub fn from_event(trunk: Arc<str>, ev: &AlarmEvent) -> Alarm {
        let resource = |r: &Resource| {
            Value::Str(
                match r {
                    Resource::Channels => "channels",
                    Resource::Cps => "cps",
                }
                .into(),
            )
        };
        let (alarm, at_ms, fields) = match ev {
            AlarmEvent::AsrDeviation {
                asr,
                baseline,
                at_ms,
            } => (
                "asr-deviation",
                *at_ms,
                vec![
                    ("asr", Value::Num(*asr)),
                    ("baseline", Value::Num(*baseline)),
                ],
            ),
            AlarmEvent::AsrRecovered {
                asr,
                baseline,
                at_ms,
            } => (
                "asr-recovered",
                *at_ms,
                vec![
                    ("asr", Value::Num(*asr)),
                    ("baseline", Value::Num(*baseline)),
                ],
            ),
            AlarmEvent::ConsecutiveFailures { count, at_ms } => (
                "consecutive-failures",
                *at_ms,
                vec![("count", Value::Int(u64::from(*count)))],
            ),
            AlarmEvent::FailuresCleared { at_ms } => ("failures-cleared", *at_ms, vec![]),
            AlarmEvent::Saturated {
                resource: r,
                used,
                max,
                at_ms,
            } => (
                "saturated",
                *at_ms,
                vec![
                    ("resource", resource(r)),
                    ("used", Value::Int(u64::from(*used))),
                    ("max", Value::Int(u64::from(*max))),
                ],
            ),
            AlarmEvent::SaturationCleared {
                resource: r,
                used,
                max,
                at_ms,
            } => (
                "saturation-cleared",
                *at_ms,
                vec![
                    ("resource", resource(r)),
                    ("used", Value::Int(u64::from(*used))),
                    ("max", Value::Int(u64::from(*max))),
                ],
            ),
        };
        Alarm {
            alarm,
            kind: ev.kind(),
            raised: ev.raised(),
            trunk,
            at_ms,
            fields,
        }
    }

    /// The webhook body.
    pub fn to_json(&self, node: &str) -> String {
        let mut s = String::with_capacity(160);
        s.push('{');
        json_str(&mut s, "alarm");
        s.push(':');
        json_str(&mut s, self.alarm);
        s.push_str(",\"kind\":");
        json_str(&mut s, self.kind);
        let _ = write!(s, ",\"raised\":{}", self.raised);
        s.push_str(",\"trunk\":");
        json_str(&mut s, &self.trunk);
        s.push_str(",\"node\":");
        json_str(&mut s, node);
        let _ = write!(s, ",\"at_ms\":{}", self.at_ms);
        for (k, v) in &self.fields {
            s.push(',');
            json_str(&mut s, k);
            s.push(':');
            match v {
                Value::Int(i) => {
                    let _ = write!(s, "{i}");
                }
                // JSON has no NaN or infinity.
                Value::Num(f) if f.is_finite() => {
                    let _ = write!(s, "{f}");
                }
                Value::Num(_) => s.push_str("null"),
                Value::Str(t) => json_str(&mut s, t),
            }
        }
        s.push('}');
        s
    }
}

/// Appends `v` as a JSON string (RFC 8259 escaping).
fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Where the webhook POSTs go, from an `http://host[:port][/path]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl WebhookUrl {
    /// Parses an `http://` URL (https is not supported yet).
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                "https is not supported yet: use http://".to_string()
            } else {
                format!("{url:?}: must start with http://")
            }
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: needs a host[:port] and no user info"));
        }
        // `[v6]:port`, `host:port` or `host`.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed IPv6 bracket"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            None => 80,
        };
        if host.is_empty() || path.contains(char::is_whitespace) {
            return Err(format!("{url:?}: bad host or path"));
        }
        Ok(WebhookUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The Host header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Where trunk actors hand their alarms: logs and counts each, and queues it for the webhook
/// when one is configured. Cheap to clone; the sender task ends when the last clone is
/// dropped.
#[derive(Clone, Debug)]
pub struct AlarmSink {
    node: Arc<str>,
    config: Arc<AlarmsConfig>,
    tx: Option<mpsc::Sender<Arc<str>>>,
}

impl AlarmSink {
    /// Starts the webhook sender when `config.webhook_url` is set (needs a tokio runtime).
    pub fn start(config: &AlarmsConfig, node: &str) -> Result<AlarmSink, String> {
        let tx = match &config.webhook_url {
            Some(url) => {
                let url = WebhookUrl::parse(url)?;
                let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                tokio::spawn(deliver_all(url, rx, BACKOFF.to_vec()));
                Some(tx)
            }
            None => None,
        };
        Ok(AlarmSink {
            node: Arc::from(node),
            config: Arc::new(config.clone()),
            tx,
        })
    }

    /// Logs and counts only (no webhook): for tests and nodes without `[alarms]`.
    pub fn log_only(config: &AlarmsConfig, node: &str) -> AlarmSink {
        AlarmSink {
            node: Arc::from(node),
            config: Arc::new(config.clone()),
            tx: None,
        }
    }

    /// The thresholds in force.
    pub fn config(&self) -> &AlarmsConfig {
        &self.config
    }

    /// The answer-rate alarm's tuning from the configuration.
    pub fn asr_config(&self) -> AsrAlarmConfig {
        AsrAlarmConfig {
            deviation: self.config.asr_deviation,
            min_calls: self.config.asr_min_calls,
            ..AsrAlarmConfig::default()
        }
    }

    /// Logs, counts and queues one alarm (never waits: a full queue drops it).
    pub fn raise(&self, a: Alarm) {
        let body = a.to_json(&self.node);
        if a.raised {
            tracing::warn!(trunk = %a.trunk, alarm = a.alarm, %body, "trunk alarm raised");
        } else {
            tracing::info!(trunk = %a.trunk, alarm = a.alarm, %body, "trunk alarm cleared");
        }
        metrics::counter!(ALARMS, "kind" => a.alarm, "trunk" => a.trunk.to_string()).increment(1);
        let Some(tx) = &self.tx else { return };
        if tx.try_send(Arc::from(body)).is_err() {
            metrics::counter!(WEBHOOK_DELIVERIES, "result" => "dropped").increment(1);
            tracing::warn!(trunk = %a.trunk, alarm = a.alarm, "alarm webhook queue full: dropped");
        }
    }
}

/// The sender task: one delivery at a time, in order, each with its retries.
async fn deliver_all(url: WebhookUrl, mut rx: mpsc::Receiver<Arc<str>>, backoff: Vec<Duration>) {
    while let Some(body) = rx.recv().await {
        deliver(&url, &body, &backoff).await;
    }
}

/// POSTs `body`, retrying after each wait in `backoff`; true when a 2xx came back.
async fn deliver(url: &WebhookUrl, body: &str, backoff: &[Duration]) -> bool {
    let mut waits = backoff.iter();
    loop {
        let result = tokio::time::timeout(TRY_TIMEOUT, post(url, body)).await;
        let error = match result {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                metrics::counter!(WEBHOOK_DELIVERIES, "result" => "ok").increment(1);
                return true;
            }
            Ok(Ok(status)) => format!("HTTP {status}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        let Some(wait) = waits.next() else {
            metrics::counter!(WEBHOOK_DELIVERIES, "result" => "failed").increment(1);
            tracing::warn!(host = %url.host, port = url.port, %error, "alarm webhook failed: giving up");
            return false;
        };
        metrics::counter!(WEBHOOK_DELIVERIES, "result" => "retried").increment(1);
        tracing::info!(host = %url.host, port = url.port, %error, retry_in = ?wait, "alarm webhook failed: retrying");
        tokio::time::sleep(*wait).await;
    }
}

/// One POST on a fresh connection (`Connection: close`); returns the status code.
async fn post(url: &WebhookUrl, body: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchyard\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    // Only the status line matters; the rest of the answer is not read.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line");
    let line = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut parts = line.split_ascii_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn urls_parse_and_https_is_refused() {
        assert_eq!(
            WebhookUrl::parse("http://127.0.0.1:8080/hook?x=1").unwrap(),
            WebhookUrl {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/hook?x=1".into()
            }
        );
        let u = WebhookUrl::parse("http://alarms.example").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert_eq!(u.host_header(), "alarms.example");
        let u = WebhookUrl::parse("http://[::1]:9/a").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.host_header(), "[::1]:9");
        assert!(WebhookUrl::parse("https://x/")
            .unwrap_err()
            .contains("not supported"));
        assert!(WebhookUrl::parse("ftp://x/").is_err());
        assert!(WebhookUrl::parse("http://u:p@x/").is_err());
        assert!(WebhookUrl::parse("http://x:99999/").is_err());
        assert!(WebhookUrl::parse("http:///p").is_err());
    }

    #[test]
    fn json_body_carries_the_edge_and_escapes_strings() {
        let ev = AlarmEvent::AsrDeviation {
            asr: 0.5,
            baseline: 0.75,
            at_ms: 7,
        };
        let a = Alarm::from_event(Arc::from("c\"1"), &ev);
        assert_eq!(
            a.to_json("n\\1"),
            r#"{"alarm":"asr-deviation","kind":"asr-deviation","raised":true,"trunk":"c\"1","node":"n\\1","at_ms":7,"asr":0.5,"baseline":0.75}"#
        );
        let sat = Alarm::from_event(
            Arc::from("t"),
            &AlarmEvent::SaturationCleared {
                resource: Resource::Cps,
                used: 1,
                max: 10,
                at_ms: 3,
            },
        );
        assert_eq!(
            sat.to_json("n"),
            r#"{"alarm":"saturation-cleared","kind":"cps-saturated","raised":false,"trunk":"t","node":"n","at_ms":3,"resource":"cps","used":1,"max":10}"#
        );
        let down = Alarm::trunk_down(Arc::from("t"), "failed-calls", 9);
        assert_eq!(
            down.to_json("n"),
            r#"{"alarm":"trunk-down","kind":"trunk-down","raised":true,"trunk":"t","node":"n","at_ms":9,"reason":"failed-calls"}"#
        );
        let mut s = String::new();
        json_str(&mut s, "a\nb\u{1}é");
        assert_eq!(s, "\"a\\nb\\u0001é\"");
        let nan = Alarm {
            fields: vec![("asr", Value::Num(f64::NAN))],
            ..down
        };
        assert!(nan.to_json("n").ends_with("\"asr\":null}"));
    }

    /// Answers each request with the next status of `statuses`; returns the bodies seen.
    async fn server(statuses: Vec<u16>) -> (WebhookUrl, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for status in statuses {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // Head, then Content-Length bytes of body.
                let body = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "request cut short");
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if body.len() >= len {
                            assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
                            break body.to_string();
                        }
                    }
                };
                let _ = tx.send(body);
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        (url, rx)
    }

    #[tokio::test]
    async fn a_failed_post_is_retried_until_accepted() {
        let (url, mut bodies) = server(vec![500, 503, 200]).await;
        let waits = [Duration::from_millis(10); 3];
        let ok = tokio::time::timeout(Duration::from_secs(10), deliver(&url, "{}", &waits))
            .await
            .unwrap();
        assert!(ok);
        for _ in 0..3 {
            assert_eq!(bodies.recv().await.unwrap(), "{}");
        }
    }

    #[tokio::test]
    async fn delivery_gives_up_after_the_last_retry() {
        let (url, mut bodies) = server(vec![500, 500]).await;
        let waits = [Duration::from_millis(10)];
        let ok = tokio::time::timeout(Duration::from_secs(10), deliver(&url, "{}", &waits))
            .await
            .unwrap();
        assert!(!ok);
        assert_eq!(bodies.recv().await.unwrap(), "{}");
        assert_eq!(bodies.recv().await.unwrap(), "{}");
    }
}
