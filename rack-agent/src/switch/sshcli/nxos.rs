//! Cisco NX-OS: rendering a batch into `configure terminal` lines and parsing
//! `show running-config interface` output.
//!
//! NX-OS applies each line as it is entered (no commit), so a rejected line leaves the lines
//! before it applied; the driver reports the rejection and the caller re-applies.

use super::ioslike::{self, Flavor};
use crate::switch::{PortChange, PortMode, SwitchError};

const FLAVOR: Flavor = Flavor {
    l2_line: true,
    // NX-OS prints `no shutdown` for an enabled port; Ethernet ports default to shut down.
    down_by_default: true,
    native_via_access: false,
    all_when_no_allowed: true,
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
        Some(p) => format!("show running-config interface {p}"),
        None => "show running-config interface".to_owned(),
    }
}

/// Ports and their modes in `show` output.
pub fn parse(output: &str) -> Vec<(String, Result<PortMode, String>)> {
    ioslike::parse_all(&FLAVOR, output)
}

/// The switch's error text in a command's output, if it refused the command.
pub fn error(output: &str) -> Option<String> {
    ioslike::error_text(output, &["% ", "ERROR:", "Syntax error"])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::switch::{parse_vlan_list, PortConfig, Vlan};

    // `show running-config interface` from an N9K (9.3), trimmed to three ports.
    const SHOW: &str = "\
!Command: show running-config interface
!Running configuration last done at: Thu Nov 19 10:02:11 2026
!Time: Thu Nov 19 10:05:40 2026

version 9.3(8) Bios:version 05.45

interface mgmt0
  vrf member management
  ip address 10.0.0.10/24

interface Ethernet1/1
  description node-a
  switchport
  switchport access vlan 110
  no shutdown

interface Ethernet1/2
  switchport
  switchport mode trunk
  switchport trunk native vlan 110
  switchport trunk allowed vlan 110,200-202
  switchport trunk allowed vlan add 300
  no shutdown

interface Ethernet1/3
  switchport
  switchport access vlan 120

interface Ethernet1/4
  switchport
  switchport mode trunk
  switchport trunk allowed vlan 200,300
  no shutdown
";

    #[test]
    fn parses_running_config() {
        let ports = parse(SHOW);
        let names: Vec<&str> = ports.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            ["Ethernet1/1", "Ethernet1/2", "Ethernet1/3", "Ethernet1/4"]
        );
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
                allowed: parse_vlan_list("110,200-202,300").unwrap()
            })
        );
        // No `no shutdown` line: the port is down, which is "nothing".
        assert_eq!(ports[2].1, Ok(PortMode::Unconfigured));
        // Native VLAN 1 (default) not allowed: untagged frames are dropped.
        assert_eq!(
            ports[3].1,
            Ok(PortMode::Trunk {
                native: None,
                allowed: parse_vlan_list("200,300").unwrap()
            })
        );
    }

    #[test]
    fn renders_a_batch() {
        let lines = render(&[
            PortConfig::new(
                "Ethernet1/1",
                PortMode::Access {
                    vlan: Vlan::new(10).unwrap(),
                },
            ),
            PortConfig::new(
                "Ethernet1/2",
                PortMode::Trunk {
                    native: None,
                    allowed: parse_vlan_list("10,20-22").unwrap(),
                },
            ),
            PortConfig::new("Ethernet1/3", PortMode::Unconfigured),
        ])
        .unwrap();
        assert_eq!(
            lines,
            [
                "configure terminal",
                "interface Ethernet1/1",
                "switchport",
                "switchport mode access",
                "switchport access vlan 10",
                "no shutdown",
                "interface Ethernet1/2",
                "switchport",
                "switchport mode trunk",
                "no switchport trunk native vlan",
                "switchport trunk allowed vlan 10,20-22",
                "no shutdown",
                "interface Ethernet1/3",
                "shutdown",
                "switchport mode access",
                "no switchport access vlan",
                "end",
            ]
        );
        let vlan1 = PortConfig::new(
            "Ethernet1/2",
            PortMode::Trunk {
                native: None,
                allowed: parse_vlan_list("1,10").unwrap(),
            },
        );
        assert!(matches!(
            render(&[vlan1]),
            Err(SwitchError::InvalidChange { .. })
        ));
    }

    #[test]
    fn detects_errors() {
        let out =
            "                                   ^\n% Invalid interface format at '^' marker.\n";
        assert_eq!(
            error(out).unwrap(),
            "% Invalid interface format at '^' marker."
        );
        let out = "ERROR: VLAN 4000 is reserved\n";
        assert!(error(out).unwrap().contains("reserved"));
        assert_eq!(error("\n"), None);
        assert_eq!(error(SHOW), None);
    }
}
