//! Vendor switch CLIs over SSH: the [`Dialect`] choice (NX-OS, EOS, OS10, Junos: rendering,
//! `show` parsing and error detection live in one file each) and the [`SshCliSwitch`]
//! driver that runs a batch as one CLI session and reads every changed port back in it.
//!
//! Transport: the system OpenSSH client, not an SSH library. Switches are where SSH
//! implementations are oldest and strangest (NX-OS and OS10 images that only offer
//! `diffie-hellman-group14-sha1` or `ssh-rsa`, keyboard-interactive instead of password);
//! OpenSSH negotiates all of that, is audited, and its connection multiplexing gives us one
//! authenticated connection per switch with a cheap new channel per batch. It is driven with
//! a controlled configuration: `-F /dev/null` (no user or system config), the configured host
//! key as the only known key (`StrictHostKeyChecking=yes`, no trust on first use), password
//! authentication only. The password never appears on a command line, in the environment
//! or in a log: `SSH_ASKPASS` points at a helper script in a private (0700) directory that
//! prints the first line of `password_file`, whose *path* is passed in the environment.
//!
//! One master connection (`ssh -M -N`, a child of the agent, killed when the driver is
//! dropped) is opened on first use and reopened when it has died; each call opens a session
//! over it (`ssh -S <socket>`, no PTY) and talks line by line, waiting for the prompt after
//! each line. Calls on one switch are serialised.

pub mod eos;
mod ioslike;
pub mod junos;
pub mod nxos;
pub mod os10;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::config::SshCliConfig;
use super::{
    validate_batch, verify_readback, PortChange, PortConfig, PortMode, SwitchDriver, SwitchError,
};

/// Which vendor CLI a switch speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Cisco NX-OS (`nxos`).
    Nxos,
    /// Arista EOS (`eos`).
    Eos,
    /// Dell EMC OS10 (`os10`).
    Os10,
    /// Juniper Junos, ELS syntax (`junos`).
    Junos,
}

impl Dialect {
    /// The dialect a config value names.
    pub fn parse(text: &str) -> Option<Dialect> {
        match text {
            "nxos" => Some(Dialect::Nxos),
            "eos" => Some(Dialect::Eos),
            "os10" => Some(Dialect::Os10),
            "junos" => Some(Dialect::Junos),
            _ => None,
        }
    }

    /// The config value naming this dialect.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Nxos => "nxos",
            Dialect::Eos => "eos",
            Dialect::Os10 => "os10",
            Dialect::Junos => "junos",
        }
    }

    fn setup(self) -> &'static [&'static str] {
        match self {
            Dialect::Nxos => nxos::SETUP,
            Dialect::Eos => eos::SETUP,
            Dialect::Os10 => os10::SETUP,
            Dialect::Junos => junos::SETUP,
        }
    }

    /// Every line of the configuration session applying `changes` (entering config mode,
    /// the changes, commit/end). `session` names an EOS configuration session.
    pub fn render(self, changes: &[PortChange], session: &str) -> Result<Vec<String>, SwitchError> {
        match self {
            Dialect::Nxos => nxos::render(changes),
            Dialect::Eos => eos::render(changes, session),
            Dialect::Os10 => os10::render(changes),
            Dialect::Junos => junos::render(changes),
        }
    }

    fn abort(self) -> &'static [&'static str] {
        match self {
            Dialect::Nxos => nxos::ABORT,
            Dialect::Eos => eos::ABORT,
            Dialect::Os10 => os10::ABORT,
            Dialect::Junos => junos::ABORT,
        }
    }

    /// The `show` command for one port or all.
    pub fn show(self, port: Option<&str>) -> String {
        match self {
            Dialect::Nxos => nxos::show(port),
            Dialect::Eos => eos::show(port),
            Dialect::Os10 => os10::show(port),
            Dialect::Junos => junos::show(port),
        }
    }

    /// The ports and modes in a `show` command's output.
    pub fn parse_ports(self, output: &str) -> Vec<(String, Result<PortMode, String>)> {
        match self {
            Dialect::Nxos => nxos::parse(output),
            Dialect::Eos => eos::parse(output),
            Dialect::Os10 => os10::parse(output),
            Dialect::Junos => junos::parse(output),
        }
    }

    /// The switch's error message in a command's output, if the command was refused.
    pub fn error(self, output: &str) -> Option<String> {
        match self {
            Dialect::Nxos => nxos::error(output),
            Dialect::Eos => eos::error(output),
            Dialect::Os10 => os10::error(output),
            Dialect::Junos => junos::error(output),
        }
    }
}

/// Whether `tail` (text after the last newline) is a CLI prompt: one word ending in `#` or
/// `>` (`switch(config-if)#`, `leaf1>`, `admin@ex4300#`).
fn is_prompt(tail: &str) -> bool {
    let t = tail.trim_end();
    !t.is_empty()
        && (t.ends_with('#') || t.ends_with('>'))
        && !t.contains(char::is_whitespace)
        && t.len() <= 128
}

/// A directory only we can read, removed on drop: the askpass helper, `known_hosts`, the
/// master's control socket and its log.
#[derive(Debug)]
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> std::io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Short: the control socket path must fit in sun_path (108 bytes).
        let path = std::env::temp_dir().join(format!("mf-ssh-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Host key alias written to our private `known_hosts` (so the file needs no host/port
/// formatting rules).
const HOST_ALIAS: &str = "metalfleet-switch";

/// A switch driven through its CLI over SSH.
#[derive(Debug)]
pub struct SshCliSwitch {
    name: String,
    cfg: SshCliConfig,
    timeout: Duration,
    dir: PrivateDir,
    /// The master connection; also serialises calls (held for a whole call).
    master: tokio::sync::Mutex<Option<Child>>,
    sessions: AtomicU64,
}

/// One CLI session (an `ssh` process on the master connection).
struct Session<'a> {
    sw: &'a SshCliSwitch,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    buf: String,
    chunk: Vec<u8>,
}

impl SshCliSwitch {
    /// A driver for the switch `cfg` describes; writes its private files now and connects on
    /// first use.
    pub fn new(
        name: &str,
        cfg: SshCliConfig,
        timeout: Duration,
    ) -> Result<SshCliSwitch, SwitchError> {
        let io = |what: &str| {
            let what = what.to_owned();
            let switch = name.to_owned();
            move |source| SwitchError::Io {
                switch,
                what,
                source,
            }
        };
        let dir = PrivateDir::create().map_err(io("creating the SSH private directory"))?;
        write_private(
            &dir.0.join("askpass"),
            "#!/bin/sh\n# Prints the switch password for ssh; the path comes from the environment.\nexec head -n 1 -- \"$METALFLEET_SSH_PASSWORD_FILE\"\n",
            0o700,
        )
        .map_err(io("writing the askpass helper"))?;
        write_private(
            &dir.0.join("known_hosts"),
            // Only "<type> <base64>": nothing else from the config reaches known_hosts.
            &format!(
                "{HOST_ALIAS} {}\n",
                cfg.known_host_key
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            0o600,
        )
        .map_err(io("writing known_hosts"))?;
        Ok(SshCliSwitch {
            name: name.to_owned(),
            cfg,
            timeout,
            dir,
            master: tokio::sync::Mutex::new(None),
            sessions: AtomicU64::new(0),
        })
    }

    fn control_path(&self) -> PathBuf {
        self.dir.0.join("ctl")
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// `ssh` with our fixed options; `extra` goes before the destination.
    fn ssh(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(&self.cfg.ssh_binary);
        let known = self.dir.0.join("known_hosts");
        let timeout_s = self.timeout.as_secs().max(1);
        c.arg("-F").arg("/dev/null");
        for o in [
            "StrictHostKeyChecking=yes".to_owned(),
            format!("UserKnownHostsFile={}", known.display()),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            format!("HostKeyAlias={HOST_ALIAS}"),
            "CheckHostIP=no".to_owned(),
            "PubkeyAuthentication=no".to_owned(),
            "PreferredAuthentications=password,keyboard-interactive".to_owned(),
            "NumberOfPasswordPrompts=1".to_owned(),
            "LogLevel=ERROR".to_owned(),
            format!("ConnectTimeout={timeout_s}"),
            "ServerAliveInterval=15".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
        ] {
            c.arg("-o").arg(o);
        }
        c.arg("-S").arg(self.control_path());
        c.args(extra);
        c.arg("-p")
            .arg(self.cfg.port.to_string())
            .arg("-l")
            .arg(&self.cfg.username)
            // Whatever the host string holds, it is never parsed as an option.
            .arg("--")
            .arg(&self.cfg.host);
        c.env("SSH_ASKPASS", self.dir.0.join("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("METALFLEET_SSH_PASSWORD_FILE", &self.cfg.password_file)
            .env_remove("SSH_AUTH_SOCK")
            .kill_on_drop(true);
        c
    }

    fn io_err(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SwitchError {
        let switch = self.name.clone();
        let what = what.into();
        move |source| SwitchError::Io {
            switch,
            what,
            source,
        }
    }

    /// Maps a failed ssh's stderr to the error the operator needs to see.
    fn classify(&self, stderr: &str, status: Option<ExitStatus>) -> SwitchError {
        let text = stderr.trim().to_owned();
        if text.contains("Permission denied") || text.contains("Too many authentication failures") {
            SwitchError::Auth {
                switch: self.name.clone(),
                message: text,
            }
        } else if text.contains("Host key verification failed")
            || text.contains("HOST IDENTIFICATION HAS CHANGED")
            || text.contains("host key is known")
        {
            SwitchError::HostKey {
                switch: self.name.clone(),
                message: text,
            }
        } else {
            let message = if text.is_empty() {
                format!("ssh exited ({status:?})")
            } else {
                text
            };
            SwitchError::Connect {
                switch: self.name.clone(),
                address: format!("{}:{}", self.cfg.host, self.cfg.port),
                source: std::io::Error::other(message),
            }
        }
    }

    /// Starts the master connection if it is not running; waits until it is authenticated
    /// (its control socket appears only after login).
    async fn ensure_master(&self, slot: &mut Option<Child>) -> Result<(), SwitchError> {
        if let Some(child) = slot.as_mut() {
            if matches!(child.try_wait(), Ok(None)) && self.control_path().exists() {
                return Ok(());
            }
        }
        *slot = None;
        if let Err(e) = std::fs::metadata(&self.cfg.password_file) {
            return Err(SwitchError::Auth {
                switch: self.name.clone(),
                message: format!("password file {}: {e}", self.cfg.password_file.display()),
            });
        }
        let _ = std::fs::remove_file(self.control_path());
        let log_path = self.dir.0.join("master.log");
        let log = std::fs::File::create(&log_path).map_err(self.io_err("creating the ssh log"))?;
        let mut child = self
            .ssh(&[
                "-M",
                "-N",
                "-o",
                "ControlPersist=no",
                "-o",
                "ControlMaster=yes",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(self.io_err(format!("starting {}", self.cfg.ssh_binary.display())))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if self.control_path().exists() {
                *slot = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(self.classify(&stderr, Some(status)));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(SwitchError::Timeout {
                    switch: self.name.clone(),
                    what: "SSH login".into(),
                    timeout_ms: self.timeout_ms(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A new CLI session, past the login banner and the dialect's setup lines.
    async fn open(&self) -> Result<Session<'_>, SwitchError> {
        let mut child = self
            .ssh(&["-o", "ControlMaster=no", "-T"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(self.io_err(format!("starting {}", self.cfg.ssh_binary.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(self.io_err("ssh pipes")(
                std::io::ErrorKind::BrokenPipe.into(),
            ));
        };
        let mut s = Session {
            sw: self,
            child,
            stdin: Some(stdin),
            stdout,
            buf: String::new(),
            chunk: vec![0u8; 16 * 1024],
        };
        s.until_prompt("the login prompt").await?;
        for line in self.cfg.dialect.setup() {
            let out = s.exchange(line).await?;
            if let Some(message) = self.cfg.dialect.error(&out) {
                s.close().await;
                return Err(self.rejected(line, message));
            }
        }
        Ok(s)
    }

    fn rejected(&self, command: &str, message: String) -> SwitchError {
        SwitchError::Rejected {
            switch: self.name.clone(),
            command: command.to_owned(),
            message,
        }
    }

    /// Runs `show` for `port` (or all) in `s` and parses it.
    async fn show(
        &self,
        s: &mut Session<'_>,
        port: Option<&str>,
    ) -> Result<Vec<(String, Result<PortMode, String>)>, SwitchError> {
        let cmd = self.cfg.dialect.show(port);
        let out = s.exchange(&cmd).await?;
        if let Some(message) = self.cfg.dialect.error(&out) {
            return Err(self.rejected(&cmd, message));
        }
        Ok(self.cfg.dialect.parse_ports(&out))
    }

    async fn read_one(&self, s: &mut Session<'_>, port: &str) -> Result<PortConfig, SwitchError> {
        let ports = self.show(s, Some(port)).await?;
        match ports.into_iter().find(|(p, _)| p == port) {
            Some((p, Ok(mode))) => Ok(PortConfig::new(p, mode)),
            Some((p, Err(why))) => Err(SwitchError::Protocol {
                switch: self.name.clone(),
                message: format!("port {p}: {why}"),
            }),
            // Junos shows nothing for an interface without configuration: it forwards
            // nothing, i.e. unconfigured.
            None if self.cfg.dialect == Dialect::Junos => {
                Ok(PortConfig::new(port, PortMode::Unconfigured))
            }
            None => Err(SwitchError::UnknownPort {
                switch: self.name.clone(),
                port: port.to_owned(),
            }),
        }
    }

    /// Takes the switch (calls are serialised), makes sure the master connection is up and
    /// opens a session on it.
    async fn begin(
        &self,
    ) -> Result<(tokio::sync::MutexGuard<'_, Option<Child>>, Session<'_>), SwitchError> {
        let mut master = self.master.lock().await;
        self.ensure_master(&mut master).await?;
        let s = self.open().await?;
        Ok((master, s))
    }

    async fn read_all(&self, s: &mut Session<'_>) -> Result<Vec<PortConfig>, SwitchError> {
        let mut out = Vec::new();
        for (p, m) in self.show(s, None).await? {
            match m {
                Ok(mode) => out.push(PortConfig::new(p, mode)),
                Err(why) => {
                    return Err(SwitchError::Protocol {
                        switch: self.name.clone(),
                        message: format!("port {p}: {why}"),
                    })
                }
            }
        }
        out.sort_by(|a, b| a.port.cmp(&b.port));
        Ok(out)
    }

    async fn run_batch(
        &self,
        s: &mut Session<'_>,
        lines: &[String],
        changes: &[PortChange],
    ) -> Result<Vec<PortConfig>, SwitchError> {
        for line in lines {
            let out = s.exchange(line).await?;
            if let Some(message) = self.cfg.dialect.error(&out) {
                // Leave config mode; EOS and Junos discard the whole batch.
                for a in self.cfg.dialect.abort() {
                    if s.exchange(a).await.is_err() {
                        break;
                    }
                }
                return Err(self.rejected(line, message));
            }
        }
        let mut found = Vec::with_capacity(changes.len());
        for c in changes {
            found.push(self.read_one(s, &c.port).await?);
        }
        Ok(found)
    }
}

fn write_private(path: &Path, content: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(content.as_bytes())
}

impl Session<'_> {
    /// Reads until the output ends in a prompt; returns the text before the prompt line.
    async fn until_prompt(&mut self, what: &str) -> Result<String, SwitchError> {
        let deadline = tokio::time::Instant::now() + self.sw.timeout;
        loop {
            let tail_start = self.buf.rfind('\n').map(|i| i + 1).unwrap_or(0);
            if is_prompt(self.buf.get(tail_start..).unwrap_or_default()) {
                let out = self.buf.get(..tail_start).unwrap_or_default().to_owned();
                self.buf.clear();
                return Ok(out);
            }
            let read = tokio::time::timeout_at(deadline, self.stdout.read(&mut self.chunk)).await;
            match read {
                Err(_) => {
                    return Err(SwitchError::Timeout {
                        switch: self.sw.name.clone(),
                        what: what.to_owned(),
                        timeout_ms: self.sw.timeout_ms(),
                    })
                }
                Ok(Ok(0)) => {
                    let status = self.child.wait().await.ok();
                    let mut stderr = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = e.read_to_string(&mut stderr).await;
                    }
                    if stderr.trim().is_empty() {
                        return Err(SwitchError::Protocol {
                            switch: self.sw.name.clone(),
                            message: format!(
                                "the CLI session ended while waiting for {what} (last output {:?})",
                                self.buf
                            ),
                        });
                    }
                    return Err(self.sw.classify(&stderr, status));
                }
                Ok(Ok(n)) => self.buf.push_str(&String::from_utf8_lossy(
                    self.chunk.get(..n).unwrap_or_default(),
                )),
                Ok(Err(e)) => return Err(self.sw.io_err("reading the CLI session")(e)),
            }
        }
    }

    /// Sends one line and returns its output (an echoed copy of the line removed).
    async fn exchange(&mut self, line: &str) -> Result<String, SwitchError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(self.sw.io_err("writing the CLI session")(
                std::io::ErrorKind::BrokenPipe.into(),
            ));
        };
        let write = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await
        };
        write
            .await
            .map_err(self.sw.io_err(format!("sending {line:?}")))?;
        let out = self
            .until_prompt(&format!("the answer to {line:?}"))
            .await?;
        Ok(match out.split_once('\n') {
            Some((first, rest)) if first.trim() == line => rest.to_owned(),
            _ => out,
        })
    }

    /// Ends the session: `exit` (logs out of the CLI from exec mode), then closes its input
    /// and reaps the process.
    async fn close(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = tokio::time::timeout(self.sw.timeout, stdin.write_all(b"exit\n")).await;
        }
        if tokio::time::timeout(self.sw.timeout, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl SwitchDriver for SshCliSwitch {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_port<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<PortConfig, SwitchError>> {
        async move {
            let (_switch, mut s) = self.begin().await?;
            let result = self.read_one(&mut s, port).await;
            s.close().await;
            result
        }
        .boxed()
    }

    fn read_ports(&self) -> BoxFuture<'_, Result<Vec<PortConfig>, SwitchError>> {
        async move {
            let (_switch, mut s) = self.begin().await?;
            let result = self.read_all(&mut s).await;
            s.close().await;
            result
        }
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        changes: &'a [PortChange],
    ) -> BoxFuture<'a, Result<Vec<PortConfig>, SwitchError>> {
        async move {
            validate_batch(changes)?;
            if changes.is_empty() {
                return Ok(Vec::new());
            }
            let n = self.sessions.fetch_add(1, Ordering::Relaxed);
            let session = format!("metalfleet-{}-{n}", std::process::id());
            let lines = self.cfg.dialect.render(changes, &session)?;
            let (_switch, mut s) = self.begin().await?;
            let result = self.run_batch(&mut s, &lines, changes).await;
            s.close().await;
            verify_readback(&self.name, changes, &result?)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts() {
        assert!(is_prompt("switch# "));
        assert!(is_prompt("switch(config-if)#"));
        assert!(is_prompt("leaf1>"));
        assert!(is_prompt("admin@ex4300# "));
        assert!(!is_prompt(""));
        assert!(!is_prompt("% Invalid input at '^' marker #"));
        assert!(!is_prompt("  switchport"));
    }

    #[test]
    fn dialect_names() {
        for d in [Dialect::Nxos, Dialect::Eos, Dialect::Os10, Dialect::Junos] {
            assert_eq!(Dialect::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dialect::parse("ios"), None);
    }
}
