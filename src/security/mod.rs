//! The edge: who a request comes from and where it may go (`trust`). Pure tables and
//! decisions with their counters; the transports and the router consult them.

pub mod trust;

/// Describes the edge's metrics.
pub fn describe() {
    trust::describe();
}
