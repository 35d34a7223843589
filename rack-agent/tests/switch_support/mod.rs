//! Fixtures for the switch driver tests: Open vSwitch (userspace datapath) started in its own
//! namespace with hosts in namespaces on its ports, raw 802.1Q frames from a host, and the
//! simulated vendor CLI served over SSH (`cli_switch.py`). Processes are stopped by PID and
//! namespaces deleted on drop.
//!
//! Use as `mod netns; mod switch_support;` from a test crate.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rack_agent::switch::config::{DriverConfig, OvsAddress, SshCliConfig};
use rack_agent::switch::sshcli::Dialect;
use rack_agent::switch::{self, SwitchConfig, SwitchDriver};

use crate::netns::{self, ChildGuard, Netns};

pub use crate::netns::require;

/// A process started in the test's own namespace, killed (SIGKILL) and reaped by PID on drop.
pub struct ProcGuard {
    child: std::process::Child,
    what: String,
}

impl ProcGuard {
    /// Starts `cmd` with stdout/stderr appended to `log`.
    pub fn spawn(mut cmd: Command, what: &str, log: &Path) -> ProcGuard {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        ProcGuard {
            child,
            what: what.to_owned(),
        }
    }

    /// Whether it has exited, with its exit code.
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().unwrap().map(|s| s.code())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open vSwitch (`ovs-vswitchd` with the userspace datapath in namespace `ns`, which holds
/// the switch ports; `ovsdb-server` in the test's namespace so its TCP remote is on our
/// loopback), state under a temp dir, with bridge `br0`.
pub struct Ovs {
    // Dropped in declaration order: vswitchd, then the database it reads, then the
    // namespace and the state directory.
    vswitchd: ChildGuard,
    db: ProcGuard,
    pub ns: Netns,
    pub sock: PathBuf,
    pub tcp_port: Option<u16>,
    pub dir: tempfile::TempDir,
}

/// A host: a namespace whose `eth0` is cabled to OVS port `port`.
pub struct Host {
    pub ns: Netns,
    pub port: String,
    pub ip: String,
}

impl Ovs {
    /// Starts OVS. `probe_ms`: when set, the database also listens on a TCP port configured
    /// through a `Manager` row with that inactivity probe (the server then sends `echo`
    /// after that much idle time and drops clients that do not answer).
    pub fn start(probe_ms: Option<u64>) -> Ovs {
        require("ovsdb-server", "openvswitch-switch");
        require("ovs-vswitchd", "openvswitch-switch");
        let dir = netns::tempdir();
        let d = dir.path();
        let ns = Netns::new("ovs");
        let schema = "/usr/share/openvswitch/vswitch.ovsschema";
        netns::run(&[
            "ovsdb-tool",
            "create",
            d.join("conf.db").to_str().unwrap(),
            schema,
        ]);
        let sock = d.join("db.sock");
        let env: Vec<(&str, String)> = ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR"]
            .iter()
            .map(|k| (*k, d.display().to_string()))
            .collect();
        let remote = format!("--remote=punix:{}", sock.display());
        let ctl = format!("--unixctl={}", d.join("ovsdb.ctl").display());
        let log = format!("--log-file={}", d.join("ovsdb-server.log").display());
        let db_path = d.join("conf.db").display().to_string();
        let mut cmd = Command::new("ovsdb-server");
        cmd.args([
            remote.as_str(),
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
            ctl.as_str(),
            log.as_str(),
            "-vjsonrpc:file:dbg",
            "--no-chdir",
            db_path.as_str(),
        ]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let db = ProcGuard::spawn(cmd, "ovsdb-server", &d.join("ovsdb-server.out"));
        netns::poll(20, "the OVSDB socket", || sock.exists().then_some(()));
        let vsctl_db = format!("--db=unix:{}", sock.display());
        netns::run(&["ovs-vsctl", &vsctl_db, "--no-wait", "init"]);
        let vs_ctl = format!("--unixctl={}", d.join("vswitchd.ctl").display());
        let vs_log = format!("--log-file={}", d.join("ovs-vswitchd.log").display());
        let db_arg = format!("unix:{}", sock.display());
        let vswitchd = ns.spawn(
            &["ovs-vswitchd", &db_arg, &vs_ctl, &vs_log, "--no-chdir"],
            &env,
            &d.join("ovs-vswitchd.out"),
        );
        let mut ovs = Ovs {
            dir,
            ns,
            sock,
            tcp_port: None,
            vswitchd,
            db,
        };
        ovs.vsctl(&[
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ]);
        if let Some(ms) = probe_ms {
            let port = free_port();
            ovs.vsctl(&[
                "--",
                "--id=@m",
                "create",
                "Manager",
                &format!("target=\"ptcp:{port}:127.0.0.1\""),
                &format!("inactivity_probe={ms}"),
                "--",
                "set",
                "Open_vSwitch",
                ".",
                "manager_options=@m",
            ]);
            ovs.tcp_port = Some(port);
            netns::poll(20, "the OVSDB TCP remote", || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            });
        }
        ovs
    }

    /// `ovs-vsctl` against this database; panics on failure.
    pub fn vsctl(&self, args: &[&str]) -> Output {
        let db = format!("--db=unix:{}", self.sock.display());
        let mut full = vec!["ovs-vsctl", db.as_str(), "--timeout=20"];
        full.extend_from_slice(args);
        netns::run(&full)
    }

    /// One column of a port as `ovs-vsctl get` prints it.
    pub fn get(&self, port: &str, column: &str) -> String {
        let out = self.vsctl(&["get", "port", port, column]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A host namespace with `eth0` at `ip`/24, cabled to a new port of `br0`.
    pub fn add_host(&self, ip: &str) -> Host {
        let ns = Netns::new("h");
        let port = netns::unique("p");
        netns::veth(&ns, "eth0", &self.ns, &port, None);
        ns.addr("eth0", &format!("{ip}/24"));
        self.vsctl(&["add-port", "br0", &port]);
        Host {
            ns,
            port,
            ip: ip.to_owned(),
        }
    }

    /// The driver for `br0` over the unix socket.
    pub fn driver(&self) -> Arc<dyn SwitchDriver> {
        switch::connect(&SwitchConfig {
            name: "tor-ovs".into(),
            driver: DriverConfig::Ovs {
                address: OvsAddress::Unix(self.sock.clone()),
                bridge: "br0".into(),
            },
            timeout: Duration::from_secs(20),
        })
        .unwrap()
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the database server: an unresponsive switch.
    pub fn freeze_db(&self, frozen: bool) {
        let sig = if frozen { "-STOP" } else { "-CONT" };
        netns::run(&["kill", sig, &self.db.pid().to_string()]);
    }

    /// The OVSDB server's log (JSON-RPC traffic at debug level).
    pub fn db_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ovsdb-server.log")).unwrap_or_default()
    }
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Host {
    /// The MAC address of `eth0`.
    pub fn mac(&self) -> String {
        let out = self.ns.exec(&["cat", "/sys/class/net/eth0/address"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Whether one ping to `ip` is answered within a second.
    pub fn ping_once(&self, ip: &str) -> bool {
        self.ns
            .try_exec(&["ping", "-c", "1", "-W", "1", "-n", ip])
            .status
            .success()
    }

    /// Asserts `ip` answers (polls: the first ping may race ARP and flow setup).
    pub fn reaches(&self, ip: &str) {
        netns::poll(15, &format!("{} reaching {ip}", self.ip), || {
            self.ping_once(ip).then_some(())
        });
    }

    /// Asserts `ip` does not answer three pings (one second each). Neighbour entries are
    /// flushed first so an old ARP entry cannot help.
    pub fn cannot_reach(&self, ip: &str) {
        let _ = self.ns.try_exec(&["ip", "neigh", "flush", "dev", "eth0"]);
        let out = self
            .ns
            .try_exec(&["ping", "-c", "3", "-i", "0.3", "-W", "1", "-n", ip]);
        assert!(
            !out.status.success(),
            "{} unexpectedly reached {ip}: {}",
            self.ip,
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Sends an ARP request for `target_ip` tagged with 802.1Q `vlan` from `eth0` (a raw
    /// frame: the kernel here has no 802.1Q module) until a reply tagged with the same VLAN
    /// arrives; returns tcpdump's line for it, or `None` after `tries` attempts.
    pub fn tagged_arp(&self, dir: &Path, vlan: u16, target_ip: &str, tries: u32) -> Option<String> {
        let script = dir.join("tagged_arp.py");
        std::fs::write(&script, TAGGED_ARP_PY).unwrap();
        let cap = dir.join(format!("cap-{}-{vlan}.txt", self.port));
        let _ = std::fs::remove_file(&cap);
        // Other hosts' ARP requests on the VLAN arrive too: look for the reply to ours.
        let filter = format!("vlan {vlan} and arp");
        let want = format!("Reply {target_ip} is-at");
        let mut dump = self.ns.spawn(
            &[
                "tcpdump", "-l", "-n", "-e", "-Q", "in", "-i", "eth0", &filter,
            ],
            &[],
            &cap,
        );
        // tcpdump prints "listening on" once its filter is installed.
        netns::poll(10, "tcpdump to start", || {
            netns::read(&cap)
                .filter(|t| t.contains("listening on"))
                .map(|_| ())
        });
        for _ in 0..tries {
            self.ns.exec(&[
                "python3",
                script.to_str().unwrap(),
                &vlan.to_string(),
                &self.ip,
                target_ip,
            ]);
            for _ in 0..20 {
                if let Some(line) = netns::read(&cap)
                    .and_then(|t| t.lines().find(|l| l.contains(&want)).map(str::to_owned))
                {
                    dump.kill();
                    return Some(line);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        dump.kill();
        None
    }
}

/// Sends one 802.1Q-tagged ARP request: `tagged_arp.py <vlan> <sender ip> <target ip>`.
const TAGGED_ARP_PY: &str = r#"
import socket, struct, sys
vid = int(sys.argv[1])
src = socket.inet_aton(sys.argv[2])
dst = socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = s.getsockname()[4]
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, src, b"\0" * 6, dst)
s.send(b"\xff" * 6 + mac + struct.pack("!HHH", 0x8100, vid, 0x0806) + arp)
"#;

/// The simulated vendor CLI (`cli_switch.py`) served over SSH on loopback, with a password
/// and a fresh host key.
pub struct CliSwitch {
    pub port: u16,
    pub host_key: String,
    pub dialect: Dialect,
    pub ports: Vec<String>,
    pub password_file: PathBuf,
    child: ProcGuard,
    pub dir: tempfile::TempDir,
}

/// Port names of the simulated switch per dialect.
pub fn cli_ports(dialect: Dialect, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| match dialect {
            Dialect::Nxos => format!("Ethernet1/{i}"),
            Dialect::Eos => format!("Ethernet{i}"),
            Dialect::Os10 => format!("ethernet1/1/{i}"),
            Dialect::Junos => format!("ge-0/0/{}", i - 1),
        })
        .collect()
}

impl CliSwitch {
    /// Starts the fixture for `dialect` with `n` ports.
    pub fn start(dialect: Dialect, n: usize) -> CliSwitch {
        CliSwitch::start_with(dialect, n, &[])
    }

    /// Starts the fixture; the ports in `ignore` accept configuration but never take it.
    pub fn start_with(dialect: Dialect, n: usize, ignore: &[&str]) -> CliSwitch {
        let ok = Command::new("python3")
            .args(["-c", "import asyncssh"])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "python3 asyncssh missing: pip install asyncssh");
        require("ssh", "openssh-client");
        let dir = netns::tempdir();
        let d = dir.path();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/switch_support/cli_switch.py");
        let password_file = d.join("password");
        std::fs::write(&password_file, "s3cret-pass\n").unwrap();
        let ports = cli_ports(dialect, n);
        let ready = d.join("ready");
        let log = d.join("cli_switch.log");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg("--dialect")
            .arg(dialect.as_str())
            .arg("--password-file")
            .arg(&password_file)
            .arg("--ports")
            .arg(ports.join(","))
            .arg("--state-dir")
            .arg(d)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--ignore-ports")
            .arg(ignore.join(","));
        let mut child = ProcGuard::spawn(cmd, "cli_switch.py", &log);
        let text = netns::poll(30, "cli_switch.py to listen", || {
            if let Some(code) = child.try_exit() {
                panic!(
                    "cli_switch.py exited ({code:?}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            netns::read(&ready)
        });
        let mut lines = text.lines();
        let port: u16 = lines.next().unwrap().trim().parse().unwrap();
        let host_key = lines.next().unwrap().trim().to_owned();
        CliSwitch {
            dir,
            port,
            host_key,
            dialect,
            ports,
            password_file,
            child,
        }
    }

    /// The SSH CLI driver for this switch (password from `password_file`).
    pub fn config(&self, password_file: &Path) -> SwitchConfig {
        SwitchConfig {
            name: format!("tor-{}", self.dialect.as_str()),
            driver: DriverConfig::SshCli(SshCliConfig {
                host: "127.0.0.1".into(),
                port: self.port,
                dialect: self.dialect,
                username: "metalfleet".into(),
                password_file: password_file.to_owned(),
                known_host_key: self.host_key.clone(),
                ssh_binary: PathBuf::from("ssh"),
            }),
            timeout: Duration::from_secs(20),
        }
    }

    /// The driver with the right password.
    pub fn driver(&self) -> Arc<dyn SwitchDriver> {
        switch::connect(&self.config(&self.password_file)).unwrap()
    }

    /// Changes a port's state inside the fixture without the driver (an operator at the
    /// console): writes a command file the fixture applies before its next answer.
    pub fn behind_back(&self, port: &str, mode: &str) {
        netns::write_atomic(
            &self.dir.path().join("behind_back"),
            format!("{port} {mode}\n").as_bytes(),
        );
    }

    /// Makes the fixture stop answering (`true`) or answer again.
    pub fn hang(&self, on: bool) {
        let path = self.dir.path().join("hang");
        if on {
            std::fs::write(path, b"").unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }

    /// Every line the fixture received, in order (its transcript).
    pub fn transcript(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("transcript")).unwrap_or_default()
    }
}
