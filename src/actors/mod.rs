//! Actor kinds, one file each.
