//! Hardware inventory as the node reports it at check-in: DMI identity, CPUs, memory, disks,
//! NICs, LLDP neighbours and the BMC's LAN configuration. Read from a filesystem root (`/` on a
//! node, a fixture tree in tests) plus the output of `lldpctl` and `ipmitool` when present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the node-agent reports about its machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// DMI system identity.
    pub system: System,
    /// Processors.
    pub cpu: Cpu,
    /// Installed memory in bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// Block devices that are disks (no loop, ram, partitions).
    pub disks: Vec<Disk>,
    /// Network interfaces with a MAC (no loopback, no virtual bridges).
    pub nics: Vec<Nic>,
    /// LLDP neighbours per local interface.
    pub lldp: Vec<LldpNeighbour>,
    /// The BMC's LAN configuration, when an IPMI device answers.
    pub bmc: Option<BmcLan>,
}

/// DMI type 1 (system) and BIOS facts from `/sys/class/dmi/id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct System {
    /// Chassis/system serial number: the key that identifies the server.
    pub serial: Option<String>,
    /// Manufacturer.
    pub vendor: Option<String>,
    /// Product name (model).
    pub model: Option<String>,
    /// System UUID.
    pub uuid: Option<String>,
    /// BIOS version.
    pub bios_version: Option<String>,
}

/// Processor summary from `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Model name of the first processor.
    pub model: Option<String>,
    /// Distinct physical packages.
    pub sockets: u32,
    /// Physical cores across all packages.
    pub cores: u32,
    /// Logical processors.
    pub threads: u32,
}

/// One disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`, `vda`).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Serial number, if the device reports one.
    pub serial: Option<String>,
    /// Model, if reported.
    pub model: Option<String>,
    /// True for spinning media.
    pub rotational: bool,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// MAC address (lower-case, colon-separated).
    pub mac: String,
    /// True when the link is up (carrier).
    pub link_up: bool,
    /// Negotiated speed in Mb/s, when known.
    pub speed_mbps: Option<u32>,
}

/// One LLDP neighbour, as `lldpctl -f json` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LldpNeighbour {
    /// Local interface.
    pub interface: String,
    /// Neighbour's system name (the switch).
    pub switch: Option<String>,
    /// Neighbour's chassis id.
    pub chassis_id: Option<String>,
    /// Neighbour's port id (the switch port).
    pub port: Option<String>,
    /// Neighbour's port description.
    pub port_description: Option<String>,
}

/// BMC LAN configuration from `ipmitool lan print`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcLan {
    /// IP address.
    pub ip: Option<String>,
    /// Netmask.
    pub netmask: Option<String>,
    /// Default gateway.
    pub gateway: Option<String>,
    /// BMC MAC address.
    pub mac: Option<String>,
    /// Address source (`Static Address`, `DHCP Address`).
    pub source: Option<String>,
}

/// Reads inventory below `root` (`/` on a node).
#[derive(Debug, Clone)]
pub struct Collector {
    root: PathBuf,
}

impl Collector {
    /// A collector for the filesystem rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Collector {
        Collector { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn read(&self, rel: &str) -> Option<String> {
        read_trimmed(&self.path(rel))
    }

    /// Everything readable from the filesystem (LLDP and BMC come from commands: see
    /// [`parse_lldpctl_json`] and [`parse_lan_print`]).
    pub fn collect(&self) -> Inventory {
        Inventory {
            system: self.system(),
            cpu: self
                .read("proc/cpuinfo")
                .map(|t| parse_cpuinfo(&t))
                .unwrap_or_default(),
            memory_bytes: self
                .read("proc/meminfo")
                .and_then(|t| parse_meminfo(&t))
                .unwrap_or(0),
            disks: self.disks(),
            nics: self.nics(),
            lldp: Vec::new(),
            bmc: None,
        }
    }

    fn system(&self) -> System {
        let dmi = |f: &str| {
            self.read(&format!("sys/class/dmi/id/{f}"))
                .filter(|v| !is_placeholder(v))
        };
        System {
            serial: dmi("product_serial").or_else(|| dmi("chassis_serial")),
            vendor: dmi("sys_vendor"),
            model: dmi("product_name"),
            uuid: dmi("product_uuid"),
            bios_version: dmi("bios_version"),
        }
    }

    fn disks(&self) -> Vec<Disk> {
        let mut out = Vec::new();
        for name in list_dir(&self.path("sys/block")) {
            if ["loop", "ram", "zram", "dm-", "md", "sr", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                continue;
            }
            let base = format!("sys/block/{name}");
            let sectors: u64 = self
                .read(&format!("{base}/size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if sectors == 0 {
                continue;
            }
            out.push(Disk {
                size_bytes: sectors.saturating_mul(512),
                serial: self
                    .read(&format!("{base}/device/serial"))
                    .or_else(|| self.read(&format!("{base}/serial")))
                    .filter(|s| !s.is_empty()),
                model: self
                    .read(&format!("{base}/device/model"))
                    .filter(|s| !s.is_empty()),
                rotational: self.read(&format!("{base}/queue/rotational")).as_deref() == Some("1"),
                name,
            });
        }
        out
    }

    fn nics(&self) -> Vec<Nic> {
        let mut out = Vec::new();
        for name in list_dir(&self.path("sys/class/net")) {
            let base = format!("sys/class/net/{name}");
            // ARPHRD_ETHER only: no loopback, tunnels or IPoIB.
            if self.read(&format!("{base}/type")).as_deref() != Some("1") {
                continue;
            }
            // Bridges and bonds are configuration, not hardware.
            if self.path(&format!("{base}/bridge")).exists()
                || self.path(&format!("{base}/bonding")).exists()
            {
                continue;
            }
            let Some(mac) = self.read(&format!("{base}/address")) else {
                continue;
            };
            if mac == "00:00:00:00:00:00" {
                continue;
            }
            out.push(Nic {
                link_up: self.read(&format!("{base}/carrier")).as_deref() == Some("1"),
                speed_mbps: self
                    .read(&format!("{base}/speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|s| u32::try_from(s).ok()),
                mac: mac.to_ascii_lowercase(),
                name,
            });
        }
        out
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Vendors fill unset DMI strings with placeholders; those identify nothing.
fn is_placeholder(v: &str) -> bool {
    let l = v.trim().to_ascii_lowercase();
    l.is_empty()
        || [
            "to be filled by o.e.m.",
            "not specified",
            "default string",
            "system serial number",
            "none",
            "0",
            "0123456789",
        ]
        .contains(&l.as_str())
}

/// Summarises `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    let mut cores_per_package: BTreeMap<String, u32> = BTreeMap::new();
    let mut package = String::from("0");
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => cpu.threads += 1,
            "model name" if cpu.model.is_none() => cpu.model = Some(v.to_owned()),
            "physical id" => package = v.to_owned(),
            "cpu cores" => {
                if let Ok(n) = v.parse() {
                    cores_per_package.insert(package.clone(), n);
                }
            }
            _ => {}
        }
    }
    cpu.sockets = u32::try_from(cores_per_package.len().max(1)).unwrap_or(1);
    cpu.cores = if cores_per_package.is_empty() {
        cpu.threads
    } else {
        cores_per_package.values().sum()
    };
    cpu
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Neighbours from `lldpctl -f json` (lldpd 1.x: `{"lldp":{"interface":{IF:{...}}}}`, or a
/// list of such objects when there are several).
pub fn parse_lldpctl_json(text: &str) -> Vec<LldpNeighbour> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let interfaces = &v["lldp"]["interface"];
    let entries: Vec<(String, &serde_json::Value)> = match interfaces {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        serde_json::Value::Array(list) => list
            .iter()
            .filter_map(|o| o.as_object())
            .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v)))
            .collect(),
        _ => Vec::new(),
    };
    for (ifname, e) in entries {
        let chassis = e["chassis"].as_object().and_then(|m| m.iter().next());
        let switch = chassis.map(|(name, _)| name.clone());
        let chassis_id = chassis.and_then(|(_, c)| c["id"]["value"].as_str().map(str::to_owned));
        out.push(LldpNeighbour {
            interface: ifname,
            switch,
            chassis_id,
            port: e["port"]["id"]["value"].as_str().map(str::to_owned),
            port_description: e["port"]["descr"].as_str().map(str::to_owned),
        });
    }
    out
}

/// The fields we keep from `ipmitool lan print`.
pub fn parse_lan_print(text: &str) -> BmcLan {
    let mut lan = BmcLan::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().to_owned());
        match k {
            "IP Address" => lan.ip = Some(v),
            "Subnet Mask" => lan.netmask = Some(v),
            "Default Gateway IP" => lan.gateway = Some(v),
            "MAC Address" => lan.mac = Some(v.to_ascii_lowercase()),
            "IP Address Source" => lan.source = Some(v),
            _ => {}
        }
    }
    lan
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn collects_from_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "sys/class/dmi/id/product_serial", "SN-0042\n");
        write(r, "sys/class/dmi/id/sys_vendor", "QEMU\n");
        write(
            r,
            "sys/class/dmi/id/product_name",
            "Standard PC (i440FX + PIIX, 1996)\n",
        );
        write(
            r,
            "sys/class/dmi/id/product_uuid",
            "To Be Filled By O.E.M.\n",
        );
        write(
            r,
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: QEMU Virtual CPU\nphysical id\t: 0\ncpu cores\t: 2\n\n\
             processor\t: 1\nmodel name\t: QEMU Virtual CPU\nphysical id\t: 0\ncpu cores\t: 2\n",
        );
        write(
            r,
            "proc/meminfo",
            "MemTotal:        2048000 kB\nMemFree: 1 kB\n",
        );
        write(r, "sys/block/vda/size", "2097152\n");
        write(r, "sys/block/vda/serial", "DISK-A\n");
        write(r, "sys/block/vda/queue/rotational", "1\n");
        write(r, "sys/block/loop0/size", "100\n");
        write(r, "sys/class/net/eth0/type", "1\n");
        write(r, "sys/class/net/eth0/address", "52:54:00:AB:CD:EF\n");
        write(r, "sys/class/net/eth0/carrier", "1\n");
        write(r, "sys/class/net/eth0/speed", "-1\n");
        write(r, "sys/class/net/lo/type", "772\n");
        write(r, "sys/class/net/lo/address", "00:00:00:00:00:00\n");

        let inv = Collector::new(r).collect();
        assert_eq!(inv.system.serial.as_deref(), Some("SN-0042"));
        assert_eq!(inv.system.vendor.as_deref(), Some("QEMU"));
        assert_eq!(inv.system.uuid, None, "placeholder dropped");
        assert_eq!(inv.cpu.threads, 2);
        assert_eq!(inv.cpu.cores, 2);
        assert_eq!(inv.cpu.sockets, 1);
        assert_eq!(inv.memory_bytes, 2048000 * 1024);
        assert_eq!(
            inv.disks,
            vec![Disk {
                name: "vda".into(),
                size_bytes: 1 << 30,
                serial: Some("DISK-A".into()),
                model: None,
                rotational: true,
            }]
        );
        assert_eq!(
            inv.nics,
            vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:ab:cd:ef".into(),
                link_up: true,
                speed_mbps: None,
            }]
        );
    }

    #[test]
    fn lldp_and_lan_print() {
        let json = r#"{"lldp":{"interface":{"eth0":{"via":"LLDP","chassis":{"tor1":{"id":{"type":"mac","value":"aa:bb:cc:00:00:01"}}},"port":{"id":{"type":"ifname","value":"Ethernet1/12"},"descr":"server 12"}}}}}"#;
        let n = parse_lldpctl_json(json);
        assert_eq!(
            n,
            vec![LldpNeighbour {
                interface: "eth0".into(),
                switch: Some("tor1".into()),
                chassis_id: Some("aa:bb:cc:00:00:01".into()),
                port: Some("Ethernet1/12".into()),
                port_description: Some("server 12".into()),
            }]
        );
        assert!(parse_lldpctl_json("not json").is_empty());
        let lan = parse_lan_print(
            "Set in Progress         : Set Complete\nIP Address Source       : Static Address\n\
             IP Address              : 10.1.0.5\nSubnet Mask             : 255.255.255.0\n\
             MAC Address             : 52:54:00:00:00:AA\nDefault Gateway IP      : 10.1.0.1\n",
        );
        assert_eq!(lan.ip.as_deref(), Some("10.1.0.5"));
        assert_eq!(lan.gateway.as_deref(), Some("10.1.0.1"));
        assert_eq!(lan.mac.as_deref(), Some("52:54:00:00:00:aa"));
        assert_eq!(lan.source.as_deref(), Some("Static Address"));
    }
}
