//! The call actor's media side: when a call's audio is anchored, the relay session
//! ([`crate::media::relay::Session`]) is set up when the call starts, every SDP body that
//! crosses from one leg to the other is rewritten to the switch's address and the port
//! facing the receiver (and teaches the session where the sender wants its audio), and the
//! session is released, with its quality figures read into the CDR, when the call ends.
//!
//! Queues that answer first: the caller gets a 200 with the switch's own SDP, hears music
//! and position announcements, and the agent is offered a fresh SDP of the switch; when the
//! agent answers, playback stops and the legs are bridged (transcoding between μ-law and
//! A-law if they chose differently).
//!
//! The session is told each leg's signalling address with its SDP: a leg latches only onto
//! media from its SDP or signalling address, and gets media before its first packet only at
//! its signalling host ([`crate::media::latch`]). A call whose media stopped is ended here
//! when the relay reports it ([`CallCore::on_media_timeout`]).

use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};

use super::{CallCore, CallTimer, Effect, Leg, MediaOp, Phase};
use crate::actors::router::MediaPolicy;
use crate::media::g711::Codec;
use crate::media::relay::{DtmfSource, Side};
use crate::sip::message::{HeaderName, Message};
use crate::sip::sdp::{self, Direction, Format, Sdp};

pub const ANCHOR_REFUSED: &str = "switchyard_media_anchor_refused_total";
pub const MOS: &str = "switchyard_media_mos";
pub const RECORDINGS_STARTED: &str = "switchyard_recordings_started_total";
pub const MEDIA_TIMEOUTS: &str = "switchyard_media_timeouts_total";

/// Describes the call-side media metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        ANCHOR_REFUSED,
        "Calls refused because their media could not be anchored, by reason (ports, codec)"
    );
    describe_histogram!(
        MOS,
        "Estimated MOS (E-model) per anchored leg at call end, by trunk (\"\" off-trunk)"
    );
    describe_counter!(
        RECORDINGS_STARTED,
        "Recordings started, by trigger (config, api)"
    );
    describe_counter!(
        MEDIA_TIMEOUTS,
        "Answered calls ended because no RTP or RTCP came from either leg for media.rtp_timeout_secs"
    );
}

/// The telephone-event payload type the switch offers.
const TE_PT: u8 = 101;

/// The G.711 law a format names, if any.
fn g711(f: &Format) -> Option<Codec> {
    match f.encoding.as_str() {
        "PCMU" => Some(Codec::Pcmu),
        "PCMA" => Some(Codec::Pcma),
        _ => None,
    }
}

fn telephone_event(sdp: &Sdp) -> Option<u8> {
    sdp.codecs()
        .iter()
        .find(|f| f.is_telephone_event())
        .map(|f| f.pt)
}

/// Tells the session where `side` wants its audio, in which codec, and its direction;
/// `signalling`: the IP its SIP comes from. The leg's latch window opens.
/// `follow`: the other leg uses the same codec (one end-to-end negotiation).
fn learn(out: &mut Vec<Effect>, side: Side, sdp: &Sdp, follow: bool, signalling: Option<IpAddr>) {
    let Some(idx) = sdp.audio_index() else {
        return;
    };
    if let Some(ip) = signalling {
        out.push(Effect::Media(MediaOp::SetSignalling { side, ip }));
    }
    let port = sdp.media[idx].port;
    let codec = sdp.codecs().iter().find_map(g711);
    let te = telephone_event(sdp);
    if let Some(ip) = sdp.connection(idx) {
        out.push(Effect::Media(MediaOp::SetRemote {
            side,
            addr: SocketAddr::new(ip, port),
            codec,
            te,
        }));
    }
    out.push(Effect::Media(MediaOp::SetDirection {
        side,
        direction: sdp.direction(),
    }));
    if let (true, Some(c)) = (follow, codec) {
        out.push(Effect::Media(MediaOp::SetRemoteCodec {
            side: side.other(),
            codec: c,
        }));
    }
}

impl CallCore {
    /// The IP `leg`'s signalling comes from: the caller's source (the agent's phone for
    /// click-to-call), the callee's destination. None before the leg exists.
    pub(super) fn signalling_ip(&self, leg: Leg) -> Option<IpAddr> {
        let core = self.core.as_ref()?;
        match leg {
            Leg::A => Some(core.a_source.remote.ip()),
            Leg::B if core.b_call_id.is_empty() => None,
            Leg::B => Some(core.b_dest.addr.ip()),
            Leg::X => self.x_leg().map(|p| p.dest.addr.ip()),
        }
    }

    /// Whether the caller's leg is up while a callee is sought: answered by the switch (a
    /// queue that answers first) or by an earlier callee (a transfer).
    pub(super) fn a_answered(&self) -> bool {
        let Some(c) = self.core.as_ref() else {
            return false;
        };
        self.session.is_some() && (c.a_up || c.media.as_ref().is_some_and(|m| m.answer_first))
    }

    /// Sets up the relay session if the call's media is anchored. Err: the status and
    /// reason the caller is to get (no ports; recording or playback need G.711).
    pub(super) fn anchor_media(
        &mut self,
        a_invite: &Message,
        a_call_id: &Bytes,
        policy: &MediaPolicy,
    ) -> Result<Option<MediaPolicy>, (u16, &'static str)> {
        let Some(m) = self.env.media() else {
            return Ok(None);
        };
        let mut policy = policy.clone();
        policy.record |= m.record_all;
        policy.anchor |= m.anchor_all || policy.record || policy.answer_first;
        if !policy.anchor {
            return Ok(None);
        }
        let offer = (!a_invite.body.is_empty())
            .then(|| sdp::parse(&a_invite.body).ok())
            .flatten();
        if policy.answer_first && offer.is_none() {
            // Answering first needs the caller's offer (a delayed offer is rung as before).
            policy.answer_first = false;
        }
        if policy.record || policy.answer_first {
            let has_g711 = offer
                .as_ref()
                .is_none_or(|o| o.codecs().iter().any(|f| g711(f).is_some()));
            if !has_g711 {
                metrics::counter!(ANCHOR_REFUSED, "reason" => "codec").increment(1);
                return Err((488, "Not Acceptable Here (G.711 Needed)"));
            }
        }
        match self.env.allocate_media(a_call_id) {
            Ok(ports) => {
                if let Some(o) = &offer {
                    let ip = self.signalling_ip(Leg::A);
                    learn(&mut self.out, Side::A, o, false, ip);
                }
                self.session = Some(ports);
                Ok(Some(policy))
            }
            Err(e) => {
                tracing::warn!(error = %e, "media not anchored");
                metrics::counter!(ANCHOR_REFUSED, "reason" => "ports").increment(1);
                Err((503, "Service Unavailable (No Media Ports)"))
            }
        }
    }

    /// Takes the outcome of [`CallCore::anchor_media`] once the caller's transaction
    /// exists: records the policy (checkpointed) and starts a configured recording, or
    /// refuses the call. False when the call was refused.
    pub(super) fn media_settled(
        &mut self,
        anchored: Result<Option<MediaPolicy>, (u16, &'static str)>,
    ) -> bool {
        match anchored {
            Ok(policy) => self.core().media = policy,
            Err((status, reason)) => {
                self.refuse(status, reason);
                return false;
            }
        }
        if let (Some(_), Some(ip)) = (self.session, self.signalling_ip(Leg::A)) {
            // The caller's offer was learnt before the call's state existed.
            let side = self.side_of(Leg::A);
            self.media_op(MediaOp::SetSignalling { side, ip });
        }
        self.checkpoint();
        if self.core().media.as_ref().is_some_and(|m| m.record) {
            self.start_recording("config");
        }
        true
    }

    /// A restarted call actor finds its relay session again.
    pub(super) fn reattach_media(&mut self) {
        let anchored = self.core.as_ref().is_some_and(|c| c.media.is_some());
        if anchored {
            let id = self.core().a_call_id.clone();
            self.session = self.env.find_media(&id);
            self.recording = self.core().cdr.recording.clone();
        }
    }

    /// The body of the B-leg INVITE: the caller's offer rewritten to the switch, or (the
    /// caller already answered by the switch) a fresh offer of the switch's.
    pub(super) fn b_offer(&mut self, a_body: &Bytes) -> Bytes {
        let Some(session) = self.session else {
            return a_body.clone();
        };
        if self.a_answered() {
            let formats = [
                Format::pcmu(),
                Format::pcma(),
                Format::telephone_event(TE_PT),
            ];
            let sdp = sdp::offer(
                session.address,
                session.port(self.side_of(Leg::B)),
                rand::random::<u32>() as u64,
                &formats,
                Direction::SendRecv,
            );
            return Bytes::from(sdp.to_bytes());
        }
        self.rewrite_sdp(Leg::A, a_body, false)
    }

    /// An SDP body crossing from `from` to the other leg: the session learns where `from`
    /// wants its audio; the receiver is given the switch's address and the port facing it.
    /// `answer`: the body answers the other leg's offer (both legs then use its codec).
    pub(super) fn rewrite_sdp(&mut self, from: Leg, body: &Bytes, answer: bool) -> Bytes {
        let Some(session) = self.session else {
            return body.clone();
        };
        if body.is_empty() {
            return body.clone();
        }
        let Ok(mut sdp) = sdp::parse(body) else {
            return body.clone();
        };
        let s = self.side_of(from);
        let follow = answer && !self.a_answered();
        let ip = self.signalling_ip(from);
        learn(&mut self.out, s, &sdp, follow, ip);
        sdp.anchor(session.address, session.port(s.other()));
        Bytes::from(sdp.to_bytes())
    }

    /// A message relayed from `from`: its body rewritten when it is SDP.
    pub(super) fn rewrite_body_of(&mut self, from: Leg, msg: &mut Message, answer: bool) {
        if self.session.is_some() && !msg.body.is_empty() && is_sdp(msg) {
            msg.body = self.rewrite_sdp(from, &msg.body, answer);
        }
    }

    /// A queue that answers first: the caller gets the switch's answer, music, and its
    /// position. Returns the 200 to send (None: not answering first).
    pub(super) fn answer_first(&mut self) -> Option<Message> {
        if !self.a_answered() {
            return None;
        }
        let offer = self.core().a_invite.body.clone();
        let a = self.side_of(Leg::A);
        let answer = self.switch_answer(a, &offer)?;
        self.media_op(MediaOp::Bridge(false));
        let service = self.service();
        let flow = self.in_flow();
        match service {
            Some(service) => self.service_media(service),
            // A flow plays its own prompts.
            None if flow => {}
            None => self.play_music(None),
        }
        let mut ok = self.a_response(200, "OK", true);
        ok.push(HeaderName::ContentType, "application/sdp");
        ok.body = answer;
        if service.is_none() && !flow {
            self.schedule_announcement(std::time::Duration::ZERO);
        }
        Some(ok)
    }

    /// The switch's own answer to `offer` for `side` of the call's session: the offer's first
    /// G.711 codec (and its telephone-event), the relay told which codec `side` speaks.
    /// None without a session or G.711 in the offer.
    pub(super) fn switch_answer(&mut self, side: Side, offer: &Bytes) -> Option<Bytes> {
        let session = self.session?;
        let offer = sdp::parse(offer).ok()?;
        let codecs = offer.codecs();
        let chosen = codecs.iter().find(|f| g711(f).is_some())?.clone();
        let mut formats = vec![chosen.clone()];
        if let Some(pt) = telephone_event(&offer) {
            formats.push(Format::telephone_event(pt));
        }
        let answer = sdp::offer(
            session.address,
            session.port(side),
            rand::random::<u32>() as u64,
            &formats,
            offer.direction().reverse(),
        );
        self.media_op(MediaOp::SetRemoteCodec {
            side,
            codec: g711(&chosen)?,
        });
        Some(Bytes::from(answer.to_bytes()))
    }

    /// Plays music to a waiting caller, after an announcement of its position when given.
    pub(super) fn play_music(&mut self, announce: Option<(u32, Option<u64>)>) {
        if self.session.is_some() {
            let side = self.side_of(Leg::A);
            self.media_op(MediaOp::Music { side, announce });
        }
    }

    /// Seconds between position announcements (0: only the first, on joining).
    fn announce_secs(&self) -> u64 {
        self.core
            .as_ref()
            .and_then(|c| c.media.as_ref())
            .map_or(0, |m| m.announce_secs)
    }

    pub(super) fn schedule_announcement(&mut self, after: std::time::Duration) {
        if self.announce_secs() == 0 && !after.is_zero() {
            return;
        }
        if let Some(id) = self.announce.take() {
            self.cancel_timer(id);
        }
        self.announce = Some(self.schedule_call_timer(CallTimer::Announce, after));
    }

    /// The announcement timer: ask the queue where the caller stands (it answers with
    /// [`super::Event::QueuePosition`]).
    pub(super) fn request_position(&mut self) {
        self.announce = None;
        if !self.queue_waiting() || !self.a_answered() {
            return;
        }
        if let Some(q) = self.core().queue.clone() {
            let call_id = self.a_call_id_str();
            self.tell(super::Tell::Queue {
                tenant: q.tenant.clone(),
                queue: q.queue.clone(),
                msg: crate::actors::queue::QueueMsg::Announce { call_id },
            });
        }
        let every = self.announce_secs();
        if every > 0 {
            self.schedule_announcement(std::time::Duration::from_secs(every));
        }
    }

    /// The queue says where the caller stands: announce it, then music again.
    pub(super) fn on_position(&mut self, position: u32, wait_secs: Option<u64>) {
        if self.env.media().is_none() {
            return;
        }
        if !self.queue_waiting() || !self.a_answered() || self.offering() {
            return;
        }
        self.play_music(Some((position, wait_secs)));
    }

    /// An answer to an offer of the switch's own: the session learns where `side` wants its
    /// audio (its codec decided separately from the other leg's).
    pub(super) fn learn_answer(&mut self, side: Side, sdp: &Sdp, signalling: Option<IpAddr>) {
        learn(&mut self.out, side, sdp, false, signalling);
    }

    /// The agent answered a caller the switch had answered: learn the agent's SDP, ACK,
    /// stop the music and bridge.
    pub(super) fn bridge_agent(&mut self, resp: &Message) {
        if let (Some(_), Ok(sdp)) = (self.session, sdp::parse(&resp.body)) {
            let (a, b) = (self.side_of(Leg::A), self.side_of(Leg::B));
            let ip = self.signalling_ip(Leg::B);
            learn(&mut self.out, b, &sdp, false, ip);
            self.media_op(MediaOp::StopPlay(a));
            self.media_op(MediaOp::Bridge(true));
        }
        if let Some(id) = self.announce.take() {
            self.cancel_timer(id);
        }
    }

    /// The relay reports that no RTP came from either leg for `media.rtp_timeout_secs`
    /// (neither held nor played to): an answered call is ended with BYE to both legs and
    /// the CDR reason "rtp timeout". A call not answered yet (ringing without early
    /// media) goes on, and so does one answered less than a timeout ago (the report may
    /// have left the relay just before the answer reached it).
    pub(super) fn on_media_timeout(&mut self) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let up = matches!(core.phase, Phase::Answered | Phase::Confirmed)
            || ((self.service().is_some() || core.flow.is_some()) && self.a_answered());
        if !up || core.held.is_some() {
            return;
        }
        let timeout = self.env.media().and_then(|m| m.rtp_timeout);
        let answered_ms = core
            .cdr
            .answer_ms
            .map_or(0, |at| self.wall_ms.saturating_sub(at));
        if timeout.is_none_or(|t| (answered_ms as u128) < t.as_millis()) {
            return;
        }
        tracing::info!(call_id = %self.a_call_id_str(), "no media from either leg: call ended");
        metrics::counter!(MEDIA_TIMEOUTS).increment(1);
        self.hangup_both(crate::store::HangupBy::System, "rtp timeout");
    }

    /// A DTMF digit from the relay or a SIP INFO: kept for the CDR.
    pub(super) fn on_dtmf(&mut self, leg: Side, digit: char, source: DtmfSource) {
        tracing::debug!(leg = leg.label(), %digit, source = source.label(), "DTMF");
        if let Some(core) = self.core.as_mut().map(std::sync::Arc::make_mut) {
            if core.cdr.dtmf.len() < 64 {
                core.cdr.dtmf.push(digit);
            }
        }
        if leg == self.side_of(Leg::A) {
            if self.in_flow() {
                self.flow_digit(digit);
            } else {
                self.queue_exit_digit(digit);
            }
        }
    }

    /// A SIP INFO carrying a digit (application/dtmf-relay or application/dtmf).
    pub(super) fn info_dtmf(&mut self, leg: Leg, msg: &Message) {
        let Some(digit) = info_digit(msg) else {
            return;
        };
        if self.env.media().is_some() {
            self.media_op(MediaOp::DtmfFromSignalling {
                side: self.side_of(leg),
                digit,
            });
        } else {
            metrics::counter!(crate::media::relay::DTMF, "source" => "info").increment(1);
            let side = self.side_of(leg);
            self.on_dtmf(side, digit, DtmfSource::Info);
        }
    }

    /// Starts recording the call (policy or API) when it is anchored.
    pub(super) fn start_recording(&mut self, trigger: &'static str) -> Option<String> {
        self.session?;
        if let Some(id) = &self.recording {
            return Some(id.clone());
        }
        if !self.env.media()?.can_record {
            return None;
        }
        let tenant = self
            .core
            .as_ref()
            .and_then(|c| c.media.as_ref())
            .and_then(|m| m.tenant.as_deref())
            .unwrap_or("")
            .to_string();
        let id = format!(
            "{}-{}",
            self.wall_ms,
            String::from_utf8_lossy(&crate::sip::dialog::random_token(8))
        );
        self.media_op(MediaOp::Record {
            id: id.clone(),
            tenant,
        });
        metrics::counter!(RECORDINGS_STARTED, "trigger" => trigger).increment(1);
        self.recording = Some(id.clone());
        if let Some(core) = self.core.as_mut().map(std::sync::Arc::make_mut) {
            core.cdr.recording = Some(id.clone());
        }
        self.checkpoint();
        Some(id)
    }

    /// The API's recording commands.
    pub(super) fn recording_command(&mut self, cmd: RecordingCommand) -> Result<String, String> {
        if self.session.is_none() {
            return Err("the call's media is not anchored".into());
        }
        match cmd {
            RecordingCommand::Start => self
                .start_recording("api")
                .ok_or_else(|| "recording is not available (no key)".to_string()),
            RecordingCommand::Stop => {
                let id = self.recording.take().ok_or("no recording in progress")?;
                self.media_op(MediaOp::StopRecording);
                Ok(id)
            }
            RecordingCommand::Pause | RecordingCommand::Resume => {
                let id = self.recording.clone().ok_or("no recording in progress")?;
                self.media_op(MediaOp::PauseRecording(cmd == RecordingCommand::Pause));
                Ok(id)
            }
        }
    }

    /// The call is over: its quality goes to the CDR (and the trunk), the session is
    /// released (recording finished, ports back).
    pub(super) fn release_media(&mut self) -> Option<[crate::media::quality::LegQuality; 2]> {
        self.session.take()?;
        self.recording = None;
        let call = self.core().a_call_id.clone();
        let [qa, qb] = self.env.release_media(&call)?;
        let trunk = self
            .core
            .as_ref()
            .and_then(|c| c.trunk.as_deref())
            .unwrap_or("")
            .to_string();
        for q in [qa, qb] {
            if q.packets > 0 {
                metrics::histogram!(MOS, "trunk" => trunk.clone()).record(q.mos);
            }
        }
        if let Some(core) = self.core.as_mut().map(std::sync::Arc::make_mut) {
            core.cdr.quality = Some(Box::new([qa, qb]));
        }
        Some([qa, qb])
    }
}

/// The API's recording commands on a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordingCommand {
    Start,
    Stop,
    Pause,
    Resume,
}

impl RecordingCommand {
    pub fn parse(s: &str) -> Option<RecordingCommand> {
        Some(match s {
            "start" => RecordingCommand::Start,
            "stop" => RecordingCommand::Stop,
            "pause" => RecordingCommand::Pause,
            "resume" => RecordingCommand::Resume,
            _ => return None,
        })
    }
}

fn is_sdp(msg: &Message) -> bool {
    msg.content_type()
        .is_none_or(|ct| ct.len() >= 15 && ct[..15].eq_ignore_ascii_case(b"application/sdp"))
}

/// The digit of a SIP INFO: `application/dtmf-relay` (`Signal=5`) or `application/dtmf`
/// (the digit alone).
pub fn info_digit(msg: &Message) -> Option<char> {
    let ct = msg.content_type()?;
    let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
    let body = String::from_utf8_lossy(&msg.body);
    let text = if ct.starts_with("application/dtmf-relay") {
        body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| v.trim().to_string())
        })?
    } else if ct.starts_with("application/dtmf") {
        body.trim().to_string()
    } else {
        return None;
    };
    let mut chars = text.chars();
    let c = chars.next()?.to_ascii_uppercase();
    match (c, chars.next()) {
        ('0'..='9' | '*' | '#' | 'A'..='D', None) => Some(c),
        ('1', Some('0')) => Some('*'),
        ('1', Some('1')) => Some('#'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ct: &str, body: &str) -> Message {
        let mut m = Message::request(crate::sip::message::Method::Info, "sip:a@b");
        m.push(HeaderName::ContentType, ct.to_string());
        m.body = Bytes::from(body.to_string());
        m
    }

    #[test]
    fn reads_the_digit_of_a_sip_info() {
        assert_eq!(
            info_digit(&info(
                "application/dtmf-relay",
                "Signal=5\r\nDuration=160\r\n"
            )),
            Some('5')
        );
        assert_eq!(
            info_digit(&info("application/dtmf-relay", "Signal= #\r\n")),
            Some('#')
        );
        assert_eq!(info_digit(&info("application/dtmf", "11")), Some('#'));
        assert_eq!(info_digit(&info("application/dtmf", "a")), Some('A'));
        assert_eq!(
            info_digit(&info("application/dtmf-relay", "Signal=55")),
            None
        );
        assert_eq!(info_digit(&info("text/plain", "5")), None);
    }
}
