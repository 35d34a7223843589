//! The SSH CLI switch driver against our simulated vendor CLIs (`switch_support/cli_switch.py`,
//! asyncssh) through the real OpenSSH client: for NX-OS, EOS, OS10 and Junos, batches of
//! access/trunk/unconfigured changes are applied in one session and read back, a rejected
//! command surfaces with the switch's own text, a switch that does not take a change fails
//! verification, drift is found, and a wrong password or host key is refused.
//!
//! Needs `openssh-client` and `pip install asyncssh`.

#![allow(clippy::unwrap_used)]

mod netns;
mod switch_support;

use rack_agent::switch::config::DriverConfig;
use rack_agent::switch::sshcli::Dialect;
use rack_agent::switch::{self, parse_vlan_list, PortConfig, PortMode, SwitchError, Vlan};
use switch_support::{cli_ports, CliSwitch};

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

/// The port name that does not exist on the simulated switch, and the switch's words for it.
fn missing_port(d: Dialect) -> (&'static str, &'static str) {
    match d {
        Dialect::Nxos => ("Ethernet1/99", "% Invalid interface format at '^' marker."),
        Dialect::Eos => ("Ethernet99", "% Invalid input (at token 1: 'Ethernet99')"),
        Dialect::Os10 => (
            "ethernet1/1/99",
            "% Error: Interface ethernet1/1/99 not found.",
        ),
        Dialect::Junos => ("ge-0/0/99", "error: device ge-0/0/99 not found"),
    }
}

async fn exercise(dialect: Dialect) {
    let sw = CliSwitch::start(dialect, 4);
    let p = sw.ports.clone();
    let drv = sw.driver();

    // Fresh ports are shut down / without config: nothing.
    let all = drv.read_ports().await.unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(
        all.iter().all(|c| c.mode == PortMode::Unconfigured),
        "{all:?}"
    );

    // One batch with every mode, applied in one configuration session and read back.
    let batch = [
        access(&p[0], 10),
        trunk(&p[1], None, "20,30-32"),
        trunk(&p[2], Some(20), "10,20"),
        PortConfig::new(&p[3], PortMode::Unconfigured),
    ];
    let got = drv.apply(&batch).await.unwrap();
    assert_eq!(got, batch);
    let enter = match dialect {
        Dialect::Eos => "configure session",
        Dialect::Junos => "configure private",
        _ => "configure terminal",
    };
    assert_eq!(
        sw.transcript().matches(enter).count(),
        1,
        "{}",
        sw.transcript()
    );
    let mut all = drv.read_ports().await.unwrap();
    all.sort_by(|a, b| a.port.cmp(&b.port));
    let mut want = batch.to_vec();
    want.sort_by(|a, b| a.port.cmp(&b.port));
    assert_eq!(all, want);

    // Retag, trunk to access, and back to nothing.
    let batch = [
        access(&p[0], 11),
        access(&p[1], 12),
        PortConfig::new(&p[2], PortMode::Unconfigured),
        trunk(&p[3], Some(5), "5,6"),
    ];
    assert_eq!(drv.apply(&batch).await.unwrap(), batch);
    assert_eq!(drv.read_port(&p[1]).await.unwrap(), access(&p[1], 12));

    // A rejected command: typed, with the switch's own message.
    let (bad, text) = missing_port(dialect);
    let err = drv
        .apply(&[access(&p[0], 40), access(bad, 40)])
        .await
        .unwrap_err();
    match &err {
        SwitchError::Rejected {
            command, message, ..
        } => {
            assert!(message.contains(text), "{message:?} lacks {text:?}");
            if dialect == Dialect::Junos {
                // Junos refuses the port at commit time.
                assert_eq!(command, "commit and-quit");
            } else {
                assert_eq!(command, &format!("interface {bad}"));
            }
        }
        other => panic!("{other:?}"),
    }
    let after = drv.read_port(&p[0]).await.unwrap();
    match dialect {
        // Committed sessions: nothing of the failed batch was applied.
        Dialect::Eos | Dialect::Junos => assert_eq!(after, access(&p[0], 11)),
        // Line-by-line CLIs: lines before the rejected one stay applied (the caller
        // re-applies the batch).
        Dialect::Nxos | Dialect::Os10 => assert_eq!(after, access(&p[0], 40)),
    }
    // The session left config mode: the switch still takes batches.
    drv.apply(&[access(&p[0], 11)]).await.unwrap();

    // Drift behind the driver's back.
    sw.behind_back(&p[1], "access:99");
    match switch::check(&*drv, &[access(&p[0], 11), access(&p[1], 12)]).await {
        Err(SwitchError::Mismatch { port, found, .. }) => {
            assert_eq!(port, p[1]);
            assert_eq!(found, access(&p[1], 99).mode);
        }
        other => panic!("{other:?}"),
    }

    // Wrong password: an authentication error, the master never comes up.
    let wrong = sw.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let bad_pw = switch::connect(&sw.config(&wrong)).unwrap();
    let err = bad_pw.read_ports().await.unwrap_err();
    assert!(matches!(err, SwitchError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("Permission denied"), "{err}");
    // The password never reached a command line or a log.
    assert!(!err.to_string().contains("not-it"));

    // A different host key: refused before any password is sent.
    let mut cfg = sw.config(&sw.password_file);
    if let DriverConfig::SshCli(s) = &mut cfg.driver {
        s.known_host_key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                .into();
    }
    let err = switch::connect(&cfg)
        .unwrap()
        .read_ports()
        .await
        .unwrap_err();
    assert!(matches!(err, SwitchError::HostKey { .. }), "{err}");

    // Nobody listening: a transient connect error.
    let mut cfg = sw.config(&sw.password_file);
    if let DriverConfig::SshCli(s) = &mut cfg.driver {
        s.port = switch_support::free_port();
    }
    let err = switch::connect(&cfg)
        .unwrap()
        .read_ports()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SwitchError::Connect { .. }) && err.is_transient(),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxos_over_ssh() {
    exercise(Dialect::Nxos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eos_over_ssh() {
    exercise(Dialect::Eos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os10_over_ssh() {
    exercise(Dialect::Os10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junos_over_ssh() {
    exercise(Dialect::Junos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_switch_does_not_take_fails_verification() {
    for dialect in [Dialect::Nxos, Dialect::Junos] {
        let ports = cli_ports(dialect, 2);
        let sw = CliSwitch::start_with(dialect, 2, &[ports[1].as_str()]);
        let drv = sw.driver();
        match drv
            .apply(&[access(&ports[0], 10), access(&ports[1], 20)])
            .await
        {
            Err(SwitchError::Mismatch {
                port,
                wanted,
                found,
                ..
            }) => {
                assert_eq!(port, ports[1]);
                assert_eq!(wanted, access(&ports[1], 20).mode);
                assert_eq!(found, PortMode::Unconfigured);
            }
            other => panic!("{dialect:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_switch_times_out_and_recovers() {
    let sw = CliSwitch::start(Dialect::Eos, 2);
    let mut cfg = sw.config(&sw.password_file);
    cfg.timeout = std::time::Duration::from_secs(2);
    let drv = switch::connect(&cfg).unwrap();
    drv.apply(&[access(&sw.ports[0], 10)]).await.unwrap();
    sw.hang(true);
    let err = drv.apply(&[access(&sw.ports[0], 20)]).await.unwrap_err();
    assert!(
        matches!(err, SwitchError::Timeout { .. }) && err.is_transient(),
        "{err}"
    );
    sw.hang(false);
    // The stuck session was abandoned; the next call works on the same master connection.
    drv.apply(&[access(&sw.ports[1], 30)]).await.unwrap();
    // EOS commits or discards: the timed-out batch either fully landed or not at all.
    let p0 = drv.read_port(&sw.ports[0]).await.unwrap();
    assert!(
        p0 == access(&sw.ports[0], 10) || p0 == access(&sw.ports[0], 20),
        "{p0:?}"
    );
}
