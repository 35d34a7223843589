//! Real `rack-agent` processes beside a test [`Cluster`]: one [`Agent`] is one agent
//! directory (config, store, TLS files, control socket, log) and at most one `rack-agent run`
//! process at a time, started and SIGKILLed by PID.
//!
//! The agent's directory lives in the cluster's temporary directory, so it is kept with the
//! coordinators' logs when a test fails. Every process of an agent — `enroll`, `run`,
//! `status`, `nodes`, `emit` — appends its output to `<dir>/agent.log`; the `run` process is
//! killed when the [`Agent`] is dropped, and a failing test prints the log's tail.
//!
//! Status is read over the control socket (one JSON line per request and answer, as
//! `rack-agent/README.md` documents it) so polling does not spawn a process per poll;
//! [`Agent::status_cli`] goes through `rack-agent status -o json` instead, which also works
//! while the agent is stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::{bin_dir, log_files, poll, tail, Cluster, START_TIMEOUT};

/// Lines of the agent's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// Period of the agent's `Status` report and `Ping` (the config's minimum): the coordinators
/// learn the agent's revision and outbox depth within a second.
const STATUS_INTERVAL_SECS: u64 = 1;
/// Bound of one control socket exchange.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// The `rack-agent` binary (built with the coordinator; see the crate docs).
pub fn rack_agent_bin() -> Result<PathBuf> {
    Ok(bin_dir()?.join("rack-agent"))
}

/// How a short-lived `rack-agent` command ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Exit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// One rack agent: its directory and its `run` process, if started.
#[derive(Debug)]
pub struct Agent {
    label: String,
    dir: PathBuf,
    config: PathBuf,
    data_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    api_url: String,
    ca_path: PathBuf,
    coordinators: Vec<String>,
    rack: Mutex<String>,
    child: Mutex<Option<Child>>,
}

impl Agent {
    /// A new agent directory for `rack` in the cluster's temporary directory, with a config
    /// naming every member's fleet endpoint. Nothing is started or enrolled.
    pub fn new(cluster: &Cluster, rack: &str) -> Result<Agent> {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let label = format!("agent {n} ({rack})");
        let dir = cluster.dir().join(format!("a{n}"));
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let agent = Agent {
            label,
            config: dir.join("agent.toml"),
            socket: data_dir.join("agent.sock"),
            data_dir,
            log: dir.join("agent.log"),
            api_url: cluster.url(1),
            ca_path: cluster.ca_path().to_owned(),
            coordinators: cluster
                .ids()
                .into_iter()
                .map(|id| cluster.fleet_addr(id))
                .collect(),
            rack: Mutex::new(rack.to_owned()),
            child: Mutex::new(None),
            dir,
        };
        agent.write_config()?;
        Ok(agent)
    }

    fn write_config(&self) -> Result<()> {
        let rack = self.rack();
        let text = format!(
            "rack = {rack:?}\ndata_dir = {data:?}\ncoordinators = {coordinators:?}\n\
             status_interval_secs = {STATUS_INTERVAL_SECS}\n",
            data = self.data_dir.display().to_string(),
            coordinators = self.coordinators,
        );
        std::fs::write(&self.config, text)
            .with_context(|| format!("writing {}", self.config.display()))
    }

    /// The rack the config names.
    pub fn rack(&self) -> String {
        self.rack.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Rewrites the config to serve `rack` (the certificate and store stay as they are);
    /// a running agent notices only when started again.
    pub fn set_rack(&self, rack: &str) -> Result<()> {
        *self
            .rack
            .lock()
            .map_err(|_| anyhow!("rack lock poisoned"))? = rack.to_owned();
        self.write_config()
    }

    /// The agent's directory (config, log, `data/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The data directory (store, `tls/`, control socket).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file of all the agent's processes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log's text (whole file).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether an agent certificate is on disk.
    pub fn has_certificate(&self) -> bool {
        self.data_dir.join("tls").join("agent.crt").is_file()
    }

    /// Runs `rack-agent <args> --config <config>` to completion; output is returned and
    /// appended to the log.
    async fn run_cli(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Exit> {
        let what = format!("rack-agent {}", args.join(" "));
        let (mut log, _) = log_files(&self.log, &what)?;
        let mut cmd = tokio::process::Command::new(rack_agent_bin()?);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .env_remove("RACK_AGENT_CONFIG")
            .env_remove("METALFLEET_ENROLL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .await
            .with_context(|| format!("running {what}"))?;
        let exit = Exit {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        {
            use std::io::Write as _;
            let _ = writeln!(
                log,
                "{}{}----- exit {:?}",
                exit.stdout, exit.stderr, exit.code
            );
        }
        Ok(exit)
    }

    /// `rack-agent enroll` against member 1's API with the cluster CA; the token goes through
    /// the environment. Returns however it ended.
    pub async fn try_enroll(&self, token: &str) -> Result<Exit> {
        self.try_enroll_via(&self.api_url, token, false).await
    }

    /// `rack-agent enroll` against `api_url` (`https://…`), with `--force` if asked.
    pub async fn try_enroll_via(&self, api_url: &str, token: &str, force: bool) -> Result<Exit> {
        let ca = self.ca_path.display().to_string();
        let mut args = vec!["enroll", "--api", api_url, "--ca-cert", &ca];
        if force {
            args.push("--force");
        }
        self.run_cli(&args, &[("METALFLEET_ENROLL_TOKEN", token)])
            .await
    }

    /// Enrolls with `token`, failing with the command's output unless it succeeds.
    pub async fn enroll(&self, token: &str) -> Result<()> {
        let exit = self.try_enroll(token).await?;
        if !exit.success() {
            bail!(
                "{}: enroll failed ({:?}):\n{}{}",
                self.label,
                exit.code,
                exit.stdout,
                exit.stderr
            );
        }
        Ok(())
    }

    /// Starts `rack-agent run` (output appended to the log). Fails if it already runs.
    pub fn spawn(&self) -> Result<()> {
        let mut slot = self
            .child
            .lock()
            .map_err(|_| anyhow!("child lock poisoned"))?;
        if slot.is_some() {
            bail!("{} is already running", self.label);
        }
        let (out, err) = log_files(&self.log, "rack-agent run")?;
        let child = Command::new(rack_agent_bin()?)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .env_remove("RACK_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning rack-agent run for {}", self.label))?;
        *slot = Some(child);
        Ok(())
    }

    /// [`Agent::spawn`], then waits until the control socket answers.
    pub async fn start(&self) -> Result<()> {
        self.spawn()?;
        self.wait_running().await
    }

    /// PID of the `run` process, if started.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(Child::id))
    }

    /// Fails if the `run` process was started and has exited (reaping it).
    fn check_alive(&self) -> Result<()> {
        let mut slot = self
            .child
            .lock()
            .map_err(|_| anyhow!("child lock poisoned"))?;
        match slot.as_mut().map(Child::try_wait) {
            None => bail!("{} is not running", self.label),
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => {
                *slot = None;
                bail!(
                    "{} exited with {status}; log:\n{}",
                    self.label,
                    tail(&self.log, LOG_TAIL_LINES)
                )
            }
            Some(Err(e)) => bail!("{}: {e}", self.label),
        }
    }

    /// Waits until the running agent answers `{"op":"status"}`; fails early if it exited.
    pub async fn wait_running(&self) -> Result<()> {
        poll(
            START_TIMEOUT,
            &format!("{} to answer", self.label),
            || async {
                if let Err(e) = self.check_alive() {
                    return Some(Err(e));
                }
                match self.status().await {
                    Ok(s) if s["agent_running"] == true => Some(Ok(())),
                    _ => None,
                }
            },
        )
        .await?
    }

    /// SIGKILLs the `run` process (by PID) and reaps it. No-op if it is not running.
    pub fn kill(&self) -> Result<()> {
        let mut slot = self
            .child
            .lock()
            .map_err(|_| anyhow!("child lock poisoned"))?;
        if let Some(mut child) = slot.take() {
            // An error means it already exited; `wait` reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("reaping {}", self.label))?;
            // A header line in the log marks where the process was killed.
            let _ = log_files(&self.log, "rack-agent run SIGKILLed by the test");
        }
        Ok(())
    }

    /// One request over the control socket (a JSON line); returns the answer, failing on
    /// `"ok": false`.
    pub async fn request(&self, request: &Value) -> Result<Value> {
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .with_context(|| format!("connecting to {}", self.socket.display()))?;
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_vec(request)?;
            line.push(b'\n');
            write.write_all(&line).await?;
            let mut answer = String::new();
            BufReader::new(read).read_line(&mut answer).await?;
            let answer: Value = serde_json::from_str(&answer)
                .with_context(|| format!("unreadable control answer {answer:?}"))?;
            if answer["ok"] != true {
                bail!("{}: control request refused: {answer}", self.label);
            }
            Ok(answer)
        };
        tokio::time::timeout(CONTROL_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{}: no control answer in {CONTROL_TIMEOUT:?}", self.label))?
    }

    /// The running agent's status view (`{"op":"status"}`).
    pub async fn status(&self) -> Result<Value> {
        let mut answer = self.request(&json!({"op": "status"})).await?;
        Ok(answer["status"].take())
    }

    /// `rack-agent status -o json` (read from the store when the agent is not running).
    pub async fn status_cli(&self) -> Result<Value> {
        let exit = self.run_cli(&["status", "-o", "json"], &[]).await?;
        if !exit.success() {
            bail!("{}: status failed: {}", self.label, exit.stderr);
        }
        serde_json::from_str(&exit.stdout).context("parsing rack-agent status -o json")
    }

    /// `rack-agent nodes`: the stored nodes (JSON array).
    pub async fn nodes(&self) -> Result<Value> {
        let exit = self.run_cli(&["nodes"], &[]).await?;
        if !exit.success() {
            bail!("{}: nodes failed: {}", self.label, exit.stderr);
        }
        serde_json::from_str(&exit.stdout).context("parsing rack-agent nodes")
    }

    /// `rack-agent emit --checkins n --serial-prefix prefix` (through the running agent, or
    /// straight into the store when it is stopped); returns its stdout.
    pub async fn emit_checkins(&self, n: u32, prefix: &str) -> Result<String> {
        let n = n.to_string();
        let exit = self
            .run_cli(&["emit", "--checkins", &n, "--serial-prefix", prefix], &[])
            .await?;
        if !exit.success() {
            bail!("{}: emit failed: {}", self.label, exit.stderr);
        }
        Ok(exit.stdout)
    }

    /// Enqueues `events` (`EventKind` JSON) through the running agent's control socket;
    /// returns their sequence numbers.
    pub async fn emit(&self, events: &[Value]) -> Result<Vec<u64>> {
        let answer = self
            .request(&json!({"op": "emit", "events": events}))
            .await?;
        serde_json::from_value(answer["seqs"].clone()).context("emit answer without seqs")
    }

    /// Polls the running agent's status until `cond` holds; returns that status. Fails
    /// early if the agent exited, and with the last status seen on timeout.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let last = Mutex::new(Value::Null);
        let found = poll(timeout, &format!("{}: {what}", self.label), || async {
            if let Err(e) = self.check_alive() {
                return Some(Err(e));
            }
            let s = self.status().await.ok()?;
            if cond(&s) {
                return Some(Ok(s));
            }
            if let Ok(mut l) = last.lock() {
                *l = s;
            }
            None
        })
        .await;
        match found {
            Ok(r) => r,
            Err(e) => {
                let last = last.lock().map(|l| l.clone()).unwrap_or_default();
                Err(e.context(format!("last status: {last}")))
            }
        }
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.child.lock() {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} ({}) -----\n{}",
                self.label,
                self.log.display(),
                tail(&self.log, LOG_TAIL_LINES)
            );
        }
    }
}
