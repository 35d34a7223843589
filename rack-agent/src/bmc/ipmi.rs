//! The IPMI driver: `ipmitool -I lanplus` as a child process per operation, its output parsed
//! into typed results.
//!
//! The password goes to the child in the `IPMI_PASSWORD` environment variable (`-E`), never on
//! argv (argv is readable by every user through `/proc`). `-v` is passed so that failures say
//! why (`RAKP 2 HMAC is invalid` for a wrong password, `Get Auth Capabilities error` for no
//! answer); it does not change the standard output of the commands we parse. The child is
//! killed when the operation's future is dropped.

use std::process::Stdio;
use std::time::Duration;

use protocol::fleet::BmcAccess;

use super::config::BmcSettings;
use super::{
    wait_for_power, AddressSource, Bmc, BmcError, BmcFuture, BootDevice, BootOverride, DriverKind,
    FruInfo, LanConfig, Operation, PowerAction, PowerState,
};

/// The IPMI LAN channel `lan print` reads.
pub const LAN_CHANNEL: u8 = 1;
/// Default RMCP+ port.
pub const IPMI_PORT: u16 = 623;
/// ipmitool's noise line with `-v`; dropped from error messages.
const IANA_NOISE: &str = "Loading IANA PEN Registry...";

/// A BMC driven through `ipmitool -I lanplus`.
pub struct IpmiBmc {
    address: String,
    host: String,
    port: u16,
    username: String,
    password: String,
    settings: BmcSettings,
}

impl std::fmt::Debug for IpmiBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiBmc")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("cipher_suite", &self.settings.ipmi_cipher_suite)
            .finish_non_exhaustive()
    }
}

/// Splits `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
pub fn split_host_port(address: &str, default_port: u16) -> Option<(String, u16)> {
    let a = address.trim();
    if a.is_empty() {
        return None;
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    if a.matches(':').count() > 1 {
        // A bare IPv6 address.
        return Some((a.to_owned(), default_port));
    }
    match a.split_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((a.to_owned(), default_port)),
    }
}

impl IpmiBmc {
    /// A driver for `access` with `settings` (cipher suite, timeout, program).
    pub fn new(access: &BmcAccess, settings: &BmcSettings) -> Result<IpmiBmc, BmcError> {
        let (host, port) =
            split_host_port(&access.address, IPMI_PORT).ok_or_else(|| BmcError::Config {
                address: access.address.clone(),
                message: "not a host, host:port or [ipv6]:port".into(),
            })?;
        let username = access.username.clone().ok_or_else(|| BmcError::Config {
            address: access.address.clone(),
            message: "no IPMI username in the BMC access data".into(),
        })?;
        Ok(IpmiBmc {
            address: access.address.clone(),
            host,
            port,
            username,
            password: access.password.clone().unwrap_or_default(),
            settings: settings.clone(),
        })
    }

    /// Runs `ipmitool ... <args>`; stdout on success, a classified error otherwise.
    async fn run(&self, op: Operation, args: &[&str]) -> Result<String, BmcError> {
        let secs = self.settings.timeout.as_secs().max(1);
        // ipmitool's own retransmissions (UDP): two tries of about a third of our limit each,
        // so it reports a dead BMC in its own words (`Get Auth Capabilities error`) before we
        // kill it; at least 2 s per try, since a BMC's chassis control can be slow to answer
        // and a reply that arrives after the retransmission is lost ("Request Match NOT FOUND").
        let per_try = (secs / 3).max(2).to_string();
        let mut cmd = tokio::process::Command::new(&self.settings.ipmitool);
        cmd.args(["-v", "-I", "lanplus", "-H", &self.host, "-p"])
            .arg(self.port.to_string())
            .args(["-U", &self.username, "-E", "-C"])
            .arg(self.settings.ipmi_cipher_suite.to_string())
            .args(["-N", &per_try, "-R", "1"])
            .args(args)
            .env("IPMI_PASSWORD", &self.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| BmcError::Tool {
            program: self.settings.ipmitool.display().to_string(),
            source,
        })?;
        // Slack over ipmitool's own timeouts so it can report them itself.
        let limit = self.settings.timeout + Duration::from_secs(2);
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => {
                return Err(BmcError::Tool {
                    program: self.settings.ipmitool.display().to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(BmcError::Timeout {
                    address: self.address.clone(),
                    operation: op,
                    after: limit,
                    message: String::new(),
                })
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(classify(&self.address, op, &stderr, self.settings.timeout))
    }
}

/// The BMC's message: ipmitool's stderr with its `-v` noise line dropped and lines joined with
/// `; ` (the words themselves verbatim).
pub fn bmc_message(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != IANA_NOISE)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Maps a failed ipmitool run to an error by what it printed.
pub fn classify(address: &str, op: Operation, stderr: &str, timeout: Duration) -> BmcError {
    let message = bmc_message(stderr);
    let lower = message.to_ascii_lowercase();
    let address = address.to_owned();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "rakp 2 hmac is invalid",
        "unauthorized name",
        "invalid user name",
        "unable to read password",
        "invalid password",
        "rakp 4 message has invalid",
        "invalid role",
    ]) {
        BmcError::Auth { address, message }
    } else if has(&["insufficient resources for session", "no session slot"]) {
        BmcError::SessionExhausted { address, message }
    } else if has(&[
        "invalid authentication algorithm",
        "invalid integrity algorithm",
        "invalid confidentiality algorithm",
        "invalid cipher suite",
    ]) {
        BmcError::Config {
            address,
            message: format!("cipher suite refused (set ipmi_cipher_suite): {message}"),
        }
    } else if has(&[
        "get auth capabilities error",
        "request match not found",
        "no response",
        "timeout",
        "unable to establish",
    ]) {
        BmcError::Timeout {
            address,
            operation: op,
            after: timeout,
            message,
        }
    } else if has(&["busy", "out of space", "temporarily"]) {
        BmcError::Transient {
            address,
            operation: op,
            message,
        }
    } else {
        BmcError::Rejected {
            address,
            operation: op,
            message,
        }
    }
}

/// `key : value` lines of ipmitool's reports (`fru print`, `lan print`, `bootparam`), keys and
/// values trimmed; a leading `- ` on a line is dropped.
fn fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("- ");
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Parses `chassis power status`: `Chassis Power is on`.
pub fn parse_power(text: &str) -> Option<PowerState> {
    let l = text.to_ascii_lowercase();
    if l.contains("chassis power is on") {
        Some(PowerState::On)
    } else if l.contains("chassis power is off") {
        Some(PowerState::Off)
    } else {
        None
    }
}

/// Parses `chassis bootparam get 5` (boot flags).
pub fn parse_bootparam(text: &str) -> Option<BootOverride> {
    let f = fields(text);
    let selector = field(&f, "Boot Device Selector")?.to_ascii_lowercase();
    let device = if selector.contains("pxe") {
        BootDevice::Pxe
    } else if selector.contains("hard-drive") || selector.contains("hard drive") {
        BootDevice::Disk
    } else if selector.contains("cd/dvd") || selector.contains("cdrom") {
        BootDevice::Cdrom
    } else if selector.contains("bios setup") {
        BootDevice::BiosSetup
    } else {
        BootDevice::Default
    };
    let l = text.to_ascii_lowercase();
    Some(BootOverride {
        device,
        uefi: l.contains("bios efi boot"),
        persistent: l.contains("options apply to all future boots"),
    })
}

/// Parses `fru print 0`.
pub fn parse_fru(text: &str) -> FruInfo {
    let f = fields(text);
    let get = |k: &str| field(&f, k).map(str::to_owned);
    let product_serial = get("Product Serial");
    let chassis_serial = get("Chassis Serial");
    let board_serial = get("Board Serial");
    FruInfo {
        serial: product_serial
            .or_else(|| chassis_serial.clone())
            .or_else(|| board_serial.clone()),
        manufacturer: get("Product Manufacturer").or_else(|| get("Board Mfg")),
        product: get("Product Name").or_else(|| get("Board Product")),
        chassis_serial,
        board_serial,
        asset_tag: get("Product Asset Tag"),
    }
}

fn ipv4(v: Option<&str>) -> Option<std::net::Ipv4Addr> {
    v.and_then(|s| s.parse().ok())
        .filter(|ip: &std::net::Ipv4Addr| !ip.is_unspecified())
}

/// Parses `lan print <channel>`.
pub fn parse_lan(text: &str) -> LanConfig {
    let f = fields(text);
    // MAC addresses contain ':' too: take everything after the first "MAC Address" colon.
    let mac = text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("MAC Address")?;
        let v = rest
            .trim_start()
            .strip_prefix(':')?
            .trim()
            .to_ascii_lowercase();
        (v != "00:00:00:00:00:00" && !v.is_empty()).then_some(v)
    });
    let source = match field(&f, "IP Address Source").map(str::to_ascii_lowercase) {
        Some(s) if s.contains("static") => AddressSource::Static,
        Some(s) if s.contains("dhcp") => AddressSource::Dhcp,
        _ => AddressSource::Other,
    };
    LanConfig {
        ip: ipv4(field(&f, "IP Address")),
        netmask: ipv4(field(&f, "Subnet Mask")),
        gateway: ipv4(field(&f, "Default Gateway IP")),
        mac,
        source,
    }
}

fn bootdev_args(boot: BootOverride) -> Vec<String> {
    let dev = match boot.device {
        BootDevice::Pxe => "pxe",
        BootDevice::Disk => "disk",
        BootDevice::Cdrom => "cdrom",
        BootDevice::BiosSetup => "bios",
        BootDevice::Default => "none",
    };
    let mut args = vec!["chassis".to_owned(), "bootdev".to_owned(), dev.to_owned()];
    let mut opts = Vec::new();
    if boot.uefi {
        opts.push("efiboot");
    }
    if boot.persistent {
        opts.push("persistent");
    }
    if !opts.is_empty() {
        args.push(format!("options={}", opts.join(",")));
    }
    args
}

impl Bmc for IpmiBmc {
    fn driver(&self) -> DriverKind {
        DriverKind::Ipmi
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn power_status(&self) -> BmcFuture<'_, PowerState> {
        Box::pin(async move {
            let op = Operation::PowerStatus;
            let out = self.run(op, &["chassis", "power", "status"]).await?;
            parse_power(&out).ok_or_else(|| BmcError::Protocol {
                address: self.address.clone(),
                operation: op,
                message: format!("no power state in {:?}", out.trim()),
            })
        })
    }

    fn power(&self, action: PowerAction) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let verb = match action {
                PowerAction::On => "on",
                PowerAction::Off => "off",
                PowerAction::Cycle => "cycle",
                PowerAction::Reset => "reset",
                PowerAction::SoftOff => "soft",
            };
            self.run(Operation::Power(action), &["chassis", "power", verb])
                .await?;
            if let Some(want) = action.target() {
                wait_for_power(self, want, self.settings.power_wait).await?;
            }
            Ok(())
        })
    }

    fn set_boot(&self, boot: BootOverride) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let args = bootdev_args(boot);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run(Operation::SetBoot, &refs).await?;
            Ok(())
        })
    }

    fn boot_override(&self) -> BmcFuture<'_, BootOverride> {
        Box::pin(async move {
            let op = Operation::GetBoot;
            let out = self.run(op, &["chassis", "bootparam", "get", "5"]).await?;
            parse_bootparam(&out).ok_or_else(|| BmcError::Protocol {
                address: self.address.clone(),
                operation: op,
                message: "no Boot Device Selector in `chassis bootparam get 5`".into(),
            })
        })
    }

    fn fru(&self) -> BmcFuture<'_, FruInfo> {
        Box::pin(async move {
            let out = self.run(Operation::Fru, &["fru", "print", "0"]).await?;
            Ok(parse_fru(&out))
        })
    }

    fn lan_config(&self) -> BmcFuture<'_, LanConfig> {
        Box::pin(async move {
            let ch = LAN_CHANNEL.to_string();
            let out = self
                .run(Operation::LanConfig, &["lan", "print", &ch])
                .await?;
            Ok(parse_lan(&out))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    // Captured from ipmitool 1.8.19 against ipmi_sim (openipmi 2.0.33), see bmc_ipmi.rs.
    const FRU: &str = include_str!("fixtures/ipmi_sim_fru_print.txt");
    const LAN: &str = include_str!("fixtures/ipmi_sim_lan_print.txt");
    const BOOT_PXE: &str = include_str!("fixtures/ipmi_sim_bootparam_pxe.txt");
    const BOOT_DISK: &str = include_str!("fixtures/ipmi_sim_bootparam_disk.txt");
    const WRONG_PASSWORD: &str = include_str!("fixtures/ipmi_sim_wrong_password.stderr");
    const CIPHER_17: &str = include_str!("fixtures/ipmi_sim_cipher17.stderr");
    const NO_ANSWER: &str = include_str!("fixtures/ipmi_no_answer.stderr");

    #[test]
    fn power_status() {
        assert_eq!(parse_power("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(parse_power("Chassis Power is off\n"), Some(PowerState::Off));
        assert_eq!(parse_power("Chassis Power Control: Up/On\n"), None);
    }

    #[test]
    fn fru_print() {
        let f = parse_fru(FRU);
        assert_eq!(f.serial.as_deref(), Some("SN-METAL-0042"));
        assert_eq!(f.chassis_serial.as_deref(), Some("CHS-SN-42"));
        assert_eq!(f.manufacturer.as_deref(), Some("Metal Inc"));
        assert_eq!(f.product.as_deref(), Some("MF-1000"));
        assert_eq!(f.asset_tag.as_deref(), Some("ASSET7"));
        // Without a product area the chassis serial is the system serial.
        let f = parse_fru(" Chassis Serial        : CH1\n Board Serial : B1\n");
        assert_eq!(f.serial.as_deref(), Some("CH1"));
    }

    #[test]
    fn lan_print() {
        let l = parse_lan(LAN);
        assert_eq!(l.ip, Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(l.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(l.gateway, Some(Ipv4Addr::new(10, 1, 2, 1)));
        assert_eq!(l.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(l.source, AddressSource::Static);
        let dhcp = parse_lan("IP Address Source       : DHCP Address\nIP Address : 0.0.0.0\n");
        assert_eq!(dhcp.source, AddressSource::Dhcp);
        assert_eq!(dhcp.ip, None);
    }

    #[test]
    fn bootparam() {
        let b = parse_bootparam(BOOT_PXE).unwrap();
        assert_eq!(b.device, BootDevice::Pxe);
        assert!(!b.uefi && !b.persistent, "ipmi_sim keeps no boot flags");
        assert_eq!(parse_bootparam(BOOT_DISK).unwrap().device, BootDevice::Disk);
        let efi = "   - Options apply to all future boots\n   - BIOS EFI boot \n   - Boot Device Selector : Force PXE\n";
        let b = parse_bootparam(efi).unwrap();
        assert!(b.uefi && b.persistent);
        assert_eq!(
            parse_bootparam("   - Boot Device Selector : No override\n")
                .unwrap()
                .device,
            BootDevice::Default
        );
        assert!(parse_bootparam("garbage").is_none());
    }

    #[test]
    fn bootdev_arguments() {
        let a = bootdev_args(BootOverride {
            device: BootDevice::Pxe,
            uefi: true,
            persistent: true,
        });
        assert_eq!(
            a,
            ["chassis", "bootdev", "pxe", "options=efiboot,persistent"]
        );
        let a = bootdev_args(BootOverride {
            device: BootDevice::Disk,
            uefi: false,
            persistent: false,
        });
        assert_eq!(a, ["chassis", "bootdev", "disk"]);
    }

    #[test]
    fn errors_are_classified_with_the_bmc_message() {
        let t = Duration::from_secs(5);
        let op = Operation::PowerStatus;
        let e = classify("h", op, WRONG_PASSWORD, t);
        assert!(matches!(e, BmcError::Auth { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "h: authentication failed: > RAKP 2 HMAC is invalid; Error: Unable to establish IPMI v2 / RMCP+ session"
        );
        assert!(!e.is_transient());
        let e = classify("h", op, NO_ANSWER, t);
        assert!(
            matches!(e, BmcError::Timeout { .. }) && e.is_transient(),
            "{e}"
        );
        assert!(e.to_string().contains("Get Auth Capabilities error"));
        let e = classify("h", op, CIPHER_17, t);
        assert!(matches!(e, BmcError::Config { .. }), "{e}");
        assert!(e.to_string().contains("invalid authentication algorithm"));
        let e = classify(
            "h",
            op,
            "Error in open session response message : insufficient resources for session\n",
            t,
        );
        assert!(matches!(e, BmcError::SessionExhausted { .. }) && e.is_transient());
        let e = classify(
            "h",
            op,
            "Set Chassis Power Control to Cycle failed: Command not supported in present state\n",
            t,
        );
        assert!(matches!(e, BmcError::Rejected { .. }) && !e.is_transient());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            split_host_port("10.0.0.1", 623),
            Some(("10.0.0.1".into(), 623))
        );
        assert_eq!(
            split_host_port("10.0.0.1:9623", 623),
            Some(("10.0.0.1".into(), 9623))
        );
        assert_eq!(
            split_host_port("[fd00::1]:7", 623),
            Some(("fd00::1".into(), 7))
        );
        assert_eq!(
            split_host_port("fd00::1", 623),
            Some(("fd00::1".into(), 623))
        );
        assert_eq!(split_host_port("h:x", 623), None);
        assert_eq!(split_host_port("", 623), None);
    }
}
