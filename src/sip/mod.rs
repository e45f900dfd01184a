//! Pure SIP protocol code: no tokio, no actors.
//!
//! - [`message`]: the message model on `bytes::Bytes` and its serializer.
//! - [`parse`]: the parser and stream framing.
//! - [`headers`], [`uri`]: typed views of header values and URIs.
//! - [`validate`]: what a request must satisfy before it is acted on.
pub mod auth;
pub mod dialog;
pub mod headers;
pub mod message;
pub mod parse;
pub mod sdp;
pub mod transaction;
pub mod uri;
pub mod validate;
