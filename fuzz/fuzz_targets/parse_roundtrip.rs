//! Arbitrary bytes through the SIP parser. Properties:
//! - `parse`, `check_stream` and `screen` never panic, whatever the input;
//! - a message that parses encodes to bytes that parse again, and encoding that second
//!   parse gives exactly the same bytes (encode is a fixed point after one round).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::sip::parse::{check_stream, parse, Framing, Limits};
use switchyard::sip::validate::screen;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = check_stream(data, &limits);
    let _ = screen(Bytes::copy_from_slice(data), Framing::Datagram, &limits);
    let _ = screen(Bytes::copy_from_slice(data), Framing::Stream, &limits);
    let _ = parse(Bytes::copy_from_slice(data), Framing::Stream, &limits);
    if let Ok(msg) = parse(Bytes::copy_from_slice(data), Framing::Datagram, &limits) {
        let once = msg.encode();
        let again = match parse(once.clone(), Framing::Datagram, &limits) {
            Ok(m) => m,
            Err(e) => panic!(
                "encoded message does not parse again ({:?}): {:?}",
                e.error,
                String::from_utf8_lossy(&once)
            ),
        };
        let twice = again.encode();
        assert_eq!(
            once,
            twice,
            "encode is not stable: first {:?}, second {:?}",
            String::from_utf8_lossy(&once),
            String::from_utf8_lossy(&twice)
        );
        // The encoding carries a true Content-Length, so it frames identically on a stream.
        let _ = check_stream(&once, &limits);
    }
});
