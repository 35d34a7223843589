//! Metalfleet rack agent: enrollment, the fleet link to the coordinators, the local store of
//! the rack's desired state, the durable event outbox, and the local control socket.
//!
//! The binary (`src/bin/rack-agent.rs`) only parses arguments and calls into this library, so
//! tests can run a whole agent in-process ([`agent::Agent`]).

pub mod agent;
pub mod bmc;
pub mod boot;
pub mod cli;
pub mod config;
pub mod control;
pub mod enroll;
pub mod executor;
pub mod identity;
pub mod reconcile;
pub mod status;
pub mod store;
pub mod switch;
pub mod uplink;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_secs() -> i64 {
    unix_millis() / 1000
}

/// An error and its sources joined by `: `, for log lines and CLI messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source's text; do not print it twice.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
