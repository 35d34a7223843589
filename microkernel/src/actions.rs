//! Executing one action: run a program (timeout, logs streamed while it runs, output kept for
//! the result), write a file, reboot, power off, kexec. Power actions report their result
//! before they take the machine away.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use protocol::node::{ActionResult, NodeAction};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::client::NodeClient;

/// Most output kept for a result (the tail is kept).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Log lines are sent in batches of at most this many...
const LOG_BATCH_LINES: usize = 100;
/// ...or after this long.
const LOG_BATCH_DELAY: Duration = Duration::from_millis(500);
/// Exit code reported for a program killed at its timeout (as coreutils `timeout`).
pub const EXIT_TIMED_OUT: i32 = 124;
/// Exit code reported when the program could not be started.
pub const EXIT_NOT_STARTED: i32 = 127;

/// How power actions are carried out (tests replace them with harmless commands).
#[derive(Debug, Clone)]
pub struct PowerCommands {
    /// Reboot now.
    pub reboot: Vec<String>,
    /// Power off now.
    pub poweroff: Vec<String>,
    /// `kexec` binary.
    pub kexec: String,
    /// Where kexec downloads its kernel and initrd.
    pub scratch: PathBuf,
}

impl Default for PowerCommands {
    fn default() -> Self {
        PowerCommands {
            reboot: vec!["reboot".into(), "-f".into()],
            poweroff: vec!["poweroff".into(), "-f".into()],
            kexec: "kexec".into(),
            scratch: PathBuf::from("/tmp"),
        }
    }
}

/// Runs actions for one machine.
#[derive(Debug, Clone)]
pub struct Executor {
    client: NodeClient,
    power: PowerCommands,
}

/// What to do after an action's result is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Poll for the next action.
    Continue,
    /// Run this command (reboot, power off, kexec -e): the machine goes away.
    Exec(Vec<String>),
}

impl Executor {
    /// An executor reporting through `client`.
    pub fn new(client: NodeClient, power: PowerCommands) -> Executor {
        Executor { client, power }
    }

    /// Carries out `action`; the result is for the caller to deliver, then do `Then`.
    pub async fn execute(&self, action: &NodeAction) -> (ActionResult, Then) {
        let id = action.id().to_owned();
        let result = |exit_code: i32, output: String| ActionResult {
            mac: self.client.mac(),
            action: id.clone(),
            exit_code,
            output,
        };
        match action {
            NodeAction::Run {
                command,
                args,
                timeout_secs,
                ..
            } => {
                let (code, out) = self
                    .run(&id, command, args, Duration::from_secs(*timeout_secs))
                    .await;
                (result(code, out), Then::Continue)
            }
            NodeAction::Template {
                path,
                content,
                mode,
                ..
            } => match write_file(Path::new(path), content.as_bytes(), *mode) {
                Ok(()) => (
                    result(0, format!("wrote {} bytes to {path}", content.len())),
                    Then::Continue,
                ),
                Err(e) => (result(1, format!("writing {path}: {e}")), Then::Continue),
            },
            NodeAction::Reboot { .. } => (
                result(0, "rebooting".into()),
                Then::Exec(self.power.reboot.clone()),
            ),
            NodeAction::Poweroff { .. } => (
                result(0, "powering off".into()),
                Then::Exec(self.power.poweroff.clone()),
            ),
            NodeAction::Kexec {
                kernel,
                initrd,
                cmdline,
                ..
            } => match self.kexec_load(kernel, initrd, cmdline).await {
                Ok(()) => (
                    result(0, format!("kexec into {kernel}")),
                    Then::Exec(vec![self.power.kexec.clone(), "-e".into()]),
                ),
                Err(e) => (result(1, e), Then::Continue),
            },
        }
    }

    /// Runs a program (no shell), streaming its lines as logs; returns exit code and output.
    async fn run(
        &self,
        id: &str,
        command: &str,
        args: &[String],
        timeout: Duration,
    ) -> (i32, String) {
        let mut child = match tokio::process::Command::new(command)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return (EXIT_NOT_STARTED, format!("cannot start {command}: {e}")),
        };
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let readers = [
            child.stdout.take().map(|s| spawn_lines(s, tx.clone())),
            child.stderr.take().map(|s| spawn_lines(s, tx.clone())),
        ];
        drop(tx);
        let shipper = tokio::spawn(ship_logs(self.client.clone(), id.to_owned(), rx));
        let status = tokio::time::timeout(timeout, child.wait()).await;
        let code = match status {
            Ok(Ok(s)) => s.code().unwrap_or(128 + 9),
            Ok(Err(e)) => {
                tracing::warn!(command, error = %e, "waiting for the program failed");
                1
            }
            Err(_) => {
                let _ = child.kill().await;
                EXIT_TIMED_OUT
            }
        };
        for r in readers.into_iter().flatten() {
            let _ = r.await;
        }
        let mut output = shipper.await.unwrap_or_default();
        if code == EXIT_TIMED_OUT {
            output.push_str(&format!(
                "\n[node-agent] killed after {}s timeout\n",
                timeout.as_secs()
            ));
        }
        (code, output)
    }

    async fn kexec_load(&self, kernel: &str, initrd: &str, cmdline: &str) -> Result<(), String> {
        let k = self.power.scratch.join("kexec-kernel");
        let i = self.power.scratch.join("kexec-initrd");
        download(kernel, &k).await?;
        download(initrd, &i).await?;
        let out = tokio::process::Command::new(&self.power.kexec)
            .arg("-l")
            .arg(&k)
            .arg(format!("--initrd={}", i.display()))
            .arg(format!("--command-line={cmdline}"))
            .output()
            .await
            .map_err(|e| format!("cannot start {}: {e}", self.power.kexec))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kexec -l failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn spawn_lines<R>(r: R, tx: mpsc::UnboundedSender<String>) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    })
}

/// Sends lines in batches while collecting the output tail; returns the output.
async fn ship_logs(
    client: NodeClient,
    action: String,
    mut rx: mpsc::UnboundedReceiver<String>,
) -> String {
    let mut output = String::new();
    let mut batch = Vec::new();
    loop {
        let line = tokio::time::timeout(LOG_BATCH_DELAY, rx.recv()).await;
        let done = matches!(line, Ok(None));
        let idle = line.is_err();
        if let Ok(Some(l)) = line {
            output.push_str(&l);
            output.push('\n');
            if output.len() > MAX_OUTPUT_BYTES {
                let cut = output.len() - MAX_OUTPUT_BYTES;
                let cut = (cut..output.len())
                    .find(|i| output.is_char_boundary(*i))
                    .unwrap_or(0);
                output.drain(..cut);
            }
            batch.push(l);
        }
        if !batch.is_empty() && (done || idle || batch.len() >= LOG_BATCH_LINES) {
            // Logs are best effort: the output also travels with the result.
            if let Err(e) = client.logs(Some(&action), std::mem::take(&mut batch)).await {
                tracing::debug!(error = %e, "log lines not delivered");
            }
        }
        if done {
            return output;
        }
    }
}

async fn download(url: &str, to: &Path) -> Result<(), String> {
    let r = reqwest::get(url)
        .await
        .map_err(|e| format!("fetching {url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("fetching {url}: HTTP {}", r.status()));
    }
    let bytes = r
        .bytes()
        .await
        .map_err(|e| format!("fetching {url}: {e}"))?;
    tokio::fs::write(to, &bytes)
        .await
        .map_err(|e| format!("writing {}: {e}", to.display()))
}

/// Writes a file atomically (temp file + rename) with `mode`, creating parent directories.
fn write_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !path.is_absolute() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "path must be absolute",
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("node-agent-tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}
