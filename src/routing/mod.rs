//! Routing decisions that sit between the transports and the actors.
//!
//! - [`acd`]: automatic call distribution (queue strategies, skills, the waiting list), pure.
//! - [`auth`]: the digest authenticator shared by the registrar and call routing: users per
//!   tenant, nonce-count replay protection and brute-force locks.
//! - [`registration`]: a trunk's registration to its carrier (REGISTER, challenges, 423,
//!   refresh, retry), pure.
//! - [`trunks`]: trunk decisions (failover causes, cost tables, sliding-window statistics,
//!   health with hysteresis, alarms, route policies), pure.
//! - [`risk`]: risk rules of outbound calls (black and white lists, forbidden windows,
//!   frequency caps), pure; `actors::risk` holds their state.
pub mod acd;
pub mod auth;
pub mod registration;
pub mod risk;
pub mod trunks;
