//! The process ring of the test rings (STYLE.md habit 10): real `coordinator` processes on
//! loopback, started, joined, killed and restarted by PID, with helpers to talk to their
//! REST API and to poll for conditions instead of sleeping.
//!
//! # Finding the binary
//!
//! Cargo builds a crate's binaries only for that crate's own integration tests, so this crate
//! locates `coordinator` and `rack-agent` itself:
//!
//! * `METALFLEET_BIN_DIR` set: the binaries are taken from that directory as is (nothing is
//!   built; use this to test a release build or binaries built elsewhere).
//! * otherwise: `<target dir>/<profile>/{coordinator,rack-agent}`, where the target dir is
//!   `CARGO_TARGET_DIR` or `<workspace>/target` and the profile is `debug` (`release` when
//!   the tests were built without debug assertions). The harness runs
//!   `cargo build -p coordinator -p rack-agent --bins` once per test process (guarded by a
//!   `OnceLock`) before the first process starts — always, not only when a file is missing,
//!   because `cargo test -p metalfleet-tests` rebuilds the *libraries* but never their
//!   binaries, and a stale binary would silently test old code. When nothing changed the
//!   build is a no-op that takes well under a second.
//!
//! # Processes
//!
//! Every process the harness starts is a child it keeps and stops by PID: `init` and `join`
//! run to completion; each `run` is killed with SIGKILL by [`Cluster::kill`] or when the
//! [`Cluster`] is dropped, also while a test panics. Output of every process of a member
//! (stdout and stderr, across restarts) is appended to `<tmp>/m<id>.log`; when a test fails
//! the tail of every log is printed and the temporary directory is kept for inspection (set
//! `METALFLEET_KEEP=1` to keep it after passing tests too).
//! (Only a SIGKILL of the test process itself can orphan coordinators: that needs
//! `PR_SET_PDEATHSIG`, i.e. `unsafe`, which the workspace forbids.)
//!
//! # Ports
//!
//! Ports are picked by binding TCP (API) and UDP (Raft) on 127.0.0.1 and dropping the
//! sockets, but below the kernel's ephemeral range (`ip_local_port_range`) when there is
//! room: a member that is SIGKILLed and restarted must get its ports back, and a port from
//! the ephemeral range can meanwhile be taken as the source port of any outgoing connection
//! on the machine.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use coordinator::app::ClusterStatus;
use rand::Rng as _;
pub use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub mod agent;
pub mod lab;

/// How long a process may take to come up (API answering `/healthz`).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval of every wait in the harness.
pub const POLL: Duration = Duration::from_millis(25);
/// Lines of each member's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Polls `cond` until it yields `Some`, every [`POLL`]; fails naming `what` after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` until it holds, every [`POLL`]; fails naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(timeout, what, || {
        let f = cond();
        async move { f.await.then_some(()) }
    })
    .await
}

/// Directory holding the `coordinator` and `rack-agent` binaries (see the module docs).
pub fn bin_dir() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    if let Some(dir) = std::env::var_os("METALFLEET_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    BUILT
        .get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Packages whose binaries the harness runs.
const BIN_PACKAGES: [&str; 2] = ["coordinator", "rack-agent"];

fn build_binaries() -> Result<PathBuf> {
    let workspace = workspace_dir();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace).args(["build", "--quiet"]);
    for package in BIN_PACKAGES {
        cmd.args(["-p", package]);
    }
    cmd.arg("--bins");
    if release {
        cmd.arg("--release");
    }
    let started = Instant::now();
    let out = cmd
        .output()
        .context("running cargo build -p coordinator -p rack-agent --bins")?;
    eprintln!(
        "metalfleet-tests: cargo build -p coordinator -p rack-agent --bins took {:.1?}",
        started.elapsed()
    );
    if !out.status.success() {
        bail!(
            "cargo build -p coordinator -p rack-agent --bins failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = target.join(if release { "release" } else { "debug" });
    for bin in BIN_PACKAGES {
        if !dir.join(bin).is_file() {
            bail!("{} missing after cargo build", dir.join(bin).display());
        }
    }
    Ok(dir)
}

fn coordinator_bin() -> Result<PathBuf> {
    Ok(bin_dir()?.join("coordinator"))
}

/// Hands out ports nobody in this process was given before and that are free for TCP and
/// UDP right now.
fn free_port() -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|x| x.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = if ephemeral_lo > 12_000 {
            rng.gen_range(10_000..ephemeral_lo)
        } else {
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        };
        let mut given = GIVEN.lock().map_err(|_| anyhow!("port set poisoned"))?;
        if given.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port found")
}

/// Options of a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of coordinators (voters).
    pub members: u64,
    /// `max_body_bytes` of every member, if not the default.
    pub max_body_bytes: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            members: 1,
            max_body_bytes: None,
        }
    }
}

/// One coordinator of a test cluster.
#[derive(Debug)]
struct Member {
    id: u64,
    config: PathBuf,
    data_dir: PathBuf,
    api_url: String,
    raft_addr: String,
    fleet_addr: String,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A cluster of real `coordinator` processes in a temporary directory.
#[derive(Debug)]
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    members: Vec<Member>,
    admin_token: String,
    ca_path: PathBuf,
    client: reqwest::Client,
}

/// An HTTP answer: status and JSON body (`Null` when empty, a string when not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Value,
}

impl Resp {
    async fn read(r: reqwest::Response) -> Result<Resp> {
        let status = r.status();
        let text = r.text().await.context("reading response body")?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Resp { status, body })
    }

    /// The error body's `code`.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// The error body's `field`.
    pub fn field(&self) -> Option<&str> {
        self.body.get("field").and_then(Value::as_str)
    }

    /// The body if the status is 2xx, an error naming status and body otherwise.
    pub fn ok(self) -> Result<Value> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(anyhow!("HTTP {}: {}", self.status, self.body))
        }
    }
}

/// A client bound to one member and one bearer token (or none).
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// The same member with another token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// Creates user `name` with `role` (in `project`, for project roles) and a token for it;
    /// returns the API as that user and the token's secret.
    pub async fn create_user(
        &self,
        name: &str,
        role: &str,
        project: Option<&str>,
    ) -> Result<(Api, String)> {
        let mut u = serde_json::json!({"name": name, "role": role});
        if let Some(p) = project {
            u["project"] = serde_json::json!(p);
        }
        self.put(&format!("/v1/users/{name}"), &u).await?.ok()?;
        let t = self
            .post("/v1/tokens", &serde_json::json!({"user": name}))
            .await?
            .ok()?;
        let secret = t["secret"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("token answer without a secret: {t}"))?
            .to_owned();
        Ok((self.with_token(&secret), secret))
    }

    /// The same member without an `Authorization` header.
    pub fn anonymous(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    /// A request to `path` (starting with `/`), authorised with this handle's token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let b = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => b.bearer_auth(t),
            None => b,
        }
    }

    /// Sends `method path` with an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Resp> {
        let mut b = self.request(method.clone(), path);
        if let Some(v) = body {
            b = b.json(v);
        }
        let r = b
            .send()
            .await
            .with_context(|| format!("{method} {}{path}", self.base))?;
        Resp::read(r).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.call(Method::GET, path, None).await
    }
    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Resp> {
        self.call(Method::PUT, path, Some(body)).await
    }
    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Resp> {
        self.call(Method::POST, path, Some(body)).await
    }
    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Resp> {
        self.call(Method::PATCH, path, Some(body)).await
    }
    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Resp> {
        self.call(Method::DELETE, path, None).await
    }
}

impl Cluster {
    /// Starts `n` coordinators: `init` + `run` for member 1, then `join` + `run` + add as
    /// learner + promote for members 2..=n; returns when all agree on the applied log.
    pub async fn start(n: u64) -> Result<Cluster> {
        Cluster::start_with(Options {
            members: n,
            ..Options::default()
        })
        .await
    }

    /// Like [`Cluster::start`] with options.
    pub async fn start_with(opts: Options) -> Result<Cluster> {
        if opts.members == 0 {
            bail!("a cluster needs at least one member");
        }
        let bin = coordinator_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("metalfleet-e2e-")
            .tempdir()
            .context("creating temp dir")?;
        let mut members = Vec::new();
        for id in 1..=opts.members {
            let api_port = free_port()?;
            let raft_port = free_port()?;
            let fleet_port = free_port()?;
            let data_dir = dir.path().join(format!("d{id}"));
            let config = dir.path().join(format!("c{id}.toml"));
            let mut toml = format!(
                "id = {id}\ncluster_name = \"mf-e2e\"\ndata_dir = {data:?}\n\
                 api_listen = \"127.0.0.1:{api_port}\"\nraft_listen = \"127.0.0.1:{raft_port}\"\n\
                 fleet_listen = \"127.0.0.1:{fleet_port}\"\n",
                data = data_dir.display().to_string(),
            );
            if let Some(b) = opts.max_body_bytes {
                toml.push_str(&format!("max_body_bytes = {b}\n"));
            }
            std::fs::write(&config, toml).context("writing config")?;
            members.push(Member {
                id,
                config,
                data_dir,
                api_url: format!("https://127.0.0.1:{api_port}"),
                raft_addr: format!("127.0.0.1:{raft_port}"),
                fleet_addr: format!("127.0.0.1:{fleet_port}"),
                log: dir.path().join(format!("m{id}.log")),
                child: Mutex::new(None),
            });
        }
        let ca_path = members[0].data_dir.join("tls").join("ca.crt");
        // The cluster owns the directory from here on, so a failure below still cleans up.
        let mut cluster = Cluster {
            dir: Some(dir),
            members,
            admin_token: String::new(),
            ca_path,
            client: reqwest::Client::new(),
        };

        match cluster.bootstrap(&bin).await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let logs = cluster.log_tails();
                Err(e.context(format!("starting the test cluster failed; logs:\n{logs}")))
            }
        }
    }

    /// `init` + `run` member 1, then `join` + `run` + add + promote the others; returns when
    /// all agree on the applied log.
    async fn bootstrap(&mut self, bin: &Path) -> Result<()> {
        let first = &self.members[0];
        let mut init = Command::new(bin);
        init.arg("init").arg("-c").arg(&first.config);
        let out = run_to_end(init, &first.log).await?;
        self.admin_token = out
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| anyhow!("coordinator init printed no token"))?
            .to_owned();
        let ca = std::fs::read_to_string(&self.ca_path)
            .with_context(|| format!("reading {}", self.ca_path.display()))?;
        self.client = coordinator::cli::client::http_client(Some(&ca))?;
        self.spawn_run(1)?;
        self.wait_healthy(1).await?;
        wait_until(START_TIMEOUT, "member 1 to lead", || async {
            self.leader_now().await == Some(1)
        })
        .await?;

        for id in 2..=self.members.len() as u64 {
            let m = self.member(id)?;
            let mut cmd = Command::new(bin);
            cmd.arg("join")
                .arg("-c")
                .arg(&m.config)
                .arg("--via")
                .arg(&self.members[0].api_url)
                .arg("--ca-cert")
                .arg(&self.ca_path)
                .env("METALFLEET_TOKEN", &self.admin_token);
            run_to_end(cmd, &m.log).await?;
            self.spawn_run(id)?;
            self.wait_healthy(id).await?;
            let (raft_addr, api_url, fleet_addr) =
                (m.raft_addr.clone(), m.api_url.clone(), m.fleet_addr.clone());
            self.api(1)
                .post(
                    "/v1/cluster/learners",
                    &json!({"id": id, "raft_addr": raft_addr, "api_url": api_url, "fleet_addr": fleet_addr}),
                )
                .await?
                .ok()
                .with_context(|| format!("adding member {id} as learner"))?;
            self.api(1)
                .post(&format!("/v1/cluster/voters/{id}"), &json!({}))
                .await?
                .ok()
                .with_context(|| format!("promoting member {id}"))?;
        }
        self.wait_converged(START_TIMEOUT).await?;
        Ok(())
    }

    fn member(&self, id: u64) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| anyhow!("no member {id}"))
    }

    /// Member ids, `1..=n`.
    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// Ids of members whose process is running.
    pub fn running(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.child.lock().map(|c| c.is_some()).unwrap_or(false))
            .map(|m| m.id)
            .collect()
    }

    /// The temporary directory holding configs, data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("."))
    }

    /// Data directory of member `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.member(id)
            .map(|m| m.data_dir.clone())
            .unwrap_or_default()
    }

    /// Log file (stdout + stderr of all its processes) of member `id`.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.member(id).map(|m| m.log.clone()).unwrap_or_default()
    }

    /// The admin token printed by `coordinator init`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The cluster CA certificate file.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// An HTTPS client trusting the cluster CA (shared connection pool).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// API base URL of member `id` (`https://127.0.0.1:<port>`).
    pub fn url(&self, id: u64) -> String {
        self.member(id)
            .map(|m| m.api_url.clone())
            .unwrap_or_default()
    }

    /// Raft address of member `id`.
    pub fn raft_addr(&self, id: u64) -> String {
        self.member(id)
            .map(|m| m.raft_addr.clone())
            .unwrap_or_default()
    }

    /// Fleet (rack agent) endpoint `host:port` of member `id`.
    pub fn fleet_addr(&self, id: u64) -> String {
        self.member(id)
            .map(|m| m.fleet_addr.clone())
            .unwrap_or_default()
    }

    /// Runs the real `metalctl` against member 1 with `token`, configured by flags only (no
    /// config file); returns (exit code, stdout, stderr).
    pub async fn metalctl(&self, token: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let out = tokio::process::Command::new(bin_dir()?.join("metalctl"))
            .args(["--coordinator", &self.url(1), "--ca-cert"])
            .arg(self.ca_path())
            .args(args)
            .env("METALFLEET_TOKEN", token)
            .env_remove("METALCTL_CONFIG")
            .env("HOME", self.dir())
            .kill_on_drop(true)
            .output()
            .await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// API handle on member `id` with the admin token.
    pub fn api(&self, id: u64) -> Api {
        Api {
            client: self.client.clone(),
            base: self.url(id),
            token: Some(self.admin_token.clone()),
        }
    }

    fn spawn_run(&self, id: u64) -> Result<()> {
        let m = self.member(id)?;
        let mut slot = m.child.lock().map_err(|_| anyhow!("child lock poisoned"))?;
        if slot.is_some() {
            bail!("member {id} is already running");
        }
        let (out, err) = log_files(&m.log, &format!("coordinator run (member {id})"))?;
        let child = Command::new(coordinator_bin()?)
            .arg("run")
            .arg("-c")
            .arg(&m.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning coordinator run for member {id}"))?;
        *slot = Some(child);
        Ok(())
    }

    /// Waits until member `id` answers `/healthz`; fails early if its process exited.
    pub async fn wait_healthy(&self, id: u64) -> Result<()> {
        let m = self.member(id)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            {
                let mut slot = m.child.lock().map_err(|_| anyhow!("child lock poisoned"))?;
                match slot.as_mut().map(Child::try_wait) {
                    None => bail!("member {id} is not running"),
                    Some(Ok(Some(status))) => {
                        *slot = None;
                        bail!(
                            "member {id} exited with {status} while starting; log:\n{}",
                            tail(&m.log, LOG_TAIL_LINES)
                        );
                    }
                    Some(Ok(None)) => {}
                    Some(Err(e)) => bail!("member {id}: {e}"),
                }
            }
            let ok = self
                .client
                .get(format!("{}/healthz", m.api_url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("member {id} did not answer /healthz within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs member `id` (by PID) and reaps it. No-op if it is not running.
    pub fn kill(&self, id: u64) -> Result<()> {
        let m = self.member(id)?;
        let mut slot = m.child.lock().map_err(|_| anyhow!("child lock poisoned"))?;
        if let Some(mut child) = slot.take() {
            // An error means it already exited; `wait` reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("reaping member {id}"))?;
        }
        Ok(())
    }

    /// Starts member `id` again with the same config and data dir and waits until its API
    /// answers. It rejoins on its own (Raft state is on disk).
    pub async fn restart(&self, id: u64) -> Result<()> {
        self.spawn_run(id)?;
        self.wait_healthy(id).await
    }

    /// `GET /v1/cluster` on member `id`, bounded by 2 s.
    pub async fn status(&self, id: u64) -> Result<ClusterStatus> {
        let r = self
            .client
            .get(format!("{}/v1/cluster", self.url(id)))
            .bearer_auth(&self.admin_token)
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET /v1/cluster on {id}: HTTP {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// The member that currently reports itself as leader, if any running one does.
    pub async fn leader_now(&self) -> Option<u64> {
        for id in self.running() {
            if let Ok(s) = self.status(id).await {
                if s.role == "Leader" && s.leader == Some(s.this) {
                    return Some(s.this);
                }
            }
        }
        None
    }

    /// Polls until some member reports itself as leader.
    pub async fn leader(&self) -> Result<u64> {
        poll(START_TIMEOUT, "a leader", || self.leader_now()).await
    }

    /// Polls until every running member has applied its whole log and all applied the same
    /// index; returns that index.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<u64> {
        poll(
            timeout,
            "all running members to apply the same log",
            || async {
                let mut applied = BTreeSet::new();
                for id in self.running() {
                    let s = self.status(id).await.ok()?;
                    if s.last_applied != s.last_log_index || s.leader.is_none() {
                        return None;
                    }
                    applied.insert(s.last_applied);
                }
                (applied.len() == 1)
                    .then(|| applied.first().copied())
                    .flatten()
            },
        )
        .await
    }

    /// The last [`LOG_TAIL_LINES`] lines of every member's log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&format!(
                "----- member {} ({}) -----\n{}\n",
                m.id,
                m.log.display(),
                tail(&m.log, LOG_TAIL_LINES)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &self.members {
            if let Ok(mut slot) = m.child.lock() {
                if let Some(mut child) = slot.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.log_tails());
        }
        if panicking || std::env::var_os("METALFLEET_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("test cluster files kept in {}", dir.keep().display());
            }
        }
    }
}

/// Opens `log` for appending twice (stdout, stderr) after writing a header line.
pub(crate) fn log_files(log: &Path, what: &str) -> Result<(std::fs::File, std::fs::File)> {
    use std::io::Write as _;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(f, "===== {what} =====")?;
    let g = f.try_clone()?;
    Ok((f, g))
}

/// Runs a short-lived command to completion with stderr appended to `log`; returns stdout
/// (also appended to `log`).
async fn run_to_end(mut cmd: Command, log: &Path) -> Result<String> {
    // Program and arguments only: the environment carries the admin token.
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let (_, err) = log_files(log, &what)?;
    cmd.env("NO_COLOR", "1");
    let mut cmd = tokio::process::Command::from(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    {
        use std::io::Write as _;
        let (mut f, _) = log_files(log, "stdout of the above")?;
        // The admin token is printed on stdout; it is a throwaway of this test cluster.
        let _ = f.write_all(stdout.as_bytes());
    }
    if !out.status.success() {
        // The caller adds every member's log tail to the error.
        bail!("{what} failed ({})", out.status);
    }
    Ok(stdout)
}

/// Last `n` lines of a file (reads at most its last 256 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<{}: {e}>", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
