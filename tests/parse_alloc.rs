//! "No allocation per header": parsing a message allocates its headers `Vec` (and at most a
//! constant amount besides), never one allocation per header line.
//!
//! A counting global allocator wraps `System`; it counts only while the measuring thread has
//! its flag set, so the test harness's other threads do not disturb the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use switchyard::sip::parse::{parse, Framing, Limits};

struct Counting;

thread_local! {
    // `const` initialisation: reading it never allocates, so it is safe inside the allocator.
    // Both the flag and the count are per thread: tests of this binary run in parallel.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCS.with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    // A reallocation is counted too: a growing `Vec` is an allocation event.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns how many allocations it made on this thread, and its result.
/// The result is returned (not dropped inside) so only the parse itself is measured.
fn count<T>(f: impl FnOnce() -> T) -> (usize, T) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let out = std::hint::black_box(f());
    COUNTING.with(|c| c.set(false));
    (ALLOCS.with(Cell::get), out)
}

const HEAD: &str = "INVITE sip:+4930123456@switch.example.net;user=phone SIP/2.0\r\n\
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
Content-Type: application/sdp\r\n";

/// Twenty more header lines of the kinds a carrier INVITE commonly carries.
const MORE: [&str; 20] = [
    "Record-Route: <sip:198.51.100.1;lr>",
    "Record-Route: <sip:203.0.113.7;lr>",
    "Route: <sip:198.51.100.20;lr>",
    "Accept: application/sdp",
    "Session-Expires: 1800;refresher=uac",
    "Min-SE: 90",
    "P-Asserted-Identity: \"Alice Example\" <sip:+4940999888@example.com>",
    "Privacy: none",
    "Allow-Events: talk, hold, refer",
    "Date: Sat, 13 Nov 2010 23:29:00 GMT",
    "Via: SIP/2.0/TCP 198.51.100.1:5060;branch=z9hG4bKnashds8;received=198.51.100.1",
    "Subject: sales enquiry",
    "Expires: 180",
    "Require: timer",
    "Proxy-Require: path",
    "Accept-Language: en, de",
    "Organization: Example Ltd",
    "X-Tenant: acme",
    "Reason: Q.850;cause=16",
    "Call-Info: <http://www.example.com/alice/photo.jpg>;purpose=icon",
];

const SDP: &str = "v=0\r\n\
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
a=sendrecv\r\n";

/// The typical INVITE with the first `extra` lines of `MORE` added.
fn invite(extra: usize) -> Vec<u8> {
    let more: String = MORE[..extra].iter().map(|h| format!("{h}\r\n")).collect();
    format!("{HEAD}{more}Content-Length: {}\r\n\r\n{SDP}", SDP.len()).into_bytes()
}

/// The three ways a parser can be handed its `Bytes`.
fn sources(raw: &[u8]) -> [(&'static str, Bytes); 3] {
    // A transport reads into a `BytesMut` and splits each datagram off it: the buffer is
    // already shared, so slicing it only bumps a reference count.
    let mut rx = BytesMut::with_capacity(raw.len() * 2);
    rx.extend_from_slice(raw);
    rx.extend_from_slice(b"next");
    let split = rx.split_to(raw.len()).freeze();
    [
        ("static", Bytes::from(raw.to_vec().leak() as &'static [u8])),
        ("vec", Bytes::from(raw.to_vec())),
        ("bytesmut_split", split),
    ]
}

/// Allocations made by one parse of `raw`, per buffer source.
fn parse_counts(raw: &[u8]) -> Vec<(&'static str, usize, usize)> {
    let limits = Limits::default();
    sources(raw)
        .into_iter()
        .map(|(name, buf)| {
            let (n, msg) = count(|| parse(buf, Framing::Datagram, &limits));
            let msg = msg.expect("typical INVITE parses");
            (name, n, msg.headers.len())
        })
        .collect()
}

#[test]
fn typical_invite_makes_a_constant_few_allocations() {
    let counts = parse_counts(&invite(0));
    eprintln!("allocations per parse (source, allocs, headers): {counts:?}");
    for (source, n, headers) in counts {
        assert_eq!(headers, 12, "{source}: the INVITE has 12 header lines");
        // The headers `Vec`, plus (for a `Bytes` made from a `Vec`) the one-off shared
        // header `bytes` creates the first time such a buffer is sliced.
        assert!(n <= 2, "{source}: {n} allocations for one parse");
    }
}

#[test]
fn allocations_do_not_grow_per_header() {
    let base = parse_counts(&invite(0));
    let plus10 = parse_counts(&invite(10));
    let plus20 = parse_counts(&invite(20));
    eprintln!("12 headers: {base:?}\n22 headers: {plus10:?}\n32 headers: {plus20:?}");
    for i in 0..base.len() {
        let (source, n12, h12) = base[i];
        let (_, n22, h22) = plus10[i];
        let (_, n32, h32) = plus20[i];
        assert_eq!(
            (h22, h32),
            (h12 + 10, h12 + 20),
            "{source}: extra lines parsed"
        );
        // The headers `Vec` starts with room for 16 lines, so going from 12 to 22 lines may
        // grow it once (a doubling, not an allocation per line) ...
        assert!(
            n22 <= n12 + 1,
            "{source}: {n12} allocations with {h12} headers but {n22} with {h22}"
        );
        // ... and ten more lines within the grown capacity cost nothing at all.
        assert_eq!(
            n32, n22,
            "{source}: {n22} allocations with {h22} headers but {n32} with {h32}"
        );
    }
    // Every step of one line at a time stays within the same bound.
    for extra in 0..=MORE.len() {
        for (source, n, h) in parse_counts(&invite(extra)) {
            let n12 = base.iter().find(|b| b.0 == source).expect("same sources").1;
            assert!(n <= n12 + 1, "{source}: {n} allocations with {h} headers");
        }
    }
}

#[test]
fn the_counter_counts() {
    // Guards the test itself: a counter that never counts would pass everything above.
    let (n, v) = count(|| vec![0u8; 64]);
    assert_eq!(v.len(), 64);
    assert_eq!(n, 1);
}
