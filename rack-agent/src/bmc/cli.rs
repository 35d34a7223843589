//! `rack-agent bmc`: one BMC operation from the command line through the agent's own drivers
//! (the same [`GuardedBmc`] stack, `[bmc]` settings and per-address overrides the running
//! agent uses), for operators checking a BMC by hand and for the lab powering its VMs.
//!
//! The password comes from the environment (`METALFLEET_BMC_PASSWORD`), never from argv,
//! which every user of the machine can read.

use std::sync::Arc;

use protocol::domain::BmcDriver;
use protocol::fleet::BmcAccess;
use serde::Serialize;

use super::guard::{BmcObserver, BmcRegistry, CollectingObserver};
use super::{
    connect_guarded, Bmc, BmcError, BootDevice, BootOverride, FruInfo, LanConfig, PowerAction,
    PowerState,
};
use crate::config::Config;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcOp {
    /// Read the chassis power.
    PowerStatus,
    /// Change the power (on/off wait until the BMC reports the target state).
    Power(PowerAction),
    /// Set the boot device override.
    SetBoot(BootOverride),
    /// Read the boot device override back.
    BootStatus,
    /// Read the FRU / system identity.
    Fru,
    /// Read the BMC's own LAN settings.
    Lan,
}

/// The answer of one operation (printed as JSON with `-o json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum BmcAnswer {
    /// Power state after the operation.
    Power {
        /// `on` or `off`.
        power: PowerState,
    },
    /// Boot override as read back.
    Boot {
        /// The override.
        boot: BootOverride,
    },
    /// FRU identity.
    Fru {
        /// The identity data.
        fru: FruInfo,
    },
    /// LAN settings.
    Lan {
        /// The settings.
        lan: LanConfig,
    },
}

impl BmcAnswer {
    /// One line for humans.
    pub fn render(&self) -> String {
        match self {
            BmcAnswer::Power { power } => format!(
                "power: {}",
                match power {
                    PowerState::On => "on",
                    PowerState::Off => "off",
                }
            ),
            BmcAnswer::Boot { boot } => format!(
                "boot: {}{}{}",
                boot.device,
                if boot.uefi { " (uefi)" } else { "" },
                if boot.persistent {
                    " persistent"
                } else {
                    " next boot only"
                }
            ),
            BmcAnswer::Fru { fru } => serde_json::to_string(fru).unwrap_or_default(),
            BmcAnswer::Lan { lan } => serde_json::to_string(lan).unwrap_or_default(),
        }
    }
}

/// Parses a boot device name as operators type it.
pub fn parse_boot_device(s: &str) -> Result<BootDevice, String> {
    match s {
        "pxe" | "network" => Ok(BootDevice::Pxe),
        "disk" | "hdd" => Ok(BootDevice::Disk),
        "cdrom" | "cd" => Ok(BootDevice::Cdrom),
        "bios" | "setup" => Ok(BootDevice::BiosSetup),
        "default" | "none" => Ok(BootDevice::Default),
        other => Err(format!(
            "unknown boot device {other:?} (pxe, disk, cdrom, bios, default)"
        )),
    }
}

/// Parses a power action name (`on`, `off`, `cycle`, `reset`, `soft`).
pub fn parse_power_action(s: &str) -> Result<PowerAction, String> {
    match s {
        "on" => Ok(PowerAction::On),
        "off" => Ok(PowerAction::Off),
        "cycle" => Ok(PowerAction::Cycle),
        "reset" => Ok(PowerAction::Reset),
        "soft" => Ok(PowerAction::SoftOff),
        other => Err(format!(
            "unknown power action {other:?} (on, off, cycle, reset, soft, status)"
        )),
    }
}

/// Runs `op` against the BMC at `access` with the agent config's `[bmc]` settings. Every
/// failed attempt is printed to stderr with the BMC's own message; the last error is returned.
pub async fn run(config: &Config, access: &BmcAccess, op: BmcOp) -> Result<BmcAnswer, BmcError> {
    let observer = Arc::new(StderrObserver::default());
    let registry = BmcRegistry::default();
    let bmc = connect_guarded(
        access,
        &config.bmc,
        &registry,
        observer.clone() as Arc<dyn BmcObserver>,
    )?;
    match op {
        BmcOp::PowerStatus => Ok(BmcAnswer::Power {
            power: bmc.power_status().await?,
        }),
        BmcOp::Power(action) => {
            bmc.power(action).await?;
            Ok(BmcAnswer::Power {
                power: bmc.power_status().await?,
            })
        }
        BmcOp::SetBoot(boot) => {
            bmc.set_boot(boot).await?;
            Ok(BmcAnswer::Boot {
                boot: bmc.boot_override().await?,
            })
        }
        BmcOp::BootStatus => Ok(BmcAnswer::Boot {
            boot: bmc.boot_override().await?,
        }),
        BmcOp::Fru => Ok(BmcAnswer::Fru {
            fru: bmc.fru().await?,
        }),
        BmcOp::Lan => Ok(BmcAnswer::Lan {
            lan: bmc.lan_config().await?,
        }),
    }
}

/// Builds the access record from command-line pieces; the password is taken from `password`
/// (the caller reads it from the environment).
pub fn access(
    driver: BmcDriver,
    address: &str,
    username: Option<String>,
    password: Option<String>,
) -> BmcAccess {
    BmcAccess {
        address: address.to_owned(),
        driver,
        username,
        password,
    }
}

/// Prints each failed attempt (retries included) as it happens.
#[derive(Debug, Default)]
struct StderrObserver {
    seen: CollectingObserver,
}

impl BmcObserver for StderrObserver {
    fn failure(&self, failure: &super::guard::BmcFailure) {
        eprintln!("{}", failure.log_line());
        self.seen.failure(failure);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sim_config() -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "rack = \"r1\"\ndata_dir = \"d\"\ncoordinators = []\n[bmc]\nsimulate = true\n",
        )
        .unwrap();
        Config::load(&path).unwrap()
    }

    #[tokio::test]
    async fn power_and_boot_through_the_simulator() {
        let config = sim_config();
        let a = access(BmcDriver::Ipmi, "10.0.0.9", Some("admin".into()), None);
        let on = run(&config, &a, BmcOp::Power(PowerAction::On))
            .await
            .unwrap();
        assert_eq!(
            on,
            BmcAnswer::Power {
                power: PowerState::On
            }
        );
        assert_eq!(on.render(), "power: on");
        let boot = BootOverride {
            device: BootDevice::Pxe,
            uefi: true,
            persistent: false,
        };
        let got = run(&config, &a, BmcOp::SetBoot(boot)).await.unwrap();
        assert_eq!(got, BmcAnswer::Boot { boot });
        assert_eq!(got.render(), "boot: pxe (uefi) next boot only");
    }

    #[test]
    fn names_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(parse_boot_device("pxe").unwrap(), BootDevice::Pxe);
        assert_eq!(parse_power_action("soft").unwrap(), PowerAction::SoftOff);
        assert!(parse_boot_device("floppy")
            .unwrap_err()
            .contains("pxe, disk"));
        assert!(parse_power_action("up").unwrap_err().contains("on, off"));
    }

    #[tokio::test]
    async fn an_empty_address_is_a_config_error() {
        let config = sim_config();
        let a = access(BmcDriver::Redfish, " ", None, None);
        let e = run(&config, &a, BmcOp::PowerStatus).await.unwrap_err();
        assert!(e.to_string().contains("empty BMC address"), "{e}");
    }
}
