//! cluster.toml (filled in next).
