//! The fleet endpoint rack agents connect to: QUIC with mutual TLS (ALPN `metalfleet/1`),
//! one bidirectional stream per agent carrying [`protocol::fleet`] frames.
//!
//! A connection is accepted only from a certificate whose identity is `rack:<name>` and whose
//! fingerprint is the one recorded for that rack's enrolled, unrevoked agent; the agent may
//! only speak for that rack. Every coordinator serves agents, followers included: writes
//! (events, link reports, renewals) go through [`crate::app::App::write`], which forwards to the leader.

pub mod desired;
#[cfg(test)]
mod desired_tests;
mod server;

pub use server::serve;

/// How often the serving coordinator records an agent's link state through Raft.
pub const LINK_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Validity of rack agent certificates; agents renew when a third is left.
pub const AGENT_CERT_DAYS: u32 = 30;
