//! Discovery end to end in the virtual datacenter (issue 5): one rack with two VMs in the
//! expected inventory (one behind ipmi_sim, one behind the lab Redfish BMC) and one VM that is
//! not. Each is powered on through its BMC by the agent's own drivers (`rack-agent bmc` in the
//! rack's namespace), PXE-boots from the rack agent into the microkernel, checks in with its
//! hardware inventory and is identified by serial — or, for the stray one, lands in the
//! discovered pool. Each VM's check-in carries its BMC's LAN settings read in-band (a KCS
//! interface backed by an ipmi_sim), which must name the address the lab gave that BMC. Afterwards the lab is torn down and nothing of it may remain.
//! `up_over_a_crashed_lab_cleans_it_first` checks that `Lab::up` removes a lab left behind
//! (with its directory, and by namespace prefix without it) before building.
//!
//! The lab is `Lab::shared`: tests added to this binary get the same lab while one is built.
//! Needs root and what scripts/test.sh installs (qemu-system-x86, ipxe-qemu, openvswitch-switch,
//! openipmi, ipmitool, python3, curl, qemu-utils, and the microkernel's build inputs).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metalfleet_tests::lab::{self, Lab, LabConfig};
use serde_json::Value;

/// TCG boots are slow and the machine is shared: generous, and only a bound (we poll).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

const CONFIG: &str = r#"
prefix = "mfdisc"
site = "disc"
coordinators = 3

[[racks]]
name = "disc-r1"
number = 1

[[racks.vms]]
name = "ipmi-vm"
serial = "DISC-0001"
bmc = "ipmi"
u_position = 7
disk_mb = 1536

[[racks.vms]]
name = "redfish-vm"
serial = "DISC-0002"
bmc = "redfish"
u_position = 9
disk_mb = 3072

[[racks.vms]]
name = "stray-vm"
serial = "DISC-STRAY-1"
bmc = "ipmi"
in_inventory = false
"#;

fn config() -> LabConfig {
    LabConfig::parse(&PathBuf::from("lab_discovery.rs:CONFIG"), CONFIG).unwrap()
}

fn lab_dir() -> PathBuf {
    std::env::temp_dir().join("metalfleet-lab-mfdisc")
}

fn shared_lab() -> Arc<Lab> {
    Lab::shared(&config(), &lab_dir()).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

/// Polls `cond` every 500 ms until it yields `Some`; panics naming `what` (and the consoles)
/// after `timeout`.
fn poll<T>(lab: &Lab, timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            let mut consoles = String::new();
            for r in &lab.config().racks {
                for v in &r.vms {
                    let text = lab.vm_console(&v.name).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    consoles.push_str(&format!(
                        "--- console of {} ---\n{}\n",
                        v.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
            }
            panic!("timed out after {timeout:?} waiting for {what}\n{consoles}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn by_serial<'a>(nodes: &'a Value, serial: &str) -> Option<&'a Value> {
    nodes
        .as_array()?
        .iter()
        .find(|n| n.get("serial").and_then(Value::as_str) == Some(serial))
}

/// A node whose check-in facts have arrived (the microkernel's inventory, not just a lease).
fn checked_in(n: &Value) -> bool {
    n.pointer("/facts/system/serial").is_some()
}

/// The microkernel read its BMC's LAN settings in-band (`ipmitool lan print 1` over the VM's
/// KCS interface, answered by the ipmi_sim behind it) and reported them at check-in: the
/// address is the one the lab gave that VM's BMC, for IPMI and Redfish BMCs alike.
fn assert_inband_bmc(facts: &Value, rack: &lab::RackConfig, v: &lab::VmConfig) {
    let bmc = &facts["bmc"];
    assert_eq!(
        bmc["ip"],
        v.bmc_ip(rack).to_string().as_str(),
        "in-band BMC facts of {}: {facts}",
        v.name
    );
    assert_eq!(bmc["netmask"], "255.255.255.0", "{} {bmc}", v.name);
    assert_eq!(bmc["source"], "Static Address", "{} {bmc}", v.name);
}

#[test]
fn vms_boot_through_their_bmcs_and_are_identified_by_serial() {
    let lab = shared_lab();
    let cfg = lab.config().clone();
    let rack = &cfg.racks[0];
    let known: Vec<_> = rack.vms.iter().filter(|v| v.in_inventory).collect();
    let stray = rack.vms.iter().find(|v| !v.in_inventory).unwrap();
    assert_eq!(known.len(), 2);

    // Nothing runs before the BMCs are told to power on.
    for v in &rack.vms {
        assert!(!lab.power_status(&v.name).unwrap(), "{} is on", v.name);
        assert!(!lab.vm_running(&v.name).unwrap());
    }
    // All three boot at once (TCG boots overlap well); the checks below still come in order.
    let powered = Instant::now();
    for v in &rack.vms {
        lab.power(&v.name, true).unwrap();
    }
    for v in &rack.vms {
        assert!(lab.power_status(&v.name).unwrap(), "{} reports off", v.name);
        assert!(lab.vm_running(&v.name).unwrap(), "no QEMU for {}", v.name);
    }

    // Both boot the microkernel, check in and are matched by serial to their records.
    let nodes = poll(
        &lab,
        BOOT_TIMEOUT,
        "both inventory VMs to be identified",
        || {
            let nodes = lab.metalctl_json(&["node", "list", "--identified"]).ok()?;
            known
                .iter()
                .all(|v| by_serial(&nodes, &v.serial).is_some_and(checked_in))
                .then_some(nodes)
        },
    );
    eprintln!("identified {:.1?} after power on", powered.elapsed());
    for v in &known {
        let n = by_serial(&nodes, &v.serial).unwrap();
        let mac = v.mac(rack, 0);
        assert_eq!(n["identified"], true, "{n}");
        assert_eq!(n["rack"], rack.name.as_str(), "{n}");
        assert_eq!(n["u_position"], v.u_position, "{n}");
        let macs: Vec<&str> = n["macs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(macs.contains(&mac.as_str()), "{mac} not in {n}");
        let facts = &n["facts"];
        assert_eq!(facts["system"]["serial"], v.serial.as_str(), "{facts}");
        assert_eq!(facts["cpu"]["threads"], 1, "{facts}");
        let mem = facts["memory_bytes"].as_u64().unwrap();
        let configured = u64::from(v.memory_mb) << 20;
        // The kernel keeps some memory for itself; MemTotal is a little below the VM's size.
        assert!(
            mem <= configured && mem > configured - (128 << 20),
            "memory {mem} for a {} MB VM",
            v.memory_mb
        );
        let disks = facts["disks"].as_array().unwrap();
        assert!(
            disks.iter().any(|d| d["name"] == "vda"
                && d["size_bytes"].as_u64() == Some(u64::from(v.disk_mb) << 20)),
            "no {} MB vda in {disks:?}",
            v.disk_mb
        );
        let nics = facts["nics"].as_array().unwrap();
        assert!(
            nics.iter().any(|x| x["mac"] == mac.as_str()),
            "no NIC {mac} in {nics:?}"
        );
        assert_inband_bmc(facts, rack, v);
    }
    // The operator's table shows the same: rack, U, identified, MAC.
    let table = lab.metalctl(&["node", "list"]).unwrap();
    for v in &known {
        let row = table
            .lines()
            .find(|l| l.starts_with(&v.serial))
            .unwrap_or_else(|| panic!("no row for {} in\n{table}", v.serial));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[2], rack.name, "{row}");
        assert_eq!(cols[3], v.u_position.to_string(), "{row}");
        assert_eq!(cols[4], "yes", "{row}");
        assert!(row.contains(&v.mac(rack, 0)), "{row}");
    }

    // The stray VM: its serial matches no record, so it waits in the discovered pool.
    let pool = poll(
        &lab,
        BOOT_TIMEOUT,
        "the stray VM in the discovered pool",
        || {
            let pool = lab.metalctl_json(&["node", "list", "--discovered"]).ok()?;
            by_serial(&pool, &stray.serial)
                .is_some_and(checked_in)
                .then_some(pool)
        },
    );
    eprintln!("stray in the pool {:.1?} after power on", powered.elapsed());
    let n = by_serial(&pool, &stray.serial).unwrap();
    assert_eq!(n["identified"], false, "{n}");
    assert_eq!(n["rack"], rack.name.as_str(), "{n}");
    assert!(n["u_position"].is_null(), "{n}");
    assert_eq!(n["macs"][0], stray.mac(rack, 0).as_str(), "{n}");
    assert_inband_bmc(&n["facts"], rack, stray);
    for v in &known {
        assert!(
            by_serial(&pool, &v.serial).is_none(),
            "{} in the pool",
            v.serial
        );
    }
    let identified = lab
        .metalctl_json(&["node", "list", "--identified"])
        .unwrap();
    assert!(by_serial(&identified, &stray.serial).is_none());
    let table = lab.metalctl(&["node", "list", "--discovered"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&stray.serial) && l.contains(" no ")),
        "{table}"
    );

    // Power off through the BMCs stops the QEMU processes.
    for v in &rack.vms {
        lab.power(&v.name, false).unwrap();
        assert!(!lab.vm_running(&v.name).unwrap(), "{} still runs", v.name);
    }

    // Teardown leaves nothing: no namespace, no process, no file.
    let dir = lab.dir().to_owned();
    let lab = Arc::try_unwrap(lab).expect("only this test holds the lab");
    lab.down().unwrap();
    let left = lab::leftovers(&dir, &cfg.prefix);
    assert!(left.is_empty(), "left after teardown: {left:?}");
}

/// A one-VM lab for the crash tests (its own prefix and directory; no boots).
fn small_config(prefix: &str) -> LabConfig {
    let text = format!(
        "prefix = \"{prefix}\"\ncoordinators = 1\n[[racks]]\nname = \"c1\"\nnumber = 5\n\
         [[racks.vms]]\nname = \"vm\"\nserial = \"CRASH-1\"\nbmc = \"ipmi\"\n"
    );
    LabConfig::parse(&PathBuf::from("small_config"), &text).unwrap()
}

#[test]
fn up_over_a_crashed_lab_cleans_it_first() {
    let config = small_config("mfcrash");
    let dir = std::env::temp_dir().join("metalfleet-lab-mfcrash");
    // A lab whose owner "crashed": processes (a VM among them) and directory left behind.
    let first = Lab::up(&config, &dir).unwrap();
    first.power("vm", true).unwrap();
    let qemu = first
        .vm_pid("vm")
        .unwrap()
        .expect("QEMU runs after power on");
    let mut old = first.running_pids();
    old.push(qemu);
    assert!(old.len() >= 4, "{old:?}");
    first.detach();

    // The next `up` in the same directory tears that lab down before building its own.
    let second = Lab::up(&config, &dir).unwrap();
    for pid in &old {
        assert!(
            !lab::alive(*pid),
            "process {pid} of the crashed lab survived"
        );
    }
    assert!(!second.vm_running("vm").unwrap());
    assert!(!second.power_status("vm").unwrap());
    second.detach();

    // Directory lost too: the namespaces (and what runs in them) are found by prefix.
    std::fs::remove_dir_all(&dir).unwrap();
    let third = Lab::up(&config, &dir).unwrap();
    third.down().unwrap();
    let left = lab::leftovers(&dir, &config.prefix);
    assert!(left.is_empty(), "left after teardown: {left:?}");
}
