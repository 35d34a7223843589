//! The iPXE script renderer: a pure function of (node, MAC, base URL, policy) → script text.
//! Used by the HTTP server for `/ipxe/<mac>` and reusable for per-node files over TFTP.
//!
//! Every script that loads something ends in a `:failed` label that prints why, waits ten
//! seconds and reboots (or, for the local disk, falls through to the next boot device), so a
//! failed fetch never leaves a server hanging at an iPXE prompt.
//!
//! Placeholders in an `Install` command line: `{{ autoinstall_url }}` (the node's rendered
//! autoinstall file, `<base>/node/v1/autoinstall/<mac>`; empty when the target names no
//! template), `{{ agent_url }}` (the base URL the client used) and `{{ mac }}`. Spaces inside
//! the braces are optional; any other `{{ ... }}` is left as written.

use protocol::domain::BootTarget;
use protocol::fleet::RackNode;
use protocol::Mac;

use super::config::{AssetRef, DiscoveryConfig, UnknownMacs};
use crate::boot::NODE_API_PREFIX;

/// Node-independent inputs of the renderer.
#[derive(Debug, Clone, Copy)]
pub struct ScriptPolicy<'a> {
    /// What an unknown MAC's script does.
    pub unknown_macs: UnknownMacs,
    /// The discovery microkernel.
    pub discovery: &'a DiscoveryConfig,
}

/// Which kind of script was rendered (metrics label, event detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScriptKind {
    /// Discovery microkernel for a known node.
    Discovery,
    /// Discovery microkernel for an unknown MAC.
    UnknownDiscovery,
    /// `exit` for an unknown MAC.
    UnknownExit,
    /// Boot the local disk.
    Local,
    /// Boot an installer.
    Install,
    /// Boot from a SAN target.
    Sanboot,
    /// `exit` for a known node whose target is `None`.
    None,
}

impl ScriptKind {
    /// Every kind, in label order.
    pub const ALL: [ScriptKind; 7] = [
        ScriptKind::Discovery,
        ScriptKind::UnknownDiscovery,
        ScriptKind::UnknownExit,
        ScriptKind::Local,
        ScriptKind::Install,
        ScriptKind::Sanboot,
        ScriptKind::None,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            ScriptKind::Discovery => "discovery",
            ScriptKind::UnknownDiscovery => "unknown_discovery",
            ScriptKind::UnknownExit => "unknown_exit",
            ScriptKind::Local => "local",
            ScriptKind::Install => "install",
            ScriptKind::Sanboot => "sanboot",
            ScriptKind::None => "none",
        }
    }
}

/// A rendered script with what it decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The script text (starts with `#!ipxe`).
    pub text: String,
    /// Which kind it is.
    pub kind: ScriptKind,
    /// One-line summary for the `Boot` event, e.g. `ipxe: install debian-13/vmlinuz`.
    pub detail: String,
}

/// Number of `sanboot` attempts before the script gives up and reboots.
pub const SANBOOT_ATTEMPTS: u32 = 3;

/// Renders the iPXE script for `mac` (owned by `node`, if known) for a client that reached
/// this server at `base_url` (`scheme://host:port`, no trailing slash).
pub fn render(
    node: Option<&RackNode>,
    mac: &Mac,
    base_url: &str,
    policy: &ScriptPolicy<'_>,
) -> String {
    render_script(node, mac, base_url, policy).text
}

/// [`render`] with the kind of script and the event detail.
pub fn render_script(
    node: Option<&RackNode>,
    mac: &Mac,
    base_url: &str,
    policy: &ScriptPolicy<'_>,
) -> Script {
    let who = match node {
        Some(n) => format!("{mac} (node {})", n.id),
        None => format!("{mac} (unknown MAC)"),
    };
    let Some(node) = node else {
        return match policy.unknown_macs {
            UnknownMacs::Discovery => {
                discovery(&who, mac, base_url, policy, ScriptKind::UnknownDiscovery)
            }
            UnknownMacs::Exit => Script {
                text: format!("#!ipxe\n# Metalfleet rack agent: no network boot for {who}\nexit\n"),
                kind: ScriptKind::UnknownExit,
                detail: "ipxe: exit (unknown mac)".to_owned(),
            },
        };
    };
    match &node.boot_target {
        BootTarget::None => Script {
            text: format!("#!ipxe\n# Metalfleet rack agent: no network boot for {who}\nexit\n"),
            kind: ScriptKind::None,
            detail: "ipxe: none".to_owned(),
        },
        BootTarget::Discovery => discovery(&who, mac, base_url, policy, ScriptKind::Discovery),
        BootTarget::Local => Script {
            text: format!(
                "#!ipxe\n\
                 # Metalfleet rack agent: local disk for {who}\n\
                 # UEFI: leave iPXE so the firmware tries its next boot option (the disk).\n\
                 iseq ${{platform}} efi && exit ||\n\
                 sanboot --no-describe --drive 0x80 || goto failed\n\
                 \n\
                 :failed\n\
                 echo Metalfleet: booting the local disk failed for {mac}, trying the next boot device\n\
                 sleep 10\n\
                 exit 1\n"
            ),
            kind: ScriptKind::Local,
            detail: "ipxe: local".to_owned(),
        },
        BootTarget::Install {
            kernel,
            initrd,
            cmdline,
            autoinstall,
        } => {
            let autoinstall_url = match autoinstall {
                Some(_) => autoinstall_url(base_url, mac),
                None => String::new(),
            };
            let cmdline = substitute(
                cmdline,
                &[
                    ("autoinstall_url", autoinstall_url.as_str()),
                    ("agent_url", base_url),
                    ("mac", &mac.to_string()),
                ],
            );
            let kernel_ref = AssetRef::parse(kernel);
            let initrd_ref = AssetRef::parse(initrd);
            Script {
                text: load_and_boot(
                    &format!("installer {kernel} for {who}"),
                    mac,
                    &kernel_ref.url(base_url),
                    &initrd_ref.url(base_url),
                    &cmdline,
                ),
                kind: ScriptKind::Install,
                detail: format!("ipxe: install {}", one_line(kernel)),
            }
        }
        BootTarget::Sanboot { target } => {
            let target = one_line(target);
            Script {
                text: format!(
                    "#!ipxe\n\
                     # Metalfleet rack agent: SAN boot for {who}\n\
                     set tries:int32 0\n\
                     :retry\n\
                     sanboot {target} || goto sanfailed\n\
                     goto failed\n\
                     \n\
                     :sanfailed\n\
                     inc tries\n\
                     iseq ${{tries}} {SANBOOT_ATTEMPTS} && goto failed ||\n\
                     echo Metalfleet: sanboot failed (attempt ${{tries}} of {SANBOOT_ATTEMPTS}), retrying in 5 seconds\n\
                     sleep 5\n\
                     goto retry\n\
                     {failed}",
                    failed = failed_reboot(mac)
                ),
                kind: ScriptKind::Sanboot,
                detail: format!("ipxe: sanboot {target}"),
            }
        }
    }
}

/// The URL of `mac`'s rendered autoinstall file on a server at `base_url`.
pub fn autoinstall_url(base_url: &str, mac: &Mac) -> String {
    format!("{base_url}{NODE_API_PREFIX}autoinstall/{mac}")
}

fn discovery(
    who: &str,
    mac: &Mac,
    base_url: &str,
    policy: &ScriptPolicy<'_>,
    kind: ScriptKind,
) -> Script {
    let d = policy.discovery;
    let cmdline = if d.cmdline.is_empty() {
        format!("metalfleet.agent={base_url} metalfleet.mac={mac}")
    } else {
        format!(
            "{} metalfleet.agent={base_url} metalfleet.mac={mac}",
            d.cmdline
        )
    };
    let detail = match kind {
        ScriptKind::UnknownDiscovery => "ipxe: discovery (unknown mac)",
        _ => "ipxe: discovery",
    };
    Script {
        text: load_and_boot(
            &format!("discovery microkernel for {who}"),
            mac,
            &d.kernel.url(base_url),
            &d.initrd.url(base_url),
            &cmdline,
        ),
        kind,
        detail: detail.to_owned(),
    }
}

/// kernel + initrd + boot. The initrd gets a fixed name and the kernel line names it with
/// `initrd=`: UEFI iPXE cannot hand the initrd to the kernel otherwise, and BIOS ignores it.
fn load_and_boot(
    what: &str,
    mac: &Mac,
    kernel_url: &str,
    initrd_url: &str,
    cmdline: &str,
) -> String {
    let name = initrd_name(initrd_url);
    let cmdline = one_line(cmdline);
    let args = if cmdline.trim().is_empty() {
        String::new()
    } else {
        format!(" {}", cmdline.trim())
    };
    format!(
        "#!ipxe\n\
         # Metalfleet rack agent: {what}\n\
         imgfree\n\
         kernel {kernel_url} initrd={name}{args} || goto failed\n\
         initrd --name {name} {initrd_url} || goto failed\n\
         boot || goto failed\n\
         {failed}",
        kernel_url = one_line(kernel_url),
        initrd_url = one_line(initrd_url),
        failed = failed_reboot(mac)
    )
}

fn failed_reboot(mac: &Mac) -> String {
    format!(
        "\n:failed\n\
         echo Metalfleet: boot failed for {mac}, rebooting in 10 seconds\n\
         sleep 10\n\
         reboot\n"
    )
}

/// The name iPXE registers the initrd under: the last path segment of its URL (query and
/// fragment dropped), restricted to characters safe on a kernel command line.
pub fn initrd_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or(path);
    let clean: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    if clean.is_empty() {
        "initrd".to_owned()
    } else {
        clean
    }
}

/// `s` with control characters (a newline would start a new script command) turned into spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Replaces `{{ name }}` (spaces optional) for the given names; anything else is kept.
fn substitute(s: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let Some(end) = after.find("}}") else {
            out.push_str(after);
            return out;
        };
        let inner = after.get(2..end).unwrap_or("").trim();
        match vars.iter().find(|(k, _)| *k == inner) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(after.get(..end + 2).unwrap_or(after)),
        }
        rest = after.get(end + 2..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        let vars = [("autoinstall_url", "http://a/x"), ("mac", "m")];
        assert_eq!(
            substitute(
                "auto url={{ autoinstall_url }} m={{mac}} {{ other }} {{",
                &vars
            ),
            "auto url=http://a/x m=m {{ other }} {{"
        );
        assert_eq!(substitute("plain", &vars), "plain");
    }

    #[test]
    fn initrd_names() {
        assert_eq!(initrd_name("http://h/a/initrd.img?x=1"), "initrd.img");
        assert_eq!(initrd_name("http://h/a/"), "initrd");
        assert_eq!(initrd_name("http://h/a/in it$rd"), "initrd");
    }

    #[test]
    fn control_characters_cannot_inject_commands() {
        let d = DiscoveryConfig {
            kernel: AssetRef::Name("k".into()),
            initrd: AssetRef::Name("i".into()),
            cmdline: String::new(),
        };
        let policy = ScriptPolicy {
            unknown_macs: UnknownMacs::Exit,
            discovery: &d,
        };
        let node = RackNode {
            id: "00000000-0000-0000-0000-000000000001".parse().unwrap(),
            serial: "S1".parse().unwrap(),
            macs: vec![],
            boot_target: BootTarget::Sanboot {
                target: "iscsi:x\nshell".into(),
            },
            static_ips: vec![],
            switch_ports: vec![],
            bmc: None,
            revision: 1,
            power: None,
        };
        let s = render(Some(&node), &Mac([0; 6]), "http://h:1", &policy);
        assert!(s.lines().all(|l| l != "shell"), "{s}");
    }
}
