//! Our own serde models of the Redfish resources the driver reads: only the fields we use,
//! every one `#[serde(default)]`, unknown fields (vendor `Oem` blocks and extras) ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A reference to another resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Link {
    /// Resource path.
    #[serde(rename = "@odata.id", default)]
    pub odata_id: String,
}

/// A collection's members.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Collection {
    /// Members.
    #[serde(rename = "Members")]
    pub members: Vec<Link>,
}

/// `/redfish/v1/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ServiceRoot {
    /// Systems collection.
    pub systems: Option<Link>,
    /// Managers collection.
    pub managers: Option<Link>,
    /// Update service.
    pub update_service: Option<Link>,
    /// Session service.
    pub session_service: Option<Link>,
    /// Links (the sessions collection lives here).
    pub links: RootLinks,
}

/// `ServiceRoot.Links`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RootLinks {
    /// Sessions collection.
    pub sessions: Option<Link>,
}

/// An action's target and allowable values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResetAction {
    /// POST target.
    pub target: String,
    /// Allowed `ResetType`s, when the service lists them.
    #[serde(rename = "ResetType@Redfish.AllowableValues")]
    pub allowed: Vec<String>,
}

/// `ComputerSystem.Actions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SystemActions {
    /// `#ComputerSystem.Reset`.
    #[serde(rename = "#ComputerSystem.Reset")]
    pub reset: Option<ResetAction>,
}

/// `ComputerSystem.Boot`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Boot {
    /// `Pxe`, `Hdd`, `Cd`, `BiosSetup`, `None`, ...
    pub boot_source_override_target: Option<String>,
    /// `Once`, `Continuous`, `Disabled`.
    pub boot_source_override_enabled: Option<String>,
    /// `UEFI`, `Legacy`.
    pub boot_source_override_mode: Option<String>,
    /// Allowed targets, when listed.
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues")]
    pub allowed_targets: Vec<String>,
}

/// `ComputerSystem.Links`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct SystemLinks {
    /// Managers of this system.
    pub managed_by: Vec<Link>,
}

/// A `ComputerSystem`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ComputerSystem {
    /// Resource path.
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    /// `On`, `Off`, `PoweringOn`, `PoweringOff`.
    pub power_state: Option<String>,
    /// Boot override.
    pub boot: Boot,
    /// System serial.
    pub serial_number: Option<String>,
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Asset tag.
    pub asset_tag: Option<String>,
    /// BIOS resource.
    pub bios: Option<Link>,
    /// Storage collection.
    pub storage: Option<Link>,
    /// Virtual media collection (newer services put it on the system).
    pub virtual_media: Option<Link>,
    /// Actions.
    pub actions: SystemActions,
    /// Links.
    pub links: SystemLinks,
}

/// A `Manager`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Manager {
    /// The BMC's own NICs.
    pub ethernet_interfaces: Option<Link>,
    /// Virtual media collection (older services put it on the manager).
    pub virtual_media: Option<Link>,
}

/// One IPv4 address of an `EthernetInterface`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Ipv4Address {
    /// Address.
    pub address: Option<String>,
    /// Mask.
    pub subnet_mask: Option<String>,
    /// Gateway.
    pub gateway: Option<String>,
    /// `Static`, `DHCP`, `BOOTP`, `IPv4LinkLocal`.
    pub address_origin: Option<String>,
}

/// An `EthernetInterface`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct EthernetInterface {
    /// MAC address.
    #[serde(rename = "MACAddress")]
    pub mac_address: Option<String>,
    /// IPv4 addresses.
    #[serde(rename = "IPv4Addresses")]
    pub ipv4_addresses: Vec<Ipv4Address>,
}

/// An action with only a target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Action {
    /// POST target.
    pub target: String,
}

/// `UpdateService.Actions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UpdateActions {
    /// `#UpdateService.SimpleUpdate`.
    #[serde(rename = "#UpdateService.SimpleUpdate")]
    pub simple_update: Option<Action>,
}

/// The `UpdateService`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct UpdateService {
    /// Actions.
    pub actions: UpdateActions,
}

/// A `Message` (task messages, extended error info).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Message {
    /// Text.
    pub message: Option<String>,
    /// Registry id.
    pub message_id: Option<String>,
}

/// A `Task`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Task {
    /// Resource path.
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    /// `New`, `Running`, `Completed`, `Exception`, `Killed`, ...
    pub task_state: Option<String>,
    /// `OK`, `Warning`, `Critical`.
    pub task_status: Option<String>,
    /// Percent complete.
    pub percent_complete: Option<u32>,
    /// Messages.
    pub messages: Vec<Message>,
}

/// `@Redfish.Settings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Settings {
    /// Where pending settings are PATCHed.
    pub settings_object: Option<Link>,
}

/// `Bios` (and its settings object, same shape).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Bios {
    /// Attributes.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Settings object reference.
    #[serde(rename = "@Redfish.Settings")]
    pub settings: Option<Settings>,
}

/// One `StorageControllers[]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct StorageControllerEntry {
    /// RAID types.
    #[serde(rename = "SupportedRAIDTypes")]
    pub supported_raid_types: Vec<String>,
}

/// A `Storage` resource.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Storage {
    /// Resource path.
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    /// Name.
    pub name: Option<String>,
    /// Controllers.
    pub storage_controllers: Vec<StorageControllerEntry>,
    /// Drives.
    pub drives: Vec<Link>,
    /// Volumes collection.
    pub volumes: Option<Link>,
}

/// A `Drive`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DriveModel {
    /// Resource path.
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    /// Name.
    pub name: Option<String>,
    /// Capacity.
    pub capacity_bytes: Option<u64>,
}

/// A `Volume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct VolumeModel {
    /// Resource path.
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    /// Name.
    pub name: Option<String>,
    /// RAID type (Volume v1.3+).
    #[serde(rename = "RAIDType")]
    pub raid_type: Option<String>,
    /// Older volume type (`Mirrored`, `StripedWithParity`, ...).
    pub volume_type: Option<String>,
    /// Capacity.
    pub capacity_bytes: Option<u64>,
}

/// `VirtualMedia.Actions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MediaActions {
    /// Insert.
    #[serde(rename = "#VirtualMedia.InsertMedia")]
    pub insert: Option<Action>,
    /// Eject.
    #[serde(rename = "#VirtualMedia.EjectMedia")]
    pub eject: Option<Action>,
}

/// A `VirtualMedia` device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct VirtualMedia {
    /// Resource path.
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    /// Image URI ("" when none).
    pub image: Option<String>,
    /// Inserted.
    pub inserted: Option<bool>,
    /// `CD`, `DVD`, `Floppy`, `USBStick`.
    pub media_types: Vec<String>,
    /// Actions.
    pub actions: MediaActions,
}

/// A Redfish error body: `{"error": {"message": ..., "@Message.ExtendedInfo": [...]}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The `error` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorDetail {
    /// Code.
    pub code: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// Extended info.
    #[serde(rename = "@Message.ExtendedInfo")]
    pub extended: Vec<Message>,
}

impl ErrorBody {
    /// The BMC's words: `message` then each extended message, `; `-joined; the raw body when
    /// it is not a Redfish error.
    pub fn text(body: &str) -> String {
        let raw = || {
            let t = body.trim();
            if t.is_empty() {
                "(empty body)".to_owned()
            } else {
                t.chars().take(500).collect()
            }
        };
        match serde_json::from_str::<ErrorBody>(body) {
            Ok(e) => {
                let mut parts: Vec<String> = e.error.message.into_iter().collect();
                for m in e.error.extended {
                    if let Some(t) = m.message {
                        if !parts.contains(&t) {
                            parts.push(t);
                        }
                    }
                }
                if parts.is_empty() {
                    raw()
                } else {
                    parts.join("; ")
                }
            }
            Err(_) => raw(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // Captured from sushy-tools 2.2.0 (fake driver).
    const ROOT: &str = include_str!("fixtures/sushy_root.json");
    const SYSTEM: &str = include_str!("fixtures/sushy_system.json");
    const CD: &str = include_str!("fixtures/sushy_virtual_media_cd.json");
    const UPDATE: &str = include_str!("fixtures/sushy_update_service.json");
    const E401: &str = include_str!("fixtures/sushy_401.json");
    const E501: &str = include_str!("fixtures/sushy_bios_501.json");

    #[test]
    fn sushy_root_and_system() {
        let r: ServiceRoot = serde_json::from_str(ROOT).unwrap();
        assert_eq!(r.systems.unwrap().odata_id, "/redfish/v1/Systems");
        assert_eq!(
            r.update_service.unwrap().odata_id,
            "/redfish/v1/UpdateService"
        );
        assert!(r.session_service.is_none());
        let s: ComputerSystem = serde_json::from_str(SYSTEM).unwrap();
        assert_eq!(s.power_state.as_deref(), Some("Off"));
        assert_eq!(
            s.boot.boot_source_override_enabled.as_deref(),
            Some("Continuous")
        );
        assert_eq!(s.boot.boot_source_override_target.as_deref(), Some("Hdd"));
        assert_eq!(s.boot.boot_source_override_mode.as_deref(), Some("UEFI"));
        assert_eq!(s.boot.allowed_targets, ["Pxe", "Cd", "Hdd", "UefiHttp"]);
        let reset = s.actions.reset.unwrap();
        assert!(reset.target.ends_with("/Actions/ComputerSystem.Reset"));
        assert!(reset.allowed.contains(&"ForceOff".to_owned()));
        assert!(!reset.allowed.contains(&"PowerCycle".to_owned()));
        assert!(s.virtual_media.unwrap().odata_id.ends_with("/VirtualMedia"));
        assert_eq!(s.links.managed_by.len(), 1);
        assert_eq!(s.manufacturer.as_deref(), Some("Sushy Emulator"));
        assert!(s.bios.is_none(), "the fake driver has no BIOS");
    }

    #[test]
    fn sushy_virtual_media_and_update_service() {
        let v: VirtualMedia = serde_json::from_str(CD).unwrap();
        assert_eq!(v.media_types, ["CD", "DVD"]);
        assert_eq!(v.inserted, Some(false));
        assert_eq!(v.image.as_deref(), Some(""));
        assert!(v
            .actions
            .insert
            .unwrap()
            .target
            .ends_with("VirtualMedia.InsertMedia"));
        assert!(v
            .actions
            .eject
            .unwrap()
            .target
            .ends_with("VirtualMedia.EjectMedia"));
        let u: UpdateService = serde_json::from_str(UPDATE).unwrap();
        assert_eq!(
            u.actions.simple_update.unwrap().target,
            "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate"
        );
    }

    #[test]
    fn error_bodies_keep_the_bmc_words() {
        assert_eq!(ErrorBody::text(E401), "Incorrect username or password");
        assert_eq!(ErrorBody::text(E501), "Not implemented");
        assert_eq!(ErrorBody::text("<html>busy</html>"), "<html>busy</html>");
        assert_eq!(ErrorBody::text(""), "(empty body)");
        let ext = r#"{"error":{"message":"A general error","@Message.ExtendedInfo":[{"Message":"The value 'X' for BootMode is not allowed."}]}}"#;
        assert_eq!(
            ErrorBody::text(ext),
            "A general error; The value 'X' for BootMode is not allowed."
        );
    }

    #[test]
    fn tasks_and_storage_tolerate_extras() {
        let t: Task = serde_json::from_str(
            r#"{"@odata.id":"/redfish/v1/TaskService/Tasks/42","TaskState":"Completed","TaskStatus":"OK","PercentComplete":100,"Oem":{"Dell":{"x":1}},"Messages":[{"Message":"done","MessageArgs":[]}]}"#,
        )
        .unwrap();
        assert_eq!(t.task_state.as_deref(), Some("Completed"));
        assert_eq!(t.messages[0].message.as_deref(), Some("done"));
        let v: VolumeModel = serde_json::from_str(
            r#"{"@odata.id":"/v/1","Name":"os","VolumeType":"Mirrored","CapacityBytes":1073741824}"#,
        )
        .unwrap();
        assert_eq!(v.volume_type.as_deref(), Some("Mirrored"));
        assert_eq!(v.raid_type, None);
        let s: Storage = serde_json::from_str(
            r#"{"@odata.id":"/s/1","StorageControllers":[{"SupportedRAIDTypes":["RAID0","RAID1"],"SpeedGbps":12}],"Drives":[{"@odata.id":"/d/1"}],"Volumes":{"@odata.id":"/s/1/Volumes"}}"#,
        )
        .unwrap();
        assert_eq!(
            s.storage_controllers[0].supported_raid_types,
            ["RAID0", "RAID1"]
        );
        assert_eq!(s.drives[0].odata_id, "/d/1");
    }
}
