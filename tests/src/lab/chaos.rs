//! Faults the lab can inject into its own control plane while VMs work (issue 6's chaos
//! tests): SIGKILL one rack's agent and start it again on the same config and data
//! directory, stop every coordinator and start them again on the same data directories (they
//! come back as the same Raft cluster). Restarted processes are spawned like the first ones
//! — detached, logged to the same `logs/<name>.log`, recorded in `<dir>/pids` — so
//! [`Lab::down`] stops them by PID as it stops everything else.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::sys::{self, ns_ok, wait_for, TERM_GRACE, TICK};
use super::{Lab, LabError, Result, START_TIMEOUT};

/// How long restarted coordinators may take to elect a leader and let every agent back in.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(120);

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| LabError::Io {
            what: format!("kill {sig} {pid}"),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(LabError::Other(format!("kill {sig} {pid}: {status}")))
    }
}

impl Lab {
    /// The running recorded process named `what` (`agent-<rack>`, `coordinator-<i>`): its
    /// newest record whose start time still matches.
    fn recorded_pid(&self, what: &str) -> Option<u32> {
        sys::recorded(&self.dir.join("pids"))
            .into_iter()
            .rev()
            .find(|r| r.what == what && r.running())
            .map(|r| r.pid)
    }

    /// Waits until `pid` has exited (a zombie counts as exited) and collects its exit status
    /// when it is our own child, so it does not linger as a zombie until teardown.
    fn wait_exit(&self, pid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(mut children) = self.children.lock() {
                if let Some(i) = children.iter().position(|c| c.id() == pid) {
                    if matches!(children[i].try_wait(), Ok(Some(_)) | Err(_)) {
                        // Reaped by try_wait; wait() only returns the kept status.
                        let _ = children.swap_remove(i).wait();
                    }
                }
            }
            if !sys::alive(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(TICK);
        }
    }

    /// SIGKILLs `rack`'s agent — no shutdown, no flush: whatever it had not committed is
    /// lost, as in a crash. Returns the PID it had. Processes the agent started (a playbook
    /// run, ipmitool) are left running, as a crash leaves them.
    pub fn kill_agent(&self, rack: &str) -> Result<u32> {
        self.rack(rack)?;
        let what = format!("agent-{rack}");
        let pid = self
            .recorded_pid(&what)
            .ok_or_else(|| LabError::Other(format!("{what} is not running")))?;
        signal(pid, "-KILL")?;
        if !self.wait_exit(pid, TERM_GRACE) {
            return Err(LabError::Other(format!("{what} ({pid}) survived SIGKILL")));
        }
        Ok(pid)
    }

    /// Starts `rack`'s agent again on its config and data directory (no re-enrollment: its
    /// certificate is on disk) and waits until it answers on its control socket and its link
    /// to the coordinators is up again.
    pub fn start_agent(&self, rack: &str) -> Result<()> {
        let r = self.rack(rack)?;
        let what = format!("agent-{rack}");
        if let Some(pid) = self.recorded_pid(&what) {
            return Err(LabError::Other(format!(
                "{what} is already running ({pid})"
            )));
        }
        let agent_bin = self.bins.join("rack-agent").display().to_string();
        let cfg = self.rack_dir(r).join("agent.toml").display().to_string();
        self.spawn(
            &self.config.rack_ns(r),
            &what,
            &[&agent_bin, "run", "--config", &cfg],
            &[("RUST_LOG", "info".into()), ("NO_COLOR", "1".into())],
        )?;
        // The socket file of the killed agent is still there: ready means it accepts again.
        let sock = self.rack_dir(r).join("agent/agent.sock");
        wait_for(START_TIMEOUT, &format!("{what} to start again"), || {
            if self.recorded_pid(&what).is_none() {
                return Err(LabError::Other(format!(
                    "{what} exited after the restart; see {}",
                    self.log(&what).display()
                )));
            }
            Ok(std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(|_| ()))
        })?;
        wait_for(RECONNECT_TIMEOUT, &format!("{what} to reconnect"), || {
            Ok(self.agent_connected(rack)?.then_some(()))
        })
    }

    /// Whether the coordinators see `rack`'s agent connected.
    pub fn agent_connected(&self, rack: &str) -> Result<bool> {
        let racks = self.metalctl_json(&["rack", "list"])?;
        Ok(racks.as_array().is_some_and(|a| {
            a.iter().any(|r| {
                r["name"] == rack && r.pointer("/agent/connected") == Some(&Value::Bool(true))
            })
        }))
    }

    /// Stops every coordinator (SIGTERM, SIGKILL after [`TERM_GRACE`]) and waits until all
    /// have exited. Their data directories stay as they are.
    pub fn stop_coordinators(&self) -> Result<()> {
        let pids: Vec<(u8, u32)> = (1..=self.config.coordinators)
            .filter_map(|i| {
                self.recorded_pid(&format!("coordinator-{i}"))
                    .map(|p| (i, p))
            })
            .collect();
        for (_, pid) in &pids {
            signal(*pid, "-TERM")?;
        }
        for (i, pid) in pids {
            if !self.wait_exit(pid, TERM_GRACE) {
                // Already gone between the check and the signal is fine.
                let _ = signal(pid, "-KILL");
                if !self.wait_exit(pid, TERM_GRACE) {
                    return Err(LabError::Other(format!(
                        "coordinator-{i} ({pid}) survived SIGKILL"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Starts every coordinator again on its config and data directory (the same Raft
    /// members, log and state), waits until each answers `/readyz` (a leader is known), the
    /// cluster serves linearizable reads, and every rack agent is connected again.
    pub fn start_coordinators(&self) -> Result<()> {
        let core = self.core_ns();
        let bin = self.coordinator_bin();
        for i in 1..=self.config.coordinators {
            let what = format!("coordinator-{i}");
            if let Some(pid) = self.recorded_pid(&what) {
                return Err(LabError::Other(format!(
                    "{what} is already running ({pid})"
                )));
            }
            let cfg = self
                .coord_dir(i)
                .join("coordinator.toml")
                .display()
                .to_string();
            self.spawn(
                &core,
                &what,
                &[&bin, "run", "-c", &cfg],
                &[("NO_COLOR", "1".into())],
            )?;
        }
        let ca = self.ca_cert().display().to_string();
        for i in 1..=self.config.coordinators {
            let url = format!("{}/readyz", self.config.api_url(i));
            wait_for(
                RECONNECT_TIMEOUT,
                &format!("coordinator {i} to know a leader again"),
                || {
                    Ok(
                        ns_ok(&core, &["curl", "-sf", "-m", "2", "--cacert", &ca, &url])
                            .then_some(()),
                    )
                },
            )?;
        }
        wait_for(
            RECONNECT_TIMEOUT,
            "every rack agent to reconnect to the restarted coordinators",
            || {
                let racks = match self.metalctl_json(&["rack", "list"]) {
                    Ok(v) => v,
                    // A leader known is not yet a leader serving reads: try again.
                    Err(LabError::Command { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let connected = racks.as_array().map_or(0, |a| {
                    a.iter()
                        .filter(|r| r.pointer("/agent/connected") == Some(&Value::Bool(true)))
                        .count()
                });
                Ok((connected == self.config.racks.len()).then_some(()))
            },
        )
    }
}
