//! The first five minutes (issue 24), as a newcomer meets them: the real `switchyard`
//! binary started with no config file in an empty directory.
//! 1. It prints the demo users' passwords once and keeps them in `data/demo-users.txt`.
//! 2. 1001 registers with digest (the demo tenant's domain is the node's address).
//! 3. 1001 calls the echo test 9196 (its INVITE challenged and authenticated), sends 50 RTP
//!    packets, and gets the 50 back.
//! 4. 1001 calls the queue 5000 while 1002 (its agent, available) is registered; 1002's
//!    phone rings and answers, and the call ends.
//! 5. `switchyard ctl status` and `switchyard ctl calls --json` show what happened, and
//!    `ctl` says in one line what to do when it cannot act.

mod common;

use common::rtp::{dominant_hz, sdp_addr, Rtp};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchyard::sip::message::{HeaderName, Message};
use tokio::net::UdpSocket;

/// The node's address: the demo tenant's domain.
const DOMAIN: &str = "127.0.0.1";

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// The binary, running in its own empty directory; killed when dropped.
struct Switch {
    child: Child,
    dir: tempfile::TempDir,
    sip: SocketAddr,
    http: SocketAddr,
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Switch {
    async fn start() -> Switch {
        let dir = tempfile::tempdir().unwrap();
        let sip = SocketAddr::from(([127, 0, 0, 1], free_port(true)));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port(false)));
        let stdout = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .current_dir(dir.path())
            .args(["--sip-listen", &format!("udp:{sip}")])
            .args(["--http-listen", &http.to_string()])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("switchyard binary starts");
        let sw = Switch {
            child,
            dir,
            sip,
            http,
        };
        let up = wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(http).is_ok()
        })
        .await;
        assert!(up, "the switch did not come up: {}", sw.stderr());
        sw
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path().join("stderr.txt")).unwrap_or_default()
    }

    /// `switchyard ctl ARGS` from the node's directory: (exit code, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .current_dir(self.path())
            .args(["--http-listen", &self.http.to_string(), "ctl"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.ctl(&all);
        assert_eq!(code, 0, "ctl {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?} JSON ({e}): {out}"))
    }
}

/// A phone of the demo: its SIP and RTP sockets on `ip`.
struct Phone {
    user: String,
    password: String,
    ua: Ua,
    rtp: Rtp,
}

impl Phone {
    async fn at(ip: &str, user: &str, password: &str) -> Phone {
        let sock = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = sock.local_addr().unwrap();
        Phone {
            user: user.into(),
            password: password.into(),
            ua: Ua { sock, addr },
            rtp: Rtp::at(ip).await,
        }
    }

    fn invite(&self, cid: &str, to: &str, cseq: u32, auth: Option<&str>) -> String {
        let (ua, user, sdp) = (self.ua.addr, &self.user, self.rtp.sdp());
        let auth = auth
            .map(|a| format!("Proxy-Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "INVITE sip:{to}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{cid}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=a-{cid}\r\nTo: <sip:{to}@{DOMAIN}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:{user}@{ua}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    }

    /// Calls `to`, answering the switch's 407 with digest: the switch's 200 and the
    /// caller's side of the dialog (ACK sent).
    async fn call(&self, sw: SocketAddr, cid: &str, to: &str) -> (Message, Side) {
        self.ua.send(sw, &self.invite(cid, to, 1, None)).await;
        let (first, _) = self
            .ua
            .expect("a final answer to the INVITE", |m| {
                m.status().is_some_and(|s| s >= 200)
            })
            .await;
        let (ok, cseq) = if first.status() == Some(407) {
            // The 407's ACK, then the INVITE again with credentials.
            let ack = format!(
                "ACK sip:{to}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=a-{cid}\r\nTo: {to_hdr}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                ua = self.ua.addr,
                user = self.user,
                to_hdr = header(&first, "To"),
            );
            self.ua.send(sw, &ack).await;
            let auth = credentials(
                &first,
                HeaderName::ProxyAuthenticate,
                &self.user,
                &self.password,
                "INVITE",
                &format!("sip:{to}@{DOMAIN}"),
            );
            self.ua
                .send(sw, &self.invite(cid, to, 2, Some(&auth)))
                .await;
            let (ok, _) = self
                .ua
                .expect("200 to the authenticated INVITE", |m| {
                    m.status().is_some_and(|s| s >= 200)
                })
                .await;
            (ok, 2)
        } else {
            (first, 1)
        };
        assert_eq!(
            ok.status(),
            Some(200),
            "the call to {to} is answered: {ok:?}"
        );
        let mut side = Side::caller(self.ua.addr, cid, &ok);
        side.cseq = cseq;
        self.ua.send(sw, &side.request("ACK", cseq, "", "")).await;
        (ok, side)
    }
}

/// `user password` lines.
fn demo_users(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("data/demo-users.txt")).expect("demo users");
    text.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_registers_calls_the_echo_test_and_the_queue() {
    let sw = Switch::start().await;
    // 1. The passwords: in the file (0600), and printed this once.
    let users = demo_users(sw.path());
    assert_eq!(
        users.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        ["1001", "1002", "1003", "1004", "1005"]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(sw.path().join("data/demo-users.txt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let printed = std::fs::read_to_string(sw.path().join("stdout.txt")).unwrap();
    assert!(
        printed.contains(&users[0].1),
        "passwords printed at the first start"
    );
    let pw = |u: &str| users.iter().find(|(n, _)| n == u).unwrap().1.clone();

    // 2. 1001 registers with digest; a wrong password does not.
    let p1001 = Phone::at("127.0.0.41", "1001", &pw("1001")).await;
    let stranger = Ua::new().await;
    let contact = format!("sip:1001@{}", stranger.addr);
    stranger
        .send(
            sw.sip,
            &register_request(
                DOMAIN,
                "1001",
                &contact,
                "UDP",
                &stranger.addr.to_string(),
                1,
                None,
            ),
        )
        .await;
    let (ch, _) = stranger.expect_status(401).await;
    let bad = credentials(
        &ch,
        HeaderName::WwwAuthenticate,
        "1001",
        "guess",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    stranger
        .send(
            sw.sip,
            &register_request(
                DOMAIN,
                "1001",
                &contact,
                "UDP",
                &stranger.addr.to_string(),
                2,
                Some(bad),
            ),
        )
        .await;
    let (refused, _) = stranger
        .expect("a refusal", |m| m.status().is_some_and(|s| s >= 400))
        .await;
    assert!(matches!(refused.status(), Some(401 | 403)));
    register_udp(&p1001.ua, sw.sip, DOMAIN, "1001", &pw("1001")).await;

    // 3. The echo test: 50 packets out, the same 50 back.
    let (ok, mut side) = p1001.call(sw.sip, "ffm-echo", "9196").await;
    let to_switch = sdp_addr(&ok);
    p1001.rtp.drain();
    let sending = p1001.rtp.send_tone(to_switch, 1000.0, 50);
    let back = p1001.rtp.listen(Duration::from_millis(2500)).await;
    sending.await.unwrap();
    assert_eq!(back.len(), 50, "every packet echoed");
    let hz = dominant_hz(&back);
    assert!(
        (hz - 1000.0).abs() < 60.0,
        "the caller hears itself: {hz} Hz"
    );
    let (code, out, err) = sw.ctl(&["calls"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ffm-echo") && out.contains("a:up"), "{out}");
    p1001.ua.send(sw.sip, &side.request("BYE", 0, "", "")).await;
    p1001
        .ua
        .expect("200 to BYE", |m| {
            m.status() == Some(200) && m.cseq().is_some_and(|c| c.method.to_string() == "BYE")
        })
        .await;

    // 4. The queue: 1002 (its available agent) is rung and answers.
    let p1002 = Phone::at("127.0.0.42", "1002", &pw("1002")).await;
    register_udp(&p1002.ua, sw.sip, DOMAIN, "1002", &pw("1002")).await;
    let ready = wait_until(Duration::from_secs(5), || {
        let v = sw.ctl_json(&["agents"]);
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "1002" && a["offerable"] == true)
    })
    .await;
    assert!(ready, "agent 1002 offerable once its phone registered");
    let answering = async {
        let (inv, from) = p1002.ua.expect_request("INVITE").await;
        p1002
            .ua
            .send(
                from,
                &answer(&inv, 200, "OK", "agent", p1002.ua.addr, &p1002.rtp.sdp()),
            )
            .await;
        p1002.ua.expect_request("ACK").await;
        (inv, from)
    };
    let ((inv_b, from_b), (_, mut side)) =
        tokio::join!(answering, p1001.call(sw.sip, "ffm-queue", "5000"));

    // 5. What ctl shows while the queue call is up, then after it.
    let status = sw.ctl_json(&["status"]);
    assert_eq!(status["calls_active"], 1, "{status}");
    assert_eq!(status["registrations"], 2, "{status}");
    assert_eq!(status["agents"]["on_call"], 1, "{status}");
    assert!(status["calls_per_second"].as_f64().is_some());
    let calls = sw.ctl_json(&["calls"]);
    let call = &calls["calls"][0];
    assert_eq!(call["call_id"], "ffm-queue", "{calls}");
    assert_eq!(call["tenant"], "demo");
    assert_eq!(call["callee"], "5000");
    let (code, text, _) = sw.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(text.contains("registrations  2"), "{text}");

    p1001.ua.send(sw.sip, &side.request("BYE", 0, "", "")).await;
    let (bye, _) = p1002.ua.expect_request("BYE").await;
    p1002
        .ua
        .send(from_b, &answer(&bye, 200, "OK", "", p1002.ua.addr, ""))
        .await;
    assert!(call_id(&bye) == call_id(&inv_b));
    let ended = wait_until(Duration::from_secs(5), || {
        sw.ctl_json(&["calls"])["total"] == 0
    })
    .await;
    assert!(ended, "no call left");

    // ctl's one-line answers when it cannot act, with a non-zero exit.
    let (code, _, err) = sw.ctl(&["hangup", "no-such-call"]);
    assert_eq!(code, 1);
    assert!(err.contains("no call") && err.lines().count() == 1, "{err}");
    let (code, _, err) = sw.ctl(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("help"), "{err}");
    let (code, _, err) = sw.ctl(&["--token", "not-the-token-0123456789abcdef0123", "status"]);
    assert_eq!(code, 1);
    assert!(err.contains("--token"), "{err}");
    let (code, out, err) = sw.ctl(&["log", "level", "debug"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("switchyard=debug"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_start_keeps_the_passwords_and_no_demo_turns_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port(false)));
        let sip = SocketAddr::from(([127, 0, 0, 1], free_port(true)));
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .current_dir(dir.path())
            .args(["--sip-listen", &format!("udp:{sip}")])
            .args(["--http-listen", &http.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(http).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run(&[]);
    let users = demo_users(dir.path());
    assert!(first.contains(&users[0].1));
    let second = run(&[]);
    assert!(!second.contains(&users[0].1), "printed once: {second}");
    assert!(second.contains("demo-users.txt"));
    assert_eq!(demo_users(dir.path()), users, "the same passwords");
    let off = run(&["--no-demo"]);
    assert!(!off.contains("Demo tenant"), "{off}");
}
