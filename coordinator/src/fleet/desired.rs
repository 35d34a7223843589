//! A rack's slice of the desired state, as its agent holds it: the snapshot at a revision
//! and the deltas since one — nodes (with their power intents), switch-port intents and
//! workflow runs. Pure functions of [`State`]; BMC passwords are opened here, for the one
//! rack whose link asks.

use protocol::domain::Node;
use protocol::fleet::{BmcAccess, Delta, RackDesiredState, RackNode};
use protocol::{RackId, Revision};

use crate::api::bmc_context;
use crate::secrets::SealingKey;
use crate::state::State;

/// Revision at which the agent's view of `node` last changed (node or its inventory record).
fn view_revision(state: &State, node: &Node) -> Revision {
    let inv = state
        .inventory
        .get(&node.serial)
        .map(|i| i.revision)
        .unwrap_or(0);
    node.revision.max(inv)
}

/// The agent's view of one node.
pub fn rack_node(state: &State, key: &SealingKey, node: &Node) -> RackNode {
    let inv = state.inventory.get(&node.serial);
    let bmc = inv.and_then(|i| i.bmc.as_ref()).map(|b| {
        let password = b.credentials.as_ref().and_then(|c| {
            match key.open(&bmc_context(&node.serial), &c.password) {
                Ok(p) => String::from_utf8(p).ok(),
                Err(e) => {
                    tracing::warn!(serial = %node.serial, error = %e, "cannot open BMC password");
                    None
                }
            }
        });
        BmcAccess {
            address: b.address.clone(),
            driver: b.driver,
            username: b.credentials.as_ref().map(|c| c.username.clone()),
            password,
        }
    });
    RackNode {
        id: node.id,
        serial: node.serial.clone(),
        macs: node.macs.clone(),
        boot_target: node.boot_target.clone(),
        static_ips: inv.map(|i| i.static_ips.clone()).unwrap_or_default(),
        switch_ports: inv.map(|i| i.nics.clone()).unwrap_or_default(),
        bmc,
        revision: view_revision(state, node),
        power: state.power_intent(node.id),
    }
}

/// The whole desired state of `rack` at `revision`.
pub fn snapshot(
    state: &State,
    key: &SealingKey,
    rack: &RackId,
    revision: Revision,
) -> RackDesiredState {
    let nodes = state
        .rack_node_ids(rack)
        .filter_map(|id| state.nodes.get(id))
        .map(|n| rack_node(state, key, n))
        .collect();
    RackDesiredState {
        revision,
        nodes,
        ports: state.port_intents(rack),
        runs: state
            .runs
            .rack_runs(rack)
            .map(crate::state::runs::Run::assignment)
            .collect(),
    }
}

/// What changed in `rack` after revision `since`: nodes whose view changed, nodes that left
/// the rack, and switch-port intents that changed.
pub fn deltas_since(state: &State, key: &SealingKey, rack: &RackId, since: Revision) -> Vec<Delta> {
    let mut out: Vec<Delta> = state
        .rack_node_ids(rack)
        .filter_map(|id| state.nodes.get(id))
        .filter(|n| view_revision(state, n) > since)
        .map(|n| Delta::UpsertNode(rack_node(state, key, n)))
        .collect();
    out.extend(
        state
            .departures
            .range((rack.clone(), protocol::NodeId(uuid::Uuid::nil()))..)
            .take_while(|((r, _), _)| r == rack)
            .filter(|(_, rev)| **rev > since)
            .map(|((_, id), _)| Delta::RemoveNode(*id)),
    );
    out.extend(
        state
            .port_intents_since(rack, since)
            .into_iter()
            .map(Delta::UpsertPort),
    );
    // Workflow runs: assigned or changed (control), or ended and recorded (the agent may
    // forget them).
    out.extend(
        state
            .runs
            .rack_runs_since(rack, since)
            .map(|r| match r.removed_at {
                Some(_) => Delta::RemoveRun(r.id.clone()),
                None => Delta::UpsertRun(r.assignment()),
            }),
    );
    out
}
