//! LLDP cabling check against the lab's switch side, without VMs: the lab's own top-of-rack
//! lldpd (`metalfleet_tests::lab::lldp`, as `lab up` configures it for a rack) on one end of a
//! veth named like the VM's tap, and lldpd as the microkernel runs it on the other end (`eth0`
//! with the VM's MAC). `lldpctl -f json` on the node side goes through the agent's
//! `parse_lldp` and `check_cabling` against the cabling the lab's inventory records for the
//! VM (`eno1=<mac>@<rack>-tor:<tap>`): the names differ (eno1 / eth0), the MAC matches.
//! A VM in the real lab hears the same lldpd through its tap (verified by hand, see
//! tests/lab/README.md, "LLDP").
//!
//! Needs root, iproute2 and lldpd.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metalfleet_tests::lab::lldp::{self, SwitchLldp};
use metalfleet_tests::lab::LabConfig;
use rack_agent::executor::steps::node::{
    check_cabling, node_interfaces, parse_lldp, with_macs, ExpectedLink,
};
use serde_json::Value;

/// A bound on waiting for the first frame (lldpd sends at once, then every 5 s); we poll.
const HEAR_TIMEOUT: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
prefix = "mflldt"
site = "lab"
coordinators = 1
[[racks]]
name = "lab-r1"
number = 1
[[racks.vms]]
name = "r1-ipmi"
serial = "LAB-R1-0001"
bmc = "ipmi"
nics = 2
"#;

/// Two namespaces and the lldpd processes started in them; dropping it stops the processes by
/// PID and deletes the namespaces.
struct Rig {
    switch_ns: String,
    node_ns: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ns_output(ns: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Rig {
    fn new() -> Rig {
        let id = std::process::id();
        let rig = Rig {
            switch_ns: format!("mflldt{id}-sw"),
            node_ns: format!("mflldt{id}-node"),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        for ns in [&rig.switch_ns, &rig.node_ns] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        rig
    }

    fn spawn(&mut self, ns: &str, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn logs(&self) -> String {
        ["switch", "node"]
            .iter()
            .map(|n| {
                let p = self.dir.path().join(format!("{n}.log"));
                format!(
                    "--- {n} ---\n{}",
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // `ip netns exec` execs lldpd: each child is an lldpd monitor; its worker (a child of
        // it, in the same namespace) exits with it, and whatever is left is killed by PID.
        for c in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        for ns in [&self.switch_ns, &self.node_ns] {
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            for pid in pids.unwrap_or_default().split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The neighbours `lldpcli -u <socket> -f json show neighbors` reports in `ns` (what the
/// lldp.check step runs in the microkernel as `lldpctl -f json`), through the agent's parser,
/// once there are any.
fn neighbours(ns: &str, socket: &Path) -> Vec<Value> {
    let sock = socket.display().to_string();
    let deadline = Instant::now() + HEAR_TIMEOUT;
    loop {
        let args = ["lldpcli", "-u", &sock, "-f", "json", "show", "neighbors"];
        if let Some(out) = ns_output(ns, &args) {
            let seen = parse_lldp(&serde_json::from_str(&out).unwrap());
            if !seen.is_empty() {
                return seen;
            }
        }
        assert!(Instant::now() < deadline, "no LLDP neighbour heard in {ns}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_node_hears_its_switch_and_port_as_the_inventory_cables_them() {
    let cfg = LabConfig::parse(&PathBuf::from("lab_lldp.rs:CONFIG"), CONFIG).unwrap();
    let rack = &cfg.racks[0];
    let vm = &rack.vms[0];
    let mut rig = Rig::new();
    // The VM's first NIC: the tap's name on the switch side, the VM's MAC on the node side.
    let tap = vm.tap(rack, 0);
    let mac = vm.mac(rack, 0);
    let (sw, node) = (rig.switch_ns.clone(), rig.node_ns.clone());
    ip(&[
        "link", "add", &tap, "netns", &sw, "type", "veth", "peer", "name", "eth0", "netns", &node,
    ]);
    ip(&["-n", &node, "link", "set", "eth0", "address", &mac]);
    ip(&["-n", &sw, "link", "set", &tap, "up"]);
    ip(&["-n", &node, "link", "set", "eth0", "up"]);

    // The switch side exactly as `lab up` starts it for this rack (the second NIC's tap does
    // not exist here: lldpd waits for it as for a powered-off VM's tap).
    let switch = SwitchLldp::for_rack(rack);
    let dir = rig.dir.path().join("lldp");
    let switch_sock = lldp::start(&sw, &dir, &rack.name, &switch, |args| {
        rig.spawn(&sw, "switch", args);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    // The node side as the microkernel's init starts it (all interfaces, its own socket).
    let node_sock = rig.dir.path().join("node.sock");
    let node_sock_s = node_sock.display().to_string();
    rig.spawn(&node, "node", &["lldpd", "-d", "-u", &node_sock_s]);

    let seen = neighbours(&node, &node_sock);
    assert_eq!(
        seen,
        vec![serde_json::json!({"interface": "eth0", "switch": "lab-r1-tor", "port": tap})],
        "{}",
        rig.logs()
    );
    // The node's interfaces as the microkernel reports them at check-in (`facts.nics`).
    let links: Value =
        serde_json::from_str(&ns_output(&node, &["ip", "-j", "link", "show"]).unwrap()).unwrap();
    let nics: Vec<Value> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"] != "lo")
        .map(|l| serde_json::json!({"name": l["ifname"], "mac": l["address"]}))
        .collect();
    let interfaces = node_interfaces(&serde_json::json!({ "nics": nics }));
    assert_eq!(interfaces, vec![("eth0".to_owned(), mac.parse().unwrap())]);
    assert_eq!(
        with_macs(&seen, &interfaces)[0]["mac"],
        Value::String(mac.clone())
    );

    // The lab's inventory cables NIC k as `eno<k+1>=<mac>@<switch>:<tap>`.
    let inventory = |port: &str| ExpectedLink {
        interface: "eno1".into(),
        mac: Some(mac.parse().unwrap()),
        switch: rack.switch_name(),
        port: port.into(),
    };
    assert_eq!(
        check_cabling(&[inventory(&tap)], &seen, &interfaces),
        Ok(())
    );
    // Cabled elsewhere than the inventory says: the check says where it expected and what it saw.
    let other = vm.tap(rack, 1);
    assert_eq!(
        check_cabling(&[inventory(&other)], &seen, &interfaces),
        Err(vec![format!(
            "eno1 ({mac}, eth0 on the node): expected lab-r1-tor {other}, seen lab-r1-tor {tap} on eth0"
        )])
    );

    // And the switch hears the node back (what `lldpcli -u <lab>/lldp/<rack>.sock show
    // neighbors` shows in the lab's core namespace).
    let back = neighbours(&sw, &switch_sock);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0]["interface"], tap.as_str());
}
