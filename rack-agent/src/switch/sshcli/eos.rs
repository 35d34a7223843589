//! Arista EOS: rendering a batch into a named configuration session (`configure session`,
//! committed atomically, `abort` on a rejected line) and parsing `show running-config`.

use super::ioslike::{self, Flavor};
use crate::switch::{PortChange, PortMode, SwitchError};

const FLAVOR: Flavor = Flavor {
    l2_line: false,
    // EOS prints `shutdown` for a disabled port and nothing for an enabled one.
    down_by_default: false,
    native_via_access: false,
    all_when_no_allowed: true,
    port_prefixes: &["ethernet", "port-channel"],
};

/// Lines sent once after login.
pub const SETUP: &[&str] = &["terminal length 0"];

/// Lines that discard the session after a rejected line: nothing was applied.
pub const ABORT: &[&str] = &["abort"];

/// The whole configuration session for `changes`; `session` names it uniquely.
pub fn render(changes: &[PortChange], session: &str) -> Result<Vec<String>, SwitchError> {
    let mut out = vec![format!("configure session {session}")];
    out.extend(ioslike::render_ports(&FLAVOR, changes)?);
    out.push("commit".to_owned());
    Ok(out)
}

/// The command showing one port's (or every port's) configuration.
pub fn show(port: Option<&str>) -> String {
    match port {
        Some(p) => format!("show running-config interfaces {p}"),
        None => "show running-config".to_owned(),
    }
}

/// Ports and their modes in `show` output.
pub fn parse(output: &str) -> Vec<(String, Result<PortMode, String>)> {
    ioslike::parse_all(&FLAVOR, output)
}

/// The switch's error text in a command's output, if it refused the command.
pub fn error(output: &str) -> Option<String> {
    ioslike::error_text(output, &["% "])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::switch::{parse_vlan_list, PortConfig, Vlan};

    // `show running-config` from a 7050 (4.28), trimmed.
    const SHOW: &str = "\
! Command: show running-config
! device: leaf1 (DCS-7050SX3-48YC8, EOS-4.28.3M)
!
hostname leaf1
!
vlan 110,200
!
interface Ethernet1
   description node-a
   switchport access vlan 110
!
interface Ethernet2
   switchport trunk native vlan 110
   switchport trunk allowed vlan 110,200
   switchport mode trunk
!
interface Ethernet3
   shutdown
!
interface Management1
   ip address 10.0.0.11/24
!
end
";

    #[test]
    fn parses_running_config() {
        let ports = parse(SHOW);
        assert_eq!(ports.len(), 3);
        assert_eq!(
            ports[0].1,
            Ok(PortMode::Access {
                vlan: Vlan::new(110).unwrap()
            })
        );
        assert_eq!(
            ports[1].1,
            Ok(PortMode::Trunk {
                native: Some(Vlan::new(110).unwrap()),
                allowed: parse_vlan_list("110,200").unwrap()
            })
        );
        assert_eq!(ports[2].1, Ok(PortMode::Unconfigured));
    }

    #[test]
    fn renders_a_session() {
        let lines = render(
            &[PortConfig::new(
                "Ethernet2",
                PortMode::Trunk {
                    native: Some(Vlan::new(10).unwrap()),
                    allowed: parse_vlan_list("10,20").unwrap(),
                },
            )],
            "mf-7",
        )
        .unwrap();
        assert_eq!(
            lines,
            [
                "configure session mf-7",
                "interface Ethernet2",
                "switchport mode trunk",
                "switchport trunk native vlan 10",
                "switchport trunk allowed vlan 10,20",
                "no shutdown",
                "commit",
            ]
        );
    }

    #[test]
    fn detects_errors() {
        assert_eq!(
            error("% Invalid input (at token 1: 'Ethernet99')\n").unwrap(),
            "% Invalid input (at token 1: 'Ethernet99')"
        );
        assert!(error("% Incomplete command\n").is_some());
        assert_eq!(error(SHOW), None);
    }
}
