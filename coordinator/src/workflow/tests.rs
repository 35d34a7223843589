//! Unit tests of the template format, its validation (golden error messages) and expansion.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use protocol::domain::BootTarget;
use protocol::workflow::{
    Autoinstall, Backoff, HumanDuration, NodeRun, OnFailure, PowerAction, RunPlan, StepKind,
};
use serde_json::{json, Value};

use super::*;

fn parse(text: &str) -> Result<Template, String> {
    Template::parse("t.yaml", text).map_err(|e| e.to_string())
}

/// A template named `t` with the given params and steps blocks.
fn tpl(params: &str, steps: &str) -> String {
    format!("apiVersion: metalfleet/v1\nkind: Workflow\nname: t\nversion: 1\nparams:\n{params}\nsteps:\n{steps}")
}

fn err(params: &str, steps: &str) -> String {
    parse(&tpl(params, steps)).unwrap_err()
}

fn registry(docs: &[&str]) -> TemplateRegistry {
    let mut reg = TemplateRegistry::new();
    for d in docs {
        reg.insert(Template::parse("x.yaml", d).unwrap()).unwrap();
    }
    reg
}

fn params(v: Value) -> BTreeMap<String, Value> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

const NO_PARAMS: &str = "  {}";

#[test]
fn valid_template_expands_with_defaults() {
    let text = tpl(
        "  wait: { type: duration, default: 10m }\n  hook: { type: string, default: \"\" }",
        r#"
  - name: pxe
    kind: bmc.boot_device
    with: { device: pxe }
  - name: power-on
    kind: bmc.power
    with: { action: on }
    retries: 3
    backoff: 10s
  - name: boot
    kind: boot.set
    with: { target: { kind: discovery } }
  - name: checkin
    kind: node.wait
    with: { for: checkin }
    timeout: "{{ wait }}"
    on_failure: { goto: power-on }
  - name: notify
    kind: http.call
    with: { url: "{{ hook }}", body: '{"serial": "{{ serial }}"}' }
    when: params.hook != ""
    on_failure: continue
"#,
    );
    let t = parse(&text).unwrap();
    assert_eq!(t.steps.len(), 5);
    let reg = registry(&[&text]);
    let plan = reg.expand("t", None, &BTreeMap::new()).unwrap();
    let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pxe", "power-on", "boot", "checkin", "notify"]);
    assert_eq!(plan.params["wait"].0, json!("10m"));
    let on = &plan.steps[1];
    assert!(matches!(&on.kind, StepKind::BmcPower(p) if p.action == PowerAction::On));
    assert_eq!(on.retries, 3);
    assert_eq!(
        on.backoff,
        Backoff {
            initial: HumanDuration::from_secs(10),
            factor: 1,
            max: HumanDuration::from_secs(10)
        }
    );
    assert!(on.idempotent);
    assert_eq!(on.timeout, HumanDuration::from_secs(120));
    assert!(
        matches!(&plan.steps[2].kind, StepKind::BootSet(b) if b.target == BootTarget::Discovery)
    );
    assert_eq!(plan.steps[3].timeout, HumanDuration::from_secs(600));
    assert_eq!(plan.steps[3].on_failure, OnFailure::Goto("power-on".into()));
    let notify = &plan.steps[4];
    assert!(!notify.idempotent);
    assert_eq!(notify.on_failure, OnFailure::Continue);
    assert_eq!(notify.when.as_ref().unwrap().to_string(), r#""" != """#);
    assert!(!notify.when.as_ref().unwrap().evaluate(&json!({})).unwrap());
    match &notify.kind {
        // The body is rendered later by the executor: left as written.
        StepKind::HttpCall(h) => {
            assert_eq!(h.body.as_deref(), Some(r#"{"serial": "{{ serial }}"}"#))
        }
        other => panic!("{other:?}"),
    }
    let with_hook = reg
        .expand(
            "t",
            None,
            &params(json!({"hook": "http://h/identify", "wait": "90s"})),
        )
        .unwrap();
    assert_eq!(with_hook.steps[3].timeout, HumanDuration::from_secs(90));
    assert!(with_hook.steps[4]
        .when
        .as_ref()
        .unwrap()
        .evaluate(&json!({}))
        .unwrap());
    let bin = postcard::to_stdvec(&with_hook).unwrap();
    assert_eq!(postcard::from_bytes::<RunPlan>(&bin).unwrap(), with_hook);
}

#[test]
fn golden_errors_for_each_kind_of_mistake() {
    let p = "  n: { type: int, default: 2 }";
    let cases: Vec<(String, &str)> = vec![
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.power, with: {action: 'on'}}\n  - {name: b, kind: bmc.power, with: {action: 'off'}}\n  - {name: c, kind: bmc.power, with: {action: 'off'}}\n  - {name: configure-bmc, kind: bmc.configure, timeout: 5 minutes}"),
            r#"t/steps[3](configure-bmc).timeout: expected a duration like 30s, 5m, 72h, got "5 minutes""#,
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.configure, timeout: 30}"),
            "t/steps[0](a).timeout: expected a duration like 30s, 5m, 72h, got number 30",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.configure, timeout: 0s}"),
            "t/steps[0](a).timeout: must be longer than 0s",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.powr}"),
            "t/steps[0](a).kind: unknown step kind \"bmc.powr\": expected one of bmc.power, bmc.boot_device, boot.set, node.wait, node.run, node.template, bmc.configure, bmc.validate, dhcp.reserve, redfish.firmware_update, redfish.bios, redfish.raid, lldp.check, http.call, ansible.run, os.install",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.power, with: {acton: 'on'}}"),
            "t/steps[0](a).with.acton: unknown field `acton`, expected `action`",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.power}"),
            "t/steps[0](a).with: missing field `action`",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.power, with: {action: sideways}}"),
            "t/steps[0](a).with.action: unknown variant `sideways`, expected one of `on`, `off`, `cycle`, `reset`, `soft`",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: node.run, with: {command: dd, args: [1, true, [2]]}}"),
            "t/steps[0](a).with.args[2]: invalid type: sequence, expected a string",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: node.template, with: {path: /x, mode: '0999', template: x}}"),
            "t/steps[0](a).with.mode: invalid file mode \"0999\": expected octal permission bits like \"0644\"",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: node.template, with: {path: /x, template: '{{ oops'}}"),
            "t/steps[0](a).with.template: template error: syntax error: unexpected end of input, expected end of variable block (in <string>:1)",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.power, with: [on]}"),
            "t/steps[0](a).with: expected a map of bmc.power parameters, got a list",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate}\n  - {name: a, kind: bmc.validate}"),
            "t/steps[1](a).name: duplicate step name (also steps[0])",
        ),
        (
            err(NO_PARAMS, "  - {name: 'pin/ip', kind: bmc.validate}"),
            "t/steps[0](pin/ip).name: invalid name \"pin/ip\": 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, on_failure: {goto: nowhere}}"),
            "t/steps[0](a).on_failure.goto: no step named \"nowhere\" in this template",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, on_failure: {goto: a}}"),
            "t/steps[0](a).on_failure.goto: a step cannot go to itself on failure; use retries",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, on_failure: retry}"),
            "t/steps[0](a).on_failure: expected fail, continue or {goto: STEP}, got \"retry\"",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, retries: many}"),
            "t/steps[0](a).retries: expected a number of retries from 0 to 1000, got \"many\"",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, backoff: {initial: 1m, max: 10s}}"),
            "t/steps[0](a).backoff: max (10s) is shorter than initial (1m)",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, backoff: {initial: 1s, factor: 0}}"),
            "t/steps[0](a).backoff: factor: expected a whole number from 1 to 10, got number 0",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, backoff: {start: 1s}}"),
            "t/steps[0](a).backoff: unknown field \"start\": expected initial, factor or max",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, when: 'facts.cpus => 8'}"),
            "t/steps[0](a).when: at column 12: unexpected character '=' (equality is `==`)",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: bmc.validate, when: 'facts.cpus >= params.min'}"),
            "t/steps[0](a).when: params.min is not a declared parameter",
        ),
        (
            err(p, "  - {name: a, kind: bmc.validate, when: 'facts.cpus >= {{ n }}'}"),
            "t/steps[0](a).when: conditions refer to parameters as params.NAME, not {{ NAME }}",
        ),
        (
            err(p, "  - {name: a, kind: node.run, with: {command: 'x{{ m }}'}}"),
            "t/steps[0](a).with.command: unknown parameter m (declared: n)",
        ),
        (
            err(NO_PARAMS, "  - {name: a, kind: node.run, with: {command: '{{ m }}'}}"),
            "t/steps[0](a).with.command: unknown parameter m (this template declares no parameters)",
        ),
        (
            err(p, "  - {name: a, kind: node.run, with: {command: '{{ n + }}'}}"),
            "t/steps[0](a).with.command: template error: syntax error: unexpected end of input, expected expression (in <expression>:1)",
        ),
        (
            err("  n: { type: int, default: lots }", "  - {name: a, kind: bmc.validate}"),
            "t/params.n.default: expected a whole number, got \"lots\"",
        ),
        (
            err("  d: { type: duration, default: 3 days }", "  - {name: a, kind: bmc.validate}"),
            "t/params.d.default: expected a duration like 30s, 5m, 72h, got \"3 days\"",
        ),
        (
            err("  n: { type: integer }", "  - {name: a, kind: bmc.validate}"),
            "t/params.n.type: unknown type \"integer\": expected string, int, bool, duration, list or map",
        ),
        (
            err("  bad-name: { type: int }", "  - {name: a, kind: bmc.validate}"),
            "t/params.bad-name: invalid parameter name \"bad-name\": letters, digits and '_', starting with a letter or '_'",
        ),
        (
            err(NO_PARAMS, "  []"),
            "t/steps: a workflow needs at least one step or include",
        ),
        (
            parse("apiVersion: metalfleet/v2\nkind: Workflow\nname: t\nversion: 0\nsteps: [{name: a, kind: bmc.validate}]").unwrap_err(),
            "t/apiVersion: expected \"metalfleet/v1\", got \"metalfleet/v2\"\nt/version: expected a version number of 1 or more",
        ),
        (
            parse("apiVersion: metalfleet/v1\nkind: Workflow\nname: t\nversion: 1\ninclude: [{template: t}, {template: u}, {template: v, as: u}]").unwrap_err(),
            "t/include[0](t): a template cannot include itself\nt/include[2](v): step prefix \"u\" is already used by include[1]; give one of them a different `as:`",
        ),
        (
            parse("apiVersion: metalfleet/v1\nkind: Workflow\nname: t\nversion: 1\ninclude: [{template: u, params: {x: '{{ y }}'}}]").unwrap_err(),
            "t/include[0](u).params.x: unknown parameter y (this template declares no parameters)",
        ),
        (
            // Structural problems (an unknown kind) stop before the type checks.
            err(NO_PARAMS, "  - {name: a, kind: nope}\n  - {name: b, kind: bmc.validate, retries: -1, timeout: soon}"),
            "t/steps[0](a).kind: unknown step kind \"nope\": expected one of bmc.power, bmc.boot_device, boot.set, node.wait, node.run, node.template, bmc.configure, bmc.validate, dhcp.reserve, redfish.firmware_update, redfish.bios, redfish.raid, lldp.check, http.call, ansible.run, os.install",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}

#[test]
fn several_problems_in_one_report() {
    let got = err(
        NO_PARAMS,
        "  - {name: b, kind: bmc.validate, retries: -1, timeout: soon}\n  - {name: c, kind: bmc.power, with: {action: up}}",
    );
    assert_eq!(
        got,
        "t/steps[0](b).timeout: expected a duration like 30s, 5m, 72h, got \"soon\"\n\
         t/steps[0](b).retries: expected a number of retries from 0 to 1000, got number -1\n\
         t/steps[1](c).with.action: unknown variant `up`, expected one of `on`, `off`, `cycle`, `reset`, `soft`"
    );
}

#[test]
fn yaml_phase_errors_name_the_file_path_and_line() {
    let got = parse(&tpl(
        NO_PARAMS,
        "  - name: a\n    kind: bmc.validate\n    timout: 5m",
    ))
    .unwrap_err();
    assert_eq!(
        got,
        "t.yaml: steps[0]: unknown field `timout`, expected one of `name`, `kind`, `with`, `timeout`, `retries`, `backoff`, `on_failure`, `when`, `idempotent`, `description` at line 10 column 5"
    );
    let got = parse("apiVersion: metalfleet/v1\nkind: Workflow\nname: t\nversion: 1\nstep: []")
        .unwrap_err();
    assert!(
        got.starts_with("t.yaml: unknown field `step`, expected one of"),
        "{got}"
    );
    let got = parse("apiVersion: metalfleet/v1\nkind: Workflow\nname: t\nversion: one\nsteps: []")
        .unwrap_err();
    assert_eq!(
        got,
        "t.yaml: version: invalid type: string \"one\", expected u32 at line 4 column 10"
    );
    let got = parse_document("p.yaml", "kind: Pipeline\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        got,
        "p.yaml/kind: expected \"Workflow\" or \"WorkflowParams\", got \"Pipeline\""
    );
    let got = parse_document("p.yaml", ": : :").unwrap_err().to_string();
    assert!(got.starts_with("p.yaml: "), "{got}");
}

const CHILD: &str = r#"
apiVersion: metalfleet/v1
kind: Workflow
name: child
version: 1
params:
  runtime: { type: duration }
  sizes: { type: list, default: [100, 200] }
  count: { type: int, default: 2 }
  tool: { type: string, default: fio }
steps:
  - name: stress
    kind: node.run
    with:
      command: "{{ tool }}"
      args: ["--runtime={{ runtime | seconds }}", "{{ count }}", "--sizes={{ sizes | join(',') }}"]
    timeout: "{{ runtime }}"
    on_failure: { goto: cleanup }
  - name: raid
    kind: redfish.raid
    with:
      volumes: [{ name: os, level: raid1, size_gib: "{{ count }}", drives: "{{ sizes }}" }]
  - name: cleanup
    kind: node.run
    with: { command: "true" }
    idempotent: true
    when: facts.disks.0.size >= params.count
"#;

const PARENT: &str = r#"
apiVersion: metalfleet/v1
kind: Workflow
name: parent
version: 1
params:
  stress: { type: duration, default: 72h }
include:
  - { template: child, params: { runtime: "{{ stress }}", count: 3 } }
  - { template: child, as: again, params: { runtime: 5s, tool: stress-ng } }
steps:
  - name: done
    kind: boot.set
    with: { target: { kind: local } }
"#;

#[test]
fn includes_are_inlined_with_prefixes_and_typed_substitution() {
    let reg = registry(&[CHILD, PARENT]);
    let plan = reg
        .expand("parent", None, &params(json!({"stress": "30s"})))
        .unwrap();
    let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "child/stress",
            "child/raid",
            "child/cleanup",
            "again/stress",
            "again/raid",
            "again/cleanup",
            "done"
        ]
    );
    let StepKind::NodeRun(NodeRun { command, args, .. }) = &plan.steps[0].kind else {
        panic!("{:?}", plan.steps[0].kind)
    };
    assert_eq!(command, "fio");
    // An int parameter fills a string list; a list parameter renders through a filter.
    assert_eq!(args, &["--runtime=30", "3", "--sizes=100,200"]);
    assert_eq!(plan.steps[0].timeout, HumanDuration::from_secs(30));
    assert_eq!(
        plan.steps[0].on_failure,
        OnFailure::Goto("child/cleanup".into())
    );
    assert!(!plan.steps[0].idempotent);
    let StepKind::RedfishRaid(raid) = &plan.steps[1].kind else {
        panic!()
    };
    // A whole-expression list stays a list (numbers becoming strings); an int fills a number.
    assert_eq!(raid.volumes[0].drives, ["100", "200"]);
    assert_eq!(raid.volumes[0].size_gib, Some(3));
    assert!(plan.steps[2].idempotent);
    assert_eq!(
        plan.steps[2].when.as_ref().unwrap().to_string(),
        "facts.disks.0.size >= 3"
    );
    let StepKind::NodeRun(again) = &plan.steps[3].kind else {
        panic!()
    };
    assert_eq!(again.command, "stress-ng");
    assert_eq!(again.args[0], "--runtime=5");
    assert_eq!(plan.steps[5].on_failure, OnFailure::Fail);
    assert_eq!(
        plan.steps[3].on_failure,
        OnFailure::Goto("again/cleanup".into())
    );
    assert_eq!(plan.params.len(), 1);
    assert_eq!(plan.params["stress"].0, json!("30s"));

    // Nested includes stack their prefixes.
    let top = PARENT
        .replace("name: parent", "name: top")
        .replace("include:\n", "include:\n  - { template: parent, as: p }\n");
    let top = top.replacen(
        "  - { template: child, params: { runtime: \"{{ stress }}\", count: 3 } }\n  - { template: child, as: again, params: { runtime: 5s, tool: stress-ng } }\n",
        "",
        1,
    );
    let reg = registry(&[CHILD, PARENT, &top]);
    let plan = reg.check("top", None).unwrap();
    assert_eq!(plan.steps[0].name, "p/child/stress");
    assert_eq!(
        plan.steps[0].on_failure,
        OnFailure::Goto("p/child/cleanup".into())
    );
    assert_eq!(plan.steps.last().unwrap().name, "done");
}

#[test]
fn expansion_errors_name_the_include_chain() {
    let reg = registry(&[CHILD, PARENT]);
    let e = |p: Value| {
        reg.expand("parent", None, &params(p))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        e(json!({"stres": "1s"})),
        "parent/params.stres: parent has no parameter \"stres\" (declared: stress)"
    );
    assert_eq!(
        e(json!({"stress": 5})),
        "parent/params.stress: expected a duration like 30s, 5m, 72h, got number 5"
    );
    let reg2 = registry(&[CHILD]);
    assert_eq!(
        reg2.expand("child", None, &BTreeMap::new())
            .unwrap_err()
            .to_string(),
        "child/params.runtime: missing required parameter (duration)"
    );
    assert_eq!(
        reg2.expand("child", None, &params(json!({"runtime": "1s", "count": "two", "sizes": "a"})))
            .unwrap_err()
            .to_string(),
        "child/params.count: expected a whole number, got \"two\"\nchild/params.sizes: expected a list, got \"a\""
    );
    assert_eq!(
        reg2.expand("nope", Some(2), &BTreeMap::new())
            .unwrap_err()
            .to_string(),
        "no workflow template \"nope\" version 2 (versions registered: [])"
    );

    // Include parameter problems and problems inside included templates carry the chain.
    let bad_include = PARENT.replace("count: 3", "count: three, colour: red");
    let reg = registry(&[CHILD, &bad_include]);
    assert_eq!(
        reg.check("parent", None).unwrap_err().to_string(),
        "parent/include[0](child).params.colour: child has no parameter \"colour\" (declared: count, runtime, sizes, tool)\n\
         parent/include[0](child).params.count: expected a whole number, got \"three\""
    );
    let bad_child = CHILD.replace(
        "count: { type: int, default: 2 }",
        "count: { type: string, default: \"2\" }",
    );
    let reg = registry(&[&bad_child, PARENT]);
    assert_eq!(
        reg.check("parent", None).unwrap_err().to_string(),
        "parent/include[0](child).params.count: expected a string, got number 3 (quote it in YAML)"
    );
    let late_failure = PARENT.replace("runtime: 5s", "runtime: \"{{ stress }}\"");
    let reg = registry(&[CHILD, &late_failure]);
    let plan = reg.expand("parent", None, &BTreeMap::new()).unwrap();
    assert_eq!(plan.steps[3].timeout, HumanDuration::from_secs(72 * 3600));
    // A value that passes the parameter type but not the field it lands in: caught at load
    // time with the default, at expansion with the value an include passes.
    let strict = CHILD.replace("size_gib: \"{{ count }}\"", "size_gib: \"{{ tool }}\"");
    assert_eq!(
        Template::parse("child.yaml", &strict)
            .unwrap_err()
            .to_string(),
        "child/steps[1](raid).with.volumes[0].size_gib: invalid type: string \"fio\", expected u64"
    );
    let strict = strict.replace(
        "tool: { type: string, default: fio }",
        "tool: { type: string, default: \"8\" }",
    );
    let reg = registry(&[&strict, PARENT]);
    assert_eq!(
        reg.check("parent", None).unwrap_err().to_string(),
        "parent/include[1](child as again) > child/steps[1](raid).with.volumes[0].size_gib: invalid type: string \"stress-ng\", expected u64"
    );
}

#[test]
fn include_cycles_and_missing_includes_are_refused() {
    let a =
        "apiVersion: metalfleet/v1\nkind: Workflow\nname: a\nversion: 1\ninclude: [{template: b}]";
    let b =
        "apiVersion: metalfleet/v1\nkind: Workflow\nname: b\nversion: 1\ninclude: [{template: c}]";
    let c =
        "apiVersion: metalfleet/v1\nkind: Workflow\nname: c\nversion: 1\ninclude: [{template: a}]";
    let reg = registry(&[a, b, c]);
    assert_eq!(
        reg.check("a", None).unwrap_err().to_string(),
        "a/include[0](b) > b/include[0](c) > c/include[0](a): include cycle: a → b → c → a"
    );
    let reg = registry(&[a]);
    assert_eq!(
        reg.check("a", None).unwrap_err().to_string(),
        "a/include[0](b): no template \"b\" (versions registered: [])"
    );
    let pinned = a.replace("{template: b}", "{template: b, version: 4}");
    let reg = registry(&[&pinned, b]);
    assert_eq!(
        reg.check("a", None).unwrap_err().to_string(),
        "a/include[0](b): no template \"b\" version 4 (versions registered: [1])"
    );
}

#[test]
fn late_rendered_fields_are_kept_and_syntax_checked() {
    let text = tpl(
        "  kernel: { type: string, default: vmlinuz }",
        r#"
  - name: install
    kind: os.install
    with:
      kernel: "{{ kernel }}"
      initrd: initrd.img
      autoinstall: { inline: "hostname {{ hostname }}\n{% for ip in static_ips %}{{ ip.address }}{% endfor %}" }
  - name: motd
    kind: node.template
    with: { path: /etc/motd, mode: "0600", template: "{{ facts.serial }} {{ params.kernel }}" }
"#,
    );
    let reg = registry(&[&text]);
    let plan = reg.check("t", None).unwrap();
    let StepKind::OsInstall(install) = &plan.steps[0].kind else {
        panic!()
    };
    assert_eq!(install.kernel, "vmlinuz");
    assert_eq!(
        install.autoinstall,
        Some(Autoinstall::Inline(
            "hostname {{ hostname }}\n{% for ip in static_ips %}{{ ip.address }}{% endfor %}"
                .into()
        ))
    );
    assert_eq!(install.done_event, "os.installed");
    let StepKind::NodeTemplate(motd) = &plan.steps[1].kind else {
        panic!()
    };
    assert_eq!(motd.mode.0, 0o600);
    assert_eq!(motd.template, "{{ facts.serial }} {{ params.kernel }}");
}

#[test]
fn wait_conditions_take_parameters_and_substituted_text_is_kept_exactly() {
    let text = tpl(
        "  ip: { type: string, default: 10.0.0.5 }\n  motd: { type: string, default: \"hi\\n\" }",
        r#"
  - name: wait-ip
    kind: node.wait
    with: { for: { condition: "facts.bmc.ip == params.ip" } }
  - name: write
    kind: node.run
    with: { command: "say {{ motd }}" }
"#,
    );
    let reg = registry(&[&text]);
    let plan = reg.check("t", None).unwrap();
    match &plan.steps[0].kind {
        StepKind::NodeWait(w) => match &w.wait_for {
            protocol::workflow::WaitFor::Condition(c) => {
                assert_eq!(c.to_string(), r#"facts.bmc.ip == "10.0.0.5""#);
                assert!(c.evaluate(&json!({"bmc": {"ip": "10.0.0.5"}})).unwrap());
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    match &plan.steps[1].kind {
        StepKind::NodeRun(r) => assert_eq!(r.command, "say hi\n"),
        other => panic!("{other:?}"),
    }
    let bad = text.replace("params.ip", "params.address");
    assert_eq!(
        parse(&bad).unwrap_err(),
        "t/steps[0](wait-ip).with.for.condition: params.address is not a parameter of this template"
    );
}

#[test]
fn registry_versions_are_immutable() {
    let v1 = tpl(NO_PARAMS, "  - {name: a, kind: bmc.validate}");
    let v2 = v1.replace("version: 1", "version: 2");
    let mut reg = registry(&[&v1, &v2]);
    assert_eq!(reg.versions("t"), [1, 2]);
    assert_eq!(reg.get("t", None).unwrap().version, 2);
    assert_eq!(reg.get("t", Some(1)).unwrap().version, 1);
    assert_eq!(reg.names().collect::<Vec<_>>(), ["t"]);
    reg.insert(Template::parse("x", &v1).unwrap()).unwrap();
    let changed = v1.replace("bmc.validate", "dhcp.reserve");
    assert_eq!(
        reg.insert(Template::parse("x", &changed).unwrap())
            .unwrap_err()
            .to_string(),
        "workflow template \"t\" version 1 is already registered with different content; publish a new version"
    );
    assert_eq!(
        reg.expand("t", Some(1), &BTreeMap::new()).unwrap().version,
        1
    );
}

#[test]
fn load_dir_reads_templates_and_params_files_and_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("child.yaml"), CHILD).unwrap();
    std::fs::write(dir.path().join("parent.yml"), PARENT).unwrap();
    std::fs::write(
        dir.path().join("lab.yaml"),
        "apiVersion: metalfleet/v1\nkind: WorkflowParams\nworkflow: parent\nparams: { stress: 2s }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not yaml: [").unwrap();
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(
        loaded.registry.names().collect::<Vec<_>>(),
        ["child", "parent"]
    );
    let lab = &loaded.params["lab.yaml"];
    assert_eq!(lab.workflow, "parent");
    let plan = loaded
        .registry
        .expand(&lab.workflow, lab.version, &lab.params)
        .unwrap();
    assert_eq!(plan.steps[0].timeout, HumanDuration::from_secs(2));

    std::fs::write(
        dir.path().join("parent2.yaml"),
        PARENT.replace("72h", "71h"),
    )
    .unwrap();
    assert_eq!(
        load_dir(dir.path()).unwrap_err().to_string(),
        format!(
            "{}: workflow template \"parent\" version 1 is also defined in {}",
            dir.path().join("parent2.yaml").display(),
            dir.path().join("parent.yml").display()
        )
    );
    std::fs::remove_file(dir.path().join("parent2.yaml")).unwrap();

    std::fs::write(
        dir.path().join("parent.yml"),
        PARENT.replace("child, params", "kid, params"),
    )
    .unwrap();
    let e = load_dir(dir.path()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: parent/include[0](kid): no template \"kid\" (versions registered: [])",
            dir.path().join("parent.yml").display()
        )
    );
    std::fs::write(
        dir.path().join("child.yaml"),
        CHILD.replace("kind: redfish.raid", "kind: raid"),
    )
    .unwrap();
    let e = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: child/steps[1](raid).kind: unknown step kind \"raid\"",
            dir.path().join("child.yaml").display()
        )),
        "{e}"
    );
}
