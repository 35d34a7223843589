//! The boot decision: which boot file (if any) a DHCP client is given, from what kind of
//! client it is (plain, PXE ROM, UEFI HTTP Boot, iPXE) and what its node should boot next.
//! Pure; no sockets.

use std::net::{IpAddr, Ipv4Addr};

use dhcproto::v4::{DhcpOption, DhcpOptions, OptionCode};
use protocol::domain::BootTarget;
use protocol::Mac;

use crate::boot::{ipxe_script_url, ASSETS_PREFIX, IPXE_BIOS, IPXE_EFI_ARM64, IPXE_EFI_X64};

/// iPXE's encapsulated options (option 175).
pub const OPT_IPXE_ENCAP: u8 = 175;
/// iPXE sub-option "no-pxedhcp": do not wait for ProxyDHCP offers.
pub const IPXE_NO_PXEDHCP: u8 = 176;

/// What kind of network-boot client sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// An OS DHCP client (no PXE/HTTP class, not iPXE).
    Plain,
    /// iPXE (user class 77 contains `iPXE`, or it sent option 175).
    Ipxe,
    /// A PXE ROM (option 60 starts with `PXEClient`), with its option 93 architecture.
    Pxe(Option<u16>),
    /// UEFI HTTP Boot (option 60 starts with `HTTPClient`), with its option 93 architecture.
    HttpBoot(Option<u16>),
}

/// Classifies a request by its options 60, 77, 93 and 175.
pub fn classify(opts: &DhcpOptions) -> ClientKind {
    let user_class_ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(b)) => b.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    if user_class_ipxe || opts.contains(OptionCode::Unknown(OPT_IPXE_ENCAP)) {
        return ClientKind::Ipxe;
    }
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"HTTPClient") => {
            ClientKind::HttpBoot(arch)
        }
        Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient") => {
            ClientKind::Pxe(arch)
        }
        _ => ClientKind::Plain,
    }
}

/// What a request is for, as the boot decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct BootInput<'a> {
    /// The client kind.
    pub kind: ClientKind,
    /// The node's boot target; `None` for an unknown MAC on a discovery subnet (which gets
    /// the discovery boot).
    pub target: Option<&'a BootTarget>,
    /// Our address (siaddr, host of URLs).
    pub server_ip: Ipv4Addr,
    /// Port of the agent's HTTP boot server, if it runs one.
    pub http_port: Option<u16>,
    /// Client MAC (names its iPXE script).
    pub mac: Mac,
}

/// Boot fields to put in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootReply {
    /// Boot file: `file` field and option 67.
    pub file: Option<String>,
    /// `siaddr` (next-server) and option 66, for TFTP boot files.
    pub next_server: Option<Ipv4Addr>,
    /// Option 60 to echo (`PXEClient` / `HTTPClient`), required by PXE and HTTP Boot ROMs.
    pub vendor_class: Option<&'static str>,
    /// Include option 175.176 (no-pxedhcp) = 1.
    pub no_pxedhcp: bool,
}

/// The decision with a human-readable summary (the `Boot` event's detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDecision {
    /// What to put in the reply.
    pub reply: BootReply,
    /// e.g. `uefi-x64 pxe -> tftp ipxe.efi`.
    pub detail: String,
    /// A PXE/HTTP client with an architecture we have no iPXE binary for (counted).
    pub unsupported_arch: bool,
}

fn arch_name(a: Option<u16>) -> String {
    match a {
        Some(0) => "bios".into(),
        Some(7) | Some(9) => "uefi-x64".into(),
        Some(11) => "uefi-arm64".into(),
        Some(16) => "uefi-x64-http".into(),
        Some(19) => "uefi-arm64-http".into(),
        Some(n) => format!("arch-{n}"),
        None => "arch-none".into(),
    }
}

fn target_name(t: Option<&BootTarget>) -> &'static str {
    match t {
        None | Some(BootTarget::Discovery) => "discovery",
        Some(BootTarget::None) => "none",
        Some(BootTarget::Local) => "local",
        Some(BootTarget::Install { .. }) => "install",
        Some(BootTarget::Sanboot { .. }) => "sanboot",
    }
}

/// Decides the boot fields of a reply.
pub fn decide(input: &BootInput<'_>) -> BootDecision {
    let target = target_name(input.target);
    let none = |detail: String, unsupported_arch: bool| BootDecision {
        reply: BootReply::default(),
        detail,
        unsupported_arch,
    };
    if matches!(input.target, Some(BootTarget::None)) {
        return none("boot target none -> address only".into(), false);
    }
    let http = |path: &str| {
        input
            .http_port
            .map(|p| format!("http://{}:{p}{path}", input.server_ip))
    };
    match input.kind {
        ClientKind::Plain => none(
            format!("{target}: plain dhcp client -> no boot file"),
            false,
        ),
        ClientKind::Ipxe => match input.http_port {
            Some(port) => {
                let url = ipxe_script_url("http", IpAddr::V4(input.server_ip), port, &input.mac);
                BootDecision {
                    detail: format!("{target}: ipxe -> {url}"),
                    reply: BootReply {
                        file: Some(url),
                        next_server: None,
                        vendor_class: None,
                        no_pxedhcp: true,
                    },
                    unsupported_arch: false,
                }
            }
            None => none(
                format!("{target}: ipxe -> no http server, no boot file"),
                false,
            ),
        },
        ClientKind::HttpBoot(arch) => {
            let bin = match arch {
                Some(16) => IPXE_EFI_X64,
                Some(19) => IPXE_EFI_ARM64,
                _ => {
                    return none(
                        format!("{target}: {} http boot -> unsupported", arch_name(arch)),
                        true,
                    )
                }
            };
            match http(&format!("{ASSETS_PREFIX}{bin}")) {
                Some(url) => BootDecision {
                    detail: format!("{target}: {} http boot -> {url}", arch_name(arch)),
                    reply: BootReply {
                        file: Some(url),
                        next_server: None,
                        vendor_class: Some("HTTPClient"),
                        no_pxedhcp: false,
                    },
                    unsupported_arch: false,
                },
                None => none(
                    format!("{target}: http boot -> no http server, no boot file"),
                    false,
                ),
            }
        }
        ClientKind::Pxe(arch) => {
            let bin = match arch {
                Some(0) => IPXE_BIOS,
                Some(7) | Some(9) => IPXE_EFI_X64,
                Some(11) => IPXE_EFI_ARM64,
                _ => {
                    return none(
                        format!("{target}: {} pxe -> unsupported", arch_name(arch)),
                        true,
                    )
                }
            };
            BootDecision {
                detail: format!("{target}: {} pxe -> tftp {bin}", arch_name(arch)),
                reply: BootReply {
                    file: Some(bin.to_owned()),
                    next_server: Some(input.server_ip),
                    vendor_class: Some("PXEClient"),
                    no_pxedhcp: true,
                },
                unsupported_arch: false,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, UnknownOption};

    const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
    const SRV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);

    fn input(kind: ClientKind, target: Option<&BootTarget>) -> BootInput<'_> {
        BootInput {
            kind,
            target,
            server_ip: SRV,
            http_port: Some(8080),
            mac: MAC,
        }
    }

    #[test]
    fn classify_kinds() {
        let mut o = DhcpOptions::new();
        assert_eq!(classify(&o), ClientKind::Plain);
        o.insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture(7)));
        assert_eq!(classify(&o), ClientKind::Pxe(Some(7)));
        o.insert(DhcpOption::ClassIdentifier(
            b"HTTPClient:Arch:00016".to_vec(),
        ));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture(16)));
        assert_eq!(classify(&o), ClientKind::HttpBoot(Some(16)));
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![177, 5, 1, 0x10, 0xec, 0x81, 0x68],
        )));
        assert_eq!(classify(&o), ClientKind::Ipxe);
        let mut u = DhcpOptions::new();
        u.insert(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
        assert_eq!(classify(&u), ClientKind::Ipxe);
    }

    #[test]
    fn bios_pxe_gets_undionly_over_tftp() {
        let d = decide(&input(
            ClientKind::Pxe(Some(0)),
            Some(&BootTarget::Discovery),
        ));
        assert_eq!(d.reply.file.as_deref(), Some(IPXE_BIOS));
        assert_eq!(d.reply.next_server, Some(SRV));
        assert_eq!(d.reply.vendor_class, Some("PXEClient"));
        assert!(d.reply.no_pxedhcp);
        assert_eq!(d.detail, "discovery: bios pxe -> tftp undionly.kpxe");
    }

    #[test]
    fn uefi_pxe_arches() {
        for (a, f) in [(7, IPXE_EFI_X64), (9, IPXE_EFI_X64), (11, IPXE_EFI_ARM64)] {
            let d = decide(&input(ClientKind::Pxe(Some(a)), Some(&BootTarget::Local)));
            assert_eq!(d.reply.file.as_deref(), Some(f), "arch {a}");
        }
        let d = decide(&input(ClientKind::Pxe(Some(6)), Some(&BootTarget::Local)));
        assert!(d.unsupported_arch);
        assert_eq!(d.reply, BootReply::default());
        let d = decide(&input(ClientKind::Pxe(None), Some(&BootTarget::Local)));
        assert!(d.unsupported_arch);
    }

    #[test]
    fn ipxe_gets_its_script_url() {
        let d = decide(&input(ClientKind::Ipxe, None));
        assert_eq!(
            d.reply.file.as_deref(),
            Some("http://10.10.0.1:8080/ipxe/52:54:00:00:00:01")
        );
        assert!(d.reply.no_pxedhcp);
        assert_eq!(d.reply.next_server, None);
        let mut i = input(ClientKind::Ipxe, None);
        i.http_port = None;
        assert_eq!(decide(&i).reply.file, None);
    }

    #[test]
    fn http_boot_gets_ipxe_efi_url() {
        let d = decide(&input(ClientKind::HttpBoot(Some(16)), None));
        assert_eq!(
            d.reply.file.as_deref(),
            Some("http://10.10.0.1:8080/assets/ipxe.efi")
        );
        assert_eq!(d.reply.vendor_class, Some("HTTPClient"));
        let d = decide(&input(ClientKind::HttpBoot(Some(19)), None));
        assert_eq!(
            d.reply.file.as_deref(),
            Some("http://10.10.0.1:8080/assets/ipxe-arm64.efi")
        );
        assert!(decide(&input(ClientKind::HttpBoot(Some(7)), None)).unsupported_arch);
    }

    #[test]
    fn target_none_and_plain_clients_get_no_file() {
        let d = decide(&input(ClientKind::Pxe(Some(0)), Some(&BootTarget::None)));
        assert_eq!(d.reply, BootReply::default());
        assert!(!d.unsupported_arch);
        let d = decide(&input(ClientKind::Plain, Some(&BootTarget::Discovery)));
        assert_eq!(d.reply, BootReply::default());
    }
}
