//! The whole boot chain through the real `rack-agent` binary inside a network namespace:
//! - QEMU VMs (TCG) with Debian's iPXE ROMs — one on SeaBIOS, one on UEFI (OVMF) — DHCP from
//!   the agent, fetch their per-MAC iPXE script and the marker kernel + initramfs over HTTP and
//!   print the marker on their serial console. The known node boots its `install` target with
//!   its reserved address; the unknown MAC boots the discovery image with a pool address.
//! - The plain-PXE hop QEMU cannot show (its ROMs are iPXE already): `dhclient` and `udhcpc`
//!   ask like a PXE ROM (option 60 PXEClient, option 93 arch, no iPXE user class), are offered
//!   the iPXE binary for their architecture and next-server, and fetch it over TFTP
//!   (`tftp-hpa`, `curl`), byte-identical to Debian's.
//!
//! One namespace lab serves all of it; needs root, qemu-system-x86, ipxe-qemu, ovmf, ipxe,
//! isc-dhcp-client, udhcpc, tftp-hpa, curl (scripts/test.sh installs them).

#![allow(clippy::unwrap_used)]

mod netns;

use std::path::{Path, PathBuf};
use std::process::Command;

use netns::{enslave, poll, veth, ChildGuard, Netns};
use protocol::domain::{BootTarget, ExpectedNic, StaticIp};
use protocol::fleet::{RackDesiredState, RackNode};
use protocol::{Mac, NodeId, Serial};
use rack_agent::store::Store;

const SERVER_IP: &str = "10.98.0.1";
const HTTP: &str = "http://10.98.0.1:8080";
/// The known node (SeaBIOS VM): reserved address, `install` target.
const MAC_BIOS_VM: &str = "52:54:00:4d:46:01";
const IP_BIOS_VM: &str = "10.98.0.21";
/// An unknown MAC (UEFI VM): pool address, discovery.
const MAC_UEFI_VM: &str = "52:54:00:4d:46:02";
/// A known node asking like a BIOS PXE ROM (dhclient).
const MAC_PXE_BIOS: &str = "52:54:00:4d:46:11";
const IP_PXE_BIOS: &str = "10.98.0.31";
/// An unknown MAC asking like a UEFI x64 PXE ROM (udhcpc).
const MAC_PXE_UEFI: &str = "52:54:00:4d:46:12";

fn node(n: u128, serial: &str, mac: &str, ip: &str, target: BootTarget) -> RackNode {
    let mac: Mac = mac.parse().unwrap();
    RackNode {
        id: NodeId(uuid::Uuid::from_u128(n)),
        serial: serial.parse::<Serial>().unwrap(),
        macs: vec![mac],
        boot_target: target,
        static_ips: vec![StaticIp {
            interface: "eno1".into(),
            address: ip.parse().unwrap(),
            prefix: 24,
            gateway: Some(SERVER_IP.parse().unwrap()),
        }],
        switch_ports: vec![ExpectedNic {
            name: "eno1".into(),
            mac: Some(mac),
            switch: None,
            port: None,
        }],
        bmc: None,
        revision: 1,
        power: None,
    }
}

fn marker_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lab/marker-image.sh");
    let out = Command::new(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn agent_config(dir: &Path) -> PathBuf {
    let text = format!(
        r#"rack = "bootchain"
data_dir = "data"
coordinators = []

[http]
listen = "{SERVER_IP}:8080"
[http.discovery]
kernel = "marker/vmlinuz"
initrd = "marker/initrd.img"
cmdline = "console=ttyS0 quiet marker=discovery ip=${{net0/ip}}"

[tftp]
listen = "{SERVER_IP}:69"

[dhcp]
[[dhcp.subnets]]
network = "10.98.0.0/24"
interface = "br0"
server_ip = "{SERVER_IP}"
router = "{SERVER_IP}"
dns = ["{SERVER_IP}"]
domain = "bootchain.test"
pools = ["10.98.0.100-10.98.0.150"]
discovery = true
router_advertisements = true
"#
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts a VM booting from the network; its serial console goes to `serial`.
fn vm(ns: &Netns, tap: &str, mac: &str, uefi: bool, serial: &Path, log: &Path) -> ChildGuard {
    let serial_arg = format!("file:{}", serial.display());
    let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
    let device = format!("virtio-net-pci,netdev=n0,mac={mac}");
    let mut args = vec![
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "384",
        "-smp",
        "1",
        "-display",
        "none",
        "-no-reboot",
        "-boot",
        "n",
        "-serial",
        &serial_arg,
        "-netdev",
        &netdev,
        "-device",
        &device,
    ];
    if uefi {
        args.extend(["-bios", "/usr/share/ovmf/OVMF.fd"]);
    }
    ns.spawn(&args, &[], log)
}

fn marker_line(serial: &Path) -> Option<String> {
    let bytes = std::fs::read(serial).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    // Only whole lines: the console is written while we read it.
    let complete = &text[..text.rfind('\n')?];
    complete
        .lines()
        .find(|l| l.contains("METALFLEET-MARKER"))
        .map(|l| l.trim().to_owned())
}

/// Sets the client interface's MAC (the client namespace plays several machines in turn).
fn become_client(cl: &Netns, mac: &str) {
    cl.exec(&["ip", "addr", "flush", "dev", "eth0"]);
    cl.exec(&["ip", "link", "set", "eth0", "down"]);
    cl.exec(&["ip", "link", "set", "eth0", "address", mac]);
    cl.exec(&["ip", "link", "set", "eth0", "up"]);
}

/// Parses `KEY=value` lines (a dhcp client script's environment dump).
fn env_value(dump: &str, key: &str) -> Option<String> {
    dump.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim_matches('\'').to_owned())
    })
}

fn dump_script(dir: &Path, name: &str, out: &Path) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \"$1$reason\" in\n  bound|BOUND|renew|RENEW|REBOOT) env > {}.tmp && mv {0}.tmp {0} ;;\nesac\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .args(["+x", path.to_str().unwrap()])
        .status()
        .unwrap();
    path
}

/// dhclient as a BIOS PXE ROM: option 60 PXEClient, option 93 = 0, no iPXE user class.
fn dhclient_bios_pxe(cl: &Netns, dir: &Path) -> String {
    let dump = dir.join("dhclient.env");
    let script = dump_script(dir, "dhclient-script", &dump);
    let conf = dir.join("dhclient.conf");
    std::fs::write(
        &conf,
        "option pxe-arch code 93 = unsigned integer 16;\n\
         send pxe-arch 0;\n\
         send vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";\n\
         request subnet-mask, routers, domain-name-servers, host-name, domain-name;\n",
    )
    .unwrap();
    let (c, l, p, s) = (
        conf.to_str().unwrap().to_owned(),
        dir.join("dhclient.leases").to_str().unwrap().to_owned(),
        dir.join("dhclient.pid").to_str().unwrap().to_owned(),
        script.to_str().unwrap().to_owned(),
    );
    let out = cl.try_exec(&[
        "timeout", "60", "dhclient", "-1", "-v", "-cf", &c, "-lf", &l, "-pf", &p, "-sf", &s, "eth0",
    ]);
    // dhclient daemonises after binding; stop it by the PID it wrote.
    if let Ok(pid) = std::fs::read_to_string(dir.join("dhclient.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    std::fs::read_to_string(&dump).unwrap_or_else(|_| {
        panic!(
            "dhclient got no lease: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// busybox udhcpc as a UEFI x64 PXE ROM: option 60 PXEClient, option 93 = 7.
fn udhcpc_uefi_pxe(cl: &Netns, dir: &Path) -> String {
    let dump = dir.join("udhcpc.env");
    let script = dump_script(dir, "udhcpc-script", &dump);
    let s = script.to_str().unwrap().to_owned();
    let out = cl.try_exec(&[
        "timeout",
        "60",
        "udhcpc",
        "-i",
        "eth0",
        "-f",
        "-q",
        "-n",
        "-t",
        "10",
        "-T",
        "1",
        "-s",
        &s,
        "-V",
        "PXEClient:Arch:00007:UNDI:003016",
        "-x",
        "0x5d:0007",
    ]);
    std::fs::read_to_string(&dump).unwrap_or_else(|_| {
        panic!(
            "udhcpc got no lease: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn boot_chain_with_qemu_and_pxe_clients() {
    for (t, p) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("dhclient", "isc-dhcp-client"),
        ("udhcpc", "udhcpc"),
        ("tftp", "tftp-hpa"),
        ("curl", "curl"),
    ] {
        netns::require(t, p);
    }
    for f in [
        "/usr/share/ovmf/OVMF.fd",
        "/usr/lib/ipxe/qemu/efi-virtio.rom",
        "/usr/lib/ipxe/undionly.kpxe",
    ] {
        assert!(
            Path::new(f).exists(),
            "{f} is missing: apt-get install ovmf ipxe-qemu ipxe"
        );
    }
    let marker = marker_image();
    let dir = netns::tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("assets/marker")).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(marker.join(f), data.join("assets/marker").join(f)).unwrap();
    }

    // The rack's desired state, as the coordinators would have pushed it.
    let install = BootTarget::Install {
        kernel: "marker/vmlinuz".into(),
        initrd: "marker/initrd.img".into(),
        cmdline: "console=ttyS0 quiet marker=install-BC-0001 ip=${net0/ip}".into(),
        autoinstall: None,
    };
    {
        let store = Store::open(&data.join("agent.redb")).unwrap();
        store
            .apply_snapshot(&RackDesiredState {
                revision: 1,
                nodes: vec![
                    node(1, "BC-0001", MAC_BIOS_VM, IP_BIOS_VM, install),
                    node(
                        2,
                        "BC-0002",
                        MAC_PXE_BIOS,
                        IP_PXE_BIOS,
                        BootTarget::Discovery,
                    ),
                ],
                ports: Vec::new(),
                runs: Vec::new(),
            })
            .unwrap();
    }

    let ns = Netns::new("bc");
    ns.bridge("br0");
    ns.addr("br0", "10.98.0.1/24");
    for tap in ["tap0", "tap1"] {
        ns.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
        enslave(&ns, tap, "br0");
        ns.exec(&["ip", "link", "set", tap, "up"]);
    }
    let cl = Netns::new("bcc");
    veth(&ns, "vc0", &cl, "eth0", Some(MAC_PXE_BIOS));
    enslave(&ns, "vc0", "br0");
    ns.wait_link_local("br0");

    let config = agent_config(dir.path());
    let agent_log = dir.path().join("agent.log");
    let mut agent = ns.spawn(
        &[
            env!("CARGO_BIN_EXE_rack-agent"),
            "run",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info".into())],
        &agent_log,
    );
    poll(30, "the agent's HTTP server", || {
        if let Some(code) = agent.try_exit() {
            panic!(
                "the agent exited ({code:?}): {}",
                std::fs::read_to_string(&agent_log).unwrap_or_default()
            );
        }
        ns.try_exec(&["curl", "-sf", &format!("{HTTP}/healthz")])
            .status
            .success()
            .then_some(())
    });

    // Both VMs boot concurrently while the PXE clients run.
    let serial_bios = dir.path().join("serial-bios.log");
    let serial_uefi = dir.path().join("serial-uefi.log");
    let _vm_bios = vm(
        &ns,
        "tap0",
        MAC_BIOS_VM,
        false,
        &serial_bios,
        &dir.path().join("qemu-bios.log"),
    );
    let _vm_uefi = vm(
        &ns,
        "tap1",
        MAC_UEFI_VM,
        true,
        &serial_uefi,
        &dir.path().join("qemu-uefi.log"),
    );

    // BIOS PXE ROM (dhclient): reservation, next-server, undionly.kpxe over TFTP (tftp-hpa).
    become_client(&cl, MAC_PXE_BIOS);
    let env = dhclient_bios_pxe(&cl, dir.path());
    assert_eq!(
        env_value(&env, "new_ip_address").as_deref(),
        Some(IP_PXE_BIOS),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_routers").as_deref(),
        Some(SERVER_IP),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_host_name").as_deref(),
        Some("BC-0002"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_filename").as_deref(),
        Some("undionly.kpxe"),
        "{env}"
    );
    cl.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{IP_PXE_BIOS}/24"),
        "dev",
        "eth0",
    ]);
    let got = dir.path().join("undionly.kpxe");
    cl.exec(&[
        "tftp",
        "-m",
        "binary",
        SERVER_IP,
        "-c",
        "get",
        "undionly.kpxe",
        got.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap(),
        "undionly.kpxe over TFTP differs from Debian's"
    );
    // The per-node script is also there over TFTP.
    let script = cl.exec(&[
        "curl",
        "-sf",
        &format!("tftp://{SERVER_IP}/ipxe/{MAC_PXE_BIOS}"),
    ]);
    let script = String::from_utf8_lossy(&script.stdout);
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(script.contains("marker/vmlinuz"), "{script}");

    // UEFI x64 PXE ROM (udhcpc), unknown MAC: pool address, ipxe.efi over TFTP (curl).
    become_client(&cl, MAC_PXE_UEFI);
    let env = udhcpc_uefi_pxe(&cl, dir.path());
    let ip = env_value(&env, "ip").unwrap_or_default();
    assert!(ip.starts_with("10.98.0.1"), "no pool address: {env}");
    assert_eq!(
        env_value(&env, "boot_file").as_deref(),
        Some("ipxe.efi"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "siaddr").as_deref(),
        Some(SERVER_IP),
        "{env}"
    );
    cl.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    let got = dir.path().join("ipxe.efi");
    cl.exec(&[
        "curl",
        "-sf",
        "--tftp-blksize",
        "1428",
        "-o",
        got.to_str().unwrap(),
        &format!("tftp://{SERVER_IP}/ipxe.efi"),
    ]);
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read("/usr/lib/ipxe/ipxe.efi").unwrap(),
        "ipxe.efi over TFTP differs from Debian's"
    );

    // The VMs: SeaBIOS boots the known node's install target with its reserved address; OVMF
    // boots the discovery image with a pool address.
    let bios = poll(300, "the SeaBIOS VM's marker", || marker_line(&serial_bios));
    assert!(bios.contains("marker=install-BC-0001"), "{bios}");
    assert!(bios.contains(&format!("ip={IP_BIOS_VM}")), "{bios}");
    let uefi = poll(300, "the UEFI VM's marker", || marker_line(&serial_uefi));
    assert!(uefi.contains("marker=discovery"), "{uefi}");
    assert!(uefi.contains("ip=10.98.0.1"), "{uefi}");
    assert!(uefi.contains("initrd=initrd.img"), "{uefi}");

    // Every service counted its work.
    let metrics = ns.exec(&["curl", "-sf", &format!("{HTTP}/metrics")]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for family in ["dhcp_", "tftp_", "http_"] {
        assert!(metrics.contains(family), "no {family} metrics:\n{metrics}");
    }
    agent.kill();
}
