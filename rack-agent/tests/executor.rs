//! The durable step executor against real peers: the agent's HTTP node API with a real
//! node-agent loop executing the node actions, guarded BMC simulators with their fault
//! switches, a real webhook server, real `ansible-playbook`. Multi-step plans with retries,
//! backoff, conditions, `on_failure` goto/continue, timeouts, pause and cancel, one run per
//! node; and agent crashes in the middle of an idempotent step (re-run), a non-idempotent one
//! (fails clearly, not run twice) and a long `node.run` (re-attached, executed once, progress
//! reported).

#![allow(clippy::unwrap_used)]

mod executor_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use executor_support::*;
use protocol::domain::BootTarget;
use protocol::json::JsonValue;
use protocol::workflow::*;
use rack_agent::bmc::Bmc;
use rack_agent::executor::{Submitted, INTERRUPTED};

fn run_cmd(cmd: &str) -> StepKind {
    StepKind::NodeRun(NodeRun {
        command: "sh".into(),
        args: vec!["-c".into(), cmd.into()],
        expected_exit: vec![0],
        capture_logs: true,
        facts: None,
    })
}

fn when(s: Step, cond: &str) -> Step {
    Step {
        when: Some(cond.parse().unwrap()),
        ..s
    }
}

fn on_failure(s: Step, f: OnFailure) -> Step {
    Step { on_failure: f, ..s }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_step_plan_with_retries_conditions_goto_and_continue() {
    let mut lab = Lab::new(vec![rack_node(1)]);
    let ex = lab.start().await;
    lab.boot_machine(0);
    lab.checked_in(&ex, 0).await;
    let node = lab.nodes[0].id;
    let sim = lab.bmcs.sim("bmc-1");
    // The BMC answers 503 twice: the step's third attempt succeeds.
    sim.faults(|f| f.fail_next = 2);
    let marker = |n: &str| lab.path(&format!("markers/{n}"));
    std::fs::create_dir_all(lab.path("markers")).unwrap();
    let touch = |n: &str| run_cmd(&format!("touch {}", marker(n).display()));
    let file = lab.path("machines/etc/hostname-file");
    let mut power = step(
        "power-on",
        StepKind::BmcPower(BmcPower {
            action: PowerAction::On,
        }),
    );
    power.retries = 2;
    let mut capture = step(
        "capture",
        StepKind::NodeRun(NodeRun {
            command: "echo".into(),
            args: vec![r#"{"disks": 2, "model": "X1"}"#.into()],
            expected_exit: vec![0],
            capture_logs: true,
            facts: Some(FactCapture {
                key: "probe".into(),
                format: OutputFormat::Json,
            }),
        }),
    );
    capture.idempotent = true;
    let p = plan(vec![
        power,
        when(
            step("dell-only", touch("dell")),
            r#"facts.system.vendor == "Dell""#,
        ),
        when(
            step("qemu-only", touch("qemu")),
            r#"facts.system.vendor == "QEMU""#,
        ),
        on_failure(
            step("flaky", run_cmd("echo failing; exit 3")),
            OnFailure::Goto("recover".into()),
        ),
        step("jumped-over", touch("jumped-over")),
        step("recover", touch("recover")),
        on_failure(step("soft-fail", run_cmd("exit 1")), OnFailure::Continue),
        step(
            "template",
            StepKind::NodeTemplate(NodeTemplate {
                path: file.display().to_string(),
                mode: FileMode(0o600),
                template: "{{ serial }} has a {{ facts.cpu.model }}\n".into(),
            }),
        ),
        capture,
        when(step("uses-fact", touch("fact")), "facts.probe.disks == 2"),
    ]);
    assert_eq!(
        ex.submit("r1", node, p.clone()).unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        ex.submit("r1", node, p.clone()).unwrap(),
        Submitted::AlreadyKnown
    );
    let mut other = p.clone();
    other.steps.pop();
    assert!(ex.submit("r1", node, other).is_err());

    let st = lab.finished(&ex, "r1").await;
    assert_eq!(st.state, RunState::Succeeded, "{st:#?}");
    let s = |n: &str| st.step(n).unwrap().clone();
    assert_eq!(s("power-on").state, StepState::Succeeded);
    assert_eq!(s("power-on").attempts, 3);
    assert_eq!(
        sim.power_status().await.unwrap(),
        rack_agent::bmc::PowerState::On
    );
    let log = ex.logs("r1", "power-on").unwrap().join("\n");
    assert!(
        log.contains("attempt 1 of 3 failed") && log.contains("attempt 2 of 3 failed"),
        "{log}"
    );

    assert_eq!(s("dell-only").state, StepState::Skipped);
    assert!(!marker("dell").exists());
    assert_eq!(s("qemu-only").state, StepState::Succeeded);
    assert!(marker("qemu").exists());

    assert_eq!(s("flaky").state, StepState::Failed);
    assert_eq!(s("flaky").exit_code, Some(3));
    lab.log_contains(&ex, "r1", "flaky", "failing").await;
    assert_eq!(s("jumped-over").state, StepState::Pending);
    assert!(!marker("jumped-over").exists());
    assert_eq!(s("recover").state, StepState::Succeeded);
    assert!(marker("recover").exists());

    assert_eq!(s("soft-fail").state, StepState::Failed);
    assert_eq!(s("soft-fail").exit_code, Some(1));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "NA-0001 has a Test CPU\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(ex.facts(node).unwrap()["probe"]["model"], "X1");
    assert_eq!(s("uses-fact").state, StepState::Succeeded);
    assert!(marker("fact").exists());
    // Each node action ran once: every one of them got exactly one result.
    let events = lab.runs.events();
    assert!(events.iter().any(|e| matches!(e, rack_agent::executor::RunEvent::Status { status, .. } if status.state == RunState::Succeeded)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_redfish_overrides_and_webhook() {
    let mut lab = Lab::new(vec![rack_node(2)]);
    let ex = lab.start().await;
    let node = lab.nodes[0].id;
    let sim = lab.bmcs.sim("bmc-2");
    // A webhook: answers with JSON and remembers what it was sent.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let seen = seen2.clone();
            async move {
                seen.lock().unwrap().push(body);
                axum::Json(serde_json::json!({"rack": "r1", "asset": {"tag": "A-7"}}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let p = plan(vec![
        step(
            "boot-install",
            StepKind::BootSet(BootSet {
                target: BootTarget::Local,
            }),
        ),
        step(
            "pin",
            StepKind::DhcpReserve(DhcpReserve {
                interface: None,
                address: Some("10.1.0.21".into()),
            }),
        ),
        step(
            "boot-pxe",
            StepKind::BmcBootDevice(BmcBootDevice {
                device: BootDevice::Pxe,
                persistent: true,
            }),
        ),
        step(
            "bios",
            StepKind::RedfishBios(RedfishBios {
                attributes: BTreeMap::from([(
                    "SriovEnable".to_owned(),
                    JsonValue(serde_json::json!("Enabled")),
                )]),
                apply: true,
            }),
        ),
        step(
            "raid",
            StepKind::RedfishRaid(RedfishRaid {
                controller: None,
                clear: true,
                volumes: vec![RaidVolume {
                    name: "os".into(),
                    level: RaidLevel::Raid1,
                    drives: vec![],
                    size_gib: Some(100),
                }],
            }),
        ),
        step(
            "firmware",
            StepKind::RedfishFirmwareUpdate(RedfishFirmwareUpdate {
                image_uri: "http://127.0.0.1/fw.bin".into(),
                transfer_protocol: None,
                targets: vec![],
            }),
        ),
        step(
            "validate",
            StepKind::BmcValidate(BmcValidate {
                driver: None,
                address: None,
            }),
        ),
        step(
            "cmdb",
            StepKind::HttpCall(HttpCall {
                method: HttpMethod::Post,
                url: hook,
                headers: BTreeMap::new(),
                body: Some(r#"{"serial": "{{ serial }}", "stage": "{{ params.stage }}"}"#.into()),
                expect_status: vec![],
                facts_key: Some("cmdb".into()),
            }),
        ),
        when(
            step(
                "power-off-in-r1",
                StepKind::BmcPower(BmcPower {
                    action: PowerAction::Off,
                }),
            ),
            r#"facts.cmdb.rack == "r1""#,
        ),
    ]);
    let mut p = p;
    p.params
        .insert("stage".into(), JsonValue(serde_json::json!("burn-in")));
    ex.submit("r2", node, p).unwrap();
    let st = lab.finished(&ex, "r2").await;
    assert_eq!(st.state, RunState::Succeeded, "{st:#?}");

    assert_eq!(ex.boot_override(node), Some(BootTarget::Local));
    let pin = ex.dhcp_pin(node).unwrap();
    assert_eq!(pin.address.to_string(), "10.1.0.21");
    assert_eq!(pin.mac, mac(2));
    let boot = sim.boot_override().await.unwrap();
    assert_eq!(boot.device, rack_agent::bmc::BootDevice::Pxe);
    assert!(boot.persistent);
    let bios = sim.bios_attributes().await.unwrap();
    assert_eq!(bios.current["SriovEnable"], "Enabled");
    assert!(bios.pending.is_empty());
    let vols = sim.storage().await.unwrap()[0].volumes.clone();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].raid_type.as_deref(), Some("RAID1"));
    assert_eq!(vols[0].capacity_bytes, Some(100 << 30));
    assert_eq!(sim.firmware_version(), "1.0.1");
    let facts = ex.facts(node).unwrap();
    assert_eq!(facts["bmc"]["validated"]["address"], "bmc-2");
    assert_eq!(facts["cmdb"]["asset"]["tag"], "A-7");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [r#"{"serial": "NA-0002", "stage": "burn-in"}"#]
    );
    assert_eq!(
        st.step("power-off-in-r1").unwrap().state,
        StepState::Succeeded
    );
    assert_eq!(
        sim.power_status().await.unwrap(),
        rack_agent::bmc::PowerState::Off
    );

    // The overrides are durable: a restarted executor still serves them.
    lab.crash(ex).await;
    let ex = lab.start().await;
    assert_eq!(ex.boot_override(node), Some(BootTarget::Local));
    assert_eq!(ex.dhcp_pin(node).unwrap().address.to_string(), "10.1.0.21");
    assert_eq!(ex.status("r2").unwrap().state, RunState::Succeeded);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_pause_cancel_and_one_run_per_node() {
    let mut lab = Lab::new(vec![rack_node(3), rack_node(4)]);
    let ex = lab.start().await;
    lab.boot_machine(0);
    lab.checked_in(&ex, 0).await;
    let (n3, n4) = (lab.nodes[0].id, lab.nodes[1].id);
    std::fs::create_dir_all(lab.path("markers")).unwrap();
    let marker = |n: &str| lab.path(&format!("markers/{n}"));

    // Timeout: an unresponsive BMC; the step gives up at its own limit and the run goes on.
    lab.bmcs.sim("bmc-4").faults(|f| f.unresponsive = true);
    let mut hang = step(
        "hang",
        StepKind::BmcPower(BmcPower {
            action: PowerAction::On,
        }),
    );
    hang.timeout = HumanDuration::from_millis(300);
    hang.retries = 1;
    hang.on_failure = OnFailure::Continue;
    ex.submit(
        "t1",
        n4,
        plan(vec![
            hang,
            step(
                "after",
                StepKind::BootSet(BootSet {
                    target: BootTarget::Discovery,
                }),
            ),
        ]),
    )
    .unwrap();
    let st = lab.finished(&ex, "t1").await;
    assert_eq!(st.state, RunState::Succeeded, "{st:#?}");
    let h = st.step("hang").unwrap();
    assert_eq!((h.state, h.attempts), (StepState::Failed, 2));
    assert_eq!(h.message.as_deref(), Some("timed out after 300ms"));
    assert_eq!(st.step("after").unwrap().state, StepState::Succeeded);

    // Timeout of a command the node-agent is already running: the step gives up, the
    // node-agent's late result is still accepted, and the next command runs.
    let mut slow = step("slow", run_cmd("sleep 3"));
    slow.timeout = HumanDuration::from_millis(500);
    slow.on_failure = OnFailure::Continue;
    ex.submit(
        "t2",
        n3,
        plan(vec![
            slow,
            step(
                "next",
                run_cmd(&format!("touch {}", marker("after-timeout").display())),
            ),
        ]),
    )
    .unwrap();
    let st = lab.finished(&ex, "t2").await;
    assert_eq!(st.state, RunState::Succeeded, "{st:#?}");
    let m = st.step("slow").unwrap().message.clone().unwrap();
    assert!(m.starts_with("timed out after 500ms"), "{m}");
    assert!(marker("after-timeout").exists());

    // One run per node: the second waits for the first, which waits for an event.
    let gate = step(
        "gate",
        StepKind::NodeWait(NodeWait {
            wait_for: WaitFor::Event("go".into()),
        }),
    );
    ex.submit("a", n3, plan(vec![gate])).unwrap();
    ex.submit(
        "b",
        n3,
        plan(vec![step(
            "b1",
            run_cmd(&format!("touch {}", marker("b").display())),
        )]),
    )
    .unwrap();
    // The step, not only the run: the wait counts events from its attempt's start.
    lab.wait_run(&ex, "a", "gate running", |s| {
        s.steps[0].state == StepState::Running
    })
    .await;
    assert_eq!(ex.status("b").unwrap().state, RunState::Pending);
    ex.report_event(n3, "go").unwrap();
    let a = lab.finished(&ex, "a").await;
    let b = lab.finished(&ex, "b").await;
    assert_eq!(
        (a.state, b.state),
        (RunState::Succeeded, RunState::Succeeded)
    );
    assert!(b.started_at.unwrap() >= a.finished_at.unwrap());
    assert!(marker("b").exists());

    // Pause: the attempt in flight finishes, the next step waits; resume goes on.
    let release = lab.path("markers/release-p1");
    let p = plan(vec![
        step(
            "p1",
            run_cmd(&format!(
                "echo started; while [ ! -e {} ]; do sleep 0.1; done",
                release.display()
            )),
        ),
        step("p2", run_cmd(&format!("touch {}", marker("p2").display()))),
    ]);
    ex.submit("p", n3, p).unwrap();
    lab.wait_run(&ex, "p", "p1 running", |s| {
        s.steps[0].state == StepState::Running
    })
    .await;
    ex.pause("p").unwrap();
    std::fs::write(&release, "").unwrap();
    let st = lab
        .wait_run(&ex, "p", "paused after p1", |s| s.state == RunState::Paused)
        .await;
    assert_eq!(st.steps[0].state, StepState::Succeeded);
    assert_eq!(st.steps[1].state, StepState::Pending);
    assert!(!marker("p2").exists());
    ex.resume("p").unwrap();
    assert_eq!(lab.finished(&ex, "p").await.state, RunState::Succeeded);
    assert!(marker("p2").exists());

    // Cancel: the step in flight stops; nothing after it runs; a queued run is cancelled
    // without running.
    let wait_forever = step(
        "wait",
        StepKind::NodeWait(NodeWait {
            wait_for: WaitFor::Event("never".into()),
        }),
    );
    ex.submit(
        "c",
        n3,
        plan(vec![
            wait_forever,
            step("c2", run_cmd(&format!("touch {}", marker("c2").display()))),
        ]),
    )
    .unwrap();
    ex.submit(
        "d",
        n3,
        plan(vec![step(
            "d1",
            run_cmd(&format!("touch {}", marker("d").display())),
        )]),
    )
    .unwrap();
    lab.wait_run(&ex, "c", "waiting", |s| {
        s.steps[0].state == StepState::Running
    })
    .await;
    ex.cancel("d").unwrap();
    ex.cancel("c").unwrap();
    let c = lab.finished(&ex, "c").await;
    let d = lab.finished(&ex, "d").await;
    assert_eq!(
        (c.state, d.state),
        (RunState::Cancelled, RunState::Cancelled)
    );
    assert_eq!(c.steps[0].state, StepState::Cancelled);
    assert_eq!(c.steps[1].state, StepState::Cancelled);
    assert_eq!(d.steps[0].attempts, 0);
    assert!(!marker("c2").exists() && !marker("d").exists());
    assert!(ex.cancel("c").is_err());
}

const PLAYBOOK: &str = r#"- hosts: all
  gather_facts: false
  tasks:
    - name: count this execution
      ansible.builtin.shell: "echo run >> {{ count_file }}"
    - name: wait for the test
      ansible.builtin.wait_for:
        path: "{{ release_file }}"
        timeout: 600
"#;

fn ansible(lab: &Lab, name: &str, idempotent: bool) -> Step {
    let mut s = step(
        name,
        StepKind::AnsibleRun(AnsibleRun {
            playbook: "count.yml".into(),
            extra_vars: BTreeMap::from([
                (
                    "count_file".to_owned(),
                    JsonValue(serde_json::json!(lab.path(&format!("count-{name}")))),
                ),
                (
                    "release_file".to_owned(),
                    JsonValue(serde_json::json!(lab.path(&format!("release-{name}")))),
                ),
                (
                    "ansible_connection".to_owned(),
                    JsonValue(serde_json::json!("local")),
                ),
                (
                    "ansible_python_interpreter".to_owned(),
                    JsonValue(serde_json::json!("/usr/bin/python3")),
                ),
            ]),
            user: "root".into(),
            private_key: None,
            group: "metalfleet".into(),
            ansible_playbook: "ansible-playbook".into(),
        }),
    );
    s.idempotent = idempotent;
    s.timeout = HumanDuration::from_secs(600);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_crash_mid_step_reruns_fails_or_reattaches() {
    let mut lab = Lab::new(vec![rack_node(5), rack_node(6), rack_node(7), rack_node(8)]);
    write(&lab.path("playbooks/count.yml"), PLAYBOOK);
    let ex = lab.start().await;
    lab.boot_machine(2);
    lab.checked_in(&ex, 2).await;
    let (n5, n6, n7, n8) = (
        lab.nodes[0].id,
        lab.nodes[1].id,
        lab.nodes[2].id,
        lab.nodes[3].id,
    );
    // Node 8: a wait, which goes on as the same attempt after the restart.
    ex.submit(
        "wait",
        n8,
        plan(vec![step(
            "wait",
            StepKind::NodeWait(NodeWait {
                wait_for: WaitFor::Event("released".into()),
            }),
        )]),
    )
    .unwrap();
    lab.wait_run(&ex, "wait", "the wait started", |s| {
        s.steps[0].state == StepState::Running
    })
    .await;

    // Node 5: an idempotent playbook; node 6: the same, not idempotent (the default for
    // ansible.run); node 7: a long command on the node that reports progress.
    ex.submit("idem", n5, plan(vec![ansible(&lab, "idem", true)]))
        .unwrap();
    ex.submit("once", n6, plan(vec![ansible(&lab, "once", false)]))
        .unwrap();
    let long_count = lab.path("count-long");
    let long_release = lab.path("release-long");
    let mut long = step(
        "stress",
        run_cmd(&format!(
            "echo run >> {c}; echo 'progress: 10% stress pass 1 of 10'; \
             while [ ! -e {r} ]; do sleep 0.1; done; echo 'progress: 100% stress done'",
            c = long_count.display(),
            r = long_release.display()
        )),
    );
    long.timeout = HumanDuration::from_secs(600);
    ex.submit(
        "long",
        n7,
        plan(vec![long, step("after", run_cmd("echo after"))]),
    )
    .unwrap();

    poll("both playbooks started", || {
        (count_lines(&lab.path("count-idem")) == 1 && count_lines(&lab.path("count-once")) == 1)
            .then_some(())
    })
    .await;
    let st = lab
        .wait_run(&ex, "long", "progress from the streamed log", |s| {
            s.steps[0]
                .progress
                .as_ref()
                .is_some_and(|p| p.percent == 10)
        })
        .await;
    assert_eq!(
        st.steps[0].progress.as_ref().unwrap().message,
        "stress pass 1 of 10"
    );

    // An operator pauses the long run (it holds after the attempt in flight), then the
    // agent dies in the middle of all three steps and comes back.
    ex.pause("long").unwrap();
    lab.crash(ex).await;
    let ex = lab.start().await;

    // Not idempotent: fails clearly, not run again.
    let once = lab.finished(&ex, "once").await;
    assert_eq!(once.state, RunState::Failed);
    assert_eq!(once.steps[0].state, StepState::Failed);
    assert_eq!(once.steps[0].message.as_deref(), Some(INTERRUPTED));
    assert!(
        once.message.as_deref().unwrap().contains(INTERRUPTED),
        "{once:#?}"
    );

    // Idempotent: run again from the start.
    poll("the idempotent playbook running again", || {
        (count_lines(&lab.path("count-idem")) == 2).then_some(())
    })
    .await;
    std::fs::write(lab.path("release-idem"), "").unwrap();
    let idem = lab.finished(&ex, "idem").await;
    assert_eq!(idem.state, RunState::Succeeded, "{idem:#?}");
    assert_eq!(idem.steps[0].attempts, 2);
    assert!(ex
        .logs("idem", "idem")
        .unwrap()
        .iter()
        .any(|l| l.contains("idempotent, running it again")));

    // The long command was never queued again: the node-agent finishes it and its result
    // reaches the restarted agent.
    std::fs::write(&long_release, "").unwrap();
    // The pause survived the restart: the attempt in flight finished, the next step waits.
    let paused = lab
        .wait_run(&ex, "long", "paused after the stress", |s| {
            s.state == RunState::Paused
        })
        .await;
    assert_eq!(paused.steps[0].state, StepState::Succeeded, "{paused:#?}");
    assert_eq!(paused.steps[1].state, StepState::Pending);
    ex.resume("long").unwrap();
    let long = lab.finished(&ex, "long").await;
    assert_eq!(long.state, RunState::Succeeded, "{long:#?}");
    assert_eq!(long.steps[0].attempts, 1);
    assert_eq!(long.steps[0].exit_code, Some(0));
    assert_eq!(long.steps[0].progress.as_ref().unwrap().percent, 100);
    // Streamed lines from before and after the restart, and the executor's note.
    lab.log_contains(&ex, "long", "stress", "progress: 10%")
        .await;
    lab.log_contains(&ex, "long", "stress", "re-attaching")
        .await;
    lab.log_contains(&ex, "long", "stress", "progress: 100%")
        .await;

    // The wait resumed as the same attempt and ends with the event.
    lab.log_contains(&ex, "wait", "wait", "resuming the wait")
        .await;
    ex.report_event(n8, "released").unwrap();
    let wait = lab.finished(&ex, "wait").await;
    assert_eq!(wait.state, RunState::Succeeded, "{wait:#?}");
    assert_eq!(wait.steps[0].attempts, 1);

    // Not run twice.
    assert_eq!(count_lines(&lab.path("count-once")), 1);
    assert_eq!(count_lines(&long_count), 1);
    assert_eq!(count_lines(&lab.path("count-idem")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_delivery_and_during_an_install() {
    let mut n10 = rack_node(10);
    n10.switch_ports = vec![protocol::domain::ExpectedNic {
        name: "eth0".into(),
        mac: Some(mac(10)),
        switch: Some("tor1".into()),
        port: Some("Ethernet1/10".into()),
    }];
    let mut lab = Lab::new(vec![rack_node(8), rack_node(9), n10]);
    let ex = lab.start().await;
    let (n8, n9, n10) = (lab.nodes[0].id, lab.nodes[1].id, lab.nodes[2].id);
    lab.boot_machine(2);
    lab.checked_in(&ex, 2).await;

    // Nodes 8 and 9 have no node-agent yet: their commands wait in the queue when the agent
    // dies, so nobody knows whether they ran.
    let base = lab.dir.path().to_owned();
    let count = move |n: &str| base.join(format!("count-{n}"));
    let mut again = step(
        "again",
        run_cmd(&format!("echo run >> {}", count("8").display())),
    );
    again.idempotent = true;
    ex.submit("q8", n8, plan(vec![again])).unwrap();
    let once = step(
        "once",
        run_cmd(&format!("echo run >> {}", count("9").display())),
    );
    ex.submit("q9", n9, plan(vec![once])).unwrap();

    // Node 10: cabling check, then an install.
    let lldp = lab.path("machines/lldp.json");
    write(
        &lldp,
        r#"{"lldp":{"interface":{"eth0":{"chassis":{"tor1":{}},"port":{"id":{"type":"ifname","value":"Ethernet1/10"}}}}}}"#,
    );
    let install = OsInstall {
        kernel: "debian/vmlinuz".into(),
        initrd: "debian/initrd.gz".into(),
        cmdline: "auto=true".into(),
        autoinstall: Some(Autoinstall::Inline(
            "hostname {{ hostname }}\nserial {{ serial }}\n".into(),
        )),
        done_event: "os.installed".into(),
    };
    ex.submit(
        "install",
        n10,
        plan(vec![
            step(
                "cabling",
                StepKind::LldpCheck(LldpCheck {
                    expected: vec![],
                    command: format!("cat {}", lldp.display()),
                }),
            ),
            step("install", StepKind::OsInstall(install)),
        ]),
    )
    .unwrap();
    let sim = lab.bmcs.sim("bmc-10");
    lab.wait_run(&ex, "install", "the installer booting", |s| {
        s.steps[1].state == StepState::Running
    })
    .await;
    poll("the power cycle", || {
        matches!(ex.boot_override(n10), Some(BootTarget::Install { .. })).then_some(())
    })
    .await;
    poll("queued commands for nodes 8 and 9", || {
        (lab.pending_actions().len() == 2).then_some(())
    })
    .await;
    poll("the node power cycled", || {
        (sim.calls() >= 1
            && ex
                .logs("install", "install")
                .unwrap()
                .iter()
                .any(|l| l.contains("power cycled")))
        .then_some(())
    })
    .await;
    let bmc_calls = sim.calls();

    lab.crash(ex).await;
    let ex = lab.start().await;
    lab.boot_machine(0);
    lab.boot_machine(1);

    // The idempotent command runs once (its first queueing never reached a node-agent).
    let q8 = lab.finished(&ex, "q8").await;
    assert_eq!(q8.state, RunState::Succeeded, "{q8:#?}");
    assert_eq!(count_lines(&count("8")), 1);
    lab.log_contains(&ex, "q8", "again", "lost across an agent restart")
        .await;
    // The other one fails clearly and does not run at all.
    let q9 = lab.finished(&ex, "q9").await;
    assert_eq!(q9.state, RunState::Failed, "{q9:#?}");
    let m = q9.steps[0].message.clone().unwrap();
    assert!(
        m.contains("lost across an agent restart") && m.contains(INTERRUPTED),
        "{m}"
    );
    assert_eq!(count_lines(&count("9")), 0);

    // The install keeps waiting for its installer, without rebooting the node again; the
    // installer's report (a node API log line) completes it.
    let st = ex.status("install").unwrap();
    assert_eq!(st.steps[0].state, StepState::Succeeded, "{st:#?}");
    assert_eq!(ex.facts(n10).unwrap()["lldp"][0]["port"], "Ethernet1/10");
    let body =
        serde_json::json!({"mac": mac(10).to_string(), "lines": ["metalfleet.event os.installed"]});
    let r = reqwest::Client::new()
        .post(format!("{}/node/v1/logs", lab.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let st = lab.finished(&ex, "install").await;
    assert_eq!(st.state, RunState::Succeeded, "{st:#?}");
    assert_eq!(sim.calls(), bmc_calls);
    lab.log_contains(&ex, "install", "install", "re-attached in phase")
        .await;
    let Some(BootTarget::Install {
        kernel,
        autoinstall: Some(name),
        ..
    }) = ex.boot_override(n10)
    else {
        panic!("no install override");
    };
    assert_eq!(kernel, "debian/vmlinuz");
    let text = std::fs::read_to_string(lab.path("agent/templates").join(&name)).unwrap();
    assert_eq!(
        text,
        "{% raw %}hostname NA-0010\nserial NA-0010\n{% endraw %}"
    );
}
