//! Validated node configuration (in progress).
