//! A mix on the relay threads: a [`Mixer`] shared by the legs in it, which may belong to
//! several calls and so sit on several relay threads. Each thread pushes what its legs
//! receive into the mix and, on its 20 ms tick, advances the mix to the frame the clock
//! says is due (whichever thread comes first does the mixing; the others find the frame
//! made) and sends its legs their frames with each leg's own SSRC, sequence and timestamp.
//!
//! The lock is held per packet and per tick for a few microseconds; a mix has few
//! participants, and different mixes never share a lock.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::g711::Codec;
use super::mixer::{MixCounters, Mixer, Pid};
use super::relay::Side;

pub const MIXES_ACTIVE: &str = "switchyard_mixer_mixes_active";
pub const PARTICIPANTS_ACTIVE: &str = "switchyard_mixer_participants_active";
pub const FRAMES: &str = "switchyard_mixer_frames_total";
pub const CPU: &str = "switchyard_mixer_cpu_microseconds_total";

/// Describes the mixer's metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        MIXES_ACTIVE,
        "Mixes (three-way calls, supervised calls, conferences) on the relay"
    );
    describe_gauge!(PARTICIPANTS_ACTIVE, "Legs in a mix");
    describe_counter!(
        FRAMES,
        "Mixer frames, by kind (mixed: produced for a participant; lost: missing at their turn in a stream that went on, played as silence; late: a packet after its frame was played, dropped; overrun: an output frame its relay thread did not take in time)"
    );
    describe_counter!(
        CPU,
        "Time the relay threads spent mixing (decode, sum, encode), in microseconds"
    );
}

/// The participants a mix holds at most (a conference larger than this is refused).
pub const MIX_CAPACITY: usize = 32;
const TICK: Duration = Duration::from_millis(20);
/// Ticks a mix may be behind its clock before it skips ahead instead of catching up.
const MAX_CATCH_UP: u64 = 3;

/// A mix: its mixer, its members, its clock.
pub struct Mix {
    id: String,
    state: Mutex<MixState>,
    epoch: Instant,
    pub(super) closed: AtomicBool,
}

pub(super) struct MixState {
    pub(super) mixer: Mixer,
    ticks: u64,
    /// Which session leg each participant is.
    members: Vec<(Bytes, Side, Pid)>,
    cpu: Duration,
}

impl Mix {
    pub(super) fn new(id: String) -> Mix {
        Mix {
            id,
            state: Mutex::new(MixState {
                // Room for a three-way call; a conference grows.
                mixer: Mixer::with_room(3, MIX_CAPACITY),
                ticks: 0,
                members: Vec::with_capacity(4),
                cpu: Duration::ZERO,
            }),
            epoch: Instant::now(),
            closed: AtomicBool::new(false),
        }
    }

    /// The mix's name (the caller's: a call's or a conference's id).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, MixState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The participant that is `side` of the session of `call`, if it is in the mix.
    pub fn pid(&self, call: &[u8], side: Side) -> Option<Pid> {
        self.lock().pid(call, side)
    }

    /// The legs in the mix: (session key, side).
    pub fn members(&self) -> Vec<(Bytes, Side)> {
        self.lock()
            .members
            .iter()
            .map(|(c, s, _)| (c.clone(), *s))
            .collect()
    }

    /// Participants in the mix.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets whether `listener` hears `speaker` (both `(call, side)`; ignored for legs not
    /// in the mix).
    pub fn set_hears(&self, listener: (&[u8], Side), speaker: (&[u8], Side), on: bool) {
        let mut st = self.lock();
        if let (Some(l), Some(s)) = (st.pid(listener.0, listener.1), st.pid(speaker.0, speaker.1)) {
            st.mixer.set_hears(l, s, on);
        }
    }

    /// Whether `listener` hears `speaker` now.
    pub fn hears(&self, listener: (&[u8], Side), speaker: (&[u8], Side)) -> bool {
        let st = self.lock();
        match (st.pid(listener.0, listener.1), st.pid(speaker.0, speaker.1)) {
            (Some(l), Some(s)) => st.mixer.hears(l, s),
            _ => false,
        }
    }

    /// Mute (nobody hears the leg) or unmute.
    pub fn set_muted(&self, call: &[u8], side: Side, muted: bool) {
        let mut st = self.lock();
        if let Some(p) = st.pid(call, side) {
            st.mixer.set_muted(p, muted);
        }
    }

    /// Deaf (the leg hears nobody) or not.
    pub fn set_deaf(&self, call: &[u8], side: Side, deaf: bool) {
        let mut st = self.lock();
        if let Some(p) = st.pid(call, side) {
            st.mixer.set_deaf(p, deaf);
        }
    }

    /// Adds a leg (hearing everyone, heard by everyone); its pid, or None when full. A
    /// leg already in the mix keeps its pid.
    pub(super) fn add(&self, call: &Bytes, side: Side, codec: Codec) -> Option<Pid> {
        let mut st = self.lock();
        if let Some(p) = st.pid(call, side) {
            return Some(p);
        }
        let pid = st.mixer.add(codec)?;
        st.members.push((call.clone(), side, pid));
        Some(pid)
    }

    /// Takes a participant out; true when it was in.
    pub(super) fn remove(&self, pid: Pid) -> bool {
        let mut st = self.lock();
        let before = st.members.len();
        st.members.retain(|m| m.2 != pid);
        if st.members.len() == before {
            return false;
        }
        st.mixer.remove(pid);
        true
    }

    /// Advances the mix to the frame its clock says is due.
    pub(super) fn advance(st: &mut MixState, epoch: Instant) {
        let due = (epoch.elapsed().as_nanos() / TICK.as_nanos()) as u64;
        if due <= st.ticks {
            return;
        }
        if due - st.ticks > MAX_CATCH_UP {
            // The threads stalled: skip ahead rather than burst old frames.
            st.ticks = due - 1;
        }
        let started = Instant::now();
        while st.ticks < due {
            st.mixer.tick();
            st.ticks += 1;
        }
        st.cpu += started.elapsed();
    }

    pub(super) fn epoch(&self) -> Instant {
        self.epoch
    }
}

impl MixState {
    fn pid(&self, call: &[u8], side: Side) -> Option<Pid> {
        self.members
            .iter()
            .find(|(c, s, _)| c.as_ref() == call && *s == side)
            .map(|m| m.2)
    }

    /// Counters and mixing time since the last call.
    pub(super) fn take(&mut self) -> (MixCounters, Duration) {
        (self.mixer.take_counters(), std::mem::take(&mut self.cpu))
    }

    /// Sets a participant's law (the leg's negotiated codec).
    pub(super) fn set_codec(&mut self, pid: Pid, codec: Codec) {
        self.mixer.set_codec(pid, codec);
    }
}

impl std::fmt::Debug for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mix").field("id", &self.id).finish()
    }
}

pub(super) fn closed(m: &Mix) -> bool {
    m.closed.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    //! Mixing on the relay with real sockets on loopback: phones on their own 127.0.0.x
    //! addresses send distinct tones; what each receives is checked by Goertzel.
    use super::*;
    use crate::media::recording::KeyRing;
    use crate::media::relay::{EngineConfig, MediaEngine, MediaEvent, Session};
    use crate::media::rtp;
    use crate::media::tone::{goertzel_power, ToneGen, SAMPLE_RATE};
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    use std::sync::Arc;

    fn engine(ports: (u16, u16)) -> MediaEngine {
        engine_with(ports, std::env::temp_dir(), None)
    }

    fn engine_with(
        ports: (u16, u16),
        recordings_dir: std::path::PathBuf,
        keys: Option<Arc<KeyRing>>,
    ) -> MediaEngine {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        MediaEngine::start(EngineConfig {
            bind: ip,
            advertise: ip,
            ports,
            // Two threads: the calls of a mix sit on different ones.
            threads: 2,
            recordings_dir,
            keys,
            inband_dtmf: false,
            rtp_timeout: None,
        })
        .unwrap()
    }

    /// A phone: its socket, where it sends, its tone and what it heard (decoded).
    struct Phone {
        sock: UdpSocket,
        to: SocketAddr,
        gen: ToneGen,
        codec: Codec,
        seq: u16,
        heard: Vec<i16>,
    }

    impl Phone {
        fn new(ip: &str, session: &Session, side: Side, hz: f32, codec: Codec) -> Phone {
            let sock = UdpSocket::bind((ip, 0)).unwrap();
            sock.set_nonblocking(true).unwrap();
            let addr = sock.local_addr().unwrap();
            session.set_signalling(side, addr.ip());
            session.set_remote(side, addr, Some(codec), None);
            Phone {
                sock,
                to: SocketAddr::new(session.address(), session.port(side)),
                gen: ToneGen::new(&[hz], 6000),
                codec,
                seq: 0,
                heard: Vec::new(),
            }
        }

        fn send(&mut self) {
            let mut pcm = [0i16; 160];
            self.gen.fill(&mut pcm);
            let mut buf = [0u8; 172];
            let h = rtp::write_rtp_header(
                &mut buf,
                false,
                self.codec.payload_type(),
                self.seq,
                self.seq as u32 * 160,
                0x5000 + self.to.port() as u32,
            );
            self.codec.encode_into(&pcm, &mut buf[h..h + 160]);
            self.seq = self.seq.wrapping_add(1);
            self.sock.send_to(&buf[..h + 160], self.to).unwrap();
        }

        fn receive(&mut self) {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if let Some(h) = rtp::parse_rtp(&buf[..n]) {
                    let Some(codec) = Codec::from_payload_type(h.payload_type) else {
                        continue;
                    };
                    let payload = h.payload(&buf[..n]);
                    let mut pcm = vec![0i16; payload.len()];
                    codec.decode_into(payload, &mut pcm);
                    self.heard.extend_from_slice(&pcm);
                }
            }
        }

        /// Of `tones`, those in the last `secs` of what the phone heard.
        fn tones(&self, tones: &[f32], secs: f32) -> Vec<f32> {
            let n = (secs * SAMPLE_RATE as f32) as usize;
            let tail = &self.heard[self.heard.len().saturating_sub(n)..];
            tones
                .iter()
                .copied()
                .filter(|&f| goertzel_power(tail, f, SAMPLE_RATE) > 1_000_000.0)
                .collect()
        }
    }

    /// All phones send one packet every 20 ms (paced by a deadline, not a sleep per
    /// packet) for `frames` frames, reading what they receive.
    fn talk(phones: &mut [&mut Phone], frames: usize) {
        for p in phones.iter_mut() {
            p.heard.clear();
        }
        let start = std::time::Instant::now();
        for f in 0..frames {
            for p in phones.iter_mut() {
                p.send();
            }
            let next = start + Duration::from_millis(20 * (f as u64 + 1));
            while std::time::Instant::now() < next {
                for p in phones.iter_mut() {
                    p.receive();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    const T: [f32; 3] = [440.0, 770.0, 1209.0];

    #[test]
    fn legs_of_two_calls_on_two_threads_hear_the_relation_of_their_mix() {
        let e = engine((48900, 48919));
        let one = e.allocate(&Bytes::from_static(b"mix-call-1")).unwrap();
        let two = e.allocate(&Bytes::from_static(b"mix-call-2")).unwrap();
        let mut caller = Phone::new("127.0.0.31", &one, Side::A, T[0], Codec::Pcmu);
        let mut agent = Phone::new("127.0.0.32", &one, Side::B, T[1], Codec::Pcma);
        let mut third = Phone::new("127.0.0.33", &two, Side::A, T[2], Codec::Pcmu);
        // Before the mix: the call is a plain bridge.
        talk(&mut [&mut caller, &mut agent, &mut third], 25);
        assert_eq!(caller.tones(&T, 0.3), vec![T[1]]);
        assert_eq!(agent.tones(&T, 0.3), vec![T[0]]);
        assert!(third.heard.is_empty());

        let mix = e.mix("three-way");
        e.join_mix(&mix, &one, Side::A).unwrap();
        e.join_mix(&mix, &one, Side::B).unwrap();
        e.join_mix(&mix, &two, Side::A).unwrap();
        assert_eq!((mix.len(), e.mixes()), (3, 1));
        talk(&mut [&mut caller, &mut agent, &mut third], 40);
        assert_eq!(caller.tones(&T, 0.4), vec![T[1], T[2]]);
        assert_eq!(agent.tones(&T, 0.4), vec![T[0], T[2]]);
        assert_eq!(third.tones(&T, 0.4), vec![T[0], T[1]]);

        // Whisper: the third party (a supervisor) is heard by the agent only.
        mix.set_hears((b"mix-call-1", Side::A), (b"mix-call-2", Side::A), false);
        talk(&mut [&mut caller, &mut agent, &mut third], 30);
        assert_eq!(caller.tones(&T, 0.3), vec![T[1]]);
        assert_eq!(agent.tones(&T, 0.3), vec![T[0], T[2]]);
        assert_eq!(third.tones(&T, 0.3), vec![T[0], T[1]]);

        // The third call ends: the two others go on hearing each other in the mix.
        e.release(b"mix-call-2");
        talk(&mut [&mut caller, &mut agent], 30);
        assert_eq!(caller.tones(&T, 0.3), vec![T[1]]);
        assert_eq!(agent.tones(&T, 0.3), vec![T[0]]);
        assert_eq!(mix.len(), 2);

        // Both leave: the mix ends and the call is a plain bridge again.
        e.leave_mix(&one, Side::A);
        e.leave_mix(&one, Side::B);
        assert!(mix.is_empty());
        assert!(e.find_mix("three-way").is_none());
        assert!(e.join_mix(&mix, &one, Side::A).is_err(), "an ended mix");
        talk(&mut [&mut caller, &mut agent], 25);
        assert_eq!(caller.tones(&T, 0.3), vec![T[1]]);
        assert_eq!(agent.tones(&T, 0.3), vec![T[0]]);
    }

    #[test]
    fn a_recorded_call_in_a_mix_records_the_caller_and_everyone_it_hears() {
        let dir = tempfile::tempdir().unwrap();
        let keys = std::collections::BTreeMap::from([(
            "k1".to_string(),
            format!("hex:{}", "11".repeat(32)),
        )]);
        let ring = Arc::new(
            KeyRing::from_config(&keys, None, std::path::Path::new("/nonexistent")).unwrap(),
        );
        let e = engine_with((48920, 48939), dir.path().to_path_buf(), Some(ring.clone()));
        let done = Arc::new(std::sync::Mutex::new(None));
        let sink = done.clone();
        e.set_sink(Arc::new(move |ev| {
            if let MediaEvent::RecordingFinished { finished, .. } = ev {
                *sink.lock().unwrap() = Some(finished.path);
            }
        }));
        let one = e.allocate(&Bytes::from_static(b"rec-call-1")).unwrap();
        let two = e.allocate(&Bytes::from_static(b"rec-call-2")).unwrap();
        let mut caller = Phone::new("127.0.0.34", &one, Side::A, T[0], Codec::Pcmu);
        let mut agent = Phone::new("127.0.0.35", &one, Side::B, T[1], Codec::Pcmu);
        let mut third = Phone::new("127.0.0.36", &two, Side::A, T[2], Codec::Pcma);
        let mix = e.mix("recorded");
        for (s, side) in [(&one, Side::A), (&one, Side::B), (&two, Side::A)] {
            e.join_mix(&mix, s, side).unwrap();
        }
        one.record("mixrec-1".into(), "acme".into());
        talk(&mut [&mut caller, &mut agent, &mut third], 40);
        one.stop_recording();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let path = loop {
            if let Some(p) = done.lock().unwrap().clone() {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the recording never finished"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let wav: Vec<u8> = crate::media::recording::open(&path, &ring)
            .unwrap()
            .flat_map(|c| c.unwrap())
            .collect();
        let (left, right, _) = crate::media::wav::read_stereo(&wav).unwrap();
        let tones = |pcm: &[i16]| -> Vec<f32> {
            T.iter()
                .copied()
                .filter(|&f| goertzel_power(pcm, f, SAMPLE_RATE) > 1_000_000.0)
                .collect()
        };
        assert!(left.len() >= 8000 * 6 / 10, "{} samples", left.len());
        assert_eq!(tones(&left), vec![T[0]], "left: the caller");
        assert_eq!(
            tones(&right),
            vec![T[1], T[2]],
            "right: what the caller hears"
        );
    }
}
