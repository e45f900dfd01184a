//! Pure SIP protocol code: no tokio, no actors.
pub mod message;
