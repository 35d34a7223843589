//! `metalctl`: the operator CLI (config, HTTP client with leader-agnostic failover, tables).

pub mod client;
