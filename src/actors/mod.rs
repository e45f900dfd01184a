//! Actor kinds, one file each.
pub mod store_writer;
