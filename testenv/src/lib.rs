//! Test fixtures for fleetscore's cluster and emulator tests.
//!
//! The servers come from `testenv/up` (a real kube-apiserver, controller manager, scheduler, kwok
//! and Azurite on loopback); tests run inside one through `testenv/with-env -- cargo test ...` or
//! `scripts/test`. This crate connects to that environment:
//! - [`TestEnv`]: a kube [`kube::Client`], the Azurite settings and the tool binaries;
//! - [`TestEnv::with_temp_ns`] / [`with_temp_ns`]: a fresh namespace per test, deleted afterwards;
//! - [`azurite`]: blob containers and `object_store` stores on Azurite;
//! - [`wait`]: waiting for an object to reach a condition or to be deleted;
//! - [`podexec`]: runs pods labelled `fleetscore.dev/exec=local` as local processes;
//! - [`skip`]: the skip-or-fail rule for tests whose external dependency is missing.

pub mod azurite;
pub mod crds;
pub mod env;
pub mod events;
pub mod namespace;
pub mod podexec;
pub mod restart;
pub mod skip;
pub mod wait;

pub use crds::{free_port, http_get, install_crds};
pub use env::{TestEnv, TestEnvError, install_crypto_provider};
pub use namespace::with_temp_ns;
pub use podexec::{ExecConfig, PodExecutor};
pub use wait::{eventually, wait_deleted, wait_for};
