//! What NX-OS, EOS and OS10 share: `interface <name>` blocks of indented `switchport ...`
//! lines, both when rendering a change and when parsing `show running-config` output. The
//! per-vendor differences are a [`Flavor`].

use std::collections::BTreeSet;

use crate::switch::{parse_vlan_list, vlan_list, PortChange, PortMode, SwitchError, Vlan};

/// How one IOS-like CLI differs from the others.
#[derive(Debug)]
pub(super) struct Flavor {
    /// Emit a bare `switchport` first (NX-OS ports can be routed by default).
    pub l2_line: bool,
    /// State of a port whose block has neither `shutdown` nor `no shutdown`.
    pub down_by_default: bool,
    /// The untagged VLAN of a trunk is `switchport access vlan` (OS10), not
    /// `switchport trunk native vlan` (NX-OS, EOS, whose native VLAN defaults to 1).
    pub native_via_access: bool,
    /// A trunk without an `allowed vlan` line carries every VLAN (NX-OS, EOS) rather than
    /// none (OS10).
    pub all_when_no_allowed: bool,
    /// Interface name prefixes that are switch ports (`read_ports` skips mgmt, VLAN, loopback).
    pub port_prefixes: &'static [&'static str],
}

/// The interface-mode lines for each change (without entering/leaving config mode).
pub(super) fn render_ports(f: &Flavor, changes: &[PortChange]) -> Result<Vec<String>, SwitchError> {
    let mut out = Vec::new();
    for c in changes {
        out.push(format!("interface {}", c.port));
        match &c.mode {
            PortMode::Unconfigured => {
                out.push("shutdown".into());
                out.push("switchport mode access".into());
                out.push("no switchport access vlan".into());
            }
            PortMode::Access { vlan } => {
                if f.l2_line {
                    out.push("switchport".into());
                }
                out.push("switchport mode access".into());
                out.push(format!("switchport access vlan {vlan}"));
                out.push("no shutdown".into());
            }
            PortMode::Trunk { native, allowed } => {
                if f.l2_line {
                    out.push("switchport".into());
                }
                out.push("switchport mode trunk".into());
                if f.native_via_access {
                    match native {
                        Some(n) => out.push(format!("switchport access vlan {n}")),
                        None => out.push("no switchport access vlan".into()),
                    }
                    let tagged: BTreeSet<Vlan> = allowed
                        .iter()
                        .filter(|v| Some(**v) != *native)
                        .copied()
                        .collect();
                    if tagged.is_empty() {
                        out.push("no switchport trunk allowed vlan".into());
                    } else {
                        out.push(format!(
                            "switchport trunk allowed vlan {}",
                            vlan_list(&tagged)
                        ));
                    }
                } else {
                    match native {
                        Some(n) => out.push(format!("switchport trunk native vlan {n}")),
                        None => {
                            // The native VLAN cannot be removed, only moved (default 1):
                            // untagged frames are dropped only when it is not allowed.
                            if allowed.iter().any(|v| v.get() == 1) {
                                return Err(SwitchError::InvalidChange {
                                    port: c.port.clone(),
                                    reason: "a trunk without a native VLAN cannot allow VLAN 1 on this switch (VLAN 1 is the native VLAN by default)".into(),
                                });
                            }
                            out.push("no switchport trunk native vlan".into());
                        }
                    }
                    out.push(format!(
                        "switchport trunk allowed vlan {}",
                        vlan_list(allowed)
                    ));
                }
                out.push("no shutdown".into());
            }
        }
    }
    Ok(out)
}

/// `interface` blocks of `show running-config` output: name and trimmed body lines.
pub(super) fn blocks(output: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_block = false;
    for line in output.lines() {
        let indented = line.starts_with(' ') || line.starts_with('\t');
        let t = line.trim();
        if !indented {
            in_block = false;
            if let Some(name) = t.strip_prefix("interface ") {
                out.push((name.trim().to_owned(), Vec::new()));
                in_block = true;
            }
            continue;
        }
        if in_block && !t.is_empty() && !t.starts_with('!') {
            if let Some(last) = out.last_mut() {
                last.1.push(t.to_owned());
            }
        }
    }
    out
}

/// A block's lines as a [`PortMode`], or why they fit none.
pub(super) fn parse_block(f: &Flavor, lines: &[String]) -> Result<PortMode, String> {
    let mut down = f.down_by_default;
    let mut trunk = false;
    let mut access: Option<Vlan> = None;
    let mut native: Option<Vlan> = None;
    let mut allowed: Option<BTreeSet<Vlan>> = None;
    let vlan = |s: &str| -> Result<Vlan, String> {
        s.trim()
            .parse::<u16>()
            .ok()
            .and_then(|v| Vlan::new(v).ok())
            .ok_or_else(|| format!("bad VLAN {s:?}"))
    };
    for l in lines {
        let l = l.as_str();
        if l == "shutdown" {
            down = true;
        } else if l == "no shutdown" {
            down = false;
        } else if l == "no switchport" {
            return Err("routed port (no switchport)".into());
        } else if l == "switchport mode trunk" {
            trunk = true;
        } else if l == "switchport mode access" {
            trunk = false;
        } else if let Some(v) = l.strip_prefix("switchport access vlan ") {
            access = Some(vlan(v)?);
        } else if let Some(v) = l.strip_prefix("switchport trunk native vlan ") {
            native = Some(vlan(v)?);
        } else if let Some(v) = l.strip_prefix("switchport trunk allowed vlan ") {
            let v = v.trim();
            let set = if v == "none" {
                BTreeSet::new()
            } else if v == "all" {
                all_vlans()
            } else if let Some(more) = v.strip_prefix("add ") {
                // Long lists wrap into `... add <more>` continuation lines.
                let mut s = allowed.take().unwrap_or_default();
                s.extend(parse_vlan_list(more).map_err(|e| e.to_string())?);
                s
            } else {
                parse_vlan_list(v).map_err(|e| e.to_string())?
            };
            allowed = Some(set);
        } else if l.starts_with("switchport mode ") {
            return Err(format!("unsupported {l:?}"));
        }
    }
    if down {
        return Ok(PortMode::Unconfigured);
    }
    if !trunk {
        return Ok(PortMode::Access {
            vlan: access.unwrap_or(Vlan(1)),
        });
    }
    let mut allowed = allowed.unwrap_or_else(|| {
        if f.all_when_no_allowed {
            all_vlans()
        } else {
            BTreeSet::new()
        }
    });
    let native = if f.native_via_access {
        if let Some(n) = access {
            allowed.insert(n);
        }
        access
    } else {
        let n = native.unwrap_or(Vlan(1));
        allowed.contains(&n).then_some(n)
    };
    Ok(PortMode::Trunk { native, allowed })
}

fn all_vlans() -> BTreeSet<Vlan> {
    (crate::switch::MIN_VLAN..=crate::switch::MAX_VLAN)
        .map(Vlan)
        .collect()
}

/// Every switch port in `output` (blocks whose name has one of the flavor's prefixes).
pub(super) fn parse_all(f: &Flavor, output: &str) -> Vec<(String, Result<PortMode, String>)> {
    blocks(output)
        .into_iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            f.port_prefixes.iter().any(|p| lower.starts_with(p))
        })
        .map(|(name, lines)| {
            let mode = parse_block(f, &lines);
            (name, mode)
        })
        .collect()
}

/// The error lines of a command's output: from the first line starting with one of
/// `markers` to the end (the switch's own words, caret lines included).
pub(super) fn error_text(output: &str, markers: &[&str]) -> Option<String> {
    let lines: Vec<&str> = output.lines().collect();
    let first = lines
        .iter()
        .position(|l| markers.iter().any(|m| l.trim_start().starts_with(m)))?;
    let text: Vec<&str> = lines
        .get(first..)
        .unwrap_or_default()
        .iter()
        .map(|l| l.trim_end())
        .filter(|l| !l.is_empty())
        .collect();
    Some(text.join("\n"))
}
