//! The lab "OS" the buildout installs (`tests/lab/os/build.sh`, cached by content hash) and
//! what each rack agent needs to install and configure it: the installer kernel, initramfs and
//! disk image under `assets/lab-os/`, the autoinstall template `templates/lab-os.cfg`, the
//! post-install playbook under `playbooks/` with group variables that give Ansible the lab's
//! SSH key; and SSH into an installed VM from its rack's namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::sys::{ns_cmd, output};
use super::{mkdir, write, Lab, LabError, Result};

/// Files `tests/lab/os/build.sh` leaves in its output directory.
pub const OS_FILES: [&str; 5] = [
    "vmlinuz",
    "installer.cpio.gz",
    "disk.img.gz",
    "lab_key",
    "lab_key.pub",
];
/// Installer files served to the VMs, under the agents' `assets/lab-os/` (the names
/// `examples/workflows/lab-params.yaml` uses).
pub const OS_ASSETS: [&str; 3] = ["vmlinuz", "installer.cpio.gz", "disk.img.gz"];
/// The autoinstall template's name (`autoinstall_template` in lab-params.yaml).
pub const AUTOINSTALL_TEMPLATE: &str = "lab-os.cfg";
/// The playbook's name (the install workflow's `playbook` default).
pub const PLAYBOOK: &str = "post-install.yml";

/// The built lab OS.
#[derive(Debug, Clone)]
pub struct LabOs {
    /// The build's output directory.
    pub dir: PathBuf,
}

impl LabOs {
    /// Builds the lab OS (instant when cached). Run once per process: the script replaces
    /// older cache entries and must not run twice at the same time.
    pub fn build() -> Result<LabOs> {
        static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
            std::sync::OnceLock::new();
        let dir = BUILT
            .get_or_init(|| build_os().map_err(|e| e.to_string()))
            .clone()
            .map_err(LabError::Other)?;
        Ok(LabOs { dir })
    }

    /// The private half of the key the image's root account accepts.
    pub fn private_key(&self) -> PathBuf {
        self.dir.join("lab_key")
    }

    /// Puts the installer assets, the autoinstall template and the post-install playbook
    /// into every rack agent's data directory. The agents read them per request, so a
    /// running lab takes them without a restart.
    pub fn install_into(&self, lab: &Lab) -> Result<()> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let template = read(&repo.join("tests/lab/os").join(AUTOINSTALL_TEMPLATE))?;
        let playbook = read(&repo.join("examples/workflows/playbooks").join(PLAYBOOK))?;
        // Next to the playbook, so the agent's generated inventory needs no key: Ansible
        // reads a playbook directory's group_vars on its own.
        let group_vars = format!(
            "# Written by the lab (tests/src/lab/os.rs): how Ansible reaches the lab OS.\n\
             ansible_ssh_private_key_file: {}\n\
             ansible_python_interpreter: /usr/bin/python3\n\
             ansible_ssh_common_args: -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no\n",
            self.private_key().display()
        );
        for rack in &lab.config().racks {
            let data = agent_data_dir(&lab.agent_config(&rack.name)?)?;
            let assets = data.join("assets/lab-os");
            mkdir(&assets)?;
            for f in OS_ASSETS {
                link_or_copy(&self.dir.join(f), &assets.join(f))?;
            }
            mkdir(&data.join("templates"))?;
            write(
                &data.join("templates").join(AUTOINSTALL_TEMPLATE),
                &template,
            )?;
            let playbooks = data.join("playbooks");
            mkdir(&playbooks.join("group_vars"))?;
            write(&playbooks.join(PLAYBOOK), &playbook)?;
            write(&playbooks.join("group_vars/buildout.yml"), &group_vars)?;
        }
        Ok(())
    }

    /// `ssh root@<ip> <command>` with the lab key from `rack`'s namespace (where the agent,
    /// and Ansible, reach the VMs). Fails when SSH does.
    pub fn ssh(&self, lab: &Lab, rack: &str, ip: &str, command: &str) -> Result<String> {
        let ns = lab.rack_ns(rack)?;
        let key = self.private_key().display().to_string();
        let target = format!("root@{ip}");
        output(ns_cmd(
            &ns,
            &[
                "ssh",
                "-i",
                &key,
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                &target,
                command,
            ],
        ))
    }
}

fn build_os() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/os/build.sh");
    let out = output(Command::new(&script))?;
    let dir = PathBuf::from(out.lines().last().unwrap_or("").trim());
    for f in OS_FILES {
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

/// `data_dir` of an agent config file.
fn agent_data_dir(config: &Path) -> Result<PathBuf> {
    let text = read(config)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| LabError::Other(format!("{}: {e}", config.display())))?;
    table
        .get("data_dir")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| LabError::Other(format!("{}: no data_dir", config.display())))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| LabError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

/// A hard link when the cache is on the same file system, else a copy.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| LabError::Io {
            what: format!("copying {} to {}", from.display(), to.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rack_agent::boot::http::autoinstall::{render_source, NodeContext, StaticIpCtx};

    use super::*;

    fn ctx(static_ips: Vec<StaticIpCtx>) -> NodeContext {
        NodeContext {
            serial: "LAB-1".into(),
            node: "n1".into(),
            mac: "52:54:00:00:00:01".into(),
            macs: vec!["52:54:00:00:00:01".into()],
            static_ips,
            hostname: "lab-1".into(),
            agent_url: "http://10.1.0.1:8080".into(),
            autoinstall_url: "http://10.1.0.1:8080/node/v1/autoinstall/52:54:00:00:00:01".into(),
        }
    }

    fn ip(interface: &str, address: &str, gateway: Option<&str>) -> StaticIpCtx {
        StaticIpCtx {
            interface: interface.into(),
            address: address.into(),
            prefix: 24,
            gateway: gateway.map(Into::into),
        }
    }

    /// What the installer's shell reads from the rendered file (sourced by a real `sh`).
    fn sourced(text: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{text}\necho \"IMAGE=$IMAGE AGENT_URL=$AGENT_URL HOSTNAME=$HOSTNAME ADDRESS=${{ADDRESS:-}} GATEWAY=${{GATEWAY:-}}\""
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn the_autoinstall_template_gives_the_installer_the_image_and_the_first_non_bmc_address() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("lab/os")
            .join(AUTOINSTALL_TEMPLATE);
        let source = read(&path).unwrap();
        let with = render_source(
            AUTOINSTALL_TEMPLATE,
            &source,
            &ctx(vec![
                ip("bmc", "10.1.1.11", None),
                ip("eno1", "10.1.0.20", Some("10.1.0.1")),
                ip("eno2", "10.1.0.99", None),
            ]),
        )
        .unwrap();
        assert_eq!(
            sourced(&with),
            "IMAGE=http://10.1.0.1:8080/assets/lab-os/disk.img.gz AGENT_URL=http://10.1.0.1:8080 \
             HOSTNAME=lab-1 ADDRESS=10.1.0.20/24 GATEWAY=10.1.0.1"
        );
        let without = render_source(AUTOINSTALL_TEMPLATE, &source, &ctx(vec![])).unwrap();
        assert!(
            sourced(&without).ends_with("ADDRESS= GATEWAY="),
            "{without}"
        );
        let no_gateway = render_source(
            AUTOINSTALL_TEMPLATE,
            &source,
            &ctx(vec![ip("eno1", "10.1.0.20", None)]),
        )
        .unwrap();
        assert!(
            sourced(&no_gateway).ends_with("ADDRESS=10.1.0.20/24 GATEWAY="),
            "{no_gateway}"
        );
    }
}
