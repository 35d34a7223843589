//! The IPMI driver against a real peer: `ipmi_sim` (OpenIPMI) on 127.0.0.1 with the lab's
//! `chassis_control.sh` recording power and boot state in files, driven through
//! `ipmitool -I lanplus -C 3`. One test powers a real QEMU VM through the same BMC.
//!
//! Needs root-free tools only: openipmi, ipmitool, qemu-system-x86 (the QEMU test).

#![allow(clippy::unwrap_used)]

mod bmc_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bmc_support::{poll, require, IpmiSim, IPMI_PASSWORD, IPMI_SIM_SERIAL, IPMI_USER};
use protocol::domain::BmcDriver;
use protocol::fleet::BmcAccess;
use rack_agent::bmc::guard::CollectingObserver;
use rack_agent::bmc::{
    self, AddressSource, Bmc, BmcConfig, BmcError, BmcRegistry, BootDevice, BootOverride,
    GuardedBmc, PowerAction, PowerState,
};
use rack_agent::boot::ConfigCtx;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mft-bmc-ipmi")
        .tempdir()
        .unwrap()
}

/// The `[bmc]` section as an operator would write it: suite 17 by default, 3 for this BMC.
fn config(address: &str, extra: &str) -> BmcConfig {
    let text = format!(
        "timeout_secs = 5\nretries = 2\nbackoff_ms = 10\nbackoff_max_ms = 40\n{extra}\n\
         [[overrides]]\naddress = \"{address}\"\nipmi_cipher_suite = 3\n"
    );
    let ctx = ConfigCtx {
        base_dir: PathBuf::from("/"),
        data_dir: PathBuf::from("/"),
    };
    BmcConfig::from_toml(toml::from_str(&text).unwrap(), &ctx).unwrap()
}

fn access(address: &str, password: &str) -> BmcAccess {
    BmcAccess {
        address: address.into(),
        driver: BmcDriver::Ipmi,
        username: Some(IPMI_USER.into()),
        password: Some(password.into()),
    }
}

fn guarded(access: &BmcAccess, config: &BmcConfig) -> (GuardedBmc, Arc<CollectingObserver>) {
    let obs = Arc::new(CollectingObserver::default());
    let g = bmc::connect_guarded(access, config, &BmcRegistry::default(), obs.clone()).unwrap();
    (g, obs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_boot_fru_and_lan_through_ipmi_sim() {
    let dir = tempdir();
    let sim = IpmiSim::start(dir.path(), &[]);
    let cfg = config(&sim.address(), "");
    assert_eq!(cfg.defaults.ipmi_cipher_suite, 17);
    let (b, obs) = guarded(&access(&sim.address(), IPMI_PASSWORD), &cfg);

    // Power: every change reaches chassis_control, and status reads it back.
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
    b.power(PowerAction::On).await.unwrap();
    assert_eq!(b.power_status().await.unwrap(), PowerState::On);
    assert_eq!(sim.state_file("power").as_deref(), Some("1"));
    b.power(PowerAction::Off).await.unwrap();
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
    assert_eq!(sim.state_file("power").as_deref(), Some("0"));
    b.power(PowerAction::On).await.unwrap();
    let before = sim.calls().len();
    b.power(PowerAction::Cycle).await.unwrap();
    let cycle_calls = sim.calls()[before..].to_vec();
    assert!(
        cycle_calls.iter().any(|c| c == "set power 0"),
        "cycle powers off: {cycle_calls:?}"
    );
    b.power(PowerAction::Reset).await.unwrap();
    assert!(sim.calls().iter().any(|c| c == "set reset 1"));
    b.power(PowerAction::SoftOff).await.unwrap();
    assert!(sim.calls().iter().any(|c| c == "set shutdown 1"));

    // Boot device: pxe reads back as PXE; disk is stored as "default" by ipmi_sim's
    // chassis_control protocol but the boot flags read back as the hard drive.
    b.set_boot(BootOverride {
        device: BootDevice::Pxe,
        uefi: true,
        persistent: true,
    })
    .await
    .unwrap();
    assert_eq!(sim.state_file("boot").as_deref(), Some("pxe"));
    assert_eq!(b.boot_override().await.unwrap().device, BootDevice::Pxe);
    b.set_boot(BootOverride {
        device: BootDevice::Disk,
        uefi: false,
        persistent: false,
    })
    .await
    .unwrap();
    assert_eq!(sim.state_file("boot").as_deref(), Some("default"));
    assert_eq!(b.boot_override().await.unwrap().device, BootDevice::Disk);
    for dev in [BootDevice::Cdrom, BootDevice::BiosSetup] {
        b.set_boot(BootOverride {
            device: dev,
            uefi: false,
            persistent: false,
        })
        .await
        .unwrap();
        assert_eq!(b.boot_override().await.unwrap().device, dev);
    }

    // FRU: the serial comes from the product area of the FRU image we gave ipmi_sim.
    let fru = b.fru().await.unwrap();
    assert_eq!(fru.serial.as_deref(), Some(IPMI_SIM_SERIAL));
    assert_eq!(fru.chassis_serial.as_deref(), Some("CHS-SN-42"));
    assert_eq!(fru.manufacturer.as_deref(), Some("Metal Inc"));

    // LAN: set with the real ipmitool, read through the driver.
    let lan = b.lan_config().await.unwrap();
    assert_eq!(lan.ip, None, "ipmi_sim starts without LAN parameters");
    for args in [
        &["lan", "set", "1", "ipsrc", "static"][..],
        &["lan", "set", "1", "ipaddr", "10.9.8.7"],
        &["lan", "set", "1", "netmask", "255.255.0.0"],
        &["lan", "set", "1", "defgw", "ipaddr", "10.9.0.1"],
        &["lan", "set", "1", "macaddr", "52:54:00:AA:BB:CC"],
    ] {
        sim.ipmitool(args);
    }
    let lan = b.lan_config().await.unwrap();
    assert_eq!(lan.ip, Some("10.9.8.7".parse().unwrap()));
    assert_eq!(lan.netmask, Some("255.255.0.0".parse().unwrap()));
    assert_eq!(lan.gateway, Some("10.9.0.1".parse().unwrap()));
    assert_eq!(lan.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
    assert_eq!(lan.source, AddressSource::Static);

    // Redfish-only operations are typed refusals naming driver and operation.
    let e = b.bios_attributes().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "ipmi driver does not support read BIOS attributes"
    );
    assert!(obs.failures().is_empty(), "{:?}", obs.failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error_with_the_bmc_message_and_no_retry() {
    let dir = tempdir();
    let sim = IpmiSim::start(dir.path(), &[]);
    let cfg = config(&sim.address(), "");
    let (b, obs) = guarded(&access(&sim.address(), "not-the-password"), &cfg);
    let e = b.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Auth { .. }), "{e}");
    assert!(
        e.to_string().contains("RAKP 2 HMAC is invalid"),
        "the BMC's own words: {e}"
    );
    assert!(!e.to_string().contains("not-the-password"));
    let f = obs.failures();
    assert_eq!(f.len(), 1, "auth failures are not retried: {f:?}");
    assert!(!f[0].transient && f[0].retry_in.is_none());
    assert!(!f[0].log_line().contains("not-the-password"));
    assert!(sim.calls().iter().all(|c| !c.starts_with("set")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_travels_in_the_environment_never_on_argv() {
    let dir = tempdir();
    let sim = IpmiSim::start(dir.path(), &[]);
    // A wrapper records ipmitool's argv and whether IPMI_PASSWORD is set, then runs it.
    let log = dir.path().join("argv.log");
    let wrapper = dir.path().join("ipmitool-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf 'argv: %s\\n' \"$*\" >> '{0}'\n[ \"$IPMI_PASSWORD\" = '{IPMI_PASSWORD}' ] && echo 'env: IPMI_PASSWORD set' >> '{0}'\nexec ipmitool \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let cfg = config(
        &sim.address(),
        &format!("ipmitool = \"{}\"", wrapper.display()),
    );
    let (b, _) = guarded(&access(&sim.address(), IPMI_PASSWORD), &cfg);
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("env: IPMI_PASSWORD set"), "{text}");
    assert!(!text.contains(IPMI_PASSWORD), "password on argv: {text}");
    let argv = text.lines().find(|l| l.starts_with("argv:")).unwrap();
    for want in ["-I lanplus", "-E", "-C 3", &format!("-p {}", sim.port)] {
        assert!(argv.contains(want), "{want} missing in {argv}");
    }
    assert!(!argv.contains("-P"), "{argv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_bmc_times_out_and_is_retried_with_backoff() {
    require("ipmitool", "the ipmitool package");
    // Nothing listens on this port: every attempt times out.
    let port = bmc_support::free_udp_port();
    let address = format!("127.0.0.1:{port}");
    let cfg = config(&address, "");
    let (b, obs) = guarded(&access(&address, IPMI_PASSWORD), &cfg);
    let e = b.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    let f = obs.failures();
    assert_eq!(f.len(), 3, "first attempt + 2 retries: {f:?}");
    assert_eq!(
        f.iter().map(|f| f.retry_in).collect::<Vec<_>>(),
        vec![
            Some(Duration::from_millis(10)),
            Some(Duration::from_millis(20)),
            None
        ]
    );
    assert!(
        f[0].message.contains("Get Auth Capabilities error"),
        "{}",
        f[0].message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_suite_17_is_refused_by_ipmi_sim_without_retry() {
    let dir = tempdir();
    let sim = IpmiSim::start(dir.path(), &[]);
    // No override for this address: the default suite 17, which ipmi_sim does not speak.
    let ctx = ConfigCtx {
        base_dir: PathBuf::from("/"),
        data_dir: PathBuf::from("/"),
    };
    let cfg = BmcConfig::from_toml(
        toml::from_str("timeout_secs = 5\nretries = 2\nbackoff_ms = 10").unwrap(),
        &ctx,
    )
    .unwrap();
    let (b, obs) = guarded(&access(&sim.address(), IPMI_PASSWORD), &cfg);
    let e = b.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Config { .. }), "{e}");
    assert!(
        e.to_string().contains("invalid authentication algorithm"),
        "{e}"
    );
    assert_eq!(obs.failures().len(), 1);
}

/// Kills the VM named by a pidfile when dropped (the chassis script normally does it).
struct PidfileGuard(PathBuf);

impl Drop for PidfileGuard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
    }
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| c.contains("qemu-system"))
            .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_power_drives_a_real_qemu_vm() {
    require("qemu-system-x86_64", "the qemu-system-x86 package");
    let dir = tempdir();
    let name = format!("mft-vbmc-{}", std::process::id());
    let qemu = format!(
        "qemu-system-x86_64 -accel tcg -m 64 -display none -nodefaults -name {name} \
         -smbios type=1,serial={IPMI_SIM_SERIAL}"
    );
    let sim = IpmiSim::start(dir.path(), &[("VBMC_QEMU", qemu)]);
    let pidfile = sim.state.join("qemu.pid");
    let _vm = PidfileGuard(pidfile.clone());
    let cfg = config(&sim.address(), "");
    let (b, _) = guarded(&access(&sim.address(), IPMI_PASSWORD), &cfg);

    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
    b.power(PowerAction::On).await.unwrap();
    let pid = poll(20, "the VM's pidfile", || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
    });
    assert!(alive(&pid), "QEMU {pid} is running after power on");
    assert_eq!(b.power_status().await.unwrap(), PowerState::On);

    b.power(PowerAction::Off).await.unwrap();
    poll(20, "the VM to exit", || (!alive(&pid)).then_some(()));
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_reach_the_bmc_one_at_a_time() {
    let dir = tempdir();
    let sim = IpmiSim::start(dir.path(), &[]);
    // The wrapper holds a lock directory while ipmitool runs and notes any overlap.
    let log = dir.path().join("overlap.log");
    let lock = dir.path().join("ipmitool.lock");
    let wrapper = dir.path().join("ipmitool-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nmkdir '{lock}' 2>/dev/null || echo overlap >> '{log}'\necho run >> '{log}'\nipmitool \"$@\"\nrc=$?\nrmdir '{lock}' 2>/dev/null\nexit $rc\n",
            lock = lock.display(),
            log = log.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let cfg = config(
        &sim.address(),
        &format!("ipmitool = \"{}\"", wrapper.display()),
    );
    let registry = BmcRegistry::default();
    let obs = Arc::new(CollectingObserver::default());
    let acc = access(&sim.address(), IPMI_PASSWORD);
    // Two guards for the same address (two nodes behind one BMC) share the registry's lock.
    let a = Arc::new(bmc::connect_guarded(&acc, &cfg, &registry, obs.clone()).unwrap());
    let b = Arc::new(bmc::connect_guarded(&acc, &cfg, &registry, obs.clone()).unwrap());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let g = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                g.fru().await.map(|_| ())
            } else {
                g.power_status().await.map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().filter(|l| *l == "run").count(), 8);
    assert!(
        !text.contains("overlap"),
        "two ipmitool runs overlapped:\n{text}"
    );
    assert!(obs.failures().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_leaves_no_ipmitool_behind() {
    require("ipmitool", "the ipmitool package");
    let dir = tempdir();
    // Nobody answers on this port, so ipmitool would wait for seconds.
    let address = format!("127.0.0.1:{}", bmc_support::free_udp_port());
    let pidfile = dir.path().join("ipmitool.pid");
    let wrapper = dir.path().join("ipmitool-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec ipmitool \"$@\"\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let cfg = config(&address, &format!("ipmitool = \"{}\"", wrapper.display()));
    let registry = BmcRegistry::default();
    let obs = Arc::new(CollectingObserver::default());
    let b = bmc::connect_guarded(&access(&address, IPMI_PASSWORD), &cfg, &registry, obs).unwrap();
    let call = b.power_status();
    let pid = {
        tokio::pin!(call);
        // Drive the call until ipmitool runs, then drop it (the caller gave up).
        loop {
            tokio::select! {
                r = &mut call => panic!("finished early: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
            {
                break pid;
            }
        }
    };
    let running = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| {
                !s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
            .unwrap_or(false)
    };
    poll(10, "ipmitool to be killed", || {
        (!running(&pid)).then_some(())
    });
    // The address's turn was released with the dropped call.
    assert!(registry.lock_for(&address).try_lock().is_ok());
}

/// `rack-agent bmc` (the operator's and the lab's way to drive one BMC) against ipmi_sim: the
/// same drivers and `[bmc]` overrides as the running agent; the password only from the
/// environment and never echoed; a refusal exits 1 with the BMC's own words.
#[test]
fn rack_agent_bmc_subcommand_drives_ipmi_sim() {
    let dir = tempdir();
    let sim = IpmiSim::start(dir.path(), &[]);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "rack = \"r1\"\ndata_dir = \"data\"\ncoordinators = []\n[bmc]\ntimeout_secs = 5\n\
             retries = 1\nbackoff_ms = 10\n[[bmc.overrides]]\naddress = \"{}\"\nipmi_cipher_suite = 3\n",
            sim.address()
        ),
    )
    .unwrap();
    let run = |password: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rack-agent"))
            .args(["bmc", "--config"])
            .arg(&config)
            .args(["--driver", "ipmi", "--address", &sim.address()])
            .args(["--username", IPMI_USER])
            .args(args)
            .env("METALFLEET_BMC_PASSWORD", password)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(IPMI_PASSWORD, &["power", "on"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "power: on");
    assert_eq!(sim.state_file("power").as_deref(), Some("1"));

    let (code, out, err) = run(IPMI_PASSWORD, &["-o", "json", "power", "status"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "power");
    assert_eq!(v["power"], "on");

    let (code, out, err) = run(IPMI_PASSWORD, &["bootdev", "pxe", "--persistent"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("boot: pxe"), "{out}");
    assert_eq!(sim.state_file("boot").as_deref(), Some("pxe"));

    let (code, out, err) = run(IPMI_PASSWORD, &["-o", "json", "fru"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(IPMI_SIM_SERIAL), "{out}");

    let (code, _, err) = run(IPMI_PASSWORD, &["power", "sideways"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("on, off, cycle"), "{err}");

    let wrong = "not-the-password-7f3a";
    let (code, out, err) = run(wrong, &["power", "off"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("error:"), "{err}");
    assert!(
        !err.contains(wrong) && !out.contains(wrong),
        "password echoed: {err}"
    );
    assert_eq!(
        sim.state_file("power").as_deref(),
        Some("1"),
        "refused, nothing changed"
    );
}
