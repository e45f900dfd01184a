//! The audio mixer: N participants, each hearing a mix of the participants it is allowed
//! to hear. Pure (no sockets, no clock): the relay feeds it RTP payloads
//! ([`Mixer::push`]) and drives it one 20 ms frame at a time ([`Mixer::tick`]), then takes
//! each participant's encoded frame ([`Mixer::pop`]).
//!
//! Who hears whom is one relation, `hears(listener, speaker)`, plus two per-participant
//! switches applied on top of it: mute (nobody hears it) and deaf (it hears nobody). A
//! conference is the full relation; supervisor listen, whisper and barge are the relation
//! with some pairs removed (see the call core), so no mode lives in the media engine.
//!
//! Per input a small jitter buffer places packets by RTP timestamp (any packet length)
//! and plays them out one 20 ms frame per tick after a short prefill; a frame missing at its turn is silence
//! (counted lost once the stream shows it was a gap, not a pause), a packet arriving after
//! its turn is dropped (counted late). G.711 μ-law or A-law in, decoded to linear, summed
//! in 32 bits and saturated to 16, re-encoded to each listener's law.
//!
//! All buffers are allocated when the mixer and its participant slots are made (a slot,
//! about 3.5 KB, when a participant beyond the ones made room for joins); pushing a packet
//! and ticking allocate nothing.

use super::g711::Codec;
use super::relay::FRAME;

/// The most participants one mix holds (the relation is a 64-bit mask per listener).
pub const MAX_PARTICIPANTS: usize = 64;
/// Frames the jitter buffer holds per input (160 ms).
const JB_SLOTS: usize = 8;
/// Frames buffered before an input starts playing (60 ms: absorbs arrival jitter and the
/// phase between the relay threads' ticks; 40 ms lost 0.25 % of frames as late at 100
/// conferences on 2 cores, `load/conference.sh`).
const PREFILL: usize = 3;
/// Missing frames in a row after which an input counts as paused (hold, silence
/// suppression, a phone gone), not losing packets: it prefills again on its next packet.
const STALL: u32 = 25;
/// Encoded output frames a participant may have waiting before the oldest is dropped.
const OUT_SLOTS: usize = 4;
/// The number of buffered-ahead frames above which playout skips one frame (the
/// sender's clock runs faster than the mixer's).
const HIGH_WATER: usize = 5;

/// A participant's index in its mixer.
pub type Pid = usize;

/// Counters since the last [`Mixer::take_counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MixCounters {
    /// Frames missing at their turn in a stream that went on (packet loss or a very late
    /// packet): played as silence.
    pub lost: u64,
    /// Packets that arrived after their frame had been played (dropped).
    pub late: u64,
    /// Output frames dropped because the participant's relay thread did not take them.
    pub overrun: u64,
    /// Frames produced (one per participant per tick).
    pub frames: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Play {
    /// No stream yet (or paused): waiting for a packet.
    Idle,
    /// A stream started: waiting for `PREFILL` frames before playing.
    Prefill,
    Playing,
}

/// One input's jitter buffer: decoded audio placed by RTP timestamp into 20 ms frames
/// (frame numbers count from the stream's first timestamp), so packets of any length
/// (20, 30, 40 ms) fill the frames they cover, in whatever order they arrive.
struct Jitter {
    frames: [[i16; FRAME]; JB_SLOTS],
    /// The frame number each slot holds, and how many of its samples arrived.
    numbers: [u32; JB_SLOTS],
    filled: [u16; JB_SLOTS],
    ssrc: Option<u32>,
    state: Play,
    /// The timestamp of frame 0.
    base_ts: u32,
    /// The frame played next.
    play: u32,
    /// Missing frames in the current run (counted lost only if the stream goes on).
    missing: u32,
}

impl Jitter {
    fn new() -> Jitter {
        Jitter {
            frames: [[0; FRAME]; JB_SLOTS],
            numbers: [u32::MAX; JB_SLOTS],
            filled: [0; JB_SLOTS],
            ssrc: None,
            state: Play::Idle,
            base_ts: 0,
            play: 0,
            missing: 0,
        }
    }

    fn restart(&mut self, ssrc: u32, ts: u32) {
        self.numbers = [u32::MAX; JB_SLOTS];
        self.filled = [0; JB_SLOTS];
        self.ssrc = Some(ssrc);
        self.state = Play::Prefill;
        self.base_ts = ts;
        self.play = 0;
        self.missing = 0;
    }

    /// Whole frames buffered from the play position on.
    fn buffered(&self) -> usize {
        (0..JB_SLOTS as u32)
            .filter(|&i| {
                let n = self.play.wrapping_add(i);
                let idx = n as usize % JB_SLOTS;
                self.numbers[idx] == n && self.filled[idx] as usize >= FRAME
            })
            .count()
    }

    fn push(&mut self, ssrc: u32, ts: u32, codec: Codec, payload: &[u8], c: &mut MixCounters) {
        if self.state == Play::Idle || self.ssrc != Some(ssrc) {
            self.restart(ssrc, ts);
        }
        // Where the packet starts, in samples from the play position (signed, modulo the
        // 32-bit timestamp: before it is late).
        let offset = ts
            .wrapping_sub(self.base_ts)
            .wrapping_sub(self.play.wrapping_mul(FRAME as u32)) as i32 as i64;
        if offset < 0 {
            c.late += 1;
            return;
        }
        if offset + payload.len() as i64 > (JB_SLOTS * FRAME) as i64 {
            // Far ahead of playout (a jump in the sender's clock, a talkspurt after a
            // pause of ours): start again from this packet rather than wait for it.
            self.restart(ssrc, ts);
        }
        let start = ts.wrapping_sub(self.base_ts);
        let mut done = 0;
        while done < payload.len() {
            let at = start.wrapping_add(done as u32);
            let number = at / FRAME as u32;
            let within = (at % FRAME as u32) as usize;
            let idx = number as usize % JB_SLOTS;
            if self.numbers[idx] != number {
                self.numbers[idx] = number;
                self.filled[idx] = 0;
                self.frames[idx] = [0; FRAME];
            }
            let n = (FRAME - within).min(payload.len() - done);
            codec.decode_into(
                &payload[done..done + n],
                &mut self.frames[idx][within..within + n],
            );
            self.filled[idx] = (self.filled[idx] as usize + n).min(FRAME) as u16;
            done += n;
        }
    }

    /// The next frame into `out`; false when there is none to play (silence).
    fn pull(&mut self, out: &mut [i16; FRAME], c: &mut MixCounters) -> bool {
        match self.state {
            Play::Idle => return false,
            Play::Prefill => {
                if self.buffered() < PREFILL {
                    return false;
                }
                self.state = Play::Playing;
            }
            Play::Playing => {
                if self.buffered() > HIGH_WATER {
                    // Drift: the sender is ahead of our clock; skip a frame.
                    let idx = self.play as usize % JB_SLOTS;
                    self.numbers[idx] = u32::MAX;
                    self.play = self.play.wrapping_add(1);
                }
            }
        }
        let number = self.play;
        let idx = number as usize % JB_SLOTS;
        self.play = self.play.wrapping_add(1);
        if self.numbers[idx] == number && self.filled[idx] > 0 {
            self.numbers[idx] = u32::MAX;
            *out = self.frames[idx];
            c.lost += self.missing as u64;
            self.missing = 0;
            return true;
        }
        self.missing += 1;
        if self.missing >= STALL {
            self.state = Play::Idle;
            self.missing = 0;
        }
        false
    }
}

/// A participant's slot.
struct Slot {
    active: bool,
    codec: Codec,
    /// Speakers this listener hears (bit i: participant i).
    hears: u64,
    muted: bool,
    deaf: bool,
    jitter: Box<Jitter>,
    /// This tick's frame from this participant, when `speaking` has its bit.
    cur: [i16; FRAME],
    out: [[u8; FRAME]; OUT_SLOTS],
    out_head: usize,
    out_len: usize,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            active: false,
            codec: Codec::Pcmu,
            hears: 0,
            muted: false,
            deaf: false,
            jitter: Box::new(Jitter::new()),
            cur: [0; FRAME],
            out: [[0; FRAME]; OUT_SLOTS],
            out_head: 0,
            out_len: 0,
        }
    }
}

/// A mix of up to [`MAX_PARTICIPANTS`] participants.
pub struct Mixer {
    slots: Vec<Slot>,
    /// The most participants (slots are made up to this many).
    limit: usize,
    /// Participants in the mix (bit i: slot i active).
    members: u64,
    counters: MixCounters,
    total: Box<[i32; FRAME]>,
    acc: Box<[i32; FRAME]>,
    pcm: Box<[i16; FRAME]>,
}

impl Mixer {
    /// A mixer of at most `capacity` participants (at most [`MAX_PARTICIPANTS`]), its
    /// buffers allocated here.
    pub fn new(capacity: usize) -> Mixer {
        Mixer::with_room(capacity, capacity)
    }

    /// A mixer of at most `limit` participants with slots made for `room` of them now (the
    /// others are made as they join: a three-way call does not pay for a conference).
    pub fn with_room(room: usize, limit: usize) -> Mixer {
        let limit = limit.clamp(1, MAX_PARTICIPANTS);
        let room = room.clamp(1, limit);
        Mixer {
            slots: (0..room).map(|_| Slot::new()).collect(),
            limit,
            members: 0,
            counters: MixCounters::default(),
            total: Box::new([0; FRAME]),
            acc: Box::new([0; FRAME]),
            pcm: Box::new([0; FRAME]),
        }
    }

    /// Adds a participant sent `codec`: it hears everyone and everyone hears it (change
    /// that with [`Mixer::set_hears`] before the next tick). None when the mix is full.
    pub fn add(&mut self, codec: Codec) -> Option<Pid> {
        let pid = match self.slots.iter().position(|s| !s.active) {
            Some(pid) => pid,
            None if self.slots.len() < self.limit => {
                self.slots.push(Slot::new());
                self.slots.len() - 1
            }
            None => return None,
        };
        let bit = 1u64 << pid;
        let others = self.members;
        let slot = &mut self.slots[pid];
        *slot.jitter = Jitter::new();
        slot.active = true;
        slot.codec = codec;
        slot.hears = others;
        slot.muted = false;
        slot.deaf = false;
        slot.out_len = 0;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if others & (1 << i) != 0 {
                s.hears |= bit;
            }
        }
        self.members |= bit;
        Some(pid)
    }

    /// Takes a participant out; nobody hears it any more and its slot may be reused.
    pub fn remove(&mut self, pid: Pid) {
        let Some(slot) = self.slots.get_mut(pid) else {
            return;
        };
        slot.active = false;
        slot.hears = 0;
        let bit = 1u64 << pid;
        self.members &= !bit;
        for s in self.slots.iter_mut() {
            s.hears &= !bit;
        }
    }

    /// Participants in the mix.
    pub fn len(&self) -> usize {
        self.members.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// Whether `pid` is a participant.
    pub fn contains(&self, pid: Pid) -> bool {
        pid < self.slots.len() && self.members & (1 << pid) != 0
    }

    /// Sets whether `listener` hears `speaker` (nobody hears itself).
    pub fn set_hears(&mut self, listener: Pid, speaker: Pid, on: bool) {
        if listener == speaker || !self.contains(listener) || !self.contains(speaker) {
            return;
        }
        let slot = &mut self.slots[listener];
        if on {
            slot.hears |= 1 << speaker;
        } else {
            slot.hears &= !(1 << speaker);
        }
    }

    /// Whether `listener` hears `speaker` now (the relation with mute and deaf applied).
    pub fn hears(&self, listener: Pid, speaker: Pid) -> bool {
        self.contains(listener)
            && self.contains(speaker)
            && listener != speaker
            && !self.slots[listener].deaf
            && !self.slots[speaker].muted
            && self.slots[listener].hears & (1 << speaker) != 0
    }

    /// Mute: nobody hears the participant (its relation is kept for unmute).
    pub fn set_muted(&mut self, pid: Pid, muted: bool) {
        if self.contains(pid) {
            self.slots[pid].muted = muted;
        }
    }

    /// Deaf: the participant hears nobody (it is sent silence).
    pub fn set_deaf(&mut self, pid: Pid, deaf: bool) {
        if self.contains(pid) {
            self.slots[pid].deaf = deaf;
        }
    }

    /// The law the participant is sent.
    pub fn set_codec(&mut self, pid: Pid, codec: Codec) {
        if self.contains(pid) {
            self.slots[pid].codec = codec;
        }
    }

    /// An RTP packet's G.711 payload from the participant (its SSRC and timestamp),
    /// `codec` by its payload type.
    pub fn push(&mut self, pid: Pid, ssrc: u32, ts: u32, codec: Codec, payload: &[u8]) {
        if !self.contains(pid) {
            return;
        }
        self.slots[pid]
            .jitter
            .push(ssrc, ts, codec, payload, &mut self.counters);
    }

    /// Produces the next 20 ms frame of every participant (taken with [`Mixer::pop`]).
    pub fn tick(&mut self) {
        let mut speaking = 0u64;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if !s.active {
                continue;
            }
            // A muted input is still played out (its buffer keeps moving), just not mixed.
            if s.jitter.pull(&mut s.cur, &mut self.counters) && !s.muted {
                speaking |= 1 << i;
            }
        }
        self.total.fill(0);
        for (i, s) in self.slots.iter().enumerate() {
            if speaking & (1 << i) != 0 {
                for (t, &v) in self.total.iter_mut().zip(s.cur.iter()) {
                    *t += v as i32;
                }
            }
        }
        for l in 0..self.slots.len() {
            if !self.slots[l].active {
                continue;
            }
            let bit = 1u64 << l;
            let others = speaking & !bit;
            let heard = if self.slots[l].deaf {
                0
            } else {
                self.slots[l].hears & others
            };
            if heard == 0 {
                self.pcm.fill(0);
            } else if heard == others {
                // Hears every speaker but itself: the total less its own voice.
                let own = speaking & bit != 0;
                let cur = &self.slots[l].cur;
                for ((p, &t), &c) in self.pcm.iter_mut().zip(self.total.iter()).zip(cur.iter()) {
                    let v = if own { t - c as i32 } else { t };
                    *p = v.clamp(i16::MIN as i32, i16::MAX as i32) as i16;
                }
            } else {
                self.acc.fill(0);
                for (i, s) in self.slots.iter().enumerate() {
                    if heard & (1 << i) != 0 {
                        for (a, &v) in self.acc.iter_mut().zip(s.cur.iter()) {
                            *a += v as i32;
                        }
                    }
                }
                for (p, &a) in self.pcm.iter_mut().zip(self.acc.iter()) {
                    *p = a.clamp(i16::MIN as i32, i16::MAX as i32) as i16;
                }
            }
            let s = &mut self.slots[l];
            if s.out_len == OUT_SLOTS {
                s.out_head = (s.out_head + 1) % OUT_SLOTS;
                s.out_len -= 1;
                self.counters.overrun += 1;
            }
            let idx = (s.out_head + s.out_len) % OUT_SLOTS;
            s.codec.encode_into(&self.pcm[..], &mut s.out[idx]);
            s.out_len += 1;
            self.counters.frames += 1;
        }
    }

    /// The participant's oldest waiting frame, encoded in its law, into `out`: the law,
    /// or None when it has no frame waiting.
    pub fn pop(&mut self, pid: Pid, out: &mut [u8; FRAME]) -> Option<Codec> {
        if !self.contains(pid) {
            return None;
        }
        let s = &mut self.slots[pid];
        if s.out_len == 0 {
            return None;
        }
        *out = s.out[s.out_head];
        s.out_head = (s.out_head + 1) % OUT_SLOTS;
        s.out_len -= 1;
        Some(s.codec)
    }

    /// The counters since the last call (reset).
    pub fn take_counters(&mut self) -> MixCounters {
        std::mem::take(&mut self.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tone::{goertzel_power, ToneGen, SAMPLE_RATE};

    const TONES: [f32; 4] = [440.0, 770.0, 1209.0, 1633.0];

    /// A phone sending one tone, 20 ms per packet.
    struct Phone {
        gen: ToneGen,
        codec: Codec,
        seq: u16,
        ssrc: u32,
    }

    impl Phone {
        fn new(freq: f32, codec: Codec) -> Phone {
            Phone {
                gen: ToneGen::new(&[freq], 6000),
                codec,
                seq: 1000,
                ssrc: freq as u32,
            }
        }
        fn packet(&mut self) -> (u16, [u8; FRAME]) {
            let mut pcm = [0i16; FRAME];
            self.gen.fill(&mut pcm);
            let mut out = [0u8; FRAME];
            self.codec.encode_into(&pcm, &mut out);
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            (seq, out)
        }
        fn send(&mut self, m: &mut Mixer, pid: Pid) {
            let (seq, p) = self.packet();
            m.push(pid, self.ssrc, seq as u32 * 160, self.codec, &p);
        }
    }

    /// Runs `ticks` frames with every phone sending, and returns what each participant
    /// received (decoded), after the prefill.
    fn run(m: &mut Mixer, phones: &mut [(Pid, Phone)], ticks: usize) -> Vec<Vec<i16>> {
        let mut heard = vec![Vec::new(); phones.len()];
        for t in 0..ticks {
            for (pid, p) in phones.iter_mut() {
                p.send(m, *pid);
            }
            m.tick();
            for (i, (pid, _)) in phones.iter().enumerate() {
                let mut out = [0u8; FRAME];
                let codec = m.pop(*pid, &mut out).expect("a frame each tick");
                if t >= PREFILL + 2 {
                    let mut pcm = [0i16; FRAME];
                    codec.decode_into(&out, &mut pcm);
                    heard[i].extend_from_slice(&pcm);
                }
            }
        }
        heard
    }

    /// The tones of [`TONES`] present in `pcm` (power well above the floor).
    fn tones_in(pcm: &[i16]) -> Vec<f32> {
        TONES
            .iter()
            .copied()
            .filter(|&f| goertzel_power(pcm, f, SAMPLE_RATE) > 1_000_000.0)
            .collect()
    }

    fn mix_of(n: usize, codecs: &[Codec]) -> (Mixer, Vec<(Pid, Phone)>) {
        let mut m = Mixer::new(8);
        let phones = (0..n)
            .map(|i| {
                let codec = codecs[i % codecs.len()];
                (m.add(codec).unwrap(), Phone::new(TONES[i], codec))
            })
            .collect();
        (m, phones)
    }

    #[test]
    fn in_a_conference_each_hears_the_others_but_not_itself() {
        let (mut m, mut phones) = mix_of(3, &[Codec::Pcmu, Codec::Pcma]);
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[0]), vec![TONES[1], TONES[2]]);
        assert_eq!(tones_in(&heard[1]), vec![TONES[0], TONES[2]]);
        assert_eq!(tones_in(&heard[2]), vec![TONES[0], TONES[1]]);
        let c = m.take_counters();
        assert_eq!((c.lost, c.late, c.overrun), (0, 0, 0));
        assert_eq!(c.frames, 90);
    }

    #[test]
    fn listen_whisper_and_barge_are_the_relation() {
        // 0: caller, 1: agent, 2: supervisor.
        let (mut m, mut phones) = mix_of(3, &[Codec::Pcma]);
        // listen: nobody hears the supervisor.
        m.set_hears(0, 2, false);
        m.set_hears(1, 2, false);
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[0]), vec![TONES[1]]);
        assert_eq!(tones_in(&heard[1]), vec![TONES[0]]);
        assert_eq!(tones_in(&heard[2]), vec![TONES[0], TONES[1]]);
        // whisper: the agent hears the supervisor, the caller does not.
        m.set_hears(1, 2, true);
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[0]), vec![TONES[1]]);
        assert_eq!(tones_in(&heard[1]), vec![TONES[0], TONES[2]]);
        assert_eq!(tones_in(&heard[2]), vec![TONES[0], TONES[1]]);
        // barge: everyone hears everyone.
        m.set_hears(0, 2, true);
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[0]), vec![TONES[1], TONES[2]]);
        assert_eq!(tones_in(&heard[1]), vec![TONES[0], TONES[2]]);
        assert_eq!(tones_in(&heard[2]), vec![TONES[0], TONES[1]]);
    }

    #[test]
    fn mute_silences_a_speaker_and_deaf_a_listener() {
        let (mut m, mut phones) = mix_of(3, &[Codec::Pcmu]);
        m.set_muted(0, true);
        m.set_deaf(1, true);
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[0]), vec![TONES[1], TONES[2]]);
        assert!(tones_in(&heard[1]).is_empty());
        assert!(heard[1].iter().all(|&s| s.abs() < 16), "deaf hears silence");
        assert_eq!(tones_in(&heard[2]), vec![TONES[1]]);
        m.set_muted(0, false);
        m.set_deaf(1, false);
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[1]), vec![TONES[0], TONES[2]]);
        assert_eq!(tones_in(&heard[2]), vec![TONES[0], TONES[1]]);
    }

    #[test]
    fn a_participant_leaving_leaves_the_others_hearing_each_other() {
        let (mut m, mut phones) = mix_of(3, &[Codec::Pcmu]);
        run(&mut m, &mut phones, 10);
        m.remove(phones[1].0);
        phones.remove(1);
        assert_eq!(m.len(), 2);
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[0]), vec![TONES[2]]);
        assert_eq!(tones_in(&heard[1]), vec![TONES[0]]);
        // The slot is reused by a newcomer, who hears both and is heard by both.
        let pid = m.add(Codec::Pcma).unwrap();
        phones.push((pid, Phone::new(TONES[3], Codec::Pcma)));
        let heard = run(&mut m, &mut phones, 30);
        assert_eq!(tones_in(&heard[0]), vec![TONES[2], TONES[3]]);
        assert_eq!(tones_in(&heard[2]), vec![TONES[0], TONES[2]]);
    }

    #[test]
    fn loud_inputs_saturate_instead_of_wrapping() {
        let mut m = Mixer::new(3);
        let a = m.add(Codec::Pcmu).unwrap();
        let b = m.add(Codec::Pcmu).unwrap();
        let c = m.add(Codec::Pcmu).unwrap();
        let loud = [Codec::Pcmu.encode(30000); FRAME];
        for seq in 0..6u16 {
            m.push(a, 1, seq as u32 * 160, Codec::Pcmu, &loud);
            m.push(b, 2, seq as u32 * 160, Codec::Pcmu, &loud);
            m.tick();
        }
        let mut out = [0u8; FRAME];
        let mut last = 0;
        while let Some(codec) = m.pop(c, &mut out) {
            last = codec.decode(out[0]);
        }
        assert!(last > 30000, "clipped at the top, not wrapped: {last}");
    }

    #[test]
    fn the_jitter_buffer_reorders_plays_silence_for_a_gap_and_drops_late_packets() {
        let mut m = Mixer::new(2);
        let a = m.add(Codec::Pcmu).unwrap();
        let b = m.add(Codec::Pcmu).unwrap();
        // Frames carry their sequence number as a level so the order can be read back.
        let frame = |seq: u16| [Codec::Pcmu.encode(1000 * (seq as i16 + 1)); FRAME];
        let mut got = Vec::new();
        let mut out = [0u8; FRAME];
        // 0 and 2 arrive, then 1 (reordered), 3 is lost, 4 to 7 arrive, then 3 too late.
        let arrivals: [&[u16]; 8] = [&[0], &[2], &[1], &[], &[4], &[5], &[6], &[7, 3]];
        for seqs in arrivals {
            for &s in seqs {
                m.push(a, 7, s as u32 * 160, Codec::Pcmu, &frame(s));
            }
            m.tick();
            while m.pop(b, &mut out).is_some() {
                got.push(Codec::Pcmu.decode(out[0]));
            }
        }
        for _ in 0..3 {
            m.tick();
            while m.pop(b, &mut out).is_some() {
                got.push(Codec::Pcmu.decode(out[0]));
            }
        }
        let levels: Vec<i32> = got.iter().map(|&v| (v as i32 + 500) / 1000).collect();
        // Prefill until three frames are in, then 0, 1, 2, silence for 3, 4, 5.
        assert_eq!(&levels[..8], &[0, 0, 1, 2, 3, 0, 5, 6]);
        let c = m.take_counters();
        assert_eq!((c.lost, c.late), (1, 1));
    }

    #[test]
    fn thirty_ms_packets_are_placed_by_timestamp_and_heard_without_gaps() {
        let mut m = Mixer::new(2);
        let a = m.add(Codec::Pcmu).unwrap();
        let b = m.add(Codec::Pcmu).unwrap();
        let mut gen = ToneGen::new(&[TONES[1]], 6000);
        let mut heard = Vec::new();
        let mut out = [0u8; FRAME];
        let mut ts = 77_000u32;
        // 60 ms of the clock: two 30 ms packets arrive, three frames are played.
        for _ in 0..40 {
            for _ in 0..2 {
                let mut pcm = [0i16; 240];
                gen.fill(&mut pcm);
                let mut p = [0u8; 240];
                Codec::Pcmu.encode_into(&pcm, &mut p);
                m.push(a, 5, ts, Codec::Pcmu, &p);
                ts = ts.wrapping_add(240);
            }
            for _ in 0..3 {
                m.tick();
                while let Some(codec) = m.pop(b, &mut out) {
                    let mut pcm = [0i16; FRAME];
                    codec.decode_into(&out, &mut pcm);
                    heard.push(pcm);
                }
            }
        }
        // After the prefill every frame carries the tone, none is silence.
        let first = heard
            .iter()
            .position(|f| f.iter().any(|&v| v.abs() > 1000))
            .unwrap();
        assert!(first <= 3, "prefill of {first} frames");
        let silent = heard[first..]
            .iter()
            .filter(|f| f.iter().all(|&v| v.abs() < 100))
            .count();
        assert_eq!(silent, 0, "no gaps");
        let pcm: Vec<i16> = heard[first..].iter().flatten().copied().collect();
        assert_eq!(tones_in(&pcm), vec![TONES[1]]);
        let c = m.take_counters();
        assert_eq!((c.lost, c.late), (0, 0));
    }

    #[test]
    fn a_packet_from_before_the_streams_start_is_late_not_a_restart() {
        let mut m = Mixer::new(2);
        let a = m.add(Codec::Pcmu).unwrap();
        let b = m.add(Codec::Pcmu).unwrap();
        let p = [Codec::Pcmu.encode(3000); FRAME];
        for k in 0..4u32 {
            m.push(a, 1, 10_000 + k * 160, Codec::Pcmu, &p);
        }
        // Reordered from before the first packet seen.
        m.push(a, 1, 10_000 - 160, Codec::Pcmu, &p);
        assert_eq!(m.take_counters().late, 1);
        let mut out = [0u8; FRAME];
        for _ in 0..2 {
            m.tick();
            m.pop(b, &mut out).expect("a frame");
            assert!(Codec::Pcmu.decode(out[0]) > 2000, "the stream plays");
        }
        let c = m.take_counters();
        assert_eq!(
            (c.lost, c.late),
            (0, 0),
            "the buffer went on from where it was"
        );
    }

    #[test]
    fn a_paused_stream_is_not_counted_lost_and_prefills_again() {
        let mut m = Mixer::new(2);
        let a = m.add(Codec::Pcma).unwrap();
        let payload = [Codec::Pcma.encode(2000); FRAME];
        for seq in 0..10u16 {
            m.push(a, 9, seq as u32 * 160, Codec::Pcma, &payload);
            m.tick();
        }
        // On hold: nothing for a second.
        for _ in 0..50 {
            m.tick();
        }
        for seq in 500..510u16 {
            m.push(a, 9, seq as u32 * 160, Codec::Pcma, &payload);
            m.tick();
        }
        assert_eq!(m.take_counters().lost, 0);
    }

    #[test]
    fn slots_are_made_as_participants_join_up_to_the_limit() {
        let mut m = Mixer::with_room(2, 3);
        let pids: Vec<_> = (0..3).map(|_| m.add(Codec::Pcmu)).collect();
        assert_eq!(pids, vec![Some(0), Some(1), Some(2)]);
        assert!(m.add(Codec::Pcmu).is_none());
        assert!(
            m.hears(2, 0) && m.hears(0, 2),
            "the newcomer is in the relation"
        );
    }

    #[test]
    fn a_full_mix_refuses_and_an_unknown_participant_is_ignored() {
        let mut m = Mixer::new(2);
        assert!(m.add(Codec::Pcmu).is_some());
        assert!(m.add(Codec::Pcmu).is_some());
        assert!(m.add(Codec::Pcmu).is_none());
        m.push(5, 1, 1, Codec::Pcmu, &[0; FRAME]);
        m.set_hears(0, 5, true);
        let mut out = [0; FRAME];
        assert_eq!(m.pop(5, &mut out), None);
        m.remove(5);
        assert_eq!(m.len(), 2);
    }
}
