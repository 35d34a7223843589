//! Workflow steps, run plans and run status: the data the coordinator (planning, rollouts) and
//! the rack agent (the durable step executor) share (issue 6).
//!
//! A workflow *template* (YAML, parsed by `coordinator::workflow`) is expanded for one node
//! into a [`RunPlan`]: includes inlined, parameters substituted, every field typed and
//! validated. The plan is pushed whole to the agent of the node's rack, which executes it
//! step by step and reports a [`RunStatus`]. Nothing in a plan refers back to the template,
//! so an agent can run it with every coordinator gone.
//!
//! Encodings: every type here is postcard-safe (no internally tagged enums, no
//! `skip_serializing_if`, no untagged enums, no `serde_json::Value` — free-form JSON travels
//! as [`JsonValue`]). Enums are externally tagged, so JSON reads `{"bmc.power": {"action":
//! "on"}}`. [`HumanDuration`], [`FileMode`] and [`Condition`] have a text form in
//! human-readable formats (`"30s"`, `"0644"`, `"facts.cpus >= 8"`).
//!
//! A few string fields are rendered late, by the executor on the agent, because they need the
//! node (its serial, addresses, facts): they are marked "Rendered by the executor" and are
//! left untouched by parameter substitution. They are minijinja templates that see `node`,
//! `serial`, `macs`, `static_ips`, `hostname`, `facts` and `params`.

pub mod condition;
pub mod status;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use condition::{Condition, ConditionError};
pub use status::{Progress, RunState, RunStatus, StepState, StepStatus};

use crate::domain::{boot_target_serde, BmcDriver, BootTarget};
use crate::json::JsonValue;

/// The `apiVersion` every workflow template and parameter file declares.
pub const API_VERSION: &str = "metalfleet/v1";

/// Schema version of [`RunPlan`] (carried in [`crate::Versioned`] when persisted).
pub const RUN_PLAN_VERSION: u16 = 1;

/// Why a duration or file mode could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// Not a duration like `30s`.
    #[error("invalid duration {0:?}: expected a duration like 30s, 5m, 72h")]
    Duration(String),
    /// Not an octal file mode.
    #[error("invalid file mode {0:?}: expected octal permission bits like \"0644\"")]
    FileMode(String),
}

/// A span of time with millisecond resolution, written `500ms`, `30s`, `5m`, `72h`, `2d` or a
/// sum of those (`1h30m`).
///
/// JSON/YAML: the canonical text (`"1h30m"`); postcard: milliseconds as a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(u64);

impl HumanDuration {
    /// Zero.
    pub const ZERO: HumanDuration = HumanDuration(0);

    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(ms)
    }

    /// From seconds (saturating).
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(s.saturating_mul(1000))
    }

    /// Milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// As a standard duration.
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

impl FromStr for HumanDuration {
    type Err = WorkflowError;

    fn from_str(s: &str) -> Result<Self, WorkflowError> {
        let bad = || WorkflowError::Duration(s.chars().take(80).collect());
        let text = s.trim();
        if text.is_empty() {
            return Err(bad());
        }
        let mut rest = text;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(bad)?;
            total = n
                .checked_mul(scale)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(bad)?;
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        for (unit, scale) in UNITS {
            if rest >= scale {
                write!(f, "{}{unit}", rest / scale)?;
                rest %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(D::Error::custom)
        } else {
            u64::deserialize(d).map(HumanDuration)
        }
    }
}

/// Unix permission bits of a file written onto a node.
///
/// JSON/YAML: an octal string (`"0644"`) or an integer (read as the decimal value of the
/// bits, e.g. `420`); postcard: the bits as a `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o644)
    }
}

impl FromStr for FileMode {
    type Err = WorkflowError;

    fn from_str(s: &str) -> Result<Self, WorkflowError> {
        let bad = || WorkflowError::FileMode(s.chars().take(80).collect());
        let digits = s.trim().trim_start_matches("0o");
        if digits.is_empty() || digits.len() > 4 {
            return Err(bad());
        }
        u32::from_str_radix(digits, 8)
            .map(FileMode)
            .map_err(|_| bad())
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return u32::deserialize(d).map(FileMode);
        }
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("octal permission bits like \"0644\"")
            }
            fn visit_u64<E: serde::de::Error>(self, bits: u64) -> Result<FileMode, E> {
                u32::try_from(bits)
                    .ok()
                    .filter(|b| *b <= 0o7777)
                    .map(FileMode)
                    .ok_or_else(|| E::custom(WorkflowError::FileMode(bits.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, bits: i64) -> Result<FileMode, E> {
                let bits = u64::try_from(bits)
                    .map_err(|_| E::custom(WorkflowError::FileMode(bits.to_string())))?;
                self.visit_u64(bits)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<FileMode, E> {
                text.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Text)
    }
}

/// OpenAPI schema of a type that travels as text in JSON.
macro_rules! text_schema {
    ($ty:ty, $name:literal, $description:literal, $example:literal) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($description))
                    .examples([$example])
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
        }
    };
}

text_schema!(
    HumanDuration,
    "HumanDuration",
    "A duration: a sum of <number><unit>, units ms, s, m, h, d",
    "1h30m"
);
text_schema!(FileMode, "FileMode", "Octal Unix permission bits", "0644");
text_schema!(
    Condition,
    "Condition",
    "A condition on node facts (see the workflow documentation)",
    "exists facts.bmc and facts.cpu.threads >= 8"
);

/// What a step does, with its typed parameters. The serde name of each variant is the `kind`
/// written in templates (`bmc.power`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StepKind {
    /// Drive the node's power through its BMC.
    #[serde(rename = "bmc.power")]
    BmcPower(BmcPower),
    /// Set the device the node boots from next, through its BMC.
    #[serde(rename = "bmc.boot_device")]
    BmcBootDevice(BmcBootDevice),
    /// Change what the node network-boots into next (a desired-state change the agent's boot
    /// services act on).
    #[serde(rename = "boot.set")]
    BootSet(BootSet),
    /// Wait for the node to check in or for an event or fact.
    #[serde(rename = "node.wait")]
    NodeWait(NodeWait),
    /// Run a command in the microkernel through the node-agent.
    #[serde(rename = "node.run")]
    NodeRun(NodeRun),
    /// Render a file onto the node through the node-agent.
    #[serde(rename = "node.template")]
    NodeTemplate(NodeTemplate),
    /// Set the BMC's LAN settings and credentials from the microkernel with ipmitool, then
    /// re-read its LAN facts.
    #[serde(rename = "bmc.configure")]
    BmcConfigure(BmcConfigure),
    /// Reach the BMC from the agent with its new settings.
    #[serde(rename = "bmc.validate")]
    BmcValidate(BmcValidate),
    /// Pin the node's address: a static DHCP reservation for its boot MAC.
    #[serde(rename = "dhcp.reserve")]
    DhcpReserve(DhcpReserve),
    /// Update firmware through Redfish `UpdateService.SimpleUpdate`.
    #[serde(rename = "redfish.firmware_update")]
    RedfishFirmwareUpdate(RedfishFirmwareUpdate),
    /// Set BIOS attributes through Redfish.
    #[serde(rename = "redfish.bios")]
    RedfishBios(RedfishBios),
    /// Create RAID volumes through Redfish.
    #[serde(rename = "redfish.raid")]
    RedfishRaid(RedfishRaid),
    /// Check that the node's LLDP neighbours are the expected switch ports.
    #[serde(rename = "lldp.check")]
    LldpCheck(LldpCheck),
    /// Call an HTTP endpoint (a webhook) from the agent; the JSON response may be merged into
    /// the node's facts.
    #[serde(rename = "http.call")]
    HttpCall(HttpCall),
    /// Run an Ansible playbook from the rack agent against the node.
    #[serde(rename = "ansible.run")]
    AnsibleRun(AnsibleRun),
    /// Network-boot an installer with a rendered autoinstall file and wait until it reports
    /// done.
    #[serde(rename = "os.install")]
    OsInstall(OsInstall),
}

impl StepKind {
    /// Every kind name, as written in templates.
    pub const NAMES: [&'static str; 16] = [
        "bmc.power",
        "bmc.boot_device",
        "boot.set",
        "node.wait",
        "node.run",
        "node.template",
        "bmc.configure",
        "bmc.validate",
        "dhcp.reserve",
        "redfish.firmware_update",
        "redfish.bios",
        "redfish.raid",
        "lldp.check",
        "http.call",
        "ansible.run",
        "os.install",
    ];

    /// The kind's name, as written in templates.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::BmcPower(_) => "bmc.power",
            StepKind::BmcBootDevice(_) => "bmc.boot_device",
            StepKind::BootSet(_) => "boot.set",
            StepKind::NodeWait(_) => "node.wait",
            StepKind::NodeRun(_) => "node.run",
            StepKind::NodeTemplate(_) => "node.template",
            StepKind::BmcConfigure(_) => "bmc.configure",
            StepKind::BmcValidate(_) => "bmc.validate",
            StepKind::DhcpReserve(_) => "dhcp.reserve",
            StepKind::RedfishFirmwareUpdate(_) => "redfish.firmware_update",
            StepKind::RedfishBios(_) => "redfish.bios",
            StepKind::RedfishRaid(_) => "redfish.raid",
            StepKind::LldpCheck(_) => "lldp.check",
            StepKind::HttpCall(_) => "http.call",
            StepKind::AnsibleRun(_) => "ansible.run",
            StepKind::OsInstall(_) => "os.install",
        }
    }

    /// Whether running the step twice has the same effect as running it once, unless the
    /// template says otherwise. An agent restarted in the middle of a step re-runs it only if
    /// it is idempotent; otherwise the step fails with a clear "interrupted" error.
    ///
    /// Setting state (power, boot device, boot target, reservation, BIOS attributes, BMC LAN
    /// settings, a file) and observing (waits, checks) are idempotent. Commands, webhooks,
    /// playbooks, firmware flashing, RAID creation and installs are not: they may have side
    /// effects the agent cannot see, so the template must declare them idempotent explicitly.
    pub fn idempotent_by_default(&self) -> bool {
        match self {
            StepKind::BmcPower(_)
            | StepKind::BmcBootDevice(_)
            | StepKind::BootSet(_)
            | StepKind::NodeWait(_)
            | StepKind::NodeTemplate(_)
            | StepKind::BmcConfigure(_)
            | StepKind::BmcValidate(_)
            | StepKind::DhcpReserve(_)
            | StepKind::RedfishBios(_)
            | StepKind::LldpCheck(_) => true,
            StepKind::NodeRun(_)
            | StepKind::RedfishFirmwareUpdate(_)
            | StepKind::RedfishRaid(_)
            | StepKind::HttpCall(_)
            | StepKind::AnsibleRun(_)
            | StepKind::OsInstall(_) => false,
        }
    }

    /// How long one attempt may take when the template gives no `timeout`.
    pub fn default_timeout(&self) -> HumanDuration {
        let mins = match self {
            StepKind::BmcPower(_)
            | StepKind::BmcBootDevice(_)
            | StepKind::BootSet(_)
            | StepKind::DhcpReserve(_)
            | StepKind::BmcValidate(_)
            | StepKind::HttpCall(_) => 2,
            StepKind::NodeTemplate(_) | StepKind::BmcConfigure(_) | StepKind::LldpCheck(_) => 5,
            StepKind::NodeWait(_) | StepKind::NodeRun(_) | StepKind::RedfishBios(_) => 15,
            StepKind::RedfishRaid(_) | StepKind::AnsibleRun(_) => 30,
            StepKind::RedfishFirmwareUpdate(_) | StepKind::OsInstall(_) => 60,
        };
        HumanDuration::from_secs(mins * 60)
    }
}

/// A power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Power on (no-op when on).
    On,
    /// Hard power off (no-op when off).
    Off,
    /// Off then on; powers on a node that is off.
    Cycle,
    /// Hard reset (warm reboot) without removing power.
    Reset,
    /// Ask the OS to shut down (ACPI soft-off).
    Soft,
}

/// Parameters of `bmc.power`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcPower {
    /// What to do.
    pub action: PowerAction,
}

/// A boot device a BMC can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    /// Network boot (PXE / UEFI HTTP boot).
    Pxe,
    /// The first disk.
    Disk,
    /// Virtual or physical optical media.
    Cdrom,
    /// The firmware setup screen.
    Bios,
}

/// Parameters of `bmc.boot_device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcBootDevice {
    /// The device to boot from.
    pub device: BootDevice,
    /// Keep the choice for every following boot (otherwise: the next boot only).
    #[serde(default)]
    pub persistent: bool,
}

/// Parameters of `boot.set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootSet {
    /// What the node network-boots next; in YAML/JSON `{kind: discovery}`, `{kind: local}`,
    /// `{kind: install, kernel: ..., initrd: ..., cmdline: ...}`, as in the API.
    #[serde(with = "boot_target_serde")]
    pub target: BootTarget,
}

/// What `node.wait` waits for. Only what happens after the step started counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// The node-agent checks in (the node booted the microkernel).
    Checkin,
    /// The node is identified: its serial matches an expected-inventory record.
    Identified,
    /// A named node event (e.g. `os.installed`) is reported.
    Event(String),
    /// A condition on the node's facts becomes true (re-evaluated whenever facts change).
    Condition(Condition),
}

/// Parameters of `node.wait`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeWait {
    /// What to wait for (`checkin`, `identified`, `{event: NAME}`, `{condition: EXPR}`).
    #[serde(rename = "for")]
    pub wait_for: WaitFor,
}

/// How a command's standard output becomes facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// The whole output as one string.
    Text,
    /// The output parsed as a JSON document.
    Json,
    /// Lines `key: value` or `key=value` (e.g. `ipmitool lan print`), as an object of
    /// strings; keys and values trimmed, lines without a separator ignored.
    KeyValue,
}

/// Where a command's output goes in the node's facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FactCapture {
    /// Dotted path under `facts` where the parsed output is stored (replacing what was
    /// there), e.g. `bmc.lan`.
    pub key: String,
    /// How to parse standard output.
    #[serde(default = "default_format")]
    pub format: OutputFormat,
}

fn default_format() -> OutputFormat {
    OutputFormat::Text
}

/// Parameters of `node.run`. The step's `timeout` bounds the command: the node-agent kills it
/// when the attempt's time is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRun {
    /// Program to execute (no shell; use `sh` with `-c` for a pipeline).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Exit codes that count as success.
    #[serde(default = "default_exit_codes")]
    pub expected_exit: Vec<i32>,
    /// Keep the command's output as the step's log (streamed to the coordinator).
    #[serde(default = "yes")]
    pub capture_logs: bool,
    /// Store the output in the node's facts.
    #[serde(default)]
    pub facts: Option<FactCapture>,
}

fn default_exit_codes() -> Vec<i32> {
    vec![0]
}

fn yes() -> bool {
    true
}

/// Parameters of `node.template`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTemplate {
    /// Absolute path of the file on the node.
    pub path: String,
    /// Permission bits.
    #[serde(default)]
    pub mode: FileMode,
    /// File content. Rendered by the executor (minijinja; see the module docs).
    pub template: String,
}

/// Where BMC credentials come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    /// The node's expected-inventory record (sealed at rest, opened by the coordinator only
    /// for the agent that runs the step).
    Inventory,
    /// Given in the template. The password is then stored in the plan in clear: for labs.
    Given {
        /// Login name.
        username: String,
        /// Password.
        password: String,
    },
}

fn inventory_credentials() -> CredentialSource {
    CredentialSource::Inventory
}

/// Parameters of `bmc.configure`.
///
/// Addresses left out come from the node's expected-inventory static address on interface
/// `bmc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcConfigure {
    /// The BMC's new IPv4 address.
    #[serde(default)]
    pub address: Option<String>,
    /// Its netmask (dotted quad).
    #[serde(default)]
    pub netmask: Option<String>,
    /// Its default gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Login to create or update.
    #[serde(default = "inventory_credentials")]
    pub credentials: CredentialSource,
    /// IPMI LAN channel.
    #[serde(default = "default_channel")]
    pub channel: u8,
    /// IPMI user slot to set.
    #[serde(default = "default_user_id")]
    pub user_id: u8,
    /// The ipmitool program in the microkernel (a vendor tool with the same interface may
    /// stand in).
    #[serde(default = "default_ipmitool")]
    pub ipmitool: String,
}

fn default_channel() -> u8 {
    1
}

fn default_user_id() -> u8 {
    2
}

fn default_ipmitool() -> String {
    "ipmitool".to_owned()
}

/// Parameters of `bmc.validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcValidate {
    /// Protocol to try (default: the node's inventory BMC driver).
    #[serde(default)]
    pub driver: Option<BmcDriver>,
    /// Address to reach (default: the address `bmc.configure` set, else the inventory's).
    #[serde(default)]
    pub address: Option<String>,
}

/// Parameters of `dhcp.reserve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DhcpReserve {
    /// Inventory interface label whose static address to pin (default: the one the node
    /// boots from).
    #[serde(default)]
    pub interface: Option<String>,
    /// Address to pin (default: the inventory's static address for the interface, else the
    /// node's current lease).
    #[serde(default)]
    pub address: Option<String>,
}

/// Parameters of `redfish.firmware_update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedfishFirmwareUpdate {
    /// URI the BMC downloads the image from.
    pub image_uri: String,
    /// Redfish `TransferProtocol` (`HTTP`, `HTTPS`, ...); default: let the BMC infer it.
    #[serde(default)]
    pub transfer_protocol: Option<String>,
    /// Firmware inventory URIs to update (empty: what the image applies to).
    #[serde(default)]
    pub targets: Vec<String>,
}

/// Parameters of `redfish.bios`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedfishBios {
    /// Attribute name → value (string, number or boolean), PATCHed to `Bios/Settings`.
    pub attributes: BTreeMap<String, JsonValue>,
    /// Reset the system so pending settings apply (and wait for it).
    #[serde(default = "yes")]
    pub apply: bool,
}

/// A RAID level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RaidLevel {
    /// Striping.
    Raid0,
    /// Mirroring.
    Raid1,
    /// Striping with parity.
    Raid5,
    /// Striping with double parity.
    Raid6,
    /// Striped mirrors.
    Raid10,
}

/// One volume for `redfish.raid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RaidVolume {
    /// Volume name.
    pub name: String,
    /// Level.
    pub level: RaidLevel,
    /// Drive ids (Redfish `Drives` members) to use; empty: all unassigned drives.
    #[serde(default)]
    pub drives: Vec<String>,
    /// Capacity in GiB (default: all of the drives).
    #[serde(default)]
    pub size_gib: Option<u64>,
}

/// Parameters of `redfish.raid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedfishRaid {
    /// Storage controller id (default: the first one).
    #[serde(default)]
    pub controller: Option<String>,
    /// Delete existing volumes first.
    #[serde(default)]
    pub clear: bool,
    /// Volumes to create, in order.
    pub volumes: Vec<RaidVolume>,
}

/// An expected LLDP neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedNeighbour {
    /// Interface on the node (inventory label or kernel name).
    pub interface: String,
    /// Switch system name.
    pub switch: String,
    /// Switch port id.
    pub port: String,
}

/// Parameters of `lldp.check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LldpCheck {
    /// Neighbours to expect (empty: the cabling in the node's inventory record).
    #[serde(default)]
    pub expected: Vec<ExpectedNeighbour>,
    /// Shell command line (run with `sh -c` in the microkernel) that prints the neighbours as
    /// `lldpctl -f json` does.
    #[serde(default = "default_lldp_command")]
    pub command: String,
}

fn default_lldp_command() -> String {
    "lldpctl -f json".to_owned()
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

/// Parameters of `http.call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// Method.
    #[serde(default = "default_method")]
    pub method: HttpMethod,
    /// URL.
    pub url: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body. Rendered by the executor (minijinja; see the module docs).
    #[serde(default)]
    pub body: Option<String>,
    /// Status codes that count as success (empty: any 2xx).
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Dotted path under `facts` where the JSON response is merged (objects merge key by
    /// key; anything else replaces). No merge when absent.
    #[serde(default)]
    pub facts_key: Option<String>,
}

fn default_method() -> HttpMethod {
    HttpMethod::Post
}

/// Parameters of `ansible.run`. The agent writes an inventory with the node as the only host
/// (its address, `ansible_user`, the key below) and runs the playbook against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnsibleRun {
    /// Playbook path on the rack agent's host (relative: to its playbook directory).
    pub playbook: String,
    /// Extra variables (`--extra-vars`, as JSON).
    #[serde(default)]
    pub extra_vars: BTreeMap<String, JsonValue>,
    /// Remote user.
    #[serde(default = "default_ansible_user")]
    pub user: String,
    /// Private key file on the rack agent's host (default: the agent's configured key).
    #[serde(default)]
    pub private_key: Option<String>,
    /// Inventory group the node is put in.
    #[serde(default = "default_group")]
    pub group: String,
    /// The ansible-playbook program.
    #[serde(default = "default_ansible_playbook")]
    pub ansible_playbook: String,
}

fn default_ansible_user() -> String {
    "root".to_owned()
}

fn default_group() -> String {
    "metalfleet".to_owned()
}

fn default_ansible_playbook() -> String {
    "ansible-playbook".to_owned()
}

/// Where an installer's autoinstall file comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Autoinstall {
    /// A template in the agent's autoinstall template directory.
    Name(String),
    /// Template text carried in the plan. Rendered by the executor (minijinja; see the module
    /// docs).
    Inline(String),
}

/// Parameters of `os.install`: set the boot target to the installer, power-cycle, wait for
/// the `done_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OsInstall {
    /// Installer kernel (asset name or URL).
    pub kernel: String,
    /// Installer initrd (asset name or URL).
    pub initrd: String,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// The autoinstall file the installer fetches.
    #[serde(default)]
    pub autoinstall: Option<Autoinstall>,
    /// Node event the installer reports when it is done.
    #[serde(default = "default_done_event")]
    pub done_event: String,
}

fn default_done_event() -> String {
    "os.installed".to_owned()
}

/// What happens when a step has failed its last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails.
    #[default]
    Fail,
    /// The step is recorded as failed and the run goes on with the next step.
    Continue,
    /// The run jumps to the named step of the plan.
    Goto(String),
}

/// Delay before retry `n` (1-based): `initial × factor^(n-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: HumanDuration,
    /// Multiplier between retries (1: constant delay).
    pub factor: u32,
    /// Upper bound of a delay.
    pub max: HumanDuration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: HumanDuration::from_secs(5),
            factor: 2,
            max: HumanDuration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before retry `retry` (1 = the first retry; 0 reads as 1).
    pub fn delay(&self, retry: u32) -> HumanDuration {
        let mut ms = self.initial.as_millis();
        for _ in 1..retry.max(1) {
            ms = ms.saturating_mul(u64::from(self.factor));
            if ms >= self.max.as_millis() {
                break;
            }
        }
        HumanDuration::from_millis(ms.min(self.max.as_millis()))
    }
}

/// One step of a plan: fully typed, parameters substituted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    /// Unique within the plan; steps from included templates carry the include's prefix
    /// (`discovery/pin-ip`).
    pub name: String,
    /// What it does.
    pub kind: StepKind,
    /// Bound on one attempt.
    pub timeout: HumanDuration,
    /// Attempts after the first one.
    pub retries: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// What happens after the last attempt failed.
    pub on_failure: OnFailure,
    /// Run only when this holds on the node's facts (evaluated when the step is reached);
    /// skipped otherwise.
    pub when: Option<Condition>,
    /// Whether the executor may run it again after an interruption (see
    /// [`StepKind::idempotent_by_default`]).
    pub idempotent: bool,
}

/// A run's plan for one node: what the agent executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunPlan {
    /// Name of the template it was expanded from.
    pub template: String,
    /// That template's version.
    pub version: u32,
    /// The top-level parameters, defaults filled in (durations in canonical text). The
    /// executor exposes them as `params` to the templates it renders.
    pub params: BTreeMap<String, JsonValue>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl RunPlan {
    /// Index of the named step.
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, ms, canon) in [
            ("30s", 30_000, "30s"),
            ("5m", 300_000, "5m"),
            ("72h", 259_200_000, "3d"),
            ("1h30m", 5_400_000, "1h30m"),
            ("90s", 90_000, "1m30s"),
            ("250ms", 250, "250ms"),
            ("0s", 0, "0s"),
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), canon);
            assert_eq!(canon.parse::<HumanDuration>().unwrap(), d);
        }
        for bad in [
            "",
            "30",
            "s",
            "5 m",
            "3w",
            "-1s",
            "1.5h",
            "99999999999999999999d",
        ] {
            let err = bad.parse::<HumanDuration>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid duration {bad:?}: expected a duration like 30s, 5m, 72h")
            );
        }
    }

    #[test]
    fn file_mode_text_and_bits() {
        assert_eq!("0644".parse::<FileMode>().unwrap(), FileMode(0o644));
        assert_eq!("0o600".parse::<FileMode>().unwrap(), FileMode(0o600));
        assert!("0999".parse::<FileMode>().is_err());
        assert!("12345".parse::<FileMode>().is_err());
        let json: FileMode = serde_json::from_str("\"0755\"").unwrap();
        assert_eq!(json, FileMode(0o755));
        let bits: FileMode = serde_json::from_str("420").unwrap();
        assert_eq!(bits, FileMode(0o644));
        assert!(serde_json::from_str::<FileMode>("70000").is_err());
        assert_eq!(
            serde_json::from_str::<FileMode>("true")
                .unwrap_err()
                .to_string(),
            "invalid type: boolean `true`, expected octal permission bits like \"0644\" at line 1 column 4"
        );
        assert_eq!(serde_json::to_string(&FileMode(0o600)).unwrap(), "\"0600\"");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: HumanDuration::from_secs(5),
            factor: 3,
            max: HumanDuration::from_secs(60),
        };
        let secs: Vec<u64> = (1..=5).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 15, 45, 60, 60]);
        assert_eq!(b.delay(0), b.delay(1));
        let constant = Backoff { factor: 1, ..b };
        assert_eq!(constant.delay(4).as_secs(), 5);
    }

    fn sample_plan() -> RunPlan {
        let step = |name: &str, kind: StepKind| Step {
            name: name.to_owned(),
            idempotent: kind.idempotent_by_default(),
            timeout: kind.default_timeout(),
            kind,
            retries: 2,
            backoff: Backoff::default(),
            on_failure: OnFailure::Goto("discovery/reboot".to_owned()),
            when: Some("exists facts.bmc and facts.cpus >= 8".parse().unwrap()),
        };
        RunPlan {
            template: "buildout".to_owned(),
            version: 3,
            params: BTreeMap::from([("stress".to_owned(), JsonValue(serde_json::json!("72h")))]),
            steps: vec![
                step(
                    "discovery/boot",
                    StepKind::BootSet(BootSet {
                        target: BootTarget::Install {
                            kernel: "k".into(),
                            initrd: "i".into(),
                            cmdline: "c".into(),
                            autoinstall: None,
                        },
                    }),
                ),
                step(
                    "discovery/wait",
                    StepKind::NodeWait(NodeWait {
                        wait_for: WaitFor::Condition("facts.os.done == true".parse().unwrap()),
                    }),
                ),
                step(
                    "bios",
                    StepKind::RedfishBios(RedfishBios {
                        attributes: BTreeMap::from([(
                            "BootMode".to_owned(),
                            JsonValue(serde_json::json!("Uefi")),
                        )]),
                        apply: true,
                    }),
                ),
                step(
                    "run",
                    StepKind::NodeRun(NodeRun {
                        command: "fio".into(),
                        args: vec!["--runtime=10".into()],
                        expected_exit: vec![0, 3],
                        capture_logs: true,
                        facts: Some(FactCapture {
                            key: "fio".into(),
                            format: OutputFormat::Json,
                        }),
                    }),
                ),
                step(
                    "file",
                    StepKind::NodeTemplate(NodeTemplate {
                        path: "/etc/x".into(),
                        mode: FileMode(0o600),
                        template: "{{ serial }}".into(),
                    }),
                ),
                step(
                    "cfg",
                    StepKind::BmcConfigure(BmcConfigure {
                        address: Some("10.0.0.5".into()),
                        netmask: None,
                        gateway: None,
                        credentials: CredentialSource::Given {
                            username: "admin".into(),
                            password: "pw".into(),
                        },
                        channel: 1,
                        user_id: 2,
                        ipmitool: "ipmitool".into(),
                    }),
                ),
                step(
                    "install",
                    StepKind::OsInstall(OsInstall {
                        kernel: "k".into(),
                        initrd: "i".into(),
                        cmdline: String::new(),
                        autoinstall: Some(Autoinstall::Inline("x".into())),
                        done_event: "os.installed".into(),
                    }),
                ),
            ],
        }
    }

    #[test]
    fn plan_round_trips_in_postcard_and_json() {
        let plan = sample_plan();
        let bin = postcard::to_stdvec(&plan).unwrap();
        assert_eq!(postcard::from_bytes::<RunPlan>(&bin).unwrap(), plan);
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(
            json["steps"][0]["kind"]["boot.set"]["target"]["kind"],
            "install"
        );
        assert_eq!(json["steps"][0]["timeout"], "2m");
        assert_eq!(
            json["steps"][0]["when"],
            "exists facts.bmc and facts.cpus >= 8"
        );
        assert_eq!(json["steps"][4]["kind"]["node.template"]["mode"], "0600");
        assert_eq!(serde_json::from_value::<RunPlan>(json).unwrap(), plan);
    }

    #[test]
    fn openapi_schemas_follow_the_json_shape() {
        use utoipa::PartialSchema;
        let plan = serde_json::to_value(RunPlan::schema()).unwrap();
        let steps = &plan["properties"]["steps"];
        assert_eq!(steps["type"], "array", "{plan:#}");
        let step = serde_json::to_value(Step::schema()).unwrap();
        assert!(step["required"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("idempotent")));
        let kind = serde_json::to_value(StepKind::schema())
            .unwrap()
            .to_string();
        for name in StepKind::NAMES {
            assert!(kind.contains(&format!("\"{name}\"")), "{name} in {kind}");
        }
        let wait = serde_json::to_value(NodeWait::schema()).unwrap();
        assert!(wait["properties"].get("for").is_some(), "{wait:#}");
        let duration = serde_json::to_value(HumanDuration::schema()).unwrap();
        assert_eq!(duration["type"], "string");
    }

    #[test]
    fn kind_names_match_serde() {
        let plan = sample_plan();
        for step in &plan.steps {
            let json = serde_json::to_value(&step.kind).unwrap();
            let name = json.as_object().unwrap().keys().next().unwrap().clone();
            assert_eq!(name, step.kind.name());
            assert!(StepKind::NAMES.contains(&name.as_str()));
        }
    }
}
