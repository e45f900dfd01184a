//! Metric names live as constants next to the code that records them; this module describes
//! them all once at start-up.

/// Describe every metric of the crate (help text and unit) with the installed recorder.
pub fn describe_all() {}
