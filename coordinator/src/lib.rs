//! The Metalfleet coordinator: Raft-replicated desired state (openraft + redb), the REST API,
//! the Raft endpoint, and `metalctl`'s client library.
//!
//! Binaries (`coordinator`, `metalctl`) are thin: they parse arguments and call into here, so
//! tests can run whole coordinators in-process.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod identify;
pub mod metrics;
pub use ::pki;
pub mod raft;
pub mod rollout_driver;
pub mod secrets;
pub mod state;
pub mod tenancy_driver;
pub mod workflow;
