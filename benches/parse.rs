//! Parser benchmarks: the cost of turning one typical INVITE / 200 OK (with SDP) into a
//! `Message`, of screening it (parse + full request validation), of the typed lookups a call
//! actor does on every request, and of encoding it again.
//!
//! Run: `cargo bench --bench parse`. Criterion is built without default features (no plots,
//! no rayon), and the measurement window is short so the whole run takes about a minute.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::sip::parse::{check_stream, parse, Framing, Limits};
use switchyard::sip::validate::{screen, Screened};

/// A typical softphone INVITE with an SDP offer of four audio codecs (~900 bytes).
const INVITE: &[u8] = b"INVITE sip:+4930123456@switch.example.net;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9a7c1e3d;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice Example\" <sip:alice@example.com>;tag=9fxced76sl\r\n\
To: \"Berlin Office\" <sip:+4930123456@switch.example.net;user=phone>\r\n\
Call-ID: 3848276298220188511@192.0.2.10\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY\r\n\
Supported: replaces, timer, 100rel\r\n\
User-Agent: ExamplePhone/5.2.1 (build 1842)\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 310\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 9 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:150\r\n\
a=sendrecv\r\n\
a=rtcp:49171 IN IP4 192.0.2.10\r\n";

/// The 200 OK answering it, through one proxy, with an SDP answer.
const OK_200: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9a7c1e3d;rport=5060;received=192.0.2.10\r\n\
From: \"Alice Example\" <sip:alice@example.com>;tag=9fxced76sl\r\n\
To: \"Berlin Office\" <sip:+4930123456@switch.example.net;user=phone>;tag=8321234356\r\n\
Call-ID: 3848276298220188511@192.0.2.10\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+4930123456@198.51.100.20:5060;transport=udp>\r\n\
Record-Route: <sip:198.51.100.1;lr>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, REFER\r\n\
Supported: replaces, timer\r\n\
Server: Switchyard/0.1\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 215\r\n\
\r\n\
v=0\r\n\
o=switch 1234567 1234567 IN IP4 198.51.100.20\r\n\
s=-\r\n\
c=IN IP4 198.51.100.20\r\n\
t=0 0\r\n\
m=audio 30000 RTP/AVP 8 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    // The buffers are built once: the benchmark measures the parser, not the copy into a
    // `Bytes` (a transport hands the parser a `Bytes` it already owns).
    let invite = Bytes::from_static(INVITE);
    let ok = Bytes::from_static(OK_200);
    // Sanity: a benchmark of a message that fails to parse would measure the error path.
    let parsed = parse(invite.clone(), Framing::Datagram, &limits).expect("INVITE parses");
    assert_eq!(parsed.body.len(), 310, "Content-Length matches the SDP");
    let parsed_ok = parse(ok.clone(), Framing::Datagram, &limits).expect("200 parses");
    assert_eq!(parsed_ok.body.len(), 215, "Content-Length matches the SDP");
    assert!(matches!(
        screen(invite.clone(), Framing::Datagram, &limits),
        Screened::Pass(_)
    ));

    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));

    g.bench_function("parse_invite", |b| {
        b.iter(|| parse(black_box(invite.clone()), Framing::Datagram, &limits).unwrap())
    });
    g.bench_function("parse_200_ok", |b| {
        b.iter(|| parse(black_box(ok.clone()), Framing::Datagram, &limits).unwrap())
    });
    g.bench_function("check_stream_invite", |b| {
        b.iter(|| check_stream(black_box(INVITE), &limits).unwrap())
    });
    g.bench_function("screen_invite", |b| {
        b.iter(
            || match screen(black_box(invite.clone()), Framing::Datagram, &limits) {
                Screened::Pass(m) => m,
                other => panic!("INVITE not passed: {other:?}"),
            },
        )
    });
    g.bench_function("typed_access_invite", |b| {
        b.iter(|| {
            let m = black_box(&parsed);
            let branch = m.top_via().and_then(|v| v.branch());
            let tag = m.from().and_then(|f| f.tag());
            let cseq = m.cseq().map(|c| c.seq);
            (branch, tag, cseq)
        })
    });
    g.bench_function("encode_invite", |b| b.iter(|| black_box(&parsed).encode()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = bench_parse
}
criterion_main!(benches);
