//! Top-of-rack switch drivers: the port/VLAN model, the [`SwitchDriver`] trait, its errors,
//! batch validation and read-back verification, and [`connect`] choosing a driver by config.
//!
//! A driver applies a batch of port changes in one unit of work on the switch (one OVSDB
//! transaction, one CLI configuration session) and then reads every changed port back: a
//! switch that accepted a command but did not take it (or someone changing it behind our
//! back between write and read) surfaces as [`SwitchError::Mismatch`], never as success.
//!
//! Drivers: [`sim::SimSwitch`] (in memory, with fault switches), [`ovs::OvsSwitch`] (Open
//! vSwitch over OVSDB JSON-RPC, RFC 7047) and [`sshcli::SshCliSwitch`] (vendor CLIs over SSH:
//! Cisco NX-OS, Arista EOS, Dell OS10, Juniper Junos).

pub mod batch;
pub mod config;
pub mod ovs;
pub mod sim;
pub mod sshcli;
pub mod stats;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use batch::{validate_batch, verify_readback};
pub use config::{DriverConfig, SwitchConfig};
pub use stats::{CountedSwitch, SwitchStats};

/// Smallest usable 802.1Q VLAN id (0 means "priority tag only").
pub const MIN_VLAN: u16 = 1;
/// Largest usable 802.1Q VLAN id (4095 is reserved).
pub const MAX_VLAN: u16 = 4094;

/// An 802.1Q VLAN id, always within [`MIN_VLAN`]..=[`MAX_VLAN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Vlan(u16);

impl Vlan {
    /// A VLAN id, refused outside 1..=4094.
    pub fn new(id: u16) -> Result<Vlan, SwitchError> {
        if (MIN_VLAN..=MAX_VLAN).contains(&id) {
            Ok(Vlan(id))
        } else {
            Err(SwitchError::InvalidVlan { vlan: id.into() })
        }
    }

    /// A VLAN id from any integer (switch output, JSON), refused outside 1..=4094.
    pub fn from_i64(id: i64) -> Result<Vlan, SwitchError> {
        u16::try_from(id)
            .map_err(|_| SwitchError::InvalidVlan { vlan: id })
            .and_then(Vlan::new)
    }

    /// The numeric id.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for Vlan {
    type Error = SwitchError;
    fn try_from(id: u16) -> Result<Vlan, SwitchError> {
        Vlan::new(id)
    }
}

impl From<Vlan> for u16 {
    fn from(v: Vlan) -> u16 {
        v.0
    }
}

impl fmt::Display for Vlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a port carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum PortMode {
    /// Nothing: the port forwards no traffic (shut down / no VLAN). The state a port returns
    /// to when a node is released. What it means per switch is documented by each driver.
    Unconfigured,
    /// Untagged member of one VLAN.
    Access {
        /// The VLAN untagged frames belong to.
        vlan: Vlan,
    },
    /// 802.1Q-tagged member of several VLANs, optionally with one untagged (native) VLAN.
    Trunk {
        /// VLAN untagged frames belong to; `None` drops untagged frames. Must be in `allowed`.
        native: Option<Vlan>,
        /// VLANs carried tagged (non-empty).
        allowed: BTreeSet<Vlan>,
    },
}

impl fmt::Display for PortMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMode::Unconfigured => f.write_str("unconfigured"),
            PortMode::Access { vlan } => write!(f, "access vlan {vlan}"),
            PortMode::Trunk { native, allowed } => {
                f.write_str("trunk")?;
                if let Some(n) = native {
                    write!(f, " native {n}")?;
                }
                write!(f, " allowed {}", vlan_list(allowed))
            }
        }
    }
}

/// A VLAN set as a compact list: `10,20,30-32` (the form IOS-like CLIs use).
pub fn vlan_list(vlans: &BTreeSet<Vlan>) -> String {
    let mut out = String::new();
    let mut iter = vlans.iter().map(|v| v.get()).peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
    }
    out
}

/// Parses a VLAN list like `10,20,30-32` (spaces tolerated).
pub fn parse_vlan_list(text: &str) -> Result<BTreeSet<Vlan>, SwitchError> {
    let mut out = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || SwitchError::Protocol {
            switch: String::new(),
            message: format!("bad VLAN list {text:?}"),
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(bad());
        }
        for id in lo..=hi {
            out.insert(Vlan::new(id)?);
        }
    }
    Ok(out)
}

/// One port's configuration, as read from a switch or as wanted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    /// The switch's own port name (`Ethernet1/1`, `ge-0/0/1`, an OVS port name).
    pub port: String,
    /// What the port carries.
    pub mode: PortMode,
}

/// A wanted port configuration (same shape as what is read back).
pub type PortChange = PortConfig;

impl PortConfig {
    /// `port` set to `mode`.
    pub fn new(port: impl Into<String>, mode: PortMode) -> PortConfig {
        PortConfig {
            port: port.into(),
            mode,
        }
    }
}

/// What went wrong talking to a switch. Messages carry the switch's name and, where the switch
/// said something, its own words.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A VLAN id outside 1..=4094.
    #[error("VLAN {vlan} is outside 1..=4094")]
    InvalidVlan {
        /// The id as given.
        vlan: i64,
    },
    /// A change that cannot be applied as given (duplicate port in a batch, empty trunk, ...).
    #[error("port {port}: {reason}")]
    InvalidChange {
        /// The port.
        port: String,
        /// Why.
        reason: String,
    },
    /// The switch has no such port (or, on OVS, it is not on the managed bridge).
    #[error("switch {switch}: no port {port}")]
    UnknownPort {
        /// Switch name.
        switch: String,
        /// The port asked for.
        port: String,
    },
    /// Read-back after a change found something other than what was applied.
    #[error("switch {switch}: port {port} reads back as {found}, wanted {wanted}")]
    Mismatch {
        /// Switch name.
        switch: String,
        /// The port.
        port: String,
        /// What was applied.
        wanted: PortMode,
        /// What the switch reports.
        found: PortMode,
    },
    /// The switch refused a command or transaction; `message` is the switch's own text.
    #[error("switch {switch} rejected {command:?}: {message}")]
    Rejected {
        /// Switch name.
        switch: String,
        /// The command (CLI line, or OVSDB operation) refused.
        command: String,
        /// The switch's error text.
        message: String,
    },
    /// Authentication failed (wrong credentials).
    #[error("switch {switch}: authentication failed: {message}")]
    Auth {
        /// Switch name.
        switch: String,
        /// What the transport said.
        message: String,
    },
    /// The switch presented a host key other than the configured one.
    #[error("switch {switch}: host key verification failed: {message}")]
    HostKey {
        /// Switch name.
        switch: String,
        /// What the transport said.
        message: String,
    },
    /// No answer within the configured timeout.
    #[error("switch {switch}: no answer to {what} within {timeout_ms} ms")]
    Timeout {
        /// Switch name.
        switch: String,
        /// What we were waiting for.
        what: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// Could not reach the switch.
    #[error("switch {switch}: cannot connect to {address}")]
    Connect {
        /// Switch name.
        switch: String,
        /// The configured address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed while in use.
    #[error("switch {switch}: {what}")]
    Io {
        /// Switch name.
        switch: String,
        /// What we were doing.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The switch answered something we cannot interpret.
    #[error("switch {switch}: {message}")]
    Protocol {
        /// Switch name.
        switch: String,
        /// What was wrong with the answer.
        message: String,
    },
    /// A simulated failure (simulator fault switch).
    #[error("switch {switch}: simulated failure")]
    Simulated {
        /// Switch name.
        switch: String,
    },
}

impl SwitchError {
    /// Whether retrying the same call later may succeed (connection trouble, timeouts,
    /// simulated failures) rather than needing a config or request change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SwitchError::Timeout { .. }
                | SwitchError::Connect { .. }
                | SwitchError::Io { .. }
                | SwitchError::Simulated { .. }
        )
    }
}

/// A switch the agent configures ports on. Implementations are shared (`Arc<dyn>`) between
/// tasks; each call is independent and `apply` calls on one driver are serialised, so a
/// batch's read-back never sees another batch of ours half-way.
///
/// Cancel safety: `read_port` and `read_ports` are cancel-safe (dropping them changes
/// nothing). `apply` is NOT cancel-safe: dropping it after the batch reached the switch may
/// leave the batch applied without verification (OVS transactions and EOS/Junos commits are
/// all-or-nothing; NX-OS and OS10 CLI sessions may stop part-way). Every change is idempotent,
/// so after a cancelled or failed `apply` re-apply the same batch (the reconciler does).
pub trait SwitchDriver: Send + Sync + fmt::Debug {
    /// The switch's configured name (for logs and errors).
    fn name(&self) -> &str;

    /// One port's current configuration. Cancel-safe.
    fn read_port<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<PortConfig, SwitchError>>;

    /// Every port the driver manages, sorted by name. Cancel-safe.
    fn read_ports(&self) -> BoxFuture<'_, Result<Vec<PortConfig>, SwitchError>>;

    /// Validates and applies `changes` as one unit of work on the switch, then reads every
    /// changed port back and returns what was read (in the order of `changes`). A port that
    /// does not read back as wanted is [`SwitchError::Mismatch`]. Not cancel-safe (see the
    /// trait doc); idempotent.
    fn apply<'a>(
        &'a self,
        changes: &'a [PortChange],
    ) -> BoxFuture<'a, Result<Vec<PortConfig>, SwitchError>>;
}

/// Reads the switch and compares it with `wanted` (drift detection for a reconciler: a port
/// changed behind the driver's back since the last `apply` is [`SwitchError::Mismatch`]).
/// Cancel-safe.
pub async fn check(
    driver: &dyn SwitchDriver,
    wanted: &[PortChange],
) -> Result<Vec<PortConfig>, SwitchError> {
    let found = driver.read_ports().await?;
    verify_readback(driver.name(), wanted, &found)
}

/// The driver `config` names, connected (SSH and OVSDB connect lazily on first use, so an
/// unreachable switch does not stop the agent from starting).
pub fn connect(config: &SwitchConfig) -> Result<Arc<dyn SwitchDriver>, SwitchError> {
    Ok(match &config.driver {
        DriverConfig::Sim { ports } => Arc::new(sim::SimSwitch::new(
            &config.name,
            ports.iter().cloned(),
            config.timeout,
        )),
        DriverConfig::Ovs { address, bridge } => Arc::new(ovs::OvsSwitch::new(
            &config.name,
            address.clone(),
            bridge,
            config.timeout,
        )),
        DriverConfig::SshCli(ssh) => Arc::new(sshcli::SshCliSwitch::new(
            &config.name,
            ssh.clone(),
            config.timeout,
        )?),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vlan_range() {
        assert!(Vlan::new(0).is_err());
        assert!(Vlan::new(1).is_ok());
        assert!(Vlan::new(4094).is_ok());
        assert!(matches!(
            Vlan::new(4095),
            Err(SwitchError::InvalidVlan { vlan: 4095 })
        ));
        assert!(Vlan::from_i64(-1).is_err());
        assert!(serde_json::from_str::<Vlan>("4095").is_err());
        assert_eq!(serde_json::from_str::<Vlan>("10").unwrap().get(), 10);
    }

    #[test]
    fn vlan_lists_round_trip() {
        let set = parse_vlan_list("10, 20,30-32,31").unwrap();
        assert_eq!(vlan_list(&set), "10,20,30-32");
        assert!(parse_vlan_list("5-3").is_err());
        assert!(parse_vlan_list("4090-4095").is_err());
        assert!(parse_vlan_list("x").is_err());
    }

    #[test]
    fn mode_display() {
        let allowed = parse_vlan_list("10,20").unwrap();
        let m = PortMode::Trunk {
            native: Some(Vlan::new(10).unwrap()),
            allowed,
        };
        assert_eq!(m.to_string(), "trunk native 10 allowed 10,20");
    }
}
