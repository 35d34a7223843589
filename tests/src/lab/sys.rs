//! The lab's contact with the operating system: commands run to completion (in the root
//! namespace or inside one of the lab's), detached processes recorded by PID and start time,
//! and stopping them again — from this process or from a later `lab down` that only has the
//! lab directory.
//!
//! A recorded PID is signalled only while its `/proc/<pid>/stat` start time still matches the
//! one recorded, so a PID the kernel has since handed to another program is never touched.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LabError;

/// How long stopped processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);
/// Poll interval of the lab's waits.
pub const TICK: Duration = Duration::from_millis(100);

/// `ip netns exec <ns> <args...>` as a command.
pub fn ns_cmd(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion; its stdout on success, an error with both streams otherwise.
pub fn output(mut cmd: Command) -> Result<String, LabError> {
    let what = describe(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Io {
            what: format!("running {what}"),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            what,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` (program first) to completion; stdout.
pub fn run(args: &[&str]) -> Result<String, LabError> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]);
    output(c)
}

/// Runs `args` inside namespace `ns`; stdout.
pub fn ns_run(ns: &str, args: &[&str]) -> Result<String, LabError> {
    output(ns_cmd(ns, args))
}

/// Whether `args` inside `ns` exits 0 (for readiness probes).
pub fn ns_ok(ns: &str, args: &[&str]) -> bool {
    ns_cmd(ns, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fails naming the package when `program` is not on `PATH`.
pub fn require(program: &str, package: &str) -> Result<(), LabError> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(LabError::Missing {
            program: program.to_owned(),
            package: package.to_owned(),
        })
    }
}

/// Polls `cond` every [`TICK`] until it yields `Some`; a timeout error names `what`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<Option<T>, LabError>,
) -> Result<T, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        std::thread::sleep(TICK);
    }
}

/// `/proc/<pid>/stat`'s state and start time (clock ticks since boot).
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of stat overall is the 20th after the state's field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((s, _)) if s != 'Z')
}

/// Spawns `cmd` detached — its own process group, stdin closed, stdout and stderr appended to
/// `log` — and records it in `pids` (`<pid> <start time> <what>` per line).
pub fn spawn_detached(
    mut cmd: Command,
    what: &str,
    log: &Path,
    pids: &Path,
) -> Result<Child, LabError> {
    let io = |what: String| move |source| LabError::Io { what, source };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("opening {}", log.display())))?;
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io(format!("starting {what} ({})", describe(&cmd))))?;
    let pid = child.id();
    let start = stat(pid).map(|(_, s)| s).unwrap_or(0);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pids)
        .map_err(io(format!("opening {}", pids.display())))?;
    writeln!(f, "{pid} {start} {what}").map_err(io(format!("writing {}", pids.display())))?;
    Ok(child)
}

/// One line of the `pids` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Process id.
    pub pid: u32,
    /// Start time when it was recorded.
    pub start: u64,
    /// What it is.
    pub what: String,
}

impl Recorded {
    /// Still the process that was recorded, and running.
    pub fn running(&self) -> bool {
        matches!(stat(self.pid), Some((s, start)) if s != 'Z' && start == self.start)
    }
}

/// The `pids` file's entries (none when it does not exist).
pub fn recorded(pids: &Path) -> Vec<Recorded> {
    std::fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some(Recorded {
                pid: it.next()?.parse().ok()?,
                start: it.next()?.parse().ok()?,
                what: it.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// Names of every network namespace.
pub fn netns_list() -> Vec<String> {
    // `ip netns list` prints "name (id: N)" for namespaces with an id.
    run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Namespaces belonging to a lab with this prefix.
pub fn lab_namespaces(prefix: &str) -> Vec<String> {
    let p = format!("{prefix}-");
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&p))
        .collect()
}

/// PIDs of processes inside namespace `ns`.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    run(&["ip", "netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `qemu.pid` files below `dir` whose process still runs a command line naming `dir`.
fn qemu_pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let needle = dir.display().to_string();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "qemu.pid") {
                let pid = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if let Some(pid) = pid {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains(&needle) {
                        out.push(pid);
                    }
                }
            }
        }
    }
    out
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What a teardown did.
#[derive(Debug, Default, Clone)]
pub struct Teardown {
    /// Processes signalled.
    pub stopped: usize,
    /// Of those, how many needed SIGKILL.
    pub killed: usize,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Whether the lab directory was removed.
    pub removed_dir: bool,
}

/// Stops every process of the lab in `dir` with namespace prefix `prefix` — the recorded ones,
/// QEMU processes its BMCs daemonized, and anything else running inside the lab's namespaces —
/// with SIGTERM, then SIGKILL after [`TERM_GRACE`]; deletes the namespaces; removes `dir`
/// (unless `keep_dir`). `children` are this process's own children, reaped on the way.
pub fn teardown(
    dir: &Path,
    prefix: &str,
    children: &mut Vec<Child>,
    keep_dir: bool,
) -> Result<Teardown, LabError> {
    let mut report = Teardown::default();
    let namespaces = lab_namespaces(prefix);
    let mut victims: BTreeSet<u32> = recorded(&dir.join("pids"))
        .into_iter()
        .filter(Recorded::running)
        .map(|r| r.pid)
        .collect();
    victims.extend(qemu_pids(dir));
    for ns in &namespaces {
        victims.extend(netns_pids(ns));
    }
    victims.remove(&std::process::id());
    report.stopped = victims.len();
    for pid in &victims {
        signal(*pid, "-TERM");
    }
    let reap = |children: &mut Vec<Child>| {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
    };
    let deadline = Instant::now() + TERM_GRACE;
    while victims.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        reap(children);
        std::thread::sleep(TICK);
    }
    // Stragglers, and whatever a dying BMC started meanwhile (a chassis_control run).
    for round in 0..3 {
        let mut left: BTreeSet<u32> = victims.iter().copied().filter(|p| alive(*p)).collect();
        for ns in &namespaces {
            left.extend(netns_pids(ns));
        }
        left.remove(&std::process::id());
        if left.is_empty() {
            break;
        }
        report.killed += left.len();
        for pid in &left {
            signal(*pid, "-KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while left.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            reap(children);
            std::thread::sleep(TICK);
        }
        if round == 2 && left.iter().any(|p| alive(*p)) {
            return Err(LabError::Teardown(format!(
                "processes {left:?} survive SIGKILL"
            )));
        }
    }
    for mut c in children.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    for ns in namespaces {
        run(&["ip", "netns", "del", &ns])?;
        report.namespaces.push(ns);
    }
    if !keep_dir && dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|source| LabError::Io {
            what: format!("removing {}", dir.display()),
            source,
        })?;
        report.removed_dir = true;
    }
    Ok(report)
}

/// What is left of a lab: its namespaces, its recorded processes still running, its
/// directory. Empty after a clean teardown.
pub fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = lab_namespaces(prefix)
        .into_iter()
        .map(|n| format!("namespace {n}"))
        .collect();
    out.extend(
        recorded(&dir.join("pids"))
            .into_iter()
            .filter(Recorded::running)
            .map(|r| format!("process {} ({})", r.pid, r.what)),
    );
    if dir.exists() {
        out.push(format!("directory {}", dir.display()));
    }
    out
}

/// Last `n` lines of every `*.log` below `dir/logs` and of the VM consoles, for error reports.
pub fn log_tails(dir: &Path, n: usize) -> String {
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in [dir.join("logs"), dir.to_path_buf()] {
        if let Ok(rd) = std::fs::read_dir(&sub) {
            files.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log" || e == "console")),
            );
        }
    }
    files.sort();
    let mut out = String::new();
    for f in files {
        out.push_str(&format!(
            "----- {} -----\n{}\n",
            f.display(),
            crate::tail(&f, n)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_reads_state_and_start_time_of_a_live_process() {
        let (state, start) = stat(std::process::id()).unwrap();
        assert_ne!(state, 'Z');
        assert!(start > 0);
        assert!(alive(std::process::id()));
        assert!(stat(u32::MAX).is_none());
    }

    #[test]
    fn a_recorded_pid_counts_only_with_its_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let me = std::process::id();
        let (_, start) = stat(me).unwrap();
        std::fs::write(
            &pids,
            format!(
                "{me} {start} this test\n{me} {} a reused pid\ngarbage\n",
                start + 1
            ),
        )
        .unwrap();
        let r = recorded(&pids);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].what, "this test");
        assert!(r[0].running());
        assert!(
            !r[1].running(),
            "a PID with another start time is someone else's"
        );
    }
}
