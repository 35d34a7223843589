//! The in-memory BMC simulator: every operation on plain state, plus fault switches (slow,
//! unresponsive, fail-next N, session exhaustion, refused credentials) so tests can break a
//! BMC on purpose. It also counts calls and the most operations it ever saw in flight at once,
//! which is how the guard's per-BMC serialisation is tested.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{
    AddressSource, BiosAttributes, Bmc, BmcError, BmcFuture, BootDevice, BootOverride, Drive,
    DriverKind, FruInfo, LanConfig, Operation, PowerAction, PowerState, StorageController,
    TaskState, TaskStatus, VirtualMediaStatus, Volume, VolumeSpec,
};

/// Fault switches. Change them through [`SimBmc::faults`] at any time.
#[derive(Debug, Clone, Default)]
pub struct SimFaults {
    /// Every operation takes this long before doing anything.
    pub delay: Duration,
    /// Operations never answer (the caller's timeout is the only way out).
    pub unresponsive: bool,
    /// The next N operations fail with a transient error (like a 503).
    pub fail_next: u32,
    /// New sessions are refused (every operation fails with `SessionExhausted`) until
    /// [`SimBmc::release_sessions`].
    pub sessions_exhausted: bool,
    /// Credentials are refused (every operation fails with `Auth`).
    pub refuse_auth: bool,
}

#[derive(Debug)]
struct SimState {
    power: PowerState,
    boot: BootOverride,
    bios_current: BTreeMap<String, serde_json::Value>,
    bios_pending: BTreeMap<String, serde_json::Value>,
    volumes: Vec<Volume>,
    media: Option<String>,
    firmware_version: String,
    tasks: BTreeMap<String, TaskStatus>,
    next_id: u64,
}

/// An in-memory BMC.
#[derive(Debug)]
pub struct SimBmc {
    address: String,
    state: Mutex<SimState>,
    faults: Mutex<SimFaults>,
    calls: AtomicU64,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

/// Decrements the in-flight count when an operation ends or is cancelled.
struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SimBmc {
    /// A powered-off simulator at `address` with one RAID controller, two drives and a few
    /// BIOS attributes.
    pub fn new(address: &str) -> SimBmc {
        let bios_current = [
            ("BootMode", serde_json::json!("Uefi")),
            ("ProcVirtualization", serde_json::json!("Enabled")),
            ("SriovEnable", serde_json::json!("Disabled")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        SimBmc {
            address: address.to_owned(),
            state: Mutex::new(SimState {
                power: PowerState::Off,
                boot: BootOverride {
                    device: BootDevice::Default,
                    uefi: true,
                    persistent: false,
                },
                bios_current,
                bios_pending: BTreeMap::new(),
                volumes: Vec::new(),
                media: None,
                firmware_version: "1.0.0".into(),
                tasks: BTreeMap::new(),
                next_id: 1,
            }),
            faults: Mutex::new(SimFaults::default()),
            calls: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
        }
    }

    /// A shared simulator (what tests hand to the guard).
    pub fn shared(address: &str) -> Arc<SimBmc> {
        Arc::new(SimBmc::new(address))
    }

    /// Changes the fault switches.
    pub fn faults(&self, f: impl FnOnce(&mut SimFaults)) {
        f(&mut self.faults.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Frees the sessions: clears `sessions_exhausted`.
    pub fn release_sessions(&self) {
        self.faults(|f| f.sessions_exhausted = false);
    }

    /// Operations started so far (including failed ones).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most operations ever in flight at the same time.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// The installed firmware version (changes when an update task completes).
    pub fn firmware_version(&self) -> String {
        self.lock().firmware_version.clone()
    }

    /// Applies pending BIOS settings, as a reboot would.
    pub fn reboot(&self) {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.bios_pending);
        s.bios_current.extend(pending);
        s.power = PowerState::On;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the fault switches for one operation; `Err` when a fault fires.
    async fn enter(&self, op: Operation) -> Result<InFlight<'_>, BmcError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        if faults.unresponsive {
            std::future::pending::<()>().await;
        }
        if faults.refuse_auth {
            return Err(BmcError::Auth {
                address: self.address.clone(),
                message: "simulated: invalid username or password".into(),
            });
        }
        if faults.sessions_exhausted {
            return Err(BmcError::SessionExhausted {
                address: self.address.clone(),
                message: "simulated: insufficient resources for session".into(),
            });
        }
        if faults.fail_next > 0 {
            self.faults(|f| f.fail_next = f.fail_next.saturating_sub(1));
            return Err(BmcError::Transient {
                address: self.address.clone(),
                operation: op,
                message: "simulated: 503 Service Unavailable".into(),
            });
        }
        Ok(guard)
    }

    fn id(&self, s: &mut SimState, prefix: &str) -> String {
        s.next_id += 1;
        format!("/sim/{}/{prefix}/{}", self.address, s.next_id)
    }
}

impl Bmc for SimBmc {
    fn driver(&self) -> DriverKind {
        DriverKind::Sim
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn power_status(&self) -> BmcFuture<'_, PowerState> {
        Box::pin(async move {
            let _g = self.enter(Operation::PowerStatus).await?;
            Ok(self.lock().power)
        })
    }

    fn power(&self, action: PowerAction) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let _g = self.enter(Operation::Power(action)).await?;
            let mut s = self.lock();
            let was = s.power;
            match action {
                PowerAction::On | PowerAction::Cycle | PowerAction::Reset => {
                    s.power = PowerState::On;
                    // A (re)boot applies pending BIOS settings; "on" when on changes nothing.
                    if action != PowerAction::On || was == PowerState::Off {
                        let pending = std::mem::take(&mut s.bios_pending);
                        s.bios_current.extend(pending);
                    }
                }
                PowerAction::Off | PowerAction::SoftOff => s.power = PowerState::Off,
            }
            Ok(())
        })
    }

    fn set_boot(&self, boot: BootOverride) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let _g = self.enter(Operation::SetBoot).await?;
            self.lock().boot = boot;
            Ok(())
        })
    }

    fn boot_override(&self) -> BmcFuture<'_, BootOverride> {
        Box::pin(async move {
            let _g = self.enter(Operation::GetBoot).await?;
            Ok(self.lock().boot)
        })
    }

    fn fru(&self) -> BmcFuture<'_, FruInfo> {
        Box::pin(async move {
            let _g = self.enter(Operation::Fru).await?;
            Ok(FruInfo {
                serial: Some(format!("SIM-{}", self.address)),
                manufacturer: Some("Metalfleet".into()),
                product: Some("Simulated server".into()),
                ..FruInfo::default()
            })
        })
    }

    fn lan_config(&self) -> BmcFuture<'_, LanConfig> {
        Box::pin(async move {
            let _g = self.enter(Operation::LanConfig).await?;
            Ok(LanConfig {
                ip: self.address.parse().ok(),
                netmask: Some(std::net::Ipv4Addr::new(255, 255, 255, 0)),
                gateway: None,
                mac: Some("02:00:00:00:00:01".into()),
                source: AddressSource::Static,
            })
        })
    }

    fn firmware_update(&self, image_uri: &str) -> BmcFuture<'_, TaskStatus> {
        let image = image_uri.to_owned();
        Box::pin(async move {
            let _g = self.enter(Operation::FirmwareUpdate).await?;
            let mut s = self.lock();
            let id = self.id(&mut s, "tasks");
            // The simulator "flashes" at once: the first poll reports completion.
            let task = TaskStatus {
                id: id.clone(),
                state: TaskState::Running,
                percent: Some(0),
                messages: vec![format!("downloading {image}")],
            };
            s.tasks.insert(id, task.clone());
            Ok(task)
        })
    }

    fn task_status(&self, task: &str) -> BmcFuture<'_, TaskStatus> {
        let id = task.to_owned();
        Box::pin(async move {
            let _g = self.enter(Operation::TaskStatus).await?;
            let mut s = self.lock();
            let Some(t) = s.tasks.get_mut(&id) else {
                return Err(BmcError::Rejected {
                    address: self.address.clone(),
                    operation: Operation::TaskStatus,
                    message: format!("no task {id}"),
                });
            };
            let newly_done = t.state == TaskState::Running;
            t.state = TaskState::Completed;
            t.percent = Some(100);
            let out = t.clone();
            if newly_done {
                s.firmware_version = "1.0.1".into();
            }
            Ok(out)
        })
    }

    fn bios_attributes(&self) -> BmcFuture<'_, BiosAttributes> {
        Box::pin(async move {
            let _g = self.enter(Operation::BiosRead).await?;
            let s = self.lock();
            Ok(BiosAttributes {
                current: s.bios_current.clone(),
                pending: s.bios_pending.clone(),
            })
        })
    }

    fn set_bios_attributes(
        &self,
        attributes: BTreeMap<String, serde_json::Value>,
    ) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let _g = self.enter(Operation::BiosSet).await?;
            self.lock().bios_pending.extend(attributes);
            Ok(())
        })
    }

    fn storage(&self) -> BmcFuture<'_, Vec<StorageController>> {
        Box::pin(async move {
            let _g = self.enter(Operation::StorageList).await?;
            let s = self.lock();
            Ok(vec![StorageController {
                id: format!("/sim/{}/storage/1", self.address),
                name: Some("Simulated RAID".into()),
                raid_types: vec!["RAID0".into(), "RAID1".into()],
                drives: (1..=2)
                    .map(|i| Drive {
                        id: format!("/sim/{}/drives/{i}", self.address),
                        name: Some(format!("Drive {i}")),
                        capacity_bytes: Some(1 << 40),
                    })
                    .collect(),
                volumes: s.volumes.clone(),
            }])
        })
    }

    fn create_volume(&self, controller: &str, spec: VolumeSpec) -> BmcFuture<'_, String> {
        let _ = controller;
        Box::pin(async move {
            let _g = self.enter(Operation::VolumeCreate).await?;
            let mut s = self.lock();
            let id = self.id(&mut s, "volumes");
            s.volumes.push(Volume {
                id: id.clone(),
                name: Some(spec.name),
                raid_type: Some(spec.raid_type),
                capacity_bytes: spec.capacity_bytes,
            });
            Ok(id)
        })
    }

    fn delete_volume(&self, volume: &str) -> BmcFuture<'_, ()> {
        let id = volume.to_owned();
        Box::pin(async move {
            let _g = self.enter(Operation::VolumeDelete).await?;
            let mut s = self.lock();
            let before = s.volumes.len();
            s.volumes.retain(|v| v.id != id);
            if s.volumes.len() == before {
                return Err(BmcError::Rejected {
                    address: self.address.clone(),
                    operation: Operation::VolumeDelete,
                    message: format!("no volume {id}"),
                });
            }
            Ok(())
        })
    }

    fn virtual_media_insert(&self, image_uri: &str) -> BmcFuture<'_, ()> {
        let image = image_uri.to_owned();
        Box::pin(async move {
            let _g = self.enter(Operation::VirtualMediaInsert).await?;
            self.lock().media = Some(image);
            Ok(())
        })
    }

    fn virtual_media_eject(&self) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let _g = self.enter(Operation::VirtualMediaEject).await?;
            self.lock().media = None;
            Ok(())
        })
    }

    fn virtual_media_status(&self) -> BmcFuture<'_, VirtualMediaStatus> {
        Box::pin(async move {
            let _g = self.enter(Operation::VirtualMediaStatus).await?;
            let s = self.lock();
            Ok(VirtualMediaStatus {
                id: format!("/sim/{}/vmedia/cd", self.address),
                image: s.media.clone(),
                inserted: s.media.is_some(),
            })
        })
    }
}
