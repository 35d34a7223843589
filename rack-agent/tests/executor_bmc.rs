//! `bmc.configure` and `bmc.validate` against a real BMC: ipmi_sim driven by the real
//! `ipmitool`. The node-agent (the real loop, in-process) runs `bmc.configure`'s ipmitool
//! commands; in the lab the microkernel has no KCS device, so the step's `ipmitool` program
//! is a wrapper that reaches the same BMC over LAN (a vendor tool with ipmitool's interface
//! is what the field is for). `bmc.validate` then reaches the BMC from the agent through the
//! agent's own guarded IPMI driver and its `[bmc]` config.

#![allow(clippy::unwrap_used)]

mod bmc_support;
mod executor_support;

use std::path::PathBuf;
use std::sync::Arc;

use bmc_support::{IpmiSim, IPMI_PASSWORD, IPMI_USER};
use executor_support::*;
use protocol::domain::BmcDriver;
use protocol::fleet::BmcAccess;
use protocol::workflow::*;
use rack_agent::bmc::{BmcConfig, BmcRegistry};
use rack_agent::boot::{CollectingSink, ConfigCtx};
use rack_agent::executor::GuardedConnector;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_configure_through_the_node_then_validate_from_the_agent() {
    let mut node = rack_node(11);
    let mut lab = Lab::new(vec![]);
    let sim = IpmiSim::start(&lab.path("ipmi"), &[]);
    node.bmc = Some(BmcAccess {
        address: sim.address(),
        driver: BmcDriver::Ipmi,
        username: Some(IPMI_USER.into()),
        password: Some(IPMI_PASSWORD.into()),
    });
    lab.nodes = vec![node.clone()];
    lab.directory.upsert(node.clone());
    let text = format!(
        "timeout_secs = 10\nretries = 1\nbackoff_ms = 50\n\
         [[overrides]]\naddress = \"{}\"\nipmi_cipher_suite = 3\n",
        sim.address()
    );
    let ctx = ConfigCtx {
        base_dir: PathBuf::from("/"),
        data_dir: PathBuf::from("/"),
    };
    let config = BmcConfig::from_toml(toml::from_str(&text).unwrap(), &ctx).unwrap();
    lab.connector = Some(Arc::new(GuardedConnector {
        config,
        registry: Arc::new(BmcRegistry::default()),
        events: Arc::new(CollectingSink::default()),
    }));
    let wrapper = lab.path("bin/ipmitool-lan");
    write(
        &wrapper,
        &format!(
            "#!/bin/sh\nIPMI_PASSWORD='{IPMI_PASSWORD}' exec ipmitool -I lanplus -H 127.0.0.1 -p {} -U {IPMI_USER} -E -C 3 \"$@\"\n",
            sim.port
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let ex = lab.start().await;
    lab.boot_machine(0);
    lab.checked_in(&ex, 0).await;
    let p = plan(vec![
        step(
            "configure",
            StepKind::BmcConfigure(BmcConfigure {
                address: Some("10.20.0.11".into()),
                netmask: Some("255.255.255.0".into()),
                gateway: Some("10.20.0.1".into()),
                credentials: CredentialSource::Given {
                    username: IPMI_USER.into(),
                    password: IPMI_PASSWORD.into(),
                },
                channel: 1,
                user_id: 2,
                ipmitool: wrapper.display().to_string(),
            }),
        ),
        step(
            "validate",
            StepKind::BmcValidate(BmcValidate {
                driver: None,
                // The lab BMC keeps answering on loopback whatever LAN address it holds.
                address: Some(sim.address()),
            }),
        ),
    ]);
    ex.submit("cfg", node.id, p).unwrap();
    let st = lab.finished(&ex, "cfg").await;
    let facts = ex.facts(node.id).unwrap();
    assert_eq!(st.state, RunState::Succeeded, "{st:#?}\n{facts:#}");
    // The LAN settings were re-read from the BMC into the facts.
    assert_eq!(facts["bmc"]["lan"]["IP Address"], "10.20.0.11", "{facts:#}");
    assert_eq!(facts["bmc"]["lan"]["Subnet Mask"], "255.255.255.0");
    assert_eq!(facts["bmc"]["lan"]["Default Gateway IP"], "10.20.0.1");
    assert_eq!(facts["bmc"]["validated"]["address"], sim.address());
    assert!(facts["bmc"]["validated"]["power"].is_string());
    // And the BMC really holds them.
    let lan = sim.ipmitool(&["lan", "print", "1"]);
    assert!(lan.contains("10.20.0.11"), "{lan}");
}
