//! The Redfish driver against real peers over TLS with a certificate minted per test:
//! sushy-tools' emulator (fake driver, bcrypt basic auth) for power, boot overrides, virtual
//! media, TLS verification by CA and by pinned fingerprint; and the lab Redfish BMC
//! (`tests/lab/vbmc/redfish_bmc.py`) for what sushy's fake driver cannot do — firmware
//! SimpleUpdate with task polling, BIOS pending settings, Storage volumes, BMC LAN config,
//! session auth and session exhaustion.
//!
//! Needs: python3, `pip install sushy-tools==2.2.0 bcrypt`.

#![allow(clippy::unwrap_used)]

mod bmc_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bmc_support::{Files, LabRedfish, Sushy, Tls, SUSHY_UUID};
use protocol::domain::BmcDriver;
use protocol::fleet::BmcAccess;
use rack_agent::bmc::guard::CollectingObserver;
use rack_agent::bmc::redfish::RedfishBmc;
use rack_agent::bmc::{
    self, AddressSource, Bmc, BmcConfig, BmcError, BmcRegistry, BootDevice, BootOverride,
    GuardedBmc, PowerAction, PowerState, TaskState, VolumeSpec,
};
use rack_agent::boot::ConfigCtx;

const PASSWORD: &str = "redfish-lab-pw";

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mft-bmc-redfish")
        .tempdir()
        .unwrap()
}

/// A `[bmc]` section; `extra` is appended (e.g. verification keys).
fn config(extra: &str) -> BmcConfig {
    let text = format!(
        "timeout_secs = 10\nretries = 2\nbackoff_ms = 10\nbackoff_max_ms = 40\npower_wait_secs = 30\n{extra}\n"
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
        driver: BmcDriver::Redfish,
        username: Some("admin".into()),
        password: Some(password.into()),
    }
}

fn guarded(access: &BmcAccess, config: &BmcConfig) -> (GuardedBmc, Arc<CollectingObserver>) {
    let obs = Arc::new(CollectingObserver::default());
    let g = bmc::connect_guarded(access, config, &BmcRegistry::default(), obs.clone()).unwrap();
    (g, obs)
}

fn ca_config(tls: &Tls) -> BmcConfig {
    config(&format!(
        "redfish_verify = \"ca\"\nredfish_ca_bundle = \"{}\"",
        tls.ca.display()
    ))
}

fn iso(dir: &Path) -> (PathBuf, Files) {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("boot.iso"), vec![0x42u8; 64 * 1024]).unwrap();
    let f = Files::serve(&root, &dir.join("http.log"));
    (root, f)
}

// ---------------------------------------------------------------------------------------------
// sushy-tools
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_power_boot_and_virtual_media_over_ca_verified_tls() {
    let dir = tempdir();
    let tls = Tls::mint(dir.path(), "sushy");
    let sushy = Sushy::start(dir.path(), &tls, PASSWORD);
    let cfg = ca_config(&tls);
    // The system by name: sushy answers 307 to /Systems/<uuid>, which the driver follows once.
    let address = format!("{}/redfish/v1/Systems/node-1", sushy.base());
    let (b, obs) = guarded(&access(&address, PASSWORD), &cfg);

    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
    // sushy applies power changes 1–11 s late: the driver polls until they land.
    b.power(PowerAction::On).await.unwrap();
    assert_eq!(b.power_status().await.unwrap(), PowerState::On);
    b.power(PowerAction::Reset).await.unwrap();
    b.power(PowerAction::Off).await.unwrap();
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
    let log = sushy.log();
    assert!(
        log.contains(&format!(
            "/redfish/v1/Systems/{SUSHY_UUID}/Actions/ComputerSystem.Reset"
        )),
        "resets went to the UUID path:\n{log}"
    );
    assert!(
        log.contains("GET /redfish/v1/Systems/node-1 HTTP/1.1\" 307"),
        "{log}"
    );

    // Boot override: once + UEFI reads back with sushy's quirk (Continuous).
    b.set_boot(BootOverride {
        device: BootDevice::Pxe,
        uefi: true,
        persistent: false,
    })
    .await
    .unwrap();
    let back = b.boot_override().await.unwrap();
    assert_eq!((back.device, back.uefi), (BootDevice::Pxe, true));
    assert!(back.persistent, "sushy stores Once as Continuous");
    b.set_boot(BootOverride {
        device: BootDevice::Disk,
        uefi: false,
        persistent: true,
    })
    .await
    .unwrap();
    let back = b.boot_override().await.unwrap();
    assert_eq!(
        back,
        BootOverride {
            device: BootDevice::Disk,
            uefi: false,
            persistent: true
        }
    );
    // BiosSetup is not in sushy's allowed targets: refused before any PATCH.
    let e = b
        .set_boot(BootOverride {
            device: BootDevice::BiosSetup,
            uefi: true,
            persistent: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Rejected { .. }), "{e}");

    let fru = b.fru().await.unwrap();
    assert_eq!(fru.manufacturer.as_deref(), Some("Sushy Emulator"));

    // Virtual media: sushy downloads the image, so a real HTTP server serves it.
    let (_root, files) = iso(dir.path());
    let image = files.url("boot.iso");
    b.virtual_media_insert(&image).await.unwrap();
    let vm = b.virtual_media_status().await.unwrap();
    assert!(vm.inserted, "{vm:?}");
    assert_eq!(vm.image.as_deref(), Some(image.as_str()));
    assert!(files.log().contains("GET /boot.iso"), "{}", files.log());
    b.virtual_media_eject().await.unwrap();
    assert!(!b.virtual_media_status().await.unwrap().inserted);

    // What sushy's fake driver lacks comes back typed (the lab BMC test covers these).
    let e = b.bios_attributes().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "redfish driver does not support read BIOS attributes",
        "sushy answers 501 Not Implemented"
    );
    let e = b.lan_config().await.unwrap_err();
    assert!(matches!(e, BmcError::Unsupported { .. }), "{e}");
    let before = obs.failures().len();
    assert!(b.firmware_update(&image).await.is_err());
    assert!(obs.failures().len() > before, "the failure was reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_fingerprint_is_accepted_and_a_wrong_pin_or_ca_is_refused() {
    let dir = tempdir();
    let tls = Tls::mint(dir.path(), "sushy");
    let sushy = Sushy::start(dir.path(), &tls, PASSWORD);
    let address = format!("127.0.0.1:{}", sushy.port);

    // Pinned: no CA anywhere, the fingerprint alone (with colons, upper case) is trusted.
    let pin = tls
        .fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let cfg = config(&format!(
        "[[overrides]]\naddress = \"{address}\"\nredfish_pin_sha256 = \"{pin}\""
    ));
    let (b, _) = guarded(&access(&address, PASSWORD), &cfg);
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);

    // A wrong pin: a TLS error naming the mismatch, final (no retry).
    let wrong = "00".repeat(32);
    let cfg = config(&format!(
        "[[overrides]]\naddress = \"{address}\"\nredfish_pin_sha256 = \"{wrong}\""
    ));
    let (b, obs) = guarded(&access(&address, PASSWORD), &cfg);
    let e = b.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Tls { .. }), "{e}");
    let text = rack_agent::error_chain(&e);
    assert!(text.contains("pinned SHA-256"), "{text}");
    assert!(
        text.contains(&tls.fingerprint),
        "names what was presented: {text}"
    );
    assert_eq!(obs.failures().len(), 1);

    // CA verification against another CA: refused.
    let other = Tls::mint(dir.path(), "other");
    let (b, _) = guarded(&access(&address, PASSWORD), &ca_config(&other));
    let e = b.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Tls { .. }), "{e}");

    // insecure: accepted (lab only).
    let (b, _) = guarded(
        &access(&address, PASSWORD),
        &config("redfish_verify = \"insecure\""),
    );
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_wrong_password_is_an_auth_error_without_retry() {
    let dir = tempdir();
    let tls = Tls::mint(dir.path(), "sushy");
    let sushy = Sushy::start(dir.path(), &tls, PASSWORD);
    let (b, obs) = guarded(
        &access(&format!("127.0.0.1:{}", sushy.port), "wrong-pw"),
        &ca_config(&tls),
    );
    let e = b.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Auth { .. }), "{e}");
    assert!(
        e.to_string().contains("Incorrect username or password"),
        "the BMC's words: {e}"
    );
    let f = obs.failures();
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(!f[0].log_line().contains("wrong-pw"));
}

// ---------------------------------------------------------------------------------------------
// The lab Redfish BMC
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_bmc_firmware_bios_storage_and_lan() {
    let dir = tempdir();
    let tls = Tls::mint(dir.path(), "lab");
    let lab = LabRedfish::start(
        dir.path(),
        &tls,
        PASSWORD,
        &["--serial", "LAB-SN-77", "--power-delay", "1.5"],
        &[],
    );
    let cfg = config(&format!(
        "redfish_ca_bundle = \"{}\"\nredfish_auth = \"session\"",
        tls.ca.display()
    ));
    let (b, obs) = guarded(&access(&lab.address(), PASSWORD), &cfg);

    let fru = b.fru().await.unwrap();
    assert_eq!(fru.serial.as_deref(), Some("LAB-SN-77"));
    let lan = b.lan_config().await.unwrap();
    assert_eq!(lan.ip, Some("10.20.0.15".parse().unwrap()));
    assert_eq!(lan.gateway, Some("10.20.0.1".parse().unwrap()));
    assert_eq!(lan.mac.as_deref(), Some("52:54:00:ab:cd:ef"));
    assert_eq!(lan.source, AddressSource::Dhcp);

    // Firmware: the BMC downloads the image from our HTTP server; the task ends Completed
    // with the BMC's message naming the image's digest.
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let image: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("bios-2.1.bin"), &image).unwrap();
    let files = Files::serve(&root, &dir.path().join("http.log"));
    let task = b.firmware_update(&files.url("bios-2.1.bin")).await.unwrap();
    assert_eq!(task.state, TaskState::Running);
    assert!(
        task.id.starts_with("/redfish/v1/TaskService/Tasks/"),
        "{task:?}"
    );
    let done = bmc::wait_task(&b, &task, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Completed, "{done:?}");
    assert_eq!(done.percent, Some(100));
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&image))
    };
    assert!(
        done.messages.iter().any(|m| m.contains(&digest)),
        "{done:?}"
    );

    // A missing image: the task fails with the BMC's message.
    let task = b.firmware_update(&files.url("missing.bin")).await.unwrap();
    let failed = bmc::wait_task(&b, &task, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(failed.state, TaskState::Failed);
    assert!(
        failed.messages.iter().any(|m| m.contains("404")),
        "{failed:?}"
    );

    // BIOS: set as pending, applied by the next reboot.
    let before = b.bios_attributes().await.unwrap();
    assert_eq!(before.current["SriovEnable"], "Disabled");
    assert!(before.pending.is_empty());
    let mut set = BTreeMap::new();
    set.insert("SriovEnable".to_owned(), serde_json::json!("Enabled"));
    set.insert("NumaNodesPerSocket".to_owned(), serde_json::json!(2));
    b.set_bios_attributes(set).await.unwrap();
    let mid = b.bios_attributes().await.unwrap();
    assert_eq!(mid.current["SriovEnable"], "Disabled");
    assert_eq!(mid.pending["SriovEnable"], "Enabled");
    assert_eq!(mid.pending["NumaNodesPerSocket"], 2);
    // An unknown attribute: refused with the BMC's words, not retried.
    let mut bad = BTreeMap::new();
    bad.insert("NoSuchKnob".to_owned(), serde_json::json!(1));
    let n = obs.failures().len();
    let e = b.set_bios_attributes(bad).await.unwrap_err();
    assert!(matches!(e, BmcError::Rejected { .. }), "{e}");
    assert!(
        e.to_string().contains("Unknown BIOS attribute NoSuchKnob"),
        "{e}"
    );
    assert_eq!(obs.failures().len(), n + 1);
    b.power(PowerAction::On).await.unwrap();
    assert_eq!(b.power_status().await.unwrap(), PowerState::On);
    let after = b.bios_attributes().await.unwrap();
    assert_eq!(after.current["SriovEnable"], "Enabled");
    assert!(after.pending.is_empty());
    b.power(PowerAction::Off).await.unwrap();

    // Storage: a RAID1 volume from two drives, listed, then deleted.
    let ctl = b.storage().await.unwrap().remove(0);
    assert_eq!(ctl.raid_types, ["RAID0", "RAID1", "RAID10"]);
    assert_eq!(ctl.drives.len(), 4);
    assert!(ctl.volumes.is_empty());
    let vol = b
        .create_volume(
            &ctl.id,
            VolumeSpec {
                name: "os".into(),
                raid_type: "RAID1".into(),
                capacity_bytes: Some(500 * 1000_u64.pow(3)),
                drives: ctl.drives[..2].iter().map(|d| d.id.clone()).collect(),
            },
        )
        .await
        .unwrap();
    let listed = b.storage().await.unwrap().remove(0).volumes;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, vol);
    assert_eq!(listed[0].raid_type.as_deref(), Some("RAID1"));
    assert_eq!(listed[0].capacity_bytes, Some(500 * 1000_u64.pow(3)));
    let e = b
        .create_volume(
            &ctl.id,
            VolumeSpec {
                name: "x".into(),
                raid_type: "RAID6".into(),
                capacity_bytes: None,
                drives: Vec::new(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("RAIDType RAID6 is not supported"),
        "{e}"
    );
    b.delete_volume(&vol).await.unwrap();
    assert!(b.storage().await.unwrap()[0].volumes.is_empty());

    // Virtual media on the manager (older layout).
    b.virtual_media_insert("http://10.0.0.1/assets/x.iso")
        .await
        .unwrap();
    assert!(b.virtual_media_status().await.unwrap().inserted);
    b.virtual_media_eject().await.unwrap();
    assert!(!b.virtual_media_status().await.unwrap().inserted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_bmc_session_exhaustion_is_transient_and_ends_with_logout() {
    let dir = tempdir();
    let tls = Tls::mint(dir.path(), "lab");
    let lab = LabRedfish::start(dir.path(), &tls, PASSWORD, &["--max-sessions", "1"], &[]);
    let cfg = config(&format!(
        "redfish_ca_bundle = \"{}\"\nredfish_auth = \"session\"",
        tls.ca.display()
    ));
    let settings = cfg.for_address(&lab.address());
    // The first client takes the only session slot.
    let first = RedfishBmc::new(&access(&lab.address(), PASSWORD), &settings).unwrap();
    assert_eq!(first.power_status().await.unwrap(), PowerState::Off);
    // A second one is refused a session: transient, retried with backoff, reported.
    let (second, obs) = guarded(&access(&lab.address(), PASSWORD), &cfg);
    let e = second.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::SessionExhausted { .. }), "{e}");
    assert!(
        e.to_string().contains("Maximum number of sessions reached"),
        "{e}"
    );
    let f = obs.failures();
    assert_eq!(f.len(), 3, "first attempt + 2 retries: {f:?}");
    assert!(f.iter().all(|f| f.transient));
    // The first logs out (DELETE its session); the second gets in.
    first.logout().await.unwrap();
    assert_eq!(second.power_status().await.unwrap(), PowerState::Off);
    // A wrong password at login is an auth error.
    let (bad, obs) = guarded(&access(&lab.address(), "nope"), &cfg);
    let e = bad.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Auth { .. }), "{e}");
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

fn qemu_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.contains("qemu-system"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_redfish_power_drives_a_real_qemu_vm() {
    bmc_support::require("qemu-system-x86_64", "the qemu-system-x86 package");
    let dir = tempdir();
    let tls = Tls::mint(dir.path(), "lab");
    let state = dir.path().join("chassis");
    let pidfile = state.join("qemu.pid");
    let _vm = PidfileGuard(pidfile.clone());
    let hook = bmc_support::lab_dir().join("chassis_control.sh");
    let qemu = format!(
        "qemu-system-x86_64 -accel tcg -m 64 -display none -nodefaults -name mft-vbmc-rf-{}",
        std::process::id()
    );
    let lab = LabRedfish::start(
        dir.path(),
        &tls,
        PASSWORD,
        &["--power-hook", hook.to_str().unwrap()],
        &[
            ("VBMC_STATE_DIR", state.display().to_string()),
            ("VBMC_QEMU", qemu),
        ],
    );
    let (b, _) = guarded(&access(&lab.address(), PASSWORD), &ca_config(&tls));
    b.power(PowerAction::On).await.unwrap();
    let pid = bmc_support::poll(20, "the VM's pidfile", || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
    });
    assert!(qemu_alive(&pid), "QEMU {pid} runs after a Redfish power on");
    b.set_boot(BootOverride {
        device: BootDevice::Pxe,
        uefi: true,
        persistent: false,
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("boot")).unwrap().trim(),
        "pxe"
    );
    b.power(PowerAction::Off).await.unwrap();
    bmc_support::poll(20, "the VM to exit", || (!qemu_alive(&pid)).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_bmc_that_requires_if_match_gets_the_current_etag() {
    let dir = tempdir();
    let tls = Tls::mint(dir.path(), "lab");
    let lab = LabRedfish::start(dir.path(), &tls, PASSWORD, &["--require-if-match"], &[]);
    let (b, obs) = guarded(&access(&lab.address(), PASSWORD), &ca_config(&tls));
    b.set_boot(BootOverride {
        device: BootDevice::Pxe,
        uefi: true,
        persistent: true,
    })
    .await
    .unwrap();
    assert_eq!(
        b.boot_override().await.unwrap(),
        BootOverride {
            device: BootDevice::Pxe,
            uefi: true,
            persistent: true
        }
    );
    let mut set = BTreeMap::new();
    set.insert("SriovEnable".to_owned(), serde_json::json!("Enabled"));
    b.set_bios_attributes(set).await.unwrap();
    assert_eq!(
        b.bios_attributes().await.unwrap().pending["SriovEnable"],
        "Enabled"
    );
    let log = lab.log();
    assert!(log.contains("\"PATCH /redfish/v1/Systems/"), "{log}");
    assert!(
        log.contains(" 428 "),
        "the blind PATCH was refused first:\n{log}"
    );
    assert!(obs.failures().is_empty(), "{:?}", obs.failures());
}
