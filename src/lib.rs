//! Switchyard: a SIP switch and contact-centre core in the Erlang style.
//!
//! Map of the crate (imports flow downward only):
//! - [`sip`]: pure protocol code (messages, parser, URIs, transactions); no tokio, no actors.
//! - [`transport`]: UDP, TCP and TLS listeners and connections.
//! - [`timer`]: the one shared timer facility (no task per timer).
//! - [`supervision`]: OTP-style supervisors on ractor; the tree is declared in `supervision::tree`.
//! - [`security`]: the edge: flood and scanner bans, connection caps per source (pure tables).
//! - [`actors`]: one file per actor kind.
//! - [`media`]: RTP anchoring, codecs, DTMF, recording, playback, call quality.
//! - [`security`]: the edge: trusted peers, trunk gateways, who may call where.
//! - [`cluster`]: cluster mode: etcd membership and ownership, messages between nodes.
//! - [`store`]: the embedded SQLite database (CDRs).
//! - [`api`]: HTTP: `/metrics`, `/health`.
//! - [`config`]: the config file, its validation and the embedded default.
//! - [`metrics`]: metric names, described once.
pub mod actors;
pub mod api;
pub mod cluster;
pub mod config;
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
