//! A running node, sent each RFC 4475 torture message over UDP and over TCP, answers with
//! the code the RFC names (or stays silent where the RFC allows), and still answers a
//! well-formed OPTIONS afterwards.

mod common;

use common::*;
use std::time::Duration;

/// What the node answers, per message: `None` = no answer (responses are never answered).
fn expected(name: &str) -> Option<u16> {
    Some(match name {
        "badinv01" | "clerr" | "ncl" | "scalar02" | "quotbal" | "ltgtruri" | "lwsruri"
        | "lwsstart" | "trws" | "escruri" | "regbadct" | "badaspec" | "baddn" | "mismatch01"
        | "mismatch02" | "insuf" | "multi01" | "mcl01" | "badbranch" => 400,
        "badvers" => 505,
        "unkscm" | "novelsc" => 416,
        "bext01" => 420,
        "invut" => 415,
        "sdp01" => 406,
        "zeromf" => 483,
        // Valid requests, answered by what this node serves: nothing is routed (404),
        // OPTIONS is answered, MESSAGE is not served here (405), unknown methods 501.
        "esc01" | "longreq" | "baddate" | "inv2543" => 404,
        // wsinv carries a To tag: a request inside a dialog this node does not know.
        "wsinv" => 481,
        "lwsdisp" | "semiuri" | "transports" => 200,
        // The node is the registrar of example.com: REGISTERs are challenged; a To that is
        // not a SIP AOR is a registrar's 400 (RFC 4475 §3.3.4).
        "escnull" | "dblreq" | "cparam01" | "cparam02" | "regescrt" | "regaut01" => 401,
        "unksm2" => 400,
        "mpart01" => 405,
        "intmeth" | "esc02" => 501,
        "unreason" | "noreason" | "bcast" | "scalarlg" | "bigcode" => return None,
        other => panic!("no expectation for {other}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_torture_message_over_udp_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), &[]);
    c.tenants = vec![switchyard::config::TenantConfig {
        id: "example".into(),
        domain: "example.com".into(),
        realm: None,
        users: vec![switchyard::config::UserConfig {
            username: "j.user".into(),
            ha1_md5: Some("0".repeat(32)),
            ha1_sha256: None,
            outbound: None,
        }],
        users_csv: None,
        ..Default::default()
    }];
    let node = start_with(c).await;
    let udp = udp_addr(&node);
    let tcp = tcp_addr(&node);
    let ua = Ua::new().await;
    let m = manifest();
    assert_eq!(m.len(), 49);
    let mut names: Vec<&String> = m.keys().collect();
    names.sort();
    for name in names {
        let v = &m[name];
        let (codes, no_reply_ok, verdict, liberal_ok) =
            (&v.codes, &v.no_reply_ok, &v.expected, &v.liberal_ok);
        let bytes = std::fs::read(testdata().join(format!("{name}.dat"))).unwrap();
        let want = expected(name);
        if let Some(code) = want {
            // An invalid message we refuse gets one of the RFC's codes; a valid one, or one a
            // liberal element may repair, is served as any other request.
            let refused_for_fault = !matches!(code, 200 | 401 | 404 | 405 | 481 | 501);
            let repaired = verdict == "valid" || (liberal_ok == "yes" && !refused_for_fault);
            if !repaired && codes != "-" && codes != "error" {
                assert!(
                    codes.split('|').any(|c| c == code.to_string()),
                    "{name}: {code} not in {codes}"
                );
            }
        }

        // UDP
        ua.send_bytes(udp, &bytes).await;
        let wait = if want.is_some() {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(300)
        };
        let got = ua.recv(wait).await.map(|(m, _)| m.status().unwrap());
        assert_eq!(got, want, "{name} over UDP");

        // TCP, each on its own connection
        let reply = tcp_exchange(
            tcp,
            &bytes,
            if want.is_some() {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(300)
            },
        )
        .await;
        let got = reply.and_then(|m| m.status());
        if name == "dblreq" {
            // On a stream the "extra octets" are a second request (an INVITE, answered 404
            // statelessly), which can be answered before the registrar's 401.
            assert!(
                matches!(got, Some(401) | Some(404)),
                "dblreq over TCP: {got:?}"
            );
        } else if no_reply_ok == "tcp" && got.is_none() {
            // The RFC allows a stream to wait for more bytes or close here.
        } else {
            assert_eq!(got, want, "{name} over TCP");
        }

        // The node is still up and answers a well-formed OPTIONS on both transports.
        let call_id = format!("after-{name}");
        ua.send(udp, &options(&call_id, ua.addr, "UDP")).await;
        let (r, _) = ua
            .expect(&format!("OPTIONS 200 after {name}"), |m| {
                m.status() == Some(200)
                    && m.call_id()
                        .is_some_and(|c| c.as_ref() == call_id.as_bytes())
            })
            .await;
        assert!(r
            .value(switchyard::sip::message::HeaderName::Allow)
            .is_some());
        let r = tcp_exchange(
            tcp,
            options(&call_id, ua.addr, "TCP").as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(
            r.and_then(|m| m.status()),
            Some(200),
            "TCP OPTIONS after {name}"
        );
    }
    node.shutdown().await;
}
