//! Membership-change tests (issue 15).
