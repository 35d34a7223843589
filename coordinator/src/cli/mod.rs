//! `metalctl`: the operator CLI (config, HTTP client with leader-agnostic failover, tables).
//!
//! [`args`] is the command line, [`config`] merges it with the config file, [`api`] and
//! [`client`] talk to the coordinators, [`commands`] maps commands to requests, [`render`]
//! and [`table`] turn answers into text, and [`error`] maps failures to exit codes. The
//! `metalctl` binary only parses, calls [`commands::run`] and prints.

pub mod api;
pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod render;
pub mod runs;
pub mod table;
pub mod tenancy;
