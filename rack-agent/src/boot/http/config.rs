//! The `[http]` section of the agent's config: raw TOML shape, validation, defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::boot::{from_table, ConfigCtx, KeyError};

/// Default HTTP listen address (iPXE scripts, assets, node API).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default directory of local assets, under the agent's data directory.
pub const DEFAULT_ASSETS_DIR: &str = "assets";
/// Default directory of the remote-asset cache, under the agent's data directory.
pub const DEFAULT_CACHE_DIR: &str = "assets-cache";
/// Default directory of autoinstall templates, under the agent's data directory.
pub const DEFAULT_TEMPLATES_DIR: &str = "templates";
/// Default upper bound of `GET /node/v1/next?wait=` (seconds).
pub const DEFAULT_LONG_POLL_MAX_SECS: u64 = 60;
/// Hard ceiling for `long_poll_max_secs`: beyond it proxies and NATs drop idle connections.
pub const MAX_LONG_POLL_MAX_SECS: u64 = 3600;
/// Default size limit of a node API request body (bytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default timeout for downloading one remote asset (seconds).
pub const DEFAULT_DOWNLOAD_TIMEOUT_SECS: u64 = 600;
/// Default CA bundle trusted for `https://` remote assets (Debian's `ca-certificates`).
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Default kernel command line of the discovery microkernel.
pub const DEFAULT_DISCOVERY_CMDLINE: &str = "console=tty0 console=ttyS0,115200n8";
/// Default discovery kernel (asset name).
pub const DEFAULT_DISCOVERY_KERNEL: &str = "microkernel/vmlinuz";
/// Default discovery initrd (asset name).
pub const DEFAULT_DISCOVERY_INITRD: &str = "microkernel/initrd.img";

/// What the iPXE script of a MAC the rack does not know does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownMacs {
    /// Boot the discovery microkernel, which checks the machine in (`POST /node/v1/checkin`).
    Discovery,
    /// `exit`: hand the machine back to its firmware's next boot device.
    Exit,
}

/// Where a kernel or initrd comes from: an asset name (served under `/assets/`) or an absolute
/// `http(s)://` URL the client fetches directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetRef {
    /// A name under `/assets/` of this server.
    Name(String),
    /// An absolute URL.
    Url(String),
}

impl AssetRef {
    /// Classifies `s`: `http://` / `https://` prefixes are URLs, anything else an asset name
    /// (leading slashes dropped).
    pub fn parse(s: &str) -> AssetRef {
        if is_absolute_url(s) {
            AssetRef::Url(s.to_owned())
        } else {
            AssetRef::Name(s.trim_start_matches('/').to_owned())
        }
    }

    /// The URL a client at `base_url` fetches.
    pub fn url(&self, base_url: &str) -> String {
        match self {
            AssetRef::Url(u) => u.clone(),
            AssetRef::Name(n) => format!("{base_url}{}{n}", crate::boot::ASSETS_PREFIX),
        }
    }
}

/// True for `http://...` and `https://...` (case-insensitive scheme).
pub fn is_absolute_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The discovery microkernel (`[http.discovery]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Kernel: asset name or absolute URL.
    pub kernel: AssetRef,
    /// Initrd: asset name or absolute URL. Its last path segment names it for iPXE
    /// (`initrd --name`) and for the kernel's `initrd=` argument (UEFI).
    pub initrd: AssetRef,
    /// Kernel command line; the script appends `metalfleet.agent=<base URL>` and
    /// `metalfleet.mac=<mac>`.
    pub cmdline: String,
}

/// A remote asset (`[[http.assets]]`): fetched once from `url`, verified against `sha256`,
/// cached as `<cache_dir>/sha256/<hex>` and served as `/assets/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAsset {
    /// Name under `/assets/`.
    pub name: String,
    /// Where to fetch it (`http://` or `https://`).
    pub url: String,
    /// Expected SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// Validated `[http]` section.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Plain HTTP listen address (iPXE clients, the node-agent, Prometheus).
    pub listen: SocketAddr,
    /// HTTPS listen address (UEFI HTTPS boot, iPXE with TLS); present only together with
    /// `tls_cert` and `tls_key`.
    pub https: Option<HttpsConfig>,
    /// Local assets, served under `/assets/` (path-confined).
    pub assets_dir: PathBuf,
    /// Cache of remote assets, by SHA-256.
    pub cache_dir: PathBuf,
    /// Autoinstall templates (minijinja), rendered at `/node/v1/autoinstall/<mac>`.
    pub templates_dir: PathBuf,
    /// What an unknown MAC's iPXE script does.
    pub unknown_macs: UnknownMacs,
    /// Upper bound of a `GET /node/v1/next` long poll.
    pub long_poll_max_secs: u64,
    /// Size limit of node API request bodies.
    pub max_body_bytes: usize,
    /// Timeout of one remote-asset download.
    pub download_timeout_secs: u64,
    /// PEM bundle of CAs trusted for `https://` remote assets (absent file: none trusted).
    pub ca_bundle: PathBuf,
    /// The discovery microkernel.
    pub discovery: DiscoveryConfig,
    /// Remote assets catalogue.
    pub assets: Vec<RemoteAsset>,
}

/// The HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key (PKCS#8), PEM.
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    https_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    assets_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    templates_dir: Option<PathBuf>,
    unknown_macs: Option<UnknownMacs>,
    long_poll_max_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    download_timeout_secs: Option<u64>,
    ca_bundle: Option<PathBuf>,
    discovery: Option<RawDiscovery>,
    #[serde(default)]
    assets: Vec<RawAsset>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsset {
    name: String,
    url: String,
    sha256: String,
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, KeyError> {
    s.parse()
        .map_err(|_| KeyError::new(key, format!("expected ip:port, got {s:?}")))
}

/// An asset name is a relative path of safe segments: no `..`, no empty segment, no control
/// characters, so it maps onto a URL and a file path the same way.
pub fn valid_asset_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        })
}

impl HttpConfig {
    /// Validates the section (`table` is its content; keys in errors are relative to it).
    pub fn from_toml(table: toml::Table, ctx: &ConfigCtx) -> Result<HttpConfig, KeyError> {
        let raw: RawHttp = from_table(table)?;
        let listen = parse_addr("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let https = match (raw.https_listen, raw.tls_cert, raw.tls_key) {
            (None, None, None) => None,
            (Some(l), Some(cert), Some(key)) => Some(HttpsConfig {
                listen: parse_addr("https_listen", &l)?,
                cert: ctx.resolve(cert),
                key: ctx.resolve(key),
            }),
            (None, _, _) => {
                return Err(KeyError::new(
                    "https_listen",
                    "required when tls_cert/tls_key are set",
                ))
            }
            (_, None, _) => {
                return Err(KeyError::new(
                    "tls_cert",
                    "required when https_listen is set",
                ))
            }
            (_, _, None) => {
                return Err(KeyError::new(
                    "tls_key",
                    "required when https_listen is set",
                ))
            }
        };
        let under_data = |p: Option<PathBuf>, default: &str| {
            p.map(|p| ctx.resolve(p))
                .unwrap_or_else(|| ctx.data_dir.join(default))
        };
        let long_poll_max_secs = raw.long_poll_max_secs.unwrap_or(DEFAULT_LONG_POLL_MAX_SECS);
        if long_poll_max_secs == 0 || long_poll_max_secs > MAX_LONG_POLL_MAX_SECS {
            return Err(KeyError::new(
                "long_poll_max_secs",
                format!("must be 1..={MAX_LONG_POLL_MAX_SECS}, got {long_poll_max_secs}"),
            ));
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(KeyError::new(
                "max_body_bytes",
                format!("must be at least 1024, got {max_body_bytes}"),
            ));
        }
        let download_timeout_secs = raw
            .download_timeout_secs
            .unwrap_or(DEFAULT_DOWNLOAD_TIMEOUT_SECS);
        if download_timeout_secs == 0 {
            return Err(KeyError::new("download_timeout_secs", "must be at least 1"));
        }

        let d = raw.discovery.unwrap_or(RawDiscovery {
            kernel: None,
            initrd: None,
            cmdline: None,
        });
        let asset_ref = |key: &str, v: Option<String>, default: &str| {
            let s = v.unwrap_or_else(|| default.to_owned());
            let r = AssetRef::parse(&s);
            match &r {
                AssetRef::Name(n) if !valid_asset_name(n) => Err(KeyError::new(
                    key,
                    format!("{s:?} is neither an http(s) URL nor a valid asset name"),
                )),
                _ if s.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(KeyError::new(
                    key,
                    "must not contain whitespace or control characters",
                )),
                _ => Ok(r),
            }
        };
        let cmdline = d
            .cmdline
            .unwrap_or_else(|| DEFAULT_DISCOVERY_CMDLINE.to_owned());
        if cmdline.chars().any(char::is_control) {
            return Err(KeyError::new(
                "discovery.cmdline",
                "must not contain control characters (it is one iPXE script line)",
            ));
        }
        let discovery = DiscoveryConfig {
            kernel: asset_ref("discovery.kernel", d.kernel, DEFAULT_DISCOVERY_KERNEL)?,
            initrd: asset_ref("discovery.initrd", d.initrd, DEFAULT_DISCOVERY_INITRD)?,
            cmdline,
        };

        let mut assets: Vec<RemoteAsset> = Vec::with_capacity(raw.assets.len());
        for (i, a) in raw.assets.into_iter().enumerate() {
            let key = |k: &str| format!("assets[{i}].{k}");
            let name = a.name.trim_start_matches('/').to_owned();
            if !valid_asset_name(&name) {
                return Err(KeyError::new(
                    key("name"),
                    format!(
                        "{:?}: expected a relative path of [A-Za-z0-9._+-] segments",
                        a.name
                    ),
                ));
            }
            if assets.iter().any(|x| x.name == name) {
                return Err(KeyError::new(
                    key("name"),
                    format!("{name:?} is listed twice"),
                ));
            }
            if !is_absolute_url(&a.url) || a.url.chars().any(|c| c.is_whitespace()) {
                return Err(KeyError::new(
                    key("url"),
                    format!("{:?}: expected an http:// or https:// URL", a.url),
                ));
            }
            let sha256 = a.sha256.to_ascii_lowercase();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(KeyError::new(
                    key("sha256"),
                    "expected 64 hex digits (the SHA-256 of the content)",
                ));
            }
            assets.push(RemoteAsset {
                name,
                url: a.url,
                sha256,
            });
        }

        Ok(HttpConfig {
            listen,
            https,
            assets_dir: under_data(raw.assets_dir, DEFAULT_ASSETS_DIR),
            cache_dir: under_data(raw.cache_dir, DEFAULT_CACHE_DIR),
            templates_dir: under_data(raw.templates_dir, DEFAULT_TEMPLATES_DIR),
            unknown_macs: raw.unknown_macs.unwrap_or(UnknownMacs::Discovery),
            long_poll_max_secs,
            max_body_bytes,
            download_timeout_secs,
            ca_bundle: raw
                .ca_bundle
                .map(|p| ctx.resolve(p))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_BUNDLE)),
            discovery,
            assets,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx() -> ConfigCtx {
        ConfigCtx {
            base_dir: PathBuf::from("/etc/mf"),
            data_dir: PathBuf::from("/var/lib/mf"),
        }
    }

    fn parse(s: &str) -> Result<HttpConfig, KeyError> {
        HttpConfig::from_toml(toml::from_str(s).unwrap(), &ctx())
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(c.https.is_none());
        assert_eq!(c.assets_dir, PathBuf::from("/var/lib/mf/assets"));
        assert_eq!(c.cache_dir, PathBuf::from("/var/lib/mf/assets-cache"));
        assert_eq!(c.templates_dir, PathBuf::from("/var/lib/mf/templates"));
        assert_eq!(c.unknown_macs, UnknownMacs::Discovery);
        assert_eq!(c.long_poll_max_secs, DEFAULT_LONG_POLL_MAX_SECS);
        assert_eq!(
            c.discovery.kernel,
            AssetRef::Name(DEFAULT_DISCOVERY_KERNEL.into())
        );
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"
listen = "127.0.0.1:8080"
https_listen = "127.0.0.1:8443"
tls_cert = "tls/boot.crt"
tls_key = "/abs/boot.key"
assets_dir = "assets"
unknown_macs = "exit"
long_poll_max_secs = 30
[discovery]
kernel = "https://mirror.example/vmlinuz"
initrd = "mk/initrd.img"
cmdline = "console=ttyS0"
[[assets]]
name = "debian-13/vmlinuz"
url = "https://mirror.example/linux"
sha256 = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
"#,
        )
        .unwrap();
        let h = c.https.unwrap();
        assert_eq!(h.cert, PathBuf::from("/etc/mf/tls/boot.crt"));
        assert_eq!(h.key, PathBuf::from("/abs/boot.key"));
        assert_eq!(c.assets_dir, PathBuf::from("/etc/mf/assets"));
        assert_eq!(c.unknown_macs, UnknownMacs::Exit);
        assert_eq!(
            c.discovery.kernel,
            AssetRef::Url("https://mirror.example/vmlinuz".into())
        );
        assert_eq!(c.assets[0].sha256.len(), 64);
        assert!(c.assets[0].sha256.starts_with("abcdef"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"nope\"", "listen"),
            ("bogus = 1", "bogus"),
            ("https_listen = \"127.0.0.1:1\"", "tls_cert"),
            ("tls_cert = \"a\"\ntls_key = \"b\"", "https_listen"),
            ("unknown_macs = \"maybe\"", "unknown_macs"),
            ("long_poll_max_secs = 0", "long_poll_max_secs"),
            ("[discovery]\nkernel = \"../x\"", "discovery.kernel"),
            ("[discovery]\nfoo = 1", "discovery.foo"),
            (
                "[[assets]]\nname = \"a\"\nurl = \"ftp://x\"\nsha256 = \"00\"",
                "assets[0].url",
            ),
            (
                "[[assets]]\nname = \"a\"\nurl = \"http://x\"\nsha256 = \"00\"",
                "assets[0].sha256",
            ),
            (
                "[[assets]]\nname = \"../a\"\nurl = \"http://x\"\nsha256 = \"00\"",
                "assets[0].name",
            ),
        ];
        for (toml, key) in cases {
            let e = parse(toml).unwrap_err();
            assert_eq!(e.key, key, "{toml}: {e}");
        }
    }

    #[test]
    fn asset_names() {
        assert!(valid_asset_name("debian-13/vmlinuz"));
        assert!(!valid_asset_name("a//b"));
        assert!(!valid_asset_name("a/../b"));
        assert!(!valid_asset_name(""));
        assert!(!valid_asset_name("a b"));
    }
}
