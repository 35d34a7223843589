//! The `[bmc]` config section: raw TOML shape, defaults, validation and per-address overrides.
//!
//! Every key is optional; the values shown are the defaults:
//!
//! ```toml
//! [bmc]
//! simulate = false              # true: every BMC is an in-memory simulator (demos)
//! ipmi_cipher_suite = 17        # ipmitool -C; ipmi_sim needs 3
//! ipmitool = "ipmitool"         # program to run
//! timeout_secs = 20             # per attempt of one operation
//! retries = 3                   # extra attempts after a transient failure
//! backoff_ms = 500              # first retry delay, doubled per retry ...
//! backoff_max_ms = 10000        # ... up to this
//! power_wait_secs = 60          # how long a power on/off is polled until it lands
//! redfish_verify = "ca"         # "ca" | "insecure" | "pin"
//! redfish_ca_bundle = "/etc/ssl/certs/ca-certificates.crt"  # relative to the config file
//! redfish_auth = "basic"        # "basic" | "session"
//!
//! [[bmc.overrides]]             # per BMC address; any of the keys below
//! address = "10.0.5.21"
//! ipmi_cipher_suite = 3
//! timeout_secs = 5
//! redfish_verify = "pin"
//! redfish_pin_sha256 = "ab12..."  # SHA-256 of the BMC certificate (DER), hex, ':' allowed
//! redfish_ca_bundle = "bmc-ca.pem"
//! redfish_auth = "session"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::boot::{from_table, ConfigCtx, KeyError};

/// Default IPMI cipher suite: 17 (RAKP-HMAC-SHA256, AES-CBC-128), the strongest most BMCs
/// speak. ipmi_sim only does 3 (SHA1).
pub const DEFAULT_IPMI_CIPHER_SUITE: u8 = 17;
/// Default program for IPMI.
pub const DEFAULT_IPMITOOL: &str = "ipmitool";
/// Default time limit of one attempt of one operation.
pub const DEFAULT_TIMEOUT_SECS: u64 = 20;
/// Default number of retries after a transient failure.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default first retry delay.
pub const DEFAULT_BACKOFF_MS: u64 = 500;
/// Default cap of the retry delay.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
/// Default bound on polling a power change (sushy-tools applies changes after up to 11 s,
/// real servers take tens of seconds to power off gracefully).
pub const DEFAULT_POWER_WAIT_SECS: u64 = 60;
/// What the guard allows an attempt beyond the driver's own `timeout`.
pub const ATTEMPT_SLACK: Duration = Duration::from_secs(5);
/// Default CA bundle for Redfish TLS verification (Debian's `ca-certificates`).
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the Redfish driver checks a BMC's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedfishVerify {
    /// Chain to a CA in `redfish_ca_bundle`, name checked against the address.
    Ca(PathBuf),
    /// Accept any certificate (lab only: anyone on the path can read the password).
    Insecure,
    /// Accept exactly the certificate whose DER SHA-256 is this (32 bytes); for self-signed
    /// BMC certificates. Names and validity dates are not checked; handshake signatures are.
    Pin([u8; 32]),
}

/// How the Redfish driver authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedfishAuth {
    /// HTTP basic auth on every request.
    Basic,
    /// A Redfish session (`POST SessionService/Sessions`, `X-Auth-Token`), renewed on 401.
    Session,
}

/// Settings for one BMC: the section's values with that address's override applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcSettings {
    /// `ipmitool -C` cipher suite.
    pub ipmi_cipher_suite: u8,
    /// Program run for IPMI.
    pub ipmitool: PathBuf,
    /// Limit of one attempt of one operation (also passed to ipmitool as `-N`).
    pub timeout: Duration,
    /// Bound on polling a power change until it lands.
    pub power_wait: Duration,
    /// Redfish certificate check.
    pub redfish_verify: RedfishVerify,
    /// Redfish authentication.
    pub redfish_auth: RedfishAuth,
}

/// Validated `[bmc]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcConfig {
    /// Every BMC is a simulator. Key `simulate`, default false.
    pub simulate: bool,
    /// Defaults for every BMC (keys at the section's top level).
    pub defaults: BmcSettings,
    /// Retries after a transient failure (timeouts, session exhaustion, 5xx), never after an
    /// auth failure or refusal. Key `retries`, 0..=20, default [`DEFAULT_RETRIES`].
    pub retries: u32,
    /// First retry delay; doubled per retry up to `backoff_max`. Key `backoff_ms`, default
    /// [`DEFAULT_BACKOFF_MS`].
    pub backoff: Duration,
    /// Cap of the retry delay. Key `backoff_max_ms`, default [`DEFAULT_BACKOFF_MAX_MS`].
    pub backoff_max: Duration,
    /// Per-address settings (`[[bmc.overrides]]`), in file order; the first match wins.
    pub overrides: Vec<(String, BmcSettings)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBmcConfig {
    simulate: Option<bool>,
    ipmi_cipher_suite: Option<u8>,
    ipmitool: Option<PathBuf>,
    timeout_secs: Option<u64>,
    retries: Option<u32>,
    backoff_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    power_wait_secs: Option<u64>,
    redfish_verify: Option<String>,
    redfish_ca_bundle: Option<PathBuf>,
    redfish_pin_sha256: Option<String>,
    redfish_auth: Option<RedfishAuth>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    address: String,
    ipmi_cipher_suite: Option<u8>,
    timeout_secs: Option<u64>,
    power_wait_secs: Option<u64>,
    redfish_verify: Option<String>,
    redfish_ca_bundle: Option<PathBuf>,
    redfish_pin_sha256: Option<String>,
    redfish_auth: Option<RedfishAuth>,
}

/// Parses a SHA-256 fingerprint: 64 hex digits, `:` separators and case ignored.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let clean: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(clean.trim()).map_err(|e| format!("not hex: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes; a SHA-256 fingerprint has 32", bytes.len()))
}

fn verify(
    key_prefix: &str,
    mode: Option<&str>,
    bundle: Option<PathBuf>,
    pin: Option<&str>,
    inherited: &RedfishVerify,
    ctx: &ConfigCtx,
) -> Result<RedfishVerify, KeyError> {
    let pin = pin
        .map(|p| {
            parse_pin(p).map_err(|m| KeyError::new(format!("{key_prefix}redfish_pin_sha256"), m))
        })
        .transpose()?;
    let bundle = bundle.map(|b| ctx.resolve(b));
    let mode = match mode {
        Some(m) => m.to_owned(),
        // A pin or bundle alone selects its mode; otherwise keep what is inherited.
        None if pin.is_some() => "pin".to_owned(),
        None if bundle.is_some() => "ca".to_owned(),
        None => return Ok(inherited.clone()),
    };
    match mode.as_str() {
        "ca" => Ok(RedfishVerify::Ca(bundle.unwrap_or_else(
            || match inherited {
                RedfishVerify::Ca(p) => p.clone(),
                _ => PathBuf::from(DEFAULT_CA_BUNDLE),
            },
        ))),
        "insecure" => Ok(RedfishVerify::Insecure),
        "pin" => match pin {
            Some(p) => Ok(RedfishVerify::Pin(p)),
            None => match inherited {
                RedfishVerify::Pin(p) => Ok(RedfishVerify::Pin(*p)),
                _ => Err(KeyError::new(
                    format!("{key_prefix}redfish_pin_sha256"),
                    "required when redfish_verify = \"pin\"",
                )),
            },
        },
        other => Err(KeyError::new(
            format!("{key_prefix}redfish_verify"),
            format!("{other:?} is not one of \"ca\", \"insecure\", \"pin\""),
        )),
    }
}

fn secs(key: &str, v: u64) -> Result<Duration, KeyError> {
    if (1..=3600).contains(&v) {
        Ok(Duration::from_secs(v))
    } else {
        Err(KeyError::new(key, format!("{v} is outside 1..=3600")))
    }
}

fn suite(key: &str, v: u8) -> Result<u8, KeyError> {
    // IPMI 2.0 defines cipher suites 0..=19 (table 22-20).
    if v <= 19 {
        Ok(v)
    } else {
        Err(KeyError::new(
            key,
            format!("{v} is not an IPMI cipher suite (0..=19)"),
        ))
    }
}

impl BmcConfig {
    /// Validates the section (`ctx` resolves relative CA bundle paths).
    pub fn from_toml(table: toml::Table, ctx: &ConfigCtx) -> Result<BmcConfig, KeyError> {
        let raw: RawBmcConfig = from_table(table)?;
        let base = BmcConfig::default();
        let defaults = BmcSettings {
            ipmi_cipher_suite: suite(
                "ipmi_cipher_suite",
                raw.ipmi_cipher_suite.unwrap_or(DEFAULT_IPMI_CIPHER_SUITE),
            )?,
            ipmitool: match raw.ipmitool {
                Some(p) if p.as_os_str().is_empty() => {
                    return Err(KeyError::new("ipmitool", "must not be empty"))
                }
                Some(p) => p,
                None => PathBuf::from(DEFAULT_IPMITOOL),
            },
            timeout: secs(
                "timeout_secs",
                raw.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
            )?,
            power_wait: secs(
                "power_wait_secs",
                raw.power_wait_secs.unwrap_or(DEFAULT_POWER_WAIT_SECS),
            )?,
            redfish_verify: verify(
                "",
                raw.redfish_verify.as_deref(),
                raw.redfish_ca_bundle,
                raw.redfish_pin_sha256.as_deref(),
                &base.defaults.redfish_verify,
                ctx,
            )?,
            redfish_auth: raw.redfish_auth.unwrap_or(RedfishAuth::Basic),
        };
        let retries = raw.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > 20 {
            return Err(KeyError::new(
                "retries",
                format!("{retries} is outside 0..=20"),
            ));
        }
        let backoff = Duration::from_millis(raw.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS));
        let backoff_max =
            Duration::from_millis(raw.backoff_max_ms.unwrap_or(DEFAULT_BACKOFF_MAX_MS));
        if backoff_max < backoff {
            return Err(KeyError::new(
                "backoff_max_ms",
                "must be at least backoff_ms",
            ));
        }
        let mut overrides = Vec::new();
        for (i, o) in raw.overrides.into_iter().enumerate() {
            let p = format!("overrides[{i}].");
            if o.address.trim().is_empty() {
                return Err(KeyError::new(format!("{p}address"), "must not be empty"));
            }
            let s = BmcSettings {
                ipmi_cipher_suite: match o.ipmi_cipher_suite {
                    Some(v) => suite(&format!("{p}ipmi_cipher_suite"), v)?,
                    None => defaults.ipmi_cipher_suite,
                },
                ipmitool: defaults.ipmitool.clone(),
                timeout: match o.timeout_secs {
                    Some(v) => secs(&format!("{p}timeout_secs"), v)?,
                    None => defaults.timeout,
                },
                power_wait: match o.power_wait_secs {
                    Some(v) => secs(&format!("{p}power_wait_secs"), v)?,
                    None => defaults.power_wait,
                },
                redfish_verify: verify(
                    &p,
                    o.redfish_verify.as_deref(),
                    o.redfish_ca_bundle,
                    o.redfish_pin_sha256.as_deref(),
                    &defaults.redfish_verify,
                    ctx,
                )?,
                redfish_auth: o.redfish_auth.unwrap_or(defaults.redfish_auth),
            };
            overrides.push((o.address, s));
        }
        Ok(BmcConfig {
            simulate: raw.simulate.unwrap_or(false),
            defaults,
            retries,
            backoff,
            backoff_max,
            overrides,
        })
    }

    /// The settings for the BMC at `address` (exact match of an override's `address`).
    pub fn for_address(&self, address: &str) -> BmcSettings {
        self.overrides
            .iter()
            .find(|(a, _)| a == address)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| self.defaults.clone())
    }

    /// The guard's retry policy for the BMC at `address`.
    pub fn retry_policy(&self, address: &str) -> crate::bmc::RetryPolicy {
        let settings = self.for_address(address);
        crate::bmc::RetryPolicy {
            retries: self.retries,
            backoff: self.backoff,
            backoff_max: self.backoff_max,
            // Drivers enforce `timeout` themselves and report it in the BMC's words; the
            // guard's limit is the backstop for a driver that hangs anyway.
            attempt_timeout: settings.timeout + ATTEMPT_SLACK,
        }
    }
}

impl Default for BmcConfig {
    fn default() -> BmcConfig {
        BmcConfig {
            simulate: false,
            defaults: BmcSettings {
                ipmi_cipher_suite: DEFAULT_IPMI_CIPHER_SUITE,
                ipmitool: PathBuf::from(DEFAULT_IPMITOOL),
                timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
                power_wait: Duration::from_secs(DEFAULT_POWER_WAIT_SECS),
                redfish_verify: RedfishVerify::Ca(PathBuf::from(DEFAULT_CA_BUNDLE)),
                redfish_auth: RedfishAuth::Basic,
            },
            retries: DEFAULT_RETRIES,
            backoff: Duration::from_millis(DEFAULT_BACKOFF_MS),
            backoff_max: Duration::from_millis(DEFAULT_BACKOFF_MAX_MS),
            overrides: Vec::new(),
        }
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

    fn load(text: &str) -> Result<BmcConfig, KeyError> {
        BmcConfig::from_toml(toml::from_str(text).unwrap(), &ctx())
    }

    #[test]
    fn defaults() {
        let c = load("").unwrap();
        assert_eq!(c, BmcConfig::default());
        assert_eq!(c.defaults.ipmi_cipher_suite, 17);
        assert_eq!(c.retries, 3);
        assert_eq!(
            c.defaults.redfish_verify,
            RedfishVerify::Ca(PathBuf::from(DEFAULT_CA_BUNDLE))
        );
    }

    #[test]
    fn overrides_inherit_and_replace() {
        let pin = "AB:".repeat(31) + "AB";
        let c = load(&format!(
            "ipmi_cipher_suite = 17\ntimeout_secs = 7\nredfish_ca_bundle = \"ca.pem\"\n\
             [[overrides]]\naddress = \"10.0.0.5\"\nipmi_cipher_suite = 3\nredfish_pin_sha256 = \"{pin}\"\n\
             [[overrides]]\naddress = \"10.0.0.6\"\nredfish_verify = \"insecure\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.defaults.redfish_verify,
            RedfishVerify::Ca(PathBuf::from("/etc/mf/ca.pem"))
        );
        let a = c.for_address("10.0.0.5");
        assert_eq!(a.ipmi_cipher_suite, 3);
        assert_eq!(a.timeout, Duration::from_secs(7));
        assert_eq!(a.redfish_verify, RedfishVerify::Pin([0xab; 32]));
        assert_eq!(
            c.for_address("10.0.0.6").redfish_verify,
            RedfishVerify::Insecure
        );
        assert_eq!(c.for_address("10.0.0.7"), c.defaults);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            load("ipmi_cipher_suite = 20").unwrap_err().key,
            "ipmi_cipher_suite"
        );
        assert_eq!(
            load("ipmi_cipher_suite = 300").unwrap_err().key,
            "ipmi_cipher_suite"
        );
        assert_eq!(
            load("redfish_verify = \"maybe\"").unwrap_err().key,
            "redfish_verify"
        );
        assert_eq!(
            load("redfish_verify = \"pin\"").unwrap_err().key,
            "redfish_pin_sha256"
        );
        assert_eq!(
            load("redfish_pin_sha256 = \"abcd\"").unwrap_err().key,
            "redfish_pin_sha256"
        );
        assert_eq!(load("timeout_secs = 0").unwrap_err().key, "timeout_secs");
        assert_eq!(load("retries = 21").unwrap_err().key, "retries");
        assert_eq!(
            load("backoff_ms = 10\nbackoff_max_ms = 5").unwrap_err().key,
            "backoff_max_ms"
        );
        assert_eq!(load("colour = 1").unwrap_err().key, "colour");
        assert_eq!(
            load("[[overrides]]\naddress = \"x\"\nipmi_cipher_suite = 99")
                .unwrap_err()
                .key,
            "overrides[0].ipmi_cipher_suite"
        );
        assert_eq!(
            load("[[overrides]]\naddress = \"x\"\nbogus = 1")
                .unwrap_err()
                .key,
            "overrides[0].bogus"
        );
        assert_eq!(
            load("redfish_auth = \"kerberos\"").unwrap_err().key,
            "redfish_auth"
        );
    }
}
