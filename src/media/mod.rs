//! Media: what the switch does with audio when a call's media is anchored (routed through
//! the switch) instead of passed through. Pure pieces (codecs, packet views, DSP, SDP is in
//! `sip::sdp`) sit beside the relay engine, which owns the sockets; `media` never uses
//! `actors` (the call actor drives a session through [`relay::MediaEngine`]).
//!
//! - [`g711`]: μ-law / A-law encode, decode and transcode.
//! - [`rtp`]: RTP and RTCP packet views and builders, RFC 4733 telephone-event payloads.
//! - [`quality`]: RFC 3550 receive statistics (loss, jitter), round-trip time, E-model MOS.
//! - [`dtmf`]: digit detection (RFC 4733 events and in-band Goertzel) and generation.
//! - [`tone`]: tone synthesis and dominant-frequency analysis.
//! - [`wav`]: WAV files in and out (8 kHz mono for prompts, stereo for recordings).
//! - [`prompts`]: the prompt library (files, espeak-ng text to speech, number composition).
//! - [`mix`]: a mix on the relay threads (legs of one or several calls, its clock).
//! - [`mixer`]: the conference mixer (who hears whom, jitter buffers, G.711 in and out).
//! - [`recording`]: envelope-encrypted two-track recordings (AES-256-GCM) and their keys.
//! - [`batch`]: batched UDP receive (`recvmmsg`).
//! - [`ports`]: the RTP/RTCP port pool.
//! - [`latch`]: which sources a relay leg hears and where its media may go (no hijack).
//! - [`relay`]: the relay engine: per-call sessions, symmetric RTP, playback, taps.
pub mod batch;
pub mod dtmf;
pub mod g711;
pub mod latch;
pub mod mix;
pub mod mixer;
pub mod ports;
pub mod prompts;
pub mod quality;
pub mod recording;
pub mod relay;
pub mod rtp;
pub mod tone;
pub mod wav;
