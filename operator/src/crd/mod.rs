//! Custom resource definitions.

pub mod run;
pub mod schedule;
