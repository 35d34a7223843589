//! LLDP on the lab's top-of-rack switches: one `lldpd` per rack in the core namespace, on the
//! host side of that rack's VM taps, advertising the switch's name (`<rack>-tor`, what the
//! inventory's cabling and the agent's `[[switches]]` say) and, on each tap, the port id the
//! inventory names for the NIC cabled there. `lldp.check` in the microkernel hears exactly
//! what the expected inventory says.
//!
//! Why lldpd on the taps and not Open vSwitch's own LLDP: OVS sends LLDP only as part of
//! Auto Attach (a per-bridge `AutoAttach` record, Avaya TLVs), with the interface name as port
//! id and no per-port override. A frame lldpd writes to a tap goes straight to the QEMU process
//! reading it, i.e. to the VM's NIC (the OVS userspace datapath reads only frames arriving on
//! the tap, so OVS never forwards it), and OVS's NORMAL action does not forward the VM's own
//! LLDP frames (01:80:c2:00:00:0e) to other ports. Measured: the first frame reaches a reader
//! that opens the tap within a second; lldpd waits while a tap has no carrier (VM off).

use std::path::{Path, PathBuf};

use super::{io, mkdir, write, Lab, LabError, RackConfig, Result, START_TIMEOUT};
use crate::lab::sys::{ns_run, wait_for};

/// Seconds between advertisements. A real switch sends every 30 s; the lab's steps should not
/// wait that long for the first frame after a VM boots.
pub const TX_INTERVAL_SECS: u32 = 5;

/// What one switch advertises, and how lldpd is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchLldp {
    /// LLDP system name (the switch's name in the inventory's cabling).
    pub system_name: String,
    /// System description (what `lldpctl` shows under the chassis).
    pub description: String,
    /// `(local interface, advertised port id, port description)`; lldpd uses only these.
    pub ports: Vec<(String, String, String)>,
    /// Seconds between advertisements.
    pub tx_interval_secs: u32,
}

impl SwitchLldp {
    /// The top-of-rack switch of `rack`: system name `rack.switch_name()`, and on each VM tap
    /// the tap's name as port id (the inventory cables NIC k of a VM to `<switch>:<tap>`).
    pub fn for_rack(rack: &RackConfig) -> SwitchLldp {
        let ports = rack
            .vms
            .iter()
            .flat_map(|v| {
                (0..v.nics).map(move |k| {
                    let tap = v.tap(rack, k);
                    (tap.clone(), tap, format!("{} NIC {}", v.name, k + 1))
                })
            })
            .collect();
        SwitchLldp {
            system_name: rack.switch_name(),
            description: format!(
                "Metalfleet lab top-of-rack switch of {} (Open vSwitch bridge {})",
                rack.name,
                rack.bridge()
            ),
            ports,
            tx_interval_secs: TX_INTERVAL_SECS,
        }
    }

    /// The lldpcli commands lldpd runs at start (`-O`): it sends nothing before they are
    /// applied, so no frame ever carries the host's name or the interface's own port id.
    pub fn config(&self) -> Result<String> {
        let mut out = String::new();
        for (what, v) in std::iter::once(("system name", &self.system_name)).chain(
            self.ports
                .iter()
                .flat_map(|(i, p, _)| [("interface", i), ("port id", p)]),
        ) {
            // lldpcli splits its commands on whitespace and lldpd's -I on commas.
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || ",\"'#".contains(c)) {
                return Err(LabError::Other(format!(
                    "LLDP {what} {v:?}: must be non-empty without whitespace, commas, quotes or #"
                )));
            }
        }
        out.push_str(&format!(
            "configure system hostname {}\nconfigure lldp tx-interval {}\n",
            self.system_name, self.tx_interval_secs
        ));
        for (iface, port, descr) in &self.ports {
            let descr: String = descr.chars().filter(|c| !"\"'#\n".contains(*c)).collect();
            out.push_str(&format!(
                "configure ports {iface} lldp portidsubtype local {port} description \"{descr}\"\n"
            ));
        }
        Ok(out)
    }

    /// lldpd's command line: in the foreground (`-d`, so the lab owns its PID), its own control
    /// socket, only these interfaces, no kernel version or LLDP-MED inventory advertised.
    pub fn command(&self, socket: &Path, config: &Path) -> Vec<String> {
        let ifaces: Vec<&str> = self.ports.iter().map(|(i, _, _)| i.as_str()).collect();
        vec![
            "lldpd".into(),
            "-d".into(),
            "-k".into(),
            "-i".into(),
            "-S".into(),
            self.description.clone(),
            "-u".into(),
            socket.display().to_string(),
            "-I".into(),
            ifaces.join(","),
            "-O".into(),
            config.display().to_string(),
        ]
    }
}

/// The system name lldpd behind `socket` (in `ns`) advertises, once it answers:
/// `lldpcli show chassis` (`{"local-chassis":{"chassis":{NAME:{...}}}}`).
pub fn advertised_name(ns: &str, socket: &Path) -> Option<String> {
    let out = ns_run(
        ns,
        &[
            "lldpcli",
            "-u",
            &socket.display().to_string(),
            "-f",
            "json",
            "show",
            "chassis",
        ],
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["local-chassis"]["chassis"]
        .as_object()?
        .keys()
        .next()
        .cloned()
}

/// Starts `switch`'s lldpd in `ns` with its files in `dir` (`<name>.conf`, `<name>.sock`)
/// through `spawn(args)`, and waits until it advertises the switch's name.
pub fn start(
    ns: &str,
    dir: &Path,
    name: &str,
    switch: &SwitchLldp,
    spawn: impl FnOnce(&[&str]) -> Result<()>,
) -> Result<PathBuf> {
    mkdir(dir)?;
    let config = dir.join(format!("{name}.conf"));
    let socket = dir.join(format!("{name}.sock"));
    write(&config, &switch.config()?)?;
    // A socket left by a killed lldpd makes the next one refuse to start.
    if socket.exists() {
        std::fs::remove_file(&socket).map_err(io(format!("removing {}", socket.display())))?;
    }
    let args = switch.command(&socket, &config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(&args)?;
    wait_for(
        START_TIMEOUT,
        &format!("lldpd of {} to advertise its name", switch.system_name),
        || {
            Ok(advertised_name(ns, &socket)
                .filter(|n| *n == switch.system_name)
                .map(|_| ()))
        },
    )?;
    Ok(socket)
}

impl Lab {
    /// LLDP on every rack's top-of-rack switch (after the taps exist). The lldpd processes
    /// are recorded like every lab process; teardown stops them by PID.
    pub(super) fn lldp(&self) -> Result<()> {
        let core = self.core_ns();
        for rack in &self.config.racks {
            let switch = SwitchLldp::for_rack(rack);
            if switch.ports.is_empty() {
                // lldpd without -I would talk on every interface of the core namespace.
                continue;
            }
            let name = format!("lldpd-{}", rack.name);
            start(&core, &self.lldp_dir(), &rack.name, &switch, |args| {
                self.spawn(&core, &name, args, &[])
            })?;
        }
        Ok(())
    }

    /// Where the switches' lldpd configs and control sockets live.
    pub fn lldp_dir(&self) -> PathBuf {
        self.dir.join("lldp")
    }

    /// The control socket of `rack`'s switch lldpd (`lldpcli -u <it> show neighbors` in the
    /// core namespace shows what the VMs' microkernels advertise back).
    pub fn lldp_socket(&self, rack: &str) -> Result<PathBuf> {
        let rack = self.rack(rack)?;
        Ok(self.lldp_dir().join(format!("{}.sock", rack.name)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::lab::LabConfig;

    #[test]
    fn each_rack_advertises_its_switch_name_and_the_inventory_port_of_each_tap() {
        let cfg = LabConfig::parse(
            Path::new("lab.toml"),
            r#"prefix = "mft"
site = "lab"
coordinators = 1
[[racks]]
name = "lab-r1"
number = 1
[[racks.vms]]
name = "a"
serial = "S-A"
bmc = "ipmi"
nics = 2
[[racks.vms]]
name = "b"
serial = "S-B"
bmc = "ipmi"
"#,
        )
        .unwrap();
        let s = SwitchLldp::for_rack(&cfg.racks[0]);
        assert_eq!(s.system_name, "lab-r1-tor");
        assert_eq!(
            s.ports,
            vec![
                ("t1v1n0".into(), "t1v1n0".into(), "a NIC 1".into()),
                ("t1v1n1".into(), "t1v1n1".into(), "a NIC 2".into()),
                ("t1v2n0".into(), "t1v2n0".into(), "b NIC 1".into()),
            ]
        );
        let text = s.config().unwrap();
        assert!(text
            .starts_with("configure system hostname lab-r1-tor\nconfigure lldp tx-interval 5\n"));
        assert!(text.contains(
            "configure ports t1v1n1 lldp portidsubtype local t1v1n1 description \"a NIC 2\"\n"
        ));
        let cmd = s.command(Path::new("/l/r.sock"), Path::new("/l/r.conf"));
        let i = cmd.iter().position(|a| a == "-I").unwrap();
        assert_eq!(cmd[i + 1], "t1v1n0,t1v1n1,t1v2n0");
    }

    #[test]
    fn names_lldpcli_would_split_are_refused() {
        let s = SwitchLldp {
            system_name: "tor 1".into(),
            description: String::new(),
            ports: vec![],
            tx_interval_secs: 5,
        };
        let e = s.config().unwrap_err().to_string();
        assert!(e.contains("LLDP system name \"tor 1\""), "{e}");
        let s = SwitchLldp {
            system_name: "tor1".into(),
            ports: vec![("a,b".into(), "p".into(), String::new())],
            ..s
        };
        assert!(s
            .config()
            .unwrap_err()
            .to_string()
            .contains("interface \"a,b\""));
    }
}
