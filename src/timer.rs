//! Shared timer facility.
