//! Metalfleet's shared vocabulary: every type that crosses a process boundary or is persisted.
//!
//! This crate is data only — no sockets, no async runtime. The coordinator, the rack agent,
//! `metalctl` and the node agent all import these types so both ends of every link agree.
//!
//! Versioning: every persisted or wire type is either wrapped in a [`frame::Frame`] (fleet
//! link) or carried inside a [`Versioned`] envelope (persisted records). Decoders accept every
//! version listed in [`version::SUPPORTED`], so coordinators and agents of adjacent releases can
//! run side by side during a rolling upgrade.

#![warn(missing_docs)]

pub mod domain;
pub mod error;
pub mod fleet;
pub mod frame;
pub mod ids;
pub mod json;
pub mod node;
pub mod tenancy;
pub mod version;
pub mod workflow;

pub use ids::*;

use serde::{Deserialize, Serialize};

/// A persisted record tagged with the schema version that wrote it.
///
/// Readers match on `v` and upgrade older shapes in place; a reader that meets a newer
/// version than it knows reports [`error::ErrorCode::UnsupportedVersion`] instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Schema version of `body`.
    pub v: u16,
    /// The record itself.
    pub body: T,
}
