//! The `[[switches]]` config entries: raw TOML shape, defaults and validation, one entry per
//! switch.
//!
//! ```toml
//! [[switches]]
//! name = "tor1"                         # required, unique
//! driver = "ovs"                        # "ovs" | "ssh-cli" | "sim"
//! address = "unix:/var/run/openvswitch/db.sock"   # ovs: unix:<path> | tcp:<host>:<port>
//! bridge = "br0"                        # ovs: only ports on this bridge are managed
//! timeout_ms = 30000                    # per call (connect, transaction, CLI command)
//!
//! [[switches]]
//! name = "tor2"
//! driver = "ssh-cli"
//! address = "10.0.0.2:22"               # host or host:port (port default 22)
//! dialect = "nxos"                      # "nxos" | "eos" | "os10" | "junos"
//! username = "metalfleet"
//! password_file = "tor2.password"       # relative to the config file's directory
//! known_host_key = "ssh-ed25519 AAAAC3Nz..."   # the switch's host key; no trust on first use
//! # ssh_binary = "ssh"                  # the OpenSSH client to run
//!
//! [[switches]]
//! name = "sim1"
//! driver = "sim"
//! ports = ["eth1", "eth2"]              # the simulated switch's ports
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::sshcli::Dialect;
use crate::boot::{from_table, ConfigCtx, KeyError};

/// Default OVSDB address: where Debian's `openvswitch-switch` puts the server's socket.
pub const DEFAULT_OVS_ADDRESS: &str = "unix:/var/run/openvswitch/db.sock";
/// Default OVS bridge.
pub const DEFAULT_OVS_BRIDGE: &str = "br0";
/// Default SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Default per-call timeout: a Junos commit on a busy switch can take tens of seconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default OpenSSH client binary (found on `PATH`).
pub const DEFAULT_SSH_BINARY: &str = "ssh";

/// One entry as written (unknown keys refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwitchConfig {
    name: String,
    driver: String,
    address: Option<String>,
    bridge: Option<String>,
    dialect: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    known_host_key: Option<String>,
    ssh_binary: Option<PathBuf>,
    ports: Option<Vec<String>>,
    timeout_ms: Option<u64>,
}

/// Where an OVSDB server listens (the client side of `punix:`/`ptcp:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OvsAddress {
    /// `unix:<path>`: the server's unix socket.
    Unix(PathBuf),
    /// `tcp:<host>:<port>`.
    Tcp(String),
}

impl OvsAddress {
    /// Parses `unix:<path>` or `tcp:<host>:<port>`.
    pub fn parse(text: &str) -> Result<OvsAddress, String> {
        if let Some(p) = text.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            Ok(OvsAddress::Unix(PathBuf::from(p)))
        } else if let Some(hp) = text.strip_prefix("tcp:") {
            match hp.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                    Ok(OvsAddress::Tcp(hp.to_owned()))
                }
                _ => Err(format!("{text:?} is not tcp:<host>:<port>")),
            }
        } else {
            Err(format!(
                "{text:?} is neither unix:<path> nor tcp:<host>:<port>"
            ))
        }
    }
}

impl std::fmt::Display for OvsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OvsAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            OvsAddress::Tcp(hp) => write!(f, "tcp:{hp}"),
        }
    }
}

/// Settings of the SSH CLI driver.
#[derive(Debug, Clone)]
pub struct SshCliConfig {
    /// Host name or IP of the switch's management interface. Key `address` (host part).
    pub host: String,
    /// SSH port. Key `address` (`:port` part), default [`DEFAULT_SSH_PORT`].
    pub port: u16,
    /// Which vendor CLI the switch speaks. Key `dialect`.
    pub dialect: Dialect,
    /// Login name. Key `username`.
    pub username: String,
    /// File holding the password (first line; read at each login, never logged nor put on
    /// a command line). Key `password_file`, relative to the config file's directory.
    pub password_file: PathBuf,
    /// The switch's host key as `<type> <base64>` (as in `known_hosts` / `ssh-keyscan`);
    /// any other key is refused. Key `known_host_key`.
    pub known_host_key: String,
    /// OpenSSH client to run. Key `ssh_binary`, default [`DEFAULT_SSH_BINARY`].
    pub ssh_binary: PathBuf,
}

/// Which driver, with its settings.
#[derive(Debug, Clone)]
pub enum DriverConfig {
    /// The in-memory simulator (`driver = "sim"`).
    Sim {
        /// Simulated port names. Key `ports`.
        ports: Vec<String>,
    },
    /// Open vSwitch (`driver = "ovs"`).
    Ovs {
        /// OVSDB server address. Key `address`, default [`DEFAULT_OVS_ADDRESS`].
        address: OvsAddress,
        /// Bridge whose ports are managed. Key `bridge`, default [`DEFAULT_OVS_BRIDGE`].
        bridge: String,
    },
    /// A vendor CLI over SSH (`driver = "ssh-cli"`).
    SshCli(SshCliConfig),
}

/// One validated `[[switches]]` entry.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// Name used in logs, errors and desired state. Key `name`.
    pub name: String,
    /// The driver and its settings. Key `driver`.
    pub driver: DriverConfig,
    /// Bound on each call to the switch. Key `timeout_ms`, 100..=600000, default
    /// [`DEFAULT_TIMEOUT_MS`].
    pub timeout: Duration,
}

fn required<T>(v: Option<T>, key: &str, driver: &str) -> Result<T, KeyError> {
    v.ok_or_else(|| KeyError::new(key, format!("required with driver = {driver:?}")))
}

fn refuse<T>(v: &Option<T>, key: &str, driver: &str) -> Result<(), KeyError> {
    match v {
        Some(_) => Err(KeyError::new(
            key,
            format!("does not apply to driver = {driver:?}"),
        )),
        None => Ok(()),
    }
}

impl SwitchConfig {
    /// Validates one `[[switches]]` entry (`ctx` resolves `password_file`).
    pub fn from_toml(table: toml::Table, ctx: &ConfigCtx) -> Result<SwitchConfig, KeyError> {
        let raw: RawSwitchConfig = from_table(table)?;
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(KeyError::new(
                "name",
                format!("{:?} must be non-empty A-Z a-z 0-9 - _ .", raw.name),
            ));
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(100..=600_000).contains(&timeout_ms) {
            return Err(KeyError::new(
                "timeout_ms",
                format!("{timeout_ms} is outside the allowed range 100..=600000"),
            ));
        }
        let d = raw.driver.as_str();
        let driver = match d {
            "sim" => {
                refuse(&raw.address, "address", d)?;
                refuse(&raw.bridge, "bridge", d)?;
                refuse(&raw.dialect, "dialect", d)?;
                refuse(&raw.username, "username", d)?;
                refuse(&raw.password_file, "password_file", d)?;
                refuse(&raw.known_host_key, "known_host_key", d)?;
                refuse(&raw.ssh_binary, "ssh_binary", d)?;
                let ports = required(raw.ports, "ports", d)?;
                if ports.is_empty() {
                    return Err(KeyError::new("ports", "must name at least one port"));
                }
                DriverConfig::Sim { ports }
            }
            "ovs" => {
                refuse(&raw.dialect, "dialect", d)?;
                refuse(&raw.username, "username", d)?;
                refuse(&raw.password_file, "password_file", d)?;
                refuse(&raw.known_host_key, "known_host_key", d)?;
                refuse(&raw.ssh_binary, "ssh_binary", d)?;
                refuse(&raw.ports, "ports", d)?;
                let text = raw.address.as_deref().unwrap_or(DEFAULT_OVS_ADDRESS);
                let address = OvsAddress::parse(text).map_err(|m| KeyError::new("address", m))?;
                let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_OVS_BRIDGE.to_owned());
                if bridge.is_empty() {
                    return Err(KeyError::new("bridge", "must not be empty"));
                }
                DriverConfig::Ovs { address, bridge }
            }
            "ssh-cli" => {
                refuse(&raw.bridge, "bridge", d)?;
                refuse(&raw.ports, "ports", d)?;
                let address = required(raw.address, "address", d)?;
                let (host, port) = split_host_port(&address).ok_or_else(|| {
                    KeyError::new("address", format!("{address:?} is not host or host:port"))
                })?;
                let dialect_text = required(raw.dialect, "dialect", d)?;
                let dialect = Dialect::parse(&dialect_text).ok_or_else(|| {
                    KeyError::new(
                        "dialect",
                        format!("{dialect_text:?} is not one of nxos, eos, os10, junos"),
                    )
                })?;
                let username = required(raw.username, "username", d)?;
                if username.is_empty()
                    || username.starts_with('-')
                    || username.contains(char::is_whitespace)
                {
                    return Err(KeyError::new("username", "must be a plain login name"));
                }
                let password_file = ctx.resolve(required(raw.password_file, "password_file", d)?);
                let known_host_key = required(raw.known_host_key, "known_host_key", d)?;
                let mut parts = known_host_key.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some(t), Some(_)) if t.starts_with("ssh-") || t.starts_with("ecdsa-") => {}
                    _ => {
                        return Err(KeyError::new(
                            "known_host_key",
                            "must be \"<key type> <base64>\" as ssh-keyscan prints it",
                        ))
                    }
                }
                DriverConfig::SshCli(SshCliConfig {
                    host,
                    port,
                    dialect,
                    username,
                    password_file,
                    known_host_key,
                    ssh_binary: raw
                        .ssh_binary
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_SSH_BINARY)),
                })
            }
            other => {
                return Err(KeyError::new(
                    "driver",
                    format!("{other:?} is not one of ovs, ssh-cli, sim"),
                ))
            }
        };
        Ok(SwitchConfig {
            name: raw.name,
            driver,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// Validates a whole `switches` array: each entry (errors prefixed `[i].`) and unique
    /// names.
    pub fn from_array(
        entries: Vec<toml::Value>,
        ctx: &ConfigCtx,
    ) -> Result<Vec<SwitchConfig>, KeyError> {
        let mut out: Vec<SwitchConfig> = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let toml::Value::Table(t) = e else {
                return Err(KeyError::new(format!("[{i}]"), "must be a table"));
            };
            let c = SwitchConfig::from_toml(t, ctx)
                .map_err(|e| KeyError::new(format!("[{i}].{}", e.key), e.message))?;
            if out.iter().any(|o| o.name == c.name) {
                return Err(KeyError::new(
                    format!("[{i}].name"),
                    format!("{:?} is used twice", c.name),
                ));
            }
            out.push(c);
        }
        Ok(out)
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let plain = |h: &str| !h.is_empty() && !h.starts_with('-') && !h.contains(char::is_whitespace);
    if let Some(rest) = text.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => DEFAULT_SSH_PORT,
            None => return None,
        };
        return plain(h).then(|| (h.to_owned(), port));
    }
    match text.split_once(':') {
        Some((h, p)) => {
            let port = p.parse().ok()?;
            plain(h).then(|| (h.to_owned(), port))
        }
        None => plain(text).then(|| (text.to_owned(), DEFAULT_SSH_PORT)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx() -> ConfigCtx {
        ConfigCtx {
            base_dir: PathBuf::from("/etc/metalfleet"),
            data_dir: PathBuf::from("/var/lib/metalfleet"),
        }
    }

    fn load(text: &str) -> Result<SwitchConfig, KeyError> {
        SwitchConfig::from_toml(toml::from_str(text).unwrap(), &ctx())
    }

    #[test]
    fn ovs_defaults() {
        let c = load("name = \"tor1\"\ndriver = \"ovs\"").unwrap();
        assert_eq!(c.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        match c.driver {
            DriverConfig::Ovs { address, bridge } => {
                assert_eq!(address.to_string(), DEFAULT_OVS_ADDRESS);
                assert_eq!(bridge, "br0");
            }
            other => panic!("{other:?}"),
        }
        let c = load("name = \"t\"\ndriver = \"ovs\"\naddress = \"tcp:127.0.0.1:6640\"").unwrap();
        assert!(matches!(
            c.driver,
            DriverConfig::Ovs {
                address: OvsAddress::Tcp(_),
                ..
            }
        ));
        let e = load("name = \"t\"\ndriver = \"ovs\"\naddress = \"127.0.0.1:6640\"").unwrap_err();
        assert_eq!(e.key, "address");
    }

    #[test]
    fn ssh_cli_entry() {
        let c = load(
            "name = \"tor2\"\ndriver = \"ssh-cli\"\naddress = \"10.0.0.2\"\ndialect = \"junos\"\n\
             username = \"mf\"\npassword_file = \"pw\"\nknown_host_key = \"ssh-ed25519 AAAA\"",
        )
        .unwrap();
        match c.driver {
            DriverConfig::SshCli(s) => {
                assert_eq!(s.port, 22);
                assert_eq!(s.dialect, Dialect::Junos);
                assert_eq!(s.password_file, PathBuf::from("/etc/metalfleet/pw"));
            }
            other => panic!("{other:?}"),
        }
        let e = load(
            "name = \"tor2\"\ndriver = \"ssh-cli\"\naddress = \"10.0.0.2:2222\"\ndialect = \"ios\"\n\
             username = \"mf\"\npassword_file = \"pw\"\nknown_host_key = \"ssh-ed25519 AAAA\"",
        )
        .unwrap_err();
        assert_eq!(e.key, "dialect");
        let e = load("name = \"tor2\"\ndriver = \"ssh-cli\"\naddress = \"h\"\ndialect = \"eos\"")
            .unwrap_err();
        assert_eq!(e.key, "username");
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(
            load("name = \"a\"\ndriver = \"x\"").unwrap_err().key,
            "driver"
        );
        assert_eq!(
            load("name = \"a\"\ndriver = \"sim\"\nports = [\"e1\"]\nbridge = \"b\"")
                .unwrap_err()
                .key,
            "bridge"
        );
        assert_eq!(
            load("name = \"a\"\ndriver = \"sim\"\nportz = []")
                .unwrap_err()
                .key,
            "portz"
        );
        assert_eq!(
            load("name = \"a\"\ndriver = \"sim\"\nports = [\"e1\"]\ntimeout_ms = 1")
                .unwrap_err()
                .key,
            "timeout_ms"
        );
        let arr: toml::Table =
            toml::from_str("[[s]]\nname = \"a\"\ndriver = \"sim\"\nports = [\"e\"]\n[[s]]\nname = \"a\"\ndriver = \"sim\"\nports = [\"e\"]").unwrap();
        let entries = arr["s"].as_array().unwrap().clone();
        assert_eq!(
            SwitchConfig::from_array(entries, &ctx()).unwrap_err().key,
            "[1].name"
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("h"), Some(("h".into(), 22)));
        assert_eq!(split_host_port("h:2222"), Some(("h".into(), 2222)));
        assert_eq!(split_host_port("[::1]:2222"), Some(("::1".into(), 2222)));
        assert_eq!(split_host_port("-oProxyCommand=x"), None);
        assert_eq!(split_host_port("h:x"), None);
    }
}
