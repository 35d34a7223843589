//! The Redfish driver: reqwest over rustls (per-BMC verification: CA bundle, insecure, or a
//! pinned certificate fingerprint), basic or session auth, and our own serde models.
//!
//! Quirks handled (seen on sushy-tools and real BMCs):
//! - `/Systems/<name>` may redirect (307) to `/Systems/<uuid>`: the system path is the final URL
//!   of the first GET, and every later request uses it.
//! - A power change is accepted at once and lands later: `On`/`Off` poll `PowerState` until it
//!   reaches the target, within `power_wait`.
//! - A `Once` boot override may read back as `Continuous`: [`Bmc::boot_override`] reports what
//!   the BMC says, it does not pretend.
//! - `501 Not Implemented` (a resource or reset type the BMC lacks) is [`BmcError::Unsupported`].
//!
//! The address may be `host`, `host:port`, or a URL; a URL's path (e.g.
//! `https://bmc:8000/redfish/v1/Systems/node-1`) selects the system when a BMC manages several.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::json;

use protocol::fleet::BmcAccess;

use super::config::{BmcSettings, RedfishAuth};
use super::{
    wait_for_power, AddressSource, BiosAttributes, Bmc, BmcError, BmcFuture, BootDevice,
    BootOverride, Drive, DriverKind, FruInfo, LanConfig, Operation, PowerAction, PowerState,
    StorageController, TaskState, TaskStatus, VirtualMediaStatus, Volume, VolumeSpec,
};

pub mod models;
pub mod tls;

use models::{
    Bios, Collection, ComputerSystem, DriveModel, ErrorBody, EthernetInterface, Manager,
    ServiceRoot, Storage, Task, UpdateService, VirtualMedia, VolumeModel,
};

/// Path of the service root.
pub const SERVICE_ROOT: &str = "/redfish/v1/";
/// Path of the sessions collection (fixed by the Redfish specification).
pub const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

/// A BMC driven over Redfish.
pub struct RedfishBmc {
    address: String,
    base: Url,
    system_hint: Option<String>,
    client: reqwest::Client,
    username: String,
    password: String,
    auth: RedfishAuth,
    session: tokio::sync::Mutex<Option<Session>>,
    system: tokio::sync::OnceCell<String>,
    power_wait: Duration,
    timeout: Duration,
}

#[derive(Debug)]
struct Session {
    token: String,
    location: Option<String>,
}

impl std::fmt::Debug for RedfishBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishBmc")
            .field("address", &self.address)
            .field("base", &self.base.as_str())
            .field("username", &self.username)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// One HTTP exchange as it came back.
#[derive(Debug)]
struct Raw {
    status: StatusCode,
    location: Option<String>,
    etag: Option<String>,
    final_path: String,
    body: String,
}

/// What came back from one successful request.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    location: Option<String>,
    final_path: String,
    body: String,
}

impl RedfishBmc {
    /// A driver for `access` with `settings` (TLS verification, auth mode, timeouts). Reads the
    /// CA bundle now; contacts nothing.
    pub fn new(access: &BmcAccess, settings: &BmcSettings) -> Result<RedfishBmc, BmcError> {
        let address = access.address.clone();
        let config_err = |message: String| BmcError::Config {
            address: address.clone(),
            message,
        };
        let text = if address.contains("://") {
            address.clone()
        } else {
            format!("https://{address}")
        };
        let url = Url::parse(&text).map_err(|e| config_err(format!("not a URL ({e})")))?;
        if url.host_str().is_none() {
            return Err(config_err("no host in the address".into()));
        }
        let system_hint = match url.path() {
            "" | "/" => None,
            p => Some(p.to_owned()),
        };
        let mut base = url.clone();
        base.set_path("/");
        base.set_query(None);
        let username = access
            .username
            .clone()
            .ok_or_else(|| config_err("no Redfish username in the BMC access data".into()))?;
        let tls =
            tls::client_config(&settings.redfish_verify).map_err(|message| BmcError::Tls {
                address: address.clone(),
                message,
            })?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| config_err(format!("HTTP client: {}", crate::error_chain(&e))))?;
        Ok(RedfishBmc {
            address,
            base,
            system_hint,
            client,
            username,
            password: access.password.clone().unwrap_or_default(),
            auth: settings.redfish_auth,
            session: tokio::sync::Mutex::new(None),
            system: tokio::sync::OnceCell::new(),
            power_wait: settings.power_wait,
            timeout: settings.timeout,
        })
    }

    fn url(&self, op: Operation, path: &str) -> Result<Url, BmcError> {
        self.base.join(path).map_err(|e| BmcError::Protocol {
            address: self.address.clone(),
            operation: op,
            message: format!("bad resource path {path:?}: {e}"),
        })
    }

    /// Ends the Redfish session, if one is open (sessions occupy a BMC's few slots until they
    /// expire). Basic auth: nothing to do.
    pub async fn logout(&self) -> Result<(), BmcError> {
        let Some(s) = self.session.lock().await.take() else {
            return Ok(());
        };
        let Some(loc) = s.location else {
            return Ok(());
        };
        let op = Operation::Session;
        let url = self.url(op, &loc)?;
        let resp = self
            .client
            .delete(url)
            .header("X-Auth-Token", &s.token)
            .send()
            .await
            .map_err(|e| self.transport_error(op, &e))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.status_error(op, status, &body))
        }
    }

    async fn login(&self, op: Operation) -> Result<Session, BmcError> {
        let url = self.url(op, SESSIONS)?;
        let resp = self
            .client
            .post(url)
            .json(&json!({"UserName": self.username, "Password": self.password}))
            .send()
            .await
            .map_err(|e| self.transport_error(op, &e))?;
        let status = resp.status();
        let token = header(&resp, "x-auth-token");
        let location = header(&resp, "location");
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(self.status_error(op, status, &body));
        }
        let token = token.ok_or_else(|| BmcError::Protocol {
            address: self.address.clone(),
            operation: op,
            message: "session created without an X-Auth-Token".into(),
        })?;
        Ok(Session { token, location })
    }

    /// One request with auth; a session is (re)opened once on 401. No status mapping.
    async fn exchange(
        &self,
        op: Operation,
        method: &Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> Result<Raw, BmcError> {
        let mut relogged = false;
        loop {
            let mut req = self
                .client
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(tag) = if_match {
                req = req.header(reqwest::header::IF_MATCH, tag);
            }
            req = match self.auth {
                RedfishAuth::Basic => req.basic_auth(&self.username, Some(&self.password)),
                RedfishAuth::Session => {
                    let mut s = self.session.lock().await;
                    if s.is_none() {
                        *s = Some(self.login(op).await?);
                    }
                    match s.as_ref() {
                        Some(s) => req.header("X-Auth-Token", &s.token),
                        None => req,
                    }
                }
            };
            let resp = req.send().await.map_err(|e| self.transport_error(op, &e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && self.auth == RedfishAuth::Session && !relogged
            {
                // The session expired or the BMC restarted: log in again once.
                relogged = true;
                *self.session.lock().await = None;
                continue;
            }
            let location = header(&resp, "location");
            let etag = header(&resp, "etag");
            let final_path = resp.url().path().to_owned();
            let body = resp
                .text()
                .await
                .map_err(|e| self.transport_error(op, &e))?;
            return Ok(Raw {
                status,
                location,
                etag,
                final_path,
                body,
            });
        }
    }

    /// One request; a refused precondition (428, or 412 for a stale tag) on a change is
    /// retried once with `If-Match` set to the resource's current ETag, since some BMCs
    /// require it on PATCH. Non-2xx answers become errors.
    async fn send(
        &self,
        op: Operation,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, BmcError> {
        let url = self.url(op, path)?;
        let mut raw = self.exchange(op, &method, &url, body, None).await?;
        if method != Method::GET
            && (raw.status == StatusCode::PRECONDITION_REQUIRED
                || raw.status == StatusCode::PRECONDITION_FAILED)
        {
            let current = self.exchange(op, &Method::GET, &url, None, None).await?;
            if let Some(tag) = current.etag {
                raw = self.exchange(op, &method, &url, body, Some(&tag)).await?;
            }
        }
        if raw.status.is_success() {
            return Ok(Reply {
                status: raw.status,
                location: raw.location,
                final_path: raw.final_path,
                body: raw.body,
            });
        }
        Err(self.status_error(op, raw.status, &raw.body))
    }

    async fn get<T: DeserializeOwned>(&self, op: Operation, path: &str) -> Result<T, BmcError> {
        let r = self.send(op, Method::GET, path, None).await?;
        self.decode(op, path, &r.body)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        op: Operation,
        path: &str,
        body: &str,
    ) -> Result<T, BmcError> {
        serde_json::from_str(body).map_err(|e| BmcError::Protocol {
            address: self.address.clone(),
            operation: op,
            message: format!("{path}: {e}"),
        })
    }

    fn transport_error(&self, op: Operation, e: &reqwest::Error) -> BmcError {
        let chain = crate::error_chain(e);
        if chain.contains(tls::PIN_MISMATCH)
            || chain.contains("invalid peer certificate")
            || chain.contains("certificate")
        {
            BmcError::Tls {
                address: self.address.clone(),
                message: chain,
            }
        } else if e.is_timeout() {
            BmcError::Timeout {
                address: self.address.clone(),
                operation: op,
                after: self.timeout,
                message: chain,
            }
        } else {
            BmcError::Transient {
                address: self.address.clone(),
                operation: op,
                message: chain,
            }
        }
    }

    fn status_error(&self, op: Operation, status: StatusCode, body: &str) -> BmcError {
        let message = format!("{status}: {}", ErrorBody::text(body));
        let address = self.address.clone();
        if body.contains("SessionLimitExceeded") {
            BmcError::SessionExhausted { address, message }
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            BmcError::Auth { address, message }
        } else if status == StatusCode::NOT_IMPLEMENTED {
            BmcError::Unsupported {
                driver: DriverKind::Redfish,
                operation: op,
            }
        } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            BmcError::Transient {
                address,
                operation: op,
                message,
            }
        } else {
            BmcError::Rejected {
                address,
                operation: op,
                message,
            }
        }
    }

    fn unsupported(&self, op: Operation) -> BmcError {
        BmcError::unsupported(DriverKind::Redfish, op)
    }

    /// The system's resource path, discovered once.
    async fn system_path(&self, op: Operation) -> Result<String, BmcError> {
        self.system
            .get_or_try_init(|| async {
                if let Some(hint) = &self.system_hint {
                    // Follows a 307 to the canonical (UUID) path.
                    let r = self.send(op, Method::GET, hint, None).await?;
                    return Ok(r.final_path);
                }
                let root: ServiceRoot = self.get(op, SERVICE_ROOT).await?;
                let systems = root.systems.ok_or_else(|| BmcError::Protocol {
                    address: self.address.clone(),
                    operation: op,
                    message: "service root has no Systems".into(),
                })?;
                let c: Collection = self.get(op, &systems.odata_id).await?;
                match c.members.as_slice() {
                    [one] => Ok(one.odata_id.clone()),
                    [] => Err(BmcError::Protocol {
                        address: self.address.clone(),
                        operation: op,
                        message: "no system behind this BMC".into(),
                    }),
                    many => Err(BmcError::Config {
                        address: self.address.clone(),
                        message: format!(
                            "{} systems behind this BMC; put the system's path in the address \
                             (https://host/redfish/v1/Systems/<id>)",
                            many.len()
                        ),
                    }),
                }
            })
            .await
            .cloned()
    }

    async fn system_resource(&self, op: Operation) -> Result<ComputerSystem, BmcError> {
        let path = self.system_path(op).await?;
        self.get(op, &path).await
    }

    async fn manager(&self, op: Operation, sys: &ComputerSystem) -> Result<Manager, BmcError> {
        let link = match sys.links.managed_by.first() {
            Some(l) => l.odata_id.clone(),
            None => {
                let root: ServiceRoot = self.get(op, SERVICE_ROOT).await?;
                let managers = root.managers.ok_or_else(|| self.unsupported(op))?;
                let c: Collection = self.get(op, &managers.odata_id).await?;
                c.members
                    .first()
                    .map(|l| l.odata_id.clone())
                    .ok_or_else(|| self.unsupported(op))?
            }
        };
        self.get(op, &link).await
    }

    async fn cd_device(&self, op: Operation) -> Result<VirtualMedia, BmcError> {
        let sys = self.system_resource(op).await?;
        let coll = match sys.virtual_media.clone() {
            Some(l) => l,
            None => self
                .manager(op, &sys)
                .await?
                .virtual_media
                .ok_or_else(|| self.unsupported(op))?,
        };
        let c: Collection = self.get(op, &coll.odata_id).await?;
        for m in c.members {
            let vm: VirtualMedia = self.get(op, &m.odata_id).await?;
            if vm.media_types.iter().any(|t| t == "CD" || t == "DVD") {
                return Ok(vm);
            }
        }
        Err(self.unsupported(op))
    }

    async fn reset(&self, action: PowerAction) -> Result<(), BmcError> {
        let op = Operation::Power(action);
        let sys = self.system_resource(op).await?;
        let reset = sys.actions.reset.clone().unwrap_or_default();
        let target = if reset.target.is_empty() {
            format!("{}/Actions/ComputerSystem.Reset", sys.odata_id)
        } else {
            reset.target.clone()
        };
        let allowed = |t: &str| reset.allowed.is_empty() || reset.allowed.iter().any(|a| a == t);
        let candidates: &[&str] = match action {
            PowerAction::On => &["On", "ForceOn"],
            PowerAction::Off => &["ForceOff"],
            PowerAction::Cycle => &["PowerCycle", "ForceRestart"],
            PowerAction::Reset => &["ForceRestart"],
            PowerAction::SoftOff => &["GracefulShutdown"],
        };
        let reset_type = candidates
            .iter()
            .find(|t| allowed(t))
            .ok_or_else(|| self.unsupported(op))?;
        self.send(
            op,
            Method::POST,
            &target,
            Some(&json!({ "ResetType": reset_type })),
        )
        .await?;
        Ok(())
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `PowerState` text to a state: a transition counts as the state it leaves.
pub fn parse_power_state(s: &str) -> Option<PowerState> {
    match s {
        "On" | "PoweringOff" => Some(PowerState::On),
        "Off" | "PoweringOn" => Some(PowerState::Off),
        _ => None,
    }
}

/// The `Boot` object a [`BootOverride`] is PATCHed as.
pub fn boot_patch(boot: BootOverride) -> serde_json::Value {
    let target = match boot.device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::Cdrom => "Cd",
        BootDevice::BiosSetup => "BiosSetup",
        BootDevice::Default => "None",
    };
    let enabled = match (boot.device, boot.persistent) {
        (BootDevice::Default, _) => "Disabled",
        (_, true) => "Continuous",
        (_, false) => "Once",
    };
    let mode = if boot.uefi { "UEFI" } else { "Legacy" };
    json!({"Boot": {
        "BootSourceOverrideTarget": target,
        "BootSourceOverrideEnabled": enabled,
        "BootSourceOverrideMode": mode,
    }})
}

/// A system's `Boot` object read back.
pub fn parse_boot(b: &models::Boot) -> BootOverride {
    let enabled = b
        .boot_source_override_enabled
        .as_deref()
        .unwrap_or("Disabled");
    let device = match (enabled, b.boot_source_override_target.as_deref()) {
        ("Disabled", _) => BootDevice::Default,
        (_, Some("Pxe")) => BootDevice::Pxe,
        (_, Some("Hdd")) => BootDevice::Disk,
        (_, Some("Cd")) => BootDevice::Cdrom,
        (_, Some("BiosSetup")) => BootDevice::BiosSetup,
        _ => BootDevice::Default,
    };
    BootOverride {
        device,
        uefi: b.boot_source_override_mode.as_deref() == Some("UEFI"),
        persistent: enabled == "Continuous",
    }
}

/// A task's state.
pub fn task_state(t: &Task) -> TaskState {
    match t.task_state.as_deref() {
        Some("Completed") if matches!(t.task_status.as_deref(), Some("Critical")) => {
            TaskState::Failed
        }
        Some("Completed") => TaskState::Completed,
        Some("Exception" | "Killed" | "Cancelled") => TaskState::Failed,
        _ => TaskState::Running,
    }
}

fn task_status(id: String, t: &Task) -> TaskStatus {
    TaskStatus {
        id,
        state: task_state(t),
        percent: t.percent_complete,
        messages: t
            .messages
            .iter()
            .filter_map(|m| m.message.clone())
            .collect(),
    }
}

impl Bmc for RedfishBmc {
    fn driver(&self) -> DriverKind {
        DriverKind::Redfish
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn power_status(&self) -> BmcFuture<'_, PowerState> {
        Box::pin(async move {
            let op = Operation::PowerStatus;
            let sys = self.system_resource(op).await?;
            let text = sys.power_state.unwrap_or_default();
            parse_power_state(&text).ok_or_else(|| BmcError::Protocol {
                address: self.address.clone(),
                operation: op,
                message: format!("PowerState {text:?}"),
            })
        })
    }

    fn power(&self, action: PowerAction) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            self.reset(action).await?;
            if let Some(want) = action.target() {
                wait_for_power(self, want, self.power_wait).await?;
            }
            Ok(())
        })
    }

    fn set_boot(&self, boot: BootOverride) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let op = Operation::SetBoot;
            let sys = self.system_resource(op).await?;
            let patch = boot_patch(boot);
            let target = patch["Boot"]["BootSourceOverrideTarget"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let allowed = &sys.boot.allowed_targets;
            if boot.device != BootDevice::Default
                && !allowed.is_empty()
                && !allowed.contains(&target)
            {
                return Err(BmcError::Rejected {
                    address: self.address.clone(),
                    operation: op,
                    message: format!("boot target {target} not in the BMC's allowed {allowed:?}"),
                });
            }
            self.send(op, Method::PATCH, &sys.odata_id, Some(&patch))
                .await?;
            Ok(())
        })
    }

    fn boot_override(&self) -> BmcFuture<'_, BootOverride> {
        Box::pin(async move {
            let sys = self.system_resource(Operation::GetBoot).await?;
            Ok(parse_boot(&sys.boot))
        })
    }

    fn fru(&self) -> BmcFuture<'_, FruInfo> {
        Box::pin(async move {
            let sys = self.system_resource(Operation::Fru).await?;
            Ok(FruInfo {
                serial: sys.serial_number.filter(|s| !s.is_empty()),
                manufacturer: sys.manufacturer,
                product: sys.model,
                chassis_serial: None,
                board_serial: None,
                asset_tag: sys.asset_tag.filter(|s| !s.is_empty()),
            })
        })
    }

    fn lan_config(&self) -> BmcFuture<'_, LanConfig> {
        Box::pin(async move {
            let op = Operation::LanConfig;
            let sys = self.system_resource(op).await?;
            let mgr = self.manager(op, &sys).await?;
            let nics = mgr
                .ethernet_interfaces
                .ok_or_else(|| self.unsupported(op))?;
            let c: Collection = self.get(op, &nics.odata_id).await?;
            let first = c.members.first().ok_or_else(|| self.unsupported(op))?;
            let nic: EthernetInterface = self.get(op, &first.odata_id).await?;
            let v4 = nic.ipv4_addresses.first().cloned().unwrap_or_default();
            let ip = |s: Option<String>| {
                s.and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
                    .filter(|a| !a.is_unspecified())
            };
            let source = match v4.address_origin.as_deref() {
                Some("Static") => AddressSource::Static,
                Some("DHCP") => AddressSource::Dhcp,
                _ => AddressSource::Other,
            };
            Ok(LanConfig {
                ip: ip(v4.address),
                netmask: ip(v4.subnet_mask),
                gateway: ip(v4.gateway),
                mac: nic.mac_address.map(|m| m.to_ascii_lowercase()),
                source,
            })
        })
    }

    fn firmware_update(&self, image_uri: &str) -> BmcFuture<'_, TaskStatus> {
        let image = image_uri.to_owned();
        Box::pin(async move {
            let op = Operation::FirmwareUpdate;
            let system = self.system_path(op).await?;
            let root: ServiceRoot = self.get(op, SERVICE_ROOT).await?;
            let us = root.update_service.ok_or_else(|| self.unsupported(op))?;
            let us: UpdateService = self.get(op, &us.odata_id).await?;
            let action = us
                .actions
                .simple_update
                .ok_or_else(|| self.unsupported(op))?;
            // The URI's scheme says how to fetch it, so TransferProtocol is left out.
            let body = json!({"ImageURI": image, "Targets": [system]});
            let r = self
                .send(op, Method::POST, &action.target, Some(&body))
                .await?;
            let task: Task = serde_json::from_str(&r.body).unwrap_or_default();
            let id = r
                .location
                .clone()
                .or_else(|| (!task.odata_id.is_empty()).then(|| task.odata_id.clone()));
            match id {
                Some(id) => Ok(TaskStatus {
                    state: if r.status == StatusCode::ACCEPTED {
                        TaskState::Running
                    } else {
                        task_state(&task)
                    },
                    ..task_status(id, &task)
                }),
                // No task to follow: the BMC finished (or queued) the update synchronously.
                None => Ok(TaskStatus {
                    id: String::new(),
                    state: TaskState::Completed,
                    percent: None,
                    messages: vec![ErrorBody::text(&r.body)],
                }),
            }
        })
    }

    fn task_status(&self, task: &str) -> BmcFuture<'_, TaskStatus> {
        let id = task.to_owned();
        Box::pin(async move {
            let op = Operation::TaskStatus;
            let r = self.send(op, Method::GET, &id, None).await?;
            let t: Task = serde_json::from_str(&r.body).unwrap_or_default();
            if t.task_state.is_none() {
                // A task monitor answers 202 while running and the result once done.
                let state = if r.status == StatusCode::ACCEPTED {
                    TaskState::Running
                } else {
                    TaskState::Completed
                };
                return Ok(TaskStatus {
                    id,
                    state,
                    percent: None,
                    messages: Vec::new(),
                });
            }
            Ok(task_status(id, &t))
        })
    }

    fn bios_attributes(&self) -> BmcFuture<'_, BiosAttributes> {
        Box::pin(async move {
            let op = Operation::BiosRead;
            let sys = self.system_resource(op).await?;
            let link = sys.bios.ok_or_else(|| self.unsupported(op))?;
            let bios: Bios = self.get(op, &link.odata_id).await?;
            let settings = settings_path(&link.odata_id, &bios);
            let pending = match self.get::<Bios>(op, &settings).await {
                Ok(s) => s
                    .attributes
                    .into_iter()
                    .filter(|(k, v)| bios.attributes.get(k) != Some(v))
                    .collect(),
                // No settings object: nothing pending.
                Err(BmcError::Rejected { .. }) => BTreeMap::new(),
                Err(e) => return Err(e),
            };
            Ok(BiosAttributes {
                current: bios.attributes,
                pending,
            })
        })
    }

    fn set_bios_attributes(
        &self,
        attributes: BTreeMap<String, serde_json::Value>,
    ) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let op = Operation::BiosSet;
            let sys = self.system_resource(op).await?;
            let link = sys.bios.ok_or_else(|| self.unsupported(op))?;
            let bios: Bios = self.get(op, &link.odata_id).await?;
            let settings = settings_path(&link.odata_id, &bios);
            self.send(
                op,
                Method::PATCH,
                &settings,
                Some(&json!({ "Attributes": attributes })),
            )
            .await?;
            Ok(())
        })
    }

    fn storage(&self) -> BmcFuture<'_, Vec<StorageController>> {
        Box::pin(async move {
            let op = Operation::StorageList;
            let sys = self.system_resource(op).await?;
            let link = sys.storage.ok_or_else(|| self.unsupported(op))?;
            let c: Collection = self.get(op, &link.odata_id).await?;
            let mut out = Vec::new();
            for m in c.members {
                let s: Storage = self.get(op, &m.odata_id).await?;
                let mut drives = Vec::new();
                for d in &s.drives {
                    let d: DriveModel = self.get(op, &d.odata_id).await?;
                    drives.push(Drive {
                        id: d.odata_id,
                        name: d.name,
                        capacity_bytes: d.capacity_bytes,
                    });
                }
                let mut volumes = Vec::new();
                if let Some(vl) = &s.volumes {
                    let vc: Collection = self.get(op, &vl.odata_id).await?;
                    for v in vc.members {
                        let v: VolumeModel = self.get(op, &v.odata_id).await?;
                        volumes.push(Volume {
                            id: v.odata_id,
                            name: v.name,
                            raid_type: v.raid_type.or(v.volume_type),
                            capacity_bytes: v.capacity_bytes,
                        });
                    }
                }
                out.push(StorageController {
                    id: if s.odata_id.is_empty() {
                        m.odata_id
                    } else {
                        s.odata_id
                    },
                    name: s.name,
                    raid_types: s
                        .storage_controllers
                        .into_iter()
                        .flat_map(|c| c.supported_raid_types)
                        .collect(),
                    drives,
                    volumes,
                });
            }
            Ok(out)
        })
    }

    fn create_volume(&self, controller: &str, spec: VolumeSpec) -> BmcFuture<'_, String> {
        let controller = controller.to_owned();
        Box::pin(async move {
            let op = Operation::VolumeCreate;
            let s: Storage = self.get(op, &controller).await?;
            let volumes = s
                .volumes
                .map(|l| l.odata_id)
                .unwrap_or_else(|| format!("{}/Volumes", controller.trim_end_matches('/')));
            let mut body = json!({"Name": spec.name, "RAIDType": spec.raid_type});
            if let Some(c) = spec.capacity_bytes {
                body["CapacityBytes"] = json!(c);
            }
            if !spec.drives.is_empty() {
                let drives: Vec<_> = spec
                    .drives
                    .iter()
                    .map(|d| json!({"@odata.id": d}))
                    .collect();
                body["Links"] = json!({ "Drives": drives });
            }
            let r = self.send(op, Method::POST, &volumes, Some(&body)).await?;
            let created: VolumeModel = serde_json::from_str(&r.body).unwrap_or_default();
            r.location
                .or_else(|| (!created.odata_id.is_empty()).then_some(created.odata_id))
                .ok_or_else(|| BmcError::Protocol {
                    address: self.address.clone(),
                    operation: op,
                    message: format!("{} without a Location or volume body", r.status),
                })
        })
    }

    fn delete_volume(&self, volume: &str) -> BmcFuture<'_, ()> {
        let volume = volume.to_owned();
        Box::pin(async move {
            self.send(Operation::VolumeDelete, Method::DELETE, &volume, None)
                .await?;
            Ok(())
        })
    }

    fn virtual_media_insert(&self, image_uri: &str) -> BmcFuture<'_, ()> {
        let image = image_uri.to_owned();
        Box::pin(async move {
            let op = Operation::VirtualMediaInsert;
            let vm = self.cd_device(op).await?;
            let body = json!({"Image": image, "Inserted": true, "WriteProtected": true});
            match vm.actions.insert {
                Some(a) => self.send(op, Method::POST, &a.target, Some(&body)).await?,
                // Pre-1.1 services: PATCH the device.
                None => {
                    self.send(op, Method::PATCH, &vm.odata_id, Some(&body))
                        .await?
                }
            };
            Ok(())
        })
    }

    fn virtual_media_eject(&self) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let op = Operation::VirtualMediaEject;
            let vm = self.cd_device(op).await?;
            match vm.actions.eject {
                Some(a) => {
                    self.send(op, Method::POST, &a.target, Some(&json!({})))
                        .await?
                }
                None => {
                    let body = json!({"Image": null, "Inserted": false});
                    self.send(op, Method::PATCH, &vm.odata_id, Some(&body))
                        .await?
                }
            };
            Ok(())
        })
    }

    fn virtual_media_status(&self) -> BmcFuture<'_, VirtualMediaStatus> {
        Box::pin(async move {
            let vm = self.cd_device(Operation::VirtualMediaStatus).await?;
            let image = vm.image.filter(|i| !i.is_empty());
            Ok(VirtualMediaStatus {
                id: vm.odata_id,
                inserted: vm.inserted.unwrap_or(image.is_some()),
                image,
            })
        })
    }
}

fn settings_path(bios_path: &str, bios: &Bios) -> String {
    bios.settings
        .as_ref()
        .and_then(|s| s.settings_object.as_ref())
        .map(|l| l.odata_id.clone())
        .unwrap_or_else(|| format!("{}/Settings", bios_path.trim_end_matches('/')))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boot_round_trip_and_sushy_quirk() {
        let b = BootOverride {
            device: BootDevice::Pxe,
            uefi: true,
            persistent: false,
        };
        let p = boot_patch(b);
        assert_eq!(p["Boot"]["BootSourceOverrideEnabled"], "Once");
        assert_eq!(p["Boot"]["BootSourceOverrideTarget"], "Pxe");
        assert_eq!(p["Boot"]["BootSourceOverrideMode"], "UEFI");
        let back: models::Boot = serde_json::from_value(p["Boot"].clone()).unwrap();
        assert_eq!(parse_boot(&back), b);
        // sushy-tools stores Once as Continuous: reported as persistent, not hidden.
        let quirk: models::Boot = serde_json::from_str(
            r#"{"BootSourceOverrideEnabled":"Continuous","BootSourceOverrideTarget":"Pxe","BootSourceOverrideMode":"UEFI"}"#,
        )
        .unwrap();
        assert!(parse_boot(&quirk).persistent);
        let off: models::Boot = serde_json::from_str(
            r#"{"BootSourceOverrideEnabled":"Disabled","BootSourceOverrideTarget":"Pxe"}"#,
        )
        .unwrap();
        assert_eq!(parse_boot(&off).device, BootDevice::Default);
    }

    #[test]
    fn power_states_and_tasks() {
        assert_eq!(parse_power_state("PoweringOn"), Some(PowerState::Off));
        assert_eq!(parse_power_state("PoweringOff"), Some(PowerState::On));
        assert_eq!(parse_power_state("Paused"), None);
        let t = |s: &str, st: &str| Task {
            task_state: Some(s.into()),
            task_status: Some(st.into()),
            ..Task::default()
        };
        assert_eq!(task_state(&t("Running", "OK")), TaskState::Running);
        assert_eq!(task_state(&t("Completed", "OK")), TaskState::Completed);
        assert_eq!(task_state(&t("Completed", "Critical")), TaskState::Failed);
        assert_eq!(task_state(&t("Exception", "Critical")), TaskState::Failed);
    }

    #[test]
    fn addresses_and_system_hints() {
        let s = crate::bmc::BmcConfig::default().defaults;
        let mut s = s;
        s.redfish_verify = crate::bmc::config::RedfishVerify::Insecure;
        let access = |a: &str| BmcAccess {
            address: a.into(),
            driver: protocol::domain::BmcDriver::Redfish,
            username: Some("u".into()),
            password: Some("s3cret".into()),
        };
        let b = RedfishBmc::new(&access("10.0.0.5"), &s).unwrap();
        assert_eq!(b.base.as_str(), "https://10.0.0.5/");
        assert_eq!(b.system_hint, None);
        let b = RedfishBmc::new(
            &access("https://10.0.0.5:8443/redfish/v1/Systems/node-1"),
            &s,
        )
        .unwrap();
        assert_eq!(b.base.as_str(), "https://10.0.0.5:8443/");
        assert_eq!(b.system_hint.as_deref(), Some("/redfish/v1/Systems/node-1"));
        assert!(!format!("{b:?}").contains("s3cret"));
        let mut no_user = access("10.0.0.5");
        no_user.username = None;
        assert!(matches!(
            RedfishBmc::new(&no_user, &s),
            Err(BmcError::Config { .. })
        ));
        let mut missing_ca = s.clone();
        missing_ca.redfish_verify =
            crate::bmc::config::RedfishVerify::Ca("/nonexistent/ca.pem".into());
        assert!(matches!(
            RedfishBmc::new(&access("10.0.0.5"), &missing_ca),
            Err(BmcError::Tls { .. })
        ));
    }
}
