//! Which sources a relay leg hears, and where its media may go: symmetric RTP that cannot be
//! hijacked. Pure (no sockets): the relay thread asks, for each packet, what [`Latch`] says.
//!
//! Symmetric RTP answers a phone where it really sends from, not where its SDP says (a phone
//! behind NAT names its private address). Latching onto the first packet from anyone let
//! whoever sprays the RTP port range steal or inject a call's audio. So a leg latches only
//! onto a source whose IP is
//! - its SDP connection address (`c=`), any port: a NAT rewrites the port, and so does a
//!   phone whose SDP names its public address found by STUN; or
//! - the IP its signalling comes from, any port: a phone behind NAT sends media from the
//!   same public address as its SIP.
//!
//! The latch window opens at each offer/answer that concerns the leg (a re-INVITE or
//! UPDATE that moves its media re-opens it, so a legitimate move works) and closes on the
//! first packet from an allowed source; from then on only that exact address (IP and port)
//! is heard until the next offer/answer. Packets from any other source are foreign:
//! dropped (and counted by the relay).
//!
//! When an offer/answer names a new media address for the leg, the source latched under the
//! old one is barred from the new window: it is another phone now (the transferor, after a
//! transfer put a new party on the leg) or the phone's abandoned socket, and it is still
//! sending for a few packets. Without the bar, a phone sharing the new party's IP (one
//! office NAT, one host) would win the window and the new party would never be heard.
//! A hold address (`c=0.0.0.0`) on either side of the change bars nothing: the same
//! phone comes back from hold with its old socket.
//!
//! Media the switch sends to a leg (relayed audio, music, prompts, DTMF, RTCP) goes only to
//! an address packets came from, or, before any packet, to its SDP address when that is the
//! signalling host's own IP: never to a third address named only in SDP. Else an
//! attacker's SDP naming a victim would make the switch blast RTP at the victim (a
//! reflection and amplification vector).

use std::net::{IpAddr, SocketAddr};

/// What the latch says about a packet that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// From the latched source.
    Accepted,
    /// From an allowed source while the window was open: the leg is latched onto it now.
    Latched,
    /// From anyone else: drop it.
    Foreign,
}

/// One leg's latching state (RTP and RTCP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latch {
    /// The leg's audio address from its last SDP.
    sdp: Option<SocketAddr>,
    /// The IP the leg's signalling comes from.
    signalling: Option<IpAddr>,
    /// Where the leg's RTP goes: the latched source, else its SDP address.
    remote: Option<SocketAddr>,
    /// `remote` is an address packets came from (not only named in SDP).
    heard: bool,
    /// The window is closed: only `remote` is heard.
    latched: bool,
    /// The RTCP source latched (by its own first packet).
    rtcp: Option<SocketAddr>,
    /// The SDP address in force when `remote` latched.
    latched_sdp: Option<SocketAddr>,
    /// A source that may not latch in this window: the one latched under the previous
    /// SDP address (see the module's documentation).
    barred: Option<SocketAddr>,
}

impl Latch {
    /// The IP the leg's signalling comes from (a phone behind NAT sends its media from
    /// there too).
    pub fn set_signalling(&mut self, ip: IpAddr) {
        self.signalling = Some(ip.to_canonical());
    }

    /// An offer or answer named the leg's audio address: the latch window opens. A new
    /// address becomes where the leg's media goes (once trusted, see [`Latch::dest`]); the
    /// same address keeps the source latched so far until a packet latches again.
    pub fn offer(&mut self, sdp: SocketAddr) {
        let sdp = canonical(sdp);
        if self.sdp != Some(sdp) {
            self.barred = match self.latched_sdp {
                Some(old)
                    if self.heard
                        && old != sdp
                        && !old.ip().is_unspecified()
                        && !sdp.ip().is_unspecified() =>
                {
                    self.remote
                }
                _ => None,
            };
            self.sdp = Some(sdp);
            self.remote = Some(sdp);
            self.heard = false;
        }
        self.latched = false;
        self.rtcp = None;
    }

    /// An RTP packet from `from`.
    pub fn on_rtp(&mut self, from: SocketAddr) -> Verdict {
        let from = canonical(from);
        if self.latched {
            return if self.remote == Some(from) {
                Verdict::Accepted
            } else {
                Verdict::Foreign
            };
        }
        if self.barred == Some(from) {
            return Verdict::Foreign;
        }
        if self.allowed(from.ip()) || (self.heard && self.remote == Some(from)) {
            self.remote = Some(from);
            self.heard = true;
            self.latched = true;
            self.latched_sdp = self.sdp;
            self.barred = None;
            Verdict::Latched
        } else {
            Verdict::Foreign
        }
    }

    /// An RTCP packet from `from`: true when it is heard. The first allowed one latches
    /// the leg's RTCP address until the next offer/answer.
    pub fn on_rtcp(&mut self, from: SocketAddr) -> bool {
        let from = canonical(from);
        if let Some(latched) = self.rtcp {
            return latched == from;
        }
        // The barred source's RTCP (its RTP port + 1) is barred with it.
        if self
            .barred
            .is_some_and(|b| b.ip() == from.ip() && b.port().wrapping_add(1) == from.port())
        {
            return false;
        }
        let rtp_host = self.heard && self.remote.is_some_and(|r| r.ip() == from.ip());
        if self.allowed(from.ip()) || rtp_host {
            self.rtcp = Some(from);
            true
        } else {
            false
        }
    }

    /// Where RTP for the leg may go now: the latched (or once heard) source, or its SDP
    /// address when that is the signalling host's. None: nowhere yet.
    pub fn dest(&self) -> Option<SocketAddr> {
        let r = self.remote?;
        (self.heard || self.signalling == Some(r.ip())).then_some(r)
    }

    /// Where RTCP for the leg may go now: its latched RTCP source, else the port above
    /// where its RTP may go (RFC 3550 §11).
    pub fn rtcp_dest(&self) -> Option<SocketAddr> {
        self.rtcp.or_else(|| {
            self.dest()
                .map(|d| SocketAddr::new(d.ip(), d.port().wrapping_add(1)))
        })
    }

    /// The leg's remote address as latched or signalled (for statistics).
    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Whether the leg is latched (its window closed).
    pub fn latched(&self) -> bool {
        self.latched
    }

    /// The leg's SDP names no address (`c=0.0.0.0`: RFC 2543 hold).
    pub fn on_hold_address(&self) -> bool {
        self.sdp.is_some_and(|a| a.ip().is_unspecified())
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let sdp = self
            .sdp
            .is_some_and(|a| a.ip() == ip && !ip.is_unspecified());
        sdp || self.signalling == Some(ip)
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view) compare as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A leg whose SDP says 127.0.0.11:4000 and whose SIP comes from `signalling`.
    fn leg(signalling: &str) -> Latch {
        let mut l = Latch::default();
        l.set_signalling(signalling.parse().unwrap());
        l.offer(addr("127.0.0.11:4000"));
        l
    }

    #[test]
    fn a_foreign_source_is_dropped_and_does_not_latch() {
        let mut l = leg("127.0.0.12");
        assert_eq!(l.on_rtp(addr("127.0.0.66:4000")), Verdict::Foreign);
        assert!(!l.latched(), "the window stays open for the phone");
        assert_eq!(l.remote(), Some(addr("127.0.0.11:4000")));
        assert_eq!(l.on_rtp(addr("127.0.0.11:4000")), Verdict::Latched);
        assert_eq!(l.on_rtp(addr("127.0.0.66:4000")), Verdict::Foreign);
        assert_eq!(l.on_rtp(addr("127.0.0.11:4000")), Verdict::Accepted);
    }

    #[test]
    fn the_sdp_address_latches_on_any_port_then_only_that_source_is_heard() {
        let mut l = leg("127.0.0.12");
        assert_eq!(l.on_rtp(addr("127.0.0.11:5072")), Verdict::Latched);
        assert_eq!(l.remote(), Some(addr("127.0.0.11:5072")));
        assert_eq!(l.dest(), Some(addr("127.0.0.11:5072")));
        assert_eq!(
            l.on_rtp(addr("127.0.0.11:4000")),
            Verdict::Foreign,
            "latched: another port of the same host is not heard"
        );
        assert_eq!(l.on_rtp(addr("127.0.0.12:4000")), Verdict::Foreign);
    }

    #[test]
    fn the_signalling_address_latches_a_phone_behind_nat() {
        // SDP names a private address; the phone's NAT sends from its public one.
        let mut l = Latch::default();
        l.set_signalling("127.0.0.12".parse().unwrap());
        l.offer(addr("10.0.0.5:4000"));
        assert_eq!(
            l.dest(),
            None,
            "nothing to a private address named only in SDP"
        );
        assert_eq!(l.on_rtp(addr("127.0.0.12:61000")), Verdict::Latched);
        assert_eq!(l.dest(), Some(addr("127.0.0.12:61000")));
        assert_eq!(l.rtcp_dest(), Some(addr("127.0.0.12:61001")));
    }

    #[test]
    fn an_ipv4_mapped_source_counts_as_its_ipv4_address() {
        let mut l = leg("::ffff:127.0.0.12");
        assert_eq!(l.on_rtp(addr("[::ffff:127.0.0.12]:7000")), Verdict::Latched);
        assert_eq!(l.on_rtp(addr("127.0.0.12:7000")), Verdict::Accepted);
    }

    #[test]
    fn a_re_offer_re_opens_the_window() {
        let mut l = leg("127.0.0.12");
        assert_eq!(l.on_rtp(addr("127.0.0.11:4000")), Verdict::Latched);
        // The phone moves (re-INVITE with a new c=/m=): its new address latches.
        l.offer(addr("127.0.0.13:6000"));
        assert!(!l.latched());
        assert_eq!(l.on_rtp(addr("127.0.0.66:6000")), Verdict::Foreign);
        assert_eq!(l.on_rtp(addr("127.0.0.13:6002")), Verdict::Latched);
        assert_eq!(l.on_rtp(addr("127.0.0.11:4000")), Verdict::Foreign);
        // The same SDP again (a session refresh): the source latched so far still gets
        // media meanwhile, and a NAT that rebound its port is heard again.
        l.offer(addr("127.0.0.13:6000"));
        assert_eq!(l.dest(), Some(addr("127.0.0.13:6002")));
        assert_eq!(l.on_rtp(addr("127.0.0.12:9000")), Verdict::Latched);
    }

    #[test]
    fn a_new_party_on_the_leg_is_heard_not_the_old_one_on_the_same_host() {
        // Two phones behind one address (an office NAT, or one host): the transferor
        // latched the leg; the transfer target answers with its own SDP address while the
        // transferor still sends a few packets.
        let mut l = leg("127.0.0.12");
        assert_eq!(l.on_rtp(addr("127.0.0.12:40228")), Verdict::Latched);
        l.offer(addr("127.0.0.11:40584"));
        assert_eq!(
            l.on_rtp(addr("127.0.0.12:40228")),
            Verdict::Foreign,
            "the old party's late packet does not take the new party's leg"
        );
        assert!(!l.on_rtcp(addr("127.0.0.12:40229")), "nor its RTCP");
        assert!(!l.latched());
        assert_eq!(l.on_rtp(addr("127.0.0.12:40584")), Verdict::Latched);
        assert_eq!(l.dest(), Some(addr("127.0.0.12:40584")));
        assert_eq!(l.on_rtp(addr("127.0.0.12:40228")), Verdict::Foreign);
    }

    #[test]
    fn a_phone_back_from_hold_latches_again_from_its_old_socket() {
        // Behind NAT: SDP names a private address, media comes from the public one.
        let mut l = Latch::default();
        l.set_signalling("127.0.0.12".parse().unwrap());
        l.offer(addr("10.0.0.5:4000"));
        assert_eq!(l.on_rtp(addr("127.0.0.12:61000")), Verdict::Latched);
        l.offer(addr("0.0.0.0:4000"));
        l.offer(addr("10.0.0.5:4000"));
        assert_eq!(l.on_rtp(addr("127.0.0.12:61000")), Verdict::Latched);
        // A re-INVITE that names the address latched under before bars nothing either.
        let mut l = leg("127.0.0.12");
        assert_eq!(l.on_rtp(addr("127.0.0.12:5000")), Verdict::Latched);
        l.offer(addr("127.0.0.11:6000"));
        l.offer(addr("127.0.0.11:4000"));
        assert_eq!(l.on_rtp(addr("127.0.0.12:5000")), Verdict::Latched);
    }

    #[test]
    fn media_never_goes_to_a_third_address_named_only_in_sdp() {
        // An attacker signals from .66 with SDP naming a victim at .99.
        let mut l = Latch::default();
        l.set_signalling("127.0.0.66".parse().unwrap());
        l.offer(addr("127.0.0.99:4000"));
        assert_eq!(l.dest(), None);
        assert_eq!(l.rtcp_dest(), None);
        // The SDP address of the signalling host itself is fine before any packet.
        let l = leg("127.0.0.11");
        assert_eq!(l.dest(), Some(addr("127.0.0.11:4000")));
        assert_eq!(l.rtcp_dest(), Some(addr("127.0.0.11:4001")));
    }

    #[test]
    fn rtcp_latches_on_an_allowed_source_only() {
        let mut l = leg("127.0.0.12");
        assert!(!l.on_rtcp(addr("127.0.0.66:4001")));
        assert!(l.on_rtcp(addr("127.0.0.12:4101")));
        assert_eq!(l.rtcp_dest(), Some(addr("127.0.0.12:4101")));
        assert!(!l.on_rtcp(addr("127.0.0.11:4001")), "latched");
        l.offer(addr("127.0.0.11:4000"));
        assert!(l.on_rtcp(addr("127.0.0.11:4001")), "re-opened by the offer");
    }

    #[test]
    fn a_hold_address_matches_no_source() {
        let mut l = Latch::default();
        l.offer(addr("0.0.0.0:4000"));
        assert!(l.on_hold_address());
        assert_eq!(l.on_rtp(addr("0.0.0.0:4000")), Verdict::Foreign);
    }
}
