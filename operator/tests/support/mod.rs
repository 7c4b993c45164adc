//! Helpers for the operator's integration tests.

pub mod fake_arm;
