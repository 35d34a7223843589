//! The Ansible collection (`ansible/`) and the Vagrant lab (`vagrant/`) end to end: the roles
//! deploy, re-apply and upgrade a 3-coordinator, 2-agent datacenter over real SSH onto hosts
//! that are network namespaces (`tests/ansible/scenario.sh`), the modules and the inventory
//! plugin drive the API it serves (one node powered through a real BMC, ipmi_sim), and
//! `ansible-lint` and `ansible-test sanity` check the collection, and `vagrant validate`
//! checks the Vagrantfile.
//!
//! Needs root (namespaces), and the tools `scripts/ansible-deps.sh` installs: ansible-core,
//! ansible-lint, openssh-server/-client, vagrant; and openipmi + ipmitool (scripts/test.sh
//! installs them). A missing tool fails the test naming the package; nothing is skipped
//! silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Fails naming the package when `cmd` is not on the PATH.
fn require(cmd: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{cmd}` not found: install {package} (scripts/ansible-deps.sh installs everything the Ansible tests need)"
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory holding a namespace lab; `Drop` stops every process in the lab
/// (by PID: `ip netns pids`, the recorded sshds, the SSH connection masters) and deletes the
/// namespaces and links with `netlab.sh down`, also when the test panics. The directory is
/// kept (and named) when the test failed or `METALFLEET_KEEP` is set.
struct Lab {
    dir: Option<tempfile::TempDir>,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("mf-ansible-")
            .tempdir()
            .expect("creating a scratch directory");
        Lab { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("lab dir")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let netlab = repo().join("tests/ansible/netlab.sh");
        match Command::new(&netlab).arg("down").arg(dir.path()).output() {
            Ok(out) if !out.status.success() => {
                eprintln!("netlab.sh down failed: {}", text(&out))
            }
            Err(e) => eprintln!("netlab.sh down: {e}"),
            Ok(_) => {}
        }
        if std::thread::panicking() || std::env::var_os("METALFLEET_KEEP").is_some() {
            let kept = dir.keep();
            eprintln!("ansible lab kept in {}", kept.display());
        }
    }
}

/// Deploys 3 coordinators and 2 rack agents with `playbooks/site.yml`; a second run reports
/// changed=0 on every host; `playbooks/upgrade.yml` to different binaries restarts them one
/// at a time while `GET /v1/cluster` keeps answering on at least two of the three
/// coordinators in every poll round, and afterwards every service runs the new binary; the
/// modules (site, project, inventory_import, node, node_nic, network, workflow,
/// workflow_run, rollout) change things only when needed and not in check mode; `node
/// power_on` switches an ipmi_sim BMC on and off through rack agent r1 (read back with
/// ipmitool) and fails with the agent's message for a node without BMC; the inventory plugin
/// groups the nodes the agents checked in by site, rack, project, state, tag and a keyed
/// group on facts. All the checks are in the script; this test owns the lab's lifetime
/// (the script stops its ipmi_sim by PID).
#[test]
fn roles_deploy_reapply_upgrade_and_drive_the_api() {
    for (cmd, package) in [
        ("ansible-playbook", "ansible-core (pip)"),
        ("ansible-inventory", "ansible-core (pip)"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("curl", "curl"),
        ("strip", "binutils"),
        ("ip", "iproute2"),
        ("ipmi_sim", "openipmi"),
        ("ipmitool", "ipmitool"),
    ] {
        require(cmd, package);
    }
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "/usr/sbin/sshd not found: install openssh-server (scripts/ansible-deps.sh)"
    );
    let bins = metalfleet_tests::bin_dir().expect("building coordinator and rack-agent");
    let lab = Lab::new();
    let out = Command::new(repo().join("tests/ansible/scenario.sh"))
        .arg(lab.path())
        .arg(&bins)
        .stdin(Stdio::null())
        .output()
        .expect("running tests/ansible/scenario.sh");
    let log = text(&out);
    println!("{log}");
    assert!(
        out.status.success(),
        "scenario.sh failed ({}); logs in {}:\n{log}",
        out.status,
        lab.path().display()
    );
}

/// `ansible-lint` on the collection (production profile, as configured in
/// ansible/.ansible-lint) reports nothing.
#[test]
fn collection_is_ansible_lint_clean() {
    require("ansible-lint", "ansible-lint (pip)");
    let home = tempfile::tempdir().unwrap();
    // The roles and playbooks name each other by FQCN: make the collection resolvable as
    // metalfleet.metalfleet without installing it.
    let collections = home
        .path()
        .join("collections/ansible_collections/metalfleet");
    std::fs::create_dir_all(&collections).unwrap();
    std::os::unix::fs::symlink(repo().join("ansible"), collections.join("metalfleet")).unwrap();
    let out = Command::new("ansible-lint")
        .current_dir(repo().join("ansible"))
        // Keep ansible-lint's caches out of the tree.
        .env("HOME", home.path())
        .env("ANSIBLE_HOME", home.path().join(".ansible"))
        .env("XDG_CACHE_HOME", home.path().join(".cache"))
        .env("ANSIBLE_COLLECTIONS_PATH", home.path().join("collections"))
        .arg("--offline")
        .stdin(Stdio::null())
        .output()
        .expect("running ansible-lint");
    assert!(out.status.success(), "ansible-lint:\n{}", text(&out));
}

/// `ansible-test sanity` on a copy of the collection laid out as
/// `ansible_collections/metalfleet/metalfleet`, with every test that runs offline (the
/// virtualenv-based ones — validate-modules, pylint, pep8, import, yamllint, ansible-doc —
/// need a pip bootstrap downloaded from ci-files.testing.ansible.com, unreachable here), then
/// `ansible-doc` on every plugin (documentation, examples and return values render with the
/// doc fragment) and the module unit tests (`ansible/tests/unit`). See tests/ansible/sanity.sh.
#[test]
fn collection_passes_ansible_test_sanity() {
    require("ansible-test", "ansible-core (pip)");
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("tests/ansible/sanity.sh"))
        .arg(scratch.path())
        // ansible-test keeps its caches under HOME: a scratch one, not the user's.
        .env("HOME", scratch.path())
        .stdin(Stdio::null())
        .output()
        .expect("running tests/ansible/sanity.sh");
    println!("{}", text(&out));
    assert!(out.status.success(), "ansible-test sanity:\n{}", text(&out));
}

/// `vagrant validate` accepts vagrant/Vagrantfile (with the libvirt provider's options), and
/// the playbook its Ansible provisioner runs passes `ansible-playbook --syntax-check`.
#[test]
fn vagrantfile_validates() {
    require(
        "vagrant",
        "vagrant (apt-get install vagrant; brings vagrant-libvirt)",
    );
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("vagrant")
        .arg("validate")
        .current_dir(repo().join("vagrant"))
        // Vagrant's per-project state goes to a scratch directory, not into the tree.
        .env("VAGRANT_DOTFILE_PATH", scratch.path().join(".vagrant"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running vagrant validate");
    let log = text(&out);
    assert!(out.status.success(), "vagrant validate:\n{log}");
    assert!(
        log.contains("validated successfully"),
        "vagrant validate said:\n{log}"
    );

    // The provisioner's playbook resolves the collection through vagrant/ansible.cfg and
    // vagrant/collections (a symlink to ansible/).
    require("ansible-playbook", "ansible-core (pip)");
    let inventory = scratch.path().join("inventory.ini");
    std::fs::write(
        &inventory,
        "[coordinators]\nc1\nc2\nc3\n[rack_agents]\nr1\n",
    )
    .unwrap();
    let out = Command::new("ansible-playbook")
        .current_dir(repo().join("vagrant"))
        .arg("-i")
        .arg(&inventory)
        .args(["--syntax-check", "site.yml"])
        .stdin(Stdio::null())
        .output()
        .expect("running ansible-playbook --syntax-check");
    assert!(
        out.status.success(),
        "vagrant/site.yml syntax check:\n{}",
        text(&out)
    );
}
