//! Helpers for the TFTP peer tests: an in-process server in a temporary directory, the real
//! client binaries (run with a hang guard, killed on drop), a raw UDP client that can
//! misbehave on purpose, and metric reading.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use rack_agent::boot::tftp::packet::{self, Packet};
use rack_agent::boot::tftp::{TftpConfig, TftpServer};
use rack_agent::boot::{BootDeps, CollectingSink, FixtureBackend, GeneratedFiles};
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any single client run or raw receive may take before the test fails (a hang
/// guard, not a speed assertion).
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// A running in-process server with its directories.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ipxe_dir: PathBuf,
    pub addr: SocketAddr,
    pub deps: BootDeps,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Starts a server on `127.0.0.1:0`; `tune` adjusts the config, `generated` adds per-node
/// files.
pub async fn start(
    tune: impl FnOnce(&mut TftpConfig),
    generated: Option<Arc<dyn GeneratedFiles>>,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ipxe_dir = dir.path().join("ipxe");
    std::fs::create_dir_all(&ipxe_dir).unwrap();
    let mut deps = BootDeps::fixture(
        Arc::new(FixtureBackend::default()),
        Arc::new(CollectingSink::default()),
        data.clone(),
    );
    deps.ipxe_dir = ipxe_dir.clone();
    deps.generated = generated;
    let mut config = TftpConfig::with_defaults("127.0.0.1:0".parse().unwrap(), &data);
    tune(&mut config);
    let server = TftpServer::bind(&config, &deps).await.unwrap();
    let addr = server.local_addr();
    assert!(config.root.is_dir(), "bind creates the root");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.run(cancel.clone()));
    Server {
        root: config.root.clone(),
        dir,
        ipxe_dir,
        addr,
        deps,
        cancel,
        task: Some(task),
    }
}

impl Server {
    /// Writes `bytes` as `name` under the root.
    pub fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A scratch path for client output.
    pub fn out(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join("out");
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    /// Current Prometheus text of the registry.
    pub fn metrics(&self) -> String {
        self.deps.metrics.render()
    }

    /// The value of one series (`name{labels}` exactly as rendered), 0 when absent.
    pub fn metric(&self, series: &str) -> u64 {
        metric(&self.metrics(), series)
    }

    /// Stops the server and waits for `run` to return.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(HANG_GUARD, t).await.unwrap().unwrap();
        }
    }
}

/// The value of one series in Prometheus text.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map_or(0, |v| v.max(0) as u64)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Hex sha256.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex sha256 of a file.
pub fn sha256_file(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap_or_default())
}

/// Panics naming the Debian package when a client binary is missing (never skip silently).
pub fn need(bin: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{bin}` not found: install the Debian package `{package}` (apt-get install -y {package})"
    );
}

/// Runs a client command to completion under the hang guard.
pub async fn run(cmd: &mut tokio::process::Command) -> Output {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(HANG_GUARD, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("client hung: {cmd:?}"))
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

/// Text of a client's stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// tftp-hpa: `tftp -m MODE 127.0.0.1 PORT -c get FILE OUT` (no options, 512-byte blocks).
pub async fn tftp_hpa_get(addr: SocketAddr, mode: &str, file: &str, out: &Path) -> Output {
    need("tftp", "tftp-hpa");
    run(tokio::process::Command::new("tftp")
        .args([
            "-m",
            mode,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            "-c",
            "get",
            file,
        ])
        .arg(out))
    .await
}

/// atftp with `--option` arguments (e.g. `"blksize 1428"`) and `extra` flags (`--trace`).
pub async fn atftp_get(
    addr: SocketAddr,
    file: &str,
    out: &Path,
    options: &[&str],
    extra: &[&str],
) -> Output {
    need("atftp", "atftp");
    let mut cmd = tokio::process::Command::new("atftp");
    cmd.args(extra);
    for o in options {
        cmd.args(["--option", o]);
    }
    cmd.args(["-g", "-r", file, "-l"])
        .arg(out)
        .args([addr.ip().to_string(), addr.port().to_string()]);
    run(&mut cmd).await
}

/// curl `tftp://` with `--tftp-blksize`.
pub async fn curl_get(addr: SocketAddr, file: &str, out: &Path, blksize: u16) -> Output {
    need("curl", "curl");
    run(tokio::process::Command::new("curl")
        .args(["-sS", "--tftp-blksize", &blksize.to_string()])
        .arg(format!("tftp://{addr}/{file}"))
        .arg("-o")
        .arg(out))
    .await
}

/// An owned parsed packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Data(u16, Vec<u8>),
    Oack(Vec<(String, String)>),
    Error(u16, String),
    Other(Vec<u8>),
}

fn own(buf: &[u8]) -> Got {
    match packet::parse(buf) {
        Ok(Packet::Data { block, data }) => Got::Data(block, data.to_vec()),
        Ok(Packet::Error { code, message }) => Got::Error(code, message),
        Ok(Packet::Oack) => {
            let body = buf.get(2..).unwrap_or_default();
            let fields: Vec<String> = body
                .split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            let opts = fields
                .chunks_exact(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect();
            Got::Oack(opts)
        }
        _ => Got::Other(buf.to_vec()),
    }
}

/// A hand-driven TFTP client on its own UDP socket.
pub struct Raw {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    /// The server's transfer ID (learned from its first answer).
    pub tid: Option<SocketAddr>,
}

impl Raw {
    pub async fn new(server: SocketAddr) -> Raw {
        Raw {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            tid: None,
        }
    }

    /// Sends bytes to the listen port.
    pub async fn send_listen(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    /// Sends an RRQ.
    pub async fn rrq(&self, file: &str, options: &[(&str, &str)]) {
        self.send_listen(&packet::encode_rrq(file, "octet", options))
            .await;
    }

    /// Receives one packet (under the hang guard); learns the TID.
    pub async fn recv(&mut self) -> Got {
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(HANG_GUARD, self.socket.recv_from(&mut buf))
            .await
            .expect("no packet from the server")
            .unwrap();
        if self.tid.is_none() {
            self.tid = Some(from);
        }
        own(&buf[..n])
    }

    /// ACKs `block` to the transfer ID.
    pub async fn ack(&self, block: u16) {
        let tid = self.tid.expect("no transfer ID yet");
        self.socket
            .send_to(&packet::encode_ack(block), tid)
            .await
            .unwrap();
    }

    /// Receives the rest of a transfer whose first DATA is `first`, acknowledging each
    /// window's last block (`windowsize` blocks per ACK); returns the bytes and every wire
    /// block number seen.
    pub async fn finish(
        &mut self,
        first: Got,
        blksize: usize,
        windowsize: u16,
    ) -> (Vec<u8>, Vec<u16>) {
        let mut data = Vec::new();
        let mut blocks = Vec::new();
        let mut expect: u16 = 1;
        let mut in_window = 0u16;
        let mut next = Some(first);
        loop {
            let got = match next.take() {
                Some(g) => g,
                None => self.recv().await,
            };
            let Got::Data(block, bytes) = got else {
                panic!("expected DATA {expect}, got {got:?}");
            };
            if block != expect {
                // A retransmission of something already held: re-acknowledge progress.
                self.ack(expect.wrapping_sub(1)).await;
                in_window = 0;
                continue;
            }
            blocks.push(block);
            let last = bytes.len() < blksize;
            data.extend_from_slice(&bytes);
            in_window += 1;
            if last || in_window == windowsize {
                self.ack(block).await;
                in_window = 0;
            }
            if last {
                return (data, blocks);
            }
            expect = expect.wrapping_add(1);
        }
    }
}

/// Polls `check` every 20 ms until it is true, failing after the hang guard.
pub async fn poll(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
