//! Network-namespace lab for integration tests: namespaces, veth pairs and bridges with
//! unique names, commands and child processes inside a namespace (stopped by PID), and this
//! test binary re-executed inside a namespace to run in-process code there. Everything is
//! deleted in `Drop`, also when a test panics.
//!
//! Why re-exec instead of `setns` on a thread: the workspace forbids `unsafe_code`, and
//! `setns(2)` has no safe wrapper among our dependencies. `ip netns exec <ns> <this test
//! binary> --exact <child test>` runs a `#[test]` function that does nothing unless its
//! environment variable is set — the same effect (in-process server bound inside the
//! namespace) at the cost of talking to it through files.
//!
//! Use as `mod netns;` from a test crate. Needs root and iproute2.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid base36><n>`, at most 15 bytes (the
/// kernel's interface-name limit) for prefixes up to 4 bytes.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", base36(std::process::id()));
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

fn base36(mut v: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process killed (SIGKILL) and reaped by PID when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether it has exited, with its exit code (None for a signal).
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        let c = self.child.as_mut()?;
        c.try_wait().unwrap().map(|s| s.code())
    }

    /// Kills it now (by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(None) = c.try_wait() {
                eprintln!("netns: stopping {} (pid {})", self.what, c.id());
            }
        }
        self.kill();
    }
}

/// A network namespace, deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `unique(prefix)` with `lo` up and IPv6 DAD off (so link-local
    /// addresses are usable at once).
    pub fn new(prefix: &str) -> Netns {
        let name = format!("mft-{}", unique(prefix));
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `args` prefixed with `ip netns exec <name>`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs a command inside the namespace to completion; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs a command inside the namespace; returns its output whatever the exit status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Starts a command inside the namespace with stdout/stderr appended to `log`.
    pub fn spawn(&self, args: &[&str], envs: &[(&str, String)], log: &Path) -> ChildGuard {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut c = self.cmd(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        ChildGuard {
            child: Some(child),
            what: format!("{args:?} in {}", self.name),
        }
    }

    /// Re-executes this test binary inside the namespace running only `test` (an exact test
    /// path such as `server_child`), with `envs` set; output goes to `log`.
    pub fn spawn_test(&self, test: &str, envs: &[(&str, String)], log: &Path) -> ChildGuard {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        self.spawn(
            &[exe, "--exact", test, "--nocapture", "--test-threads=1"],
            envs,
            log,
        )
    }

    /// Adds a bridge named `name` (up) in this namespace.
    pub fn bridge(&self, name: &str) {
        self.exec(&["ip", "link", "add", name, "type", "bridge"]);
        self.exec(&["ip", "link", "set", name, "up"]);
    }

    /// Adds an address (`10.0.0.1/24`) to an interface.
    pub fn addr(&self, ifname: &str, cidr: &str) {
        self.exec(&["ip", "addr", "add", cidr, "dev", ifname]);
    }

    /// Waits until `ifname` has an IPv6 link-local address (needed before binding RA).
    pub fn wait_link_local(&self, ifname: &str) {
        poll(10, &format!("link-local on {ifname}"), || {
            let out = self.try_exec(&["ip", "-6", "addr", "show", "dev", ifname, "scope", "link"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("inet6 fe80")
                .then_some(())
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes we started are stopped by their guards; deleting the namespace removes
        // its interfaces (and the peer ends of its veths).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
    }
}

/// Creates a veth pair with one end `a_name` in `a` and the other `b_name` in `b`, both up;
/// `b_mac` sets the MAC of the `b` end.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str, b_mac: Option<&str>) {
    run(&[
        "ip",
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]);
    if let Some(m) = b_mac {
        b.exec(&["ip", "link", "set", b_name, "address", m]);
    }
    a.exec(&["ip", "link", "set", a_name, "up"]);
    b.exec(&["ip", "link", "set", b_name, "up"]);
}

/// Enslaves `ifname` to bridge `br` in `ns`.
pub fn enslave(ns: &Netns, ifname: &str, br: &str) {
    ns.exec(&["ip", "link", "set", ifname, "master", br]);
}

/// Polls `check` every 25 ms until it returns `Some`, for at most `secs` seconds.
pub fn poll<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A temporary directory for a test's files (configs, logs, lease files).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mft-netns")
        .tempdir()
        .unwrap()
}

/// Reads a file written atomically by a child, if present.
pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Writes `content` to `path` atomically (temp file + rename), for files a parent polls.
pub fn write_atomic(path: &Path, content: &[u8]) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Fails with the package to install when `binary` is missing (tests never skip silently).
pub fn require(binary: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{binary} not found: install the {package} package (apt-get install -y {package})"
    );
}
