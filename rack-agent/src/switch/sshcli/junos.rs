//! Juniper Junos (ELS): rendering a batch into `set`/`delete` statements of a private
//! candidate configuration committed atomically (`commit and-quit`), and parsing
//! `show configuration interfaces ... | display set`.
//!
//! "Nothing" on Junos is `disable` with no `family ethernet-switching`: an interface without
//! configuration forwards nothing either, so both read back as unconfigured.

use std::collections::{BTreeMap, BTreeSet};

use crate::switch::{parse_vlan_list, vlan_list, PortChange, PortMode, SwitchError, Vlan};

/// Lines sent once after login.
pub const SETUP: &[&str] = &["set cli screen-length 0"];

/// Lines that discard the candidate after a rejected line or failed commit: nothing was
/// applied.
pub const ABORT: &[&str] = &["rollback 0", "exit configuration-mode"];

/// Interface name prefixes that are switch ports.
const PORT_PREFIXES: &[&str] = &["ge-", "xe-", "et-", "mge-", "ae"];

/// The whole configuration session for `changes`.
pub fn render(changes: &[PortChange]) -> Result<Vec<String>, SwitchError> {
    let mut out = vec!["configure private".to_owned()];
    for c in changes {
        let p = &c.port;
        let esw = format!("set interfaces {p} unit 0 family ethernet-switching");
        // Start from a clean slate so leftovers of the previous mode cannot linger
        // (deleting what is absent is only a warning).
        out.push(format!(
            "delete interfaces {p} unit 0 family ethernet-switching"
        ));
        out.push(format!("delete interfaces {p} native-vlan-id"));
        out.push(format!("delete interfaces {p} disable"));
        match &c.mode {
            PortMode::Unconfigured => out.push(format!("set interfaces {p} disable")),
            PortMode::Access { vlan } => {
                out.push(format!("{esw} interface-mode access"));
                out.push(format!("{esw} vlan members {vlan}"));
            }
            PortMode::Trunk { native, allowed } => {
                out.push(format!("{esw} interface-mode trunk"));
                for part in vlan_list(allowed).split(',') {
                    out.push(format!("{esw} vlan members {part}"));
                }
                if let Some(n) = native {
                    out.push(format!("set interfaces {p} native-vlan-id {n}"));
                }
            }
        }
    }
    out.push("commit and-quit".to_owned());
    Ok(out)
}

/// The command showing one port's (or every port's) configuration.
pub fn show(port: Option<&str>) -> String {
    match port {
        Some(p) => format!("show configuration interfaces {p} | display set"),
        None => "show configuration interfaces | display set".to_owned(),
    }
}

#[derive(Default)]
struct Seen {
    disabled: bool,
    esw: bool,
    trunk: bool,
    members: BTreeSet<Vlan>,
    native: Option<Vlan>,
    unsupported: Option<String>,
}

/// Ports and their modes in `display set` output.
pub fn parse(output: &str) -> Vec<(String, Result<PortMode, String>)> {
    let mut ports: BTreeMap<String, Seen> = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("set interfaces ") else {
            continue;
        };
        let (name, stmt) = rest.split_once(' ').unwrap_or((rest, ""));
        if !PORT_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let seen = ports.entry(name.to_owned()).or_default();
        if stmt == "disable" {
            seen.disabled = true;
        } else if let Some(n) = stmt.strip_prefix("native-vlan-id ") {
            match n.trim().parse::<u16>().ok().and_then(|v| Vlan::new(v).ok()) {
                Some(v) => seen.native = Some(v),
                None => seen.unsupported = Some(format!("bad native-vlan-id {n:?}")),
            }
        } else if let Some(e) = stmt.strip_prefix("unit 0 family ethernet-switching") {
            seen.esw = true;
            let e = e.trim();
            if e == "interface-mode trunk" || e == "port-mode trunk" {
                seen.trunk = true;
            } else if let Some(m) = e.strip_prefix("vlan members ") {
                match parse_vlan_list(m) {
                    Ok(set) => seen.members.extend(set),
                    // VLAN names instead of ids: the model only knows ids.
                    Err(_) => seen.unsupported = Some(format!("vlan members {m:?}")),
                }
            }
        }
    }
    ports
        .into_iter()
        .map(|(name, s)| {
            let mode = if s.disabled || !s.esw {
                Ok(PortMode::Unconfigured)
            } else if let Some(u) = s.unsupported {
                Err(u)
            } else if s.trunk {
                let mut allowed = s.members;
                if let Some(n) = s.native {
                    allowed.insert(n);
                }
                Ok(PortMode::Trunk {
                    native: s.native,
                    allowed,
                })
            } else {
                let mut m = s.members.into_iter();
                match (m.next(), m.next()) {
                    (Some(vlan), None) => Ok(PortMode::Access { vlan }),
                    _ => Err("access port without exactly one VLAN member".into()),
                }
            };
            (name, mode)
        })
        .collect()
}

/// The switch's error text in a command's output, if it refused the command or the commit.
/// `warning:` lines (e.g. deleting an absent statement) are not errors.
pub fn error(output: &str) -> Option<String> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines.iter().position(|l| {
        let t = l;
        t.starts_with("syntax error")
            || t.starts_with("error:")
            || t.starts_with("unknown command")
            || t.contains("commit failed")
    })?;
    Some(lines.get(first..).unwrap_or_default().join("\n"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::switch::PortConfig;

    // `show configuration interfaces | display set` from an EX4300 (21.4), trimmed.
    const SHOW: &str = "\
set interfaces ge-0/0/0 unit 0 family ethernet-switching interface-mode access
set interfaces ge-0/0/0 unit 0 family ethernet-switching vlan members 110
set interfaces ge-0/0/1 native-vlan-id 110
set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk
set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 110
set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 200-201
set interfaces ge-0/0/2 disable
set interfaces ge-0/0/3 unit 0 family ethernet-switching vlan members 300
set interfaces me0 unit 0 family inet address 10.0.0.13/24
";

    #[test]
    fn parses_display_set() {
        let ports = parse(SHOW);
        assert_eq!(ports.len(), 4);
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
        // interface-mode defaults to access.
        assert_eq!(
            ports[3].1,
            Ok(PortMode::Access {
                vlan: Vlan::new(300).unwrap()
            })
        );
        let named = parse(
            "set interfaces ge-0/0/4 unit 0 family ethernet-switching vlan members tenant-a\n",
        );
        assert!(named[0].1.is_err());
    }

    #[test]
    fn renders_a_commit() {
        let lines = render(&[PortConfig::new(
            "ge-0/0/1",
            PortMode::Trunk {
                native: None,
                allowed: parse_vlan_list("10,20-22").unwrap(),
            },
        )])
        .unwrap();
        assert_eq!(
            lines,
            [
                "configure private",
                "delete interfaces ge-0/0/1 unit 0 family ethernet-switching",
                "delete interfaces ge-0/0/1 native-vlan-id",
                "delete interfaces ge-0/0/1 disable",
                "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk",
                "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 10",
                "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 20-22",
                "commit and-quit",
            ]
        );
    }

    #[test]
    fn detects_errors_not_warnings() {
        assert_eq!(error("warning: statement not found\n"), None);
        let out = "set interfaces ge-0/0/1 unit 0 famly x\n                                   ^\nsyntax error.\n";
        assert_eq!(error(out).unwrap(), "syntax error.");
        let out = "[edit interfaces ge-0/0/99]\n  'unit 0'\n    error: device ge-0/0/99 not found\nerror: configuration check-out failed\n";
        assert!(error(out)
            .unwrap()
            .starts_with("error: device ge-0/0/99 not found"));
    }
}
