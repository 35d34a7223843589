//! The leader's lease driver: starts and ends elastic leases when their windows open and close.
//!
//! Which leases are due is a pure function of the state and the wall clock ([`due`]); the
//! loop in [`spawn`] proposes a [`TenancyCommand::LeaseTick`] for each. The proposal carries
//! the proposer's time, and apply checks the window against that time, not against a clock
//! of its own, so replicas agree and a late tick cannot flip a lease the wrong way. Everything
//! after the tick (power off, ports reverted, reassignment) advances inside apply as the rack
//! agent reports, so a leader change in the middle loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use protocol::domain::{CoordinatorAddr, UnixMillis};
use protocol::tenancy::{LeaseId, LeaseState};

use crate::app::{now_ms, App};
use crate::state::tenancy::TenancyCommand;
use crate::state::{Command, State};

/// How often the leader looks at the lease windows.
pub const TICK: Duration = Duration::from_millis(500);
/// Wait before proposing the same transition of a lease again (its hand-over failed, or the
/// tick was refused).
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// A lease transition to propose: the lease, and whether its window is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Due {
    /// The lease.
    pub lease: LeaseId,
    /// True: hand the node to the borrower; false: take it back (or end the lease).
    pub open: bool,
}

/// The lease transitions due at wall-clock time `now`.
pub fn due(state: &State, now: UnixMillis) -> Vec<Due> {
    state
        .tenancy
        .leases
        .values()
        .filter(|l| l.job.is_none())
        .filter_map(|l| {
            let open = l.window.open_at(now) && !l.cancelled;
            let go = match (l.state, open) {
                (LeaseState::Away, true) | (LeaseState::Active, false) => true,
                (LeaseState::Away, false) => l.cancelled || l.window.over_at(now),
                _ => false,
            };
            go.then_some(Due { lease: l.id, open })
        })
        .collect()
}

/// Starts the driver. It holds only a weak reference to the app and ends when the app is
/// dropped or its Raft member stops.
pub fn spawn(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    let metrics = app.raft.metrics();
    tokio::spawn(run(weak, metrics));
}

async fn run(
    weak: Weak<App>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, CoordinatorAddr>>,
) {
    let mut tried: HashMap<Due, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        if metrics.has_changed().is_err() {
            return; // Raft is gone.
        }
        let Some(app) = weak.upgrade() else { return };
        if !leads(&app) {
            tried.clear();
            continue;
        }
        let now = now_ms();
        let todo = match app.state.read() {
            Ok(g) => due(&g.state, now),
            Err(_) => {
                tracing::error!("state lock poisoned; lease driver stops");
                return;
            }
        };
        tried.retain(|d, at| todo.contains(d) && at.elapsed() < RETRY_AFTER);
        for d in todo {
            if tried.contains_key(&d) {
                continue;
            }
            tried.insert(d, Instant::now());
            let cmd = Command::Tenancy(TenancyCommand::LeaseTick {
                lease: d.lease,
                open: d.open,
            });
            // Unkeyed: apply refuses a tick that finds nothing to do, so a tick proposed twice
            // (two leaders across an election) changes the lease once.
            match app
                .write_unkeyed(format!("coordinator:{}", app.config.id), cmd)
                .await
            {
                Ok(r) => match r.result {
                    Ok(_) => tracing::info!(lease = d.lease, open = d.open, "lease window tick"),
                    Err(refusal) => {
                        tracing::info!(lease = d.lease, open = d.open, %refusal, "lease tick refused")
                    }
                },
                Err(e) => tracing::warn!(lease = d.lease, error = %e, "cannot propose lease tick"),
            }
        }
    }
}

fn leads(app: &App) -> bool {
    let m = app.raft.metrics().borrow().clone();
    m.current_leader == Some(app.config.id) && m.running_state.is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use protocol::tenancy::{Lease, LeaseWindow};

    use super::*;

    fn lease(id: LeaseId, state: LeaseState, window: LeaseWindow) -> Lease {
        Lease {
            id,
            node: protocol::NodeId(uuid::Uuid::from_u128(1)),
            project: "b".parse().unwrap(),
            owner: Some("a".parse().unwrap()),
            window,
            state,
            job: None,
            cancelled: false,
            actor: "user:x".into(),
            created_at: 0,
            revision: id,
        }
    }

    #[test]
    fn due_follows_the_windows() {
        let once = LeaseWindow::Once {
            from: 1000,
            until: 2000,
        };
        let mut s = State::default();
        s.tenancy
            .leases
            .insert(1, lease(1, LeaseState::Away, once.clone()));
        s.tenancy
            .leases
            .insert(2, lease(2, LeaseState::Active, once.clone()));
        let mut busy = lease(3, LeaseState::Starting, once.clone());
        busy.job = Some(9);
        s.tenancy.leases.insert(3, busy);
        s.tenancy
            .leases
            .insert(4, lease(4, LeaseState::Ended, once));
        assert_eq!(
            due(&s, 500),
            vec![Due {
                lease: 2,
                open: false
            }]
        );
        assert_eq!(
            due(&s, 1500),
            vec![Due {
                lease: 1,
                open: true
            }]
        );
        // After a one-time window: the active lease ends, the away one is over.
        assert_eq!(
            due(&s, 2000),
            vec![
                Due {
                    lease: 1,
                    open: false
                },
                Due {
                    lease: 2,
                    open: false
                }
            ]
        );
        let mut c = lease(
            5,
            LeaseState::Away,
            LeaseWindow::Daily {
                start: "00:00".into(),
                end: "23:59".into(),
                tz: "UTC".into(),
            },
        );
        c.cancelled = true;
        let mut s = State::default();
        s.tenancy.leases.insert(5, c);
        assert_eq!(
            due(&s, 60_000),
            vec![Due {
                lease: 5,
                open: false
            }]
        );
    }
}
