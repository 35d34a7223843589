//! Agent configuration: TOML read into a raw shape (unknown keys rejected), then validated into
//! [`Config`]. Every error reads `<file>: <key>: <message>`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::RackId;

use crate::bmc::BmcConfig;
use crate::boot::dhcp::DhcpConfig;
use crate::boot::http::HttpConfig;
use crate::boot::tftp::TftpConfig;
use crate::boot::{ConfigCtx, KeyError, DEFAULT_IPXE_DIR};
use crate::executor::ExecutorConfig;
use crate::switch::SwitchConfig;
use serde::Deserialize;

/// Default period of the `Status` report and `Ping` on the fleet link.
pub const DEFAULT_STATUS_INTERVAL_SECS: u64 = 10;
/// Default renewal threshold: renew once less than this fraction of the certificate's lifetime
/// is left (a third).
pub const DEFAULT_RENEW_BEFORE_FRACTION: f64 = 0.33;
/// Directory under `data_dir` holding the CA, the agent certificate and its key.
pub const TLS_DIR: &str = "tls";
/// File name of the cluster CA certificate (default location: `data_dir/tls/ca.crt`).
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the agent's certificate in [`TLS_DIR`].
pub const AGENT_CERT_FILE: &str = "agent.crt";
/// File name of the agent's private key in [`TLS_DIR`] (mode 0600).
pub const AGENT_KEY_FILE: &str = "agent.key";
/// File name of the local store under `data_dir`.
pub const STORE_FILE: &str = "agent.redb";
/// Default control socket file name under `data_dir`.
pub const DEFAULT_CONTROL_SOCKET_FILE: &str = "agent.sock";

/// Longest status interval accepted: beyond this a coordinator cannot tell a quiet agent from
/// a dead one.
const MAX_STATUS_INTERVAL_SECS: u64 = 3600;
/// `sun_path` holds 108 bytes including the terminating NUL on Linux.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// A configuration problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The offending key (dotted path), or `-` for the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    rack: Option<String>,
    data_dir: Option<PathBuf>,
    coordinators: Option<Vec<String>>,
    ca_cert: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    status_interval_secs: Option<u64>,
    renew_before_fraction: Option<f64>,
    ipxe_dir: Option<PathBuf>,
    dhcp: Option<toml::Table>,
    tftp: Option<toml::Table>,
    http: Option<toml::Table>,
    bmc: Option<toml::Table>,
    switches: Option<Vec<toml::Value>>,
    executor: Option<toml::Table>,
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages).
    pub file: PathBuf,
    /// The rack this agent serves; its certificate is issued for `rack:<name>`.
    pub rack: RackId,
    /// Holds the store (`agent.redb`), `tls/` and by default the control socket.
    pub data_dir: PathBuf,
    /// Fleet endpoints (`host:port`, QUIC) to try besides the list learnt from enrollment and
    /// from the coordinators; may be empty.
    pub coordinators: Vec<String>,
    /// The cluster CA certificate (PEM): trust anchor for the fleet link.
    pub ca_cert: PathBuf,
    /// Unix socket of the local control interface (`rack-agent status`, `emit`).
    pub control_socket: PathBuf,
    /// Period of the `Status` report and `Ping` on the fleet link.
    pub status_interval: Duration,
    /// Renew the certificate once less than this fraction of its lifetime is left; in (0, 1).
    pub renew_before_fraction: f64,
    /// Directory of the iPXE binaries served over TFTP and HTTP (default: Debian's
    /// `/usr/lib/ipxe`).
    pub ipxe_dir: PathBuf,
    /// The DHCP server (`[dhcp]`); off when absent.
    pub dhcp: Option<DhcpConfig>,
    /// The TFTP server (`[tftp]`); off when absent.
    pub tftp: Option<TftpConfig>,
    /// The HTTP boot server (`[http]`): iPXE scripts, assets, node API; off when absent.
    pub http: Option<HttpConfig>,
    /// How BMCs are driven (`[bmc]`): cipher suites, TLS verification, timeouts, retries.
    pub bmc: BmcConfig,
    /// The rack's switches (`[[switches]]`): driver, address, credentials.
    pub switches: Vec<SwitchConfig>,
    /// The workflow step executor (`[executor]`): playbooks, keys, log retention. Its
    /// `autoinstall_dir` defaults to the HTTP server's `templates_dir`.
    pub executor: ExecutorConfig,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text (`path` is used in messages and to resolve relative
    /// paths, which are relative to the directory of the file).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: path.display().to_string(),
            key: key.to_owned(),
            message,
        };
        let raw = parse_raw(text).map_err(|(key, message)| err(&key, message))?;

        let rack = raw.rack.ok_or_else(|| {
            err(
                "rack",
                "required: the name of the rack this agent serves".into(),
            )
        })?;
        let rack: RackId = rack.parse().map_err(|e| err("rack", format!("{e}")))?;

        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let data_dir = raw
            .data_dir
            .ok_or_else(|| err("data_dir", "required".into()))?;
        if data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "must not be empty".into()));
        }
        let data_dir = resolve(data_dir);

        let coordinators = raw.coordinators.unwrap_or_default();
        let mut seen = BTreeSet::new();
        for (i, endpoint) in coordinators.iter().enumerate() {
            let key = format!("coordinators[{i}]");
            split_endpoint(endpoint).map_err(|m| err(&key, m))?;
            if !seen.insert(endpoint.as_str()) {
                return Err(err(&key, format!("{endpoint:?} is listed twice")));
            }
        }

        let ca_cert = raw
            .ca_cert
            .map(resolve)
            .unwrap_or_else(|| data_dir.join(TLS_DIR).join(CA_CERT_FILE));
        let control_socket = raw
            .control_socket
            .map(resolve)
            .unwrap_or_else(|| data_dir.join(DEFAULT_CONTROL_SOCKET_FILE));
        let socket_len = control_socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH_BYTES {
            return Err(err(
                if raw_has_socket(text) {
                    "control_socket"
                } else {
                    "data_dir"
                },
                format!(
                    "control socket path {} is {socket_len} bytes, longer than the {MAX_SOCKET_PATH_BYTES} \
                     a Unix socket address can hold; set control_socket to a shorter path",
                    control_socket.display()
                ),
            ));
        }

        let status_interval_secs = raw
            .status_interval_secs
            .unwrap_or(DEFAULT_STATUS_INTERVAL_SECS);
        if !(1..=MAX_STATUS_INTERVAL_SECS).contains(&status_interval_secs) {
            return Err(err(
                "status_interval_secs",
                format!("must be between 1 and {MAX_STATUS_INTERVAL_SECS}"),
            ));
        }
        let renew_before_fraction = raw
            .renew_before_fraction
            .unwrap_or(DEFAULT_RENEW_BEFORE_FRACTION);
        if !(renew_before_fraction > 0.0 && renew_before_fraction < 1.0) {
            return Err(err(
                "renew_before_fraction",
                format!(
                    "must be strictly between 0 and 1 (the share of the certificate lifetime left \
                     when renewal starts), got {renew_before_fraction}"
                ),
            ));
        }

        let ctx = ConfigCtx {
            base_dir: base.to_owned(),
            data_dir: data_dir.clone(),
        };
        let section = |name: &str, e: KeyError| {
            let key = if e.key == "-" {
                name.to_owned()
            } else {
                format!("{name}.{}", e.key)
            };
            err(&key, e.message)
        };
        let dhcp = raw
            .dhcp
            .map(|t| DhcpConfig::from_toml(t, &ctx))
            .transpose()
            .map_err(|e| section("dhcp", e))?;
        let tftp = raw
            .tftp
            .map(|t| TftpConfig::from_toml(t, &ctx))
            .transpose()
            .map_err(|e| section("tftp", e))?;
        let http = raw
            .http
            .map(|t| HttpConfig::from_toml(t, &ctx))
            .transpose()
            .map_err(|e| section("http", e))?;
        let bmc = raw
            .bmc
            .map(|t| BmcConfig::from_toml(t, &ctx))
            .transpose()
            .map_err(|e| section("bmc", e))?
            .unwrap_or_default();
        let switches = raw
            .switches
            .map(|v| SwitchConfig::from_array(v, &ctx))
            .transpose()
            .map_err(|e| err(&format!("switches{}", e.key), e.message))?
            .unwrap_or_default();
        let mut executor = raw
            .executor
            .map(|t| ExecutorConfig::from_toml(t, &ctx))
            .transpose()
            .map_err(|e| section("executor", e))?
            .unwrap_or_else(|| ExecutorConfig::new(data_dir.clone()));
        if executor.autoinstall_dir.is_none() {
            executor.autoinstall_dir = http.as_ref().map(|h| h.templates_dir.clone());
        }
        let ipxe_dir = raw
            .ipxe_dir
            .map(resolve)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IPXE_DIR));

        Ok(Config {
            file: path.to_owned(),
            rack,
            data_dir,
            coordinators,
            ca_cert,
            control_socket,
            status_interval: Duration::from_secs(status_interval_secs),
            renew_before_fraction,
            ipxe_dir,
            dhcp,
            tftp,
            http,
            bmc,
            switches,
            executor,
        })
    }

    /// Directory of the agent's TLS files.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join(TLS_DIR)
    }

    /// The agent certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.tls_dir().join(AGENT_CERT_FILE)
    }

    /// The agent private key (PEM, mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.tls_dir().join(AGENT_KEY_FILE)
    }

    /// The local store file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }
}

/// True when the text sets `control_socket` (to blame the right key for an overlong path).
fn raw_has_socket(text: &str) -> bool {
    parse_raw(text)
        .map(|r| r.control_socket.is_some())
        .unwrap_or(false)
}

/// TOML into [`RawConfig`], with the dotted key at fault (or `-`) on failure.
fn parse_raw(text: &str) -> Result<RawConfig, (String, String)> {
    let de =
        toml::Deserializer::parse(text).map_err(|e| ("-".to_owned(), one_line(e.message())))?;
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let message = one_line(e.inner().message());
        // serde_path_to_error names the key at fault, including an unknown one.
        let key = match e.path().to_string().as_str() {
            "." | "" => "-".to_owned(),
            p => p.to_owned(),
        };
        (key, message)
    })
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', " ")
}

/// Splits a fleet endpoint `host:port` (IPv6 literals in brackets) into the host, as used for
/// TLS server-name verification (brackets removed), and the port.
pub fn split_endpoint(endpoint: &str) -> Result<(String, u16), String> {
    let bad = || format!("{endpoint:?} must be host:port (IPv6 as [addr]:port)");
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("{endpoint:?}: port must not be 0"));
    }
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
            .ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/metalfleet/agent.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("rack = \"ams1-r12\"\ndata_dir = \"/var/lib/agent\"\n").unwrap();
        assert_eq!(c.rack.as_str(), "ams1-r12");
        assert_eq!(c.data_dir, Path::new("/var/lib/agent"));
        assert!(c.coordinators.is_empty());
        assert_eq!(c.ca_cert, Path::new("/var/lib/agent/tls/ca.crt"));
        assert_eq!(c.control_socket, Path::new("/var/lib/agent/agent.sock"));
        assert_eq!(
            c.status_interval,
            Duration::from_secs(DEFAULT_STATUS_INTERVAL_SECS)
        );
        assert!((c.renew_before_fraction - DEFAULT_RENEW_BEFORE_FRACTION).abs() < f64::EPSILON);
        assert_eq!(c.store_path(), Path::new("/var/lib/agent/agent.redb"));
        assert_eq!(c.key_path(), Path::new("/var/lib/agent/tls/agent.key"));
    }

    #[test]
    fn executor_section() {
        let c = parse("rack = \"r1\"\ndata_dir = \"/d\"\n").unwrap();
        assert_eq!(c.executor.data_dir, Path::new("/d"));
        assert_eq!(c.executor.playbook_dir, Path::new("/d/playbooks"));
        assert_eq!(c.executor.autoinstall_dir, None);
        let c = parse(
            "rack = \"r1\"\ndata_dir = \"/d\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [executor]\nplaybook_dir = \"pb\"\n",
        )
        .unwrap();
        assert_eq!(c.executor.playbook_dir, Path::new("/etc/metalfleet/pb"));
        let templates = c.http.as_ref().map(|h| h.templates_dir.clone());
        assert_eq!(c.executor.autoinstall_dir, templates);
        assert_eq!(
            err("rack = \"r1\"\ndata_dir = \"/d\"\n[executor]\nmax_log_lines = 0\n"),
            "/etc/metalfleet/agent.toml: executor.max_log_lines: 0 is out of range 1..=1000000"
        );
    }

    #[test]
    fn full_config_and_relative_paths() {
        let c = parse(
            r#"
            rack = "r1"
            data_dir = "state"
            coordinators = ["127.0.0.1:7445", "[::1]:7445", "coord-2.example:7445"]
            ca_cert = "ca.pem"
            control_socket = "/run/agent.sock"
            status_interval_secs = 2
            renew_before_fraction = 0.5
            "#,
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/metalfleet/state"));
        assert_eq!(c.ca_cert, Path::new("/etc/metalfleet/ca.pem"));
        assert_eq!(c.control_socket, Path::new("/run/agent.sock"));
        assert_eq!(c.coordinators.len(), 3);
        assert_eq!(c.status_interval, Duration::from_secs(2));
    }

    #[test]
    fn error_messages_name_file_and_key() {
        let cases = [
            (
                "data_dir = \"/x\"",
                "/etc/metalfleet/agent.toml: rack: required: the name of the rack this agent serves",
            ),
            (
                "rack = \"a b\"\ndata_dir = \"/x\"",
                "/etc/metalfleet/agent.toml: rack: invalid rack \"a b\": only letters, digits, '.', '_' and '-' are allowed",
            ),
            ("rack = \"r1\"", "/etc/metalfleet/agent.toml: data_dir: required"),
            (
                "rack = \"r1\"\ndata_dir = \"/x\"\ncoordinators = [\"localhost\"]",
                "/etc/metalfleet/agent.toml: coordinators[0]: \"localhost\" must be host:port (IPv6 as [addr]:port)",
            ),
            (
                "rack = \"r1\"\ndata_dir = \"/x\"\ncoordinators = [\"a:1\", \"a:1\"]",
                "/etc/metalfleet/agent.toml: coordinators[1]: \"a:1\" is listed twice",
            ),
            (
                "rack = \"r1\"\ndata_dir = \"/x\"\nstatus_interval_secs = 0",
                "/etc/metalfleet/agent.toml: status_interval_secs: must be between 1 and 3600",
            ),
            (
                "rack = \"r1\"\ndata_dir = \"/x\"\nrenew_before_fraction = 1.0",
                "/etc/metalfleet/agent.toml: renew_before_fraction: must be strictly between 0 and 1 \
                 (the share of the certificate lifetime left when renewal starts), got 1",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "{text}");
        }
    }

    #[test]
    fn parse_errors_name_the_key() {
        let e = parse("rack = \"r1\"\ndata_dir = \"/x\"\nstatus_interval = 5").unwrap_err();
        assert_eq!(e.key, "status_interval", "{e}");
        assert!(
            e.message.starts_with("unknown field `status_interval`"),
            "{e}"
        );

        let e =
            parse("rack = \"r1\"\ndata_dir = \"/x\"\nstatus_interval_secs = \"ten\"").unwrap_err();
        assert_eq!(e.key, "status_interval_secs", "{e}");

        let e = parse("rack = \"r1\"\ndata_dir = \"/x\"\ncoordinators = [\"a:1\", 7]").unwrap_err();
        assert_eq!(e.key, "coordinators[1]", "{e}");

        let e = parse("rack = ").unwrap_err();
        assert_eq!(e.key, "-", "{e}");
        assert!(
            e.to_string().starts_with("/etc/metalfleet/agent.toml: -: "),
            "{e}"
        );
    }

    #[test]
    fn overlong_socket_path_is_refused() {
        let long = format!("/{}", "d".repeat(120));
        let e = parse(&format!("rack = \"r1\"\ndata_dir = \"{long}\"")).unwrap_err();
        assert_eq!(e.key, "data_dir", "{e}");
        let e = parse(&format!(
            "rack = \"r1\"\ndata_dir = \"/x\"\ncontrol_socket = \"{long}/s\""
        ))
        .unwrap_err();
        assert_eq!(e.key, "control_socket", "{e}");
    }

    #[test]
    fn endpoints_split() {
        assert_eq!(
            split_endpoint("10.0.0.1:7445").unwrap(),
            ("10.0.0.1".into(), 7445)
        );
        assert_eq!(split_endpoint("[::1]:7445").unwrap(), ("::1".into(), 7445));
        assert_eq!(
            split_endpoint("c1.example:1").unwrap(),
            ("c1.example".into(), 1)
        );
        for bad in [
            "", ":7445", "::1:7445", "[x]:1", "a:0", "a:70000", "a b:1", "a",
        ] {
            assert!(split_endpoint(bad).is_err(), "{bad}");
        }
    }
}
