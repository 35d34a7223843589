//! The DHCP server against real clients in network namespaces: ISC dhclient and busybox
//! udhcpc get their reservations and the right boot file as BIOS PXE, UEFI PXE, iPXE and
//! UEFI HTTP Boot clients; a client behind ISC dhcrelay; leases surviving a server kill;
//! unknown MACs; hostile packets; router advertisements seen by rdisc6; ProxyDHCP.
//!
//! The server runs in-process (FixtureBackend, CollectingSink) inside the server namespace:
//! this test binary re-executes itself there (`server_child`, see `netns`), and reports its
//! events and metrics through files. Needs root, iproute2, isc-dhcp-client, udhcpc,
//! isc-dhcp-relay and ndisc6.

#![allow(clippy::unwrap_used)]

mod netns;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use netns::{enslave, poll, veth, write_atomic, ChildGuard, Netns};
use protocol::domain::{BootTarget, ExpectedNic, StaticIp};
use protocol::fleet::{EventKind, RackNode};
use protocol::Mac;
use rack_agent::boot::dhcp::{DhcpConfig, DhcpServer};
use rack_agent::boot::{BootDeps, CollectingSink, ConfigCtx, FixtureBackend};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

const SERVER_SPEC: &str = "MF_DHCP_TEST_SERVER_SPEC";
const CLIENT_SPEC: &str = "MF_DHCP_TEST_CLIENT_SPEC";
const SERVER_IP: &str = "10.10.0.1";

// ---------------------------------------------------------------- the in-namespace server

#[derive(Debug, Serialize, Deserialize)]
struct ServerSpec {
    /// The `[dhcp]` section (without the header).
    dhcp_toml: String,
    data_dir: PathBuf,
    out_dir: PathBuf,
    nodes: Vec<RackNode>,
    http_port: Option<u16>,
}

/// Not a test on its own: runs the DHCP server when re-executed inside a namespace.
#[test]
fn server_child() {
    let Ok(spec) = std::env::var(SERVER_SPEC) else {
        return;
    };
    let spec: ServerSpec = serde_json::from_slice(&std::fs::read(spec).unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let table: toml::Table = toml::from_str(&spec.dhcp_toml).unwrap();
        let ctx = ConfigCtx {
            base_dir: spec.data_dir.clone(),
            data_dir: spec.data_dir.clone(),
        };
        let config = DhcpConfig::from_toml(table, &ctx).unwrap();
        let sink = Arc::new(CollectingSink::default());
        let mut deps = BootDeps::fixture(
            Arc::new(FixtureBackend::new(spec.nodes.clone())),
            sink.clone(),
            spec.data_dir.clone(),
        );
        deps.http_port = spec.http_port;
        let server = DhcpServer::bind(&config, &deps).await.unwrap();
        let out = spec.out_dir.clone();
        let metrics = deps.metrics.clone();
        tokio::spawn(async move {
            loop {
                write_atomic(&out.join("metrics.txt"), metrics.render().as_bytes());
                write_atomic(
                    &out.join("events.json"),
                    &serde_json::to_vec(&sink.events()).unwrap(),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        write_atomic(&spec.out_dir.join("ready"), b"ready");
        // Runs until the parent kills this process.
        server.run(CancellationToken::new()).await;
    });
}

/// The server process seen from the test.
struct Server {
    guard: ChildGuard,
    out: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(ns: &Netns, dir: &Path, name: &str, spec: &ServerSpec) -> Server {
        let _ = std::fs::remove_file(spec.out_dir.join("ready"));
        std::fs::create_dir_all(&spec.out_dir).unwrap();
        let spec_path = dir.join(format!("{name}.spec.json"));
        std::fs::write(&spec_path, serde_json::to_vec(spec).unwrap()).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut guard = ns.spawn_test(
            "server_child",
            &[(SERVER_SPEC, spec_path.display().to_string())],
            &log,
        );
        poll(30, "dhcp server ready", || {
            if let Some(code) = guard.try_exit() {
                panic!(
                    "server exited ({code:?}): {}",
                    netns::read(&log).unwrap_or_default()
                );
            }
            spec.out_dir.join("ready").exists().then_some(())
        });
        Server {
            guard,
            out: spec.out_dir.clone(),
            log,
        }
    }

    fn metrics(&self) -> String {
        netns::read(&self.out.join("metrics.txt")).unwrap_or_default()
    }

    /// The value of one metric line, e.g. `metalfleet_dhcp_dropped_total{reason="decode_error"}`.
    fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "metalfleet_dhcp_dropped_total{{reason=\"{reason}\"}} "
        ))
    }

    fn events(&self) -> Vec<EventKind> {
        netns::read(&self.out.join("events.json"))
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    fn kill(&mut self) {
        self.guard.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log ---\n{}",
                netns::read(&self.log).unwrap_or_default()
            );
        }
    }
}

// ---------------------------------------------------------------- the lab

/// A server namespace with bridge `br0` (10.10.0.1/24) and client namespaces on it.
struct Lab {
    dir: tempfile::TempDir,
    clients: Vec<Netns>,
    server: Netns,
}

impl Lab {
    fn new() -> Lab {
        let server = Netns::new("s");
        server.bridge("br0");
        server.addr("br0", "10.10.0.1/24");
        Lab {
            dir: netns::tempdir(),
            clients: Vec::new(),
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new client namespace whose `eth0` (with `mac`) is cabled to `br`.
    fn client(&mut self, mac: &str, br: &str) -> usize {
        let c = Netns::new("c");
        let port = netns::unique("vp");
        veth(&self.server, &port, &c, "eth0", Some(mac));
        enslave(&self.server, &port, br);
        self.clients.push(c);
        self.clients.len() - 1
    }

    fn spec(&self, name: &str, subnets: &str, nodes: Vec<RackNode>) -> ServerSpec {
        ServerSpec {
            dhcp_toml: format!("lease_secs = 3600\n{subnets}"),
            data_dir: self.path("data"),
            out_dir: self.path(&format!("{name}.out")),
            nodes,
            http_port: Some(8080),
        }
    }
}

const BR0_SUBNET: &str = r#"
[[subnets]]
network = "10.10.0.0/24"
interface = "br0"
server_ip = "10.10.0.1"
router = "10.10.0.1"
dns = ["10.10.0.1"]
domain = "rack1.example"
mtu = 1500
pools = ["10.10.0.100-10.10.0.199"]
router_advertisements = true
"#;

fn mac(last: u8) -> String {
    format!("52:54:00:aa:00:{last:02x}")
}

/// A node owning `mac` with a reservation on its NIC `eno1`.
fn node(mac_s: &str, ip: &str, serial: &str) -> RackNode {
    let mac: Mac = mac_s.parse().unwrap();
    RackNode {
        id: format!("6f1c1d9e-0000-4000-8000-0000000000{:02x}", mac.0[5])
            .parse()
            .unwrap(),
        serial: serial.parse().unwrap(),
        macs: vec![mac],
        boot_target: BootTarget::Discovery,
        static_ips: vec![
            StaticIp {
                interface: "bmc".into(),
                address: "10.10.0.250".parse().unwrap(),
                prefix: 24,
                gateway: None,
            },
            StaticIp {
                interface: "eno1".into(),
                address: ip.parse().unwrap(),
                prefix: 24,
                gateway: Some("10.10.0.254".parse().unwrap()),
            },
        ],
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

// ---------------------------------------------------------------- real clients

/// Parses `KEY=value` lines (a dumped environment).
fn parse_env(s: &str) -> HashMap<String, String> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// Starts ISC dhclient on `eth0` of `ns` with extra config `conf`; its script dumps the
/// environment to `<dir>/<tag>.env.<reason>`.
fn dhclient(lab: &Lab, ns: &Netns, tag: &str, conf: &str) -> ChildGuard {
    let script = lab.path(&format!("{tag}.sh"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\nenv > {}.env.$reason\n", lab.path(tag).display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cf = lab.path(&format!("{tag}.conf"));
    std::fs::write(
        &cf,
        format!("timeout 30;\ninitial-interval 1;\nrequest subnet-mask, routers, domain-name-servers, host-name, domain-name, interface-mtu;\n{conf}\n"),
    )
    .unwrap();
    let (lf, pf) = (
        lab.path(&format!("{tag}.leases")),
        lab.path(&format!("{tag}.pid")),
    );
    ns.spawn(
        &[
            "dhclient",
            "-4",
            "-d",
            "-1",
            "-v",
            "-cf",
            cf.to_str().unwrap(),
            "-sf",
            script.to_str().unwrap(),
            "-lf",
            lf.to_str().unwrap(),
            "-pf",
            pf.to_str().unwrap(),
            "eth0",
        ],
        &[],
        &lab.path(&format!("{tag}.log")),
    )
}

/// Waits for dhclient's script to run with one of `reasons`; returns its environment.
fn dhclient_result(lab: &Lab, tag: &str, reasons: &[&str]) -> HashMap<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let found = reasons.iter().find_map(|r| {
            netns::read(&lab.path(&format!("{tag}.env.{r}")))
                .filter(|s| s.contains("new_ip_address="))
                .map(|s| parse_env(&s))
        });
        if let Some(env) = found {
            return env;
        }
        if std::time::Instant::now() > deadline {
            // Say why: the client's and every server's log.
            let mut logs = String::new();
            for entry in std::fs::read_dir(lab.dir.path()).unwrap().flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    logs.push_str(&format!(
                        "--- {}\n{}\n",
                        p.display(),
                        netns::read(&p).unwrap_or_default()
                    ));
                }
            }
            panic!("timed out after 40s waiting for dhclient {tag} lease\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Starts busybox udhcpc on `eth0` of `ns` (`-q -n -f`), its script dumping the environment
/// to `<dir>/<tag>.env.<event>`.
fn udhcpc(lab: &Lab, ns: &Netns, tag: &str, extra: &[&str]) -> ChildGuard {
    let script = lab.path(&format!("{tag}.sh"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\nenv > {}.env.$1\n", lab.path(tag).display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut args = vec![
        "udhcpc",
        "-i",
        "eth0",
        "-s",
        script.to_str().unwrap(),
        "-q",
        "-n",
        "-f",
        "-t",
        "6",
        "-T",
        "1",
        "-A",
        "1",
    ];
    args.extend_from_slice(extra);
    ns.spawn(&args, &[], &lab.path(&format!("{tag}.log")))
}

fn udhcpc_result(lab: &Lab, tag: &str) -> HashMap<String, String> {
    poll(40, &format!("udhcpc {tag} lease"), || {
        netns::read(&lab.path(&format!("{tag}.env.bound")))
            .filter(|s| !s.is_empty())
            .map(|s| parse_env(&s))
    })
}

// ---------------------------------------------------------------- tests

/// dhclient and udhcpc, each as a BIOS PXE, UEFI x64 PXE, iPXE and UEFI HTTP Boot client,
/// get their reservation (address, gateway from the reservation, DNS, hostname) and the
/// boot file for their kind.
#[test]
fn real_clients_get_reservations_and_boot_files() {
    let mut lab = Lab::new();
    let kinds = [
        ("bios", "undionly.kpxe"),
        ("uefi", "ipxe.efi"),
        ("ipxe", "ipxe-script"),
        ("http", "http://10.10.0.1:8080/assets/ipxe.efi"),
    ];
    let mut nodes = Vec::new();
    for i in 0..8u8 {
        nodes.push(node(
            &mac(i + 1),
            &format!("10.10.0.{}", 11 + i),
            &format!("SN-{}", i + 1),
        ));
    }
    let mut ns_idx = Vec::new();
    for i in 0..8u8 {
        ns_idx.push(lab.client(&mac(i + 1), "br0"));
    }
    let server = Server::start(
        &lab.server,
        lab.dir.path(),
        "s1",
        &lab.spec("s1", BR0_SUBNET, nodes),
    );
    let mut guards = Vec::new();
    for (k, (kind, _)) in kinds.iter().enumerate() {
        let conf = match *kind {
            "bios" => "option arch code 93 = unsigned integer 16;\nsend arch 0;\nsend vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";",
            "uefi" => "option arch code 93 = unsigned integer 16;\nsend arch 7;\nsend vendor-class-identifier \"PXEClient:Arch:00007:UNDI:003016\";",
            "ipxe" => "send user-class \"iPXE\";",
            _ => "option arch code 93 = unsigned integer 16;\nsend arch 16;\nsend vendor-class-identifier \"HTTPClient:Arch:00016:UNDI:003001\";",
        };
        let ns = &lab.clients[ns_idx[k]];
        guards.push(dhclient(&lab, ns, &format!("dh-{kind}"), conf));
        let extra: Vec<&str> = match *kind {
            "bios" => vec!["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"],
            "uefi" => vec!["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"],
            "ipxe" => vec!["-x", "0x4d:69505845"],
            _ => vec!["-V", "HTTPClient:Arch:00016:UNDI:003001", "-x", "0x5d:0010"],
        };
        let ns = &lab.clients[ns_idx[k + 4]];
        guards.push(udhcpc(&lab, ns, &format!("ud-{kind}"), &extra));
    }
    for (k, (kind, file)) in kinds.iter().enumerate() {
        let (dh_mac, ud_mac) = (mac(k as u8 + 1), mac(k as u8 + 5));
        let want_file = |m: &str| {
            if *file == "ipxe-script" {
                format!("http://10.10.0.1:8080/ipxe/{m}")
            } else {
                (*file).to_owned()
            }
        };
        let e = dhclient_result(&lab, &format!("dh-{kind}"), &["BOUND"]);
        let ctx = format!("dhclient {kind}: {e:?}");
        assert_eq!(
            e.get("new_ip_address").map(String::as_str),
            Some(format!("10.10.0.{}", 11 + k).as_str()),
            "{ctx}"
        );
        assert_eq!(
            e.get("new_routers").map(String::as_str),
            Some("10.10.0.254"),
            "{ctx}"
        );
        assert_eq!(
            e.get("new_domain_name_servers").map(String::as_str),
            Some(SERVER_IP),
            "{ctx}"
        );
        assert_eq!(
            e.get("new_host_name").map(String::as_str),
            Some(format!("SN-{}", k + 1).as_str()),
            "{ctx}"
        );
        assert_eq!(
            e.get("new_filename").cloned(),
            Some(want_file(&dh_mac)),
            "{ctx}"
        );
        if *kind == "bios" || *kind == "uefi" {
            assert_eq!(
                e.get("new_next_server").map(String::as_str),
                Some(SERVER_IP),
                "{ctx}"
            );
        }
        let u = udhcpc_result(&lab, &format!("ud-{kind}"));
        let ctx = format!("udhcpc {kind}: {u:?}");
        assert_eq!(
            u.get("ip").map(String::as_str),
            Some(format!("10.10.0.{}", 15 + k).as_str()),
            "{ctx}"
        );
        assert_eq!(
            u.get("router").map(String::as_str),
            Some("10.10.0.254"),
            "{ctx}"
        );
        assert_eq!(u.get("dns").map(|s| s.trim()), Some(SERVER_IP), "{ctx}");
        assert_eq!(
            u.get("hostname").map(String::as_str),
            Some(format!("SN-{}", k + 5).as_str()),
            "{ctx}"
        );
        assert_eq!(u.get("mtu").map(String::as_str), Some("1500"), "{ctx}");
        assert_eq!(
            u.get("boot_file").cloned(),
            Some(want_file(&ud_mac)),
            "{ctx}"
        );
        if *kind == "bios" || *kind == "uefi" {
            assert_eq!(
                u.get("siaddr").map(String::as_str),
                Some(SERVER_IP),
                "{ctx}"
            );
        }
    }
    // Leases and boot decisions were reported, each boot decision once per MAC and decision.
    let events = poll(10, "lease events", || {
        let ev = server.events();
        (ev.iter()
            .filter(|e| matches!(e, EventKind::Lease { .. }))
            .count()
            >= 8)
            .then_some(ev)
    });
    let boots: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Boot { mac, detail, .. } => Some((*mac, detail.clone())),
            _ => None,
        })
        .collect();
    let mut unique = boots.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(boots.len(), unique.len(), "boot events repeated: {boots:?}");
    assert!(
        boots
            .iter()
            .any(|(_, d)| d == "dhcp: discovery: bios pxe -> tftp undionly.kpxe"),
        "{boots:?}"
    );
    // The child writes its metrics every 50 ms: poll rather than race the writer.
    poll(10, "the ACK counter", || {
        (server.metric("metalfleet_dhcp_sent_total{type=\"ack\"} ") >= 8).then_some(())
    });
}

/// A client two hops away behind ISC dhcrelay is served from the relayed subnet (matched by
/// giaddr), and the reply goes back through the relay. The relay adds option 82 (`-a`) and
/// drops replies whose option 82 does not match (`-D`): our echo passes through it.
#[test]
fn client_behind_dhcrelay_is_served_from_the_relayed_subnet() {
    let mut lab = Lab::new();
    let relay = Netns::new("r");
    let client = Netns::new("c");
    veth(&lab.server, "to-relay", &relay, "up0", None);
    lab.server.addr("to-relay", "10.99.0.1/24");
    relay.addr("up0", "10.99.0.2/24");
    lab.server
        .exec(&["ip", "route", "add", "10.30.0.0/24", "via", "10.99.0.2"]);
    let cmac = mac(0x30);
    veth(&relay, "down0", &client, "eth0", Some(&cmac));
    relay.addr("down0", "10.30.0.254/24");
    relay.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let subnets = format!(
        "{BR0_SUBNET}\n[[subnets]]\nnetwork = \"10.30.0.0/24\"\nserver_ip = \"10.99.0.1\"\nrouter = \"10.30.0.254\"\ndns = [\"10.99.0.1\"]\n"
    );
    let server = Server::start(
        &lab.server,
        lab.dir.path(),
        "s",
        &lab.spec(
            "s",
            &subnets,
            vec![{
                let mut n = node(&cmac, "10.30.0.7", "SN-R");
                n.static_ips[1].gateway = None;
                n
            }],
        ),
    );
    let _relay = relay.spawn(
        &[
            "dhcrelay",
            "-d",
            "-4",
            "--no-pid",
            "-a",
            "-D",
            "-i",
            "down0",
            "-iu",
            "up0",
            "10.99.0.1",
        ],
        &[],
        &lab.path("relay.log"),
    );
    // dhcrelay needs a moment to open its sockets; udhcpc retries DISCOVERs meanwhile.
    let _c = udhcpc(
        &lab,
        &client,
        "relayed",
        &["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"],
    );
    let u = udhcpc_result(&lab, "relayed");
    assert_eq!(u.get("ip").map(String::as_str), Some("10.30.0.7"), "{u:?}");
    assert_eq!(
        u.get("router").map(String::as_str),
        Some("10.30.0.254"),
        "{u:?}"
    );
    assert_eq!(
        u.get("serverid").map(String::as_str),
        Some("10.99.0.1"),
        "{u:?}"
    );
    assert_eq!(
        u.get("boot_file").map(String::as_str),
        Some("ipxe.efi"),
        "{u:?}"
    );
    // The child writes its metrics every 50 ms: poll rather than race the writer.
    poll(10, "the ACK counter", || {
        (server.metric("metalfleet_dhcp_sent_total{type=\"ack\"} ") >= 1).then_some(())
    });
    lab.clients.push(client);
    lab.clients.push(relay);
}

/// Leases are durable: after the server is killed and restarted, the same dhclient
/// (INIT-REBOOT from its lease file) gets the same pool address, and another client asking
/// for that address gets a different one. Unknown MACs get nothing on a non-discovery subnet
/// and a pool address plus the discovery boot on a discovery subnet.
#[test]
fn leases_survive_restart_and_unknown_macs_follow_discovery() {
    let mut lab = Lab::new();
    lab.server.bridge("br1");
    lab.server.addr("br1", "10.20.0.1/24");
    let subnets = format!(
        "{BR0_SUBNET}\n[[subnets]]\nnetwork = \"10.20.0.0/24\"\ninterface = \"br1\"\nserver_ip = \"10.20.0.1\"\npools = [\"10.20.0.100-10.20.0.199\"]\ndiscovery = true\n"
    );
    // Known nodes without a reservation here get pool addresses on br0.
    let pool_node = |m: u8, serial: &str| {
        let mut n = node(&mac(m), "10.77.0.1", serial);
        n.static_ips.clear();
        n
    };
    let a = lab.client(&mac(0x41), "br0");
    let b = lab.client(&mac(0x42), "br1");
    let stranger = lab.client(&mac(0x43), "br0");
    let other = lab.client(&mac(0x44), "br0");
    let spec = lab.spec(
        "s",
        &subnets,
        vec![pool_node(0x41, "SN-P"), pool_node(0x44, "SN-Q")],
    );
    let mut server = Server::start(&lab.server, lab.dir.path(), "s", &spec);

    let mut g = dhclient(&lab, &lab.clients[a], "a1", "");
    let first = dhclient_result(&lab, "a1", &["BOUND"]);
    let ip = first.get("new_ip_address").cloned().unwrap();
    // dhclient writes its lease file after running its script: wait for it, or the restarted
    // dhclient has no lease to INIT-REBOOT from.
    poll(10, "dhclient a1's lease file", || {
        netns::read(&lab.path("a1.leases"))
            .filter(|l| l.contains(&format!("fixed-address {ip};")))
            .map(|_| ())
    });
    g.kill();
    assert!(ip.starts_with("10.10.0.1"), "{first:?}");

    // The unknown MAC on br0 (no discovery) is ignored and counted.
    let mut s = udhcpc(&lab, &lab.clients[stranger], "stranger", &["-t", "2"]);
    poll(30, "udhcpc gives up", || s.try_exit());
    assert!(!lab.path("stranger.env.bound").exists());
    assert!(server.dropped("unknown_client_ignored") >= 1);

    // Killed (SIGKILL: no graceful shutdown) and restarted on the same lease file.
    server.kill();
    let server = Server::start(&lab.server, lab.dir.path(), "s", &spec);
    let _g = dhclient(&lab, &lab.clients[a], "a1", "");
    let again = dhclient_result(&lab, "a1", &["REBOOT", "RENEW"]);
    assert_eq!(again.get("new_ip_address"), Some(&ip), "{again:?}");

    // Another client asking for that address gets a different one.
    let _o = udhcpc(&lab, &lab.clients[other], "other", &["-r", &ip]);
    let o = udhcpc_result(&lab, "other");
    let got = o.get("ip").cloned().unwrap();
    assert_ne!(got, ip, "{o:?}");
    assert!(got.starts_with("10.10.0.1"), "{o:?}");

    // The unknown MAC on the discovery subnet gets a pool address and the discovery boot.
    let _b = udhcpc(&lab, &lab.clients[b], "disc", &["-x", "0x4d:69505845"]);
    let d = udhcpc_result(&lab, "disc");
    assert!(d.get("ip").unwrap().starts_with("10.20.0.1"), "{d:?}");
    let url = format!("http://10.20.0.1:8080/ipxe/{}", mac(0x42));
    assert_eq!(d.get("boot_file"), Some(&url), "{d:?}");
    poll(10, "discovery boot event", || {
        server
            .events()
            .iter()
            .any(|e| matches!(e, EventKind::Boot { node: None, detail, .. } if detail.starts_with("dhcp: discovery: ipxe")))
            .then_some(())
    });
}

/// Garbage, truncated packets, overrunning option lengths, BOOTREPLYs and bad hardware
/// addresses are counted by reason; the server still serves a real client afterwards.
#[test]
fn hostile_packets_are_counted_and_the_server_keeps_serving() {
    let mut lab = Lab::new();
    let c = lab.client(&mac(0x51), "br0");
    let server = Server::start(
        &lab.server,
        lab.dir.path(),
        "s",
        &lab.spec(
            "s",
            BR0_SUBNET,
            vec![node(&mac(0x51), "10.10.0.51", "SN-H")],
        ),
    );
    lab.clients[c].addr("eth0", "10.10.0.240/24");
    run_client_child(&lab, &lab.clients[c], "hostile");
    poll(10, "hostile packets counted", || {
        (server.dropped("decode_error") >= 4
            && server.dropped("not_bootrequest") >= 1
            && server.dropped("bad_hardware_address") >= 1
            && server.dropped("no_message_type") >= 1)
            .then_some(())
    });
    lab.clients[c].exec(&["ip", "addr", "flush", "dev", "eth0"]);
    let _u = udhcpc(&lab, &lab.clients[c], "after", &[]);
    let u = udhcpc_result(&lab, "after");
    assert_eq!(u.get("ip").map(String::as_str), Some("10.10.0.51"), "{u:?}");
}

/// rdisc6 in the client namespace sees our router advertisement with M=0, O=0.
#[test]
fn rdisc6_sees_a_router_advertisement_without_managed_or_other() {
    let mut lab = Lab::new();
    let c = lab.client(&mac(0x61), "br0");
    lab.server.wait_link_local("br0");
    lab.clients[c].wait_link_local("eth0");
    let server = Server::start(
        &lab.server,
        lab.dir.path(),
        "s",
        &lab.spec("s", BR0_SUBNET, vec![]),
    );
    let out = lab.clients[c].try_exec(&["rdisc6", "-1", "-r", "5", "-w", "1000", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rdisc6: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |k: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(k))
            .map(|l| l.split(':').next_back().unwrap_or("").trim().to_owned())
    };
    assert_eq!(
        line("Stateful address conf.").as_deref(),
        Some("No"),
        "{text}"
    );
    assert_eq!(
        line("Stateful other conf.").as_deref(),
        Some("No"),
        "{text}"
    );
    poll(10, "RA counted", || {
        (server.metric("metalfleet_dhcp_router_advertisements_total ") >= 1).then_some(())
    });
}

/// ProxyDHCP: a PXE client gets a proxy offer (no address, PXEClient, boot file) and a
/// boot-server ACK on port 4011.
#[test]
fn proxy_dhcp_offers_boot_info_and_acks_on_4011() {
    let mut lab = Lab::new();
    let c = lab.client(&mac(0x71), "br0");
    let subnets = "[[subnets]]\nnetwork = \"10.10.0.0/24\"\ninterface = \"br0\"\nserver_ip = \"10.10.0.1\"\nmode = \"proxy\"\n";
    let mut n = node(&mac(0x71), "10.10.0.71", "SN-X");
    n.static_ips.clear();
    let _server = Server::start(
        &lab.server,
        lab.dir.path(),
        "s",
        &lab.spec("s", subnets, vec![n]),
    );
    lab.clients[c].addr("eth0", "10.10.0.50/24");
    let r = run_client_child(&lab, &lab.clients[c], "proxy");
    assert_eq!(
        r.get("offer_yiaddr").map(String::as_str),
        Some("0.0.0.0"),
        "{r:?}"
    );
    assert_eq!(
        r.get("offer_class").map(String::as_str),
        Some("PXEClient"),
        "{r:?}"
    );
    assert_eq!(
        r.get("offer_file").map(String::as_str),
        Some("ipxe.efi"),
        "{r:?}"
    );
    assert_eq!(
        r.get("offer_server_id").map(String::as_str),
        Some(SERVER_IP),
        "{r:?}"
    );
    assert_eq!(r.get("ack_type").map(String::as_str), Some("Ack"), "{r:?}");
    assert_eq!(
        r.get("ack_file").map(String::as_str),
        Some("ipxe.efi"),
        "{r:?}"
    );
    assert_eq!(
        r.get("ack_siaddr").map(String::as_str),
        Some(SERVER_IP),
        "{r:?}"
    );
}

// ---------------------------------------------------------------- our own packet client

/// Runs `client_child` in `ns` in `mode`; returns what it wrote.
fn run_client_child(lab: &Lab, ns: &Netns, mode: &str) -> HashMap<String, String> {
    let out = lab.path(&format!("client-{mode}.json"));
    let mut g = ns.spawn_test(
        "client_child",
        &[(CLIENT_SPEC, format!("{mode}:{}", out.display()))],
        &lab.path(&format!("client-{mode}.log")),
    );
    let code = poll(30, "client child", || g.try_exit());
    assert_eq!(
        code,
        Some(0),
        "{}",
        netns::read(&lab.path(&format!("client-{mode}.log"))).unwrap_or_default()
    );
    serde_json::from_str(&netns::read(&out).unwrap()).unwrap()
}

fn client_socket(port: u16) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_broadcast(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind_device(Some(b"eth0")).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn encode(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// Sends `m` to `to` until a reply with the same xid arrives (10 tries).
fn exchange(s: &UdpSocket, m: &Message, to: SocketAddr) -> Message {
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        s.send_to(&encode(m), to).unwrap();
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Ok(r) = Message::decode(&mut Decoder::new(&buf[..n])) {
                if r.xid() == m.xid() && r.opcode() == Opcode::BootReply {
                    return r;
                }
            }
        }
    }
    panic!("no reply to {:?}", m.opts().msg_type());
}

fn text_opt(m: &Message, code: OptionCode) -> String {
    match m.opts().get(code) {
        Some(DhcpOption::ClassIdentifier(b)) | Some(DhcpOption::BootfileName(b)) => {
            String::from_utf8_lossy(b).into_owned()
        }
        Some(DhcpOption::ServerIdentifier(a)) => a.to_string(),
        Some(DhcpOption::MessageType(t)) => format!("{t:?}"),
        _ => String::new(),
    }
}

/// Not a test on its own: a hand-made DHCP client run inside a client namespace.
#[test]
fn client_child() {
    let Ok(spec) = std::env::var(CLIENT_SPEC) else {
        return;
    };
    let (mode, out) = spec.split_once(':').unwrap();
    let mut result: HashMap<String, String> = HashMap::new();
    let server: SocketAddr = "10.10.0.1:67".parse().unwrap();
    match mode {
        "hostile" => {
            let s = client_socket(0);
            let mut valid = vec![0u8; 300];
            valid[0] = 1;
            valid[1] = 1;
            valid[2] = 6;
            valid[236..240].copy_from_slice(&[99, 130, 83, 99]);
            valid[240..244].copy_from_slice(&[53, 1, 1, 255]);
            let mut packets: Vec<Vec<u8>> =
                vec![b"garbage, not dhcp".to_vec(), valid[..200].to_vec()];
            let mut huge = valid.clone();
            huge[240..244].copy_from_slice(&[60, 255, b'P', b'X']);
            huge.truncate(260);
            packets.push(huge);
            let mut ndi = valid.clone();
            ndi[240..246].copy_from_slice(&[94, 1, 1, 53, 1, 1]);
            ndi[246] = 255;
            packets.push(ndi);
            let mut cookie = valid.clone();
            cookie[236] = 0;
            packets.push(cookie);
            let mut reply = valid.clone();
            reply[0] = 2;
            packets.push(reply);
            let mut hlen = valid.clone();
            hlen[2] = 200;
            packets.push(hlen);
            let mut no_type = valid.clone();
            no_type[240] = 255;
            packets.push(no_type);
            for p in &packets {
                s.send_to(p, server).unwrap();
            }
            result.insert("sent".into(), packets.len().to_string());
        }
        "proxy" => {
            let s = client_socket(68);
            let chaddr = mac(0x71).parse::<Mac>().unwrap().0;
            let mut d = Message::new(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                &chaddr,
            );
            d.opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Discover));
            d.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
            ));
            d.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(Architecture(7)));
            let offer = exchange(&s, &d, "255.255.255.255:67".parse().unwrap());
            result.insert("offer_yiaddr".into(), offer.yiaddr().to_string());
            result.insert(
                "offer_class".into(),
                text_opt(&offer, OptionCode::ClassIdentifier),
            );
            result.insert(
                "offer_file".into(),
                text_opt(&offer, OptionCode::BootfileName),
            );
            result.insert(
                "offer_server_id".into(),
                text_opt(&offer, OptionCode::ServerIdentifier),
            );
            let mut r = d.clone();
            r.set_xid(d.xid().wrapping_add(1));
            r.set_ciaddr(Ipv4Addr::new(10, 10, 0, 50));
            r.opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Request));
            let ack = exchange(&s, &r, "10.10.0.1:4011".parse().unwrap());
            result.insert("ack_type".into(), text_opt(&ack, OptionCode::MessageType));
            result.insert(
                "ack_file".into(),
                ack.fname_str()
                    .and_then(|r| r.ok())
                    .unwrap_or("")
                    .trim_end_matches('\0')
                    .to_owned(),
            );
            result.insert("ack_siaddr".into(), ack.siaddr().to_string());
        }
        other => panic!("unknown client mode {other}"),
    }
    std::fs::write(out, serde_json::to_vec(&result).unwrap()).unwrap();
}
