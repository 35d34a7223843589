//! Expansion: a template and parameter values → a [`RunPlan`] for one node. Includes are
//! inlined (step names prefixed), `{{ }}` substituted, every step typed.
//!
//! Substitution rules (minijinja, undefined names are errors):
//! - a string that is one whole expression (`"{{ disk_sizes }}"`) takes the expression's
//!   value with its type (a list stays a list); any other string with markup is rendered to
//!   a string (`"--runtime={{ drive_stress | seconds }}"`);
//! - a scalar then takes the type its field needs: `"{{ count }}"` fills a number field and
//!   `args: ["{{ count }}", 4]` a string list alike (YAML's own typing of `4` or `true` is as
//!   much a guess as the template author's, so the field decides);
//! - fields the executor renders later on the agent (`node.template.template`,
//!   `http.call.body`, `os.install.autoinstall.inline`) are only syntax-checked;
//! - the filter `seconds` turns a duration (`72h`) into whole seconds (`259200`).

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use protocol::json::JsonValue;
use protocol::workflow::{
    Backoff, HumanDuration, NodeWait, OnFailure, RunPlan, Step, StepKind, WaitFor,
};
use serde_json::Value;

use super::registry::TemplateRegistry;
use super::template::{describe, step_at, StepTemplate, Template};
use super::{Problem, Problems};

/// Why a template could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    /// No such template (or version).
    #[error("no workflow template {name:?}{} (versions registered: {have:?})", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound {
        /// Name asked for.
        name: String,
        /// Version asked for (`None`: newest).
        version: Option<u32>,
        /// Versions of that name the registry has.
        have: Vec<u32>,
    },
    /// Parameters, includes or steps are invalid.
    #[error("{0}")]
    Invalid(Problems),
}

/// Upper bound on `retries`: more is a loop, not a retry policy.
const MAX_RETRIES: u64 = 1000;

fn environment<'s>() -> Environment<'s> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // A substituted value keeps its text exactly, last newline included.
    env.set_keep_trailing_newline(true);
    env.add_filter("seconds", seconds_filter);
    env
}

fn seconds_filter(text: String) -> Result<u64, minijinja::Error> {
    text.parse::<HumanDuration>()
        .map(HumanDuration::as_secs)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

fn has_markup(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The expression inside a string that is exactly `{{ expr }}`.
fn whole_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim_matches('-'))
}

fn unknown_names(
    used: impl IntoIterator<Item = String>,
    params: &BTreeMap<String, Value>,
) -> Option<String> {
    let mut unknown: Vec<String> = used
        .into_iter()
        .filter(|n| !params.contains_key(n))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    unknown.sort();
    let declared = if params.is_empty() {
        "this template declares no parameters".to_owned()
    } else {
        format!(
            "declared: {}",
            params.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Some(format!(
        "unknown parameter{} {} ({declared})",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", ")
    ))
}

/// Substitutes parameters into one string; `None` after recording a problem.
fn substitute_str(
    s: &str,
    params: &BTreeMap<String, Value>,
    at: &str,
    out: &mut Vec<Problem>,
) -> Option<Value> {
    if !has_markup(s) {
        return Some(Value::String(s.to_owned()));
    }
    let env = environment();
    let fail = |out: &mut Vec<Problem>, e: minijinja::Error| {
        out.push(Problem::new(at, format!("template error: {e}")));
        None
    };
    if let Some(expr) = whole_expression(s) {
        let compiled = match env.compile_expression(expr) {
            Ok(c) => c,
            Err(e) => return fail(out, e),
        };
        if let Some(msg) = unknown_names(compiled.undeclared_variables(false), params) {
            out.push(Problem::new(at, msg));
            return None;
        }
        return match compiled.eval(params) {
            Ok(v) if v.is_undefined() => {
                out.push(Problem::new(at, format!("{s:?} is undefined")));
                None
            }
            Ok(v) => match serde_json::to_value(&v) {
                Ok(json) => Some(json),
                Err(e) => {
                    out.push(Problem::new(at, format!("{s:?}: {e}")));
                    None
                }
            },
            Err(e) => fail(out, e),
        };
    }
    let template = match env.template_from_str(s) {
        Ok(t) => t,
        Err(e) => return fail(out, e),
    };
    if let Some(msg) = unknown_names(template.undeclared_variables(false), params) {
        out.push(Problem::new(at, msg));
        return None;
    }
    match template.render(params) {
        Ok(text) => Some(Value::String(text)),
        Err(e) => fail(out, e),
    }
}

/// Substitutes parameters into every string of a YAML value. Fields at the paths in `late` are
/// rendered by the executor: here they are only syntax-checked.
fn substitute(
    v: &Value,
    params: &BTreeMap<String, Value>,
    at: &str,
    path: &mut Vec<String>,
    late: &[&[&str]],
    out: &mut Vec<Problem>,
) -> Value {
    let here = |path: &[String]| format!("{at}{}", path_text(path));
    match v {
        Value::String(s) => substitute_str(s, params, &here(path), out).unwrap_or(Value::Null),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    path.push(i.to_string());
                    let r = substitute(item, params, at, path, late, out);
                    path.pop();
                    r
                })
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, item)| {
                    path.push(k.clone());
                    let r = if late.iter().any(|l| l.iter().eq(path.iter())) {
                        check_late(item, &here(path), out);
                        item.clone()
                    } else {
                        substitute(item, params, at, path, late, out)
                    };
                    path.pop();
                    (k.clone(), r)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Syntax check of a field the executor renders.
fn check_late(v: &Value, at: &str, out: &mut Vec<Problem>) {
    match v {
        Value::String(s) => {
            if let Err(e) = environment().template_from_str(s) {
                out.push(Problem::new(at, format!("template error: {e}")));
            }
        }
        Value::Array(items) => items.iter().for_each(|i| check_late(i, at, out)),
        Value::Object(map) => map.values().for_each(|i| check_late(i, at, out)),
        _ => {}
    }
}

fn path_text(path: &[String]) -> String {
    path.iter()
        .map(|seg| {
            if seg.bytes().all(|b| b.is_ascii_digit()) {
                format!("[{seg}]")
            } else {
                format!(".{seg}")
            }
        })
        .collect()
}

fn lookup_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut at = v;
    for seg in path {
        at = match at {
            Value::Object(m) => m.get_mut(seg)?,
            Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Give a substituted scalar the other plausible type: number/bool ↔ its text.
fn coerce(v: &mut Value) -> bool {
    let new = match &*v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::String(s) => match serde_json::from_str::<Value>(s.trim()) {
            Ok(n @ (Value::Number(_) | Value::Bool(_))) => n,
            _ => return false,
        },
        _ => return false,
    };
    *v = new;
    true
}

/// Type the `with:` parameters of a step as its kind.
fn typed_kind(kind: &str, mut with: Value, at: &str) -> Result<StepKind, Problem> {
    let mut coerced: Vec<Vec<String>> = Vec::new();
    loop {
        let tagged = Value::Object(serde_json::Map::from_iter([(
            kind.to_owned(),
            with.clone(),
        )]));
        let err = match serde_path_to_error::deserialize::<_, StepKind>(tagged) {
            Ok(k) => return Ok(k),
            Err(e) => e,
        };
        // The first segment is the kind itself (the enum's tag).
        let path: Vec<String> = err
            .path()
            .iter()
            .skip(1)
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = err.inner().to_string();
        let retry = message.starts_with("invalid type")
            && !coerced.contains(&path)
            && lookup_mut(&mut with, &path).is_some_and(coerce);
        if !retry {
            return Err(Problem::new(
                format!("{at}.with{}", path_text(&path)),
                message,
            ));
        }
        coerced.push(path);
    }
}

fn parse_duration(v: &Value) -> Result<HumanDuration, String> {
    match v {
        Value::String(s) => s
            .parse::<HumanDuration>()
            .map_err(|_| format!("expected a duration like 30s, 5m, 72h, got {s:?}")),
        other => Err(format!(
            "expected a duration like 30s, 5m, 72h, got {}",
            describe(other)
        )),
    }
}

fn parse_retries(v: &Value) -> Result<u32, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= MAX_RETRIES => Ok(n as u32),
        _ => Err(format!(
            "expected a number of retries from 0 to {MAX_RETRIES}, got {}",
            describe(v)
        )),
    }
}

fn parse_backoff(v: &Value) -> Result<Backoff, String> {
    match v {
        Value::String(_) => {
            let d = parse_duration(v)?;
            Ok(Backoff {
                initial: d,
                factor: 1,
                max: d,
            })
        }
        Value::Object(map) => {
            let mut b = Backoff::default();
            for (k, item) in map {
                match k.as_str() {
                    "initial" => {
                        b.initial = parse_duration(item).map_err(|e| format!("initial: {e}"))?
                    }
                    "max" => b.max = parse_duration(item).map_err(|e| format!("max: {e}"))?,
                    "factor" => {
                        b.factor = match item {
                            Value::Number(n) => n.as_u64().filter(|f| (1..=10).contains(f)),
                            Value::String(s) => {
                                s.trim().parse().ok().filter(|f| (1..=10).contains(f))
                            }
                            _ => None,
                        }
                        .map(|f| f as u32)
                        .ok_or_else(|| {
                            format!(
                                "factor: expected a whole number from 1 to 10, got {}",
                                describe(item)
                            )
                        })?
                    }
                    other => {
                        return Err(format!(
                            "unknown field {other:?}: expected initial, factor or max"
                        ))
                    }
                }
            }
            if b.max < b.initial {
                return Err(format!(
                    "max ({}) is shorter than initial ({})",
                    b.max, b.initial
                ));
            }
            Ok(b)
        }
        other => Err(format!(
            "expected a duration (constant delay) or {{initial, factor, max}}, got {}",
            describe(other)
        )),
    }
}

/// Fields of a kind the executor renders with the node's data.
fn late_fields(kind: &str) -> &'static [&'static [&'static str]] {
    match kind {
        "node.template" => &[&["template"]],
        "http.call" => &[&["body"]],
        "os.install" => &[&["autoinstall", "inline"]],
        _ => &[],
    }
}

/// The value, or a problem recorded at `at`.
fn record<T>(out: &mut Vec<Problem>, at: String, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            out.push(Problem::new(at, e));
            None
        }
    }
}

/// One template step → one plan step.
fn build_step(
    at: &str,
    index: usize,
    st: &StepTemplate,
    params: &BTreeMap<String, Value>,
    name_prefix: &str,
    out: &mut Vec<Problem>,
) -> Option<Step> {
    let sat = |field: &str| step_at(at, index, &st.name, field);
    let before = out.len();
    let with = substitute(
        &st.with,
        params,
        &sat("with"),
        &mut Vec::new(),
        late_fields(st.kind),
        out,
    );
    let scalar = |field: &str, v: &Option<Value>, out: &mut Vec<Problem>| {
        v.as_ref()
            .map(|v| substitute(v, params, &sat(field), &mut Vec::new(), &[], out))
    };
    let timeout = scalar("timeout", &st.timeout, out);
    let retries = scalar("retries", &st.retries, out);
    let backoff = scalar("backoff", &st.backoff, out);
    if out.len() > before {
        return None;
    }

    let kind = match typed_kind(st.kind, with, &sat("")) {
        Ok(StepKind::NodeWait(NodeWait {
            wait_for: WaitFor::Condition(c),
        })) => record(
            out,
            sat("with.for.condition"),
            c.resolve_params(params)
                .map(|c| {
                    StepKind::NodeWait(NodeWait {
                        wait_for: WaitFor::Condition(c),
                    })
                })
                .map_err(|e| e.to_string()),
        ),
        Ok(k) => Some(k),
        Err(p) => {
            out.push(p);
            None
        }
    };
    let field = |name: &str| sat(name);
    let timeout = match timeout {
        None => kind.as_ref().map(StepKind::default_timeout),
        Some(v) => record(
            out,
            field("timeout"),
            parse_duration(&v).and_then(|d| {
                if d == HumanDuration::ZERO {
                    Err("must be longer than 0s".to_owned())
                } else {
                    Ok(d)
                }
            }),
        ),
    };
    let retries = match retries {
        None => Some(0),
        Some(v) => record(out, field("retries"), parse_retries(&v)),
    };
    let backoff = match backoff {
        None => Some(Backoff::default()),
        Some(v) => record(out, field("backoff"), parse_backoff(&v)),
    };
    let when = match &st.when {
        None => Some(None),
        Some(c) => record(
            out,
            field("when"),
            c.resolve_params(params)
                .map(Some)
                .map_err(|e| e.to_string()),
        ),
    };
    let (kind, timeout, retries, backoff, when) = (kind?, timeout?, retries?, backoff?, when?);
    let on_failure = match &st.on_failure {
        OnFailure::Goto(target) => OnFailure::Goto(format!("{name_prefix}{target}")),
        other => other.clone(),
    };
    Some(Step {
        name: format!("{name_prefix}{}", st.name),
        idempotent: st
            .idempotent
            .unwrap_or_else(|| kind.idempotent_by_default()),
        kind,
        timeout,
        retries,
        backoff,
        on_failure,
        when,
    })
}

/// Type-check a template's own steps and include parameters with sample parameter values.
pub(crate) fn check_alone(t: &Template) -> Vec<Problem> {
    let params = t.sample_params();
    let mut out = Vec::new();
    for (i, inc) in t.includes.iter().enumerate() {
        for (k, v) in &inc.params {
            let at = format!("{}/include[{i}]({}).params.{k}", t.name, inc.template);
            substitute(v, &params, &at, &mut Vec::new(), &[], &mut out);
        }
    }
    for (i, st) in t.steps.iter().enumerate() {
        build_step(&t.name, i, st, &params, "", &mut out);
    }
    out
}

/// Check given values against a template's parameters; fill in defaults.
fn resolve_params(
    t: &Template,
    given: &BTreeMap<String, Value>,
    at: &str,
    out: &mut Vec<Problem>,
) -> BTreeMap<String, Value> {
    let declared = || {
        if t.params.is_empty() {
            "it declares no parameters".to_owned()
        } else {
            format!(
                "declared: {}",
                t.params.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    };
    for k in given.keys() {
        if !t.params.contains_key(k) {
            out.push(Problem::new(
                format!("{at}.{k}"),
                format!("{} has no parameter {k:?} ({})", t.name, declared()),
            ));
        }
    }
    let mut resolved = BTreeMap::new();
    for (k, spec) in &t.params {
        match (given.get(k), &spec.default) {
            (Some(v), _) => match spec.ty.check(v) {
                Ok(v) => {
                    resolved.insert(k.clone(), v);
                }
                Err(e) => out.push(Problem::new(format!("{at}.{k}"), e)),
            },
            (None, Some(d)) => {
                resolved.insert(k.clone(), d.clone());
            }
            (None, None) => out.push(Problem::new(
                format!("{at}.{k}"),
                format!("missing required parameter ({})", spec.ty.name()),
            )),
        }
    }
    resolved
}

#[allow(clippy::too_many_arguments)]
fn inline(
    reg: &TemplateRegistry,
    t: &Template,
    params: &BTreeMap<String, Value>,
    name_prefix: &str,
    chain: &str,
    stack: &mut Vec<String>,
    steps: &mut Vec<Step>,
    out: &mut Vec<Problem>,
) {
    let at = format!("{chain}{}", t.name);
    for (i, inc) in t.includes.iter().enumerate() {
        let iat = if inc.prefix == inc.template {
            format!("{at}/include[{i}]({})", inc.template)
        } else {
            format!("{at}/include[{i}]({} as {})", inc.template, inc.prefix)
        };
        if stack.contains(&inc.template) {
            out.push(Problem::new(
                &iat,
                format!("include cycle: {} → {}", stack.join(" → "), inc.template),
            ));
            continue;
        }
        let Some(child) = reg.get(&inc.template, inc.version) else {
            out.push(Problem::new(
                &iat,
                format!(
                    "no template {:?}{} (versions registered: {:?})",
                    inc.template,
                    inc.version
                        .map(|v| format!(" version {v}"))
                        .unwrap_or_default(),
                    reg.versions(&inc.template)
                ),
            ));
            continue;
        };
        let before = out.len();
        let given: BTreeMap<String, Value> = inc
            .params
            .iter()
            .map(|(k, v)| {
                let pat = format!("{iat}.params.{k}");
                let value = substitute(v, params, &pat, &mut Vec::new(), &[], out);
                (k.clone(), value)
            })
            .collect();
        let child_params = resolve_params(child, &given, &format!("{iat}.params"), out);
        if out.len() > before {
            continue;
        }
        stack.push(child.name.clone());
        inline(
            reg,
            child,
            &child_params,
            &format!("{name_prefix}{}/", inc.prefix),
            &format!("{iat} > "),
            stack,
            steps,
            out,
        );
        stack.pop();
    }
    for (i, st) in t.steps.iter().enumerate() {
        if let Some(step) = build_step(&at, i, st, params, name_prefix, out) {
            steps.push(step);
        }
    }
}

/// The steps of one template inside an expanded plan (its includes' steps, then its own) and
/// the lifecycle it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// Index of its first step in the plan.
    pub first: usize,
    /// Index of its last step in the plan.
    pub last: usize,
    /// What it declares.
    pub lifecycle: super::Lifecycle,
}

/// The phases of template `name` that declare a lifecycle, inner ones before the template
/// that includes them, with step indices as [`expand`] lays the plan out (includes first, in
/// order, then own steps). Includes that do not resolve are skipped: callers compare the
/// step count with the plan they hold.
pub fn phases(reg: &TemplateRegistry, name: &str, version: Option<u32>) -> (Vec<Phase>, usize) {
    fn walk(
        reg: &TemplateRegistry,
        t: &Template,
        n: &mut usize,
        stack: &mut Vec<String>,
        out: &mut Vec<Phase>,
    ) {
        let first = *n;
        for inc in &t.includes {
            if stack.contains(&inc.template) {
                continue;
            }
            if let Some(child) = reg.get(&inc.template, inc.version) {
                stack.push(child.name.clone());
                walk(reg, child, n, stack, out);
                stack.pop();
            }
        }
        *n += t.steps.len();
        if !t.lifecycle.is_empty() && *n > first {
            out.push(Phase {
                first,
                last: *n - 1,
                lifecycle: t.lifecycle.clone(),
            });
        }
    }
    let mut out = Vec::new();
    let mut n = 0;
    if let Some(t) = reg.get(name, version) {
        walk(reg, t, &mut n, &mut vec![t.name.clone()], &mut out);
    }
    (out, n)
}

/// Expand template `name` (`version`: `None` for the newest) with parameter values into the
/// plan for one node.
pub fn expand(
    reg: &TemplateRegistry,
    name: &str,
    version: Option<u32>,
    params: &BTreeMap<String, Value>,
) -> Result<RunPlan, ExpandError> {
    let t = reg
        .get(name, version)
        .ok_or_else(|| ExpandError::NotFound {
            name: name.to_owned(),
            version,
            have: reg.versions(name),
        })?;
    let mut out = Vec::new();
    let resolved = resolve_params(t, params, &format!("{}/params", t.name), &mut out);
    if !out.is_empty() {
        return Err(ExpandError::Invalid(Problems(out)));
    }
    let mut steps = Vec::new();
    inline(
        reg,
        t,
        &resolved,
        "",
        "",
        &mut vec![t.name.clone()],
        &mut steps,
        &mut out,
    );
    let mut seen = std::collections::BTreeSet::new();
    for s in &steps {
        if !seen.insert(s.name.as_str()) {
            out.push(Problem::new(
                format!("{}/steps", t.name),
                format!("step name {:?} appears twice in the plan", s.name),
            ));
        }
    }
    if !out.is_empty() {
        return Err(ExpandError::Invalid(Problems(out)));
    }
    Ok(RunPlan {
        template: t.name.clone(),
        version: t.version,
        params: resolved
            .into_iter()
            .map(|(k, v)| (k, JsonValue(v)))
            .collect(),
        steps,
    })
}
