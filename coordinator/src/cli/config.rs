//! `metalctl` configuration in two phases: TOML into a raw shape (unknown keys refused),
//! then merged with command-line flags and the environment into a validated
//! [`ClientConfig`]. Every error names where the bad value came from (the file or the flag)
//! and the key.
//!
//! ```toml
//! coordinators = ["https://10.0.0.1:7443", "https://10.0.0.2:7443"]
//! token_file = "token"          # or: token = "mf_..."
//! ca_cert = "ca.crt"            # a coordinator's data_dir/tls/ca.crt
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variable naming the config file (same as `--config`).
pub const CONFIG_ENV: &str = "METALCTL_CONFIG";
/// Environment variable holding the bearer token (same as `--token`).
pub const TOKEN_ENV: &str = "METALFLEET_TOKEN";
/// Config file location under the user's config directory (`$XDG_CONFIG_HOME` or
/// `~/.config`).
pub const DEFAULT_CONFIG_RELATIVE: &str = "metalctl/config.toml";
/// What errors about flag values name as their source.
pub const COMMAND_LINE: &str = "command line";

/// A configuration problem, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file, or [`COMMAND_LINE`] for flags and environment variables.
    pub file: String,
    /// The offending key (`coordinators[1]`, `--ca-cert`), or `-` for the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// The file as written; every key optional because flags may supply it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Base URLs of the coordinators' REST APIs, tried in order.
    coordinators: Option<Vec<String>>,
    /// Bearer token (`mf_...`).
    token: Option<String>,
    /// File holding the bearer token (relative to the config file's directory).
    token_file: Option<PathBuf>,
    /// The cluster CA certificate, PEM (relative to the config file's directory).
    ca_cert: Option<PathBuf>,
}

/// Values given on the command line or in the environment; each wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config` / `$METALCTL_CONFIG`: must exist when given.
    pub config: Option<PathBuf>,
    /// `--coordinator` (repeatable): replaces the file's list.
    pub coordinators: Vec<String>,
    /// `--token` / `$METALFLEET_TOKEN`.
    pub token: Option<String>,
    /// `--ca-cert` (relative to the working directory).
    pub ca_cert: Option<PathBuf>,
}

/// Validated client configuration.
#[derive(Clone)]
pub struct ClientConfig {
    /// Coordinator API base URLs (`https://host:port`, no trailing slash), in failover order.
    pub coordinators: Vec<String>,
    /// Bearer token secret.
    pub token: String,
    /// Where the CA certificate was read from (for messages).
    pub ca_cert: PathBuf,
    /// The CA certificate(s), PEM: the only roots trusted.
    pub ca_pem: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("coordinators", &self.coordinators)
            .field("token", &"<redacted>")
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

/// `$XDG_CONFIG_HOME/metalctl/config.toml`, else `$HOME/.config/metalctl/config.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(dir.join(DEFAULT_CONFIG_RELATIVE))
}

/// Where a value came from, for error messages and for resolving relative paths.
struct Source {
    /// File name or [`COMMAND_LINE`].
    file: String,
    /// Key name in that source.
    key: String,
    /// Directory relative paths are resolved against (`None`: the working directory).
    base: Option<PathBuf>,
}

impl Source {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: self.key.clone(),
            message: message.into(),
        }
    }
    fn path(&self, p: &Path) -> PathBuf {
        match &self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.to_owned(),
        }
    }
}

impl ClientConfig {
    /// Reads the config file (the one named by `o.config`, else `default_path` if it exists)
    /// and merges `o` over it.
    pub fn resolve(o: &Overrides, default_path: Option<PathBuf>) -> Result<Self, ConfigError> {
        let (file, raw) = match (&o.config, default_path) {
            (Some(p), _) => (Some(p.clone()), Some(read_file(p)?)),
            (None, Some(p)) if p.exists() => (Some(p.clone()), Some(read_file(&p)?)),
            (None, Some(p)) => (Some(p), None),
            (None, None) => (None, None),
        };
        let file_name = match (&file, &raw) {
            (Some(p), Some(_)) => p.display().to_string(),
            (Some(p), None) => format!("{} (no such file)", p.display()),
            (None, _) => "(no config file: $HOME is not set)".to_owned(),
        };
        let raw = raw.unwrap_or_default();
        let from_file = |key: &str| Source {
            file: file_name.clone(),
            key: key.to_owned(),
            base: Some(
                file.as_ref()
                    .and_then(|f| f.parent())
                    .map(Path::to_owned)
                    .unwrap_or_default(),
            ),
        };
        let from_flag = |key: &str| Source {
            file: COMMAND_LINE.to_owned(),
            key: key.to_owned(),
            base: None,
        };
        let missing = |key: &str, flag: &str, what: &str| {
            from_file(key).err(format!(
                "required ({what}); set {key} in the config file or pass {flag}"
            ))
        };

        let listed: Vec<(Source, &String)> = if o.coordinators.is_empty() {
            raw.coordinators
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, u)| (from_file(&format!("coordinators[{i}]")), u))
                .collect()
        } else {
            o.coordinators
                .iter()
                .map(|u| (from_flag("--coordinator"), u))
                .collect()
        };
        if listed.is_empty() {
            return Err(missing(
                "coordinators",
                "--coordinator",
                "the coordinators' API URLs",
            ));
        }
        let coordinators = listed
            .into_iter()
            .map(|(src, u)| check_url(&src, u))
            .collect::<Result<Vec<_>, _>>()?;

        let token = match (&o.token, &raw.token, &raw.token_file) {
            (Some(t), _, _) => check_token(&from_flag("--token"), t)?,
            (None, Some(_), Some(_)) => {
                return Err(from_file("token_file").err("set either token or token_file, not both"))
            }
            (None, Some(t), None) => check_token(&from_file("token"), t)?,
            (None, None, Some(p)) => {
                let src = from_file("token_file");
                let path = src.path(p);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| src.err(format!("cannot read {}: {e}", path.display())))?;
                check_token(&src, &text)?
            }
            (None, None, None) => {
                return Err(missing(
                    "token",
                    &format!("--token (or ${TOKEN_ENV})"),
                    "a bearer token",
                ))
            }
        };

        let (src, ca) = match (&o.ca_cert, &raw.ca_cert) {
            (Some(p), _) => (from_flag("--ca-cert"), p),
            (None, Some(p)) => (from_file("ca_cert"), p),
            (None, None) => {
                return Err(missing(
                    "ca_cert",
                    "--ca-cert",
                    "the cluster CA certificate, a coordinator's data_dir/tls/ca.crt",
                ))
            }
        };
        let ca_cert = src.path(ca);
        let ca_pem = std::fs::read_to_string(&ca_cert)
            .map_err(|e| src.err(format!("cannot read {}: {e}", ca_cert.display())))?;
        if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(src.err(format!("{} holds no PEM certificate", ca_cert.display())));
        }
        Ok(ClientConfig {
            coordinators,
            token,
            ca_cert,
            ca_pem,
        })
    }
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        key: "-".into(),
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Phase one: TOML text into the raw shape, naming the key on failure.
fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let file = path.display().to_string();
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| {
            format!(
                " (line {})",
                text[..s.start.min(text.len())].matches('\n').count() + 1
            )
        })
        .unwrap_or_default()
    };
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: file.clone(),
        key: "-".into(),
        message: format!("{}{}", e.message().trim(), line_of(e.span())),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().trim().to_owned();
        let unknown = msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next());
        let top = path.is_empty() || path == ".";
        let key = match unknown {
            Some(k) if top => k.to_owned(),
            Some(k) if path == k || path.ends_with(&format!(".{k}")) => path.clone(),
            Some(k) => format!("{path}.{k}"),
            None if top => "-".to_owned(),
            None => path.clone(),
        };
        ConfigError {
            file,
            key,
            message: format!("{msg}{}", line_of(inner.span())),
        }
    })
}

fn check_url(src: &Source, u: &str) -> Result<String, ConfigError> {
    let u = u.trim().trim_end_matches('/');
    if !u.starts_with("https://") {
        return Err(src.err(format!("{u:?} must start with https://")));
    }
    match reqwest::Url::parse(u) {
        Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(u.to_owned()),
        Ok(_) => Err(src.err(format!("{u:?} has no host"))),
        Err(e) => Err(src.err(format!("{u:?} is not a URL: {e}"))),
    }
}

fn check_token(src: &Source, t: &str) -> Result<String, ConfigError> {
    let t = t.trim();
    if t.is_empty() {
        return Err(src.err("the token is empty"));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(src.err("the token must be printable ASCII without spaces"));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.crt"), PEM).unwrap();
        d
    }

    fn with_file(d: &tempfile::TempDir, text: &str) -> Overrides {
        let p = d.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        Overrides {
            config: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn file_values_and_relative_paths() {
        let d = dir();
        std::fs::write(d.path().join("tok"), "mf_abc\n").unwrap();
        let o = with_file(
            &d,
            "coordinators = ['https://a:7443/', 'https://b:7443']\ntoken_file = 'tok'\nca_cert = 'ca.crt'\n",
        );
        let c = ClientConfig::resolve(&o, None).unwrap();
        assert_eq!(c.coordinators, ["https://a:7443", "https://b:7443"]);
        assert_eq!(c.token, "mf_abc");
        assert_eq!(c.ca_cert, d.path().join("ca.crt"));
        assert!(!format!("{c:?}").contains("mf_abc"));
    }

    #[test]
    fn flags_win_and_missing_default_file_is_fine() {
        let d = dir();
        let o = Overrides {
            config: None,
            coordinators: vec!["https://x:1".into()],
            token: Some("mf_t".into()),
            ca_cert: Some(d.path().join("ca.crt")),
        };
        let c = ClientConfig::resolve(&o, Some(d.path().join("absent.toml"))).unwrap();
        assert_eq!(c.coordinators, ["https://x:1"]);
        assert_eq!(c.token, "mf_t");
    }

    #[test]
    fn errors_name_file_and_key() {
        let d = dir();
        let o = with_file(&d, "coordinators = ['https://a:1']\nbogus = 1\n");
        let e = ClientConfig::resolve(&o, None).unwrap_err();
        assert_eq!(e.key, "bogus", "{e}");
        assert!(e.file.ends_with("config.toml"), "{e}");

        let o = with_file(&d, "coordinators = ['http://a:1']\ntoken = 'x'\n");
        let e = ClientConfig::resolve(&o, None).unwrap_err();
        assert_eq!(e.key, "coordinators[0]", "{e}");

        let o = with_file(&d, "coordinators = 'https://a:1'\n");
        let e = ClientConfig::resolve(&o, None).unwrap_err();
        assert_eq!(e.key, "coordinators", "{e}");

        let o = with_file(
            &d,
            "coordinators = ['https://a:1']\ntoken = 'x'\ntoken_file = 'y'\n",
        );
        let e = ClientConfig::resolve(&o, None).unwrap_err();
        assert_eq!(e.key, "token_file", "{e}");

        let o = with_file(&d, "coordinators = ['https://a:1']\ntoken = 'x'\n");
        let e = ClientConfig::resolve(&o, None).unwrap_err();
        assert_eq!(e.key, "ca_cert", "{e}");

        let mut o = with_file(&d, "coordinators = ['https://a:1']\ntoken = 'x'\n");
        o.ca_cert = Some(d.path().join("config.toml"));
        let e = ClientConfig::resolve(&o, None).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            (COMMAND_LINE, "--ca-cert")
        );

        let o = Overrides {
            config: Some(d.path().join("nope.toml")),
            ..Default::default()
        };
        let e = ClientConfig::resolve(&o, None).unwrap_err();
        assert!(e.file.ends_with("nope.toml"), "{e}");
    }
}
