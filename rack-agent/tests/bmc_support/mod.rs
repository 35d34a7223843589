//! Virtual BMCs for the BMC driver tests: ipmi_sim with a generated lan.conf/.emu/FRU image and
//! the lab `chassis_control.sh`, sushy-tools' emulator and the lab Redfish BMC over TLS with a
//! minted certificate, a static HTTP server for images, and process guards that stop every
//! child by PID on drop (also when a test panics).
//!
//! Missing tools fail the test with the package to install; nothing is skipped.
//! Use as `mod bmc_support;` from a test crate.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless `program` runs; names the package that provides it.
pub fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "BMC tests need `{program}`: install {package} (scripts install it on fresh machines)"
    );
}

/// Fails the test unless `python3 -c "import <module>"` works; names the pip package.
pub fn require_python_module(module: &str, pip: &str) {
    require("python3", "the python3 package");
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "BMC tests need the Python module {module}: pip install {pip}"
    );
}

/// The lab's virtual-BMC fixtures (`tests/lab/vbmc` in the workspace).
pub fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/lab/vbmc")
        .canonicalize()
        .unwrap()
}

/// A child process killed (SIGKILL, by PID) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    what: String,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and output appended to `log`.
    pub fn spawn(what: &str, mut cmd: Command, log: &Path) -> Proc {
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
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child: Some(child),
            what: what.to_owned(),
            log: log.to_owned(),
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "{} exited ({status}):\n{}",
                    self.what,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_tcp(proc: &mut Proc, port: u16) {
    poll(30, &format!("TCP port {port}"), || {
        proc.assert_running();
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

// ---------------------------------------------------------------------------------------------
// IPMI
// ---------------------------------------------------------------------------------------------

/// IPMI FRU type/length byte + 8-bit ASCII data (IPMI FRU spec 13.1).
fn tl(s: &str) -> Vec<u8> {
    let mut v = vec![0xC0 | s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// Closes a FRU area: end marker, pad to 8 bytes, length byte, zero checksum.
fn area(mut body: Vec<u8>) -> Vec<u8> {
    body.push(0xC1);
    while !(body.len() + 1).is_multiple_of(8) {
        body.push(0);
    }
    body[1] = ((body.len() + 1) / 8) as u8;
    let sum = body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    body.push(sum.wrapping_neg());
    body
}

/// A FRU image with a chassis and a product area (what `ipmitool fru print` reads).
pub fn fru_image(
    product_serial: &str,
    chassis_serial: &str,
    manufacturer: &str,
    product: &str,
) -> Vec<u8> {
    let mut chassis = vec![1, 0, 0x17];
    chassis.extend(tl("CHP-1"));
    chassis.extend(tl(chassis_serial));
    let chassis = area(chassis);
    let mut prod = vec![1, 0, 0];
    for f in [
        manufacturer,
        product,
        "MF1000-A",
        "1.0",
        product_serial,
        "ASSET7",
        "",
    ] {
        prod.extend(tl(f));
    }
    let prod = area(prod);
    let mut hdr = vec![1, 0, 1, 0, (1 + chassis.len() / 8) as u8, 0, 0];
    let sum = hdr.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    hdr.push(sum.wrapping_neg());
    [hdr, chassis, prod].concat()
}

/// The serial the ipmi_sim FRU image carries.
pub const IPMI_SIM_SERIAL: &str = "SN-METAL-0042";
/// ipmi_sim's admin user.
pub const IPMI_USER: &str = "admin";
/// ipmi_sim's admin password (lives in the fixture's lan.conf only).
pub const IPMI_PASSWORD: &str = "lab-password";

/// ipmi_sim on 127.0.0.1:<free port> with `chassis_control.sh` recording power/boot into
/// `state`, stopped on drop.
#[derive(Debug)]
pub struct IpmiSim {
    /// UDP port.
    pub port: u16,
    /// `$VBMC_STATE_DIR` of the chassis_control script (files `power`, `boot`, `calls.log`).
    pub state: PathBuf,
    proc: Proc,
}

impl IpmiSim {
    /// Starts ipmi_sim in `dir`; `env` is passed to chassis_control (e.g. `VBMC_QEMU`).
    pub fn start(dir: &Path, env: &[(&str, String)]) -> IpmiSim {
        require("ipmi_sim", "the openipmi package");
        require("ipmitool", "the ipmitool package");
        let state = dir.join("chassis");
        std::fs::create_dir_all(&state).unwrap();
        let fru = dir.join("fru.bin");
        let image = fru_image(IPMI_SIM_SERIAL, "CHS-SN-42", "Metal Inc", "MF-1000");
        std::fs::write(&fru, &image).unwrap();
        let control = lab_dir().join("chassis_control.sh");
        // A port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_udp_port();
            let lan = dir.join("lan.conf");
            std::fs::write(
                &lan,
                format!(
                    "name \"mfsim\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"{}\"\n  user 2 true \"{IPMI_USER}\" \"{IPMI_PASSWORD}\" admin 10 none md2 md5 straight\n",
                    control.display()
                ),
            )
            .unwrap();
            let emu = dir.join("sim.emu");
            std::fs::write(
                &emu,
                format!(
                    "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_add_fru_data 0x20 0 {} file 0 \"{}\"\nmc_enable 0x20\n",
                    image.len(),
                    fru.display()
                ),
            )
            .unwrap();
            let simstate = dir.join("simstate");
            std::fs::create_dir_all(&simstate).unwrap();
            let mut cmd = Command::new("ipmi_sim");
            cmd.arg("-c")
                .arg(&lan)
                .arg("-f")
                .arg(&emu)
                .arg("-s")
                .arg(&simstate)
                .arg("-n")
                .env("VBMC_STATE_DIR", &state);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut proc = Proc::spawn("ipmi_sim", cmd, &dir.join("ipmi_sim.log"));
            // Ready when ipmitool gets an answer (ipmi_sim needs cipher suite 3).
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut up = false;
            while Instant::now() < deadline {
                if proc
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok())
                    .flatten()
                    .is_some()
                {
                    break;
                }
                let ok = Command::new("ipmitool")
                    .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &port.to_string()])
                    .args(["-U", IPMI_USER, "-E", "-C", "3", "-N", "1", "-R", "1"])
                    .args(["chassis", "power", "status"])
                    .env("IPMI_PASSWORD", IPMI_PASSWORD)
                    .stdin(Stdio::null())
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if ok {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if up {
                return IpmiSim { port, state, proc };
            }
            eprintln!("ipmi_sim on port {port} did not come up:\n{}", proc.log());
        }
        panic!("ipmi_sim did not start");
    }

    /// The address the driver uses.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A state file of the chassis_control script, trimmed.
    pub fn state_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.state.join(name))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Every chassis_control call so far, one per line.
    pub fn calls(&self) -> Vec<String> {
        self.state_file("calls.log")
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs the real ipmitool against the simulator (to prepare state the driver then reads).
    pub fn ipmitool(&self, args: &[&str]) -> String {
        let out = Command::new("ipmitool")
            .args([
                "-I",
                "lanplus",
                "-H",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", IPMI_USER, "-E", "-C", "3"])
            .args(args)
            .env("IPMI_PASSWORD", IPMI_PASSWORD)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ipmitool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Redfish
// ---------------------------------------------------------------------------------------------

/// A CA and a server certificate for 127.0.0.1 minted with the project's PKI, as files.
#[derive(Debug)]
pub struct Tls {
    /// CA certificate file.
    pub ca: PathBuf,
    /// Server certificate file.
    pub cert: PathBuf,
    /// Server key file.
    pub key: PathBuf,
    /// SHA-256 of the server certificate's DER, hex.
    pub fingerprint: String,
}

impl Tls {
    /// Mints into `dir`.
    pub fn mint(dir: &Path, name: &str) -> Tls {
        let ca = pki::CertAuthority::generate(&format!("{name}-ca")).unwrap();
        let leaf = ca
            .issue(&pki::Identity::Rack(name.into()), &["127.0.0.1".into()], 30)
            .unwrap();
        let tls = Tls {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            fingerprint: pki::fingerprint(&leaf.cert_pem).unwrap(),
        };
        std::fs::write(&tls.ca, ca.cert_pem()).unwrap();
        std::fs::write(&tls.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&tls.key, &leaf.key_pem).unwrap();
        tls
    }
}

/// sushy-tools' emulator (fake driver, one system `node-1` powered off) over HTTPS with
/// bcrypt basic auth, stopped on drop.
#[derive(Debug)]
pub struct Sushy {
    /// TCP port.
    pub port: u16,
    proc: Proc,
}

/// The fake system's UUID (sushy redirects `/Systems/node-1` to it).
pub const SUSHY_UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

impl Sushy {
    /// Starts it in `dir` with `tls`, user `admin` / `password`.
    pub fn start(dir: &Path, tls: &Tls, password: &str) -> Sushy {
        require(
            "sushy-emulator",
            "sushy-tools (pip install sushy-tools==2.2.0)",
        );
        require_python_module("bcrypt", "bcrypt");
        let htpasswd = dir.join("htpasswd");
        // bcrypt with 4 rounds: sushy checks it on every request.
        let out = Command::new("python3")
            .args([
                "-c",
                "import bcrypt,sys; print('admin:' + bcrypt.hashpw(sys.stdin.readline().strip().encode(), bcrypt.gensalt(rounds=4)).decode())",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        std::fs::write(&htpasswd, out.stdout).unwrap();
        let port = free_tcp_port();
        let conf = dir.join("sushy.conf");
        std::fs::write(
            &conf,
            format!(
                "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                 SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_AUTH_FILE = '{}'\n\
                 SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n\
                 SUSHY_EMULATOR_STATE_DIR = '{}'\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SUSHY_UUID}', 'name': 'node-1', 'power_state': 'Off', 'nics': [{{'mac': '52:54:00:12:34:56', 'ip': '10.0.0.50'}}]}}]\n",
                htpasswd.display(),
                tls.cert.display(),
                tls.key.display(),
                dir.join("sushy-state").display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new("sushy-emulator");
        cmd.arg("--config").arg(&conf);
        let mut proc = Proc::spawn("sushy-emulator", cmd, &dir.join("sushy.log"));
        wait_tcp(&mut proc, port);
        Sushy { port, proc }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The emulator's log.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// The lab Redfish BMC (`tests/lab/vbmc/redfish_bmc.py`) over HTTPS, stopped on drop.
#[derive(Debug)]
pub struct LabRedfish {
    /// TCP port.
    pub port: u16,
    proc: Proc,
}

impl LabRedfish {
    /// Starts it in `dir` with `tls`, user `admin` / `password` and extra arguments.
    pub fn start(
        dir: &Path,
        tls: &Tls,
        password: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> LabRedfish {
        require("python3", "the python3 package");
        let port = free_tcp_port();
        let mut cmd = Command::new("python3");
        cmd.arg(lab_dir().join("redfish_bmc.py"))
            .args(["--port", &port.to_string()])
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .args(extra)
            .env("VBMC_PASSWORD", password);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("redfish_bmc.py", cmd, &dir.join("redfish_bmc.log"));
        wait_tcp(&mut proc, port);
        LabRedfish { port, proc }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The fixture's log.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// A static HTTP server for images (python3 -m http.server) on 127.0.0.1, stopped on drop.
#[derive(Debug)]
pub struct Files {
    /// TCP port.
    pub port: u16,
    proc: Proc,
}

impl Files {
    /// Serves `root`.
    pub fn serve(root: &Path, log: &Path) -> Files {
        require("python3", "the python3 package");
        let port = free_tcp_port();
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(root)
            .arg(port.to_string());
        let mut proc = Proc::spawn("http.server", cmd, log);
        wait_tcp(&mut proc, port);
        Files { port, proc }
    }

    /// URL of `name` below the root.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The server's access log.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}
