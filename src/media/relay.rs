//! The relay engine: anchored calls' RTP and RTCP, relayed between the two legs by a few
//! dedicated threads (`media.relay_threads`), each polling its share of the sockets with
//! epoll (mio). A call's [`Session`] lives here, not in the call actor: the relay goes on
//! while a call actor restarts, and the restarted actor finds its session again by the
//! call's Call-ID ([`MediaEngine::get`]).
//!
//! Per packet the path is: `recv_from` into the thread's one buffer → latch the source
//! (symmetric RTP: the leg's remote becomes where it really sends from, for phones behind
//! NAT; only a source at its SDP or signalling address may latch, others are dropped as
//! foreign, see [`super::latch`]) → receive statistics (loss, jitter) → taps (RFC 4733 and
//! in-band DTMF, recording) → transcode in place if the legs' G.711 laws differ → `send_to`
//! from the other leg's socket. No allocation on that path. Every 20 ms a tick plays
//! prompts and music to legs that have a playback, writes recorded audio, and once a second
//! publishes quality figures and metrics (counted per thread, flushed in one go) and
//! reports calls whose media stopped (`media.rtp_timeout_secs`: an event to the call actor,
//! which hangs up).
//!
//! Commands from the call actors reach a thread over a channel plus a mio waker, so a
//! caller never blocks on the relay.

use bytes::Bytes;
use dashmap::DashMap;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::batch::{Batch, BATCH};
use super::dtmf::{EventDetector, InbandDetector};
use super::g711::Codec;
use super::latch::{Latch, Verdict};
use super::mix::{self, Mix};
use super::ports::PortPool;
use super::quality::{self, LegQuality, RecvStats};
use super::recording::{Finished, KeyRing, Recorder};
use super::rtp;
use crate::sip::sdp::Direction;

pub const SESSIONS_ACTIVE: &str = "switchyard_media_sessions_active";
pub const PORTS_IN_USE: &str = "switchyard_media_ports_in_use";
pub const PORTS_EXHAUSTED: &str = "switchyard_media_ports_exhausted_total";
pub const PACKETS: &str = "switchyard_media_packets_total";
pub const BYTES: &str = "switchyard_media_bytes_total";
pub const DROPPED: &str = "switchyard_media_dropped_total";
pub const LOST: &str = "switchyard_media_lost_packets_total";
pub const LATE: &str = "switchyard_media_late_packets_total";
pub const EXPECTED: &str = "switchyard_media_expected_packets_total";
pub const PLAYBACKS: &str = "switchyard_media_playback_streams";
pub const DTMF: &str = "switchyard_media_dtmf_digits_total";
pub const REAPED: &str = "switchyard_media_sessions_reaped_total";
pub const ECHOED: &str = "switchyard_media_echoed_packets_total";
use super::recording::RECORDINGS_ACTIVE;

/// Describes the relay's metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        SESSIONS_ACTIVE,
        "Calls with anchored media (relay sessions)"
    );
    describe_gauge!(
        PORTS_IN_USE,
        "RTP/RTCP port pairs in use (two per anchored call)"
    );
    describe_counter!(
        PORTS_EXHAUSTED,
        "Anchoring refused because the RTP port range was used up"
    );
    describe_counter!(PACKETS, "RTP and RTCP packets, by dir (in, out) and kind");
    describe_counter!(
        ECHOED,
        "RTP packets sent back to their sender by the echo test (also counted in packets out)"
    );
    describe_counter!(BYTES, "RTP and RTCP bytes, by dir (in, out)");
    describe_counter!(
        DROPPED,
        "Packets not relayed, by reason (malformed, no_peer, direction, send_error, playback, foreign_source: from an address the leg may not latch onto, not_latched: to a leg whose SDP address is not the signalling host's, before its first packet; mixed: to a leg that hears a mix instead)"
    );
    describe_counter!(
        LOST,
        "RTP packets lost on the way to the switch (sequence gaps, RFC 3550)"
    );
    describe_counter!(
        EXPECTED,
        "RTP packets expected from the sequence numbers (the base of the loss ratio)"
    );
    describe_counter!(
        LATE,
        "RTP packets that arrived after a later one (reordered)"
    );
    describe_gauge!(PLAYBACKS, "Prompt or music streams being played to legs");
    describe_counter!(
        DTMF,
        "DTMF digits detected, by source (rfc4733, inband, info)"
    );
    describe_counter!(
        REAPED,
        "Relay sessions removed because no call actor owned them any more"
    );
}

/// A call's two legs: A (the caller) and B (the callee or agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn idx(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
    /// The other leg.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// Where a DTMF digit was detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtmfSource {
    Rfc4733,
    Inband,
    Info,
}

impl DtmfSource {
    pub fn label(self) -> &'static str {
        match self {
            DtmfSource::Rfc4733 => "rfc4733",
            DtmfSource::Inband => "inband",
            DtmfSource::Info => "info",
        }
    }
}

/// What the relay tells the rest of the switch (through the [`EventSink`]).
#[derive(Debug)]
pub enum MediaEvent {
    Dtmf {
        call: Bytes,
        side: Side,
        digit: char,
        source: DtmfSource,
    },
    RecordingStarted {
        id: String,
        call: Bytes,
        tenant: String,
        key_id: String,
        path: PathBuf,
        started_ms: i64,
    },
    RecordingFinished {
        id: String,
        call: Bytes,
        finished: Finished,
    },
    RecordingFailed {
        id: String,
        call: Bytes,
        reason: String,
    },
    /// No RTP or RTCP arrived from either leg for `media.rtp_timeout_secs` (and neither
    /// is held nor played to): the call's media is dead. Repeated every timeout while it
    /// stays so (a call still ringing may ignore it).
    MediaTimeout { call: Bytes },
}

/// Receives the relay's events (called on relay threads: must not block).
pub type EventSink = Arc<dyn Fn(MediaEvent) + Send + Sync>;
/// Whether a call (by A-leg Call-ID) still has an actor (sessions of calls that have none
/// are reaped).
pub type AliveCheck = Arc<dyn Fn(&Bytes) -> bool + Send + Sync>;

/// The engine's settings (from `[media]`).
#[derive(Clone)]
pub struct EngineConfig {
    pub bind: IpAddr,
    pub advertise: IpAddr,
    pub ports: (u16, u16),
    pub threads: usize,
    pub recordings_dir: PathBuf,
    pub keys: Option<Arc<KeyRing>>,
    /// Run the in-band (Goertzel) DTMF detector on every G.711 leg.
    pub inband_dtmf: bool,
    /// A call whose legs both send nothing for this long is reported
    /// ([`MediaEvent::MediaTimeout`]); None: never.
    pub rtp_timeout: Option<Duration>,
}

/// A mix refused a participant: it is full ([`mix::MIX_CAPACITY`]) or has ended.
#[derive(Debug, thiserror::Error)]
#[error("the mix is full or has ended")]
pub struct MixFull;

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP ports")]
    NoPorts,
    #[error("cannot bind RTP socket: {0}")]
    Io(#[from] io::Error),
}

/// A frame of audio: 20 ms at 8 kHz.
pub const FRAME: usize = 160;
const TICK: Duration = Duration::from_millis(20);
const WAKER: Token = Token(usize::MAX);
/// How often figures are published and metrics flushed, and sessions checked for an owner.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often the switch sends its own RTCP to a leg it plays to (RFC 3550 §6.2: 5 s).
const OWN_RTCP_EVERY: Duration = Duration::from_secs(5);
const REAP_EVERY: Duration = Duration::from_secs(5);
/// Recorded audio a leg may run ahead of the other before the oldest is dropped (1 s).
const REC_BUFFER: usize = 8000;

/// What a leg is played: items in order, then (optionally) a loop.
#[derive(Clone, Default)]
pub struct Playlist {
    pub items: Vec<Arc<[i16]>>,
    pub then_loop: Option<Arc<[i16]>>,
}

/// Counters and quality of one leg, published by its relay thread once a second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LegStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub quality: LegQuality,
    /// The leg's remote address as latched or signalled.
    pub remote: Option<SocketAddr>,
}

/// A call's relay session as the call actor sees it: its ports, and commands to its thread.
pub struct Session {
    call: Bytes,
    ports: [u16; 2],
    advertise: IpAddr,
    thread: usize,
    slot: usize,
    serial: u64,
    engine: std::sync::Weak<EngineInner>,
    stats: Mutex<[LegStats; 2]>,
    recording: Mutex<Option<String>>,
    released: AtomicBool,
    /// The mix each leg is in, as the control side put it there.
    mixes: Mutex<[Option<Arc<Mix>>; 2]>,
}

impl Session {
    /// The RTP port the switch uses facing `side` (RTCP is the port above).
    pub fn port(&self, side: Side) -> u16 {
        self.ports[side.idx()]
    }
    /// The address written in rewritten SDP.
    pub fn address(&self) -> IpAddr {
        self.advertise
    }
    /// The A-leg Call-ID the session belongs to.
    pub fn call(&self) -> &Bytes {
        &self.call
    }
    /// The IP `side`'s signalling comes from: its media may come from there too (a phone
    /// behind NAT), and before any packet arrived media goes to its SDP address only if
    /// it is this IP (see [`super::latch`]). Set it before [`Session::set_remote`].
    pub fn set_signalling(&self, side: Side, ip: IpAddr) {
        self.send(Command::Signalling { side, ip });
    }
    /// Where `side` wants media at (from its SDP, an offer or answer), its codec, and its
    /// telephone-event payload type. Opens the leg's latch window: the next packet from
    /// its SDP or signalling address latches.
    pub fn set_remote(
        &self,
        side: Side,
        addr: SocketAddr,
        codec: Option<Codec>,
        te_pt: Option<u8>,
    ) {
        self.send(Command::Remote {
            side,
            addr,
            codec,
            te_pt,
        });
    }
    /// The G.711 law `side` is sent in (its own negotiation, e.g. the switch's answer).
    pub fn set_remote_codec(&self, side: Side, codec: Codec) {
        self.send(Command::Codec { side, codec });
    }
    /// The direction `side` declared in its SDP (sendonly: it only sends, so nothing is
    /// relayed to it; recvonly: nothing it sends is relayed; inactive: neither).
    pub fn set_direction(&self, side: Side, direction: Direction) {
        self.send(Command::Direction { side, direction });
    }
    /// Relay between the legs (on) or keep them apart (off: e.g. a caller waiting in a queue).
    pub fn bridge(&self, on: bool) {
        self.send(Command::Bridge(on));
    }
    /// Plays a playlist to `side` (replacing what it is hearing).
    pub fn play(&self, side: Side, playlist: Playlist) {
        self.send(Command::Play { side, playlist });
    }
    /// Stops what `side` is being played.
    pub fn stop_play(&self, side: Side) {
        self.send(Command::StopPlay(side));
    }
    /// The echo test: every RTP packet `side` sends goes back to it (to where it was
    /// latched, like any relayed packet: the echo reflects nothing to a third party).
    pub fn echo(&self, side: Side) {
        self.send(Command::Echo(side));
    }
    /// Starts recording both legs (left: A, right: B) as recording `id` of `tenant`.
    pub fn record(&self, id: String, tenant: String) {
        *lock(&self.recording) = Some(id.clone());
        self.send(Command::Record { id, tenant });
    }
    /// Pauses (true) or resumes (false) the recording.
    pub fn pause_recording(&self, paused: bool) {
        self.send(Command::PauseRecording(paused));
    }
    /// Stops and finishes the recording.
    pub fn stop_recording(&self) {
        *lock(&self.recording) = None;
        self.send(Command::StopRecording);
    }
    /// The recording in progress, if any.
    pub fn recording(&self) -> Option<String> {
        lock(&self.recording).clone()
    }
    /// Sends a DTMF digit to `side` (RFC 4733 when it has telephone-event, else in-band).
    pub fn send_dtmf(&self, side: Side, digit: char) {
        self.send(Command::SendDtmf { side, digit });
    }
    /// The leg's counters and quality (published once a second; the final figures come
    /// with [`MediaEngine::release_with_stats`]).
    pub fn stats(&self, side: Side) -> LegStats {
        lock(&self.stats)[side.idx()]
    }

    fn send(&self, cmd: Command) {
        if let Some(engine) = self.engine.upgrade() {
            engine.threads[self.thread].send(Envelope {
                slot: self.slot,
                serial: self.serial,
                cmd,
            });
        }
    }
}

enum Command {
    Add(Box<Sess>),
    /// Ends the session; its final figures go back on the channel if one is given.
    Remove(Option<mpsc::SyncSender<[LegStats; 2]>>),
    Remote {
        side: Side,
        addr: SocketAddr,
        codec: Option<Codec>,
        te_pt: Option<u8>,
    },
    Signalling {
        side: Side,
        ip: IpAddr,
    },
    Direction {
        side: Side,
        direction: Direction,
    },
    Codec {
        side: Side,
        codec: Codec,
    },
    Bridge(bool),
    Play {
        side: Side,
        playlist: Playlist,
    },
    StopPlay(Side),
    Echo(Side),
    Record {
        id: String,
        tenant: String,
    },
    PauseRecording(bool),
    StopRecording,
    SendDtmf {
        side: Side,
        digit: char,
    },
    /// The leg's audio goes to the mix and it hears the mix (instead of the other leg).
    JoinMix {
        side: Side,
        mix: Arc<Mix>,
        pid: super::mixer::Pid,
    },
    /// The leg leaves the mix (back to the session's own relay).
    LeaveMix {
        side: Side,
        mix: Arc<Mix>,
    },
}

struct Envelope {
    slot: usize,
    /// The session the command is for (a slot is reused once its session is gone).
    serial: u64,
    cmd: Command,
}

struct ThreadHandle {
    tx: Mutex<mpsc::Sender<Envelope>>,
    waker: Waker,
    /// Slots handed out for new sessions (the thread fills them in order).
    next_slot: Mutex<SlotAlloc>,
}

#[derive(Default)]
struct SlotAlloc {
    next: usize,
    free: Vec<usize>,
}

impl ThreadHandle {
    fn send(&self, env: Envelope) {
        let sent = lock(&self.tx).send(env).is_ok();
        if sent {
            let _ = self.waker.wake();
        }
    }
}

struct EngineInner {
    cfg: EngineConfig,
    pool: PortPool,
    threads: Vec<ThreadHandle>,
    sessions: DashMap<Bytes, Arc<Session>>,
    sink: OnceLock<EventSink>,
    alive: OnceLock<AliveCheck>,
    next_thread: AtomicUsize,
    next_serial: AtomicU64,
    recordings_active: AtomicU64,
    playbacks: AtomicU64,
    mixes: DashMap<String, Arc<Mix>>,
    mix_participants: AtomicU64,
}

/// The relay engine: the port pool, the relay threads and the sessions by Call-ID.
#[derive(Clone)]
pub struct MediaEngine {
    inner: Arc<EngineInner>,
}

impl MediaEngine {
    /// Starts the relay threads.
    pub fn start(cfg: EngineConfig) -> io::Result<MediaEngine> {
        let threads = cfg.threads.max(1);
        let mut handles = Vec::with_capacity(threads);
        let mut loops = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let (tx, rx) = mpsc::channel();
            handles.push(ThreadHandle {
                tx: Mutex::new(tx),
                waker,
                next_slot: Mutex::new(SlotAlloc::default()),
            });
            loops.push((poll, rx));
        }
        let inner = Arc::new(EngineInner {
            pool: PortPool::new(cfg.ports.0, cfg.ports.1),
            cfg,
            threads: handles,
            sessions: DashMap::new(),
            sink: OnceLock::new(),
            alive: OnceLock::new(),
            next_thread: AtomicUsize::new(0),
            next_serial: AtomicU64::new(1),
            recordings_active: AtomicU64::new(0),
            playbacks: AtomicU64::new(0),
            mixes: DashMap::new(),
            mix_participants: AtomicU64::new(0),
        });
        for (i, (poll, rx)) in loops.into_iter().enumerate() {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name(format!("media-relay-{i}"))
                .spawn(move || RelayThread::new(i, poll, rx, weak).run())?;
        }
        Ok(MediaEngine { inner })
    }

    /// Where the relay's events go (set once, at start).
    pub fn set_sink(&self, sink: EventSink) {
        let _ = self.inner.sink.set(sink);
    }

    /// How the engine learns that a call has no actor any more (set once, at start).
    pub fn set_alive_check(&self, alive: AliveCheck) {
        let _ = self.inner.alive.set(alive);
    }

    /// The address rewritten SDP carries.
    pub fn advertise(&self) -> IpAddr {
        self.inner.cfg.advertise
    }

    /// How long both legs may send nothing before [`MediaEvent::MediaTimeout`] (None:
    /// never).
    pub fn rtp_timeout(&self) -> Option<Duration> {
        self.inner.cfg.rtp_timeout
    }

    /// Whether recordings can be made (a key ring is loaded).
    pub fn can_record(&self) -> bool {
        self.inner.cfg.keys.is_some()
    }

    /// The call's session, set up now (two port pairs bound) or found if it exists.
    pub fn allocate(&self, call: &Bytes) -> Result<Arc<Session>, MediaError> {
        if let Some(s) = self.get(call) {
            return Ok(s);
        }
        let inner = &self.inner;
        let (a, b) = (self.bind_leg()?, self.bind_leg());
        let b = match b {
            Ok(b) => b,
            Err(e) => {
                inner.pool.give(a.0);
                return Err(e);
            }
        };
        let thread = inner.next_thread.fetch_add(1, Ordering::Relaxed) % inner.threads.len();
        let slot = {
            let mut alloc = lock(&inner.threads[thread].next_slot);
            alloc.free.pop().unwrap_or_else(|| {
                alloc.next += 1;
                alloc.next - 1
            })
        };
        let session = Arc::new(Session {
            call: call.clone(),
            ports: [a.0, b.0],
            advertise: inner.cfg.advertise,
            thread,
            slot,
            serial: inner.next_serial.fetch_add(1, Ordering::Relaxed),
            engine: Arc::downgrade(inner),
            stats: Mutex::new([LegStats::default(); 2]),
            recording: Mutex::new(None),
            released: AtomicBool::new(false),
            mixes: Mutex::new([None, None]),
        });
        let sess = Sess::new(session.clone(), [a, b], inner.cfg.inband_dtmf);
        inner.threads[thread].send(Envelope {
            slot,
            serial: session.serial,
            cmd: Command::Add(Box::new(sess)),
        });
        inner.sessions.insert(call.clone(), session.clone());
        self.gauges();
        Ok(session)
    }

    /// The call's session, if it has one.
    pub fn get(&self, call: &[u8]) -> Option<Arc<Session>> {
        self.inner.sessions.get(call).map(|s| s.clone())
    }

    /// Ends the call's session: sockets closed, ports given back, recording finished.
    pub fn release(&self, call: &[u8]) {
        if let Some((_, s)) = self.inner.sessions.remove(call) {
            if !s.released.swap(true, Ordering::AcqRel) {
                s.send(Command::Remove(None));
            }
        }
        self.gauges();
    }

    /// Ends the call's session like [`MediaEngine::release`] and returns its final figures
    /// (waiting at most `wait` for the relay thread; else the last published ones).
    pub fn release_with_stats(&self, call: &[u8], wait: Duration) -> Option<[LegStats; 2]> {
        let (_, s) = self.inner.sessions.remove(call)?;
        self.gauges();
        if s.released.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        s.send(Command::Remove(Some(tx)));
        Some(rx.recv_timeout(wait).unwrap_or_else(|_| *lock(&s.stats)))
    }

    /// Sessions in progress.
    pub fn sessions(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Port pairs in use.
    pub fn ports_in_use(&self) -> usize {
        self.inner.pool.in_use()
    }

    /// Reports a DTMF digit that arrived in signalling (SIP INFO) like the relay's own.
    pub fn dtmf_from_signalling(&self, call: &Bytes, side: Side, digit: char) {
        metrics::counter!(DTMF, "source" => DtmfSource::Info.label()).increment(1);
        if let Some(sink) = self.inner.sink.get() {
            sink(MediaEvent::Dtmf {
                call: call.clone(),
                side,
                digit,
                source: DtmfSource::Info,
            });
        }
    }

    /// The mix named `id`, made now if there is none (it goes once its last participant
    /// has left).
    pub fn mix(&self, id: &str) -> Arc<Mix> {
        let mix = self
            .inner
            .mixes
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Mix::new(id.to_string())))
            .clone();
        metrics::gauge!(mix::MIXES_ACTIVE).set(self.inner.mixes.len() as f64);
        mix
    }

    /// The mix named `id`, if it exists.
    pub fn find_mix(&self, id: &str) -> Option<Arc<Mix>> {
        self.inner.mixes.get(id).map(|m| m.clone())
    }

    /// Mixes in progress.
    pub fn mixes(&self) -> usize {
        self.inner.mixes.len()
    }

    /// Puts `side` of `session` into `mix` (out of any other mix it was in): from the next
    /// packet its audio goes to the mix, and it hears what the mix makes for it (everyone
    /// at first; see [`Mix::set_hears`]). Err when the mix is full or closed.
    pub fn join_mix(&self, mix: &Arc<Mix>, session: &Session, side: Side) -> Result<(), MixFull> {
        if mix::closed(mix) {
            return Err(MixFull);
        }
        let previous = lock(&session.mixes)[side.idx()].clone();
        if let Some(prev) = previous.filter(|p| !Arc::ptr_eq(p, mix)) {
            self.leave_mix(session, side);
            drop(prev);
        }
        let known = mix.pid(&session.call, side).is_some();
        let pid = mix.add(&session.call, side, Codec::Pcmu).ok_or(MixFull)?;
        if !known {
            self.inner.mix_joined();
        }
        lock(&session.mixes)[side.idx()] = Some(mix.clone());
        session.send(Command::JoinMix {
            side,
            mix: mix.clone(),
            pid,
        });
        Ok(())
    }

    /// Takes `side` of `session` out of its mix (the mix ends with its last participant).
    pub fn leave_mix(&self, session: &Session, side: Side) {
        let Some(mix) = lock(&session.mixes)[side.idx()].take() else {
            return;
        };
        if let Some(pid) = mix.pid(&session.call, side) {
            self.inner.mix_left(&mix, pid);
        }
        session.send(Command::LeaveMix { side, mix });
    }

    /// The mix `side` of `session` is in.
    pub fn mix_of(&self, session: &Session, side: Side) -> Option<Arc<Mix>> {
        lock(&session.mixes)[side.idx()].clone()
    }

    fn gauges(&self) {
        metrics::gauge!(SESSIONS_ACTIVE).set(self.inner.sessions.len() as f64);
        metrics::gauge!(PORTS_IN_USE).set((self.inner.pool.in_use() * 2) as f64);
    }

    /// Takes a port pair and binds its two sockets (a port another program holds is
    /// skipped and put back at the end of the line).
    fn bind_leg(&self) -> Result<(u16, UdpSocket, UdpSocket), MediaError> {
        let pool = &self.inner.pool;
        for _ in 0..16 {
            let Some(port) = pool.take() else {
                metrics::counter!(PORTS_EXHAUSTED).increment(1);
                return Err(MediaError::NoPorts);
            };
            let bind = self.inner.cfg.bind;
            let rtp = std::net::UdpSocket::bind(SocketAddr::new(bind, port));
            let rtcp = std::net::UdpSocket::bind(SocketAddr::new(bind, port + 1));
            match (rtp, rtcp) {
                (Ok(rtp), Ok(rtcp)) => {
                    rtp.set_nonblocking(true)?;
                    rtcp.set_nonblocking(true)?;
                    return Ok((port, UdpSocket::from_std(rtp), UdpSocket::from_std(rtcp)));
                }
                _ => pool.give(port),
            }
        }
        Err(MediaError::NoPorts)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One leg's sockets and relay state (owned by its thread).
struct LegIo {
    port: u16,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// Which sources the leg hears and where its media may go.
    latch: Latch,
    /// The RTP socket is connected to the latched source: the kernel skips the route
    /// lookup on each send and refuses packets from anyone else before the relay sees
    /// them (no RTP injection; they count in the kernel's UDP `NoPorts`).
    connected: bool,
    codec: Option<Codec>,
    te_pt: Option<u8>,
    /// Packets may be relayed to this leg / from this leg (its SDP direction).
    send_ok: bool,
    recv_ok: bool,
    stats: RecvStats,
    stats_started: bool,
    ssrc_in: Option<u32>,
    events: EventDetector,
    inband: Option<InbandDetector>,
    play: Option<Player>,
    /// The echo test: what the leg sends goes back to it (under the switch's SSRC).
    echo: bool,
    dtmf_out: VecDeque<rtp::TelephoneEvent>,
    dtmf_ts: u32,
    out_ssrc: u32,
    out_seq: u16,
    out_ts: u32,
    rec_buf: VecDeque<i16>,
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    /// RTCP packets heard (with `packets_in`: whether the leg is alive).
    rtcp_in: u64,
    /// Loss and jitter this leg's RTCP reports for what it receives; round-trip time.
    remote_loss: f64,
    remote_jitter_ms: f64,
    rtt_ms: Option<f64>,
    /// The switch's own stream to the leg (playback): packets and octets for its SR, when
    /// the last SR went, and the leg's last SR (middle NTP bits, arrival) for LSR/DLSR.
    own_packets: u32,
    own_octets: u32,
    last_own_rtcp: Option<Instant>,
    last_sr: Option<(u32, Instant)>,
    last_lost: i64,
    last_expected: u64,
    max_seq: Option<u16>,
    /// The mix the leg is in, and its participant there.
    mix: Option<(Arc<Mix>, super::mixer::Pid)>,
}

impl LegIo {
    fn new(port: u16, rtp: UdpSocket, rtcp: UdpSocket, inband: bool) -> LegIo {
        LegIo {
            port,
            rtp,
            rtcp,
            latch: Latch::default(),
            connected: false,
            codec: None,
            te_pt: None,
            send_ok: true,
            recv_ok: true,
            stats: RecvStats::new(),
            stats_started: false,
            ssrc_in: None,
            events: EventDetector::new(),
            inband: inband.then(InbandDetector::new),
            echo: false,
            play: None,
            dtmf_out: VecDeque::new(),
            dtmf_ts: 0,
            out_ssrc: rand::random(),
            out_seq: rand::random(),
            out_ts: rand::random(),
            rec_buf: VecDeque::new(),
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            rtcp_in: 0,
            remote_loss: 0.0,
            remote_jitter_ms: 0.0,
            rtt_ms: None,
            own_packets: 0,
            own_octets: 0,
            last_own_rtcp: None,
            last_sr: None,
            last_lost: 0,
            last_expected: 0,
            max_seq: None,
            mix: None,
        }
    }

    /// Sends the switch's own RTCP sender report to the leg (its playback stream), with a
    /// report block on the leg's stream when it sends one. True when sent.
    fn send_own_rtcp(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(dest) = self.latch.rtcp_dest() else {
            return false;
        };
        let (ntp_sec, ntp_frac) = rtp::ntp_now();
        let info = rtp::SenderInfo {
            ntp_sec,
            ntp_frac,
            rtp_ts: self.out_ts,
            packets: self.own_packets,
            octets: self.own_octets,
        };
        let mut blocks = Vec::new();
        if let (true, Some(ssrc)) = (self.stats_started, self.ssrc_in) {
            // LSR/DLSR from the leg's last SR let it measure the round trip (RFC 3550 §6.4.1).
            let (lsr, dlsr) = match self.last_sr {
                Some((mid, at)) => (mid, (at.elapsed().as_secs_f64() * 65536.0) as u32),
                None => (0, 0),
            };
            blocks.push(self.stats.report_block(ssrc, lsr, dlsr));
        }
        out.clear();
        rtp::write_sender_report(out, self.out_ssrc, &info, &blocks);
        self.rtcp.send_to(out, dest).is_ok()
    }

    /// Sends on the leg's RTP socket: to its peer when connected, else to `dest`.
    fn send_rtp(&self, buf: &[u8], dest: SocketAddr) -> io::Result<usize> {
        if self.connected {
            self.rtp.send(buf)
        } else {
            self.rtp.send_to(buf, dest)
        }
    }

    fn quality(&self) -> LegQuality {
        let loss = self.stats.loss_fraction().max(self.remote_loss);
        let jitter_ms = self.stats.jitter_ms(8000).max(self.remote_jitter_ms);
        LegQuality {
            packets: self.stats.received(),
            lost: self.stats.lost(),
            loss,
            jitter_ms,
            rtt_ms: self.rtt_ms,
            mos: quality::mos(loss, jitter_ms, self.rtt_ms.unwrap_or(0.0)),
        }
    }
}

/// A playlist being played: the current item and position.
struct Player {
    items: VecDeque<Arc<[i16]>>,
    then_loop: Option<Arc<[i16]>>,
    pos: usize,
}

impl Player {
    fn new(p: Playlist) -> Player {
        Player {
            items: p.items.into(),
            then_loop: p.then_loop,
            pos: 0,
        }
    }

    /// Fills a frame; false once the playlist is over (no loop).
    fn next_frame(&mut self, out: &mut [i16; FRAME]) -> bool {
        let mut filled = 0;
        while filled < FRAME {
            let cur = match self.items.front() {
                Some(item) => item.clone(),
                None => match &self.then_loop {
                    Some(l) if !l.is_empty() => l.clone(),
                    _ => break,
                },
            };
            let take = (cur.len() - self.pos.min(cur.len())).min(FRAME - filled);
            out[filled..filled + take].copy_from_slice(&cur[self.pos..self.pos + take]);
            filled += take;
            self.pos += take;
            if self.pos >= cur.len() {
                self.pos = 0;
                if self.items.pop_front().is_none() && self.then_loop.is_none() {
                    break;
                }
            }
        }
        out[filled..].fill(0);
        filled > 0
    }
}

/// A recording in progress on a session.
struct Rec {
    id: String,
    recorder: Recorder,
    paused: bool,
}

/// A session as its relay thread holds it.
struct Sess {
    shared: Arc<Session>,
    legs: [LegIo; 2],
    bridged: bool,
    rec: Option<Rec>,
    created: Instant,
    /// Consecutive reaper checks that found no call actor.
    orphan_checks: u8,
    /// When media last showed life (a packet, an offer/answer, a hold or a playback),
    /// and the packet count it was seen at (the RTP timeout).
    alive_at: Instant,
    alive_packets: u64,
}

impl Sess {
    fn new(shared: Arc<Session>, legs: [(u16, UdpSocket, UdpSocket); 2], inband: bool) -> Sess {
        let [a, b] = legs;
        Sess {
            shared,
            legs: [
                LegIo::new(a.0, a.1, a.2, inband),
                LegIo::new(b.0, b.1, b.2, inband),
            ],
            bridged: true,
            rec: None,
            created: Instant::now(),
            orphan_checks: 0,
            alive_at: Instant::now(),
            alive_packets: 0,
        }
    }
}

/// Counters a thread accumulates between metric flushes.
#[derive(Default)]
struct Counters {
    rtp_in: u64,
    rtcp_in: u64,
    rtp_out: u64,
    rtcp_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    malformed: u64,
    no_peer: u64,
    direction: u64,
    send_error: u64,
    playback: u64,
    foreign: u64,
    not_latched: u64,
    lost: i64,
    expected: u64,
    late: u64,
    dtmf_rfc4733: u64,
    dtmf_inband: u64,
    echoed: u64,
    /// Packets not relayed because the leg they would go to hears a mix instead.
    mixed: u64,
    mix: super::mixer::MixCounters,
    mix_cpu: Duration,
}

struct RelayThread {
    index: usize,
    poll: Poll,
    rx: mpsc::Receiver<Envelope>,
    engine: std::sync::Weak<EngineInner>,
    sessions: Vec<Option<Sess>>,
    buf: Box<[u8; 2048]>,
    batch: Batch,
    /// The switch's own RTCP reports are built here.
    rtcp_out: Vec<u8>,
    pcm: Box<[i16; 1024]>,
    counters: Counters,
    digits: Vec<char>,
    /// The figures of the session published last (handed to a release that waits).
    last_stats: Option<[LegStats; 2]>,
    /// Sockets with packets still waiting after their budget (read first next round).
    pending: VecDeque<Token>,
    last_publish: Instant,
    last_reap: Instant,
}

impl RelayThread {
    fn new(
        index: usize,
        poll: Poll,
        rx: mpsc::Receiver<Envelope>,
        engine: std::sync::Weak<EngineInner>,
    ) -> RelayThread {
        RelayThread {
            index,
            poll,
            rx,
            engine,
            sessions: Vec::new(),
            buf: Box::new([0; 2048]),
            batch: Batch::new(),
            rtcp_out: Vec::with_capacity(128),
            pcm: Box::new([0; 1024]),
            counters: Counters::default(),
            digits: Vec::new(),
            last_stats: None,
            pending: VecDeque::new(),
            last_publish: Instant::now(),
            last_reap: Instant::now(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = if self.pending.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media relay poll failed");
                    std::thread::sleep(TICK);
                }
            }
            // Sockets with packets left from the last round first, then the new events;
            // each socket gives at most one batch a round, so one busy socket cannot hold
            // up the others or the 20 ms tick.
            for _ in 0..self.pending.len() {
                let token = self.pending.pop_front().expect("counted");
                self.read(token);
            }
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.read(ev.token());
                }
            }
            if !self.commands() {
                return;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick();
                next_tick += TICK;
                if next_tick < now {
                    // Fell behind (a stall): do not burst the missed ticks.
                    next_tick = now + TICK;
                }
            }
        }
    }

    /// Applies queued commands; false once the engine is gone.
    fn commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(env) => self.command(env),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return self.engine.strong_count() > 0,
            }
        }
    }

    fn command(&mut self, env: Envelope) {
        let slot = env.slot;
        if let Command::Add(sess) = env.cmd {
            self.add(slot, *sess);
            return;
        }
        match self.sessions.get(slot) {
            Some(Some(s)) if s.shared.serial == env.serial => {}
            // A command for a session that is gone (its slot may hold a new one now).
            _ => return,
        }
        match env.cmd {
            Command::Add(_) => {}
            Command::Remove(reply) => {
                self.remove(slot);
                if let Some(reply) = reply {
                    let stats = self.last_stats.take().unwrap_or_default();
                    let _ = reply.try_send(stats);
                }
            }
            Command::Record { id, tenant } => self.start_recording(slot, id, tenant),
            Command::StopRecording => self.stop_recording(slot),
            cmd => {
                let engine = self.engine.clone();
                apply(self.sess(slot), cmd, &engine);
            }
        }
    }

    fn sess(&mut self, slot: usize) -> &mut Sess {
        self.sessions[slot].as_mut().expect("live slot")
    }

    fn playbacks(&self, delta: i64) {
        playbacks(&self.engine, delta);
    }

    fn add(&mut self, slot: usize, mut sess: Sess) {
        if self.sessions.len() <= slot {
            self.sessions.resize_with(slot + 1, || None);
        }
        let registry = self.poll.registry();
        for (i, leg) in sess.legs.iter_mut().enumerate() {
            let base = (slot << 2) | (i << 1);
            let r1 = registry.register(&mut leg.rtp, Token(base), Interest::READABLE);
            let r2 = registry.register(&mut leg.rtcp, Token(base | 1), Interest::READABLE);
            if let Err(e) = r1.and(r2) {
                tracing::error!(error = %e, "media: cannot poll RTP socket");
            }
        }
        self.sessions[slot] = Some(sess);
    }

    fn remove(&mut self, slot: usize) {
        self.publish(slot);
        self.stop_recording(slot);
        let Some(mut s) = self.sessions[slot].take() else {
            return;
        };
        let registry = self.poll.registry();
        for leg in s.legs.iter_mut() {
            let _ = registry.deregister(&mut leg.rtp);
            let _ = registry.deregister(&mut leg.rtcp);
            if leg.play.is_some() {
                self.playbacks(-1);
            }
        }
        if let Some(engine) = self.engine.upgrade() {
            for leg in s.legs.iter_mut() {
                // The call is gone: its legs leave their mixes (the others go on).
                if let Some((mix, pid)) = leg.mix.take() {
                    take_mix_counters(&mix, &mut self.counters);
                    engine.mix_left(&mix, pid);
                }
            }
            for (i, m) in lock(&s.shared.mixes).iter_mut().enumerate() {
                if let Some(mix) = m.take() {
                    if let Some(pid) =
                        mix.pid(&s.shared.call, if i == 0 { Side::A } else { Side::B })
                    {
                        engine.mix_left(&mix, pid);
                    }
                }
            }
            for leg in &s.legs {
                engine.pool.give(leg.port);
            }
            lock(&engine.threads[self.index].next_slot).free.push(slot);
            metrics::gauge!(PORTS_IN_USE).set((engine.pool.in_use() * 2) as f64);
        }
        drop(s);
    }

    /// Reads a ready socket (one batch of up to [`BATCH`] packets); one with more waiting
    /// is kept for the next round (epoll is edge-triggered: it will not be reported again).
    fn read(&mut self, token: Token) {
        let (slot, side, rtcp) = (token.0 >> 2, (token.0 >> 1) & 1, token.0 & 1 == 1);
        let drained = if rtcp {
            self.read_rtcp(slot, side)
        } else {
            self.read_rtp(slot, side)
        };
        if !drained {
            self.pending.push_back(token);
        }
    }

    /// Receives what the socket holds (one batch): how many datagrams, and whether the
    /// socket is now empty. None: the session is gone.
    fn receive(&mut self, slot: usize, side: usize, rtcp: bool) -> Option<(usize, bool)> {
        let Some(Some(s)) = self.sessions.get(slot) else {
            return None;
        };
        let leg = &s.legs[side];
        let fd = if rtcp {
            leg.rtcp.as_raw_fd()
        } else {
            leg.rtp.as_raw_fd()
        };
        // An error (an ICMP port unreachable reported on the socket) consumes itself: the
        // socket is read again next round.
        Some(match self.batch.recv(fd) {
            Ok(n) => (n, n < BATCH),
            Err(_) => (0, false),
        })
    }

    /// True once the socket is empty (or gone).
    fn read_rtp(&mut self, slot: usize, side: usize) -> bool {
        let Some((n, drained)) = self.receive(slot, side, false) else {
            return true;
        };
        for i in 0..n {
            let (data, from) = self.batch.get(i);
            let (len, Some(from)) = (data.len(), from) else {
                continue;
            };
            self.buf[..len].copy_from_slice(data);
            self.counters.rtp_in += 1;
            self.counters.bytes_in += len as u64;
            self.on_rtp(slot, side, len, from);
        }
        drained
    }

    fn on_rtp(&mut self, slot: usize, side: usize, n: usize, from: SocketAddr) {
        let s = self.sessions[slot].as_mut().expect("live slot");
        let bridged = s.bridged;
        let recording = s.rec.as_ref().is_some_and(|r| !r.paused);
        let (this, other) = pair(&mut s.legs, side);
        match this.latch.on_rtp(from) {
            Verdict::Accepted => {}
            // Symmetric RTP: answer where the leg really sends from.
            Verdict::Latched => this.connected = this.rtp.connect(from).is_ok(),
            Verdict::Foreign => {
                self.counters.foreign += 1;
                return;
            }
        }
        this.packets_in += 1;
        this.bytes_in += n as u64;
        let Some(h) = rtp::parse_rtp(&self.buf[..n]) else {
            self.counters.malformed += 1;
            return;
        };
        if this.ssrc_in != Some(h.ssrc) {
            // A new source (e.g. the phone restarted its stream): new statistics.
            if this.ssrc_in.is_some() {
                self.counters.lost += this.stats.lost() - this.last_lost;
                self.counters.expected += this.stats.expected() - this.last_expected;
            }
            this.ssrc_in = Some(h.ssrc);
            this.stats = RecvStats::new();
            this.last_lost = 0;
            this.last_expected = 0;
            this.max_seq = None;
        }
        if let Some(max) = this.max_seq {
            if (h.seq.wrapping_sub(max) as i16) < 0 {
                self.counters.late += 1;
            } else {
                this.max_seq = Some(h.seq);
            }
        } else {
            this.max_seq = Some(h.seq);
        }
        let arrival_ms = s.created.elapsed().as_secs_f64() * 1000.0;
        this.stats.on_packet(h.seq, h.timestamp, arrival_ms, 8000);
        this.stats_started = true;
        let payload = h.payload_offset..h.payload_offset + h.payload_len;
        let call = &s.shared.call;
        // Taps: DTMF and recording.
        if Some(h.payload_type) == this.te_pt {
            if let Some(ev) = rtp::parse_telephone_event(&self.buf[payload.clone()]) {
                if let Some(digit) = this.events.on_event(h.timestamp, &ev) {
                    self.counters.dtmf_rfc4733 += 1;
                    emit_dtmf(&self.engine, call, side, digit, DtmfSource::Rfc4733);
                }
            }
        } else if let Some(codec) = this.codec.filter(|c| c.payload_type() == h.payload_type) {
            let len = h.payload_len.min(self.pcm.len());
            let need_pcm = this.inband.is_some() || recording;
            if need_pcm {
                codec.decode_into(
                    &self.buf[payload.start..payload.start + len],
                    &mut self.pcm[..len],
                );
            }
            if let Some(det) = &mut this.inband {
                self.digits.clear();
                det.push(&self.pcm[..len], &mut self.digits);
                for &digit in &self.digits {
                    self.counters.dtmf_inband += 1;
                    emit_dtmf(&self.engine, call, side, digit, DtmfSource::Inband);
                }
            }
            // With both legs in a mix the right track is what the caller hears (everyone
            // else in the mix, filled at the tick), not the B leg's own voice.
            let mixed_b = side == 1 && this.mix.is_some() && other.mix.is_some();
            if recording && !mixed_b {
                this.rec_buf.extend(self.pcm[..len].iter().copied());
                let over = this.rec_buf.len().saturating_sub(REC_BUFFER);
                this.rec_buf.drain(..over);
            }
        }
        if this.echo {
            // Back under the switch's own SSRC: a phone may drop packets bearing its own.
            let Some(dest) = this.latch.dest() else {
                self.counters.no_peer += 1;
                return;
            };
            self.buf[8..12].copy_from_slice(&this.out_ssrc.to_be_bytes());
            match this.send_rtp(&self.buf[..n], dest) {
                Ok(_) => {
                    this.packets_out += 1;
                    self.counters.rtp_out += 1;
                    self.counters.echoed += 1;
                    self.counters.bytes_out += n as u64;
                }
                Err(_) => self.counters.send_error += 1,
            }
            return;
        }
        if let Some((mix, pid)) = &this.mix {
            // In a mix: the audio goes there (telephone events and other payloads do not).
            if this.recv_ok {
                if let Some(codec) = Codec::from_payload_type(h.payload_type) {
                    mix.lock().mixer.push(
                        *pid,
                        h.ssrc,
                        h.timestamp,
                        codec,
                        &self.buf[payload.clone()],
                    );
                }
            }
            return;
        }
        if !bridged {
            return;
        }
        if other.mix.is_some() {
            self.counters.mixed += 1;
            return;
        }
        if !this.recv_ok || !other.send_ok {
            self.counters.direction += 1;
            return;
        }
        if other.play.is_some() {
            self.counters.playback += 1;
            return;
        }
        let Some(dest) = other.latch.dest() else {
            if other.latch.remote().is_some() {
                self.counters.not_latched += 1;
            } else {
                self.counters.no_peer += 1;
            }
            return;
        };
        // The other leg may use the other G.711 law or another telephone-event number.
        if let (Some(from_c), Some(to_c)) = (this.codec, other.codec) {
            if from_c != to_c && h.payload_type == from_c.payload_type() {
                super::g711::transcode_in_place(&mut self.buf[payload.clone()], from_c, to_c);
                self.buf[1] = (self.buf[1] & 0x80) | to_c.payload_type();
            }
        }
        if let (Some(a), Some(b)) = (this.te_pt, other.te_pt) {
            if a != b && h.payload_type == a {
                self.buf[1] = (self.buf[1] & 0x80) | b;
            }
        }
        match other.send_rtp(&self.buf[..n], dest) {
            Ok(_) => {
                other.packets_out += 1;
                self.counters.rtp_out += 1;
                self.counters.bytes_out += n as u64;
            }
            Err(_) => self.counters.send_error += 1,
        }
    }

    fn read_rtcp(&mut self, slot: usize, side: usize) -> bool {
        let Some((count, drained)) = self.receive(slot, side, true) else {
            return true;
        };
        for i in 0..count {
            let (data, from) = self.batch.get(i);
            let (n, Some(from)) = (data.len(), from) else {
                continue;
            };
            self.buf[..n].copy_from_slice(data);
            let Some(Some(s)) = self.sessions.get_mut(slot) else {
                return true;
            };
            self.counters.rtcp_in += 1;
            self.counters.bytes_in += n as u64;
            let bridged = s.bridged;
            let (this, other) = pair(&mut s.legs, side);
            if !this.latch.on_rtcp(from) {
                self.counters.foreign += 1;
                continue;
            }
            this.rtcp_in += 1;
            let (ntp_sec, ntp_frac) = rtp::ntp_now();
            let now_mid = rtp::ntp_middle(ntp_sec, ntp_frac);
            for p in rtp::parse_rtcp(&self.buf[..n]) {
                let blocks = match &p {
                    rtp::RtcpPacket::SenderReport { blocks, info, .. } => {
                        this.last_sr =
                            Some((rtp::ntp_middle(info.ntp_sec, info.ntp_frac), Instant::now()));
                        blocks
                    }
                    rtp::RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                    rtp::RtcpPacket::Other { .. } => continue,
                };
                if let Some(b) = blocks.first() {
                    this.remote_loss = b.fraction_lost as f64 / 256.0;
                    this.remote_jitter_ms = b.jitter as f64 / 8.0;
                    if let Some(rtt) = quality::rtt_ms(now_mid, b.lsr, b.dlsr) {
                        this.rtt_ms = Some(rtt);
                    }
                }
            }
            if bridged && other.play.is_none() && this.mix.is_none() && other.mix.is_none() {
                if let Some(dest) = other.latch.rtcp_dest() {
                    if other.rtcp.send_to(&self.buf[..n], dest).is_ok() {
                        self.counters.rtcp_out += 1;
                        self.counters.bytes_out += n as u64;
                    }
                }
            }
        }
        drained
    }

    fn tick(&mut self) {
        let mut frame = [0i16; FRAME];
        let mut out = [0u8; 12 + FRAME];
        let mut mixed = [(Codec::Pcmu, [0u8; FRAME]); 4];
        let mut heard = [[0i16; FRAME]; 4];
        let mut ended = 0i64;
        for slot in 0..self.sessions.len() {
            let Some(s) = self.sessions[slot].as_mut() else {
                continue;
            };
            // A recorded call whose legs are in a mix: left the caller, right what the
            // caller hears (the mix of everyone else: agent, third party, supervisor).
            let record_mix =
                s.rec.as_ref().is_some_and(|r| !r.paused) && s.legs.iter().all(|l| l.mix.is_some());
            let mut heard_by_a = 0;
            for (i, leg) in s.legs.iter_mut().enumerate() {
                // Outgoing RFC 4733 digits first, then playback.
                // Only to where the leg sent from, or its signalling host (no reflection).
                if let (Some(pt), Some(dest), false) =
                    (leg.te_pt, leg.latch.dest(), leg.dtmf_out.is_empty())
                {
                    let ev = leg.dtmf_out.pop_front().expect("not empty");
                    let h = rtp::write_rtp_header(
                        &mut out,
                        false,
                        pt,
                        leg.out_seq,
                        leg.dtmf_ts,
                        leg.out_ssrc,
                    );
                    let len = h + rtp::write_telephone_event(&mut out[h..], &ev);
                    leg.out_seq = leg.out_seq.wrapping_add(1);
                    let _ = leg.send_rtp(&out[..len], dest);
                    self.counters.rtp_out += 1;
                    if leg.dtmf_out.is_empty() {
                        leg.out_ts = leg.out_ts.wrapping_add(800);
                    }
                    continue;
                }
                // The leg's frames from its mix (taken even while it is played to, so the
                // mix does not count them as overrun).
                let mut n_mixed = 0;
                if let Some((mix, pid)) = &leg.mix {
                    let mut st = mix.lock();
                    Mix::advance(&mut st, mix.epoch());
                    while n_mixed < mixed.len() {
                        match st.mixer.pop(*pid, &mut mixed[n_mixed].1) {
                            Some(codec) => {
                                mixed[n_mixed].0 = codec;
                                n_mixed += 1;
                            }
                            None => break,
                        }
                    }
                }
                if record_mix && i == 0 {
                    for (k, (codec, enc)) in mixed[..n_mixed].iter().enumerate() {
                        codec.decode_into(enc, &mut heard[k]);
                    }
                    heard_by_a = n_mixed;
                }
                if let Some(player) = &mut leg.play {
                    let more = player.next_frame(&mut frame);
                    if !more {
                        leg.play = None;
                        ended += 1;
                        continue;
                    }
                    let codec = leg.codec.unwrap_or(Codec::Pcmu);
                    let mut enc = [0u8; FRAME];
                    codec.encode_into(&frame, &mut enc);
                    send_own_frame(
                        leg,
                        codec,
                        &enc,
                        &mut out,
                        &mut self.rtcp_out,
                        &mut self.counters,
                    );
                    continue;
                }
                for (codec, enc) in &mixed[..n_mixed] {
                    send_own_frame(
                        leg,
                        *codec,
                        enc,
                        &mut out,
                        &mut self.rtcp_out,
                        &mut self.counters,
                    );
                }
            }
            if record_mix {
                let b = &mut s.legs[1];
                for frame in &heard[..heard_by_a] {
                    b.rec_buf.extend(frame.iter().copied());
                }
                let over = b.rec_buf.len().saturating_sub(REC_BUFFER);
                b.rec_buf.drain(..over);
            }
            if let Some(rec) = s.rec.as_mut().filter(|r| !r.paused) {
                let mut l = [0i16; FRAME];
                let mut r = [0i16; FRAME];
                let [la, lb] = &mut s.legs;
                for (dst, leg) in [(&mut l, la), (&mut r, lb)] {
                    let n = leg.rec_buf.len().min(FRAME);
                    for (d, v) in dst.iter_mut().zip(leg.rec_buf.drain(..n)) {
                        *d = v;
                    }
                }
                if let Err(e) = rec.recorder.write_stereo(&l, &r) {
                    tracing::error!(recording = %rec.id, error = %e, "recording write failed");
                    let id = rec.id.clone();
                    self.fail_recording(slot, id, e.to_string());
                }
            }
        }
        for _ in 0..ended {
            self.playbacks(-1);
        }
        // By the clock, not by tick count: an overloaded thread that falls behind its ticks
        // still reports.
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.last_publish = Instant::now();
            for slot in 0..self.sessions.len() {
                if self.sessions[slot].is_some() {
                    self.publish(slot);
                }
            }
            self.flush_metrics();
            self.check_timeouts();
        }
        if self.last_reap.elapsed() >= REAP_EVERY {
            self.last_reap = Instant::now();
            self.reap();
        }
    }

    /// Copies a session's figures to its shared view and counts its new losses.
    fn publish(&mut self, slot: usize) {
        let Some(Some(s)) = self.sessions.get_mut(slot) else {
            return;
        };
        let mut out = [LegStats::default(); 2];
        for (i, leg) in s.legs.iter_mut().enumerate() {
            if let Some((mix, _)) = &leg.mix {
                take_mix_counters(mix, &mut self.counters);
            }
            if leg.stats_started {
                let lost = leg.stats.lost();
                let expected = leg.stats.expected();
                self.counters.lost += lost - leg.last_lost;
                self.counters.expected += expected.saturating_sub(leg.last_expected);
                leg.last_lost = lost;
                leg.last_expected = expected;
            }
            out[i] = LegStats {
                packets_in: leg.packets_in,
                bytes_in: leg.bytes_in,
                packets_out: leg.packets_out,
                quality: leg.quality(),
                remote: leg.latch.remote(),
            };
        }
        *lock(&s.shared.stats) = out;
        self.last_stats = Some(out);
    }

    fn flush_metrics(&mut self) {
        let c = std::mem::take(&mut self.counters);
        let add = |name: &'static str, labels: &[(&'static str, &'static str)], v: u64| {
            if v > 0 {
                let labels: Vec<metrics::Label> = labels
                    .iter()
                    .map(|(k, v)| metrics::Label::new(*k, *v))
                    .collect();
                metrics::counter!(name, labels).increment(v);
            }
        };
        add(PACKETS, &[("dir", "in"), ("kind", "rtp")], c.rtp_in);
        add(PACKETS, &[("dir", "in"), ("kind", "rtcp")], c.rtcp_in);
        add(PACKETS, &[("dir", "out"), ("kind", "rtp")], c.rtp_out);
        add(PACKETS, &[("dir", "out"), ("kind", "rtcp")], c.rtcp_out);
        add(BYTES, &[("dir", "in")], c.bytes_in);
        add(BYTES, &[("dir", "out")], c.bytes_out);
        add(DROPPED, &[("reason", "malformed")], c.malformed);
        add(DROPPED, &[("reason", "no_peer")], c.no_peer);
        add(DROPPED, &[("reason", "direction")], c.direction);
        add(DROPPED, &[("reason", "send_error")], c.send_error);
        add(DROPPED, &[("reason", "playback")], c.playback);
        add(DROPPED, &[("reason", "foreign_source")], c.foreign);
        add(DROPPED, &[("reason", "not_latched")], c.not_latched);
        add(LOST, &[], c.lost.max(0) as u64);
        add(EXPECTED, &[], c.expected);
        add(LATE, &[], c.late);
        add(DROPPED, &[("reason", "mixed")], c.mixed);
        add(mix::FRAMES, &[("kind", "mixed")], c.mix.frames);
        add(mix::FRAMES, &[("kind", "lost")], c.mix.lost);
        add(mix::FRAMES, &[("kind", "late")], c.mix.late);
        add(mix::FRAMES, &[("kind", "overrun")], c.mix.overrun);
        add(mix::CPU, &[], c.mix_cpu.as_micros() as u64);
        add(DTMF, &[("source", "rfc4733")], c.dtmf_rfc4733);
        add(DTMF, &[("source", "inband")], c.dtmf_inband);
        add(ECHOED, &[], c.echoed);
    }

    /// Reports calls whose media stopped: no RTP or RTCP from either leg for
    /// `rtp_timeout`, and neither leg held (an SDP direction other than sendrecv, or the
    /// `c=0.0.0.0` hold address), played to, or kept apart from the other (a caller
    /// waiting in a queue): a held party may send nothing. Reported again every timeout
    /// while it lasts (a call still ringing ignores it).
    fn check_timeouts(&mut self) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let Some(timeout) = engine.cfg.rtp_timeout else {
            return;
        };
        let now = Instant::now();
        for s in self.sessions.iter_mut().flatten() {
            let packets: u64 = s.legs.iter().map(|l| l.packets_in + l.rtcp_in).sum();
            let held = (!s.bridged && !s.legs.iter().any(|l| l.echo))
                || s.legs.iter().any(|l| {
                    !l.send_ok || !l.recv_ok || l.play.is_some() || l.latch.on_hold_address()
                });
            if packets != s.alive_packets || held {
                s.alive_packets = packets;
                s.alive_at = now;
                continue;
            }
            if now.duration_since(s.alive_at) >= timeout {
                s.alive_at = now;
                emit(
                    &engine,
                    MediaEvent::MediaTimeout {
                        call: s.shared.call.clone(),
                    },
                );
            }
        }
    }

    /// Removes sessions whose call has had no actor for two checks in a row (a call actor
    /// that died for good without releasing its ports).
    fn reap(&mut self) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let Some(alive) = engine.alive.get().cloned() else {
            return;
        };
        for slot in 0..self.sessions.len() {
            let Some(s) = self.sessions[slot].as_mut() else {
                continue;
            };
            if s.created.elapsed() < Duration::from_secs(10) {
                continue;
            }
            if alive(&s.shared.call) {
                s.orphan_checks = 0;
                continue;
            }
            s.orphan_checks += 1;
            if s.orphan_checks >= 2 {
                let call = s.shared.call.clone();
                tracing::warn!(call_id = %String::from_utf8_lossy(&call), "media session without a call: reaped");
                metrics::counter!(REAPED).increment(1);
                engine
                    .sessions
                    .remove_if(&call, |_, v| Arc::ptr_eq(v, &s.shared));
                s.shared.released.store(true, Ordering::Release);
                self.remove(slot);
                self.last_stats = None;
            }
        }
        metrics::gauge!(SESSIONS_ACTIVE).set(engine.sessions.len() as f64);
    }

    fn start_recording(&mut self, slot: usize, id: String, tenant: String) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let s = self.sess(slot);
        if s.rec.is_some() {
            return;
        }
        let call = s.shared.call.clone();
        let Some(keys) = engine.cfg.keys.clone() else {
            emit(
                &engine,
                MediaEvent::RecordingFailed {
                    id,
                    call,
                    reason: "no recording key".into(),
                },
            );
            return;
        };
        match Recorder::create(&engine.cfg.recordings_dir, &id, &keys) {
            Ok(recorder) => {
                engine.recordings_active(1);
                let path = super::recording::final_path(&engine.cfg.recordings_dir, &id);
                emit(
                    &engine,
                    MediaEvent::RecordingStarted {
                        id: id.clone(),
                        call,
                        tenant,
                        key_id: keys.current_id().to_string(),
                        path,
                        started_ms: crate::store::now_unix_ms(),
                    },
                );
                let s = self.sess(slot);
                for leg in s.legs.iter_mut() {
                    leg.rec_buf.clear();
                }
                s.rec = Some(Rec {
                    id,
                    recorder,
                    paused: false,
                });
            }
            Err(e) => {
                tracing::error!(recording = %id, error = %e, "cannot start recording");
                emit(
                    &engine,
                    MediaEvent::RecordingFailed {
                        id,
                        call,
                        reason: e.to_string(),
                    },
                );
            }
        }
    }

    /// Finishes the recording off the relay thread (fsync and rename take milliseconds).
    fn stop_recording(&mut self, slot: usize) {
        let Some(Some(s)) = self.sessions.get_mut(slot) else {
            return;
        };
        let Some(rec) = s.rec.take() else {
            return;
        };
        let call = s.shared.call.clone();
        let engine = self.engine.clone();
        let finish = move || {
            let result = rec.recorder.finish();
            let Some(engine) = engine.upgrade() else {
                return;
            };
            engine.recordings_active(-1);
            match result {
                Ok(finished) => emit(
                    &engine,
                    MediaEvent::RecordingFinished {
                        id: rec.id,
                        call,
                        finished,
                    },
                ),
                Err(e) => emit(
                    &engine,
                    MediaEvent::RecordingFailed {
                        id: rec.id,
                        call,
                        reason: e.to_string(),
                    },
                ),
            }
        };
        if std::thread::Builder::new()
            .name("recording-finish".into())
            .spawn(finish)
            .is_err()
        {
            tracing::error!("cannot start a thread to finish a recording");
        }
    }

    fn fail_recording(&mut self, slot: usize, id: String, reason: String) {
        let s = self.sess(slot);
        let call = s.shared.call.clone();
        if let Some(rec) = s.rec.take() {
            rec.recorder.abort();
        }
        *lock(&s.shared.recording) = None;
        if let Some(engine) = self.engine.upgrade() {
            engine.recordings_active(-1);
            emit(&engine, MediaEvent::RecordingFailed { id, call, reason });
        }
    }
}

/// Applies a command that only touches the session itself.
fn apply(s: &mut Sess, cmd: Command, engine: &std::sync::Weak<EngineInner>) {
    match cmd {
        Command::Remote {
            side,
            addr,
            codec,
            te_pt,
        } => {
            let leg = &mut s.legs[side.idx()];
            // An offer/answer: the latch window opens. The leg (or a NAT in front of it)
            // may now send from another port or its new address: hear the allowed sources
            // until the next packet latches again.
            leg.latch.offer(addr);
            if leg.connected {
                leg.connected = super::batch::disconnect(leg.rtp.as_raw_fd()).is_err();
            }
            s.alive_at = Instant::now();
            if let Some(c) = codec {
                leg.codec = codec;
                if let Some((mix, pid)) = &leg.mix {
                    mix.lock().set_codec(*pid, c);
                }
            }
            leg.te_pt = te_pt.or(leg.te_pt);
        }
        Command::Signalling { side, ip } => s.legs[side.idx()].latch.set_signalling(ip),
        Command::Direction { side, direction } => {
            s.alive_at = Instant::now();
            let leg = &mut s.legs[side.idx()];
            let (sends, receives) = match direction {
                Direction::SendRecv => (true, true),
                Direction::SendOnly => (true, false),
                Direction::RecvOnly => (false, true),
                Direction::Inactive => (false, false),
            };
            leg.recv_ok = sends;
            leg.send_ok = receives;
        }
        Command::Codec { side, codec } => {
            let leg = &mut s.legs[side.idx()];
            leg.codec = Some(codec);
            if let Some((mix, pid)) = &leg.mix {
                mix.lock().set_codec(*pid, codec);
            }
        }
        Command::JoinMix { side, mix, pid } => {
            let leg = &mut s.legs[side.idx()];
            if let Some(codec) = leg.codec {
                mix.lock().set_codec(pid, codec);
            }
            s.alive_at = Instant::now();
            leg.mix = Some((mix, pid));
        }
        Command::LeaveMix { side, mix } => {
            let leg = &mut s.legs[side.idx()];
            if leg.mix.as_ref().is_some_and(|(m, _)| Arc::ptr_eq(m, &mix)) {
                leg.mix = None;
            }
        }
        Command::Bridge(on) => s.bridged = on,
        Command::Play { side, playlist } => {
            let leg = &mut s.legs[side.idx()];
            if leg.play.is_none() {
                playbacks(engine, 1);
            }
            leg.play = Some(Player::new(playlist));
        }
        Command::StopPlay(side) => {
            if s.legs[side.idx()].play.take().is_some() {
                playbacks(engine, -1);
            }
        }
        Command::Echo(side) => s.legs[side.idx()].echo = true,
        Command::PauseRecording(p) => {
            if let Some(rec) = &mut s.rec {
                rec.paused = p;
            }
        }
        Command::SendDtmf { side, digit } => {
            let leg = &mut s.legs[side.idx()];
            if leg.te_pt.is_some() {
                leg.dtmf_out.extend(super::dtmf::event_packets(digit, 100));
                leg.dtmf_ts = leg.out_ts;
                return;
            }
            // No telephone-event on this leg: the digit is played as a tone.
            let mut tone = Vec::with_capacity(1600);
            if !super::dtmf::dtmf_tone(digit, 100, &mut tone) {
                return;
            }
            tone.extend(std::iter::repeat_n(0, 400));
            let mut playlist = Playlist {
                items: vec![Arc::<[i16]>::from(tone)],
                then_loop: None,
            };
            match leg.play.take() {
                Some(p) => {
                    playlist.items.extend(p.items);
                    playlist.then_loop = p.then_loop;
                }
                None => playbacks(engine, 1),
            }
            leg.play = Some(Player::new(playlist));
        }
        Command::Add(_) | Command::Remove(_) | Command::Record { .. } | Command::StopRecording => {}
    }
}

impl EngineInner {
    fn mix_joined(&self) {
        let n = self.mix_participants.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(mix::PARTICIPANTS_ACTIVE).set(n as f64);
    }

    /// A participant left `mix` (by command or with its session); the mix goes with its
    /// last participant. Idempotent.
    fn mix_left(&self, mix: &Arc<Mix>, pid: super::mixer::Pid) {
        if !mix.remove(pid) {
            return;
        }
        let n = self
            .mix_participants
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(mix::PARTICIPANTS_ACTIVE).set(n as f64);
        if mix.is_empty() {
            mix.closed.store(true, Ordering::Release);
            self.mixes.remove_if(mix.id(), |_, m| Arc::ptr_eq(m, mix));
            metrics::gauge!(mix::MIXES_ACTIVE).set(self.mixes.len() as f64);
        }
    }

    /// Counts a recording starting (+1) or ending (-1) and sets the gauge.
    fn recordings_active(&self, delta: i64) {
        let n = if delta > 0 {
            self.recordings_active.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.recordings_active
                .fetch_sub(1, Ordering::Relaxed)
                .saturating_sub(1)
        };
        metrics::gauge!(RECORDINGS_ACTIVE).set(n as f64);
    }
}

fn playbacks(engine: &std::sync::Weak<EngineInner>, delta: i64) {
    if let Some(e) = engine.upgrade() {
        let n = if delta > 0 {
            e.playbacks.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            e.playbacks
                .fetch_sub(1, Ordering::Relaxed)
                .saturating_sub(1)
        };
        metrics::gauge!(PLAYBACKS).set(n as f64);
    }
}

/// The leg at `side` and the other one, both mutable.
/// Sends a frame of the switch's own stream to the leg (playback or its mix): the leg's
/// SSRC, sequence and timestamp go on across items; an RTCP SR every few seconds.
fn send_own_frame(
    leg: &mut LegIo,
    codec: Codec,
    payload: &[u8; FRAME],
    out: &mut [u8; 12 + FRAME],
    rtcp_out: &mut Vec<u8>,
    c: &mut Counters,
) {
    if !leg.send_ok {
        return;
    }
    let Some(dest) = leg.latch.dest() else {
        // Not before the leg's first packet, unless its SDP address is its
        // signalling host's: never audio at a third address named in SDP.
        c.not_latched += 1;
        return;
    };
    let h = rtp::write_rtp_header(
        out,
        false,
        codec.payload_type(),
        leg.out_seq,
        leg.out_ts,
        leg.out_ssrc,
    );
    out[h..h + FRAME].copy_from_slice(payload);
    leg.out_seq = leg.out_seq.wrapping_add(1);
    leg.out_ts = leg.out_ts.wrapping_add(FRAME as u32);
    match leg.send_rtp(&out[..h + FRAME], dest) {
        Ok(_) => {
            leg.packets_out += 1;
            leg.own_packets = leg.own_packets.wrapping_add(1);
            leg.own_octets = leg.own_octets.wrapping_add(FRAME as u32);
            c.rtp_out += 1;
            c.bytes_out += (h + FRAME) as u64;
        }
        Err(_) => c.send_error += 1,
    }
    // The leg hears the switch, not the other phone: the switch reports as its
    // sender (RTCP SR with a block on what the leg sends).
    if leg
        .last_own_rtcp
        .is_none_or(|t| t.elapsed() >= OWN_RTCP_EVERY)
    {
        leg.last_own_rtcp = Some(Instant::now());
        if leg.send_own_rtcp(rtcp_out) {
            c.rtcp_out += 1;
        }
    }
}

/// Moves a mix's counters and mixing time to the thread's.
fn take_mix_counters(mix: &Mix, c: &mut Counters) {
    let (m, cpu) = mix.lock().take();
    c.mix.frames += m.frames;
    c.mix.lost += m.lost;
    c.mix.late += m.late;
    c.mix.overrun += m.overrun;
    c.mix_cpu += cpu;
}

fn pair(legs: &mut [LegIo; 2], side: usize) -> (&mut LegIo, &mut LegIo) {
    let [a, b] = legs;
    if side == 0 {
        (a, b)
    } else {
        (b, a)
    }
}

fn emit(engine: &EngineInner, event: MediaEvent) {
    if let Some(sink) = engine.sink.get() {
        sink(event);
    }
}

fn emit_dtmf(
    engine: &std::sync::Weak<EngineInner>,
    call: &Bytes,
    side: usize,
    digit: char,
    source: DtmfSource,
) {
    if let Some(engine) = engine.upgrade() {
        emit(
            &engine,
            MediaEvent::Dtmf {
                call: call.clone(),
                side: if side == 0 { Side::A } else { Side::B },
                digit,
                source,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    //! The relay's latching with real sockets on loopback: phones, a sprayer and a victim on
    //! their own 127.0.0.x addresses. Each test has its own engine and port range.
    use super::*;
    use std::net::UdpSocket as Std;

    fn engine(ports: (u16, u16), rtp_timeout: Option<Duration>) -> MediaEngine {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        MediaEngine::start(EngineConfig {
            bind: ip,
            advertise: ip,
            ports,
            threads: 1,
            recordings_dir: std::env::temp_dir(),
            keys: None,
            inband_dtmf: false,
            rtp_timeout,
        })
        .unwrap()
    }

    fn sock(ip: &str) -> Std {
        let s = Std::bind((ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s
    }

    fn ip(s: &Std) -> IpAddr {
        s.local_addr().unwrap().ip()
    }

    /// A PCMU packet whose payload is all `mark` (who sent it).
    fn packet(mark: u8, seq: u16) -> [u8; 12 + FRAME] {
        let mut p = [mark; 12 + FRAME];
        rtp::write_rtp_header(
            &mut p,
            false,
            0,
            seq,
            seq as u32 * 160,
            0x1000 + mark as u32,
        );
        p
    }

    /// The marks of the packets `s` receives within `wait`.
    fn heard(s: &Std, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        let mut marks = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if n > 12 {
                    marks.push(buf[12]);
                }
            }
        }
        marks
    }

    /// `from` sends packets marked `mark` to `to` every 20 ms until `listener` hears one
    /// (bounded: 2 s). The marks heard meanwhile.
    fn send_until_heard(from: &Std, mark: u8, to: SocketAddr, listener: &Std) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let mut marks = Vec::new();
        for seq in 0..100u16 {
            from.send_to(&packet(mark, seq), to).unwrap();
            if let Ok((n, _)) = listener.recv_from(&mut buf) {
                if n > 12 {
                    marks.push(buf[12]);
                    if buf[12] == mark {
                        return marks;
                    }
                }
            }
        }
        panic!("packets marked {mark} never relayed; heard {marks:?}");
    }

    fn to(session: &Session, side: Side) -> SocketAddr {
        SocketAddr::new(session.address(), session.port(side))
    }

    #[test]
    fn a_sprayer_is_dropped_while_the_phones_latch_on_their_sdp_addresses() {
        let e = engine((47100, 47119), None);
        let (alice, bob, sprayer) = (sock("127.0.0.11"), sock("127.0.0.12"), sock("127.0.0.66"));
        let s = e.allocate(&Bytes::from_static(b"latch-1")).unwrap();
        // Alice signals from elsewhere: only her SDP address may latch her leg.
        s.set_signalling(Side::A, "127.0.0.21".parse().unwrap());
        s.set_remote(
            Side::A,
            alice.local_addr().unwrap(),
            Some(Codec::Pcmu),
            None,
        );
        s.set_signalling(Side::B, ip(&bob));
        s.set_remote(Side::B, bob.local_addr().unwrap(), Some(Codec::Pcmu), None);
        // The sprayer is first on both ports: neither leg latches onto it.
        for seq in 0..20 {
            sprayer.send_to(&packet(66, seq), to(&s, Side::A)).unwrap();
            sprayer.send_to(&packet(66, seq), to(&s, Side::B)).unwrap();
        }
        let marks = send_until_heard(&alice, 11, to(&s, Side::A), &bob);
        assert!(!marks.contains(&66), "bob heard the sprayer: {marks:?}");
        let marks = send_until_heard(&bob, 12, to(&s, Side::B), &alice);
        assert!(!marks.contains(&66), "alice heard the sprayer: {marks:?}");
        // Latched: the sprayer still gets nothing in and hears nothing.
        for seq in 20..40 {
            sprayer.send_to(&packet(66, seq), to(&s, Side::A)).unwrap();
        }
        alice.send_to(&packet(11, 200), to(&s, Side::A)).unwrap();
        let marks = heard(&bob, Duration::from_millis(300));
        assert_eq!(marks, vec![11], "bob hears alice only");
        assert!(heard(&sprayer, Duration::from_millis(100)).is_empty());
    }

    #[test]
    fn the_signalling_address_latches_a_phone_whose_sdp_names_a_private_address() {
        let e = engine((47120, 47139), None);
        let (alice, bob) = (sock("127.0.0.11"), sock("127.0.0.12"));
        let s = e.allocate(&Bytes::from_static(b"latch-2")).unwrap();
        s.set_signalling(Side::A, ip(&alice));
        s.set_remote(Side::A, "10.9.8.7:4000".parse().unwrap(), None, None);
        s.set_signalling(Side::B, ip(&bob));
        s.set_remote(Side::B, bob.local_addr().unwrap(), None, None);
        send_until_heard(&alice, 11, to(&s, Side::A), &bob);
        // Bob's audio goes where alice really sends from, not to the private address.
        send_until_heard(&bob, 12, to(&s, Side::B), &alice);
    }

    #[test]
    fn a_re_offer_re_opens_the_window_for_the_moved_phone() {
        let e = engine((47140, 47159), None);
        let (alice, bob, moved) = (sock("127.0.0.11"), sock("127.0.0.12"), sock("127.0.0.13"));
        let s = e.allocate(&Bytes::from_static(b"latch-3")).unwrap();
        s.set_signalling(Side::A, ip(&alice));
        s.set_remote(Side::A, alice.local_addr().unwrap(), None, None);
        s.set_signalling(Side::B, ip(&bob));
        s.set_remote(Side::B, bob.local_addr().unwrap(), None, None);
        send_until_heard(&alice, 11, to(&s, Side::A), &bob);
        // Before the move, the new address is foreign.
        moved.send_to(&packet(13, 1), to(&s, Side::A)).unwrap();
        alice.send_to(&packet(11, 2), to(&s, Side::A)).unwrap();
        assert_eq!(heard(&bob, Duration::from_millis(300)), vec![11]);
        // A re-INVITE moves alice's media: the new address latches, the old one is out.
        s.set_remote(Side::A, moved.local_addr().unwrap(), None, None);
        send_until_heard(&moved, 13, to(&s, Side::A), &bob);
        alice.send_to(&packet(11, 3), to(&s, Side::A)).unwrap();
        moved.send_to(&packet(13, 4), to(&s, Side::A)).unwrap();
        assert_eq!(heard(&bob, Duration::from_millis(300)), vec![13]);
    }

    #[test]
    fn a_new_party_on_a_leg_is_heard_though_the_old_one_on_its_host_still_sends() {
        // A blind transfer between two phones on one host (or behind one office NAT): the
        // transferor latched leg B; the target answers on the same leg while the
        // transferor's last packets are still on their way.
        let e = engine((47220, 47239), None);
        let (alice, transferor, target) =
            (sock("127.0.0.11"), sock("127.0.0.12"), sock("127.0.0.12"));
        let s = e.allocate(&Bytes::from_static(b"latch-6")).unwrap();
        s.set_signalling(Side::A, ip(&alice));
        s.set_remote(Side::A, alice.local_addr().unwrap(), None, None);
        s.set_signalling(Side::B, ip(&transferor));
        s.set_remote(Side::B, transferor.local_addr().unwrap(), None, None);
        send_until_heard(&transferor, 12, to(&s, Side::B), &alice);
        send_until_heard(&alice, 11, to(&s, Side::A), &transferor);
        // The target's answer: once alice's audio reaches the target, the relay has it.
        s.set_remote(Side::B, target.local_addr().unwrap(), None, None);
        send_until_heard(&alice, 11, to(&s, Side::A), &target);
        for seq in 100..105 {
            transferor
                .send_to(&packet(12, seq), to(&s, Side::B))
                .unwrap();
        }
        let marks = send_until_heard(&target, 13, to(&s, Side::B), &alice);
        assert!(
            !marks.contains(&12),
            "alice heard the transferor: {marks:?}"
        );
        transferor
            .send_to(&packet(12, 200), to(&s, Side::B))
            .unwrap();
        target.send_to(&packet(13, 201), to(&s, Side::B)).unwrap();
        assert_eq!(heard(&alice, Duration::from_millis(300)), vec![13]);
    }

    #[test]
    fn media_to_an_sdp_address_that_is_not_the_signalling_host_waits_for_its_first_packet() {
        // A carrier whose media address is not its signalling address: the caller's audio
        // goes there once the carrier's media has been heard from it.
        let e = engine((47200, 47219), None);
        let (alice, carrier) = (sock("127.0.0.11"), sock("127.0.0.32"));
        let s = e.allocate(&Bytes::from_static(b"latch-5")).unwrap();
        s.set_signalling(Side::A, ip(&alice));
        s.set_remote(Side::A, alice.local_addr().unwrap(), None, None);
        s.set_signalling(Side::B, "127.0.0.31".parse().unwrap());
        s.set_remote(Side::B, carrier.local_addr().unwrap(), None, None);
        for seq in 0..10 {
            alice.send_to(&packet(11, seq), to(&s, Side::A)).unwrap();
            assert!(
                heard(&carrier, Duration::from_millis(20)).is_empty(),
                "nothing to an address named only in SDP"
            );
        }
        send_until_heard(&carrier, 32, to(&s, Side::B), &alice);
        send_until_heard(&alice, 11, to(&s, Side::A), &carrier);
    }

    #[test]
    fn playback_waits_for_the_latch_when_sdp_names_a_third_address() {
        let e = engine((47160, 47179), None);
        let (caller, victim) = (sock("127.0.0.66"), sock("127.0.0.99"));
        let s = e.allocate(&Bytes::from_static(b"latch-4")).unwrap();
        // The caller signals from .66 and its SDP names the victim.
        s.set_signalling(Side::A, ip(&caller));
        s.set_remote(
            Side::A,
            victim.local_addr().unwrap(),
            Some(Codec::Pcmu),
            None,
        );
        s.play(
            Side::A,
            Playlist {
                items: Vec::new(),
                then_loop: Some(Arc::from(vec![1000i16; FRAME])),
            },
        );
        s.send_dtmf(Side::A, '5');
        assert!(
            heard(&victim, Duration::from_millis(400)).is_empty(),
            "no music, DTMF or RTCP at an address named only in SDP"
        );
        // Once the caller sends (from its signalling address), the music goes to it.
        let mut buf = [0u8; 2048];
        let mut got = false;
        for seq in 0..100 {
            caller.send_to(&packet(1, seq), to(&s, Side::A)).unwrap();
            if caller.recv_from(&mut buf).is_ok() {
                got = true;
                break;
            }
        }
        assert!(got, "music after the latch");
        assert!(heard(&victim, Duration::from_millis(100)).is_empty());
    }

    #[test]
    fn silent_media_is_reported_unless_a_leg_is_held() {
        let e = engine((47180, 47199), Some(Duration::from_secs(1)));
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        e.set_sink(Arc::new(move |ev| {
            if let MediaEvent::MediaTimeout { call } = ev {
                let _ = lock(&tx).send(call);
            }
        }));
        let (alice, bob) = (sock("127.0.0.11"), sock("127.0.0.12"));
        let held = e.allocate(&Bytes::from_static(b"held")).unwrap();
        held.set_remote(Side::A, alice.local_addr().unwrap(), None, None);
        held.set_direction(Side::A, Direction::SendOnly);
        held.set_remote(Side::B, bob.local_addr().unwrap(), None, None);
        held.set_direction(Side::B, Direction::RecvOnly);
        let silent = e.allocate(&Bytes::from_static(b"silent")).unwrap();
        silent.set_remote(Side::A, alice.local_addr().unwrap(), None, None);
        silent.set_remote(Side::B, bob.local_addr().unwrap(), None, None);
        let call = rx.recv_timeout(Duration::from_secs(5)).expect("a timeout");
        assert_eq!(&call[..], b"silent");
        // Reported again a timeout later while it lasts; the held call never.
        let mut calls = vec![call];
        while let Ok(c) = rx.recv_timeout(Duration::from_millis(2500)) {
            calls.push(c);
            if calls.len() == 3 {
                break;
            }
        }
        assert!(calls.len() >= 2, "{calls:?}");
        assert!(calls.iter().all(|c| &c[..] == b"silent"), "{calls:?}");
    }
}
