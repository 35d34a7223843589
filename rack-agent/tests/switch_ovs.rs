//! The OVS switch driver against real Open vSwitch (userspace datapath): hosts in network
//! namespaces on OVS ports, VLAN membership proven with traffic (ping, raw 802.1Q frames),
//! configuration proven by read-back through the driver and by `ovs-vsctl`.
//!
//! Needs root, iproute2, `openvswitch-switch`, `iputils-ping`, `tcpdump` and python3.

#![allow(clippy::unwrap_used)]

mod netns;
mod switch_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rack_agent::switch::config::{DriverConfig, OvsAddress};
use rack_agent::switch::{
    self, parse_vlan_list, PortConfig, PortMode, SwitchConfig, SwitchDriver, SwitchError, Vlan,
};
use switch_support::{require, Ovs};

fn access(port: &str, vlan: u16) -> PortConfig {
    PortConfig::new(
        port,
        PortMode::Access {
            vlan: Vlan::new(vlan).unwrap(),
        },
    )
}

fn trunk(port: &str, native: Option<u16>, allowed: &str) -> PortConfig {
    PortConfig::new(
        port,
        PortMode::Trunk {
            native: native.map(|n| Vlan::new(n).unwrap()),
            allowed: parse_vlan_list(allowed).unwrap(),
        },
    )
}

fn tools() {
    require("ping", "iputils-ping");
    require("tcpdump", "tcpdump");
    require("python3", "python3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_vlans_retagging_trunks_and_nothing_with_traffic() {
    tools();
    let ovs = Ovs::start(None);
    let a = ovs.add_host("10.77.0.1");
    let b = ovs.add_host("10.77.0.2");
    let c = ovs.add_host("10.77.0.3");
    let d = ovs.add_host("10.77.0.4");
    let e = ovs.add_host("10.77.0.5");
    // Left as OVS creates it: a trunk of every VLAN.
    let f = ovs.add_host("10.77.0.6");
    let drv = ovs.driver();

    // Every port of the bridge is seen; fresh OVS ports trunk every VLAN (reported as such).
    let ports = drv.read_ports().await.unwrap();
    let names: BTreeSet<&str> = ports.iter().map(|p| p.port.as_str()).collect();
    for h in [&a, &b, &c, &d, &e] {
        assert!(names.contains(h.port.as_str()), "{names:?}");
    }
    assert!(
        matches!(ports[0].mode, PortMode::Trunk { native: None, ref allowed } if allowed.len() == 4094)
    );

    // One batch: a, b on VLAN 10; c, d, e on VLAN 20.
    let batch = [
        access(&a.port, 10),
        access(&b.port, 10),
        access(&c.port, 20),
        access(&d.port, 20),
        access(&e.port, 20),
    ];
    let got = drv.apply(&batch).await.unwrap();
    assert_eq!(got, batch);
    // Observed independently of the driver.
    assert_eq!(ovs.get(&a.port, "tag"), "10");
    assert_eq!(ovs.get(&c.port, "tag"), "20");
    assert_eq!(ovs.get(&c.port, "vlan_mode"), "access");
    // The transaction carried our comment into the database log.
    assert!(ovs
        .db_log()
        .contains("metalfleet switch tor-ovs: 5 port change(s)"));

    a.reaches(&b.ip);
    c.reaches(&d.ip);
    a.cannot_reach(&c.ip);
    b.cannot_reach(&d.ip);

    // Retag c at runtime: it now reaches VLAN 10 and no longer VLAN 20.
    drv.apply(&[access(&c.port, 10)]).await.unwrap();
    c.reaches(&a.ip);
    c.cannot_reach(&d.ip);

    // d becomes a trunk of 10 and 20: a tagged ARP on each VLAN is answered tagged with the
    // same VLAN (raw 802.1Q frames: the kernel here has no 802.1Q module), and untagged
    // traffic is dropped (no native VLAN).
    let got = drv.apply(&[trunk(&d.port, None, "10,20")]).await.unwrap();
    assert_eq!(got, [trunk(&d.port, None, "10,20")]);
    assert_eq!(ovs.get(&d.port, "trunks"), "[10, 20]");
    let dir = ovs.dir.path();
    let on10 = d
        .tagged_arp(dir, 10, &a.ip, 20)
        .expect("tagged reply on VLAN 10");
    assert!(
        on10.contains("vlan 10") && on10.contains(&format!("{} is-at", a.ip)),
        "{on10}"
    );
    let on20 = d
        .tagged_arp(dir, 20, &e.ip, 20)
        .expect("tagged reply on VLAN 20");
    assert!(
        on20.contains("vlan 20") && on20.contains(&format!("{} is-at", e.ip)),
        "{on20}"
    );
    d.cannot_reach(&e.ip);
    // Narrowed to VLAN 20: VLAN 10 is no longer carried.
    drv.apply(&[trunk(&d.port, None, "20")]).await.unwrap();
    assert_eq!(d.tagged_arp(dir, 10, &a.ip, 4), None);
    assert!(d.tagged_arp(dir, 20, &e.ip, 20).is_some());
    // A native VLAN: untagged traffic of d joins VLAN 20, tagged VLAN 10 still works.
    drv.apply(&[trunk(&d.port, Some(20), "10,20")])
        .await
        .unwrap();
    assert_eq!(ovs.get(&d.port, "vlan_mode"), "native-untagged");
    d.reaches(&e.ip);
    d.cannot_reach(&a.ip);
    assert!(d.tagged_arp(dir, 10, &b.ip, 20).is_some());

    // Revert a and b to nothing: they reach no one, not even each other.
    let got = drv
        .apply(&[
            PortConfig::new(&a.port, PortMode::Unconfigured),
            PortConfig::new(&b.port, PortMode::Unconfigured),
        ])
        .await
        .unwrap();
    assert!(got.iter().all(|p| p.mode == PortMode::Unconfigured));
    assert_eq!(ovs.get(&a.port, "protected"), "true");
    // Not even a port OVS trunks every VLAN on (f, never configured) sees a frame from a:
    // untagged frames are dropped where they enter (tag=4095 alone would leak here).
    let a_mac = a.mac();
    let seen = dir.join("f-sees-a.txt");
    let mut dump = f.ns.spawn(
        &[
            "tcpdump", "-l", "-n", "-e", "-i", "eth0", "ether", "src", &a_mac,
        ],
        &[],
        &seen,
    );
    netns::poll(10, "tcpdump on f", || {
        netns::read(&seen)
            .filter(|t| t.contains("listening on"))
            .map(|_| ())
    });
    a.cannot_reach(&b.ip);
    a.cannot_reach(&c.ip);
    a.cannot_reach(&d.ip);
    b.cannot_reach(&c.ip);
    dump.kill();
    let text = netns::read(&seen).unwrap_or_default();
    assert!(
        !text.lines().any(|l| l.contains(&a_mac)),
        "a's frames reached the all-VLAN trunk: {text}"
    );
    // ... and back: a joins VLAN 10 again.
    drv.apply(&[access(&a.port, 10)]).await.unwrap();
    a.reaches(&c.ip);

    // Drift: someone retags c behind the driver's back; checking the wanted state finds it.
    ovs.vsctl(&["set", "port", &c.port, "tag=30"]);
    match switch::check(&*drv, &[access(&c.port, 10), access(&a.port, 10)]).await {
        Err(SwitchError::Mismatch {
            port,
            wanted,
            found,
            ..
        }) => {
            assert_eq!(port, c.port);
            assert_eq!(wanted, access(&c.port, 10).mode);
            assert_eq!(found, access(&c.port, 30).mode);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(drv.read_port(&c.port).await.unwrap(), access(&c.port, 30));
    // A setting outside the model (tag 4095 alone leaks to all-VLAN trunks) is reported,
    // not guessed.
    ovs.vsctl(&["set", "port", &e.port, "tag=4095"]);
    let err = drv.read_port(&e.port).await.unwrap_err();
    assert!(err.to_string().contains("not modelled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ports_and_rejections_change_nothing() {
    tools();
    let ovs = Ovs::start(None);
    let a = ovs.add_host("10.78.0.1");
    let drv = ovs.driver();
    drv.apply(&[access(&a.port, 10)]).await.unwrap();

    // A port that is not on the bridge: nothing in the batch is applied.
    let err = drv
        .apply(&[access(&a.port, 20), access("no-such-port", 20)])
        .await
        .unwrap_err();
    assert!(matches!(err, SwitchError::UnknownPort { ref port, .. } if port == "no-such-port"));
    assert_eq!(ovs.get(&a.port, "tag"), "10");
    assert!(matches!(
        drv.read_port("no-such-port").await,
        Err(SwitchError::UnknownPort { .. })
    ));
    // A port on another bridge is not ours either.
    ovs.vsctl(&[
        "add-br",
        "br1",
        "--",
        "set",
        "bridge",
        "br1",
        "datapath_type=netdev",
    ]);
    ovs.vsctl(&[
        "add-port",
        "br1",
        "other0",
        "--",
        "set",
        "interface",
        "other0",
        "type=internal",
    ]);
    assert!(matches!(
        drv.apply(&[access("other0", 20)]).await,
        Err(SwitchError::UnknownPort { .. })
    ));
    // Invalid batches are refused before anything is sent.
    assert!(matches!(
        drv.apply(&[access(&a.port, 20), access(&a.port, 30)]).await,
        Err(SwitchError::InvalidChange { .. })
    ));
    // A wrong bridge name: the server's answer surfaces.
    let wrong = switch::connect(&SwitchConfig {
        name: "tor-wrong".into(),
        driver: DriverConfig::Ovs {
            address: OvsAddress::Unix(ovs.sock.clone()),
            bridge: "br9".into(),
        },
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let err = wrong.read_ports().await.unwrap_err();
    assert!(err.to_string().contains("no bridge br9"), "{err}");
    // An unreachable server is a connect error naming the address.
    let gone = switch::connect(&SwitchConfig {
        name: "tor-gone".into(),
        driver: DriverConfig::Ovs {
            address: OvsAddress::Unix(ovs.dir.path().join("nothing.sock")),
            bridge: "br0".into(),
        },
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let err = gone.read_ports().await.unwrap_err();
    assert!(
        matches!(err, SwitchError::Connect { .. }) && err.is_transient(),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_answers_echo_keepalives() {
    // The server probes idle TCP clients after 1 s and drops them 1 s later without an
    // answer; the driver's reader answers the echo while the connection sits idle.
    let ovs = Ovs::start(Some(1000));
    let a = ovs.add_host("10.79.0.1");
    let port = ovs.tcp_port.unwrap();
    let drv: Arc<dyn SwitchDriver> = switch::connect(&SwitchConfig {
        name: "tor-tcp".into(),
        driver: DriverConfig::Ovs {
            address: OvsAddress::Tcp(format!("127.0.0.1:{port}")),
            bridge: "br0".into(),
        },
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    drv.apply(&[access(&a.port, 42)]).await.unwrap();
    // Wait (by polling the server's log) until it has probed us three times.
    let log = ovs.dir.path().join("ovsdb-server.log");
    netns::poll(30, "three echo probes from ovsdb-server", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let probes = text
            .lines()
            .filter(|l| l.contains("tcp:127.0.0.1") && l.contains("send request, method=\"echo\""))
            .count();
        (probes >= 3).then_some(())
    });
    let text = ovs.db_log();
    assert!(
        text.contains("received reply") && text.contains("id=\"echo\""),
        "no echo reply in the log"
    );
    assert!(
        !text.contains("no response to inactivity probe"),
        "the server dropped the idle driver connection"
    );
    assert_eq!(drv.read_port(&a.port).await.unwrap(), access(&a.port, 42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_ovsdb_times_out_and_the_driver_reconnects() {
    let ovs = Ovs::start(None);
    let a = ovs.add_host("10.80.0.1");
    let drv = switch::connect(&SwitchConfig {
        name: "tor-frozen".into(),
        driver: DriverConfig::Ovs {
            address: OvsAddress::Unix(ovs.sock.clone()),
            bridge: "br0".into(),
        },
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    drv.apply(&[access(&a.port, 10)]).await.unwrap();
    ovs.freeze_db(true);
    let err = drv.read_port(&a.port).await.unwrap_err();
    ovs.freeze_db(false);
    assert!(
        matches!(err, SwitchError::Timeout { .. }) && err.is_transient(),
        "{err}"
    );
    // The connection with an unanswered request was dropped; a fresh one is used.
    drv.apply(&[access(&a.port, 11)]).await.unwrap();
    assert_eq!(ovs.get(&a.port, "tag"), "11");
}
