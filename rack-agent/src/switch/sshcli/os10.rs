//! Dell EMC OS10: rendering a batch into `configure terminal` lines and parsing
//! `show running-configuration interface` output. The untagged VLAN of a trunk port is its
//! `switchport access vlan`; tagged VLANs are `switchport trunk allowed vlan`.

use super::ioslike::{self, Flavor};
use crate::switch::{PortChange, PortMode, SwitchError};

const FLAVOR: Flavor = Flavor {
    l2_line: false,
    // OS10 prints `no shutdown` for an enabled port.
    down_by_default: true,
    native_via_access: true,
    all_when_no_allowed: false,
    port_prefixes: &["ethernet", "port-channel"],
};

/// Lines sent once after login.
pub const SETUP: &[&str] = &["terminal length 0"];

/// Lines that leave config mode after a rejected line.
pub const ABORT: &[&str] = &["end"];

/// The whole configuration session for `changes`.
pub fn render(changes: &[PortChange]) -> Result<Vec<String>, SwitchError> {
    let mut out = vec!["configure terminal".to_owned()];
    out.extend(ioslike::render_ports(&FLAVOR, changes)?);
    out.push("end".to_owned());
    Ok(out)
}

/// The command showing one port's (or every port's) configuration.
pub fn show(port: Option<&str>) -> String {
    match port {
        Some(p) => format!("show running-configuration interface {p}"),
        None => "show running-configuration interface".to_owned(),
    }
}

/// Ports and their modes in `show` output.
pub fn parse(output: &str) -> Vec<(String, Result<PortMode, String>)> {
    ioslike::parse_all(&FLAVOR, output)
}

/// The switch's error text in a command's output, if it refused the command.
pub fn error(output: &str) -> Option<String> {
    ioslike::error_text(output, &["% Error", "% "])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::switch::{parse_vlan_list, PortConfig, Vlan};

    // `show running-configuration interface` from an S5248F (10.5.4), trimmed.
    const SHOW: &str = "\
!
interface ethernet1/1/1
 no shutdown
 switchport access vlan 110
 flowcontrol receive off
!
interface ethernet1/1/2
 no shutdown
 switchport mode trunk
 switchport access vlan 110
 switchport trunk allowed vlan 200-201
 flowcontrol receive off
!
interface ethernet1/1/3
 shutdown
 switchport access vlan 1
 flowcontrol receive off
!
interface mgmt1/1/1
 no shutdown
 ip address 10.0.0.12/24
";

    #[test]
    fn parses_running_configuration() {
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
                allowed: parse_vlan_list("110,200-201").unwrap()
            })
        );
        assert_eq!(ports[2].1, Ok(PortMode::Unconfigured));
    }

    #[test]
    fn renders_native_as_access_vlan() {
        let lines = render(&[PortConfig::new(
            "ethernet1/1/2",
            PortMode::Trunk {
                native: Some(Vlan::new(10).unwrap()),
                allowed: parse_vlan_list("10,20").unwrap(),
            },
        )])
        .unwrap();
        assert_eq!(
            lines,
            [
                "configure terminal",
                "interface ethernet1/1/2",
                "switchport mode trunk",
                "switchport access vlan 10",
                "switchport trunk allowed vlan 20",
                "no shutdown",
                "end",
            ]
        );
    }

    #[test]
    fn detects_errors() {
        assert_eq!(
            error("% Error: Interface ethernet1/1/99 not found.\n").unwrap(),
            "% Error: Interface ethernet1/1/99 not found."
        );
        assert_eq!(error(SHOW), None);
    }
}
