//! The virtual datacenter lab (issue 5): network namespaces, Open vSwitch top-of-rack
//! switches, three coordinators, one real rack agent per rack, QEMU VMs (TCG) powered only by
//! their virtual BMCs (ipmi_sim, the lab Redfish fixture), built from a small TOML config
//! ([`LabConfig`]) and torn down without leftovers.
//!
//! # Topology (see `tests/lab/README.md` for the picture)
//!
//! * `<prefix>-core`: `ovsdb-server` + `ovs-vswitchd` (userspace datapath) with one bridge
//!   `tor<n>` per rack — the rack's top-of-rack switch, provisioning VLAN `100+n` and BMC VLAN
//!   `200+n` as access ports; a Linux bridge `mgmt` (10.250.0.1/24) on which the coordinators
//!   listen; the VMs' persistent taps (OVS access ports on the provisioning VLAN) and QEMU.
//! * `<prefix>-<rack>`: the rack agent, with `mgmt` (10.250.0.1x), `prov` (10.n.0.1, DHCP,
//!   TFTP, HTTP with the microkernel) and `bmc` (10.n.1.1).
//! * `<prefix>-<rack>-bmc`: that rack's virtual BMCs on `eth0` (10.n.1.11, .12, ...), and on
//!   `host` (169.254.n.2, a veth to `h<n>` in the core namespace) the VMs' in-band IPMI system
//!   interfaces their QEMU processes connect to (`Lab::ipmi_sim` below).
//!
//! # Processes
//!
//! Every long-running process is spawned detached (own process group, output in
//! `<dir>/logs/`) and recorded with its start time in `<dir>/pids`; the BMCs' QEMU processes
//! write `<dir>/<rack>/<vm>/chassis/qemu.pid`. [`Lab::down`] (and `Drop`, unless
//! `METALFLEET_KEEP=1`) stops all of them and whatever else runs in the lab's namespaces,
//! deletes the namespaces and the directory. [`Lab::up`] on a directory left by a crash runs
//! the same teardown first.

pub mod buildout;
mod chaos;
mod config;
pub mod lldp;
pub mod os;
mod sys;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;

pub use config::{
    BmcKind, ConfigError, Firmware, LabConfig, RackConfig, VmConfig, AGENT_HTTP_PORT, BMC_USER,
    MGMT_IP, REDFISH_PORT,
};
pub use sys::{alive, leftovers, Teardown};

use sys::{ns_cmd, ns_ok, ns_run, output, require, run, spawn_detached, wait_for};

/// How long a coordinator or agent may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a virtual BMC may take to answer.
const BMC_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of each log shown when building the lab fails.
const TAIL_LINES: usize = 25;
/// OVMF firmware for `firmware = "uefi"` VMs.
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Why the lab could not be built, used or torn down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A program the lab runs is not installed.
    #[error("{program} not found: install {package}")]
    Missing {
        /// The program.
        program: String,
        /// Where it comes from.
        package: String,
    },
    /// A command failed.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// The command line.
        what: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A condition did not hold in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// The bound.
        after: Duration,
    },
    /// A name the lab does not have.
    #[error("the lab has no {kind} named {name:?}")]
    Unknown {
        /// `vm` or `rack`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// Something survived teardown.
    #[error("teardown incomplete: {0}")]
    Teardown(String),
    /// Building the lab failed; the logs' tails are attached.
    #[error("{source:#}\n{logs}")]
    Build {
        /// The first failure.
        #[source]
        source: Box<LabError>,
        /// Tails of every log of the lab.
        logs: String,
    },
    /// Anything else (a helper of the test harness failed).
    #[error("{0}")]
    Other(String),
}

type Result<T, E = LabError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))
}

/// A built lab. Dropping it tears it down unless `METALFLEET_KEEP=1` or [`Lab::detach`].
#[derive(Debug)]
pub struct Lab {
    config: LabConfig,
    dir: PathBuf,
    bins: PathBuf,
    token: String,
    children: Mutex<Vec<Child>>,
    torn_down: Mutex<bool>,
    detached: bool,
}

impl Lab {
    /// Builds the lab described by `config` in `dir` (created; if it exists, the lab left
    /// there is torn down first) and returns once the coordinators have a leader, every
    /// rack agent is connected and every BMC answers. VMs stay powered off.
    pub fn up(config: &LabConfig, dir: &Path) -> Result<Lab> {
        for (p, pkg) in [
            ("ip", "iproute2"),
            ("ovsdb-server", "openvswitch-switch"),
            ("ovs-vswitchd", "openvswitch-switch"),
            ("ovs-vsctl", "openvswitch-switch"),
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
            ("ipmi_sim", "openipmi"),
            ("ipmitool", "ipmitool"),
            ("python3", "python3"),
            ("curl", "curl"),
            ("ethtool", "ethtool"),
            ("lldpd", "lldpd"),
            ("lldpcli", "lldpd"),
        ] {
            require(p, pkg)?;
        }
        let dir = std::path::absolute(dir).map_err(io(format!("resolving {}", dir.display())))?;
        if dir.to_string_lossy().contains(char::is_whitespace) {
            // The BMCs' QEMU command line is split on whitespace by chassis_control.sh.
            return Err(LabError::Other(format!(
                "{}: the lab directory must not contain whitespace",
                dir.display()
            )));
        }
        // Leftovers of a previous lab in this directory (its own prefix) or with this prefix.
        if let Some(old) = std::fs::read_to_string(dir.join("prefix"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && *s != config.prefix)
        {
            sys::teardown(&dir, &old, &mut Vec::new(), true)?;
        }
        sys::teardown(&dir, &config.prefix, &mut Vec::new(), false)?;
        mkdir(&dir.join("logs"))?;
        // Written first: a crash from here on leaves enough for `down` to clean up.
        write(&dir.join("prefix"), &config.prefix)?;
        write(&dir.join("lab.toml"), &config.to_toml())?;
        let bins = crate::bin_dir().map_err(|e| LabError::Other(format!("{e:#}")))?;
        write(&dir.join("bin-dir"), &bins.display().to_string())?;
        let mut lab = Lab {
            config: config.clone(),
            dir,
            bins,
            token: String::new(),
            children: Mutex::new(Vec::new()),
            torn_down: Mutex::new(false),
            detached: false,
        };
        match lab.build() {
            Ok(()) => Ok(lab),
            Err(e) => {
                let logs = sys::log_tails(&lab.dir, TAIL_LINES);
                if keep() {
                    lab.detached = true;
                    eprintln!("lab: build failed; kept in {}", lab.dir.display());
                } else if let Err(d) = lab.down() {
                    eprintln!("lab: teardown after a failed build: {d}");
                }
                Err(LabError::Build {
                    source: Box::new(e),
                    logs,
                })
            }
        }
    }

    /// The lab built earlier in `dir` (by `lab up` in another process). The handle does not
    /// tear the lab down when dropped; [`Lab::down`] does.
    pub fn open(dir: &Path) -> Result<Lab> {
        let dir = std::path::absolute(dir).map_err(io(format!("resolving {}", dir.display())))?;
        let config = LabConfig::load(&dir.join("lab.toml"))?;
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map(|s| s.trim().to_owned())
                .map_err(io(format!("reading {}", dir.join(name).display())))
        };
        Ok(Lab {
            bins: PathBuf::from(read("bin-dir")?),
            token: read("admin.token").unwrap_or_default(),
            config,
            dir,
            children: Mutex::new(Vec::new()),
            torn_down: Mutex::new(false),
            detached: true,
        })
    }

    /// One lab per test binary: the first caller builds it from `config` in `dir`, later
    /// callers get the same lab while anyone still holds it; the last holder's drop tears it
    /// down. Tests of one binary that run concurrently therefore share one lab.
    pub fn shared(config: &LabConfig, dir: &Path) -> Result<Arc<Lab>> {
        static SHARED: Mutex<Weak<Lab>> = Mutex::new(Weak::new());
        let mut slot = SHARED
            .lock()
            .map_err(|_| LabError::Other("shared lab lock poisoned".into()))?;
        if let Some(lab) = slot.upgrade() {
            if lab.config == *config {
                return Ok(lab);
            }
            return Err(LabError::Other(format!(
                "a lab with another config ({}) is already shared in this process",
                lab.config.prefix
            )));
        }
        let lab = Arc::new(Lab::up(config, dir)?);
        *slot = Arc::downgrade(&lab);
        Ok(lab)
    }

    /// Lets the processes outlive this handle (the `lab up` command exits, the lab stays).
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Tears the lab down: stops every process by PID (TERM, then KILL after a bound),
    /// deletes the namespaces and the directory. Idempotent.
    pub fn down(&self) -> Result<Teardown> {
        let mut done = self
            .torn_down
            .lock()
            .map_err(|_| LabError::Other("teardown lock poisoned".into()))?;
        if *done {
            return Ok(Teardown::default());
        }
        let mut children = self
            .children
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        let report = sys::teardown(&self.dir, &self.config.prefix, &mut children, false)?;
        *done = true;
        Ok(report)
    }

    /// Tears down the lab in `dir` without opening it (works on half-built or crashed labs):
    /// the prefix comes from `dir/prefix`, else from `fallback_prefix`.
    pub fn down_dir(dir: &Path, fallback_prefix: &str) -> Result<Teardown> {
        let prefix = std::fs::read_to_string(dir.join("prefix"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback_prefix.to_owned());
        sys::teardown(dir, &prefix, &mut Vec::new(), false)
    }

    /// The lab's shape.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The core namespace (coordinators, OVS, QEMU).
    pub fn core_ns(&self) -> String {
        self.config.core_ns()
    }

    /// The namespace of `rack`'s agent.
    pub fn rack_ns(&self, rack: &str) -> Result<String> {
        Ok(self.config.rack_ns(self.rack(rack)?))
    }

    /// The directory with `coordinator`, `metalctl` and `rack-agent`.
    pub fn bin_dir(&self) -> &Path {
        &self.bins
    }

    /// The admin token (`coordinator init`'s).
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// API URL of coordinator `i` (1-based), reachable inside the core namespace.
    pub fn api_url(&self, i: u8) -> String {
        self.config.api_url(i)
    }

    /// The cluster CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.coord_dir(1).join("data/tls/ca.crt")
    }

    /// `metalctl`'s config file (coordinators, token, CA).
    pub fn metalctl_config(&self) -> PathBuf {
        self.dir.join("metalctl.toml")
    }

    /// A rack's agent config file.
    pub fn agent_config(&self, rack: &str) -> Result<PathBuf> {
        Ok(self.rack_dir(self.rack(rack)?).join("agent.toml"))
    }

    /// A VM's serial console file (appended across power cycles).
    pub fn console_path(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("{vm}.console"))
    }

    /// A VM's serial console so far (lossy UTF-8; empty before its first power-on).
    pub fn vm_console(&self, vm: &str) -> Result<String> {
        self.vm(vm)?;
        Ok(std::fs::read(self.console_path(vm))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default())
    }

    /// The PID of a VM's QEMU process, while it runs (read from its BMC's state, not
    /// through the BMC).
    pub fn vm_pid(&self, vm: &str) -> Result<Option<u32>> {
        let (rack, v) = self.vm(vm)?;
        let pidfile = self.vm_dir(rack, v).join("chassis/qemu.pid");
        Ok(std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|p| sys::alive(*p)))
    }

    /// Whether a VM's QEMU process runs.
    pub fn vm_running(&self, vm: &str) -> Result<bool> {
        Ok(self.vm_pid(vm)?.is_some())
    }

    /// PIDs of the lab's recorded processes (daemons, coordinators, agents, BMCs) that run.
    pub fn running_pids(&self) -> Vec<u32> {
        sys::recorded(&self.dir.join("pids"))
            .into_iter()
            .filter(sys::Recorded::running)
            .map(|r| r.pid)
            .collect()
    }

    /// Runs `metalctl <args>` inside the core namespace with the lab's config; its stdout.
    pub fn metalctl(&self, args: &[&str]) -> Result<String> {
        let bin = self.bins.join("metalctl");
        let cfg = self.metalctl_config();
        let mut full = vec![
            bin.to_str().unwrap_or("metalctl"),
            "-c",
            cfg.to_str().unwrap_or("metalctl.toml"),
        ];
        full.extend_from_slice(args);
        let mut c = ns_cmd(&self.core_ns(), &full);
        c.env("NO_COLOR", "1");
        output(c)
    }

    /// `metalctl -o json <args>`, parsed.
    pub fn metalctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let text = self.metalctl(&full)?;
        serde_json::from_str(&text)
            .map_err(|e| LabError::Other(format!("metalctl {args:?}: not JSON ({e}): {text}")))
    }

    /// `rack-agent bmc ... <op...>` for `vm`'s BMC, run in its rack's namespace (so the
    /// request goes agent driver → BMC VLAN → virtual BMC); stdout.
    pub fn bmc(&self, vm: &str, op: &[&str]) -> Result<String> {
        let (rack, v) = self.vm(vm)?;
        let bin = self.bins.join("rack-agent");
        let cfg = self.rack_dir(rack).join("agent.toml");
        let address = v.bmc_ip(rack).to_string();
        let mut args = vec![
            bin.to_str().unwrap_or("rack-agent"),
            "bmc",
            "--config",
            cfg.to_str().unwrap_or("agent.toml"),
            "--driver",
            v.bmc.driver(),
            "--address",
            &address,
            "--username",
            BMC_USER,
        ];
        args.extend_from_slice(op);
        let mut c = ns_cmd(&self.config.rack_ns(rack), &args);
        c.env("METALFLEET_BMC_PASSWORD", v.bmc_password());
        output(c)
    }

    /// Powers `vm` on or off through its BMC with the agent's own drivers.
    pub fn power(&self, vm: &str, on: bool) -> Result<()> {
        self.bmc(vm, &["power", if on { "on" } else { "off" }])
            .map(|_| ())
    }

    /// The power state `vm`'s BMC reports (`rack-agent bmc ... -o json power status`).
    pub fn power_status(&self, vm: &str) -> Result<bool> {
        let out = self.bmc(vm, &["-o", "json", "power", "status"])?;
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| LabError::Other(format!("power status of {vm}: {e}: {out}")))?;
        // `{"result": "power", "power": "on"|"off"}`
        match v.get("power").and_then(Value::as_str) {
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            _ => Err(LabError::Other(format!(
                "power status of {vm}: unexpected answer {out}"
            ))),
        }
    }

    /// A summary of what runs: recorded processes, VMs, namespaces.
    pub fn status(&self) -> String {
        let mut out = format!("lab {} in {}\n", self.config.prefix, self.dir.display());
        for r in sys::recorded(&self.dir.join("pids")) {
            out.push_str(&format!(
                "  {:<8} {:>7}  {}\n",
                if r.running() { "running" } else { "stopped" },
                r.pid,
                r.what
            ));
        }
        for rack in &self.config.racks {
            for v in &rack.vms {
                let on = self.vm_running(&v.name).unwrap_or(false);
                out.push_str(&format!(
                    "  vm {:<14} {:<4} serial {:<16} bmc {} {:<15} mac {}  console {}\n",
                    v.name,
                    if on { "on" } else { "off" },
                    v.serial,
                    v.bmc.driver(),
                    v.bmc_ip(rack),
                    v.mac(rack, 0),
                    self.console_path(&v.name).display()
                ));
            }
        }
        for ns in sys::lab_namespaces(&self.config.prefix) {
            out.push_str(&format!("  namespace {ns}\n"));
        }
        out
    }

    // -----------------------------------------------------------------------------------
    // Building
    // -----------------------------------------------------------------------------------

    fn rack(&self, name: &str) -> Result<&RackConfig> {
        self.config.rack(name).ok_or_else(|| LabError::Unknown {
            kind: "rack",
            name: name.to_owned(),
        })
    }

    fn vm(&self, name: &str) -> Result<(&RackConfig, &VmConfig)> {
        self.config.vm(name).ok_or_else(|| LabError::Unknown {
            kind: "vm",
            name: name.to_owned(),
        })
    }

    fn coord_dir(&self, i: u8) -> PathBuf {
        // Also spelled out in `coordinators` (a closure there cannot borrow `self`).
        self.dir.join(format!("coordinator-{i}"))
    }

    fn rack_dir(&self, rack: &RackConfig) -> PathBuf {
        self.dir.join(&rack.name)
    }

    fn vm_dir(&self, rack: &RackConfig, vm: &VmConfig) -> PathBuf {
        self.rack_dir(rack).join(&vm.name)
    }

    fn ovs_dir(&self) -> PathBuf {
        self.dir.join("ovs")
    }

    fn ovs_sock(&self) -> PathBuf {
        self.ovs_dir().join("db.sock")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Spawns a detached process inside `ns`, logged to `logs/<name>.log`.
    fn spawn(&self, ns: &str, name: &str, args: &[&str], env: &[(&str, String)]) -> Result<()> {
        let mut c = ns_cmd(ns, args);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = spawn_detached(c, name, &self.log(name), &self.dir.join("pids"))?;
        if let Ok(mut ch) = self.children.lock() {
            ch.push(child);
        }
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let microkernel = microkernel_dir()?;
        let built = started.elapsed();
        self.namespaces()?;
        self.switches()?;
        self.cabling()?;
        self.lldp()?;
        let net = started.elapsed();
        self.coordinators()?;
        self.fleet_records()?;
        let coordinators = started.elapsed();
        let pins = self.bmcs()?;
        self.agents(&microkernel, &pins)?;
        self.wait_bmcs()?;
        eprintln!(
            "lab {}: up in {:.1?} (microkernel {built:.1?}, network {:.1?}, coordinators {:.1?}, agents and BMCs {:.1?})",
            self.config.prefix,
            started.elapsed(),
            net - built,
            coordinators - net,
            started.elapsed() - coordinators,
        );
        Ok(())
    }

    fn namespaces(&self) -> Result<()> {
        for ns in self.config.namespaces() {
            run(&["ip", "netns", "add", &ns])?;
            ns_run(&ns, &["ip", "link", "set", "lo", "up"])?;
            // Link-local addresses usable at once (the agent answers router solicitations).
            ns_run(
                &ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"],
            )?;
            ns_run(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])?;
        }
        Ok(())
    }

    fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db=unix:{}", self.ovs_sock().display());
        let mut full = vec!["ovs-vsctl", db.as_str(), "--timeout=30"];
        full.extend_from_slice(args);
        run(&full)
    }

    fn switches(&self) -> Result<()> {
        let d = self.ovs_dir();
        mkdir(&d)?;
        let core = self.core_ns();
        let db = d.join("conf.db");
        run(&[
            "ovsdb-tool",
            "create",
            &db.display().to_string(),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ])?;
        let env: Vec<(&str, String)> = ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR"]
            .iter()
            .map(|k| (*k, d.display().to_string()))
            .collect();
        let remote = format!("--remote=punix:{}", self.ovs_sock().display());
        let ctl = format!("--unixctl={}", d.join("ovsdb-server.ctl").display());
        let log = format!("--log-file={}", d.join("ovsdb-server.log").display());
        let dbs = db.display().to_string();
        self.spawn(
            &core,
            "ovsdb-server",
            &[
                "ovsdb-server",
                &remote,
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                &ctl,
                &log,
                "--no-chdir",
                &dbs,
            ],
            &env,
        )?;
        let sock = self.ovs_sock();
        wait_for(START_TIMEOUT, "the OVSDB socket", || {
            Ok(sock.exists().then_some(()))
        })?;
        self.vsctl(&["--no-wait", "init"])?;
        let db_arg = format!("unix:{}", sock.display());
        let vctl = format!("--unixctl={}", d.join("ovs-vswitchd.ctl").display());
        let vlog = format!("--log-file={}", d.join("ovs-vswitchd.log").display());
        self.spawn(
            &core,
            "ovs-vswitchd",
            &["ovs-vswitchd", &db_arg, &vctl, &vlog, "--no-chdir"],
            &env,
        )?;
        for rack in &self.config.racks {
            let br = rack.bridge();
            self.vsctl(&[
                "add-br",
                &br,
                "--",
                "set",
                "bridge",
                &br,
                "datapath_type=netdev",
            ])?;
        }
        Ok(())
    }

    /// A veth pair `a_if` in `a` ↔ `b_if` in `b`, both up, with transmit checksum offload
    /// off: the OVS userspace datapath reads frames with `AF_PACKET` and forwards a UDP or TCP
    /// segment whose checksum the kernel left for "hardware" as is — the receiver drops it
    /// (ping works, IPMI and DHCP do not).
    fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        run(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ])?;
        for (ns, ifname) in [(a, a_if), (b, b_if)] {
            ns_run(ns, &["ethtool", "-K", ifname, "tx", "off"])?;
            ns_run(ns, &["ip", "link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    fn access_port(&self, rack: &RackConfig, port: &str, vlan: u16) -> Result<()> {
        self.vsctl(&["add-port", &rack.bridge(), port, &format!("tag={vlan}")])
            .map(|_| ())
    }

    fn cabling(&self) -> Result<()> {
        let core = self.core_ns();
        ns_run(&core, &["ip", "link", "add", "mgmt", "type", "bridge"])?;
        ns_run(
            &core,
            &["ip", "addr", "add", &format!("{MGMT_IP}/24"), "dev", "mgmt"],
        )?;
        ns_run(&core, &["ip", "link", "set", "mgmt", "up"])?;
        for rack in &self.config.racks {
            let n = rack.number;
            let rns = self.config.rack_ns(rack);
            let bns = self.config.bmc_ns(rack);
            // Management: the agent reaches the coordinators.
            self.veth(&rns, "mgmt", &core, &format!("m{n}"))?;
            ns_run(
                &core,
                &["ip", "link", "set", &format!("m{n}"), "master", "mgmt"],
            )?;
            ns_run(
                &rns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", rack.agent_mgmt_ip()),
                    "dev",
                    "mgmt",
                ],
            )?;
            // Provisioning VLAN: the agent's boot services.
            self.veth(&rns, "prov", &core, &format!("p{n}"))?;
            self.access_port(rack, &format!("p{n}"), rack.prov_vlan())?;
            ns_run(
                &rns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", rack.agent_ip()),
                    "dev",
                    "prov",
                ],
            )?;
            // BMC VLAN: the agent and the BMCs.
            self.veth(&rns, "bmc", &core, &format!("b{n}"))?;
            self.access_port(rack, &format!("b{n}"), rack.bmc_vlan())?;
            ns_run(
                &rns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", rack.agent_bmc_ip()),
                    "dev",
                    "bmc",
                ],
            )?;
            self.veth(&bns, "eth0", &core, &format!("v{n}"))?;
            self.access_port(rack, &format!("v{n}"), rack.bmc_vlan())?;
            // The host link: QEMU (core namespace) reaches its BMC's in-band system interface
            // here, as a server's host side reaches its BMC over an internal bus.
            self.veth(&core, &format!("h{n}"), &bns, "host")?;
            for (ns, ifname, ip) in [
                (&core, format!("h{n}"), rack.host_link_ip()),
                (&bns, "host".to_owned(), rack.host_link_bmc_ip()),
            ] {
                ns_run(
                    ns,
                    &["ip", "addr", "add", &format!("{ip}/24"), "dev", &ifname],
                )?;
            }
            for vm in &rack.vms {
                ns_run(
                    &bns,
                    &[
                        "ip",
                        "addr",
                        "add",
                        &format!("{}/24", vm.bmc_ip(rack)),
                        "dev",
                        "eth0",
                    ],
                )?;
                // Persistent taps: QEMU attaches and detaches (power on/off), OVS keeps the port.
                for k in 0..vm.nics {
                    let tap = vm.tap(rack, k);
                    ns_run(&core, &["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
                    ns_run(&core, &["ip", "link", "set", &tap, "up"])?;
                    self.access_port(rack, &tap, rack.prov_vlan())?;
                }
            }
            // The agent binds router advertisements to the link-local address.
            wait_for(START_TIMEOUT, "a link-local address on prov", || {
                let out = ns_run(
                    &rns,
                    &["ip", "-6", "addr", "show", "dev", "prov", "scope", "link"],
                )?;
                Ok(out.contains("inet6 fe80").then_some(()))
            })?;
        }
        Ok(())
    }

    fn coordinator_bin(&self) -> String {
        self.bins.join("coordinator").display().to_string()
    }

    fn coordinators(&mut self) -> Result<()> {
        let core = self.core_ns();
        for i in 1..=self.config.coordinators {
            let d = self.coord_dir(i);
            mkdir(&d)?;
            write(
                &d.join("coordinator.toml"),
                &format!(
                    "id = {i}\ncluster_name = \"{prefix}\"\ndata_dir = {data:?}\n\
                     api_listen = \"{api}\"\nraft_listen = \"{raft}\"\nfleet_listen = \"{fleet}\"\n",
                    prefix = self.config.prefix,
                    data = d.join("data").display().to_string(),
                    api = self.config.api_url(i).trim_start_matches("https://"),
                    raft = self.config.raft_addr(i),
                    fleet = self.config.fleet_addr(i),
                ),
            )?;
        }
        let bin = self.coordinator_bin();
        let dir = self.dir.clone();
        let cfg = |i: u8| {
            dir.join(format!("coordinator-{i}"))
                .join("coordinator.toml")
                .display()
                .to_string()
        };
        let init = ns_run(&core, &[&bin, "init", "-c", &cfg(1)])?;
        self.token = init
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| LabError::Other("coordinator init printed no token".into()))?
            .to_owned();
        write(&self.dir.join("admin.token"), &self.token)?;
        let ca = self.ca_cert().display().to_string();
        let urls: Vec<String> = (1..=self.config.coordinators)
            .map(|i| self.config.api_url(i))
            .collect();
        write(
            &self.metalctl_config(),
            &format!(
                "coordinators = {urls:?}\ntoken = {:?}\nca_cert = {ca:?}\n",
                self.token
            ),
        )?;
        self.start_coordinator(1)?;
        for i in 2..=self.config.coordinators {
            let mut join = ns_cmd(
                &core,
                &[
                    &bin,
                    "join",
                    "-c",
                    &cfg(i),
                    "--via",
                    &self.config.api_url(1),
                    "--ca-cert",
                    &ca,
                ],
            );
            join.env("METALFLEET_TOKEN", &self.token);
            output(join)?;
            self.start_coordinator(i)?;
            self.metalctl(&[
                "cluster",
                "add-learner",
                &i.to_string(),
                &self.config.raft_addr(i),
                &self.config.api_url(i),
                "--fleet-addr",
                &self.config.fleet_addr(i),
            ])?;
            self.metalctl(&["cluster", "promote", &i.to_string()])?;
        }
        Ok(())
    }

    fn start_coordinator(&self, i: u8) -> Result<()> {
        let core = self.core_ns();
        let cfg = self
            .coord_dir(i)
            .join("coordinator.toml")
            .display()
            .to_string();
        self.spawn(
            &core,
            &format!("coordinator-{i}"),
            &[&self.coordinator_bin(), "run", "-c", &cfg],
            &[("NO_COLOR", "1".into())],
        )?;
        let ca = self.ca_cert().display().to_string();
        // The first member must lead before anything is written; a joining member answers
        // /readyz only once it is in the cluster, which happens after this (add-learner).
        let probe = if i == 1 { "readyz" } else { "healthz" };
        let url = format!("{}/{probe}", self.config.api_url(i));
        wait_for(
            START_TIMEOUT,
            &format!("coordinator {i} to answer /{probe}"),
            || Ok(ns_ok(&core, &["curl", "-sf", "-m", "2", "--cacert", &ca, &url]).then_some(())),
        )
    }

    /// The site, the racks and the expected inventory of the VMs with `in_inventory = true`.
    fn fleet_records(&self) -> Result<()> {
        let site = &self.config.site;
        self.metalctl(&["site", "create", site, "--description", "Metalfleet lab"])?;
        for rack in &self.config.racks {
            self.metalctl(&["rack", "create", &rack.name, "--site", site])?;
        }
        let mut csv = String::from(
            "serial,site,rack,u_position,model,bmc_address,bmc_driver,bmc_username,bmc_password,nics,static_ips,tags\n",
        );
        let mut any = false;
        for rack in &self.config.racks {
            for v in rack.vms.iter().filter(|v| v.in_inventory) {
                any = true;
                let nics: Vec<String> = (0..v.nics)
                    .map(|k| {
                        format!(
                            "eno{}={}@{}:{}",
                            k + 1,
                            v.mac(rack, k),
                            rack.switch_name(),
                            v.tap(rack, k)
                        )
                    })
                    .collect();
                csv.push_str(&format!(
                    "{serial},{site},{rack},{u},QEMU lab VM,{bmc},{driver},{user},{pw},{nics},eno1={ip}/24@{gw};bmc={bmc}/24,lab\n",
                    serial = v.serial,
                    rack = rack.name,
                    u = v.u_position,
                    bmc = v.bmc_ip(rack),
                    driver = v.bmc.driver(),
                    user = BMC_USER,
                    pw = v.bmc_password(),
                    nics = nics.join(";"),
                    ip = v.static_ip(rack),
                    gw = rack.agent_ip(),
                ));
            }
        }
        if any {
            let file = self.dir.join("inventory.csv");
            write(&file, &csv)?;
            self.metalctl(&["inventory", "import", &file.display().to_string()])?;
        }
        Ok(())
    }

    /// The QEMU command line a VM's BMC runs in the core namespace (no `-daemonize`: the
    /// chassis_control script adds it).
    fn qemu_command(&self, rack: &RackConfig, v: &VmConfig) -> String {
        let disk = self.vm_dir(rack, v).join("disk.qcow2");
        let mut args = vec![
            format!("ip netns exec {} qemu-system-x86_64", self.core_ns()),
            format!("-name {}", v.name),
            "-accel tcg -smp 1 -display none -boot order=nc".to_owned(),
            format!("-m {}", v.memory_mb),
            format!(
                "-smbios type=1,serial={},manufacturer=Metalfleet,product=lab-vm",
                v.serial
            ),
            format!(
                "-chardev file,id=con,path={},append=on -serial chardev:con",
                self.console_path(&v.name).display()
            ),
            format!("-drive file={},if=virtio,format=qcow2", disk.display()),
            // In-band IPMI: a KCS system interface backed by the BMC's ipmi_sim (VM codec).
            // reconnect: the BMC may start after the VM or restart under it.
            format!(
                "-chardev socket,id=ipmi0,host={},port={},reconnect=1 -device ipmi-bmc-extern,chardev=ipmi0,id=bmc0 -device isa-ipmi-kcs,bmc=bmc0",
                v.kcs_addr(rack).ip(),
                v.kcs_addr(rack).port()
            ),
        ];
        // vnet_hdr=off: without the virtio header QEMU offers the guest no checksum offload,
        // so every frame reaching the OVS userspace datapath carries its checksums.
        for k in 0..v.nics {
            args.push(format!(
                "-netdev tap,id=n{k},ifname={},script=no,downscript=no,vnet_hdr=off -device virtio-net-pci,netdev=n{k},mac={}",
                v.tap(rack, k),
                v.mac(rack, k)
            ));
        }
        if v.firmware == Firmware::Uefi {
            args.push(format!("-bios {OVMF}"));
        }
        args.join(" ")
    }

    /// Starts every virtual BMC; returns `(address, certificate SHA-256)` of the Redfish ones
    /// for the agents' pins.
    fn bmcs(&self) -> Result<Vec<(String, String)>> {
        let vbmc = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/vbmc");
        let control = vbmc.join("chassis_control.sh").display().to_string();
        let redfish = vbmc.join("redfish_bmc.py").display().to_string();
        if self
            .config
            .racks
            .iter()
            .any(|r| r.vms.iter().any(|v| v.firmware == Firmware::Uefi))
            && !Path::new(OVMF).exists()
        {
            return Err(LabError::Missing {
                program: OVMF.into(),
                package: "ovmf".into(),
            });
        }
        let mut pins = Vec::new();
        for rack in &self.config.racks {
            let bns = self.config.bmc_ns(rack);
            for v in &rack.vms {
                let d = self.vm_dir(rack, v);
                mkdir(&d.join("chassis"))?;
                run(&[
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    &d.join("disk.qcow2").display().to_string(),
                    &format!("{}M", v.disk_mb),
                ])?;
                let env = vec![
                    ("VBMC_STATE_DIR", d.join("chassis").display().to_string()),
                    ("VBMC_QEMU", self.qemu_command(rack, v)),
                    ("VBMC_PASSWORD", v.bmc_password()),
                ];
                let ip = v.bmc_ip(rack).to_string();
                match v.bmc {
                    BmcKind::Ipmi => {
                        let listen = std::net::SocketAddrV4::new(v.bmc_ip(rack), 623);
                        self.ipmi_sim(rack, v, &d, &format!("bmc-{}", v.name), listen, &env)?;
                    }
                    BmcKind::Redfish => {
                        let ca = pki::CertAuthority::generate(&format!("{}-bmc", v.name))
                            .map_err(|e| LabError::Other(format!("BMC CA for {}: {e}", v.name)))?;
                        let leaf = ca
                            .issue(
                                &pki::Identity::Rack(v.name.clone()),
                                std::slice::from_ref(&ip),
                                365,
                            )
                            .map_err(|e| {
                                LabError::Other(format!("BMC cert for {}: {e}", v.name))
                            })?;
                        let pin = pki::fingerprint(&leaf.cert_pem).map_err(|e| {
                            LabError::Other(format!("BMC cert for {}: {e}", v.name))
                        })?;
                        write(&d.join("bmc.crt"), &leaf.cert_pem)?;
                        write(&d.join("bmc.key"), &leaf.key_pem)?;
                        self.spawn(
                            &bns,
                            &format!("bmc-{}", v.name),
                            &[
                                "python3",
                                &redfish,
                                "--listen",
                                &ip,
                                "--port",
                                &REDFISH_PORT.to_string(),
                                "--cert",
                                &d.join("bmc.crt").display().to_string(),
                                "--key",
                                &d.join("bmc.key").display().to_string(),
                                "--serial",
                                &v.serial,
                                "--power-hook",
                                &control,
                                "--lan-ip",
                                &ip,
                                "--lan-mac",
                                &bmc_mac(&bns)?,
                            ],
                            &env,
                        )?;
                        // The same server answers IPMI in-band (see `ipmi_sim`).
                        let inband = d.join("inband");
                        mkdir(&inband)?;
                        self.ipmi_sim(
                            rack,
                            v,
                            &inband,
                            &format!("bmc-{}-inband", v.name),
                            v.inband_lan_addr(),
                            &env,
                        )?;
                        pins.push((ip, pin));
                    }
                }
            }
        }
        Ok(pins)
    }

    /// Starts one ipmi_sim for `v` in its rack's BMC namespace, its files in `dir`: IPMI over
    /// LAN on `listen`; the VM's in-band system interface (QEMU's `ipmi-bmc-extern`, a KCS
    /// interface in the guest) on the host link; LAN parameters (`lan print`) kept by
    /// `lan_control.sh` in `<vm>/lan`, starting as the BMC's address on the BMC VLAN;
    /// `chassis_control.sh` with the VM's chassis state, so in-band and out-of-band power
    /// requests drive the same QEMU.
    ///
    /// IPMI VMs: this is their BMC (`listen` is its address, port 623), so an in-band
    /// `user set password` changes the login the agent uses. Redfish VMs: this models the
    /// IPMI side of their BMC, reachable in-band only (`listen` is on the BMC namespace's
    /// loopback; the Redfish fixture keeps its address).
    fn ipmi_sim(
        &self,
        rack: &RackConfig,
        v: &VmConfig,
        dir: &Path,
        name: &str,
        listen: std::net::SocketAddrV4,
        env: &[(&str, String)],
    ) -> Result<()> {
        let vbmc = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/vbmc");
        let control = vbmc.join("chassis_control.sh").display().to_string();
        let lan_control = vbmc.join("lan_control.sh").display().to_string();
        let bns = self.config.bmc_ns(rack);
        let lan_dir = self.vm_dir(rack, v).join("lan");
        mkdir(&lan_dir)?;
        let mac = bmc_mac(&bns)?;
        // The BMC VLAN is one /24 without a router: no gateway.
        for (parm, value) in [
            ("ip_addr", v.bmc_ip(rack).to_string()),
            ("ip_addr_src", "static".to_owned()),
            ("subnet_mask", "255.255.255.0".to_owned()),
            ("mac_addr", mac),
        ] {
            write(&lan_dir.join(parm), &format!("{value}\n"))?;
        }
        let kcs = v.kcs_addr(rack);
        let lan = dir.join("lan.conf");
        write(
            &lan,
            &format!(
                "name \"{name}\"\nset_working_mc 0x20\n  startlan 1\n    addr {lan_ip} {lan_port}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789{kind:02x}{idx:02x}{num:02x}\n    lan_config_program \"{lan_control} {lan_dir}\"\n  endlan\n  serial 15 {kcs_ip} {kcs_port} codec VM\n  chassis_control \"{control}\"\n  user 2 true \"{BMC_USER}\" \"{pw}\" admin 10 none md2 md5 straight\n",
                lan_ip = listen.ip(),
                lan_port = listen.port(),
                kind = if listen.port() == 623 { 0xab } else { 0xac },
                idx = v.index,
                num = rack.number,
                lan_dir = lan_dir.display(),
                kcs_ip = kcs.ip(),
                kcs_port = kcs.port(),
                pw = v.bmc_password(),
            ),
        )?;
        let emu = dir.join("sim.emu");
        write(
            &emu,
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
        )?;
        let state = dir.join("simstate");
        mkdir(&state)?;
        self.spawn(
            &bns,
            name,
            &[
                "ipmi_sim",
                "-c",
                &lan.display().to_string(),
                "-f",
                &emu.display().to_string(),
                "-s",
                &state.display().to_string(),
                "-n",
            ],
            env,
        )
    }

    /// Waits until every BMC answers from its rack's agent namespace (ipmitool / curl: the
    /// peers themselves, independent of the agent's drivers).
    fn wait_bmcs(&self) -> Result<()> {
        for rack in &self.config.racks {
            let rns = self.config.rack_ns(rack);
            for v in &rack.vms {
                let ip = v.bmc_ip(rack).to_string();
                let what = format!("{} BMC of {} at {ip}", v.bmc.driver(), v.name);
                wait_for(BMC_TIMEOUT, &what, || {
                    let ok = match v.bmc {
                        BmcKind::Ipmi => {
                            let mut c = ns_cmd(
                                &rns,
                                &[
                                    "ipmitool", "-I", "lanplus", "-H", &ip, "-U", BMC_USER, "-E",
                                    "-C", "3", "-N", "1", "-R", "1", "chassis", "power", "status",
                                ],
                            );
                            c.env("IPMI_PASSWORD", v.bmc_password());
                            output(c).is_ok()
                        }
                        BmcKind::Redfish => {
                            // And its in-band side, on the BMC namespace's loopback.
                            let inband = v.inband_lan_addr();
                            let mut c = ns_cmd(
                                &self.config.bmc_ns(rack),
                                &[
                                    "ipmitool",
                                    "-I",
                                    "lanplus",
                                    "-H",
                                    &inband.ip().to_string(),
                                    "-p",
                                    &inband.port().to_string(),
                                    "-U",
                                    BMC_USER,
                                    "-E",
                                    "-C",
                                    "3",
                                    "-N",
                                    "1",
                                    "-R",
                                    "1",
                                    "chassis",
                                    "power",
                                    "status",
                                ],
                            );
                            c.env("IPMI_PASSWORD", v.bmc_password());
                            ns_ok(
                                &rns,
                                &[
                                    "curl",
                                    "-sfk",
                                    "-m",
                                    "2",
                                    &format!("https://{ip}:{REDFISH_PORT}/redfish/v1/"),
                                ],
                            ) && output(c).is_ok()
                        }
                    };
                    Ok(ok.then_some(()))
                })?;
            }
        }
        Ok(())
    }

    fn agents(&self, microkernel: &Path, pins: &[(String, String)]) -> Result<()> {
        let agent_bin = self.bins.join("rack-agent").display().to_string();
        let fleet: Vec<String> = (1..=self.config.coordinators)
            .map(|i| self.config.fleet_addr(i))
            .collect();
        for rack in &self.config.racks {
            let d = self.rack_dir(rack);
            let data = d.join("agent");
            let assets = data.join("assets/microkernel");
            mkdir(&assets)?;
            for f in ["vmlinuz", "initrd.img"] {
                let (from, to) = (microkernel.join(f), assets.join(f));
                // A hard link when the cache is on the same file system, else a copy.
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(io(format!(
                        "copying {} to {}",
                        from.display(),
                        to.display()
                    )))?;
                }
            }
            let ip = rack.agent_ip();
            let n = rack.number;
            let mut toml = format!(
                r#"rack = "{rack}"
data_dir = "{data}"
coordinators = {fleet:?}
status_interval_secs = 1

[http]
listen = "{ip}:{AGENT_HTTP_PORT}"

[tftp]
listen = "{ip}:69"

[dhcp]
[[dhcp.subnets]]
network = "10.{n}.0.0/24"
interface = "prov"
server_ip = "{ip}"
router = "{ip}"
dns = ["{ip}"]
domain = "{rack}.{site}"
pools = ["{pool}"]
discovery = true

# ipmi_sim only speaks cipher suite 3; the lab's Redfish BMCs have self-signed certificates,
# pinned per address below.
[bmc]
ipmi_cipher_suite = 3
timeout_secs = 10
power_wait_secs = 60

[[switches]]
name = "{switch}"
driver = "ovs"
address = "unix:{sock}"
bridge = "{bridge}"
"#,
                rack = rack.name,
                data = data.display(),
                site = self.config.site,
                pool = rack.pool(),
                switch = rack.switch_name(),
                sock = self.ovs_sock().display(),
                bridge = rack.bridge(),
            );
            for v in rack.vms.iter().filter(|v| v.bmc == BmcKind::Redfish) {
                let addr = v.bmc_ip(rack).to_string();
                if let Some((_, pin)) = pins.iter().find(|(a, _)| *a == addr) {
                    toml.push_str(&format!(
                        "\n[[bmc.overrides]]\naddress = \"{addr}\"\nredfish_verify = \"pin\"\nredfish_pin_sha256 = \"{pin}\"\n"
                    ));
                }
            }
            let cfg = d.join("agent.toml");
            write(&cfg, &toml)?;
            let cfg_s = cfg.display().to_string();
            let rns = self.config.rack_ns(rack);
            let token_out = self.metalctl(&["rack", "enroll-token", &rack.name])?;
            let token = token_out
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .ok_or_else(|| {
                    LabError::Other("metalctl rack enroll-token printed nothing".into())
                })?
                .to_owned();
            let mut enroll = ns_cmd(
                &rns,
                &[
                    &agent_bin,
                    "enroll",
                    "--config",
                    &cfg_s,
                    "--api",
                    &self.config.api_url(1),
                    "--ca-cert",
                    &self.ca_cert().display().to_string(),
                ],
            );
            enroll.env("METALFLEET_ENROLL_TOKEN", token);
            output(enroll)?;
            self.spawn(
                &rns,
                &format!("agent-{}", rack.name),
                &[&agent_bin, "run", "--config", &cfg_s],
                &[("RUST_LOG", "info".into()), ("NO_COLOR", "1".into())],
            )?;
        }
        // Ready when its control socket accepts. Not `rack-agent status`: run before the agent
        // holds its store, that opens the store itself and keeps the starting agent out.
        for rack in &self.config.racks {
            let sock = self.rack_dir(rack).join("agent/agent.sock");
            wait_for(
                START_TIMEOUT,
                &format!("the agent of {}", rack.name),
                || {
                    Ok(std::os::unix::net::UnixStream::connect(&sock)
                        .ok()
                        .map(|_| ()))
                },
            )?;
        }
        wait_for(START_TIMEOUT, "every rack agent to connect", || {
            let racks = self.metalctl_json(&["rack", "list"])?;
            let connected = racks
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|r| r.pointer("/agent/connected") == Some(&Value::Bool(true)))
                        .count()
                })
                .unwrap_or(0);
            Ok((connected == self.config.racks.len()).then_some(()))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if keep() {
            eprintln!(
                "lab kept in {} (METALFLEET_KEEP); tear down with: cargo run -p metalfleet-tests --bin lab -- down --dir {}",
                self.dir.display(),
                self.dir.display()
            );
            return;
        }
        if std::thread::panicking() {
            eprintln!("{}", sys::log_tails(&self.dir, TAIL_LINES));
        }
        if let Err(e) = self.down() {
            eprintln!("lab teardown: {e}");
        }
    }
}

/// The MAC of the BMC namespace's `eth0`, which every BMC of the rack shares.
fn bmc_mac(bns: &str) -> Result<String> {
    Ok(ns_run(bns, &["cat", "/sys/class/net/eth0/address"])?
        .trim()
        .to_owned())
}

fn keep() -> bool {
    std::env::var_os("METALFLEET_KEEP").is_some_and(|v| v == "1")
}

/// `microkernel/build.sh` (cached by content hash): the directory with `vmlinuz` and
/// `initrd.img`. Run once per process: the script replaces older cache entries and must not
/// run twice at the same time (two tests building labs concurrently).
pub fn microkernel_dir() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_microkernel().map_err(|e| e.to_string()))
        .clone()
        .map_err(LabError::Other)
}

fn build_microkernel() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../microkernel/build.sh");
    let out = output(Command::new(&script))?;
    let dir = PathBuf::from(out.lines().last().unwrap_or("").trim());
    for f in ["vmlinuz", "initrd.img"] {
        if !dir.join(f).is_file() {
            return Err(LabError::Other(format!(
                "{} printed {}, which has no {f}",
                script.display(),
                dir.display()
            )));
        }
    }
    Ok(dir)
}
