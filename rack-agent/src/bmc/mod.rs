//! Baseboard management controllers: the [`Bmc`] trait every driver implements, the typed
//! results and errors of its operations, and [`connect`], which picks a driver for a node's
//! [`BmcAccess`].
//!
//! Drivers: [`ipmi::IpmiBmc`] (`ipmitool -I lanplus`), [`redfish::RedfishBmc`] (reqwest with
//! our own serde models) and the in-memory [`sim::SimBmc`] with fault switches. Callers wrap
//! any of them in [`guard::GuardedBmc`], which serialises operations per BMC address, retries
//! transient faults with bounded exponential backoff and reports every failure to a
//! [`guard::BmcObserver`]. The agent's entry point is [`connect_guarded`] with one
//! [`BmcRegistry`] per agent (its [`guard::BmcStats`] render as Prometheus metrics).
//!
//! | operation | IPMI | Redfish | simulator |
//! |---|---|---|---|
//! | power status / on / off / cycle / reset / soft off | yes | yes (`ComputerSystem.Reset`) | yes |
//! | boot override pxe/disk/cdrom/bios, `uefi`, `persistent` | yes (`chassis bootdev`) | yes (`Boot` PATCH) | yes |
//! | FRU / system serial | `fru print 0` | system `SerialNumber` | yes |
//! | BMC LAN configuration | `lan print 1` | manager `EthernetInterfaces` | yes |
//! | firmware update + task polling | Unsupported | `UpdateService.SimpleUpdate` | yes |
//! | BIOS attributes, pending settings | Unsupported | `Bios`, `Bios/Settings` PATCH | yes |
//! | storage volumes (RAID) | Unsupported | `Storage`, `Volumes` POST/DELETE | yes |
//! | virtual media insert/eject | Unsupported | `VirtualMedia` actions | yes |
//!
//! Credentials never reach a log line or an argv: IPMI passwords travel in the `IPMI_PASSWORD`
//! environment variable of the `ipmitool` child, Redfish passwords in the `Authorization`
//! header, and no type here prints a password in `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use protocol::domain::BmcDriver;
use protocol::fleet::BmcAccess;

pub mod cli;
pub mod config;
pub mod guard;
pub mod ipmi;
pub mod redfish;
pub mod sim;

pub use config::{BmcConfig, BmcSettings};
pub use guard::{BmcFailure, BmcObserver, BmcRegistry, GuardedBmc, RetryPolicy};

/// A future returned by a [`Bmc`] operation.
pub type BmcFuture<'a, T> = BoxFuture<'a, Result<T, BmcError>>;

/// Chassis power as the BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off (standby power only).
    Off,
}

/// A power change to request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Power on (no-op when on).
    On,
    /// Hard power off.
    Off,
    /// Off, then on again (IPMI `chassis power cycle`, Redfish `PowerCycle` or `ForceRestart`).
    Cycle,
    /// Hard reset without removing power (IPMI `reset`, Redfish `ForceRestart`).
    Reset,
    /// ACPI soft off: asks the OS to shut down (IPMI `soft`, Redfish `GracefulShutdown`).
    SoftOff,
}

impl PowerAction {
    /// The power state this action ends in, when it has a single one worth waiting for.
    pub fn target(self) -> Option<PowerState> {
        match self {
            PowerAction::On => Some(PowerState::On),
            PowerAction::Off => Some(PowerState::Off),
            // A soft off depends on the OS; cycle/reset end "on" but pass through "off".
            PowerAction::Cycle | PowerAction::Reset | PowerAction::SoftOff => None,
        }
    }
}

/// Boot device of a boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    /// Network boot (PXE / UEFI network).
    Pxe,
    /// Local disk.
    Disk,
    /// Optical drive / virtual media CD.
    Cdrom,
    /// Firmware setup.
    BiosSetup,
    /// No override: the firmware's own order (what `disk` reads back as on ipmi_sim).
    Default,
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::BiosSetup => "bios",
            BootDevice::Default => "default",
        })
    }
}

/// A boot device override: what the server boots next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootOverride {
    /// Device.
    pub device: BootDevice,
    /// Boot in UEFI mode (false: legacy BIOS).
    pub uefi: bool,
    /// For every following boot (false: the next boot only).
    pub persistent: bool,
}

/// Identity data from the BMC's FRU inventory (IPMI) or system resource (Redfish).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FruInfo {
    /// System serial: IPMI product serial (else chassis, else board serial); Redfish
    /// `SerialNumber`.
    pub serial: Option<String>,
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Product / model name.
    pub product: Option<String>,
    /// Chassis serial, when reported separately.
    pub chassis_serial: Option<String>,
    /// Board serial, when reported separately.
    pub board_serial: Option<String>,
    /// Asset tag.
    pub asset_tag: Option<String>,
}

/// How the BMC got its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressSource {
    /// Configured statically.
    Static,
    /// From DHCP.
    Dhcp,
    /// Anything else the BMC reports (BIOS-assigned, unspecified, ...).
    Other,
}

/// The BMC's own network configuration (`ipmitool lan print`, Redfish manager NIC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanConfig {
    /// IPv4 address.
    pub ip: Option<std::net::Ipv4Addr>,
    /// Subnet mask.
    pub netmask: Option<std::net::Ipv4Addr>,
    /// Default gateway.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// MAC address of the BMC's NIC, lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// Address source.
    pub source: AddressSource,
}

/// State of a BMC task (firmware update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted or running.
    Running,
    /// Finished successfully.
    Completed,
    /// Failed, killed or cancelled.
    Failed,
}

/// A long-running BMC task as last polled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Task URI (Redfish task monitor or task resource) — pass it back to
    /// [`Bmc::task_status`].
    pub id: String,
    /// State.
    pub state: TaskState,
    /// Percent complete, if reported.
    pub percent: Option<u32>,
    /// The BMC's messages about the task, verbatim.
    pub messages: Vec<String>,
}

/// BIOS attributes: what is in effect and what is pending for the next reboot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BiosAttributes {
    /// Attributes in effect.
    pub current: BTreeMap<String, serde_json::Value>,
    /// Attributes that differ in the pending settings object (applied at the next reboot).
    pub pending: BTreeMap<String, serde_json::Value>,
}

/// A physical drive behind a storage controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Drive URI (pass it to [`VolumeSpec::drives`]).
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// Capacity in bytes.
    pub capacity_bytes: Option<u64>,
}

/// A logical volume (RAID set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Volume URI (pass it to [`Bmc::delete_volume`]).
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// RAID type (`RAID0`, `RAID1`, ...), if reported.
    pub raid_type: Option<String>,
    /// Capacity in bytes.
    pub capacity_bytes: Option<u64>,
}

/// One storage subsystem: a controller with its drives and volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageController {
    /// Storage resource URI (pass it to [`Bmc::create_volume`]).
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// RAID types the controller supports, if reported.
    pub raid_types: Vec<String>,
    /// Drives.
    pub drives: Vec<Drive>,
    /// Volumes.
    pub volumes: Vec<Volume>,
}

/// A volume to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Name.
    pub name: String,
    /// RAID type, Redfish spelling: `RAID0`, `RAID1`, `RAID5`, `RAID10`, ...
    pub raid_type: String,
    /// Capacity in bytes; `None` lets the controller use all of the drives.
    pub capacity_bytes: Option<u64>,
    /// Drive URIs to build it from; empty lets the controller choose.
    pub drives: Vec<String>,
}

/// Virtual media state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualMediaStatus {
    /// Device URI.
    pub id: String,
    /// Inserted image, if any.
    pub image: Option<String>,
    /// Whether media is inserted.
    pub inserted: bool,
}

/// An operation, for error messages, events and the guard's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// [`Bmc::power_status`].
    PowerStatus,
    /// [`Bmc::power`].
    Power(PowerAction),
    /// [`Bmc::set_boot`].
    SetBoot,
    /// [`Bmc::boot_override`].
    GetBoot,
    /// [`Bmc::fru`].
    Fru,
    /// [`Bmc::lan_config`].
    LanConfig,
    /// [`Bmc::firmware_update`].
    FirmwareUpdate,
    /// [`Bmc::task_status`].
    TaskStatus,
    /// [`Bmc::bios_attributes`].
    BiosRead,
    /// [`Bmc::set_bios_attributes`].
    BiosSet,
    /// [`Bmc::storage`].
    StorageList,
    /// [`Bmc::create_volume`].
    VolumeCreate,
    /// [`Bmc::delete_volume`].
    VolumeDelete,
    /// [`Bmc::virtual_media_insert`].
    VirtualMediaInsert,
    /// [`Bmc::virtual_media_eject`].
    VirtualMediaEject,
    /// [`Bmc::virtual_media_status`].
    VirtualMediaStatus,
    /// Opening or closing a Redfish session.
    Session,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::PowerStatus => f.write_str("power status"),
            Operation::Power(a) => write!(f, "power {}", power_action_name(*a)),
            Operation::SetBoot => f.write_str("set boot device"),
            Operation::GetBoot => f.write_str("read boot device"),
            Operation::Fru => f.write_str("read FRU"),
            Operation::LanConfig => f.write_str("read LAN configuration"),
            Operation::FirmwareUpdate => f.write_str("firmware update"),
            Operation::TaskStatus => f.write_str("task status"),
            Operation::BiosRead => f.write_str("read BIOS attributes"),
            Operation::BiosSet => f.write_str("set BIOS attributes"),
            Operation::StorageList => f.write_str("list storage"),
            Operation::VolumeCreate => f.write_str("create volume"),
            Operation::VolumeDelete => f.write_str("delete volume"),
            Operation::VirtualMediaInsert => f.write_str("insert virtual media"),
            Operation::VirtualMediaEject => f.write_str("eject virtual media"),
            Operation::VirtualMediaStatus => f.write_str("read virtual media"),
            Operation::Session => f.write_str("session"),
        }
    }
}

fn power_action_name(a: PowerAction) -> &'static str {
    match a {
        PowerAction::On => "on",
        PowerAction::Off => "off",
        PowerAction::Cycle => "cycle",
        PowerAction::Reset => "reset",
        PowerAction::SoftOff => "soft",
    }
}

/// Which driver produced an error or refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// `ipmitool -I lanplus`.
    Ipmi,
    /// Redfish over HTTPS.
    Redfish,
    /// The in-memory simulator.
    Sim,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Ipmi => "ipmi",
            DriverKind::Redfish => "redfish",
            DriverKind::Sim => "sim",
        })
    }
}

/// A failed BMC operation. Messages carry the BMC address and, where the BMC said something,
/// its own words verbatim (ipmitool's stderr, a Redfish `error.message` / extended info).
/// Never a password.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// The driver cannot do this operation.
    #[error("{driver} driver does not support {operation}")]
    Unsupported {
        /// Driver.
        driver: DriverKind,
        /// Operation.
        operation: Operation,
    },
    /// Credentials refused (wrong user or password, 401/403). Never retried.
    #[error("{address}: authentication failed: {message}")]
    Auth {
        /// BMC address.
        address: String,
        /// The BMC's message.
        message: String,
    },
    /// No answer within the time limit. Transient.
    #[error(
        "{address}: {operation}: no answer within {after:?}{}",
        detail(message)
    )]
    Timeout {
        /// BMC address.
        address: String,
        /// Operation.
        operation: Operation,
        /// The limit.
        after: Duration,
        /// What the tool said, if anything.
        message: String,
    },
    /// The BMC has no free session slot. Transient: sessions expire.
    #[error("{address}: no free session: {message}")]
    SessionExhausted {
        /// BMC address.
        address: String,
        /// The BMC's message.
        message: String,
    },
    /// A fault worth retrying: a 5xx, a refused or reset connection, a BMC that is busy.
    #[error("{address}: {operation}: transient failure: {message}")]
    Transient {
        /// BMC address.
        address: String,
        /// Operation.
        operation: Operation,
        /// The BMC's message.
        message: String,
    },
    /// The BMC refused the request as invalid (a 4xx other than auth, an IPMI completion
    /// code). Never retried.
    #[error("{address}: {operation}: refused: {message}")]
    Rejected {
        /// BMC address.
        address: String,
        /// Operation.
        operation: Operation,
        /// The BMC's message.
        message: String,
    },
    /// The BMC answered something we could not understand.
    #[error("{address}: {operation}: unexpected answer: {message}")]
    Protocol {
        /// BMC address.
        address: String,
        /// Operation.
        operation: Operation,
        /// What was wrong.
        message: String,
    },
    /// A power change did not land within the polling bound.
    #[error("{address}: power did not reach {want:?} within {after:?} (last seen {last:?})")]
    PowerNotReached {
        /// BMC address.
        address: String,
        /// Wanted state.
        want: PowerState,
        /// Last state read.
        last: Option<PowerState>,
        /// The bound.
        after: Duration,
    },
    /// TLS setup or verification failed (bad CA bundle, wrong pinned fingerprint).
    #[error("{address}: TLS: {message}")]
    Tls {
        /// BMC address.
        address: String,
        /// What failed.
        message: String,
    },
    /// `ipmitool` could not be started.
    #[error("cannot run {program} (install the ipmitool package)")]
    Tool {
        /// Program.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The access data or configuration cannot work (no username, bad address).
    #[error("{address}: {message}")]
    Config {
        /// BMC address.
        address: String,
        /// What is wrong.
        message: String,
    },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl BmcError {
    /// Whether retrying the same operation later may succeed: timeouts, session exhaustion,
    /// 5xx / connection failures. Auth failures, refusals, unsupported operations and
    /// configuration problems are final.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BmcError::Timeout { .. }
                | BmcError::SessionExhausted { .. }
                | BmcError::Transient { .. }
                | BmcError::PowerNotReached { .. }
        )
    }

    /// `Unsupported` for `driver` and `operation`.
    pub fn unsupported(driver: DriverKind, operation: Operation) -> BmcError {
        BmcError::Unsupported { driver, operation }
    }
}

/// One BMC. Implementations are cheap to share (`Arc<dyn Bmc>`); every call is one logical
/// operation against the BMC (possibly several requests, e.g. a power change and its polling).
///
/// **Cancel-safety:** no operation is cancel-safe in effect. Dropping a future stops waiting
/// (the IPMI driver kills its `ipmitool` child, the Redfish driver drops its connection) and
/// leaves no local state behind, so the `Bmc` stays usable; but the request may already have
/// reached the BMC and may still take effect. After a cancelled mutation, read the state back
/// before deciding anything. Read-only operations may be cancelled freely.
///
/// Operations a driver cannot do return [`BmcError::Unsupported`] (the default bodies).
pub trait Bmc: Send + Sync + fmt::Debug {
    /// Which driver this is.
    fn driver(&self) -> DriverKind;

    /// The BMC address (for logs and per-BMC serialisation).
    fn address(&self) -> &str;

    /// Current chassis power.
    fn power_status(&self) -> BmcFuture<'_, PowerState>;

    /// Requests a power change. For `On`/`Off`, returns once the BMC reports the target state
    /// (drivers poll with a bound, since some BMCs apply changes late).
    fn power(&self, action: PowerAction) -> BmcFuture<'_, ()>;

    /// Sets the boot device override.
    fn set_boot(&self, boot: BootOverride) -> BmcFuture<'_, ()>;

    /// Reads the boot device override back (as the BMC reports it, quirks included).
    fn boot_override(&self) -> BmcFuture<'_, BootOverride>;

    /// Reads the FRU / system identity.
    fn fru(&self) -> BmcFuture<'_, FruInfo>;

    /// Reads the BMC's own LAN configuration.
    fn lan_config(&self) -> BmcFuture<'_, LanConfig>;

    /// Starts a firmware update from `image_uri` (served by the agent's HTTP assets); returns
    /// the task to poll with [`Bmc::task_status`].
    fn firmware_update(&self, image_uri: &str) -> BmcFuture<'_, TaskStatus> {
        let _ = image_uri;
        unsupported(self.driver(), Operation::FirmwareUpdate)
    }

    /// Polls a task started by [`Bmc::firmware_update`].
    fn task_status(&self, task: &str) -> BmcFuture<'_, TaskStatus> {
        let _ = task;
        unsupported(self.driver(), Operation::TaskStatus)
    }

    /// Reads BIOS attributes, current and pending.
    fn bios_attributes(&self) -> BmcFuture<'_, BiosAttributes> {
        unsupported(self.driver(), Operation::BiosRead)
    }

    /// Stores BIOS attributes as pending settings, applied at the next reboot.
    fn set_bios_attributes(
        &self,
        attributes: BTreeMap<String, serde_json::Value>,
    ) -> BmcFuture<'_, ()> {
        let _ = attributes;
        unsupported(self.driver(), Operation::BiosSet)
    }

    /// Lists storage controllers with their drives and volumes.
    fn storage(&self) -> BmcFuture<'_, Vec<StorageController>> {
        unsupported(self.driver(), Operation::StorageList)
    }

    /// Creates a volume on the storage resource `controller`; returns its URI.
    fn create_volume(&self, controller: &str, spec: VolumeSpec) -> BmcFuture<'_, String> {
        let _ = (controller, spec);
        unsupported(self.driver(), Operation::VolumeCreate)
    }

    /// Deletes the volume `volume` (its URI).
    fn delete_volume(&self, volume: &str) -> BmcFuture<'_, ()> {
        let _ = volume;
        unsupported(self.driver(), Operation::VolumeDelete)
    }

    /// Inserts `image_uri` into the virtual CD/DVD drive.
    fn virtual_media_insert(&self, image_uri: &str) -> BmcFuture<'_, ()> {
        let _ = image_uri;
        unsupported(self.driver(), Operation::VirtualMediaInsert)
    }

    /// Ejects the virtual CD/DVD drive's media.
    fn virtual_media_eject(&self) -> BmcFuture<'_, ()> {
        unsupported(self.driver(), Operation::VirtualMediaEject)
    }

    /// Reads the virtual CD/DVD drive's state.
    fn virtual_media_status(&self) -> BmcFuture<'_, VirtualMediaStatus> {
        unsupported(self.driver(), Operation::VirtualMediaStatus)
    }
}

fn unsupported<'a, T: Send + 'a>(driver: DriverKind, operation: Operation) -> BmcFuture<'a, T> {
    Box::pin(std::future::ready(Err(BmcError::unsupported(
        driver, operation,
    ))))
}

/// A driver for `access`, configured by `config` (per-address overrides applied). With
/// `config.simulate`, every BMC is a fresh [`sim::SimBmc`] (demos, lab runs without BMCs).
///
/// The result is the bare driver; wrap it in [`GuardedBmc`] for serialisation and retries.
pub fn connect(access: &BmcAccess, config: &BmcConfig) -> Result<Arc<dyn Bmc>, BmcError> {
    if access.address.trim().is_empty() {
        return Err(BmcError::Config {
            address: access.address.clone(),
            message: "empty BMC address".into(),
        });
    }
    if config.simulate {
        return Ok(Arc::new(sim::SimBmc::new(&access.address)));
    }
    let settings = config.for_address(&access.address);
    match access.driver {
        BmcDriver::Ipmi => Ok(Arc::new(ipmi::IpmiBmc::new(access, &settings)?)),
        BmcDriver::Redfish => Ok(Arc::new(redfish::RedfishBmc::new(access, &settings)?)),
    }
}

/// [`connect`] wrapped in a [`GuardedBmc`]: the agent's way to get a BMC. `locks` is the
/// agent-wide registry (one per agent), `observer` hears about every failure (the agent's
/// [`guard::NodeEventObserver`] for the node).
pub fn connect_guarded(
    access: &BmcAccess,
    config: &BmcConfig,
    locks: &BmcRegistry,
    observer: Arc<dyn BmcObserver>,
) -> Result<GuardedBmc, BmcError> {
    let inner = connect(access, config)?;
    let settings = config.for_address(&access.address);
    Ok(GuardedBmc::new(
        inner,
        locks,
        config.retry_policy(&access.address),
        settings.power_wait,
        observer,
    ))
}

/// Polls a task started by [`Bmc::firmware_update`] until it leaves `Running`, for at most
/// `bound`; returns its last status (`Completed` or `Failed`, with the BMC's messages).
///
/// Cancel-safe: dropping it only stops polling.
pub async fn wait_task(
    bmc: &dyn Bmc,
    task: &TaskStatus,
    bound: Duration,
) -> Result<TaskStatus, BmcError> {
    if task.state != TaskState::Running {
        return Ok(task.clone());
    }
    let start = tokio::time::Instant::now();
    let mut interval = Duration::from_millis(100);
    loop {
        let t = bmc.task_status(&task.id).await?;
        if t.state != TaskState::Running {
            return Ok(t);
        }
        let elapsed = start.elapsed();
        if elapsed >= bound {
            return Err(BmcError::Timeout {
                address: bmc.address().to_owned(),
                operation: Operation::TaskStatus,
                after: bound,
                message: format!("task {} still running ({}%)", t.id, t.percent.unwrap_or(0)),
            });
        }
        tokio::time::sleep(interval.min(bound - elapsed)).await;
        interval = (interval * 2).min(Duration::from_secs(5));
    }
}

/// Polls `bmc` until it reports `want`, for at most `bound` (BMCs such as sushy-tools and many
/// real ones accept a power change at once and apply it seconds later). Transient read errors
/// while polling are tolerated; others end the wait.
pub(crate) async fn wait_for_power<B: Bmc + ?Sized>(
    bmc: &B,
    want: PowerState,
    bound: Duration,
) -> Result<(), BmcError> {
    let start = tokio::time::Instant::now();
    let mut interval = Duration::from_millis(200);
    let mut last = None;
    loop {
        match bmc.power_status().await {
            Ok(s) if s == want => return Ok(()),
            Ok(s) => last = Some(s),
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e),
        }
        let elapsed = start.elapsed();
        if elapsed >= bound {
            return Err(BmcError::PowerNotReached {
                address: bmc.address().to_owned(),
                want,
                last,
                after: bound,
            });
        }
        tokio::time::sleep(interval.min(bound - elapsed)).await;
        interval = (interval * 2).min(Duration::from_secs(2));
    }
}
