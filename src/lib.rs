//! Switchyard: a SIP switch and contact-centre core in the Erlang style.
//!
//! Map of the crate (imports flow downward only):
//! - [`sip`]: pure protocol code (messages, parser, URIs, transactions); no tokio, no actors.
//! - [`transport`]: UDP, TCP and TLS listeners (receive loops run as supervised actors) and
//!   connections.
//! - [`timer`]: the one shared timer facility (no task per timer).
//! - [`supervision`]: OTP-style supervisors on ractor; everything a node runs, in order, and
//!   the tree are declared in `supervision::tree` ([`server::Node::start`] is its entry).
//! - [`security`]: the edge: trusted peers and trunk gateways (who may call where), flood and
//!   scanner bans, connection caps per source (pure tables).
//! - [`actors`]: one file per actor kind; the call actor is a shell around a pure call core
//!   (`actors::call::core`).
//! - [`media`]: RTP anchoring, codecs, DTMF, recording, playback, call quality.
//! - [`cluster`]: cluster mode: etcd membership and ownership, messages between nodes.
//! - [`store`]: SQLite (PostgreSQL in a cluster): CDRs and their legs, configuration,
//!   registrations, tokens, the recording index.
//! - [`api`]: HTTP: `/metrics`, `/health`, the management and call-control API.
//! - [`config`]: the config file, its validation and the embedded default.
//! - [`demo`]: the demo tenant of the embedded default (users, a queue, echo and music).
//! - [`metrics`]: metric names, described once.
//! - [`ctl`]: `switchyard ctl`, the operator's console: a client of the API, above everything.
pub mod actors;
pub mod api;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod media;
pub mod metrics;
pub mod routing;
pub mod security;
pub mod server;
pub mod sip;
pub mod store;
pub mod supervision;
pub mod timer;
pub mod transport;
