//! Batch rules shared by every driver: what a valid batch is (checked before anything is sent)
//! and how read-back is compared with what was applied.

use std::collections::BTreeSet;

use super::{PortChange, PortConfig, PortMode, SwitchError};

/// Refuses a batch that names a port twice (the order would decide the outcome, which is a
/// caller bug), an empty port name, a trunk with no VLANs, or a native VLAN missing from the
/// allowed set (every vendor treats that differently; we keep one meaning).
pub fn validate_batch(changes: &[PortChange]) -> Result<(), SwitchError> {
    let mut seen = BTreeSet::new();
    for c in changes {
        let invalid = |reason: &str| SwitchError::InvalidChange {
            port: c.port.clone(),
            reason: reason.to_owned(),
        };
        if c.port.trim().is_empty() || c.port.chars().any(|ch| ch.is_whitespace()) {
            return Err(invalid("port names must be non-empty without whitespace"));
        }
        // Port names end up in CLI lines and OVSDB conditions: keep them to the characters
        // real switches use so a name can never inject a second command.
        if !c
            .port
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "/-_.:".contains(ch))
        {
            return Err(invalid("port names may only contain A-Z a-z 0-9 / - _ . :"));
        }
        if !seen.insert(c.port.as_str()) {
            return Err(invalid("named twice in one batch"));
        }
        if let PortMode::Trunk { native, allowed } = &c.mode {
            if allowed.is_empty() {
                return Err(invalid("a trunk needs at least one allowed VLAN"));
            }
            if let Some(n) = native {
                if !allowed.contains(n) {
                    return Err(invalid(&format!(
                        "native VLAN {n} must also be in the allowed set"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Compares what was read back (`found`, any order, may hold more ports) with `wanted`;
/// returns the read-back configs in the order of `wanted`, or the first mismatch.
pub fn verify_readback(
    switch: &str,
    wanted: &[PortChange],
    found: &[PortConfig],
) -> Result<Vec<PortConfig>, SwitchError> {
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let Some(f) = found.iter().find(|f| f.port == w.port) else {
            return Err(SwitchError::UnknownPort {
                switch: switch.to_owned(),
                port: w.port.clone(),
            });
        };
        if f.mode != w.mode {
            return Err(SwitchError::Mismatch {
                switch: switch.to_owned(),
                port: w.port.clone(),
                wanted: w.mode.clone(),
                found: f.mode.clone(),
            });
        }
        out.push(f.clone());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::switch::{parse_vlan_list, Vlan};

    fn access(port: &str, vlan: u16) -> PortChange {
        PortConfig::new(
            port,
            PortMode::Access {
                vlan: Vlan::new(vlan).unwrap(),
            },
        )
    }

    #[test]
    fn rejects_bad_batches() {
        assert!(validate_batch(&[access("e1", 10), access("e2", 20)]).is_ok());
        assert!(validate_batch(&[access("e1", 10), access("e1", 20)]).is_err());
        assert!(validate_batch(&[access("e1\nreload", 10)]).is_err());
        assert!(validate_batch(&[access("e1;x", 10)]).is_err());
        let empty = PortConfig::new(
            "e1",
            PortMode::Trunk {
                native: None,
                allowed: Default::default(),
            },
        );
        assert!(validate_batch(&[empty]).is_err());
        let native_outside = PortConfig::new(
            "e1",
            PortMode::Trunk {
                native: Some(Vlan::new(5).unwrap()),
                allowed: parse_vlan_list("10").unwrap(),
            },
        );
        assert!(matches!(
            validate_batch(&[native_outside]),
            Err(SwitchError::InvalidChange { .. })
        ));
    }

    #[test]
    fn verification_names_the_port() {
        let wanted = [access("e1", 10), access("e2", 20)];
        let found = [access("e2", 20), access("e1", 10), access("e3", 1)];
        let ok = verify_readback("s", &wanted, &found).unwrap();
        assert_eq!(ok[0].port, "e1");
        let found = [access("e1", 10), access("e2", 21)];
        match verify_readback("s", &wanted, &found) {
            Err(SwitchError::Mismatch {
                port,
                wanted,
                found,
                ..
            }) => {
                assert_eq!(port, "e2");
                assert_eq!(wanted.to_string(), "access vlan 20");
                assert_eq!(found.to_string(), "access vlan 21");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verify_readback("s", &wanted, &[access("e1", 10)]),
            Err(SwitchError::UnknownPort { .. })
        ));
    }
}
