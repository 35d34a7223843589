//! The lab's shape (`tests/lab/lab.toml`): raw TOML with unknown keys refused, validated into
//! [`LabConfig`], with every address, VLAN, MAC and interface name derived from it here so
//! the builder, the tests and the README agree.
//!
//! ```toml
//! prefix = "mflab"          # namespaces are <prefix>-core, <prefix>-<rack>, <prefix>-<rack>-bmc
//! site = "lab"              # the site the racks stand in
//! coordinators = 3          # 1..=5 Raft members on the mgmt network
//!
//! [[racks]]
//! name = "lab-r1"
//! number = 1                # 10.<n>.0.0/24 provisioning (VLAN 100+n), 10.<n>.1.0/24 BMCs (VLAN 200+n)
//!
//! [[racks.vms]]
//! name = "r1-ipmi"
//! serial = "LAB-R1-0001"
//! bmc = "ipmi"              # "ipmi" | "redfish"
//! in_inventory = true       # imported into the expected inventory (false: lands in the discovered pool)
//! u_position = 10           # default: 10 + 2 * (index in the rack)
//! nics = 1                  # 1..=4 virtio NICs, all on the provisioning VLAN
//! disk_mb = 2048            # the VM's virtio disk (qcow2, sparse)
//! firmware = "bios"         # "bios" (SeaBIOS) | "uefi" (OVMF)
//! memory_mb = 512
//! ```

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Address of the management bridge in the core namespace (coordinators listen here).
pub const MGMT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// First API port; coordinator `i` listens on `API_PORT_BASE + i`.
pub const API_PORT_BASE: u16 = 7440;
/// First Raft port; coordinator `i` uses `RAFT_PORT_BASE + i`.
pub const RAFT_PORT_BASE: u16 = 7450;
/// First fleet port; coordinator `i` uses `FLEET_PORT_BASE + i`.
pub const FLEET_PORT_BASE: u16 = 7460;
/// Port of each rack agent's HTTP server (iPXE scripts, assets, node API).
pub const AGENT_HTTP_PORT: u16 = 8080;
/// Port of each lab Redfish BMC.
pub const REDFISH_PORT: u16 = 443;
/// Default VM memory: the lab microkernel's initrd is ~40 MB compressed and unpacks into RAM.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Default VM disk size.
pub const DEFAULT_DISK_MB: u32 = 2048;
/// User name of every virtual BMC.
pub const BMC_USER: &str = "admin";
/// First port of the VMs' in-band IPMI system interfaces on a rack's host link: the ipmi_sim
/// of VM `j` listens for its QEMU on `<rack>.host_link_bmc_ip():KCS_PORT_BASE + j`.
pub const KCS_PORT_BASE: u16 = 9000;
/// First IPMI-over-LAN port of the Redfish VMs' in-band ipmi_sims, on the loopback of the
/// rack's BMC namespace (VM `j`: `INBAND_LAN_PORT_BASE + j`); never on the BMC VLAN.
pub const INBAND_LAN_PORT_BASE: u16 = 6230;

/// A config problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// Dotted key (`racks[0].vms[1].serial`), `-` for the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Which kind of virtual BMC a VM has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BmcKind {
    /// `ipmi_sim` (OpenIPMI) driving QEMU through `chassis_control.sh`.
    Ipmi,
    /// The lab Redfish BMC fixture (`tests/lab/vbmc/redfish_bmc.py`) with the same hook.
    Redfish,
}

impl BmcKind {
    /// The driver name the inventory and `rack-agent bmc --driver` use.
    pub fn driver(self) -> &'static str {
        match self {
            BmcKind::Ipmi => "ipmi",
            BmcKind::Redfish => "redfish",
        }
    }
}

/// The VM's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF (`/usr/share/ovmf/OVMF.fd`).
    Uefi,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    prefix: Option<String>,
    site: Option<String>,
    coordinators: Option<u8>,
    #[serde(default)]
    racks: Vec<RawRack>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRack {
    name: String,
    number: u8,
    #[serde(default)]
    vms: Vec<RawVm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    serial: String,
    bmc: BmcKind,
    in_inventory: Option<bool>,
    u_position: Option<u16>,
    nics: Option<u8>,
    disk_mb: Option<u32>,
    firmware: Option<Firmware>,
    memory_mb: Option<u32>,
}

/// The validated lab shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Name prefix of every namespace the lab creates (`<prefix>-core`, ...).
    pub prefix: String,
    /// Site of every rack.
    pub site: String,
    /// Number of coordinators.
    pub coordinators: u8,
    /// Racks, in file order.
    pub racks: Vec<RackConfig>,
}

/// One rack: an agent, a top-of-rack switch (OVS bridge) and its VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackConfig {
    /// Rack name (also the coordinator's).
    pub name: String,
    /// Numbering: subnets `10.<n>.0.0/24` and `10.<n>.1.0/24`, VLANs `100+n` and `200+n`.
    pub number: u8,
    /// Its VMs, in file order.
    pub vms: Vec<VmConfig>,
}

/// One VM and its virtual BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Lab-unique name.
    pub name: String,
    /// DMI system serial (`-smbios type=1,serial=`).
    pub serial: String,
    /// Its BMC kind.
    pub bmc: BmcKind,
    /// Whether the lab imports it into the expected inventory.
    pub in_inventory: bool,
    /// Lowest rack unit (inventory).
    pub u_position: u16,
    /// Number of NICs.
    pub nics: u8,
    /// Disk size.
    pub disk_mb: u32,
    /// Firmware.
    pub firmware: Firmware,
    /// Memory.
    pub memory_mb: u32,
    /// 1-based position in its rack (addresses and MACs derive from it).
    pub index: u8,
}

fn err(file: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.display().to_string(),
        key: key.into(),
        message: message.into(),
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl LabConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<LabConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path, "-", format!("cannot read: {e}")))?;
        LabConfig::parse(path, &text)
    }

    /// Parses and validates config text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<LabConfig, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err(path, "-", e.message().trim().replace('\n', " ")))?;
        let raw: RawLab = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string().as_str() {
                "." | "" => "-".to_owned(),
                p => p.to_owned(),
            };
            err(path, key, e.inner().message().trim().replace('\n', " "))
        })?;
        LabConfig::validate(path, raw)
    }

    fn validate(path: &Path, raw: RawLab) -> Result<LabConfig, ConfigError> {
        let prefix = raw.prefix.unwrap_or_else(|| "mflab".into());
        if !name_ok(&prefix) || prefix.len() > 16 {
            return Err(err(
                path,
                "prefix",
                format!("{prefix:?}: 1-16 of a-z, 0-9 and '-', not starting or ending with '-'"),
            ));
        }
        let site = raw.site.unwrap_or_else(|| "lab".into());
        if !name_ok(&site) {
            return Err(err(
                path,
                "site",
                format!("{site:?}: only a-z, 0-9 and '-'"),
            ));
        }
        let coordinators = raw.coordinators.unwrap_or(3);
        if !(1..=5).contains(&coordinators) {
            return Err(err(path, "coordinators", "must be between 1 and 5"));
        }
        if raw.racks.is_empty() {
            return Err(err(path, "racks", "at least one [[racks]] is needed"));
        }
        let mut rack_names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        let mut vm_names = BTreeSet::new();
        let mut serials = BTreeSet::new();
        let mut racks = Vec::new();
        for (ri, r) in raw.racks.into_iter().enumerate() {
            let key = format!("racks[{ri}]");
            if !name_ok(&r.name) || r.name.len() > 24 {
                return Err(err(
                    path,
                    format!("{key}.name"),
                    format!("{:?}: 1-24 of a-z, 0-9 and '-'", r.name),
                ));
            }
            if !rack_names.insert(r.name.clone()) {
                return Err(err(path, format!("{key}.name"), "listed twice"));
            }
            // 10.250.0.0/24 is the management network.
            if !(1..=99).contains(&r.number) {
                return Err(err(
                    path,
                    format!("{key}.number"),
                    "must be between 1 and 99",
                ));
            }
            if !numbers.insert(r.number) {
                return Err(err(path, format!("{key}.number"), "used by another rack"));
            }
            if r.vms.len() > 40 {
                return Err(err(path, format!("{key}.vms"), "at most 40 VMs per rack"));
            }
            let mut vms = Vec::new();
            for (vi, v) in r.vms.into_iter().enumerate() {
                let key = format!("{key}.vms[{vi}]");
                if !name_ok(&v.name) || v.name.len() > 32 {
                    return Err(err(
                        path,
                        format!("{key}.name"),
                        format!("{:?}: 1-32 of a-z, 0-9 and '-'", v.name),
                    ));
                }
                if !vm_names.insert(v.name.clone()) {
                    return Err(err(path, format!("{key}.name"), "used by another VM"));
                }
                if let Err(e) = v.serial.parse::<protocol::Serial>() {
                    return Err(err(path, format!("{key}.serial"), e.to_string()));
                }
                // Commas end a QEMU option value; keep serials to what the command line takes.
                if v.serial.contains(',') || v.serial.contains(char::is_whitespace) {
                    return Err(err(path, format!("{key}.serial"), "no commas or spaces"));
                }
                if !serials.insert(v.serial.clone()) {
                    return Err(err(path, format!("{key}.serial"), "used by another VM"));
                }
                let nics = v.nics.unwrap_or(1);
                if !(1..=4).contains(&nics) {
                    return Err(err(path, format!("{key}.nics"), "must be between 1 and 4"));
                }
                let disk_mb = v.disk_mb.unwrap_or(DEFAULT_DISK_MB);
                if !(64..=1_048_576).contains(&disk_mb) {
                    return Err(err(
                        path,
                        format!("{key}.disk_mb"),
                        "must be between 64 and 1048576",
                    ));
                }
                let memory_mb = v.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
                if !(256..=16_384).contains(&memory_mb) {
                    return Err(err(
                        path,
                        format!("{key}.memory_mb"),
                        "must be between 256 and 16384 (the microkernel unpacks into RAM)",
                    ));
                }
                let index = vi as u8 + 1;
                vms.push(VmConfig {
                    name: v.name,
                    serial: v.serial,
                    bmc: v.bmc,
                    in_inventory: v.in_inventory.unwrap_or(true),
                    u_position: v.u_position.unwrap_or(10 + 2 * vi as u16),
                    nics,
                    disk_mb,
                    firmware: v.firmware.unwrap_or(Firmware::Bios),
                    memory_mb,
                    index,
                });
            }
            racks.push(RackConfig {
                name: r.name,
                number: r.number,
                vms,
            });
        }
        Ok(LabConfig {
            prefix,
            site,
            coordinators,
            racks,
        })
    }

    /// The config as TOML that [`LabConfig::parse`] reads back unchanged (the lab directory
    /// keeps a copy so later commands know the shape).
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "prefix = {:?}\nsite = {:?}\ncoordinators = {}\n",
            self.prefix, self.site, self.coordinators
        );
        for r in &self.racks {
            out.push_str(&format!(
                "\n[[racks]]\nname = {:?}\nnumber = {}\n",
                r.name, r.number
            ));
            for v in &r.vms {
                out.push_str(&format!(
                    "\n[[racks.vms]]\nname = {:?}\nserial = {:?}\nbmc = {:?}\nin_inventory = {}\n\
                     u_position = {}\nnics = {}\ndisk_mb = {}\nfirmware = {:?}\nmemory_mb = {}\n",
                    v.name,
                    v.serial,
                    v.bmc.driver(),
                    v.in_inventory,
                    v.u_position,
                    v.nics,
                    v.disk_mb,
                    match v.firmware {
                        Firmware::Bios => "bios",
                        Firmware::Uefi => "uefi",
                    },
                    v.memory_mb
                ));
            }
        }
        out
    }

    /// The shipped default (`tests/lab/lab.toml`).
    pub fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/lab.toml")
    }

    /// Name of the core namespace (OVS, mgmt bridge, coordinators, VM taps and QEMU).
    pub fn core_ns(&self) -> String {
        format!("{}-core", self.prefix)
    }

    /// Name of a rack's agent namespace.
    pub fn rack_ns(&self, rack: &RackConfig) -> String {
        format!("{}-{}", self.prefix, rack.name)
    }

    /// Name of a rack's virtual-BMC namespace.
    pub fn bmc_ns(&self, rack: &RackConfig) -> String {
        format!("{}-{}-bmc", self.prefix, rack.name)
    }

    /// Every namespace this config creates.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.core_ns()];
        for r in &self.racks {
            v.push(self.rack_ns(r));
            v.push(self.bmc_ns(r));
        }
        v
    }

    /// A VM and its rack by VM name.
    pub fn vm(&self, name: &str) -> Option<(&RackConfig, &VmConfig)> {
        self.racks
            .iter()
            .find_map(|r| r.vms.iter().find(|v| v.name == name).map(|v| (r, v)))
    }

    /// A rack by name.
    pub fn rack(&self, name: &str) -> Option<&RackConfig> {
        self.racks.iter().find(|r| r.name == name)
    }

    /// Coordinator `i`'s API URL (1-based).
    pub fn api_url(&self, i: u8) -> String {
        format!("https://{MGMT_IP}:{}", API_PORT_BASE + u16::from(i))
    }

    /// Coordinator `i`'s Raft address.
    pub fn raft_addr(&self, i: u8) -> String {
        format!("{MGMT_IP}:{}", RAFT_PORT_BASE + u16::from(i))
    }

    /// Coordinator `i`'s fleet (rack agent) address.
    pub fn fleet_addr(&self, i: u8) -> String {
        format!("{MGMT_IP}:{}", FLEET_PORT_BASE + u16::from(i))
    }
}

impl RackConfig {
    /// The agent's provisioning address (DHCP server, router, HTTP/TFTP).
    pub fn agent_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number, 0, 1)
    }

    /// The agent's address on the BMC VLAN.
    pub fn agent_bmc_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number, 1, 1)
    }

    /// The agent's address on the management network.
    pub fn agent_mgmt_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, 0, 10 + self.number)
    }

    /// The core namespace's end of the host link (`h<n>`), the wire between the rack's QEMU
    /// processes and its BMCs that stands in for the servers' internal BMC bus.
    pub fn host_link_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(169, 254, self.number, 1)
    }

    /// The BMC namespace's end of the host link (`host`): the in-band IPMI listeners.
    pub fn host_link_bmc_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(169, 254, self.number, 2)
    }

    /// Provisioning VLAN (access tag of the agent's and the VMs' ports).
    pub fn prov_vlan(&self) -> u16 {
        100 + u16::from(self.number)
    }

    /// BMC VLAN.
    pub fn bmc_vlan(&self) -> u16 {
        200 + u16::from(self.number)
    }

    /// The OVS bridge (top-of-rack switch); also its interface in the core namespace.
    pub fn bridge(&self) -> String {
        format!("tor{}", self.number)
    }

    /// The switch name in the agent's `[[switches]]` and the inventory's NIC cabling.
    pub fn switch_name(&self) -> String {
        format!("{}-tor", self.name)
    }

    /// The DHCP discovery pool.
    pub fn pool(&self) -> String {
        format!("10.{n}.0.100-10.{n}.0.199", n = self.number)
    }
}

impl VmConfig {
    /// MAC of NIC `k` (0-based): `52:54:00:<rack>:<vm>:<k>`.
    pub fn mac(&self, rack: &RackConfig, k: u8) -> String {
        format!("52:54:00:{:02x}:{:02x}:{:02x}", rack.number, self.index, k)
    }

    /// Every NIC's MAC.
    pub fn macs(&self, rack: &RackConfig) -> Vec<String> {
        (0..self.nics).map(|k| self.mac(rack, k)).collect()
    }

    /// Tap (and OVS port) name of NIC `k`: `t<rack>v<vm>n<k>`.
    pub fn tap(&self, rack: &RackConfig, k: u8) -> String {
        format!("t{}v{}n{k}", rack.number, self.index)
    }

    /// Its BMC's address on the BMC VLAN.
    pub fn bmc_ip(&self, rack: &RackConfig) -> Ipv4Addr {
        Ipv4Addr::new(10, rack.number, 1, 10 + self.index)
    }

    /// Where its BMC serves its in-band IPMI system interface (QEMU `ipmi-bmc-extern`
    /// connects here; the guest sees a KCS interface).
    pub fn kcs_addr(&self, rack: &RackConfig) -> SocketAddrV4 {
        SocketAddrV4::new(
            rack.host_link_bmc_ip(),
            KCS_PORT_BASE + u16::from(self.index),
        )
    }

    /// IPMI-over-LAN listener of a Redfish VM's in-band ipmi_sim (loopback of the BMC
    /// namespace).
    pub fn inband_lan_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::LOCALHOST,
            INBAND_LAN_PORT_BASE + u16::from(self.index),
        )
    }

    /// The static address the inventory reserves for its first NIC.
    pub fn static_ip(&self, rack: &RackConfig) -> Ipv4Addr {
        Ipv4Addr::new(10, rack.number, 0, 20 + self.index)
    }

    /// Its BMC's password (lab only; lives in the lab directory and the inventory).
    pub fn bmc_password(&self) -> String {
        format!("lab-{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<LabConfig, ConfigError> {
        LabConfig::parse(Path::new("lab.toml"), text)
    }

    const ONE: &str = "[[racks]]\nname = \"r1\"\nnumber = 1\n[[racks.vms]]\nname = \"a\"\nserial = \"S1\"\nbmc = \"ipmi\"\n";

    #[test]
    fn defaults_and_derived_names() {
        let c = parse(ONE).unwrap();
        assert_eq!(c.prefix, "mflab");
        assert_eq!(c.coordinators, 3);
        let (r, v) = c.vm("a").unwrap();
        assert_eq!(v.mac(r, 0), "52:54:00:01:01:00");
        assert_eq!(v.tap(r, 0), "t1v1n0");
        assert_eq!(v.bmc_ip(r).to_string(), "10.1.1.11");
        assert_eq!(v.u_position, 10);
        assert_eq!(c.namespaces(), ["mflab-core", "mflab-r1", "mflab-r1-bmc"]);
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let c = LabConfig::load(&LabConfig::default_path()).unwrap();
        assert_eq!(c.racks.len(), 2);
        assert_eq!(
            c.racks
                .iter()
                .flat_map(|r| &r.vms)
                .filter(|v| !v.in_inventory)
                .count(),
            1
        );
    }

    #[test]
    fn to_toml_round_trips() {
        let c = LabConfig::load(&LabConfig::default_path()).unwrap();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn errors_name_file_and_key() {
        for (text, want) in [
            ("bogus = 1\n", "lab.toml: bogus: unknown field"),
            (
                &ONE.replace("bmc = \"ipmi\"", "bmc = \"ilo\""),
                "lab.toml: racks[0].vms[0].bmc: unknown variant",
            ),
            (
                &ONE.replace("number = 1", "number = 250"),
                "lab.toml: racks[0].number: must be between 1 and 99",
            ),
            (
                &format!("{ONE}nics = 9\n"),
                "lab.toml: racks[0].vms[0].nics: must be between 1 and 4",
            ),
            ("prefix = \"A B\"\n", "lab.toml: prefix: "),
            ("", "lab.toml: racks: at least one"),
            (
                &format!("{ONE}[[racks.vms]]\nname = \"b\"\nserial = \"S1\"\nbmc = \"redfish\"\n"),
                "lab.toml: racks[0].vms[1].serial: used by another VM",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
