//! The `[tftp]` config section: raw TOML shape, defaults and validation.
//!
//! Every key is optional; the values shown are the defaults:
//!
//! ```toml
//! [tftp]
//! listen = "0.0.0.0:69"
//! # root = "/srv/tftp"    # default <data_dir>/tftp; relative to the config file's dir
//! max_blksize = 1468       # RFC 2348 cap (8..=65464)
//! max_windowsize = 64      # RFC 7440 cap (1..=32768)
//! timeout_ms = 1000        # retransmission timeout without an RFC 2349 timeout option
//! retries = 5              # retransmissions without progress before giving up
//! max_transfers = 1024     # concurrent transfers; beyond: ERROR 0 "server busy"
//! cache_bytes = 268435456  # in-memory file cache bound; 0 disables it
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::boot::{from_table, ConfigCtx, KeyError};

/// Default listen address: every IPv4 address, the well-known TFTP port (RFC 1350).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:69";
/// Default root directory, below the agent's data directory.
pub const DEFAULT_ROOT_DIR: &str = "tftp";
/// Default cap on a negotiated RFC 2348 `blksize`: 1468 bytes of data + 4 TFTP + 8 UDP + 20 IP
/// = 1500, one Ethernet MTU, so blocks are never IP-fragmented (PXE ROMs handle fragments
/// badly).
pub const DEFAULT_MAX_BLKSIZE: u16 = 1468;
/// Smallest `blksize` RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest `blksize` RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65_464;
/// Default cap on a negotiated RFC 7440 `windowsize`.
pub const DEFAULT_MAX_WINDOWSIZE: u16 = 64;
/// Largest accepted `max_windowsize`: a window of at most half the 16-bit block number space
/// keeps every ACK's block number unambiguous across rollover.
pub const MAX_WINDOWSIZE: u16 = 32_768;
/// Default retransmission timeout (RFC 1350 leaves it to the implementation; iPXE and
/// tftp-hpa use about a second).
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default number of retransmissions of one window before a transfer is abandoned.
pub const DEFAULT_RETRIES: u32 = 5;
/// Default limit of concurrent transfers.
pub const DEFAULT_MAX_TRANSFERS: usize = 1024;
/// Default size bound of the in-memory file cache (256 MiB).
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// The section as written (every key optional; unknown keys refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTftpConfig {
    listen: Option<String>,
    root: Option<PathBuf>,
    max_blksize: Option<u64>,
    max_windowsize: Option<u64>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    max_transfers: Option<usize>,
    cache_bytes: Option<u64>,
}

/// Validated `[tftp]` section.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// UDP address requests arrive on (RFC 1350 port 69). Each transfer then uses its own
    /// ephemeral port on the same IP (the RFC 1350 transfer ID). Key `listen`, default
    /// [`DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    /// Directory files are served from; requests are confined to it (symlinks leaving it are
    /// refused). Created at bind when missing. Key `root`, default `<data_dir>/tftp`.
    pub root: PathBuf,
    /// Upper bound of the RFC 2348 `blksize` option; larger requests are lowered to it in the
    /// OACK. Key `max_blksize`, 8..=65464, default [`DEFAULT_MAX_BLKSIZE`].
    pub max_blksize: u16,
    /// Upper bound of the RFC 7440 `windowsize` option (blocks sent before waiting for an ACK).
    /// Key `max_windowsize`, 1..=32768, default [`DEFAULT_MAX_WINDOWSIZE`].
    pub max_windowsize: u16,
    /// Retransmission timeout when the client sends no RFC 2349 `timeout` option. Key
    /// `timeout_ms`, 10..=255000, default [`DEFAULT_TIMEOUT_MS`].
    pub timeout: Duration,
    /// Retransmissions of one window (or OACK) without progress before the transfer is
    /// abandoned. Key `retries`, 1..=100, default [`DEFAULT_RETRIES`].
    pub retries: u32,
    /// Concurrent transfers; a request beyond it gets ERROR 0 "server busy". Key
    /// `max_transfers`, at least 1, default [`DEFAULT_MAX_TRANSFERS`].
    pub max_transfers: usize,
    /// Bytes of file content kept in memory (keyed by path, length and mtime) so hot boot
    /// files are not re-read per transfer; files larger than this are streamed from disk in
    /// chunks; 0 disables the cache. Key `cache_bytes`, default [`DEFAULT_CACHE_BYTES`].
    pub cache_bytes: u64,
}

fn range(key: &str, v: u64, lo: u64, hi: u64) -> Result<u64, KeyError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(KeyError::new(
            key,
            format!("{v} is outside the allowed range {lo}..={hi}"),
        ))
    }
}

impl TftpConfig {
    /// Validates the section (`ctx` resolves `root` and supplies the data directory).
    pub fn from_toml(table: toml::Table, ctx: &ConfigCtx) -> Result<TftpConfig, KeyError> {
        let raw: RawTftpConfig = from_table(table)?;
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            KeyError::new(
                "listen",
                format!("{listen_text:?} is not an address:port ({e})"),
            )
        })?;
        let root = match raw.root {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(KeyError::new("root", "must not be empty"))
            }
            Some(p) => ctx.resolve(p),
            None => ctx.data_dir.join(DEFAULT_ROOT_DIR),
        };
        let max_blksize = range(
            "max_blksize",
            raw.max_blksize.unwrap_or(DEFAULT_MAX_BLKSIZE.into()),
            MIN_BLKSIZE.into(),
            MAX_BLKSIZE.into(),
        )?;
        let max_windowsize = range(
            "max_windowsize",
            raw.max_windowsize.unwrap_or(DEFAULT_MAX_WINDOWSIZE.into()),
            1,
            MAX_WINDOWSIZE.into(),
        )?;
        let timeout_ms = range(
            "timeout_ms",
            raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            10,
            255_000,
        )?;
        let retries = range(
            "retries",
            raw.retries.unwrap_or(DEFAULT_RETRIES).into(),
            1,
            100,
        )?;
        let max_transfers = raw.max_transfers.unwrap_or(DEFAULT_MAX_TRANSFERS);
        if max_transfers == 0 {
            return Err(KeyError::new("max_transfers", "must be at least 1"));
        }
        Ok(TftpConfig {
            listen,
            root,
            max_blksize: u16::try_from(max_blksize).unwrap_or(DEFAULT_MAX_BLKSIZE),
            max_windowsize: u16::try_from(max_windowsize).unwrap_or(DEFAULT_MAX_WINDOWSIZE),
            timeout: Duration::from_millis(timeout_ms),
            retries: u32::try_from(retries).unwrap_or(DEFAULT_RETRIES),
            max_transfers,
            cache_bytes: raw.cache_bytes.unwrap_or(DEFAULT_CACHE_BYTES),
        })
    }

    /// The defaults, rooted under `data_dir`, listening on `listen` (tests and tools).
    pub fn with_defaults(listen: SocketAddr, data_dir: &std::path::Path) -> TftpConfig {
        TftpConfig {
            listen,
            root: data_dir.join(DEFAULT_ROOT_DIR),
            max_blksize: DEFAULT_MAX_BLKSIZE,
            max_windowsize: DEFAULT_MAX_WINDOWSIZE,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            retries: DEFAULT_RETRIES,
            max_transfers: DEFAULT_MAX_TRANSFERS,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
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

    fn load(text: &str) -> Result<TftpConfig, KeyError> {
        TftpConfig::from_toml(
            toml::from_str(text).map_err(|e| KeyError::new("toml", e.to_string()))?,
            &ctx(),
        )
    }

    #[test]
    fn defaults() {
        let c = load("").unwrap();
        assert_eq!(c.listen, "0.0.0.0:69".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("/var/lib/metalfleet/tftp"));
        assert_eq!(c.max_blksize, 1468);
        assert_eq!(c.max_windowsize, 64);
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.retries, 5);
        assert_eq!(c.max_transfers, 1024);
        assert_eq!(c.cache_bytes, 256 << 20);
    }

    #[test]
    fn explicit_values_and_relative_root() {
        let c = load(
            "listen = \"127.0.0.1:6969\"\nroot = \"boot\"\nmax_blksize = 8192\nmax_windowsize = 16\ntimeout_ms = 250\nretries = 3\nmax_transfers = 10\ncache_bytes = 0\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 6969);
        assert_eq!(c.root, PathBuf::from("/etc/metalfleet/boot"));
        assert_eq!(c.max_blksize, 8192);
        assert_eq!(c.max_windowsize, 16);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.cache_bytes, 0);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(load("max_blksize = 7").unwrap_err().key, "max_blksize");
        assert_eq!(load("max_blksize = 65465").unwrap_err().key, "max_blksize");
        assert_eq!(
            load("max_windowsize = 0").unwrap_err().key,
            "max_windowsize"
        );
        assert_eq!(load("listen = \"nope\"").unwrap_err().key, "listen");
        assert_eq!(load("max_transfers = 0").unwrap_err().key, "max_transfers");
        assert_eq!(load("retries = 0").unwrap_err().key, "retries");
        assert_eq!(load("root = \"\"").unwrap_err().key, "root");
        assert_eq!(load("colour = 1").unwrap_err().key, "colour");
        assert_eq!(
            load("max_blksize = \"big\"").unwrap_err().key,
            "max_blksize"
        );
    }
}
