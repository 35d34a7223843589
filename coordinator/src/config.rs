//! Coordinator configuration: TOML read into a raw shape (unknown keys rejected), then
//! validated into [`Config`]. Every error names the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default cluster name.
pub const DEFAULT_CLUSTER_NAME: &str = "metalfleet";
/// Default API listen address (HTTPS).
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7443";
/// Default Raft listen address (QUIC, UDP).
pub const DEFAULT_RAFT_LISTEN: &str = "127.0.0.1:7444";
/// Default fleet (rack agent) listen address (QUIC, UDP).
pub const DEFAULT_FLEET_LISTEN: &str = "127.0.0.1:7445";
/// Default request body limit for the REST API.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default time one call of the identify hook may take.
pub const DEFAULT_IDENTIFY_HOOK_TIMEOUT_SECS: u64 = 10;
/// Default VLAN pool tenant networks take their 802.1Q ids from (inclusive).
pub const DEFAULT_VLAN_POOL: (u16, u16) = (100, 999);

/// A configuration problem, naming where it is.
#[derive(Debug, thiserror::Error)]
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
    id: Option<u64>,
    cluster_name: Option<String>,
    data_dir: Option<PathBuf>,
    api_listen: Option<String>,
    raft_listen: Option<String>,
    api_url: Option<String>,
    raft_addr: Option<String>,
    fleet_listen: Option<String>,
    fleet_addr: Option<String>,
    sealing_key_file: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    identify_hook_url: Option<String>,
    identify_hook_timeout_secs: Option<u64>,
    vlan_pool: Option<String>,
}

/// Validated coordinator configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages).
    pub file: PathBuf,
    /// This coordinator's Raft member id (unique, non-zero).
    pub id: u64,
    /// Cluster name (in the CA's subject and Raft config).
    pub cluster_name: String,
    /// Holds `raft.redb`, `tls/` and by default the sealing key.
    pub data_dir: PathBuf,
    /// Socket the HTTPS REST API listens on.
    pub api_listen: SocketAddr,
    /// UDP socket the QUIC Raft endpoint listens on.
    pub raft_listen: SocketAddr,
    /// URL other coordinators and clients use to reach the API (`https://host:port`).
    pub api_url: String,
    /// `host:port` other coordinators use for Raft.
    pub raft_addr: String,
    /// UDP socket the QUIC fleet endpoint (rack agents) listens on.
    pub fleet_listen: SocketAddr,
    /// `host:port` rack agents use to reach this coordinator.
    pub fleet_addr: String,
    /// File holding the at-rest sealing key (base64, 32 bytes, mode 0600).
    pub sealing_key_file: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// The "node identify" service the leader calls (`POST`) when a node is identified or
    /// lands in the discovered pool (`None`: no hook). `http://` or `https://`; an https
    /// hook must present a certificate signed by the cluster CA.
    pub identify_hook_url: Option<reqwest::Url>,
    /// How long one call of the hook may take.
    pub identify_hook_timeout: std::time::Duration,
    /// 802.1Q VLAN ids tenant networks get (inclusive range, `"100-999"` in the file); a
    /// deleted network's VLAN returns to it.
    pub vlan_pool: (u16, u16),
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text (`path` is used in messages and for relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |key: &str, message: String| ConfigError {
            file: file.clone(),
            key: key.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            let key = msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                .map(str::to_owned)
                .unwrap_or_else(|| "-".to_owned());
            err(&key, msg)
        })?;
        let id = raw
            .id
            .ok_or_else(|| err("id", "required: this coordinator's Raft member id".into()))?;
        if id == 0 {
            return Err(err("id", "must be greater than 0".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let data_dir = raw
            .data_dir
            .ok_or_else(|| err("data_dir", "required".into()))?;
        let data_dir = if data_dir.is_relative() {
            base.join(data_dir)
        } else {
            data_dir
        };
        let parse_addr =
            |key: &str, v: Option<String>, default: &str| -> Result<SocketAddr, ConfigError> {
                let s = v.unwrap_or_else(|| default.to_owned());
                s.parse()
                    .map_err(|_| err(key, format!("{s:?} is not an ip:port socket address")))
            };
        let api_listen = parse_addr("api_listen", raw.api_listen, DEFAULT_API_LISTEN)?;
        let raft_listen = parse_addr("raft_listen", raw.raft_listen, DEFAULT_RAFT_LISTEN)?;
        let api_url = raw
            .api_url
            .unwrap_or_else(|| format!("https://{api_listen}"));
        if !api_url.starts_with("https://") {
            return Err(err(
                "api_url",
                format!("{api_url:?} must start with https://"),
            ));
        }
        let raft_addr = raw.raft_addr.unwrap_or_else(|| raft_listen.to_string());
        let fleet_listen = parse_addr("fleet_listen", raw.fleet_listen, DEFAULT_FLEET_LISTEN)?;
        let fleet_addr = raw.fleet_addr.unwrap_or_else(|| fleet_listen.to_string());
        if fleet_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(err(
                "fleet_addr",
                format!("{fleet_addr:?} must be host:port"),
            ));
        }
        if raft_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(err("raft_addr", format!("{raft_addr:?} must be host:port")));
        }
        let cluster_name = raw
            .cluster_name
            .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_owned());
        if cluster_name.is_empty() || cluster_name.len() > 63 {
            return Err(err("cluster_name", "must be 1..=63 characters".into()));
        }
        let sealing_key_file = match raw.sealing_key_file {
            Some(p) if p.is_relative() => base.join(p),
            Some(p) => p,
            None => data_dir.join("sealing.key"),
        };
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(err("max_body_bytes", "must be at least 1024".into()));
        }
        let identify_hook_url = match raw.identify_hook_url {
            None => None,
            Some(u) => {
                let url = reqwest::Url::parse(&u)
                    .map_err(|e| err("identify_hook_url", format!("{u:?} is not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(err(
                        "identify_hook_url",
                        format!("{u:?} must be an http:// or https:// URL with a host"),
                    ));
                }
                Some(url)
            }
        };
        let timeout_secs = raw
            .identify_hook_timeout_secs
            .unwrap_or(DEFAULT_IDENTIFY_HOOK_TIMEOUT_SECS);
        if !(1..=600).contains(&timeout_secs) {
            return Err(err(
                "identify_hook_timeout_secs",
                "must be 1..=600 seconds".into(),
            ));
        }
        if raw.identify_hook_timeout_secs.is_some() && identify_hook_url.is_none() {
            return Err(err(
                "identify_hook_timeout_secs",
                "set without identify_hook_url".into(),
            ));
        }
        let vlan_pool = match raw.vlan_pool {
            None => DEFAULT_VLAN_POOL,
            Some(text) => parse_vlan_pool(&text).map_err(|m| err("vlan_pool", m))?,
        };
        Ok(Config {
            file: path.to_owned(),
            id,
            cluster_name,
            data_dir,
            api_listen,
            raft_listen,
            api_url,
            raft_addr,
            fleet_listen,
            fleet_addr,
            sealing_key_file,
            max_body_bytes,
            identify_hook_url,
            identify_hook_timeout: std::time::Duration::from_secs(timeout_secs),
            vlan_pool,
        })
    }

    /// Directory of TLS material.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// Host names/IPs this coordinator's certificate must cover.
    pub fn cert_sans(&self) -> Vec<String> {
        let mut sans = vec![
            host_of(&self.raft_addr),
            host_of(self.api_url.trim_start_matches("https://")),
        ];
        sans.push("localhost".into());
        sans.sort();
        sans.dedup();
        sans
    }
}

/// Parses a VLAN pool `"<first>-<last>"` within 1..=4094.
fn parse_vlan_pool(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} must be <first>-<last> with 1 <= first <= last <= 4094");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b || b > 4094 {
        return Err(bad());
    }
    Ok((a, b))
}

/// Host part of `host:port` (brackets of IPv6 literals removed).
pub fn host_of(addr: &str) -> String {
    let hostport = addr.split('/').next().unwrap_or(addr);
    hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport)
        .trim_matches(['[', ']'])
        .to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_and_key() {
        let p = Path::new("/etc/mf/c.toml");
        let e = Config::parse(p, "id = 1\ndata_dir = '/x'\nbogus = 3\n").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("/etc/mf/c.toml", "bogus"),
            "{e}"
        );
        let e = Config::parse(p, "data_dir = '/x'\n").unwrap_err();
        assert_eq!(e.key, "id");
        let e = Config::parse(p, "id = 1\ndata_dir = '/x'\napi_listen = 'nope'\n").unwrap_err();
        assert_eq!(e.key, "api_listen");
        assert!(
            e.to_string().starts_with("/etc/mf/c.toml: api_listen: "),
            "{e}"
        );
        let e = Config::parse(p, "id = 1\ndata_dir = '/x'\napi_url = 'http://a:1'\n").unwrap_err();
        assert_eq!(e.key, "api_url");
    }

    #[test]
    fn identify_hook_keys() {
        let p = Path::new("/etc/mf/c.toml");
        let base = "id = 1\ndata_dir = '/x'\n";
        let c = Config::parse(p, base).unwrap();
        assert!(c.identify_hook_url.is_none());
        let c = Config::parse(
            p,
            &format!("{base}identify_hook_url = 'http://127.0.0.1:9/identify'\n"),
        )
        .unwrap();
        assert_eq!(
            c.identify_hook_url.unwrap().as_str(),
            "http://127.0.0.1:9/identify"
        );
        assert_eq!(
            c.identify_hook_timeout,
            std::time::Duration::from_secs(DEFAULT_IDENTIFY_HOOK_TIMEOUT_SECS)
        );
        for (extra, key) in [
            ("identify_hook_url = 'ftp://h/x'", "identify_hook_url"),
            ("identify_hook_url = 'not a url'", "identify_hook_url"),
            (
                "identify_hook_url = 'http://h/x'\nidentify_hook_timeout_secs = 0",
                "identify_hook_timeout_secs",
            ),
            (
                "identify_hook_timeout_secs = 5",
                "identify_hook_timeout_secs",
            ),
        ] {
            let e = Config::parse(p, &format!("{base}{extra}\n")).unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.key.as_str()),
                ("/etc/mf/c.toml", key),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = Config::parse(Path::new("/etc/mf/c.toml"), "id = 2\ndata_dir = 'data'\n").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/mf/data"));
        assert_eq!(
            c.sealing_key_file,
            PathBuf::from("/etc/mf/data/sealing.key")
        );
        assert_eq!(c.api_url, format!("https://{DEFAULT_API_LISTEN}"));
        assert_eq!(c.raft_addr, DEFAULT_RAFT_LISTEN);
        assert!(c.cert_sans().contains(&"127.0.0.1".to_owned()));
        assert_eq!(c.vlan_pool, DEFAULT_VLAN_POOL);
    }

    #[test]
    fn vlan_pool_is_checked() {
        let p = Path::new("/etc/mf/c.toml");
        let base = "id = 1\ndata_dir = '/x'\n";
        let c = Config::parse(p, &format!("{base}vlan_pool = '200-210'\n")).unwrap();
        assert_eq!(c.vlan_pool, (200, 210));
        for bad in ["'0-10'", "'10-5'", "'1-4095'", "'100'", "'a-b'"] {
            let e = Config::parse(p, &format!("{base}vlan_pool = {bad}\n")).unwrap_err();
            assert_eq!(e.key, "vlan_pool", "{bad}: {e}");
        }
    }
}
