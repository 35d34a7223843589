//! Loads the shipped buildout in `examples/workflows/` and checks its expansion, with the
//! lab parameters and with the production defaults.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use protocol::workflow::{
    BootSet, HumanDuration, NodeRun, OnFailure, RunPlan, Step, StepKind, WaitFor,
};
use serde_json::{json, Value};

use super::{load_dir, LoadedDir};
use protocol::domain::BootTarget;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows")
}

fn load() -> LoadedDir {
    load_dir(&examples_dir()).unwrap()
}

fn lab_plan(loaded: &LoadedDir) -> RunPlan {
    let lab = &loaded.params["lab-params.yaml"];
    assert_eq!(lab.workflow, "buildout");
    loaded
        .registry
        .expand(&lab.workflow, lab.version, &lab.params)
        .unwrap()
}

fn step<'a>(plan: &'a RunPlan, name: &str) -> &'a Step {
    &plan.steps[plan
        .step_index(name)
        .unwrap_or_else(|| panic!("no step {name}"))]
}

fn script(plan: &RunPlan, name: &str) -> String {
    match &step(plan, name).kind {
        StepKind::NodeRun(NodeRun { command, args, .. }) => {
            format!("{command} {}", args.join(" "))
        }
        other => panic!("{name}: {other:?}"),
    }
}

fn runs(plan: &RunPlan, name: &str, facts: &Value) -> bool {
    match &step(plan, name).when {
        None => true,
        Some(c) => c.evaluate(facts).unwrap(),
    }
}

#[test]
fn every_file_loads() {
    let loaded = load();
    assert_eq!(
        loaded.registry.names().collect::<Vec<_>>(),
        ["buildout", "discovery", "install", "testing"]
    );
    assert_eq!(
        loaded.params.keys().collect::<Vec<_>>(),
        ["lab-params.yaml"]
    );
    let mut yaml_files: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    yaml_files.sort();
    assert_eq!(
        yaml_files,
        [
            "buildout.yaml",
            "discovery.yaml",
            "install.yaml",
            "lab-params.yaml",
            "testing.yaml"
        ]
    );
    // Each stage also stands alone with its defaults.
    for name in ["discovery", "testing", "install"] {
        let plan = loaded.registry.check(name, None).unwrap();
        assert_eq!(plan.template, name);
    }
}

#[test]
fn buildout_with_lab_params_expands_to_the_full_step_list() {
    let loaded = load();
    let plan = lab_plan(&loaded);
    assert_eq!((plan.template.as_str(), plan.version), ("buildout", 1));
    let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "discovery/boot-discovery",
            "discovery/pxe-next",
            "discovery/power-cycle",
            "discovery/checkin",
            "discovery/identified",
            "discovery/identify-hook",
            "discovery/configure-bmc",
            "discovery/reread-bmc",
            "discovery/validate-bmc",
            "discovery/pin-ip",
            "discovery/reboot",
            "discovery/back-online",
            "testing/firmware-update",
            "testing/reboot",
            "testing/rediscover",
            "testing/lldp-check",
            "testing/disk-check",
            "testing/cpu-stress",
            "testing/bios-redfish",
            "testing/bios-racadm",
            "testing/bios-applied",
            "testing/drive-stress",
            "testing/drive-stress-dd",
            "testing/raid-redfish",
            "testing/raid-perccli",
            "install/install",
            "install/boot-local",
            "install/reboot-to-disk",
            "install/post-install",
            "install/final-boot-local",
            "install/final-reboot",
        ]
    );
    let kinds: Vec<&str> = plan.steps.iter().map(|s| s.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "boot.set",
            "bmc.boot_device",
            "bmc.power",
            "node.wait",
            "node.wait",
            "http.call",
            "bmc.configure",
            "node.run",
            "bmc.validate",
            "dhcp.reserve",
            "bmc.power",
            "node.wait",
            "redfish.firmware_update",
            "bmc.power",
            "node.wait",
            "lldp.check",
            "node.run",
            "node.run",
            "redfish.bios",
            "node.run",
            "node.wait",
            "node.run",
            "node.run",
            "redfish.raid",
            "node.run",
            "os.install",
            "boot.set",
            "bmc.power",
            "ansible.run",
            "boot.set",
            "bmc.power",
        ]
    );

    // Lab durations reached every stage.
    let secs = |name: &str| step(&plan, name).timeout.as_secs();
    assert_eq!(secs("discovery/checkin"), 300);
    assert_eq!(secs("discovery/identified"), 120);
    assert_eq!(secs("testing/rediscover"), 300);
    assert_eq!(secs("testing/cpu-stress"), 180);
    assert_eq!(secs("testing/drive-stress"), 180);
    assert_eq!(secs("install/install"), 900);
    assert_eq!(secs("install/post-install"), 300);
    assert_eq!(
        step(&plan, "discovery/power-cycle").backoff.initial,
        HumanDuration::from_secs(2)
    );
    let drive = script(&plan, "testing/drive-stress");
    assert!(drive.contains("--runtime=10 "), "{drive}");
    let cpu = script(&plan, "testing/cpu-stress");
    assert_eq!(
        cpu,
        "stress-ng --cpu 0 --verify --timeout 5s --metrics-brief"
    );
    let disks = script(&plan, "testing/disk-check");
    assert!(disks.contains("count=64"), "{disks}");
    assert!(disks.contains("-ne 1 ]"), "{disks}");
    assert!(disks.contains("$(( 1 * 1073741824 ))"), "{disks}");

    // Typed substitution: an int parameter in a u8 field, lists in extra vars.
    match &step(&plan, "discovery/configure-bmc").kind {
        StepKind::BmcConfigure(c) => assert_eq!((c.channel, c.ipmitool.as_str()), (1, "ipmitool")),
        other => panic!("{other:?}"),
    }
    match &step(&plan, "install/post-install").kind {
        StepKind::AnsibleRun(a) => {
            assert_eq!(a.playbook, "post-install.yml");
            assert_eq!(a.extra_vars["bond_interfaces"].0, json!(["eth0"]));
            assert_eq!(a.extra_vars["ssh_port"].0, json!(22));
            assert_eq!(a.group, "buildout");
        }
        other => panic!("{other:?}"),
    }
    match &step(&plan, "install/install").kind {
        StepKind::OsInstall(i) => {
            assert_eq!(i.kernel, "lab-os/vmlinuz");
            assert_eq!(
                i.autoinstall,
                Some(protocol::workflow::Autoinstall::Name("lab-os.cfg".into()))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &step(&plan, "install/final-boot-local").kind,
        StepKind::BootSet(BootSet {
            target: BootTarget::Local
        })
    ));
    assert!(matches!(
        &step(&plan, "discovery/checkin").kind,
        StepKind::NodeWait(w) if w.wait_for == WaitFor::Checkin
    ));

    // Which optional steps run in the lab, on a Dell and on anything else.
    let dell = json!({"system": {"vendor": "Dell Inc.", "serial": "SN1"}});
    for (name, want) in [
        ("discovery/identify-hook", false),
        ("testing/firmware-update", false),
        ("testing/lldp-check", true),
        ("testing/bios-redfish", false),
        ("testing/bios-racadm", false),
        ("testing/bios-applied", false),
        ("testing/raid-redfish", false),
        ("testing/raid-perccli", false),
        ("testing/drive-stress", false),
        ("testing/drive-stress-dd", true),
    ] {
        assert_eq!(runs(&plan, name, &dell), want, "{name}");
    }

    // What an agent restart may re-run.
    let idempotent: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| !s.idempotent)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        idempotent,
        [
            "discovery/identify-hook",
            "testing/firmware-update",
            "testing/bios-racadm",
            "testing/raid-redfish",
            "testing/raid-perccli",
            "install/install",
        ]
    );
    for s in &plan.steps {
        if let OnFailure::Goto(target) = &s.on_failure {
            assert!(plan.step_index(target).is_some(), "{}: {target}", s.name);
        }
    }

    // The plan crosses the fleet link (postcard) and the API (JSON) unchanged.
    let bin = postcard::to_stdvec(&plan).unwrap();
    assert_eq!(postcard::from_bytes::<RunPlan>(&bin).unwrap(), plan);
    let text = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<RunPlan>(&text).unwrap(), plan);
}

#[test]
fn buildout_with_production_defaults_and_vendor_tools() {
    let loaded = load();
    let plan = loaded
        .registry
        .expand("buildout", None, &BTreeMap::new())
        .unwrap();
    assert_eq!(plan.steps.len(), 31);
    let drive = step(&plan, "testing/drive-stress");
    assert_eq!(drive.timeout, "74h".parse().unwrap());
    assert!(script(&plan, "testing/drive-stress").contains("--runtime=259200 "));
    assert_eq!(
        script(&plan, "testing/cpu-stress"),
        "stress-ng --cpu 0 --verify --timeout 7200s --metrics-brief"
    );
    let facts = json!({"system": {"vendor": "Dell Inc."}});
    assert!(runs(&plan, "testing/bios-redfish", &facts));
    assert!(runs(&plan, "testing/raid-redfish", &facts));
    assert!(!runs(&plan, "testing/raid-perccli", &facts));
    match &step(&plan, "testing/bios-redfish").kind {
        StepKind::RedfishBios(b) => {
            assert_eq!(b.attributes["BootMode"].0, json!("Uefi"));
        }
        other => panic!("{other:?}"),
    }

    let vendor = BTreeMap::from([
        ("bios_via".to_owned(), json!("racadm")),
        ("raid_via".to_owned(), json!("perccli")),
        (
            "racadm".to_owned(),
            json!("/opt/dell/srvadmin/bin/idracadm7"),
        ),
        (
            "perccli".to_owned(),
            json!("/opt/MegaRAID/perccli/perccli64"),
        ),
        ("raid_level".to_owned(), json!("raid10")),
    ]);
    let plan = loaded.registry.expand("buildout", None, &vendor).unwrap();
    assert!(runs(&plan, "testing/bios-racadm", &facts));
    assert!(!runs(
        &plan,
        "testing/bios-racadm",
        &json!({"system": {"vendor": "HPE"}})
    ));
    assert!(!runs(&plan, "testing/bios-redfish", &facts));
    assert!(runs(&plan, "testing/raid-perccli", &facts));
    let raid = script(&plan, "testing/raid-perccli");
    assert_eq!(
        raid,
        "sh -c /opt/MegaRAID/perccli/perccli64 /c0/vall del force && /opt/MegaRAID/perccli/perccli64 /c0 add vd type=raid10 drives=252:0-1 name=os"
    );
    assert!(script(&plan, "testing/bios-racadm")
        .starts_with("sh -c /opt/dell/srvadmin/bin/idracadm7 set BIOS.SysProfileSettings.SysProfile PerfOptimized"));

    let bad = BTreeMap::from([("drive_stress".to_owned(), json!("3 days"))]);
    assert_eq!(
        loaded
            .registry
            .expand("buildout", None, &bad)
            .unwrap_err()
            .to_string(),
        "buildout/params.drive_stress: expected a duration like 30s, 5m, 72h, got \"3 days\""
    );
}

#[test]
fn readme_format_example_is_a_valid_template() {
    let readme = std::fs::read_to_string(examples_dir().join("README.md")).unwrap();
    let start = readme.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let t = super::Template::parse("README.md", &readme[start..end]).unwrap();
    assert_eq!(
        (t.name.as_str(), t.steps.len(), t.includes.len()),
        ("testing", 1, 1)
    );
    let loaded = load();
    let mut registry = loaded.registry.clone();
    let t = super::Template::parse(
        "README.md",
        &readme[start..end].replace("version: 1 ", "version: 9 "),
    )
    .unwrap();
    registry.insert(t).unwrap();
    let plan = registry.check("testing", Some(9)).unwrap();
    assert_eq!(plan.steps.len(), 13);
    assert_eq!(plan.steps[12].name, "drive-stress");
}
