//! Routing decisions that sit between the transports and the actors.
//!
//! - [`acd`]: automatic call distribution (queue strategies, skills, the waiting list), pure.
//! - [`auth`]: the digest authenticator shared by the registrar and call routing: users per
//!   tenant, nonce-count replay protection and brute-force locks.
pub mod acd;
pub mod auth;
