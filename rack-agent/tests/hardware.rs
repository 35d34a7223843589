//! A running agent exposes its hardware handles — the node API's action queue, the BMC
//! registry, the configured switch drivers — and their counters at `/metrics`.

#![allow(clippy::unwrap_used)]

mod common;

use rack_agent::agent::Agent;
use rack_agent::switch::{PortConfig, PortMode, Vlan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_exposes_node_actions_bmcs_and_switches() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        &[],
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[[switches]]\nname = \"tor1\"\ndriver = \"sim\"\nports = [\"p1\", \"p2\"]\n",
    );
    let agent = Agent::start(config).await.unwrap();
    let hw = agent.hardware().clone();
    assert!(hw.node_actions.is_some());
    let tor1 = hw.switches.get("tor1").unwrap().clone();
    let vlan = Vlan::new(100).unwrap();
    let applied = tor1
        .apply(&[PortConfig {
            port: "p1".into(),
            mode: PortMode::Access { vlan },
        }])
        .await
        .unwrap();
    assert_eq!(applied[0].mode, PortMode::Access { vlan });
    assert_eq!(
        tor1.read_port("p1").await.unwrap().mode,
        PortMode::Access { vlan }
    );

    // Their counters are served with the boot services'.
    let url = format!("http://{}/metrics", agent.http_addr().unwrap());
    let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("metalfleet_switch_applies_total{switch=\"tor1\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metalfleet_bmc_operations_total"),
        "{metrics}"
    );

    agent.shutdown().await;
}
