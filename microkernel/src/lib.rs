//! Metalfleet node-agent: runs inside the discovery/maintenance microkernel. It finds its rack
//! agent from the kernel command line, checks in with the machine's hardware inventory, then
//! long-polls for actions (run a command, write a file, reboot, power off, kexec), streams
//! their logs and reports their results. It outlives rack-agent restarts by retrying with
//! backoff.

pub mod actions;
pub mod client;
pub mod cmdline;
pub mod inventory;
pub mod run;
